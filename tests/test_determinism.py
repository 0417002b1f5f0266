"""Bit-identical results for any number of threads, and from call to call.

The kernels split the rows into a fixed number of chunks and groups that
depends on the shapes only, and add the per-group partial sums in a fixed
order. So one process with ``NUMBA_NUM_THREADS=1`` and one with ``=2`` (the
variable is read when numba is imported, hence subprocesses) must produce the
very same bits, and so must a second call in the same process.

The inputs are large enough for several chunks and groups: 5000 rows, and the
mlp kernel also with 64 rows per chunk (79 chunks over 16 groups).

Both thread counts run code loaded from numba's on-disk cache (a first run
fills it), so that they compare like with like; whether freshly compiled code
gives the same bits as cached code is a test of its own, in a cache directory
of its own (it compiles every kernel once, hence ``slow``).
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent

SCRIPT = textwrap.dedent(
    """
    import sys

    import numba
    import numpy as np

    sys.path.insert(0, sys.argv[2])
    from cases import CASES, DTYPES
    from fusedgrad.kernels import _options as opt

    # every call through the parallel loops, however small (see _blas.serial_call)
    opt.SERIAL_CALL_BYTES = dict.fromkeys(opt.SERIAL_CALL_BYTES, 0)
    SHAPE = dict(N=5000, d=7, h=9, K=5)

    def run_all():
        results = {}
        for case in CASES.values():
            for opts in case.kernel_options:
                if opts.get("_max_chunk_rows") == 1:
                    continue  # 5000 chunks of one row: slow, and 64 already makes 79
                for dtype in DTYPES:
                    args = case.make_args(SHAPE, dtype, 12345)
                    out = case.kernel(*args, **opts)
                    out = out if isinstance(out, tuple) else (out,)
                    tag = ",".join(f"{k}={v}" for k, v in opts.items())
                    for i, o in enumerate(out):
                        if o is not None:
                            results[f"{case.name}|{tag}|{np.dtype(dtype).name}|{i}"] = o
        return results

    first = run_all()
    second = run_all()
    assert first.keys() == second.keys()
    for key in first:
        assert np.array_equal(first[key], second[key]), f"{key} differs between two calls"
    np.savez(sys.argv[1], threads=numba.get_num_threads(), **first)
    """
)


def _run(out, threads, **env):
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), **env)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(out), str(TESTS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return np.load(out)


def _differences(a, b):
    import fusedgrad.kernels

    keys = set(a.files) - {"threads"}
    assert keys == set(b.files) - {"threads"}
    assert any(k.startswith("mlp_loss_grad|_max_chunk_rows=64") for k in keys)
    assert {k.split("|")[0].split("/")[0] for k in keys} == set(fusedgrad.kernels.__all__)
    for k in keys:
        assert a[k].dtype in (np.float32, np.float64)
    return [k for k in sorted(keys) if not np.array_equal(a[k], b[k])]


def test_bit_identical_for_one_and_two_threads(tmp_path):
    _run(tmp_path / "warm-up.npz", 1)  # compiles into the cache if it is cold
    one = _run(tmp_path / "threads1.npz", 1)
    two = _run(tmp_path / "threads2.npz", 2)
    assert int(one["threads"]) == 1 and int(two["threads"]) == 2
    differ = _differences(one, two)
    assert not differ, f"results depend on the thread count: {differ}"


@pytest.mark.slow
def test_bit_identical_compiled_and_from_cache(tmp_path):
    """The first run compiles (into an empty cache), the second loads the cached code."""
    cache = str(tmp_path / "numba-cache")
    compiled = _run(tmp_path / "compiled.npz", 2, NUMBA_CACHE_DIR=cache)
    cached = _run(tmp_path / "cached.npz", 2, NUMBA_CACHE_DIR=cache)
    differ = _differences(compiled, cached)
    assert not differ, f"freshly compiled and cached code disagree: {differ}"


def _always_parallel(monkeypatch):
    """No call runs on the calling thread alone for being small (_blas.serial_call)."""
    from fusedgrad.kernels import _options as opt

    monkeypatch.setattr(opt, "SERIAL_CALL_BYTES", dict.fromkeys(opt.SERIAL_CALL_BYTES, 0))


def test_bit_identical_for_every_thread_count_in_one_process(monkeypatch):
    """numba.set_num_threads (per calling thread) from 1 to the maximum: same bits."""
    import numba

    from cases import CASES, DTYPES

    _always_parallel(monkeypatch)
    shape = dict(N=3000, d=5, h=6, K=4)
    most = numba.config.NUMBA_NUM_THREADS
    if most < 2:
        pytest.skip("Numba runs one thread here")
    for case in CASES.values():
        for dtype in DTYPES:
            args = case.make_args(shape, dtype, 99)
            results = []
            for threads in range(1, most + 1):
                numba.set_num_threads(threads)
                try:
                    out = case.kernel(*args)
                finally:
                    numba.set_num_threads(most)
                results.append(out if isinstance(out, tuple) else (out,))
            for threads, out in enumerate(results[1:], start=2):
                for i, (a, b) in enumerate(zip(out, results[0])):
                    assert (a is None and b is None) or np.array_equal(a, b), (
                        f"{case.name} {np.dtype(dtype)}: output {i} differs between "
                        f"1 and {threads} threads")


def test_small_calls_run_on_the_calling_thread_with_the_same_bits(monkeypatch):
    """Below its SERIAL_CALL_BYTES entry a call runs its loops on the calling
    thread alone: every kernel asks (serial_call says yes for these inputs),
    gets the same bits as through the parallel loops, and leaves the
    caller's thread count as it was."""
    import numba

    from cases import CASES
    from fusedgrad.kernels import _blas

    most = numba.config.NUMBA_NUM_THREADS
    if most < 2:
        pytest.skip("Numba runs one thread here")
    asked = []
    original = _blas.serial_call

    def spy(*args):
        answer = original(*args)
        asked.append(answer)
        return answer

    shape = dict(N=300, d=5, h=6, K=4)  # a few KB: below every entry
    modules = [m for m in list(sys.modules.values())
               if getattr(m, "__name__", "").startswith("fusedgrad.kernels.")
               and getattr(m, "serial_call", None) is original]
    assert modules
    for case in CASES.values():
        args = case.make_args(shape, np.float32, 7)
        with monkeypatch.context() as m:
            for module in modules:
                m.setattr(module, "serial_call", spy)
            del asked[:]
            small = case.kernel(*args)
            assert asked == [True], (case.name, asked)
            assert numba.get_num_threads() == most
            _always_parallel(m)
            del asked[:]
            parallel = case.kernel(*args)
            assert asked == [False], (case.name, asked)
        small = small if isinstance(small, tuple) else (small,)
        parallel = parallel if isinstance(parallel, tuple) else (parallel,)
        for a, b in zip(small, parallel):
            assert (a is None and b is None) or np.array_equal(a, b), case.name


