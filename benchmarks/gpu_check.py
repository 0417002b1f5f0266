"""Check and time every CUDA kernel on a real GPU, in one run.

How to run it on a lent H100/H200 (the device tool; its README describes the
steps). numba-cuda 0.30.4 cannot compile a kernel under numpy 2.5, which the
GPU image has, so a numpy 2.4.x wheel for Python 3.12 travels with the tree:

1. Here, once, in the repository root (tbb and tcmlib give the CPU side
   of the model fits Numba's TBB threading layer, as on a user's machine)::

       echo /.whl/ >> .git/info/exclude
       python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
           --implementation cp --platform manylinux_2_28_x86_64 \\
           --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \\
           --platform manylinux2014_x86_64 -d .whl numpy==2.4.6 tbb==2023.2.0 tcmlib==1.6.0

2. One ``run`` with ``kind="nvidia-h200"`` (PyTorch's step at the largest
   shape may not fit an H100's 80 GB: X is 13 GB, each hidden activation 17), ``carry=[".whl"]`` and
   ``timeout_s=570``. The first run (H200, 2026-11-27) took 286 s with
   ``--quick``, the machine's start about 30 s more::

       python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \\
           --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit;
       nvidia-smi -L;
       NUMBA_NUM_THREADS=4 python3 benchmarks/gpu_check.py --warm-cpu > $OUT/warm_cpu.log 2>&1 &
       PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --quick --budget-s 430 \\
           --deadline-s 495 --commit <git rev-parse HEAD here> 2>&1 | tee $OUT/gpu_check.log

   The image has numba 0.68, numba-cuda 0.30.4, CuPy, PyTorch and SciPy.
   The JSON results go to ``$OUT/gpu_check.json`` (``$OUT`` set by the tool)
   or ``--out PATH``. Then copy the tables into benchmarks/NOTES.md with the
   card, the date and the commit. A lent machine may not be lent twice in a
   session: plan on this one run. Optionally, if time is left, after the
   script: ``FUSEDGRAD_TEST_GPU=1 python3 -m pytest -q -m gpu tests/test_cuda.py``.
   Every launch goes through ``rt.launch``, untimed on a GPU before the next
   run; should checks fail, ``--option CUDA_FAST_LAUNCH=False`` (any option of
   ``fusedgrad.kernels._options``, repeatable) reruns them on numba's own
   launch; the log's ``rt.launch:`` line near its end says which keys it packed.

What it does:

* **checks**: every kernel and every path (fused and layered MLP, staged and
  per-row softmax, one-pass and two-pass OLS, numba and cuBLAS products,
  warp-shuffle and shared-memory reductions, ``network_loss_grad`` with each
  hidden activation, the layer kernels with each activation) on fresh random data, float32
  (and float64 for some) against the float64 NumPy reference on the host,
  with every output buffer filled with NaN first (unwritten elements show);
* **timings**: CUDA events around each call, warm-up first, median of the
  repeats: ``mlp_loss_grad`` against a PyTorch float32 step (forward, loss,
  backward of W1, b1, W2, b2; TF32 off) on the same GPU at the issue's four
  shapes, ``network_loss_grad`` against a PyTorch step of the same network at
  ``fusedgrad bench``'s deeper-network shapes (ReLU and tanh), and the
  row-wise/elementwise kernels' achieved GB/s against a measured
  device-to-device copy;
* **design alternatives** (``--no-ablations`` skips them): each choice of
  the kernels timed against the one it replaced, in the same run: the staged
  softmax-CE tile against one thread per row with strided reads and against
  one block per row, and the staged kernels bare (preallocated outputs, no
  checks or loss sum) as the strided one is timed; the grid of the row
  kernels (``GRID_SWEEP`` blocks per SM); bias gradients by block partial
  sums against a global atomic per element; the thin product and row-sum
  kernels against the products they replaced (``affine_sigmoid``, its
  backward, ``gram``, the layered MLP path); the fused MLP kernel against the layered path (numba
  and cuBLAS products) at the thin shapes, and the fused kernel's block size,
  register bound and grid (``FUSED_SWEEP``);
* **profile**: the GPU kernels and copies of one wrapper call (torch.profiler's
  CUPTI table) beside its time between events, for the row-wise kernels and
  the MLP shapes: what the events time but no kernel does is host time;
* **models**: wall-clock ``fit`` of ``MLPClassifier(device='cuda')`` and
  ``LinearRegression(device='cuda')`` against the same models on
  ``device='cpu'`` at a few shapes (``--no-models`` skips them).

The sections run in that order; none starts after ``--budget-s`` seconds
(450), no row of any section after ``--deadline-s`` (530), a row that raises
is recorded with its error and the rest go on, and the JSON is rewritten
after every row, so a run cut off by its time limit still returns what it
measured. ``--warm-cpu``, started in the background beside the main run,
compiles the CPU side of the model fits (Numba's disk cache) while the checks
compile the GPU kernels.

Other modes:

* ``--smoke``: under numba's CUDA simulator (no GPU, no PyTorch), tiny
  shapes, tiny blocks: exercises the checks and the timing code (about a
  minute; the test suite runs it, ``test_cuda.py::test_gpu_check_smoke``).
* ``--ptx``: no GPU needed, but NVVM and NVRTC (and ``ptxas`` for the
  resource report), matching the installed cuda-bindings (13.5 here)::

      pip install --target /tmp/nv "nvidia-nvvm==13.5.*" \
          "nvidia-cuda-nvrtc==13.5.*" "nvidia-cuda-nvcc==13.5.*"
      export PYTHONPATH=/tmp/nv LD_LIBRARY_PATH=/tmp/nv/nvidia/cu13/lib \
          PATH=/tmp/nv/nvidia/cu13/bin:$PATH
      unset NUMBA_ENABLE_CUDASIM
      python benchmarks/gpu_check.py --ptx       # about 70 s

  Compiles every kernel the wrappers and the models' ``device='cuda'`` fits
  launch, with the default options, to PTX for sm_90 and reports float64
  instructions in the float32 kernels, and registers, stack frame and spills
  from ``ptxas``. No numbers come out of this mode, only whether real
  numba-cuda accepts every kernel (the simulator runs plain Python and cannot
  tell).
"""

import argparse
import cProfile
import datetime
import io
import json
import math
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SMOKE = "--smoke" in sys.argv
# Small check launches would each warn about grid under-utilisation.
os.environ.setdefault("NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS", "0")
if SMOKE:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    # the simulator's threads hand over every 10 us (its race mended): 8 min -> 1
    sys.path.insert(0, str(REPO / "tests"))
    import _cudasim  # noqa: E402

    _cudasim.speed_up()

import numpy as np  # noqa: E402
from numba import cuda  # noqa: E402  (after NUMBA_ENABLE_CUDASIM; kernels below need it global)

# ---------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------

#: (N, d, h, K) of the timed MLP steps (the issue's shapes).
MLP_SHAPES = [
    (65536, 784, 256, 10),
    (262144, 64, 128, 10),
    (1048576, 16, 32, 4),
    (4194304, 784, 1024, 10),
]

#: PyTorch float32 step times measured on an H200 (issue 5), ms.
TORCH_H200_MS = {
    (65536, 784, 256, 10): 1.60,
    (262144, 64, 128, 10): 1.37,
    (1048576, 16, 32, 4): 2.30,
    (4194304, 784, 1024, 10): 352.0,
}

SMOKE_OPTIONS = dict(
    CUDA_TPB=8, CUDA_SOFTMAX_TPB=4, CUDA_MAX_BLOCKS=3, CUDA_GEMM_BM=4, CUDA_GEMM_BN=4,
    CUDA_GEMM_BK=2, CUDA_GEMM_TM=2, CUDA_GEMM_TN=2, CUDA_MAX_SPLITS=3, CUDA_FUSED_TPB=16,
    CUDA_FUSED_MAX_ROWS=8, CUDA_OLS_MAX_ROWS=4, CUDA_CHUNK_BYTES=256, CUDA_WARP_SHUFFLE=False,
    CUDA_THIN_TPB=16, CUDA_THIN_MAX_ROWS=16,
)


def log(msg):
    print(msg, flush=True)


#: Set by main: writes the JSON so far (every finished row is kept if the run
#: is cut off) and the perf_counter time after which no further row starts.
_RUN = dict(save=lambda: None, deadline=math.inf)


def checkpoint():
    _RUN["save"]()


def past_deadline():
    return time.perf_counter() > _RUN["deadline"]


def guarded(rows, label, fn, **fields):
    """Append ``fn()``'s row to ``rows`` or, if it raised, a row naming the
    error (with ``fields``, which a table prints it by); skip it past the
    deadline. One failing shape does not cost the rest."""
    if past_deadline():
        rows.append(dict(fields, row=label, error="skipped: past the deadline"))
        log(f"  {label}: skipped, past the deadline")
        return
    try:
        rows.append(fn())
    except Exception as exc:  # noqa: BLE001  (report and go on)
        import traceback

        rows.append(dict(fields, row=label, error=f"{type(exc).__name__}: {exc}"[:300],
                         traceback=traceback.format_exc()[-2000:]))
        log(f"  {label}: ERROR {type(exc).__name__}: {exc}"[:400])
    checkpoint()


# ---------------------------------------------------------------------------
# Correctness checks
# ---------------------------------------------------------------------------


