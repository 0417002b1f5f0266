"""The kernels in worker processes: fork, spawn, forkserver, joblib's loky.

Each start method runs every kernel in a pool of two workers and must return
bit for bit what the parent computes. The hard case is ``fork`` after the
parent has already run a parallel kernel: GNU OpenMP (Numba's ``omp`` layer)
is not fork-safe and terminates such a child, so it needs the ``tbb`` layer
(see ``test_hardening_threads.py``); without TBB it is skipped, and the
documented advice is the ``spawn`` or ``forkserver`` start method.

Every scenario runs in a fresh interpreter with a time limit, so a hung pool
(the symptom of a killed fork child) fails the test instead of blocking it.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_hardening_threads import requires_tbb

TESTS = Path(__file__).resolve().parent

SHAPE = dict(N=2100, d=5, h=6, K=4)


def kernel_results(seed):
    """Every kernel of the comparison table on seeded inputs (run in the workers)."""
    from cases import CASES

    out = {}
    for name, case in CASES.items():
        result = case.kernel(*case.make_args(SHAPE, np.float32, seed))
        out[name] = result if isinstance(result, tuple) else (result,)
    return out


def _same(a, b):
    return a.keys() == b.keys() and all(
        (x is None and y is None) or np.array_equal(x, y)
        for k in a for x, y in zip(a[k], b[k]))


def main(method, warm_parent):
    """Run in a fresh interpreter: a pool of 2 workers with ``method``."""
    import multiprocessing as mp

    import numba

    if warm_parent:
        parent = {seed: kernel_results(seed) for seed in range(3)}  # threads now running
    if method == "loky":
        import joblib

        results = joblib.Parallel(n_jobs=2, backend="loky")(
            joblib.delayed(kernel_results)(seed) for seed in range(3))
    else:
        with mp.get_context(method).Pool(2) as pool:
            results = pool.map(kernel_results, range(3))
    if not warm_parent:
        parent = {seed: kernel_results(seed) for seed in range(3)}
    for seed, got in enumerate(results):
        assert _same(got, parent[seed]), f"worker result {seed} differs from the parent's"
    print("ok", numba.threading_layer())


SCRIPT = "import sys; sys.path.insert(0, sys.argv[1]); import test_hardening_processes as t; " \
         "t.main(sys.argv[2], sys.argv[3] == 'warm')"


def _run(method, warm, timeout=240):
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    try:
        proc = subprocess.run([sys.executable, "-c", SCRIPT, str(TESTS), method,
                               "warm" if warm else "cold"],
                              env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{method}: the pool hung ({exc.stderr and exc.stderr[-2000:]})")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok"), proc.stdout
    return proc.stdout.split()[1]


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_pool_matches_parent(method):
    """Fresh interpreters: safe with any layer, also after the parent ran kernels."""
    _run(method, warm=True)


def test_fork_before_parallel_use():
    """A parent that imported the kernels but has not run one yet forks safely."""
    _run("fork", warm=False)


@requires_tbb
def test_fork_after_parallel_use():
    """The hard case: the parent's Numba threads are running when it forks."""
    assert _run("fork", warm=True) == "tbb"


def test_joblib_loky_processes():
    pytest.importorskip("joblib")
    _run("loky", warm=True)