def test_serial_switch_in_compiled_code():
    """enter_threads(True) runs the parallel loops that follow on the calling
    thread alone; leave_threads restores the count, for any count the caller set."""
    import numba
    from numba import njit, prange

    from fusedgrad.kernels._blas import enter_threads, leave_threads

    most = numba.config.NUMBA_NUM_THREADS
    if most < 2:
        pytest.skip("Numba runs one thread here")

    @njit(parallel=True)
    def probe(serial, n):
        previous = enter_threads(serial)
        inside = numba.get_num_threads()
        ids = np.zeros(n, np.int64)
        for i in prange(n):
            ids[i] = numba.get_thread_id()
        leave_threads(previous)
        return inside, ids

    for caller in sorted({1, 2, most}):
        numba.set_num_threads(caller)
        try:
            inside, ids = probe(True, 4096)
            assert inside == 1 and ids.max() == 0
            assert numba.get_num_threads() == caller
            inside, _ = probe(False, 4096)
            assert inside == caller
            assert numba.get_num_threads() == caller
        finally:
            numba.set_num_threads(most)


MODEL_SCRIPT = textwrap.dedent(
    """
    import sys, warnings
    import numba
    import numpy as np
    from fusedgrad.models import LinearRegression, MLPClassifier

    warnings.simplefilter("ignore")
    rng = np.random.default_rng(5)
    X = rng.standard_normal((1500, 6)).astype(np.float32)
    y_reg = X @ rng.standard_normal(6).astype(np.float32) + rng.standard_normal(1500).astype(np.float32)
    y_cls = (X[:, 0] + X[:, 1] ** 2 > 0.5).astype(int) + (X[:, 2] > 1)
    fits = {}
    for solver in ("normal", "qr", "gd"):
        m = LinearRegression(solver=solver, max_iter=50).fit(X, y_reg)
        fits[f"linear-{solver}"] = [m.coef_, np.asarray(m.intercept_)]
    for name, params in [
        ("mlp-adam-fused", dict(hidden_layer_sizes=(16,), solver="adam")),
        ("mlp-sgd-fused", dict(hidden_layer_sizes=(16,), solver="sgd", learning_rate_init=0.1)),
        ("mlp-gd-fused", dict(hidden_layer_sizes=(16,), solver="gd", learning_rate_init=0.5)),
        ("mlp-adam-layered", dict(hidden_layer_sizes=(8, 5), activation="tanh")),
        ("mlp-early-stopping", dict(hidden_layer_sizes=(16,), early_stopping=True)),
    ]:
        runs = []
        for _ in range(2):
            m = MLPClassifier(max_iter=5, random_state=42, **params).fit(X, y_cls)
            runs.append(m.coefs_ + m.intercepts_ + [np.asarray(m.loss_curve_)])
        for a, b in zip(*runs):
            assert np.array_equal(a, b), f"{name}: two fits with the same random_state differ"
        fits[name] = runs[0]
    flat = {f"{k}|{i}": v for k, arrays in fits.items() for i, v in enumerate(arrays)}
    np.savez(sys.argv[1], threads=numba.get_num_threads(), **flat)
    """
)


def test_models_bit_identical_for_one_and_two_threads(tmp_path):
    """Fits with the same random_state: the same model in 1 and 2 threads, and twice in a row."""
    results = {}
    for threads in (1, 2):
        out = tmp_path / f"models{threads}.npz"
        env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
        proc = subprocess.run([sys.executable, "-c", MODEL_SCRIPT, str(out)], env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        results[threads] = np.load(out)
    one, two = results[1], results[2]
    assert int(one["threads"]) == 1 and int(two["threads"]) == 2
    keys = set(one.files) - {"threads"}
    assert keys == set(two.files) - {"threads"}
    assert {k.split("|")[0] for k in keys} >= {"linear-qr", "mlp-adam-fused", "mlp-adam-layered"}
    differ = [k for k in sorted(keys) if not np.array_equal(one[k], two[k])]
    assert not differ, f"fitted models depend on the thread count: {differ}"
