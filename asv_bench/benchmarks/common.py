"""Shared pieces of the benchmarks: sizes, seeded data, implementations.

Data are drawn from a seeded generator in float64 and cast, scaled as in the
test table (``tests/cases.py``) so logits and pre-activations are of order
one; each argument tuple is built once per process and cached, so the setup
that asv re-runs before every timed call only looks it up.

Implementations of a kernel (the ``implementation`` parameter):

``'numpy'``
    :mod:`fusedgrad.reference`, the lecture's formulas in plain NumPy.
``'fused'``
    :mod:`fusedgrad.kernels`, the fused Numba kernels.
``'cuda'``
    :mod:`fusedgrad.kernels.cuda` on device arrays; skipped where the module
    is missing, no CUDA GPU is usable or Numba's CUDA simulator is on.

The benchmarks import :mod:`fusedgrad` in ``setup``: the suite is also run
against older commits, where a module or a name may not exist yet. A missing
implementation raises :class:`NotImplementedError` in ``setup``,
which asv reports as a skipped benchmark.
"""

import functools
import importlib
import os
import timeit

import numpy as np

try:
    # Preloaded for asv's forkserver (asv.conf.json): every benchmark process
    # is forked from the one that imported this module, and need not import
    # NumPy, Numba and the package again. Compiles nothing. A failure here is
    # ignored: setup() imports again and reports it.
    import fusedgrad.kernels  # noqa: F401
    import fusedgrad.kernels.cuda  # noqa: F401
except Exception:  # pragma: no cover - older commits, broken imports
    pass

__all__ = [
    "PROFILE",
    "DTYPES",
    "SIZES",
    "SIZE_NAMES",
    "KERNELS",
    "kernel_args",
    "implementation",
    "require_module",
    "warm_up",
    "ratio_of_times",
]

#: ``'regular'``, or ``'fast'`` (environment variable
#: ``FUSEDGRAD_BENCH_PROFILE=fast``): a smoke run that checks that every
#: benchmark works, as CI does: the same benchmarks and parameters on smaller
#: inputs, with fewer repetitions. Its numbers are not comparable with a
#: regular run's; never publish them.
PROFILE = os.environ.get("FUSEDGRAD_BENCH_PROFILE", "regular")
if PROFILE not in ("regular", "fast"):
    raise ValueError(f"FUSEDGRAD_BENCH_PROFILE must be 'regular' or 'fast', got {PROFILE!r}")

#: Floating-point types of every parameterised benchmark.
DTYPES = ["float32", "float64"]

#: Problem sizes: samples N, features d, hidden units h, classes K. A kernel
#: reads the sizes it needs (``ols_loss_grad`` only N and d, ...).
#: ``small`` measures the per-call overhead (validation, dispatch, thread
#: start-up); ``large-batch`` a batch of a mid-sized network; ``thin`` many
#: samples of few features, where NumPy's temporaries dominate.
SIZES = {
    "small": dict(N=512, d=32, h=32, K=10),
    "large-batch": dict(N=65536, d=64, h=128, K=10),
    "thin": dict(N=262144, d=16, h=32, K=4),
}
if PROFILE == "fast":
    SIZES["large-batch"]["N"] = 4096
    SIZES["thin"]["N"] = 8192

#: Rounds of :func:`ratio_of_times` in the ``track_`` benchmarks.
RATIO_ROUNDS = 5 if PROFILE == "regular" else 1

#: Size names in a fixed order, for ``params``.
SIZE_NAMES = list(SIZES)

#: Module of each implementation.
MODULES = {
    "numpy": "fusedgrad.reference",
    "fused": "fusedgrad.kernels",
    "cuda": "fusedgrad.kernels.cuda",
}

#: Every public kernel, by the name it has in both modules.
KERNELS = [
    "affine_sigmoid",
    "affine_sigmoid_backward",
    "softmax_cross_entropy",
    "mlp_loss_grad",
    "ols_loss_grad",
    "gram",
    "network_loss_grad",
]

#: The network of the ``network_loss_grad`` benchmarks: two hidden layers of
#: ``h`` and ``h // 2`` units, this activation.
NETWORK_ACTIVATION = "relu"


def _normal(rng, size, dtype, scale=1.0):
    return (scale * rng.standard_normal(size)).astype(dtype)


def _sigmoid(Z):
    return 1.0 / (1.0 + np.exp(-Z))