def check_configs(smoke):
    """(label, case name, shape, dtype, kernel kwargs, option overrides)."""
    f32, f64 = np.float32, np.float64
    if smoke:
        s = dict(N=13, d=5, h=6, K=3)
        return [
            ("mlp fused", "mlp_loss_grad", s, f32, {"_path": "fused"}, {}),
            ("mlp layered", "mlp_loss_grad", s, f64, {"_path": "layered"}, {}),
            ("softmax staged", "softmax_cross_entropy", s, f32, {}, {}),
            ("softmax per-row", "softmax_cross_entropy", s, f32, {},
             {"CUDA_SOFTMAX_STAGED_MAX_K": 2}),
            ("affine_sigmoid", "affine_sigmoid", s, f32, {}, {}),
            ("affine_sigmoid_backward", "affine_sigmoid_backward", s, f32, {}, {}),
            ("affine_sigmoid_backward no W", "affine_sigmoid_backward/no_W", s, f64, {}, {}),
            ("ols one-pass", "ols_loss_grad", s, f32, {}, {}),
            ("ols two-pass", "ols_loss_grad", s, f32, {}, {"CUDA_SHARED_BYTES": 64}),
            ("gram", "gram", s, f64, {}, {}),
            ("network relu", "network_loss_grad/relu", s, f32, {}, {}),
            ("network tanh", "network_loss_grad/tanh", s, f64, {}, {}),
            ("affine_activation tanh", "affine_activation/tanh", s, f32, {}, {}),
            ("affine_activation softmax", "affine_activation/softmax", s, f32, {}, {}),
            ("affine_activation_backward relu", "affine_activation_backward/relu", s, f32, {},
             {}),
            ("affine_activation_backward softmax", "affine_activation_backward/softmax", s,
             f64, {}, {}),
        ]
    thin1 = dict(N=30000, d=64, h=128, K=10)
    thin2 = dict(N=70000, d=16, h=32, K=4)
    fat = dict(N=6000, d=784, h=256, K=10)
    odd = dict(N=9999, d=33, h=47, K=7)
    configs = []
    for shuffle in (True, False):
        sh = {"CUDA_WARP_SHUFFLE": shuffle}
        tag = "shfl" if shuffle else "smem"
        for dt in (f32, f64):
            dn = np.dtype(dt).name
            configs += [
                (f"mlp fused {thin1['d']}x{thin1['h']} {tag} {dn}", "mlp_loss_grad", thin1, dt,
                 {"_path": "fused"}, sh),
                (f"mlp fused {thin2['d']}x{thin2['h']} {tag} {dn}", "mlp_loss_grad", thin2, dt,
                 {"_path": "fused"}, sh),
                (f"softmax staged {tag} {dn}", "softmax_cross_entropy", odd, dt, {}, sh),
                (f"softmax per-row {tag} {dn}", "softmax_cross_entropy",
                 dict(N=3000, K=1000), dt, {}, sh),
                (f"ols one-pass {tag} {dn}", "ols_loss_grad", odd, dt, {}, sh),
            ]
    for gemm in ("numba", "cupy"):
        g = {"CUDA_GEMM": gemm}
        for dt in (f32, f64):
            dn = np.dtype(dt).name
            configs += [
                (f"mlp layered {gemm} {dn}", "mlp_loss_grad", fat, dt, {"_path": "layered"}, g),
                (f"mlp layered odd {gemm} {dn}", "mlp_loss_grad", odd, dt, {"_path": "layered"},
                 dict(g, CUDA_CHUNK_BYTES=1 << 20)),
                (f"affine_sigmoid {gemm} {dn}", "affine_sigmoid", fat, dt, {}, g),
                (f"affine_sigmoid_backward {gemm} {dn}", "affine_sigmoid_backward", odd, dt, {}, g),
                (f"affine_sigmoid_backward no W {gemm} {dn}", "affine_sigmoid_backward/no_W",
                 fat, dt, {}, g),
                (f"gram {gemm} {dn}", "gram", dict(N=50000, d=130), dt, {}, g),
                (f"gram thin {gemm} {dn}", "gram", dict(N=200000, d=16), dt, {}, g),
                # two hidden layers (d -> h -> h // 2 + 1 -> K), every activation
                (f"network relu {gemm} {dn}", "network_loss_grad/relu", fat, dt, {}, g),
                (f"network tanh odd chunked {gemm} {dn}", "network_loss_grad/tanh", odd, dt, {},
                 dict(g, CUDA_CHUNK_BYTES=1 << 20)),
                (f"network logistic odd {gemm} {dn}", "network_loss_grad/logistic", odd, dt, {},
                 g),
                (f"network identity odd {gemm} {dn}", "network_loss_grad/identity", odd, dt, {},
                 g),
            ]
            # (the cuBLAS epilogues of every activation are checked by the network rows)
            for act in ("identity", "tanh", "relu", "softmax") if gemm == "numba" else ():
                configs += [
                    (f"affine_activation {act} {gemm} {dn}", f"affine_activation/{act}", fat, dt,
                     {}, g),
                    (f"affine_activation_backward {act} {gemm} {dn}",
                     f"affine_activation_backward/{act}", odd, dt, {}, g),
                ]
    configs += [
        ("ols two-pass float32", "ols_loss_grad", dict(N=3000, d=20000), f32, {}, {}),
    ]
    # the thin kernels at a thin layer (16 -> 32), and what they replaced
    off = {"CUDA_THIN": False}
    for dt in (f32, f64):
        dn = np.dtype(dt).name
        configs += [
            (f"affine_sigmoid thin {dn}", "affine_sigmoid", thin2, dt, {}, {}),
            (f"affine_sigmoid_backward thin {dn}", "affine_sigmoid_backward", thin2, dt, {}, {}),
            (f"affine_activation_backward relu thin {dn}", "affine_activation_backward/relu",
             thin2, dt, {}, {}),
            (f"affine_activation_backward tanh thin no W {dn}",
             "affine_activation_backward/tanh/no_W", thin2, dt, {}, {}),
        ]
    configs += [
        ("affine_sigmoid_backward thin, dZ stored float32", "affine_sigmoid_backward", thin2,
         f32, {}, {"CUDA_THIN_BACKWARD": False}),
        ("affine_sigmoid without thin kernels float32", "affine_sigmoid", thin2, f32, {}, off),
        ("affine_sigmoid_backward without thin kernels float32", "affine_sigmoid_backward",
         thin2, f32, {}, off),
        ("gram thin without thin kernels float32", "gram", dict(N=200000, d=16), f32, {}, off),
    ]
    return configs


class Options:
    """Temporarily set attributes of the options module."""

    def __init__(self, opt, overrides):
        self.opt, self.overrides, self.saved = opt, overrides, {}

    def __enter__(self):
        for k, v in self.overrides.items():
            self.saved[k] = getattr(self.opt, k)
            setattr(self.opt, k, v)

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            setattr(self.opt, k, v)


def run_checks(smoke, rows):
    sys.path.insert(0, str(REPO / "tests"))
    from cases import CASES, as_float64, outputs, rel_error

    from fusedgrad.kernels import _options as opt
    from fusedgrad.kernels.cuda import _gemm
    from fusedgrad.kernels.cuda import _runtime as rt

    rt.POISON = True
    for label, name, shape, dtype, kwargs, overrides in check_configs(smoke):
        if past_deadline():
            rows.append(dict(check=label, status="skipped (past the deadline)"))
            continue
        if overrides.get("CUDA_GEMM") == "cupy" and _gemm._cupy() is None:
            rows.append(dict(check=label, status="skipped (no CuPy)"))
            continue
        case = CASES[name]
        full = dict(N=1, d=1, h=1, K=2)
        full.update(shape)
        seed = zlib.crc32(label.encode()) % 1000  # the same data in every run
        args = case.make_args(full, dtype, seed)
        t0 = time.perf_counter()
        try:
            with Options(opt, overrides):
                got = case.cuda_kernel(*args, **kwargs)
            want = case.reference(*as_float64(args))
            errs = []
            for g, w in zip(outputs(got), outputs(want)):
                if w is None:
                    errs.append(0.0 if g is None else np.inf)
                    continue
                g = np.asarray(g, dtype=np.float64)
                errs.append(np.inf if not np.all(np.isfinite(g)) else rel_error(g, w))
            tol = case.tolerance[np.dtype(dtype)]
            worst = max(errs)
            status = "ok" if worst <= tol else "FAIL"
            rows.append(dict(check=label, status=status, max_rel_error=worst, tolerance=tol,
                             errors=[float(f"{e:.3g}") for e in errs], seed=seed,
                             seconds=round(time.perf_counter() - t0, 2)))
        except Exception as exc:  # report and go on
            rows.append(dict(check=label, status=f"ERROR {type(exc).__name__}: {exc}"[:300]))
        r = rows[-1]
        log(f"  {r['check']:<44} {r['status']:<6} {r.get('max_rel_error', float('nan')):9.2e}"
            f"  {r.get('seconds', 0):6.2f} s")
        checkpoint()
    for fast in (True, False):
        if not past_deadline():
            rows.append(sigmoid_accuracy(smoke, fast))
            r = rows[-1]
            log(f"  {r['check']:<44} {r['status']:<6} {r.get('max_ulp', float('nan')):9.2f} ulp")
            checkpoint()
    rt.POISON = False
    return rows


#: Largest error of the float32 sigmoid allowed, in units of the last place of
#: the exact value (``CUDA_FAST_SIGMOID``: at most 2 ulp from ``expf``, 2 from
#: ``__fdividef``, half a unit from ``1 + e``).
SIGMOID_MAX_ULP = 8


def sigmoid_accuracy(smoke, fast):
    """The float32 sigmoid of ``affine_sigmoid`` (``z * 1 + 0`` is exact) on
    2**20 points of [-87, 88] (where it is a normal float32) against the
    float64 one, in units of the last place; below -87 (the fast division
    returns 0 once ``1 + exp(-z)`` passes 2**126) and at +-inf against 2**-126
    absolute. NaN must stay NaN."""
    from fusedgrad.kernels import _options as opt

    import fusedgrad.kernels.cuda as kc

    label = f"sigmoid float32, {'fast' if fast else 'IEEE'} division"
    n, h = (256, 2) if smoke else (1 << 20, 32)
    # (the simulator's exp is Python's, which raises past about 709)
    tail = [-87.5, -88.7, -89.0, -100.0] + ([] if smoke else [-1e4, -np.inf])
    z = np.concatenate([np.linspace(-87.0, 88.0, n), tail, [np.inf, 1e4, 100.0, np.nan]])
    z = z.astype(np.float32)
    try:
        with Options(opt, {"CUDA_FAST_SIGMOID": fast}):
            got = kc.affine_sigmoid(z[:, None], np.ones((1, h), np.float32),
                                    np.zeros(h, np.float32), check_finite=False)
        with np.errstate(over="ignore"):
            want = 1.0 / (1.0 + np.exp(-z.astype(np.float64)))
        got = got.astype(np.float64)
        body = slice(0, n)
        ulp = np.spacing(want[body].astype(np.float32)).astype(np.float64)
        err = np.abs(got[body] - want[body, None]) / ulp[:, None]
        tail = np.abs(got[n:-1] - want[n:-1, None]).max()
        worst = float(err.max())
        nan_ok = bool(np.all(np.isnan(got[-1])))
        status = "ok" if worst <= SIGMOID_MAX_ULP and tail <= 2.0 ** -126 and nan_ok else "FAIL"
        return dict(check=label, status=status, max_ulp=worst,
                    mean_ulp=float(err.mean()), tail_abs_error=float(tail), nan_kept=nan_ok,
                    worst_z=float(z[np.unravel_index(err.argmax(), err.shape)[0]]),
                    tolerance_ulp=SIGMOID_MAX_ULP)
    except Exception as exc:  # report and go on
        return dict(check=label, status=f"ERROR {type(exc).__name__}: {exc}"[:300])


# ---------------------------------------------------------------------------
# Timings
# ---------------------------------------------------------------------------


def time_events(fn, reps, warmup):
    """Median milliseconds of ``fn()`` between CUDA events (after ``warmup`` calls)."""
    from numba import cuda

    for _ in range(warmup):
        fn()
    cuda.synchronize()
    times = []
    for _ in range(reps):
        start, stop = cuda.event(), cuda.event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def copy_bandwidth(nbytes, reps):
    """Device-to-device copy, GB/s counting bytes read and written."""
    from numba import cuda

    n = nbytes // 4
    src = cuda.device_array(n, np.float32)
    dst = cuda.device_array(n, np.float32)
    ms = time_events(lambda: dst.copy_to_device(src), reps, 2)
    return 2 * n * 4 / (ms * 1e-3) / 1e9, ms


def torch_network_step(X, y, Ws, bs, activation):
    """A PyTorch step of the network ``Ws, bs``: forward, loss, backward."""
    import torch

    f = {"relu": torch.relu, "tanh": torch.tanh, "logistic": torch.sigmoid,
         "identity": lambda a: a}[activation]
    params = [p.detach().requires_grad_(True) for p in (*Ws, *bs)]
    L = len(Ws)

    def step():
        A = X
        for W, b in zip(params[:L - 1], params[L:2 * L - 1]):
            A = f(A @ W + b)
        loss = torch.nn.functional.cross_entropy(A @ params[L - 1] + params[-1], y)
        grads = torch.autograd.grad(loss, params)
        return loss, grads

    return step


