"""The kernels under concurrency: Python threads, thread pools, nested parallelism.

* Four Python threads calling every kernel at once get bit for bit the
  results of serial calls (the kernels release the GIL and share no state
  between calls).
* The Numba threading layer in use is safe for concurrent callers: ``tbb``
  when the ``tbb`` package is installed (fusedgrad makes pip's TBB visible to
  Numba), else ``omp``; never ``workqueue``, which aborts the process on
  concurrent use. A layer chosen by the user is respected.
* Nested use does not oversubscribe: while four threads each run a kernel
  whose ``prange`` wants every Numba thread, the process has no more kernel
  threads than ``max(cores, NUMBA_NUM_THREADS)`` (TBB shares one pool between
  callers; GNU OpenMP gives each calling thread a team of its own, hence
  ``tbb``), and BLAS runs single-threaded inside the kernels, its thread
  count restored afterwards.
* Kernels inside joblib's threading backend and a ThreadPoolExecutor finish
  (no deadlock) with the serial results.

Process-level checks (fork, spawn) are in ``test_hardening_processes.py``.
"""

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from cases import CASES

TESTS = Path(__file__).resolve().parent

#: Several chunks and groups per call, still quick.
SHAPE = dict(N=3000, d=9, h=7, K=5)


def _tbb_installed():
    try:
        importlib.metadata.distribution("tbb")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


requires_tbb = pytest.mark.skipif(
    not _tbb_installed(),
    reason="the tbb package is not installed: Numba uses GNU OpenMP, which gives every "
    "calling thread its own team and is not fork-safe",
)


def _all_args(dtype=np.float32):
    return {name: case.make_args(SHAPE, dtype, 7) for name, case in CASES.items()}


def _results(args):
    return {name: CASES[name].kernel(*a) for name, a in args.items()}


def _assert_same(got, want, where):
    for name in want:
        g, w = got[name], want[name]
        g, w = (g if isinstance(g, tuple) else (g,)), (w if isinstance(w, tuple) else (w,))
        for i, (a, b) in enumerate(zip(g, w)):
            assert (a is None and b is None) or np.array_equal(a, b), \
                f"{where}: {name} output {i} differs from the serial result"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_four_threads_match_serial(dtype):
    args = _all_args(dtype)
    serial = _results(args)
    barrier = threading.Barrier(4)
    results = [None] * 4
    errors = []

    def work(i):
        try:
            barrier.wait()
            rounds = []
            order = list(args)
            for r in range(3):
                order = order[i + r:] + order[: i + r]  # different kernels at the same time
                rounds.append({name: CASES[name].kernel(*args[name]) for name in order})
            results[i] = rounds
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    assert not errors, errors
    for i, rounds in enumerate(results):
        for r, got in enumerate(rounds):
            _assert_same(got, serial, f"thread {i} round {r}")


def test_thread_pool_executor_matches_serial():
    args = _all_args()
    serial = _results(args)
    jobs = [name for name in args for _ in range(3)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda name: (name, CASES[name].kernel(*args[name])), jobs))
    for name, result in got:
        _assert_same({name: result}, {name: serial[name]}, "ThreadPoolExecutor")


def test_joblib_threading_backend_matches_serial():
    joblib = pytest.importorskip("joblib")
    args = _all_args()
    serial = _results(args)
    jobs = [name for name in args for _ in range(3)]
    got = joblib.Parallel(n_jobs=4, backend="threading")(
        joblib.delayed(lambda name: (name, CASES[name].kernel(*args[name])))(name)
        for name in jobs)
    for name, result in got:
        _assert_same({name: result}, {name: serial[name]}, "joblib threading")


def test_blas_threads_restored_after_concurrent_calls():
    """Each call limits BLAS to one thread and restores it, also when calls overlap."""
    from threadpoolctl import threadpool_info

    def blas():
        return sorted((i["filepath"], i["num_threads"]) for i in threadpool_info()
                      if i["user_api"] == "blas")

    before = blas()
    test_four_threads_match_serial(np.float32)
    assert blas() == before


def _kernel_blas():
    from fusedgrad.kernels._blas import kernel_blas_libraries

    libs = kernel_blas_libraries()
    counts = [lib.get_num_threads() for lib in libs]
    if max(counts) < 2:
        pytest.skip("the kernels' BLAS runs one thread already")
    return libs, counts


def test_blas_limit_acts_from_any_thread():
    """A worker thread's limit sets the kernels' BLAS to one thread and restores
    it, also after the main thread set a count through threadpoolctl (which,
    from version 3.8, ignores OpenBLAS counts set by any thread but the first
    that set one: the kernels then ran BLAS multi-threaded inside their own
    threads)."""
    from fusedgrad.kernels._blas import single_threaded_blas

    libs, before = _kernel_blas()
    for lib, n in zip(libs, before):
        lib.set_num_threads(n)  # the main thread sets a count first
    inside = []

    def worker():
        with single_threaded_blas():
            inside.extend(lib.get_num_threads() for lib in libs)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert inside == [1] * len(libs)
    assert [lib.get_num_threads() for lib in libs] == before


