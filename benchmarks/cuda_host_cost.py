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

Then a second table: the launch code itself. Each call's launches are
recorded and replayed on numba's real dispatchers and launch code, with
shells of compiled kernels (nothing compiled) and the driver call left out
(:func:`launch_costs`): numba's own launch (``kernel[grid, block](*args)``)
against the package's (``cuda._runtime.launch``), per call, and how many of
a call's launches ``rt.launch`` packs itself (all of them, unless numba's
packing of some argument type is one it does not reproduce).
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
# the replayed launches' small grids (the wrappers' second passes, 512 rows)
os.environ.setdefault("NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS", "0")

LAUNCHES = []
COPIES = []
RECORDED = None  # a list while launches are recorded: (kernel, options, grid, block, args)
REAL_JIT = None


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
        def __init__(self, fn, options):
            self.fn, self.options = fn, options

        def typeof_pyval(self, a):
            return argtype(a)

        def compile(self, sig):
            return SimpleNamespace(max_cooperative_grid_blocks=lambda tpb: 8 * 132)

        def __getitem__(self, config):
            def launch(*args):
                LAUNCHES.append(self.fn.__qualname__.split(".<locals>")[0])
                if RECORDED is not None:
                    RECORDED.append((self.fn, self.options, config[0], config[1], args))
            return launch

    global REAL_JIT
    real_jit = REAL_JIT = cuda.jit

    def jit(*a, **kw):
        if kw.get("device"):
            return real_jit(*a, **kw)
        return lambda fn: Launch(fn, kw)

    cuda.jit = jit
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
        if d == 64:
            out.append((f"mlp_loss_grad {d}, {h}, {K}, check_finite",
                        lambda X=X, y=y, W1=W1, b1=b1, W2=W2, b2=b2:
                        kc.mlp_loss_grad(X, y, W1, b1, W2, b2)))
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
    rows = []
    for solver in ("sgd", "adam"):
        best, launches, copies = measure(fit(solver), 1, max(1, reps))
        rows.append((f"MLPClassifier.fit {solver}, batch 200, a step", best / 200,
                     len(launches) / 200, len(copies)))
    return rows


def fit(solver):
    """A call of ``MLPClassifier(device='cuda').fit`` as :func:`fit_steps`
    times it (200 steps), its device buffers zero-filled."""
    import warnings

    from numba import cuda

    from fusedgrad.models import MLPClassifier

    rng = np.random.default_rng(0)
    X = rng.standard_normal((20000, 64)).astype(np.float32)
    y = rng.integers(0, 10, 20000)

    def run():
        empty = cuda.device_array
        cuda.device_array = lambda shape, dtype=np.float64, **kw: np.zeros(shape, dtype).view(Dev)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the 2 epochs do not converge
                MLPClassifier(hidden_layer_sizes=(128,), solver=solver, batch_size=200,
                              max_iter=2, tol=0.0, n_iter_no_change=100, random_state=0,
                              dtype=np.float32, device="cuda").fit(X, y)
        finally:
            cuda.device_array = empty

    return run