@functools.lru_cache(maxsize=4)
def kernel_args(function, size, dtype, seed=0):
    """Positional arguments of ``function`` for one size and dtype (cached).

    Parameters
    ----------
    function : str
        Name of the kernel, one of :data:`KERNELS`.
    size : str
        Key of :data:`SIZES`.
    dtype : str
        ``'float32'`` or ``'float64'``.
    seed : int, optional
        Seed of the generator.

    Returns
    -------
    args : tuple
        The same tuple serves the reference and the kernel. Do not modify it:
        it is shared by every call in the process.
    """
    N, d, h, K = (SIZES[size][s] for s in ("N", "d", "h", "K"))
    rng = np.random.default_rng(seed)
    if function == "mlp_loss_grad":
        X = _normal(rng, (N, d), dtype)
        y = rng.integers(0, K, size=N)
        W1 = _normal(rng, (d, h), dtype, 1.0 / np.sqrt(d))
        b1 = _normal(rng, h, dtype, 0.5)
        W2 = _normal(rng, (h, K), dtype, 2.0 / np.sqrt(h))
        b2 = _normal(rng, K, dtype, 0.5)
        return X, y, W1, b1, W2, b2
    if function == "softmax_cross_entropy":
        return _normal(rng, (N, K), dtype, 2.0), rng.integers(0, K, size=N)
    if function in ("affine_sigmoid", "affine_sigmoid_backward"):
        X = _normal(rng, (N, d), dtype)
        W = _normal(rng, (d, h), dtype, 2.0 / np.sqrt(d))
        b = _normal(rng, h, dtype)
        if function == "affine_sigmoid":
            return X, W, b
        A = _sigmoid(X.astype(np.float64) @ W + b).astype(dtype)
        dA = _normal(rng, A.shape, dtype)
        return X, A, dA, W
    if function == "network_loss_grad":
        X = _normal(rng, (N, d), dtype)
        y = rng.integers(0, K, size=N)
        units = (d, h, h // 2, K)
        Ws = [_normal(rng, (a, b), dtype, 1.5 / np.sqrt(a)) for a, b in zip(units, units[1:])]
        bs = [_normal(rng, b, dtype, 0.5) for b in units[1:]]
        return X, y, Ws, bs, NETWORK_ACTIVATION
    if function in ("ols_loss_grad", "gram"):
        X = _normal(rng, (N, d), dtype)
        y = _normal(rng, N, dtype)
        w = _normal(rng, d, dtype)
        return (X, y, w) if function == "ols_loss_grad" else (X, y)
    raise ValueError(f"unknown kernel {function!r}")


def require_module(module):
    """Import ``module``; NotImplementedError if it does not exist at this commit."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # Only the module itself (or a parent) being absent means "not at this
        # commit"; a missing dependency of an existing module is an error.
        if exc.name is not None and module.startswith(exc.name):
            raise NotImplementedError(f"{module} does not exist") from exc
        raise


_on_device = {}


def implementation(impl, function):
    """The kernel ``function`` of implementation ``impl``, ready to time.

    Parameters
    ----------
    impl : str
        ``'numpy'``, ``'fused'`` or ``'cuda'`` (see the module docstring).
    function : str
        Public name of the kernel.

    Returns
    -------
    call : callable
        The function to time. For ``'cuda'`` it synchronises the device
        before returning, so the timing covers the whole computation.
    prepare : callable
        ``prepare(args)``: the host arguments as ``call`` takes them (copied
        to the device for ``'cuda'``, unchanged otherwise).

    Raises
    ------
    NotImplementedError
        If the module or the function does not exist (an older commit) or no
        CUDA GPU is usable; asv then skips the benchmark.
    """
    module = require_module(MODULES[impl])
    fn = getattr(module, function, None)
    if fn is None:
        raise NotImplementedError(f"{MODULES[impl]}.{function} does not exist")
    if function == "network_loss_grad" and impl != "numpy":
        # the kernels take the activation as a keyword, the reference positionally
        kernel = fn

        def fn(X, y, coefs, intercepts, activation):
            return kernel(X, y, coefs, intercepts, activation=activation)

    if impl != "cuda":
        return fn, lambda args: args
    from numba import config, cuda

    if config.ENABLE_CUDASIM:
        raise NotImplementedError("the CUDA simulator is on (NUMBA_ENABLE_CUDASIM): no GPU to time")
    if not module.is_available():
        raise NotImplementedError("no usable CUDA GPU")

    def call(*args):
        out = fn(*args)
        cuda.synchronize()
        return out

    def prepare(args):
        # Once per process: asv re-runs setup before every timed call.
        key = tuple(id(a) for a in args)
        if key not in _on_device:
            _on_device[key] = tuple(
                cuda.to_device(a) if isinstance(a, np.ndarray)
                else [cuda.to_device(b) for b in a] if isinstance(a, list) else a
                for a in args
            )
        return _on_device[key]

    return call, prepare


_warm = set()


def warm_up(key, call, args):
    """Call ``call(*args)`` once per process and ``key``: compiles (or loads) the kernel.

    asv re-runs ``setup`` before every timed call; the key keeps the warm-up
    call (and, for the NumPy side, the first touch of its temporaries) to the
    first setup of the process.
    """
    if key not in _warm:
        call(*args)
        _warm.add(key)


def _seconds_per_call(call, args, number):
    start = timeit.default_timer()
    for _ in range(number):
        call(*args)
    return (timeit.default_timer() - start) / number


def _calls_per_sample(call, args, sample_time):
    number = 1
    while True:
        t = _seconds_per_call(call, args, number) * number
        if t >= sample_time:
            return number
        number = max(number + 1, int(number * min(10.0, 1.2 * sample_time / max(t, 1e-9))))


def ratio_of_times(call, args, base_call, base_args, rounds=RATIO_ROUNDS, sample_time=0.02):
    """Time of ``call`` over time of ``base_call``, measured interleaved in one process.

    Each round times one sample of each (a sample repeats the call until it
    lasts at least ``sample_time`` seconds); the ratio is that of the median
    times per call. Drift of the machine's speed between rounds affects
    both sides alike.

    Returns
    -------
    ratio : float
        Below 1: ``call`` is faster than ``base_call`` (0.1 = ten times faster).
    """
    n = _calls_per_sample(call, args, sample_time)
    n_base = _calls_per_sample(base_call, base_args, sample_time)
    times, base_times = [], []
    for _ in range(rounds):
        base_times.append(_seconds_per_call(base_call, base_args, n_base))
        times.append(_seconds_per_call(call, args, n))
    return float(np.median(times) / np.median(base_times))