def test_blas_limit_shared_by_overlapping_threads():
    """Two threads' limits overlap: the first entry (main thread) sets it, the
    last exit (the worker, after the main thread left) restores the counts;
    in between BLAS stays at one thread."""
    from fusedgrad.kernels._blas import single_threaded_blas

    libs, before = _kernel_blas()
    entered, main_left = threading.Event(), threading.Event()
    seen = {}

    def worker():
        with single_threaded_blas():
            entered.set()
            main_left.wait(10)
            seen["alone"] = [lib.get_num_threads() for lib in libs]

    thread = threading.Thread(target=worker)
    with single_threaded_blas():
        thread.start()
        assert entered.wait(10)
    main_left.set()
    thread.join()
    assert seen["alone"] == [1] * len(libs)
    assert [lib.get_num_threads() for lib in libs] == before


def test_blas_count_changed_during_limit_is_kept():
    """A count that someone else set while the limit was held is not overwritten
    by the limit's exit."""
    from fusedgrad.kernels._blas import _count_setter, single_threaded_blas

    libs, before = _kernel_blas()
    try:
        with single_threaded_blas():
            for lib, n in zip(libs, before):
                _count_setter(lib)(n + 1)
        assert [lib.get_num_threads() for lib in libs] == [n + 1 for n in before]
    finally:
        for lib, n in zip(libs, before):
            _count_setter(lib)(n)


# ---------------------------------------------------------------------------
# In fresh processes: the threading layer, and the thread count under nesting
# ---------------------------------------------------------------------------

PROBE = textwrap.dedent(
    """
    import json, os, sys, threading, time
    import numpy as np
    import numba
    sys.path.insert(0, sys.argv[1])
    from cases import CASES

    def native_threads():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])

    shape = dict(N=20000, d=16, h=16, K=5)
    args = {n: c.make_args(shape, np.float32, 1) for n, c in CASES.items()}
    serial = {n: CASES[n].kernel(*a) for n, a in args.items()}  # starts the threads
    base = native_threads()
    peak, stop = [base], threading.Event()

    def monitor():
        while not stop.is_set():
            peak[0] = max(peak[0], native_threads())
            time.sleep(0.0005)

    barrier = threading.Barrier(4)
    same = [True]

    def work():
        barrier.wait()
        for _ in range(5):
            for n, a in args.items():
                out = CASES[n].kernel(*a)
                out, ref = (out, serial[n]) if isinstance(out, tuple) else ((out,), (serial[n],))
                same[0] &= all((x is None and y is None) or np.array_equal(x, y)
                               for x, y in zip(out, ref))

    m = threading.Thread(target=monitor)
    m.start()
    workers = [threading.Thread(target=work) for _ in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    stop.set()
    m.join()
    print(json.dumps(dict(layer=numba.threading_layer(), numba_threads=numba.get_num_threads(),
                          cpus=len(os.sched_getaffinity(0)), base=base, peak=peak[0],
                          same=same[0])))
    """
)


def _probe(**env):
    proc = subprocess.run([sys.executable, "-c", PROBE, str(TESTS)],
                          env=dict(os.environ, **env), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_threading_layer_is_safe_for_concurrent_callers():
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_THREADING_LAYER")}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(TESTS)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["same"]
    assert info["layer"] in ("tbb", "omp"), info
    if _tbb_installed():
        assert info["layer"] == "tbb", info


def test_user_choice_of_threading_layer_respected():
    info = _probe(NUMBA_THREADING_LAYER="omp")
    assert info["layer"] == "omp" and info["same"]


@requires_tbb
def test_nested_calls_do_not_oversubscribe():
    """Four threads x a prange over 4 Numba threads: at most 3 more threads in all."""
    info = _probe(NUMBA_NUM_THREADS="4")
    assert info["layer"] == "tbb" and info["same"], info
    extra = info["peak"] - info["base"] - 4 - 1  # the four callers and the monitor
    limit = max(info["numba_threads"], info["cpus"]) - 1
    assert extra <= limit, f"{extra} kernel threads started, more than {limit}: {info}"


# ---------------------------------------------------------------------------
# The models: one fitted model shared by threads; separate fits in threads
# ---------------------------------------------------------------------------


def _model_data():
    rng = np.random.default_rng(21)
    X = rng.standard_normal((1500, 6)).astype(np.float32)
    y_reg = X @ np.arange(1.0, 7.0, dtype=np.float32)
    y_cls = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)
    return X, y_reg, y_cls


