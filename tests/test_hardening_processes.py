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


# ---------------------------------------------------------------------------
# The models: pickled to workers and back
# ---------------------------------------------------------------------------


def model_worker(payload):
    """In a worker: predict with the parent's pickled models, and fit the same
    models afresh (same random_state) to send back pickled."""
    import pickle

    from test_hardening_threads import _fit_models, _model_outputs

    lin, mlp, X, y_reg, y_cls = pickle.loads(payload)
    predicted = _model_outputs(lin, mlp, X, y_reg, y_cls)
    return predicted, pickle.dumps(_fit_models(X, y_reg, y_cls))


def main_models(method):
    import multiprocessing as mp
    import pickle

    import numba

    from test_hardening_threads import _fit_models, _model_data, _model_outputs

    X, y_reg, y_cls = _model_data()
    lin, mlp = _fit_models(X, y_reg, y_cls)  # the parent's threads are running now
    want = _model_outputs(lin, mlp, X, y_reg, y_cls)
    payload = pickle.dumps((lin, mlp, X, y_reg, y_cls))
    with mp.get_context(method).Pool(2) as pool:
        results = pool.map(model_worker, [payload] * 2)
    for predicted, fitted in results:
        for key in want:
            assert np.array_equal(predicted[key], want[key]), f"worker predicted {key} differently"
        got = _model_outputs(*pickle.loads(fitted), X, y_reg, y_cls)
        for key in want:
            assert np.array_equal(got[key], want[key]), f"worker fitted {key} differently"
    print("ok", numba.threading_layer())


MODEL_SCRIPT = "import sys; sys.path.insert(0, sys.argv[1]); import test_hardening_processes " \
               "as t; t.main_models(sys.argv[2])"


def _run_models(method, timeout=240):
    try:
        proc = subprocess.run([sys.executable, "-c", MODEL_SCRIPT, str(TESTS), method],
                              env=dict(os.environ, PYTHONFAULTHANDLER="1"),
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{method}: the pool hung")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.split()[1]


def test_models_pickled_to_spawned_workers():
    _run_models("spawn")


@requires_tbb
def test_models_pickled_to_forked_workers():
    assert _run_models("fork") == "tbb"
