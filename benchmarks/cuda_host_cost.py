"""The CUDA wrappers' own host cost per call, measured without a GPU.

Every call of a public CUDA wrapper runs Python before its kernels start:
input checks, plans, grid sizes, buffers. On a GPU that time adds to the
kernels' wherever the host, not the GPU, is the bottleneck (small and medium
calls, training steps), and issue 5's timings count it. This script measures
that part alone: numba's ``cuda.jit`` launches are replaced by a stand-in that
only counts them (nothing is compiled), device arrays are NumPy arrays in
disguise (``np.empty``), copies to and from the device are counted. What it
prints is the wrappers' Python, plus that of the stand-ins (a few us); not
numba's own launch cost (its argument marshalling, a few us an argument, and
the driver's), nor the copies' synchronisations, which only a GPU can time
(``gpu_check.py``'s profile section).

    unset NUMBA_ENABLE_CUDASIM   # the real numba.cuda (no GPU needed)
    python benchmarks/cuda_host_cost.py [--reps 2000]

Prints, for each wrapper call, the best of 5 means (us), and the launches
and copies one call makes; then the same per training step of
``MLPClassifier(device='cuda').fit`` (sgd and adam, minibatches of 200),
whose device buffers are zero-filled so that the fit's checks of the loss
pass (its kernels run nothing).
"""

import argparse
import math
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LAUNCHES = []
COPIES = []


class Dev(np.ndarray):
    """A NumPy array that the wrappers take for a numba device array."""

    __cuda_ndarray__ = True

    def copy_to_host(self, ary=None, stream=0):
        COPIES.append("to host")
        if ary is None:
            return np.array(self)
        ary[...] = self
        return ary

    def copy_to_device(self, ary, stream=0):
        COPIES.append("to device")
        self[...] = ary

    def is_c_contiguous(self):
        return self.flags.c_contiguous