def launch_costs(labelled, rounds=5, launches=4000):
    """(label, launches, us of numba's launches, us of ``rt.launch``'s,
    launches ``rt.launch`` packs itself) for one call of each ``(label, fn,
    per)`` (the costs divided by ``per``): the call's launches, recorded from
    the stand-ins, replayed on numba's own dispatchers and launch code (about
    ``launches`` launches a round each way).

    The kernels are shells of numba's compiled kernels (nothing is compiled),
    the device arrays numba's over made-up addresses (a recorded buffer is
    one device array throughout, as the wrappers' buffers are), and cuda.core's
    ``launch``, the driver call that ends both launches, does nothing. What is
    timed is the rest: numba's typing, overload lookup and argument
    marshalling, against :func:`rt.launch`'s key and packing. The arrays are
    reused, so numba's typing finds each one's type cached: for a fresh array
    (each call's outputs) numba pays some 5 us more."""
    import ctypes

    import numba.cuda.dispatcher as nb_dispatcher
    from numba import types as nbtypes
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    from numba.cuda.cudadrv.driver import MemoryPointer
    from numba.cuda.typing import signature

    from fusedgrad.kernels.cuda import _runtime as rt

    global RECORDED
    nb_dispatcher.launch = lambda *args: None
    cufunc = SimpleNamespace(kernel=None)
    lib = SimpleNamespace(get_cufunc=lambda: cufunc)
    dispatchers, address = {}, [1 << 40]
    rows = []
    for label, fn, per in labelled:
        RECORDED = []
        try:
            fn()
        finally:
            recorded, RECORDED = RECORDED, None
        device = {}  # id of a stand-in array -> its numba device array

        def as_device(a):
            if not isinstance(a, np.ndarray):
                return a
            if id(a) not in device:
                memory = MemoryPointer(None, ctypes.c_void_p(address[0]), a.nbytes)
                address[0] += a.nbytes + 512
                device[id(a)] = (a, DeviceNDArray(a.shape, a.strides, a.dtype,
                                                  gpu_data=memory))
            return device[id(a)][1]

        plan = []
        for fn_, options, grid, block, args in recorded:
            key = (fn_, tuple(sorted((k, repr(v)) for k, v in options.items())))
            if key not in dispatchers:
                dispatchers[key] = REAL_JIT(**options)(fn_)
            kernel = dispatchers[key]
            args = tuple(as_device(a) for a in args)
            sig = tuple(kernel.typeof_pyval(a) for a in args)
            if sig not in kernel.overloads:
                kernel.add_overload(nb_dispatcher._Kernel._rebuild(
                    cooperative=False, name=fn_.__name__, signature=signature(nbtypes.none, *sig),
                    codelibrary=lib, debug=False, lineinfo=False, call_helper=None,
                    extensions=[]), sig)
            plan.append((kernel, grid, block, args))
        configured = [(kernel[grid, block], args) for kernel, grid, block, args in plan]

        def numba_launches():
            for config, args in configured:
                config(*args)

        def fast_launches():
            for kernel, grid, block, args in plan:
                rt.launch(kernel, grid, block, *args)

        rt._LAUNCHERS.clear()
        fast_launches()  # numba's launch, and the self-check of each key
        keys = set(rt._LAUNCHERS)
        calls = max(1, launches // len(plan))
        numba_us = best_of(numba_launches, rounds, calls) / per * 1e6
        fast_us = best_of(fast_launches, rounds, calls) / per * 1e6
        assert set(rt._LAUNCHERS) == keys
        device_array = rt._fast_types()[1]
        packed = sum(1 for kernel, grid, block, args in plan
                     if rt._LAUNCHERS.get(rt._launch_key(kernel, args, device_array)) is not None)
        rows.append((label, len(plan) / per, numba_us, fast_us, packed / per))
    return rows


def slice_costs(calls=5000):
    """us of a row slice of a numba device array (200 of 20,000 rows, 64
    columns, as a minibatch step takes): numba's ``a[i:j]`` (its indexing,
    without the check for a current context that ``__getitem__`` adds) and
    ``rt.rows``."""
    import ctypes

    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    from numba.cuda.cudadrv.driver import MemoryPointer

    from fusedgrad.kernels.cuda import _runtime as rt

    memory = MemoryPointer(None, ctypes.c_void_p(1 << 40), 20000 * 64 * 4)
    a = DeviceNDArray((20000, 64), (256, 4), np.float32, gpu_data=memory)
    numba_us = best_of(lambda: a._do_getitem(slice(400, 600)), 5, calls) * 1e6
    rows_us = best_of(lambda: rt.rows(a, 400, 600), 5, calls) * 1e6
    return numba_us, rows_us


def best_of(fn, rounds, calls):
    """Seconds a call of ``fn``: the best of ``rounds`` means of ``calls``
    calls (after one)."""
    fn()
    best = math.inf
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t) / calls)
    return best


def measure(fn, calls, rounds=5):
    """Best of ``rounds`` means of ``calls`` calls, seconds (after a call to
    warm up); and one call's launches and copies."""
    fn()
    LAUNCHES.clear()
    COPIES.clear()
    fn()
    launches, copies = list(LAUNCHES), list(COPIES)
    return best_of(fn, rounds, calls), launches, copies


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
    print()
    print(f"{'numba launch code per call (the driver call not included)':<58} "
          f"{'launches':>8} {'numba us':>9} {'rt.launch us':>12} {'ratio':>6}  packed")
    labelled = [(label, fn, 1) for label, fn in calls()]
    labelled += [(f"MLPClassifier.fit {solver}, batch 200, a step", fit(solver), 200)
                 for solver in ("sgd", "adam")]
    rows = launch_costs(labelled, launches=2 * args.reps)
    for label, launches, numba_us, fast_us, packed in rows:
        print(f"{label:<58} {launches:8.2f} {numba_us:9.1f} {fast_us:12.1f} "
              f"{numba_us / fast_us:6.1f}  {packed:.2f}")
    print()
    numba_us, rows_us = slice_costs()
    print(f"a row slice of a numba device array (200 of 20000 x 64): numba {numba_us:.1f} us, "
          f"rt.rows {rows_us:.1f} us (a shuffled minibatch step: 3 numba slices before, "
          "1 rt.rows now)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