def run_timings(smoke, quick, results):
    from numba import cuda

    import fusedgrad.kernels.cuda as kc
    from fusedgrad.kernels.cuda import _gemm
    from fusedgrad.kernels.cuda.mlp import plan_fused

    results.update({"mlp": [], "network": [], "rowwise": [], "copy": None})
    reps = 1 if smoke else (5 if quick else 10)
    torch = None
    if not smoke:
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        dev = torch.device("cuda")
        gbps, ms = copy_bandwidth(1 << 31, reps)
        results["copy"] = dict(bytes=1 << 31, ms=ms, GBps=gbps)
        log(f"device-to-device copy of 2 GiB: {ms:.3f} ms, {gbps:.0f} GB/s (read + write)")

    def data(N, d, h, K, seed=0):
        if smoke:
            rng = np.random.default_rng(seed)
            f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
            return (cuda.to_device(f(N, d)), cuda.to_device(rng.integers(0, K, N)),
                    cuda.to_device(f(d, h) / d ** 0.5), cuda.to_device(f(h)),
                    cuda.to_device(f(h, K) / h ** 0.5), cuda.to_device(f(K)))
        g = torch.Generator(device=dev).manual_seed(seed)
        f = lambda *s: torch.randn(*s, generator=g, device=dev, dtype=torch.float32)  # noqa: E731
        return (f(N, d), torch.randint(0, K, (N,), generator=g, device=dev),
                f(d, h) / d ** 0.5, f(h), f(h, K) / h ** 0.5, f(K))

    def mlp_row(N, d, h, K):
        t0 = time.perf_counter()
        X, y, W1, b1, W2, b2 = data(N, d, h, K)
        row = dict(shape=[N, d, h, K], path="fused" if plan_fused(d, h, K, 4) else "layered")
        big = N * d >= (1 << 31)
        r = max(2, reps // 3) if big else reps
        ours = lambda: kc.mlp_loss_grad(X, y, W1, b1, W2, b2, check_finite=False)  # noqa: E731
        row["fused_ms"] = time_events(ours, r, 1 if big else 3)
        row["gemm"] = _gemm.backend() if row["path"] == "layered" else "-"
        if not smoke:
            try:
                row["torch_ms"] = time_events(
                    torch_network_step(X, y, [W1, W2], [b1, b2], "logistic"), r, 3)
                row["torch_over_fused"] = row["torch_ms"] / row["fused_ms"]
            except torch.cuda.OutOfMemoryError:
                row["torch_ms"] = "out of memory"
            torch.cuda.empty_cache()
            row["fused_checked_ms"] = time_events(
                lambda: kc.mlp_loss_grad(X, y, W1, b1, W2, b2), r, 1)
        if row["path"] == "layered" and not smoke and _gemm._cupy() is not None:
            from fusedgrad.kernels import _options as opt

            with Options(opt, {"CUDA_GEMM": "numba"}):
                row["fused_numba_gemm_ms"] = time_events(ours, r, 1)
        row["torch_h200_issue_ms"] = TORCH_H200_MS.get((N, d, h, K))
        row["seconds"] = round(time.perf_counter() - t0, 1)
        log(f"  mlp {row}")
        return row

    shapes = [(13, 5, 6, 3), (40, 3, 4, 2)] if smoke else MLP_SHAPES
    for shape in shapes:
        guarded(results["mlp"], f"mlp {shape}", lambda: mlp_row(*shape))
        if torch is not None:
            torch.cuda.empty_cache()

    # Deeper networks and other activations (fusedgrad bench's shapes): the
    # layered path, against PyTorch's step on the same GPU.
    from fusedgrad.bench import NETWORK_SHAPES

    def network_row(N, d, hidden, K, act):
        t0 = time.perf_counter()
        units = [d, *hidden, K]
        X, y = data(N, d, 1, K, seed=2)[:2]
        Ws, bs = [], []
        for i, (n_in, n_out) in enumerate(zip(units[:-1], units[1:])):
            W, b = data(1, n_in, n_out, 1, seed=3 + i)[2:4]
            Ws.append(W)
            bs.append(b)
        row = dict(shape=[N, d, list(hidden), K], activation=act, gemm=_gemm.backend())
        ours = lambda: kc.network_loss_grad(X, y, Ws, bs, activation=act,  # noqa: E731
                                            check_finite=False)
        row["fused_ms"] = time_events(ours, reps, 3)
        if not smoke:
            row["torch_ms"] = time_events(torch_network_step(X, y, Ws, bs, act), reps, 3)
            row["torch_over_fused"] = row["torch_ms"] / row["fused_ms"]
            if _gemm._cupy() is not None:
                from fusedgrad.kernels import _options as opt

                with Options(opt, {"CUDA_GEMM": "numba"}):
                    row["fused_numba_gemm_ms"] = time_events(ours, reps, 1)
            torch.cuda.empty_cache()
        row["seconds"] = round(time.perf_counter() - t0, 1)
        log(f"  network {row}")
        return row

    net_shapes = [(13, 5, (6, 4), 3, "relu"), (40, 3, (4, 3), 2, "tanh")] if smoke else \
        NETWORK_SHAPES
    for shape in net_shapes:
        guarded(results["network"], f"network {shape}", lambda: network_row(*shape))

    # Row-wise and elementwise kernels: achieved GB/s on (inputs + outputs).
    def rowwise(label, fn, nbytes, r):
        def one():
            ms = time_events(fn, r, 2)
            row = dict(kernel=label, ms=ms, bytes=nbytes, GBps=nbytes / (ms * 1e-3) / 1e9)
            if results["copy"]:
                row["fraction_of_copy"] = row["GBps"] / results["copy"]["GBps"]
            log(f"  {row}")
            return row

        guarded(results["rowwise"], label, one)

    N = 40 if smoke else 4194304
    rng = np.random.default_rng(1)

    def dev32(*shape):
        if smoke:
            return cuda.to_device(rng.standard_normal(shape).astype(np.float32))
        return torch.randn(*shape, device=dev, dtype=torch.float32)

    for K in (10, 4):
        Z = dev32(N, K)
        y = (cuda.to_device(rng.integers(0, K, N)) if smoke
             else torch.randint(0, K, (N,), device=dev))
        nbytes = 2 * N * K * 4 + N * 8
        rowwise(f"softmax_cross_entropy N={N} K={K}",
                lambda: kc.softmax_cross_entropy(Z, y, check_finite=False), nbytes, reps)
        rowwise(f"softmax_cross_entropy N={N} K={K} check_finite",
                lambda: kc.softmax_cross_entropy(Z, y), nbytes, reps)
    for d in ((6,) if smoke else (16, 128)):
        n = N if d == 16 else N // 8
        X, yv, w = dev32(n, d), dev32(n), dev32(d)
        rowwise(f"ols_loss_grad N={n} d={d}",
                lambda: kc.ols_loss_grad(X, yv, w, check_finite=False), (n * d + n) * 4, reps)
        rowwise(f"gram N={n} d={d}",
                lambda: kc.gram(X, yv, check_finite=False), (n * d + n) * 4, reps)
    n_in, n_out = (3, 4) if smoke else (16, 32)
    X, W, b = dev32(N, n_in), dev32(n_in, n_out), dev32(n_out)
    rowwise(f"affine_sigmoid N={N} {n_in}->{n_out}",
            lambda: kc.affine_sigmoid(X, W, b, check_finite=False), N * (n_in + n_out) * 4, reps)
    A, dA = dev32(N, n_out), dev32(N, n_out)
    rowwise(f"affine_sigmoid_backward N={N} {n_in}->{n_out} with dX",
            lambda: kc.affine_sigmoid_backward(X, A, dA, W, check_finite=False),
            N * (2 * n_in + 2 * n_out) * 4, reps)
    del X, A, dA
    return results


# ---------------------------------------------------------------------------
# Ablations: each design choice against the alternative it replaced
# ---------------------------------------------------------------------------

#: Option sets of the fused MLP kernel timed at the thin shapes (the first is
#: the default). ``ptxas -v`` (sm_90, float32), 256 threads: the first kernel
#: took 179 registers at (64, 128, 10), so one block was resident per
#: multiprocessor although the grid has two (a launch bound of two blocks
#: gives 128 without spills; 128 threads took 247, 512 threads 128); the flat
#: kernel (the default since 2026-11-27) takes 128 there and 125 at
#: (16, 32, 4), two blocks each.
FUSED_SWEEP = [
    {},
    {"CUDA_FAST_SIGMOID": False},  # the IEEE division in the sigmoid
    {"CUDA_FUSED_FLAT": False, "CUDA_FAST_SIGMOID": False},  # the first run's kernel
    {"CUDA_FUSED_FLAT": False, "CUDA_FAST_SIGMOID": False, "CUDA_FUSED_TPB": 128},
    {"CUDA_FUSED_MIN_BLOCKS": 2},
    {"CUDA_FUSED_BLOCKS_PER_SM": 1},
    {"CUDA_FUSED_TPB": 128},
    {"CUDA_FUSED_TPB": 128, "CUDA_FUSED_BLOCKS_PER_SM": 4},
    {"CUDA_FUSED_TPB": 512, "CUDA_FUSED_BLOCKS_PER_SM": 1},
]
SMOKE_FUSED_SWEEP = [{}, {"CUDA_FAST_SIGMOID": False}, {"CUDA_FUSED_FLAT": False},
                     {"CUDA_FUSED_MIN_BLOCKS": 2}, {"CUDA_FUSED_TPB": 32}]

#: Blocks per multiprocessor of the grid-stride row kernels timed beside the
#: defaults (``CUDA_BLOCKS_PER_SM = 4``; the staged softmax and OLS kernels: as
#: many as fit at once): the first GPU run found the row-wise kernels at 3-16%
#: of the copy bandwidth, with 25-50% of the threads an SM holds.
#: ``ptxas``: the float32 staged softmax kernel takes 56 registers at 128
#: threads, so 9 of its blocks fit an SM; 256 gives one block per 128-row tile
#: (no grid-stride loop at N = 4,194,304).
GRID_SWEEP = [8, 16, 32, 256]


def _naive_kernels():
    """The designs issue 5 rules out, as plainly as they are usually written:
    softmax cross-entropy with one thread per row reading its row with a stride
    of K elements between neighbouring threads, and column sums (bias
    gradients) with one global atomic add per element."""
    import numba

    f32 = numba.float32

    @cuda.jit
    def softmax_ce_per_thread(Z, y, G, row_loss, inv_n):
        i = cuda.grid(1)
        if i < Z.shape[0]:
            K = Z.shape[1]
            m = Z[i, 0]
            for k in range(1, K):
                m = max(m, Z[i, k])
            s = f32(0.0)
            for k in range(K):
                s += math.exp(Z[i, k] - m)
            t = y[i]
            for k in range(K):
                p = math.exp(Z[i, k] - m) / s
                G[i, k] = (p - f32(1.0) if k == t else p) * inv_n
            row_loss[i] = math.log(s) + m - Z[i, t]

    @cuda.jit
    def column_sums_atomic(A, out):
        i = cuda.grid(1)
        n, m = A.shape
        if i < n * m:
            r = i // m
            cuda.atomic.add(out, i - r * m, A[r, i - r * m])

    return softmax_ce_per_thread, column_sums_atomic


def run_ablations(smoke, quick, rows):
    """Time each design choice of the CUDA kernels against its alternative in
    the same run: the staged softmax-CE tile against one thread per row
    (strided) and one block per row; block partial sums against a global
    atomic per element; the fused MLP kernel against the layered path (cuBLAS
    and numba products) at the thin shapes; and the fused kernel's block
    size, register bound and grid (``FUSED_SWEEP``)."""
    from numba import cuda

    import fusedgrad.kernels.cuda as kc
    from fusedgrad.kernels import _options as opt
    from fusedgrad.kernels.cuda import _gemm
    from fusedgrad.kernels.cuda import _runtime as rt
    from fusedgrad.kernels.cuda.affine import column_sums
    from fusedgrad.kernels.cuda.mlp import plan_fused
    from fusedgrad.kernels.cuda.softmax import softmax_ce_device

    reps = 1 if smoke else (5 if quick else 10)
    rng = np.random.default_rng(2)

    def add(group, variant, fn, nbytes=None, overrides=None, **extra):
        # a configuration that cannot launch is a result too (an error row)
        def one():
            row = dict(group=group, variant=variant, **extra)
            with Options(opt, overrides or {}):
                row["ms"] = time_events(fn, reps, 2)
            if nbytes:
                row["GBps"] = nbytes / (row["ms"] * 1e-3) / 1e9
            log(f"  {row}")
            return row

        guarded(rows, f"{group}: {variant}", one, group=group, variant=variant, **extra)

    softmax_naive, colsum_atomic = _naive_kernels()
    N = 40 if smoke else 4194304
    tpb = 8 if smoke else 256
    for K in (10, 4):
        Z = cuda.to_device(rng.standard_normal((N, K)).astype(np.float32))
        y = cuda.to_device(rng.integers(0, K, N))
        G = cuda.device_array((N, K), np.float32)
        row_loss = cuda.device_array(N, np.float32)
        inv_n = np.float32(1.0 / N)
        nbytes = 2 * N * K * 4 + N * 8
        group = f"softmax_cross_entropy N={N} K={K} float32"
        add(group, "staged tile (default)",
            lambda: kc.softmax_cross_entropy(Z, y, check_finite=False), nbytes)
        add(group, "staged tile, labels checked before the kernel (a check kernel and a copy; "
            "as before)", lambda: kc.softmax_cross_entropy(Z, y, check_finite=False), nbytes,
            {"CUDA_LABELS_IN_KERNEL": False})
        # The same kernels without the wrapper's per-call costs (input checks,
        # the output's allocation, the loss's second pass and copy): the bare
        # launches on preallocated buffers, as the strided kernel below.
        work = {}
        add(group, "staged tile, bare kernel (no loss sum)",
            lambda: softmax_ce_device(Z, y, G, work=work), nbytes)
        # what changed after the first run, each against what it replaced
        before = {"CUDA_SOFTMAX_PREFETCH": False, "CUDA_SOFTMAX_BLOCKS_PER_SM": 4}
        add(group,
            "staged tile, bare kernel, plain loop, 4 blocks/SM (the first run's loads and grid)",
            lambda: softmax_ce_device(Z, y, G, work=work), nbytes, before)
        add(group, "staged tile, bare kernel, plain loop, resident grid",
            lambda: softmax_ce_device(Z, y, G, work=work), nbytes,
            {"CUDA_SOFTMAX_PREFETCH": False})
        add(group, "staged tile, bare kernel, prefetch, 4 blocks/SM",
            lambda: softmax_ce_device(Z, y, G, work=work), nbytes,
            {"CUDA_SOFTMAX_BLOCKS_PER_SM": 4})
        add(group, "staged tile (default), numba allocator (cudaMalloc per call)",
            lambda: kc.softmax_cross_entropy(Z, y, check_finite=False), nbytes,
            {"CUDA_ALLOCATOR": "numba"})
        add(group, "staged tile, the first run's loads, grid and allocator",
            lambda: kc.softmax_cross_entropy(Z, y, check_finite=False), nbytes,
            dict(before, CUDA_ALLOCATOR="numba"))
        for per_sm in GRID_SWEEP:
            grid = {"CUDA_BLOCKS_PER_SM": per_sm, "CUDA_SOFTMAX_BLOCKS_PER_SM": per_sm}
            add(group, f"staged tile, bare kernel, {per_sm} blocks/SM",
                lambda: softmax_ce_device(Z, y, G, work=work), nbytes, grid)
            add(group, f"staged tile (default), {per_sm} blocks/SM",
                lambda: kc.softmax_cross_entropy(Z, y, check_finite=False), nbytes, grid)
        add(group, "staged tile, bare kernel, 256-row tiles",
            lambda: softmax_ce_device(Z, y, G, work=work), nbytes,
            {"CUDA_SOFTMAX_TPB": 256})
        loss = cuda.device_array(1, np.float64)
        part = rt.buffer(work, "gpu_check.partials", (rt.grid_size(1 << 30), 1), np.float64)
        add(group, "second pass over the loss's block partials alone",
            lambda: rt.sum_partials(part, loss, 1.0))
        add(group, "the same, a thread per column (before 2026-11-27)",
            lambda: rt.sum_partials(part, loss, 1.0), None, {"CUDA_SUM_BLOCK_MAX_COLS": 0})
        add(group, "one block per row", lambda: kc.softmax_cross_entropy(Z, y, check_finite=False),
            nbytes, {"CUDA_SOFTMAX_STAGED_MAX_K": 1})
        add(group, "one thread per row, strided (no loss sum)",
            lambda: softmax_naive[-(-N // tpb), tpb](Z, y, G, row_loss, inv_n), nbytes)
        del Z, G
    for m in ((3,) if smoke else (32, 128)):
        A = cuda.to_device(rng.standard_normal((N, m)).astype(np.float32))
        out = cuda.device_array(m, np.float32)
        group = f"column sums (bias gradient) N={N} m={m} float32"
        add(group, "block partials + second pass (default)", lambda: column_sums(A, out),
            N * m * 4)
        add(group, "block partials + second pass by a thread per column (before 2026-11-27)",
            lambda: column_sums(A, out), N * m * 4, {"CUDA_SUM_BLOCK_MAX_COLS": 0})
        for per_sm in GRID_SWEEP:
            add(group, f"block partials + second pass, {per_sm} blocks/SM",
                lambda: column_sums(A, out), N * m * 4, {"CUDA_BLOCKS_PER_SM": per_sm})
        add(group, "one global atomic per element",
            lambda: colsum_atomic[-(-N * m // tpb), tpb](A, out), N * m * 4)
        del A

    from fusedgrad.kernels.cuda import ols as cuda_ols

    for d in ((5,) if smoke else (16, 128)):
        n = N if d == 16 else N // 8
        X = cuda.to_device(rng.standard_normal((n, d)).astype(np.float32))
        yv = cuda.to_device(rng.standard_normal(n).astype(np.float32))
        w = cuda.to_device(rng.standard_normal(d).astype(np.float32))
        grad = cuda.device_array(d, np.float32)
        loss = cuda.device_array(1, np.float64)
        nbytes = (n * d + n) * 4
        group = f"ols_loss_grad N={n} d={d} float32"
        work = {}
        add(group, "one pass (default)",
            lambda: kc.ols_loss_grad(X, yv, w, check_finite=False), nbytes)
        add(group, "one pass, bare (loss_grad_device, kept scratch)",
            lambda: cuda_ols.loss_grad_device(X, yv, w, grad, loss, work=work), nbytes)
        add(group, "one pass, bare, plain loop",
            lambda: cuda_ols.loss_grad_device(X, yv, w, grad, loss, work=work), nbytes,
            {"CUDA_OLS_PREFETCH": False})
        add(group, "one pass, bare, plain loop, 4 blocks/SM (the first run's loads and grid)",
            lambda: cuda_ols.loss_grad_device(X, yv, w, grad, loss, work=work), nbytes,
            {"CUDA_OLS_PREFETCH": False, "CUDA_OLS_BLOCKS_PER_SM": 4})
        add(group, "one pass (default), numba allocator",
            lambda: kc.ols_loss_grad(X, yv, w, check_finite=False), nbytes,
            {"CUDA_ALLOCATOR": "numba"})
        # the NaN/inf checks of check_finite=True (a pass over X, y and w)
        add(group, "one pass, inputs checked (8 loads a round)",
            lambda: kc.ols_loss_grad(X, yv, w), nbytes)
        add(group, "one pass, inputs checked, one load a round, 4 blocks/SM (as before)",
            lambda: kc.ols_loss_grad(X, yv, w), nbytes, {"CUDA_CHECK_UNROLL": 1})
        add(group, "one pass, inputs checked, a launch per input (CUDA_CHECK_GROUP=1)",
            lambda: kc.ols_loss_grad(X, yv, w), nbytes, {"CUDA_CHECK_GROUP": 1})
        del X

    # The thin kernels (added 2026-11-27, not yet timed: B in shared memory,
    # one pass; and row sums A^T B by each block over its tiles) against what
    # the products took before: cuBLAS (and an epilogue pass) when CuPy
    # imports, else the numba tiled kernel.
    before = {"CUDA_THIN": False}
    n, d_in, d_out = (40, 3, 5) if smoke else (N, 16, 32)
    X = cuda.to_device(rng.standard_normal((n, d_in)).astype(np.float32))
    W = cuda.to_device(rng.standard_normal((d_in, d_out)).astype(np.float32))
    b = cuda.to_device(rng.standard_normal(d_out).astype(np.float32))
    A = cuda.to_device(rng.uniform(0.0, 1.0, (n, d_out)).astype(np.float32))
    dA = cuda.to_device(rng.standard_normal((n, d_out)).astype(np.float32))
    out = cuda.device_array((n, d_out), np.float32)
    group = f"affine_sigmoid N={n} {d_in}->{d_out} float32"
    nbytes = (n * d_in + n * d_out) * 4
    add(group, "thin kernel (default)",
        lambda: kc.affine_sigmoid(X, W, b, out, check_finite=False), nbytes)
    add(group, "thin kernel, IEEE division in the sigmoid (as before)",
        lambda: kc.affine_sigmoid(X, W, b, out, check_finite=False), nbytes,
        {"CUDA_FAST_SIGMOID": False})
    add(group, "product + epilogue (before the thin kernel)",
        lambda: kc.affine_sigmoid(X, W, b, out, check_finite=False), nbytes, before)
    add(group, "numba tiled product, epilogue fused",
        lambda: kc.affine_sigmoid(X, W, b, out, check_finite=False), nbytes,
        dict(before, CUDA_GEMM="numba"))
    group = f"affine_sigmoid_backward N={n} {d_in}->{d_out} float32, with dX"
    nbytes = (2 * n * d_in + 2 * n * d_out) * 4
    add(group, "one kernel, dZ never stored (default)",
        lambda: kc.affine_sigmoid_backward(X, A, dA, W, check_finite=False), nbytes)
    add(group, "dZ pass, then dW and dX by the thin kernels",
        lambda: kc.affine_sigmoid_backward(X, A, dA, W, check_finite=False), nbytes,
        {"CUDA_THIN_BACKWARD": False})
    add(group, "dW and dX by products (before the thin kernels)",
        lambda: kc.affine_sigmoid_backward(X, A, dA, W, check_finite=False), nbytes, before)
    yv = cuda.to_device(rng.standard_normal(n).astype(np.float32))
    group = f"gram N={n} d={d_in} float32"
    nbytes = (n * d_in + n) * 4
    add(group, "thin row sums, one pass (default)",
        lambda: kc.gram(X, yv, check_finite=False), nbytes)
    add(group, "X^T X and X^T y by products (before the thin kernels)",
        lambda: kc.gram(X, yv, check_finite=False), nbytes, before)
    del X, A, dA, out

    shapes = [(13, 5, 6, 3)] if smoke else [s for s in MLP_SHAPES if plan_fused(*s[1:], 4)]
    sweep = SMOKE_FUSED_SWEEP if smoke else FUSED_SWEEP
    for N, d, h, K in shapes:
        X = cuda.to_device(rng.standard_normal((N, d)).astype(np.float32))
        y = cuda.to_device(rng.integers(0, K, N))
        W1 = cuda.to_device((rng.standard_normal((d, h)) / d ** 0.5).astype(np.float32))
        b1 = cuda.to_device(rng.standard_normal(h).astype(np.float32))
        W2 = cuda.to_device((rng.standard_normal((h, K)) / h ** 0.5).astype(np.float32))
        b2 = cuda.to_device(rng.standard_normal(K).astype(np.float32))
        group = f"mlp_loss_grad {N}, {d}, {h}, {K} float32"

        def step(path):
            return lambda: kc.mlp_loss_grad(X, y, W1, b1, W2, b2, check_finite=False,
                                            _path=path)

        for overrides in sweep:
            plan = None
            with Options(opt, overrides):
                plan = plan_fused(d, h, K, 4)
            label = ", ".join(f"{k[5:]}={v}" for k, v in overrides.items()) or "defaults"
            add(group, f"fused: {label}", step("fused"), None, overrides,
                rows_per_tile=plan and plan["R"])
        add(group, "fused: defaults, numba allocator", step("fused"), None,
            {"CUDA_ALLOCATOR": "numba"})
        add(group, "fused: defaults, labels checked before the kernel (as before)",
            step("fused"), None, {"CUDA_LABELS_IN_KERNEL": False})
        gemms = ["numba"] + (["cupy"] if _gemm._cupy() is not None else [])
        for g in gemms:
            add(group, f"layered, {g} products", step("layered"), None, {"CUDA_GEMM": g})
        del X
    # the layered path at the smallest fat shape: its A W2 and dZ2 W2^T go to
    # the thin kernel now
    N, d, h, K = (13, 5, 6, 3) if smoke else MLP_SHAPES[0]
    X = cuda.to_device(rng.standard_normal((N, d)).astype(np.float32))
    y = cuda.to_device(rng.integers(0, K, N))
    W1 = cuda.to_device((rng.standard_normal((d, h)) / d ** 0.5).astype(np.float32))
    b1 = cuda.to_device(rng.standard_normal(h).astype(np.float32))
    W2 = cuda.to_device((rng.standard_normal((h, K)) / h ** 0.5).astype(np.float32))
    b2 = cuda.to_device(rng.standard_normal(K).astype(np.float32))
    group = f"mlp_loss_grad {N}, {d}, {h}, {K} float32, layered"
    for label, overrides in (("thin products where they fit (default)", {}),
                             ("without the thin kernel", {"CUDA_THIN": False}),
                             ("IEEE division in the sigmoid", {"CUDA_FAST_SIGMOID": False})):
        add(group, label,
            lambda: kc.mlp_loss_grad(X, y, W1, b1, W2, b2, check_finite=False,
                                     _path="layered"), None, overrides)
    del X
    return rows


def run_profile(smoke, rows):
    """Where one call's time goes: the GPU kernels and copies of three calls of
    each public wrapper as CUPTI records them (torch.profiler sees numba's and
    CuPy's kernels too), beside the calls' time between CUDA events. What is
    not in the kernels' sum is host time with the GPU idle (checks, launches,
    allocations, synchronisations)."""
    if smoke:
        log("  skipped under the simulator")
        return rows
    import torch
    from torch.profiler import ProfilerActivity, profile

    import fusedgrad.kernels.cuda as kc
    from fusedgrad.kernels import _options as opt
    from fusedgrad.kernels.cuda import _runtime as rt

    rng = np.random.default_rng(3)

    def dev(*shape):
        return cuda.to_device(rng.standard_normal(shape).astype(np.float32))

    def one(label, fn):
        def measure():
            ms = time_events(fn, 5, 3)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    fn()
                torch.cuda.synchronize()
            events = prof.key_averages()
            key = "device_time_total" if hasattr(events[0], "device_time_total") else \
                "cuda_time_total"  # the name before PyTorch 2.4
            kernel_us = sum(getattr(e, key) for e in events) / 3
            table = events.table(sort_by=key, row_limit=12, max_name_column_width=60)
            # the host side of one call: the functions that take its time
            pr = cProfile.Profile()
            pr.enable()
            fn()
            cuda.synchronize()
            pr.disable()
            text = io.StringIO()
            pstats.Stats(pr, stream=text).sort_stats("tottime").print_stats(12)
            host = "\n".join(line for line in text.getvalue().splitlines()[4:] if line.strip())
            log(f"  {label}: {ms:.3f} ms between events, {kernel_us / 1e3:.3f} ms in kernels "
                f"and copies\n{table}\n{host}")
            return dict(row=label, event_ms=ms, kernel_ms=kernel_us / 1e3, table=table,
                        host_profile=host)

        guarded(rows, label, measure)

    def probe(label, fn, reps=20):
        def measure():
            fn()
            cuda.synchronize()
            t = time.perf_counter()
            for _ in range(reps):
                fn()
            cuda.synchronize()
            us = (time.perf_counter() - t) / reps * 1e6
            log(f"  {label}: {us:.1f} us")
            return dict(row=label, us=us)

        guarded(rows, label, measure)

    @cuda.jit
    def empty(a):
        pass

    d1 = cuda.device_array(1, np.float32)
    probe("launch of an empty numba kernel (1 argument)", lambda: empty[1, 32](d1), 1000)
    probe("the same by rt.launch", lambda: rt.launch(empty, 1, 32, d1), 1000)
    # A training step's gradient on a minibatch of 200 rows: the GPU's work is
    # a few us, so calls back to back measure the host's launch code (the
    # fused kernel's 10 arguments, the two second passes'), numba's against
    # rt.launch's.
    from fusedgrad.kernels.cuda import mlp as cuda_mlp

    Xs, ys = dev(200, 64), cuda.to_device(rng.integers(0, 10, 200).astype(np.uint8))
    params = [dev(64, 128), dev(128), dev(128, 10), dev(10)]
    flat, loss, work = cuda.device_array(64 * 128 + 128 + 128 * 10 + 10, np.float32), \
        cuda.device_array(1, np.float64), {}
    for label, overrides in (("rt.launch", {}),
                             ("numba's launch (CUDA_FAST_LAUNCH=False)",
                              {"CUDA_FAST_LAUNCH": False}),
                             ("rt.launch, the second passes in two launches "
                              "(CUDA_SUM_PAIRS=False)", {"CUDA_SUM_PAIRS": False})):
        def step(overrides=overrides):
            with Options(opt, overrides):
                cuda_mlp.loss_grad_device(Xs, ys, *params, flat, loss, work=work)

        probe(f"mlp.loss_grad_device, 200 rows, (64, 128, 10), back to back, {label}", step,
              300)
    for mb in (1, 64, 256):
        probe(f"cuda.device_array of {mb} MB, then dropped",
              lambda mb=mb: cuda.device_array(mb << 18, np.float32))
    T = torch.empty(1 << 20, device="cuda")
    probe("cuda.as_cuda_array of a PyTorch tensor", lambda: cuda.as_cuda_array(T), 1000)
    probe("the same, sync=False", lambda: cuda.as_cuda_array(T, sync=False), 1000)
    del T

    N = 4194304
    Z, y = dev(N, 10), cuda.to_device(rng.integers(0, 10, N))
    one("softmax_cross_entropy N=4194304 K=10",
        lambda: kc.softmax_cross_entropy(Z, y, check_finite=False))
    del Z
    X, yv, w = dev(N, 16), dev(N), dev(16)
    one("ols_loss_grad N=4194304 d=16", lambda: kc.ols_loss_grad(X, yv, w, check_finite=False))
    del X
    for n, d, h, K in MLP_SHAPES[:3]:
        X, y = dev(n, d), cuda.to_device(rng.integers(0, K, n))
        W1, b1, W2, b2 = dev(d, h), dev(h), dev(h, K), dev(K)
        one(f"mlp_loss_grad {n}, {d}, {h}, {K}",
            lambda: kc.mlp_loss_grad(X, y, W1, b1, W2, b2, check_finite=False))
        if (n, d, h, K) == MLP_SHAPES[2]:
            # The same arrays as PyTorch tensors, as the mlp timing rows pass
            # them: in the first run that call took 2.535 ms against 1.562 with
            # numba arrays (the fused sweep), a gap that grew with N.
            args = [torch.as_tensor(a, device="cuda") for a in (X, y, W1, b1, W2, b2)]
            one(f"mlp_loss_grad {n}, {d}, {h}, {K}, PyTorch tensors",
                lambda: kc.mlp_loss_grad(*args, check_finite=False))
            del args

            def checked_first(X=X, y=y, W1=W1, b1=b1, W2=W2, b2=b2):
                with Options(opt, {"CUDA_LABELS_IN_KERNEL": False}):
                    return kc.mlp_loss_grad(X, y, W1, b1, W2, b2, check_finite=False)

            one(f"mlp_loss_grad {n}, {d}, {h}, {K}, labels checked before the kernel",
                checked_first)
        del X
    return rows


# ---------------------------------------------------------------------------
# PTX compile check (no GPU)
# ---------------------------------------------------------------------------


def _ptx_model_runs():
    """``(label, run)`` pairs: each ``run()`` drives the models' ``device='cuda'``
    code (fits, ``partial_fit``, predictions) through one solver or option path,
    at tiny shapes, in both dtypes.

    Under :func:`run_ptx_check` every launch is compiled instead of run and
    every device array reads back zeros, so a fit sees zero losses and
    gradients: it converges or stops early (warnings are silenced), but every
    kernel of its loop has been launched, with the argument types the model
    code passes (index and label dtypes, slices of device arrays, Python
    scalars), before it does.
    """
    import warnings

    from fusedgrad.models import LinearRegression, MLPClassifier

    rng = np.random.default_rng(0)
    runs = []
    mlp_configs = [
        ("sgd", dict(solver="sgd", momentum=0.0, batch_size=16)),  # plain, gathered batches
        ("sgd+momentum", dict(solver="sgd", nesterovs_momentum=False, shuffle=False,
                              batch_size=16)),  # row slices, no gather
        ("sgd+nesterov+l2", dict(solver="sgd", alpha=0.1, batch_size=16)),
        ("sgd+invscaling+no_l2", dict(solver="sgd", learning_rate="invscaling", alpha=0.0,
                                      batch_size=64)),  # one whole-epoch batch
        ("adam", dict(solver="adam", batch_size=16)),
        ("adam+early_stopping", dict(solver="adam", early_stopping=True, batch_size=16,
                                     n_iter_no_change=1)),
        ("sgd+early_stopping+no_shuffle", dict(solver="sgd", early_stopping=True,
                                               shuffle=False, batch_size=16)),
    ]
    for dtype in ("float32", "float64"):
        # other networks: the layered path, the optimizers' bias ranges of any depth
        for hidden, act, params in (((8, 4), "relu", dict(solver="adam", early_stopping=True,
                                                            n_iter_no_change=1)),
                                    ((8,), "tanh", dict(solver="sgd", alpha=0.1)),
                                    ((), "identity", dict(solver="sgd"))):
            def fit(hidden=hidden, act=act, params=params, dtype=dtype):
                X = rng.standard_normal((40, 5))
                y = np.arange(40) % 3
                model = MLPClassifier(hidden_layer_sizes=hidden, activation=act, max_iter=3,
                                      batch_size=16, random_state=0, dtype=dtype,
                                      device="cuda", **params)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model.fit(X, y)
                model.predict_proba(X)
                model.predict(X)

            runs.append((f"MLPClassifier {act} {hidden} {params['solver']} {dtype}", fit))
        for d, h, K in ((5, 8, 3), (200, 100, 2)):  # fused and layered gradient
            X = rng.standard_normal((40, d))
            y = np.arange(40) % K
            for label, params in mlp_configs:
                if d > 5 and label not in ("sgd", "adam+early_stopping"):
                    continue

                def fit(params=params, X=X, y=y, h=h, dtype=dtype):
                    model = MLPClassifier(hidden_layer_sizes=(h,), max_iter=3, random_state=0,
                                          dtype=dtype, device="cuda", **params)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        model.fit(X, y)
                        model.partial_fit(X[:20], y[:20])
                    model.predict_proba(X)
                    model.predict_log_proba(X)
                    model.score(X, y)

                runs.append((f"MLPClassifier {label} {dtype} d={d} h={h} K={K}", fit))

            def partial(X=X, y=y, h=h, K=K, dtype=dtype):
                model = MLPClassifier(hidden_layer_sizes=(h,), solver="sgd", batch_size=16,
                                      random_state=0, dtype=dtype, device="cuda")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model.partial_fit(X, y, classes=np.arange(K))
                    model.partial_fit(X, y)
                model.predict(X)

            runs.append((f"MLPClassifier partial_fit {dtype} d={d} h={h} K={K}", partial))

            # sample weights: gathered with the batches or sliced, the weighted
            # validation accuracy, the full-batch (lbfgs) evaluation
            for label, params in (("adam+early_stopping", mlp_configs[5][1]),
                                  ("sgd+momentum", mlp_configs[1][1]),
                                  ("lbfgs", dict(solver="lbfgs"))):
                def weighted(params=params, X=X, y=y, h=h, dtype=dtype):
                    model = MLPClassifier(hidden_layer_sizes=(h,), max_iter=3, random_state=0,
                                          dtype=dtype, device="cuda", **params)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        model.fit(X, y, sample_weight=np.linspace(0.5, 2.0, X.shape[0]))

                runs.append((f"MLPClassifier weighted {label} {dtype} d={d} h={h} K={K}",
                             weighted))
        def weighted_network(dtype=dtype):
            X = rng.standard_normal((40, 5))
            y = np.arange(40) % 3
            model = MLPClassifier(hidden_layer_sizes=(8, 4), activation="relu", max_iter=3,
                                  batch_size=16, random_state=0, dtype=dtype, device="cuda",
                                  solver="adam", early_stopping=True, n_iter_no_change=1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.fit(X, y, sample_weight=np.linspace(0.5, 2.0, 40))

        runs.append((f"MLPClassifier weighted relu (8, 4) adam {dtype}", weighted_network))
    linear_configs = [
        dict(solver="normal"),
        dict(solver="auto", fit_intercept=False),
        dict(solver="gd", max_iter=3),
        dict(solver="gd", learning_rate=0.1, max_iter=3, fit_intercept=False),
    ]
    for dtype in (np.float32, np.float64):
        # 12000 features: no row fits in shared memory (the product path of
        # the gradient); only gd with a numeric step avoids the (d, d) solve.
        for N, d, configs in ((40, 5, linear_configs),
                              (20, 12000, [dict(solver="gd", learning_rate=0.1, max_iter=2),
                                           dict(solver="gd", learning_rate=0.1, max_iter=2,
                                                fit_intercept=False)])):
            X = rng.standard_normal((N, d)).astype(dtype)
            y = rng.standard_normal(N).astype(dtype)
            # the weighted fits (weighted means, rows scaled on the device) at the small shape
            weights = [None] + ([rng.uniform(0.0, 2.0, N)] if d < 100 else [])
            for params in configs:
                for sw in weights:
                    def fit(params=params, X=X, y=y, sw=sw):
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            LinearRegression(device="cuda", **params).fit(
                                X, y, sample_weight=sw).predict(X)

                    runs.append((f"LinearRegression {params} {np.dtype(dtype).name} d={d}"
                                 + (" weighted" if sw is not None else ""), fit))
    return runs


def run_ptx_check(cc=(9, 0), ptx_dir=None):
    """Compile, with the real numba-cuda and the default options, every kernel
    the wrappers launch on a set of inputs that takes every path, and every
    kernel the models' ``device='cuda'`` fits and predictions launch.

    ``cuda.jit`` is replaced (before any kernel factory runs; they are cached
    per option set) by a stand-in whose launches compile the kernel with
    :func:`numba.cuda.compile_ptx` for the launch's argument types instead of
    running it, and device arrays are NumPy arrays in disguise. The kernel
    wrappers and the models then run their real host code unchanged, so the
    check covers exactly what they launch, with the types they pass, without
    a list of signatures to keep in step with the code (see
    :func:`_ptx_model_runs` for the model paths). Everything runs once with
    warp-shuffle reductions and once without. With ``ptx_dir`` each kernel's
    PTX is written there as ``NNN_<factory>.ptx`` (NNN: its row in the table)."""
    import re
    import shutil
    import tempfile

    import numba
    from numba import cuda, types

    sys.path.insert(0, str(REPO / "tests"))
    from cases import CASES

    from fusedgrad.kernels import _options as opt
    from fusedgrad.kernels.cuda import _runtime as rt

    if rt.simulator():
        raise SystemExit("--ptx needs the real numba.cuda: unset NUMBA_ENABLE_CUDASIM")

    class Dev(np.ndarray):
        __cuda_ndarray__ = True

        def copy_to_host(self, ary=None, stream=0):
            if ary is None:
                return np.array(self)
            ary[...] = self
            return ary

        def copy_to_device(self, ary, stream=0):
            self[...] = ary

        def is_c_contiguous(self):
            return self.flags.c_contiguous

    compiled = {}
    threads = {}  # the largest block each compiled kernel is launched with

    def argtype(a):
        if isinstance(a, np.ndarray):
            return types.Array(numba.from_dtype(a.dtype), a.ndim,
                               "C" if a.flags.c_contiguous else "A")
        return numba.typeof(a)

    asked = {}  # (kernel, signature) -> label: what rt.resident_grid asked the occupancy of

    class Launch:
        def __init__(self, fn, options):
            self.fn, self.options = fn, options

        # rt.resident_grid types the arguments and asks the compiled kernel
        # how many blocks fit; the launch that follows must use that same
        # signature, or the real GPU would compile the kernel twice
        def typeof_pyval(self, a):
            return argtype(a)

        def compile(self, sig):
            asked[(self.fn, tuple(sig))] = self.fn.__qualname__
            return SimpleNamespace(max_cooperative_grid_blocks=lambda tpb: 8 * 132)

        def __getitem__(self, config):
            block = config[1]
            block = math.prod(block) if isinstance(block, tuple) else int(block)

            def launch(*args):
                sig = tuple(argtype(a) for a in args)
                key = (self.fn, sig)
                threads[key] = max(threads.get(key, 0), block)
                if key not in compiled:
                    t0 = time.perf_counter()
                    opts = {k: v for k, v in self.options.items()
                            if k in ("fastmath", "launch_bounds")}
                    ptx, _ = cuda.compile_ptx(self.fn, sig, cc=cc, **opts)
                    compiled[key] = (self.fn.__qualname__, sig, ptx, time.perf_counter() - t0)
            return launch

    real_jit = cuda.jit

    def fake_jit(*a, **kw):
        if kw.get("device"):
            return real_jit(*a, **kw)
        return lambda fn: Launch(fn, kw)

    cuda.jit = fake_jit
    # Device functions are compiled for the current device's compute capability.
    from types import SimpleNamespace

    import numba.cuda.dispatcher as cuda_dispatcher

    cuda_dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=cc)
    cuda.device_array = lambda shape, dtype=np.float64, **kw: np.zeros(shape, dtype).view(Dev)
    cuda.to_device = lambda a, **kw: np.array(a).view(Dev)
    rt._unavailable_reason = lambda: None

    runs = [
        ("mlp_loss_grad", dict(N=300, d=64, h=128, K=10), {}),
        ("mlp_loss_grad", dict(N=300, d=16, h=32, K=4), {}),
        ("mlp_loss_grad", dict(N=300, d=784, h=256, K=10), {}),
        ("mlp_loss_grad", dict(N=300, d=20, h=30, K=40), {"_path": "layered"}),
        ("softmax_cross_entropy", dict(N=300, K=10), {}),
        ("softmax_cross_entropy", dict(N=300, K=100), {}),
        # the weighted variants of the softmax-CE stages (staged, per row, fused, layered)
        ("softmax_cross_entropy", dict(N=300, K=10), {"sample_weight": "ones"}),
        ("softmax_cross_entropy", dict(N=300, K=100), {"sample_weight": "ones"}),
        ("mlp_loss_grad", dict(N=300, d=16, h=32, K=4), {"sample_weight": "ones"}),
        ("mlp_loss_grad", dict(N=300, d=20, h=30, K=40),
         {"_path": "layered", "sample_weight": "ones"}),
        ("network_loss_grad/relu", dict(N=300, d=20, h=30, K=4), {"sample_weight": "ones"}),
        ("affine_sigmoid", dict(N=300, d=16, h=32), {}),
        ("affine_sigmoid_backward", dict(N=300, d=16, h=32), {}),
        ("affine_sigmoid_backward/no_W", dict(N=300, d=16, h=32), {}),
        ("ols_loss_grad", dict(N=300, d=16), {}),
        ("ols_loss_grad", dict(N=30, d=20000), {}),
        ("gram", dict(N=300, d=16), {}),
        ("network_loss_grad/relu", dict(N=300, d=64, h=128, K=10), {}),
        ("network_loss_grad/tanh", dict(N=300, d=20, h=30, K=40), {}),
        ("network_loss_grad/identity", dict(N=300, d=20, h=30, K=4), {}),
        ("network_loss_grad/logistic", dict(N=300, d=20, h=30, K=4), {}),
    ] + [(f"{name}/{act}", dict(N=300, d=16, h=32), {})
         for act in ("identity", "tanh", "relu", "softmax")
         for name in ("affine_activation", "affine_activation_backward")]
    failures = []
    for shuffle in (True, False):
        opt.CUDA_WARP_SHUFFLE = shuffle
        for name, shape, kwargs in runs:
            case = CASES[name]
            full = dict(N=1, d=1, h=1, K=2)
            full.update(shape)
            for dtype in (np.float32, np.float64):
                args = case.make_args(full, dtype, 0)
                dev_args = tuple(np.asarray(a).view(Dev) if isinstance(a, np.ndarray) else a
                                 for a in args)
                kw = dict(kwargs)
                if kw.get("sample_weight") == "ones":
                    kw["sample_weight"] = np.ones(full["N"], dtype)
                try:
                    case.cuda_kernel(*dev_args, **kw)
                except Exception as exc:
                    failures.append((name, shape, np.dtype(dtype).name, shuffle, repr(exc)))
                    log(f"FAILED {name} {shape} {np.dtype(dtype).name} shuffle={shuffle}: {exc!r}")
        for label, run in _ptx_model_runs():
            try:
                run()
            except Exception as exc:
                failures.append((label, {}, "", shuffle, repr(exc)))
                log(f"FAILED {label} shuffle={shuffle}: {exc!r}")
    # The fused kernel's variants that run_ablations times (float32, thin shapes).
    for overrides in FUSED_SWEEP[1:]:
        with Options(opt, overrides):
            for shape in (dict(N=300, d=64, h=128, K=10), dict(N=300, d=16, h=32, K=4)):
                full = dict(shape)
                args = CASES["mlp_loss_grad"].make_args(full, np.float32, 0)
                try:
                    CASES["mlp_loss_grad"].cuda_kernel(
                        *(np.asarray(a).view(Dev) if isinstance(a, np.ndarray) else a
                          for a in args), _path="fused")
                except Exception as exc:
                    failures.append(("mlp_loss_grad", shape, "float32", overrides, repr(exc)))
                    log(f"FAILED fused {shape} {overrides}: {exc!r}")
    # What gpu_check times beside the defaults, float32: the IEEE sigmoid
    # (the thin kernel's and the layered path's epilogues), and the input
    # checks' NaN count with one load a round.
    variants = [({"CUDA_FAST_SIGMOID": False}, "affine_sigmoid", dict(N=300, d=16, h=32)),
                ({"CUDA_FAST_SIGMOID": False}, "mlp_loss_grad", dict(N=300, d=784, h=256, K=10)),
                ({"CUDA_CHECK_UNROLL": 1}, "ols_loss_grad", dict(N=300, d=16))]
    for overrides, name, shape in variants:
        full = dict(N=1, d=1, h=1, K=2)
        full.update(shape)
        args = CASES[name].make_args(full, np.float32, 0)
        try:
            with Options(opt, overrides):
                CASES[name].cuda_kernel(*(np.asarray(a).view(Dev) if isinstance(a, np.ndarray)
                                          else a for a in args))
        except Exception as exc:
            failures.append((name, shape, "float32", overrides, repr(exc)))
            log(f"FAILED {name} {shape} {overrides}: {exc!r}")
    # Kernels the runs above do not launch: NaN fill, contiguous copies, the
    # elementwise epilogues that follow cuBLAS products.
    from fusedgrad.kernels.cuda import _gemm

    rt.POISON = True
    for dtype in (np.float32, np.float64):
        rt.empty((3, 4), dtype)
        rt.empty(5, np.int64)
        rt._contiguous(np.zeros((4, 6), dtype).view(Dev)[:, ::2])
        rt._contiguous(np.zeros(6, dtype).view(Dev)[::2])
        C = np.zeros((4, 3), dtype).view(Dev)
        for epi in (_gemm.EPI_BIAS, _gemm.EPI_BIAS_SIGMOID, _gemm.EPI_DSIGMOID,
                    _gemm.EPI_BIAS_TANH, _gemm.EPI_BIAS_RELU, _gemm.EPI_DTANH, _gemm.EPI_DRELU):
            _gemm.epilogue(C, epi, np.zeros(3, dtype).view(Dev), C)
        # the check and sum of sample weights given on the device
        rt._weight_kernel(opt.CUDA_TPB)[1, opt.CUDA_TPB](np.ones(5, dtype).view(Dev),
                                                        cuda.device_array((1, 4)))
    rt.POISON = False
    # rows= (the gather of X alone), both dtypes, lecture and layered paths
    import fusedgrad.kernels.cuda as kc

    for dtype in (np.float32, np.float64):
        for hidden, act in (((6,), "logistic"), ((6, 5), "relu")):
            units = (4, *hidden, 3)
            Ws = [np.zeros((a, b), dtype).view(Dev) for a, b in zip(units[:-1], units[1:])]
            bs = [np.zeros(b, dtype).view(Dev) for b in units[1:]]
            try:
                kc.network_loss_grad(np.zeros((9, 4), dtype).view(Dev),
                                     np.zeros(5, np.int64).view(Dev), Ws, bs, activation=act,
                                     rows=np.arange(5).view(Dev))
            except Exception as exc:
                failures.append(("network_loss_grad rows", hidden, np.dtype(dtype).name, act,
                                 repr(exc)))
                log(f"FAILED network_loss_grad rows {hidden} {act}: {exc!r}")
    ptxas = shutil.which("ptxas")
    f64_ops = re.compile(r"^\s*(?:@%p\d+\s+)?(fma|add|sub|mul|div|ex2|lg2|rcp|sqrt|cvt\.rn\.f32)\S*\.f64",
                         re.M)
    log(f"{'#':>3} {'kernel':<30} {'signature':<64} {'f64 ops':>7} {'tpb':>4} {'regs':>5} {'stack/spill':>11} {'smem B':>7} {'s':>5}")
    rows = []
    if ptx_dir:
        os.makedirs(ptx_dir, exist_ok=True)
    for i, (key, (qualname, sig, ptx, seconds)) in enumerate(compiled.items()):
        short = qualname.replace(".<locals>", "")
        if ptx_dir:
            with open(os.path.join(ptx_dir, f"{i:03d}_{short}.ptx"), "w") as f:
                f.write(f"// {qualname} ({', '.join(str(t) for t in sig)})\n{ptx}")
        is32 = any(getattr(t, "dtype", None) == types.float32 for t in sig)
        n64 = len(f64_ops.findall(ptx)) if is32 else 0
        regs = spill = smem = ""
        if ptxas:
            with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
                f.write(ptx)
            out = subprocess.run([ptxas, f"-arch=sm_{cc[0]}{cc[1]}", "-v", f.name, "-o", os.devnull],
                                 capture_output=True, text=True)
            os.unlink(f.name)
            txt = out.stderr + out.stdout
            if out.returncode:
                failures.append((short, [str(t) for t in sig], "", None, "ptxas: " + txt.strip()))
                log(f"FAILED ptxas {short} {sig}: {txt.strip()}")
            m = re.search(r"Used (\d+) registers", txt)
            regs = m.group(1) if m else "?"
            if m:
                # registers are allocated per warp in units of 256
                per_warp = -(-int(regs) * 32 // 256) * 256
                need = per_warp * -(-threads[key] // 32)
                if need > 65536:
                    msg = (f"{regs} registers x {threads[key]} threads need {need} registers "
                           "per block, more than the 65536 of a multiprocessor")
                    failures.append((short, [str(t) for t in sig], "", None, msg))
                    log(f"FAILED {short} {sig}: {msg}")
            m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores", txt)
            spill = f"{m.group(1)}/{m.group(2)}" if m else "?"
            m = re.search(r"(\d+) bytes smem", txt)
            smem = m.group(1) if m else "0"
        sig_text = ",".join(re.sub(r"array\((\w+), (\d)d, (\w)\)", r"\1[\2d,\3]", str(t))
                            for t in sig)[:64]
        log(f"{i:>3} {short[:30]:<30} {sig_text:<64} {n64:>7} {threads[key]:>4} {regs:>5} {spill:>11} {smem:>7} {seconds:5.1f}")
        rows.append(dict(kernel=qualname, signature=[str(t) for t in sig], f64_ops_in_f32=n64,
                         threads_per_block=threads[key], registers=regs, stack_and_spill_bytes=spill, shared_bytes=smem))
    unused = [(fn, sig, name) for (fn, sig), name in asked.items() if (fn, sig) not in compiled]
    for fn, sig, name in unused:
        msg = "the occupancy was asked for a signature no launch used"
        failures.append((name, [str(t) for t in sig], "", None, msg))
        log(f"FAILED {name} {sig}: {msg}")
    log(f"{len(asked)} occupancy queries (rt.resident_grid), {len(unused)} for a signature "
        "no launch used")
    log(f"{len(compiled)} kernels compiled for sm_{cc[0]}{cc[1]}, {len(failures)} failures")
    return dict(kernels=rows, failures=failures)


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def environment():
    from numba import cuda

    info = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                python=platform.python_version(), numpy=np.__version__)
    import numba

    info["numba"] = numba.__version__
    try:
        from importlib.metadata import version

        info["numba_cuda"] = version("numba-cuda")
    except Exception:
        info["numba_cuda"] = "?"
    for mod in ("torch", "cupy"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            info[mod] = None
    if not SMOKE and cuda.is_available():
        dev = cuda.get_current_device()
        name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
        info["device"] = dict(name=name, multiprocessors=dev.MULTIPROCESSOR_COUNT,
                              compute_capability=list(dev.compute_capability))
    return info


# ---------------------------------------------------------------------------
# The models: fit on device='cuda' against device='cpu'
# ---------------------------------------------------------------------------

#: (label, N, d, h, K, MLPClassifier parameters) of the timed model fits: one
#: epoch each, so a fit is one pass of minibatch steps over the data. ``h``:
#: the hidden layer's width, or a tuple of widths.
MODEL_MLP = [
    ("sgd batch 200", 262144, 64, 128, 10, dict(solver="sgd", batch_size=200)),
    ("adam batch 1024", 65536, 784, 256, 10, dict(solver="adam", batch_size=1024)),
    ("gd (full batch)", 1048576, 16, 32, 4, dict(solver="gd")),
    ("relu 2 hidden, sgd batch 200", 262144, 64, (128, 64), 10,
     dict(solver="sgd", batch_size=200, activation="relu")),
    ("tanh 2 hidden, adam batch 4096", 262144, 64, (128, 64), 10,
     dict(solver="adam", batch_size=4096, activation="tanh")),
    # weighted=True: fit(..., sample_weight=w), seeded weights in [0, 2]
    ("sgd batch 200, weighted", 262144, 64, 128, 10,
     dict(solver="sgd", batch_size=200, weighted=True)),
]

#: (label, N, d, LinearRegression parameters) of the timed linear fits.
MODEL_LINEAR = [
    ("normal", 4194304, 16, dict(solver="normal")),
    ("normal", 1048576, 128, dict(solver="normal")),
    ("gd 50 iterations", 1048576, 128, dict(solver="gd", max_iter=50, tol=0.0)),
    ("normal, weighted", 4194304, 16, dict(solver="normal", weighted=True)),
]


def _mlp_fit(config, rng, n=None):
    """``(make, X, y, w)`` of a ``MODEL_MLP`` row (at ``n`` rows if given):
    ``make(device)`` builds its one-epoch model, ``w`` the sample weights or None."""
    from fusedgrad.models import MLPClassifier

    _, N, d, h, K, params = config
    N = N if n is None else n
    X = rng.standard_normal((N, d), dtype=np.float32)
    y = rng.integers(0, K, N)
    params = dict(params)
    w = rng.uniform(0.0, 2.0, N) if params.pop("weighted", False) else None
    hidden = h if isinstance(h, tuple) else (h,)

    def make(device):
        return MLPClassifier(hidden_layer_sizes=hidden, max_iter=1, random_state=0,
                             learning_rate_init=0.01, device=device, **params)

    return make, X, y, w


def _linear_fit(config, rng, n=None):
    """``(make, X, y, w)`` of a ``MODEL_LINEAR`` row, as :func:`_mlp_fit`."""
    from fusedgrad.models import LinearRegression

    _, N, d, params = config
    N = N if n is None else n
    X = rng.standard_normal((N, d), dtype=np.float32)
    y = X @ rng.standard_normal(d, dtype=np.float32) + np.float32(1.0)
    params = dict(params)
    w = rng.uniform(0.0, 2.0, N) if params.pop("weighted", False) else None
    return (lambda device: LinearRegression(device=device, **params)), X, y, w


def warm_cpu_cache(n=16384):
    """Fit the CPU side of ``MODEL_MLP`` and ``MODEL_LINEAR`` on ``n`` rows:
    compiles (and caches on disk) the CPU kernels the model section's
    ``device='cpu'`` fits use, so that section, run later or concurrently in
    another process, spends its time fitting rather than compiling. Touches no
    GPU; meant to run beside the checks, which are mostly GPU compilation."""
    import warnings

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for build, configs in ((_mlp_fit, MODEL_MLP), (_linear_fit, MODEL_LINEAR)):
            for config in configs:
                make, X, y, w = build(config, rng, n)
                make("cpu").fit(X, y, sample_weight=w)
    log(f"warm-cpu: compiled the model fits' CPU kernels in {time.perf_counter() - t0:.1f} s")


def run_model_timings(smoke, quick, rows):
    """Wall-clock seconds of ``fit`` of both models on ``device='cuda'`` and
    ``'cpu'`` (median of the repeats after one warm-up fit on the device, which
    compiles). A cuda fit returns after its final copy of the parameters to
    the host, so the wall clock covers all its GPU work, including copying
    ``X`` to the GPU."""
    import warnings

    reps = 1 if smoke else (2 if quick else 3)
    rng = np.random.default_rng(0)
    mlp = MODEL_MLP if not smoke else [
        (lab, 40, 3, (4, 3) if isinstance(h, tuple) else 4, 2, p)
        for lab, _, _, h, _, p in MODEL_MLP]
    linear = MODEL_LINEAR if not smoke else [(lab, 40, 3, dict(p, max_iter=3) if "max_iter" in p
                                              else p) for lab, _, _, p in MODEL_LINEAR]

    def timed(make, device, X, y, w):
        times = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            make(device).fit(X, y, sample_weight=w)  # warm-up: compiles for this shape
            for _ in range(reps):
                t = time.perf_counter()
                make(device).fit(X, y, sample_weight=w)
                times.append(time.perf_counter() - t)
        return statistics.median(times)

    def row(model, build, config, shape):
        make, X, y, w = build(config, rng)
        r = dict(model=model, config=config[0], shape=shape)
        for device in ("cuda", "cpu"):
            r[f"{device}_s"] = timed(make, device, X, y, w)
        r["cpu_over_cuda"] = r["cpu_s"] / r["cuda_s"]
        log(f"  {model} {config[0]} {'x'.join(map(str, shape))}: cuda {r['cuda_s']:.3f} s, "
            f"cpu {r['cpu_s']:.3f} s")
        return r

    for config in mlp:
        guarded(rows, f"MLPClassifier {config[0]}",
                lambda: row("MLPClassifier", _mlp_fit, config, list(config[1:5])))
    for config in linear:
        guarded(rows, f"LinearRegression {config[0]}",
                lambda: row("LinearRegression", _linear_fit, config, list(config[1:3])))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="simulator, tiny shapes, no torch")
    parser.add_argument("--ptx", action="store_true", help="compile-only check (no GPU)")
    parser.add_argument("--ptx-dir", default=None,
                        help="with --ptx: write each kernel's PTX into this folder")
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--no-checks", action="store_true")
    parser.add_argument("--no-timings", action="store_true")
    parser.add_argument("--no-ablations", action="store_true",
                        help="skip the design alternatives and the fused kernel's sweep")
    parser.add_argument("--no-profile", action="store_true",
                        help="skip the kernel tables of single wrapper calls")
    parser.add_argument("--no-models", action="store_true",
                        help="skip the model fits (device='cuda' against 'cpu')")
    parser.add_argument("--budget-s", type=float, default=450.0,
                        help="start no further section after this many seconds (default 450)")
    parser.add_argument("--deadline-s", type=float, default=530.0,
                        help="start no further row of any section after this many seconds "
                             "(default 530)")
    parser.add_argument("--warm-cpu", action="store_true",
                        help="only compile the CPU side of the model fits (no GPU), filling "
                             "Numba's cache for a later run's model section")
    parser.add_argument("--commit", default=os.environ.get("FUSEDGRAD_COMMIT", "unknown"))
    parser.add_argument("--out", default=None, help="JSON path (default $OUT/gpu_check.json)")
    parser.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                        help="set an option of fusedgrad.kernels._options for the whole run "
                             "(a Python literal), e.g. CUDA_FAST_LAUNCH=False to launch "
                             "through numba only; repeatable")
    args = parser.parse_args(argv)
    if args.option:
        import ast

        from fusedgrad.kernels import _options as opt

        for item in args.option:
            name, _, value = item.partition("=")
            if not hasattr(opt, name.strip()):
                parser.error(f"--option: fusedgrad.kernels._options has no {name.strip()!r}")
            setattr(opt, name.strip(), ast.literal_eval(value.strip()))
    t0 = time.perf_counter()
    result = dict(mode="ptx" if args.ptx else ("smoke" if args.smoke else "gpu"),
                  commit=args.commit)
    out = args.out or (os.path.join(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT")
                       else None)

    def save():
        # after every row, so a run cut off by its time limit keeps what it measured
        result["seconds"] = round(time.perf_counter() - t0, 1)
        if out:
            with open(out + ".tmp", "w") as f:
                json.dump(result, f, indent=1, default=str)
            os.replace(out + ".tmp", out)

    _RUN["save"] = save
    _RUN["deadline"] = t0 + args.deadline_s

    def section(flag, name, title, fn, container, printer=None):
        if flag:
            return
        if time.perf_counter() - t0 > args.budget_s:
            log(f"{title}: skipped, past the {args.budget_s:.0f} s budget")
            result.setdefault("skipped", []).append(name)
            return
        log(f"{title}:")
        result[name] = container
        try:
            fn(container)
            if printer:
                printer(container)
        except Exception as exc:  # noqa: BLE001  (keep the sections after this one)
            import traceback

            log(traceback.format_exc())
            result.setdefault("section_errors", {})[name] = f"{type(exc).__name__}: {exc}"[:500]
        save()

    if args.warm_cpu:
        warm_cpu_cache()
        return 0
    if args.ptx:
        result["ptx"] = run_ptx_check(ptx_dir=args.ptx_dir)
        ok = not result["ptx"]["failures"]
    else:
        from fusedgrad.kernels import _options as opt
        from fusedgrad.kernels.cuda import _runtime as rt

        rt.require()
        if args.smoke:
            for k, v in SMOKE_OPTIONS.items():
                setattr(opt, k, v)
        result["environment"] = environment()
        result["environment"]["options"] = args.option
        log(f"environment: {result['environment']}")
        save()
        section(args.no_checks, "checks",
                "checks (max normwise relative error against the float64 reference)",
                lambda c: run_checks(args.smoke, c), [])
        ok = "checks" not in result.get("section_errors", {}) and all(
            r["status"] in ("ok",) or r["status"].startswith("skipped")
            for r in result.get("checks", []))
        section(args.no_timings, "timings", "timings (CUDA events, medians)",
                lambda c: run_timings(args.smoke, args.quick, c), {}, print_tables)
        section(args.no_ablations, "ablations",
                "design alternatives (CUDA events, medians, float32)",
                lambda c: run_ablations(args.smoke, args.quick, c), [], print_ablation_table)
        section(args.no_profile, "profile", "one call's kernels (torch.profiler, float32)",
                lambda c: run_profile(args.smoke, c), [])
        section(args.no_models, "models", "model fits (wall clock, medians)",
                lambda c: run_model_timings(args.smoke, args.quick, c), [], print_model_table)
        timed = [r for v in result.get("timings", {}).values() if isinstance(v, list)
                 for r in v]
        timed += result.get("ablations", []) + result.get("models", [])
        errors = [r for r in timed if "error" in r and not r["error"].startswith("skipped")]
        ok = ok and not errors and not result.get("section_errors")
        if errors or result.get("section_errors"):
            log(f"{len(errors)} timed rows and {len(result.get('section_errors', {}))} "
                f"sections raised (see the log and the JSON)")
        result["launches"] = launch_summary()
        log(f"rt.launch: {result['launches']}")
    save()
    if out:
        log(f"wrote {out}")
    skipped = sum(r["status"].startswith("skipped") for r in result.get("checks", []))
    log(f"{'checks passed' if ok else 'SOME CHECKS FAILED OR ROWS RAISED'}"
        f"{f' ({skipped} checks skipped)' if skipped else ''} ({result['seconds']} s)")
    return 0 if ok else 1


def launch_summary():
    """The kernel launches of this run by ``rt.launch``: how many (kernel,
    argument types) keys it packed itself, and the kernels of those it left
    to numba's launch (its packing did not match numba's, or an argument was
    of a type it does not pack; none expected)."""
    from fusedgrad.kernels.cuda import _runtime as rt

    entries = list(rt._LAUNCHERS.items())
    left = sorted({getattr(key[0], "py_func", key[0]).__qualname__
                   for key, entry in entries if entry is None})
    return dict(keys=len(entries), packed=sum(e is not None for _, e in entries),
                left_to_numba=left)


def print_tables(t):
    log("\n| N, d, h, K | path | fused ms | checked ms | torch ms | torch/fused | torch H200 (issue) ms |")
    log("|:---|:---|---:|---:|---:|---:|---:|")
    for r in t["mlp"]:
        if "error" in r:
            log(f"| {r['row']} | {r['error']} | | | | | |")
            continue
        torch_ms = r.get("torch_ms", "-")
        ratio = r.get("torch_over_fused")
        log(f"| {', '.join(map(str, r['shape']))} | {r['path']} {r.get('gemm', '')} | "
            f"{r['fused_ms']:.3f} | {r.get('fused_checked_ms', float('nan')):.3f} | "
            f"{torch_ms if isinstance(torch_ms, str) else f'{torch_ms:.3f}'} | "
            f"{'-' if ratio is None else f'{ratio:.2f}'} | {r.get('torch_h200_issue_ms')} |")
    log("\n| N, d, hidden, K | activation | ms | numba products ms | torch ms | torch/ours |")
    log("|:---|:---|---:|---:|---:|---:|")
    for r in t.get("network", []):
        if "error" in r:
            log(f"| {r['row']} | {r['error']} | | | | |")
            continue
        ratio = r.get("torch_over_fused")
        log(f"| {r['shape'][0]}, {r['shape'][1]}, {r['shape'][2]}, {r['shape'][3]} | "
            f"{r['activation']} ({r['gemm']}) | {r['fused_ms']:.3f} | "
            f"{r.get('fused_numba_gemm_ms', float('nan')):.3f} | "
            f"{r.get('torch_ms', float('nan')):.3f} | "
            f"{'-' if ratio is None else f'{ratio:.2f}'} |")
    log("\n| kernel | ms | GB/s | of copy |")
    log("|:---|---:|---:|---:|")
    for r in t["rowwise"]:
        if "error" in r:
            log(f"| {r['row']} | {r['error']} | | |")
            continue
        frac = r.get("fraction_of_copy")
        log(f"| {r['kernel']} | {r['ms']:.3f} | {r['GBps']:.0f} | "
            f"{'-' if frac is None else f'{frac:.0%}'} |")


def print_ablation_table(rows):
    log("\n| work | variant | ms | GB/s | ms / first variant |")
    log("|:---|:---|---:|---:|---:|")
    first = {}
    for r in rows:
        if "error" in r:
            log(f"| {r['group']} | {r['variant']} | {r['error']} | | |")
            continue
        base = first.setdefault(r["group"], r["ms"])
        gbps = f"{r['GBps']:.0f}" if "GBps" in r else "-"
        log(f"| {r['group']} | {r['variant']} | {r['ms']:.3f} | {gbps} | {r['ms'] / base:.2f} |")


def print_model_table(rows):
    log("\n| model | fit | shape | cuda s | cpu s | cpu/cuda |")
    log("|:---|:---|:---|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            log(f"| {r['row']} | {r['error']} | | | | |")
            continue
        log(f"| {r['model']} | {r['config']} | {', '.join(map(str, r['shape']))} | "
            f"{r['cuda_s']:.3f} | {r['cpu_s']:.3f} | {r['cpu_over_cuda']:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