def install_fakes():
    """Replace numba's kernel launches and device allocations (before any
    kernel factory runs: they are cached)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        raise SystemExit("needs the real numba.cuda: unset NUMBA_ENABLE_CUDASIM")
    import numba
    import numba.cuda.dispatcher as cuda_dispatcher
    from numba import cuda, types

    def argtype(a):
        if isinstance(a, np.ndarray):
            return types.Array(numba.from_dtype(a.dtype), a.ndim,
                               "C" if a.flags.c_contiguous else "A")
        return numba.typeof(a)

    class Launch:
        def __init__(self, fn):
            self.fn = fn

        def typeof_pyval(self, a):
            return argtype(a)

        def compile(self, sig):
            return SimpleNamespace(max_cooperative_grid_blocks=lambda tpb: 8 * 132)

        def __getitem__(self, config):
            return lambda *args: LAUNCHES.append(self.fn.__qualname__.split(".<locals>")[0])

    real_jit = cuda.jit
    cuda.jit = lambda *a, **kw: real_jit(*a, **kw) if kw.get("device") else Launch
    # device functions compile for the current device's compute capability
    cuda_dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=(9, 0))
    cuda.device_array = lambda shape, dtype=np.float64, **kw: np.empty(shape, dtype).view(Dev)

    def to_device(a, **kw):
        COPIES.append("to device")
        return np.array(a).view(Dev)

    cuda.to_device = to_device
    from fusedgrad.kernels.cuda import _runtime as rt

    rt._unavailable_reason = lambda: None
    rt._multiprocessors = lambda: 132  # an H100/H200


def calls(n=512):
    """(label, call) of the public wrappers on device inputs of ``n`` rows."""
    import fusedgrad.kernels.cuda as kc
    from fusedgrad.kernels.cuda import mlp

    rng = np.random.default_rng(0)

    def dev(*shape, labels=None):
        a = rng.integers(0, labels, shape[0]) if labels else rng.standard_normal(shape)
        return np.ascontiguousarray(a if labels else a.astype(np.float32)).view(Dev)

    Z, y10 = dev(n, 10), dev(n, labels=10)
    out = [
        ("softmax_cross_entropy K=10", lambda: kc.softmax_cross_entropy(Z, y10,
                                                                       check_finite=False)),
        ("softmax_cross_entropy K=10, check_finite", lambda: kc.softmax_cross_entropy(Z, y10)),
    ]
    for d, h, K in ((16, 32, 4), (64, 128, 10), (784, 256, 10)):
        X, y = dev(n, d), dev(n, labels=K)
        W1, b1, W2, b2 = dev(d, h), dev(h), dev(h, K), dev(K)
        out.append((f"mlp_loss_grad {d}, {h}, {K}", lambda X=X, y=y, W1=W1, b1=b1, W2=W2, b2=b2:
                    kc.mlp_loss_grad(X, y, W1, b1, W2, b2, check_finite=False)))
        if d <= 64:
            flat, loss, work = dev(d * h + h + h * K + K), dev(1), {}
            out.append((f"mlp.loss_grad_device {d}, {h}, {K} (a training step)",
                        lambda X=X, y=y, W1=W1, b1=b1, W2=W2, b2=b2, flat=flat, loss=loss,
                        work=work: mlp.loss_grad_device(X, y, W1, b1, W2, b2, flat, loss,
                                                        work=work)))
    X, yv, w = dev(n, 16), dev(n), dev(16)
    W, b, A, outA = dev(16, 32), dev(32), dev(n, 32), dev(n, 32)
    out += [
        ("ols_loss_grad d=16", lambda: kc.ols_loss_grad(X, yv, w, check_finite=False)),
        ("gram d=16", lambda: kc.gram(X, yv, check_finite=False)),
        ("affine_sigmoid 16 -> 32, out=", lambda: kc.affine_sigmoid(X, W, b, outA,
                                                                   check_finite=False)),
        ("affine_sigmoid_backward 16 -> 32, with dX",
         lambda: kc.affine_sigmoid_backward(X, A, A, W, check_finite=False)),
    ]
    return out


def fit_steps(reps):
    """(label, us per step, launches per step, copies per fit) of
    ``MLPClassifier(device='cuda').fit``: 20,000 x 64 -> 128 -> 10, float32,
    minibatches of 200, 2 epochs (200 steps), best of ``reps`` fits after one."""
    import warnings

    from numba import cuda

    from fusedgrad.models import MLPClassifier

    rng = np.random.default_rng(0)
    X = rng.standard_normal((20000, 64)).astype(np.float32)
    y = rng.integers(0, 10, 20000)
    empty = cuda.device_array
    cuda.device_array = lambda shape, dtype=np.float64, **kw: np.zeros(shape, dtype).view(Dev)
    rows = []
    try:
        for solver in ("sgd", "adam"):
            def fit():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the 2 epochs do not converge
                    MLPClassifier(hidden_layer_sizes=(128,), solver=solver, batch_size=200,
                                  max_iter=2, tol=0.0, n_iter_no_change=100, random_state=0,
                                  dtype=np.float32, device="cuda").fit(X, y)

            best, launches, copies = measure(fit, 1, max(1, reps))
            rows.append((f"MLPClassifier.fit {solver}, batch 200, a step", best / 200,
                         len(launches) / 200, len(copies)))
    finally:
        cuda.device_array = empty
    return rows


def measure(fn, calls, rounds=5):
    """Best of ``rounds`` means of ``calls`` calls, seconds (after a call to
    warm up); and one call's launches and copies."""
    fn()
    LAUNCHES.clear()
    COPIES.clear()
    fn()
    launches, copies = list(LAUNCHES), list(COPIES)
    best = math.inf
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t) / calls)
    return best, launches, copies


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=2000)
    args = parser.parse_args(argv)
    install_fakes()
    print(f"{'call (float32, 512 rows, device inputs, check_finite=False)':<58} {'us':>7}  "
          "launches, copies")
    for label, fn in calls():
        seconds, launches, copies = measure(fn, max(1, args.reps // 5))
        print(f"{label:<58} {seconds * 1e6:7.1f}  {len(launches)}, {len(copies)}"
              f"  ({', '.join(launches)}; {', '.join(copies) or 'no copies'})")
    for label, seconds, launches, copies in fit_steps(max(1, args.reps // 400)):
        print(f"{label:<58} {seconds * 1e6:7.1f}  {launches:.2f}, {copies}"
              "  (launches a step, copies a fit)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