def _fit_models(X, y_reg, y_cls):
    """Fits that stop by their tolerance (no ConvergenceWarning: warnings.catch_warnings
    is not thread-safe, so the threads must not need it)."""
    from fusedgrad.models import LinearRegression, MLPClassifier

    lin = LinearRegression(solver="gd", tol=1e-3, max_iter=1000).fit(X, y_reg)
    mlp = MLPClassifier(hidden_layer_sizes=(12,), max_iter=100, tol=1e9, n_iter_no_change=2,
                        random_state=3).fit(X, y_cls)
    assert lin.n_iter_ < 1000 and mlp.n_iter_ < 100
    return lin, mlp


def _model_outputs(lin, mlp, X, y_reg, y_cls):
    return {"lin.coef_": lin.coef_, "lin.predict": lin.predict(X),
            "lin.score": np.float64(lin.score(X, y_reg)),
            "mlp.coefs_0": mlp.coefs_[0], "mlp.coefs_1": mlp.coefs_[1],
            "mlp.predict_proba": mlp.predict_proba(X), "mlp.predict": mlp.predict(X),
            "mlp.score": np.float64(mlp.score(X, y_cls))}


def _run_threads(work, n=4):
    barrier = threading.Barrier(n)
    results, errors = [None] * n, []

    def run(i):
        try:
            barrier.wait()
            results[i] = work()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    assert not errors, errors
    return results


def _assert_outputs_equal(got, want, where):
    for key in want:
        assert np.array_equal(got[key], want[key]), f"{where}: {key} differs"


def test_shared_fitted_models_predict_concurrently():
    X, y_reg, y_cls = _model_data()
    lin, mlp = _fit_models(X, y_reg, y_cls)
    serial = _model_outputs(lin, mlp, X, y_reg, y_cls)
    for i, got in enumerate(_run_threads(lambda: _model_outputs(lin, mlp, X, y_reg, y_cls))):
        _assert_outputs_equal(got, serial, f"thread {i}")


def test_separate_fits_in_threads_match_serial():
    X, y_reg, y_cls = _model_data()
    serial = _model_outputs(*_fit_models(X, y_reg, y_cls), X, y_reg, y_cls)
    results = _run_threads(lambda: _model_outputs(*_fit_models(X, y_reg, y_cls),
                                                  X, y_reg, y_cls))
    for i, got in enumerate(results):
        _assert_outputs_equal(got, serial, f"thread {i}")


# ---------------------------------------------------------------------------
# Measurement: python tests/test_hardening_threads.py  (omp against tbb)
# ---------------------------------------------------------------------------

TIMING = textwrap.dedent(
    """
    import json, sys, threading, time
    import numpy as np
    import numba
    sys.path.insert(0, sys.argv[1])
    from cases import CASES

    def best(f, repeat=7):
        f()
        times = []
        for _ in range(repeat):
            n, t0 = 0, time.perf_counter()
            while True:
                f()
                n += 1
                if time.perf_counter() - t0 > 0.2:
                    break
            times.append((time.perf_counter() - t0) / n)
        return float(np.median(times))

    out = {}
    for label, shape in [("small", dict(N=256, d=16, h=32, K=4)),
                         ("large", dict(N=65536, d=64, h=128, K=10))]:
        for name in ("mlp_loss_grad", "softmax_cross_entropy", "affine_sigmoid", "gram",
                     "ols_loss_grad"):
            args = CASES[name].make_args(shape, np.float32, 0)
            out[f"{name} {label}"] = best(lambda: CASES[name].kernel(*args))
    args = CASES["mlp_loss_grad"].make_args(dict(N=16384, d=64, h=128, K=10), np.float32, 0)

    def four_threads():
        ts = [threading.Thread(target=lambda: [CASES["mlp_loss_grad"].kernel(*args)
                                               for _ in range(5)]) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    out["mlp_loss_grad 4 threads x 5 calls"] = best(four_threads, repeat=3)

    import warnings
    from fusedgrad.models import MLPClassifier
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20000, 32)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)
    model = MLPClassifier(hidden_layer_sizes=(64,), batch_size=200, max_iter=1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["MLPClassifier.fit epoch, batch 200"] = best(lambda: model.fit(X, y), repeat=3)
    print(json.dumps(dict(layer=numba.threading_layer(), times=out)))
    """
)


def measure_layers():
    """Median seconds per call of the kernels under each threading layer."""
    results = {}
    for layer in ("omp", "tbb"):
        proc = subprocess.run([sys.executable, "-c", TIMING, str(TESTS)],
                              env=dict(os.environ, NUMBA_THREADING_LAYER=layer),
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{layer}: not available ({proc.stderr.strip().splitlines()[-1]})")
            continue
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        results[info["layer"]] = info["times"]
    return results


if __name__ == "__main__":
    layers = measure_layers()
    names = list(next(iter(layers.values())))
    print(f"{'kernel, shape':40s}" + "".join(f"{layer:>12s}" for layer in layers))
    for name in names:
        print(f"{name:40s}" + "".join(f"{layers[l][name] * 1e3:10.3f}ms" for l in layers))
