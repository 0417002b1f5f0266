#!/usr/bin/env python
"""Time fusedgrad's kernels against their peers, on the same data, in one run.

Three sections, each printed as a markdown table:

* **MLP**: loss and full gradient of the 2-layer sigmoid/softmax MLP,
  :func:`fusedgrad.kernels.mlp_loss_grad`, against the five matmuls alone
  through NumPy's BLAS (the *gemm floor*), the NumPy reference, PyTorch CPU
  autograd and a jitted JAX ``value_and_grad``.
* **OLS**: :func:`fusedgrad.kernels.ols_loss_grad` and
  :func:`fusedgrad.kernels.gram` against the NumPy reference, and against
  ``X.sum()`` (one read of ``X``: the memory floor) and ``X.T @ X`` alone.
* **Memory**: the peak resident-memory increase of one MLP gradient call at a
  large ``N``, for the fused kernel and the NumPy reference, each measured in
  a fresh process.

Every implementation is called once to warm up (JIT compilation happens
there), then all are timed round-robin so that machine noise hits them alike;
the tables show the median. A ratio ``peer/fused`` above 1 means the fused
kernel is faster. A peer that is not installed, or a fused kernel that does
not exist yet, is skipped with a note.

Run ``fusedgrad bench --help`` (or ``python benchmarks/peers.py --help``) for the options; ``--quick`` is a
smoke run of a few seconds. Other code calls :func:`main`.
"""

import argparse
import functools
import gc
import importlib
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

from fusedgrad import reference

MLP_SHAPES = [
    (65536, 784, 256, 10),
    (262144, 64, 128, 10),
    (1048576, 16, 32, 4),
    (16384, 784, 1024, 10),
]
OLS_SHAPES = [(4_000_000, 16), (1_000_000, 128)]
MEMORY_SHAPE = (4_194_304, 16, 32, 4)

#: (N, d, hidden layer sizes, K, activation) of the deeper networks
#: (``network_loss_grad``), float32.
NETWORK_SHAPES = [
    (262144, 64, (128, 64), 10, "relu"),
    (262144, 64, (128, 64), 10, "tanh"),
    (65536, 784, (256, 128), 10, "relu"),
    (1048576, 16, (32, 32), 4, "relu"),
]
NETWORK_DTYPE = "float32"

QUICK_MLP_SHAPES = [(4096, 64, 32, 10), (16384, 16, 32, 4)]
QUICK_NETWORK_SHAPES = [(4096, 32, (32, 16), 10, "relu")]
QUICK_OLS_SHAPES = [(100_000, 16), (20_000, 128)]
QUICK_MEMORY_SHAPE = (262_144, 16, 32, 4)

DTYPES = ("float32", "float64")
OLS_DTYPE = "float64"
MEMORY_DTYPE = "float32"


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def mlp_data(n_samples, n_features, n_hidden, n_classes, dtype, seed=0):
    r"""Seeded inputs and parameters of the MLP benchmark.

    ``X`` is standard normal, ``y`` uniform labels, and every weight and bias
    is drawn from :math:`N(0, 1/\text{fan\_in})` (standard deviation
    :math:`1/\sqrt{\text{fan\_in}}`). Everything is drawn directly in
    ``dtype``, so no temporary larger than the result is ever allocated; the
    memory section relies on this.

    Parameters
    ----------
    n_samples, n_features, n_hidden, n_classes : int
    dtype : str or numpy.dtype
        float32 or float64.
    seed : int, default 0

    Returns
    -------
    dict
        ``X`` (n_samples, n_features), ``y`` int64 (n_samples,),
        ``W1`` (n_features, n_hidden), ``b1`` (n_hidden,),
        ``W2`` (n_hidden, n_classes), ``b2`` (n_classes,).
    """
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)

    def normal(shape, fan_in):
        a = rng.standard_normal(shape, dtype=dtype)
        a *= 1 / math.sqrt(fan_in)  # a Python float keeps float32 float32
        return a

    return {
        "X": rng.standard_normal((n_samples, n_features), dtype=dtype),
        "y": rng.integers(0, n_classes, size=n_samples),
        "W1": normal((n_features, n_hidden), n_features),
        "b1": normal(n_hidden, n_features),
        "W2": normal((n_hidden, n_classes), n_hidden),
        "b2": normal(n_classes, n_hidden),
    }


def network_data(n_samples, n_features, hidden, n_classes, dtype, seed=0):
    """Seeded inputs and parameters of the network benchmark, drawn as :func:`mlp_data`
    (weights and biases :math:`N(0, 1/\text{fan\_in})`).

    Returns
    -------
    dict
        ``X``, ``y``, ``coefs`` (list), ``intercepts`` (list).
    """
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    units = [n_features, *hidden, n_classes]
    coefs, intercepts = [], []
    for fan_in, fan_out in zip(units[:-1], units[1:]):
        W = rng.standard_normal((fan_in, fan_out), dtype=dtype)
        W *= 1 / math.sqrt(fan_in)
        b = rng.standard_normal(fan_out, dtype=dtype)
        b *= 1 / math.sqrt(fan_in)
        coefs.append(W)
        intercepts.append(b)
    return {"X": rng.standard_normal((n_samples, n_features), dtype=dtype),
            "y": rng.integers(0, n_classes, size=n_samples),
            "coefs": coefs, "intercepts": intercepts}


def _mlp_args(data):
    """The arguments ``(X, y, W1, b1, W2, b2)`` of ``mlp_loss_grad``."""
    return tuple(data[key] for key in ("X", "y", "W1", "b1", "W2", "b2"))


def ols_data(n_samples, n_features, seed=0):
    """Seeded float64 regression data and a point at which to take the gradient.

    Parameters
    ----------
    n_samples, n_features : int
    seed : int, default 0

    Returns
    -------
    dict
        ``X`` (n_samples, n_features) standard normal, ``y`` (n_samples,)
        a noisy linear function of ``X``, ``w`` (n_features,) standard normal.
    """
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, n_features))
    y = X @ rng.standard_normal(n_features)
    y += rng.standard_normal(n_samples)
    return {"X": X, "y": y, "w": rng.standard_normal(n_features)}


# ---------------------------------------------------------------------------
# Implementations: each factory takes the prepared data and returns a callable
# of no arguments; it raises ImportError when its library is missing.
# ---------------------------------------------------------------------------


def fused(name):
    """Return ``fusedgrad.kernels.<name>``.

    Raises
    ------
    ImportError
        If :mod:`fusedgrad.kernels` or the function does not exist (yet).
    """
    try:
        return getattr(importlib.import_module("fusedgrad.kernels"), name)
    except AttributeError as exc:
        raise ImportError(f"fusedgrad.kernels has no {name}") from exc


@functools.cache
def _import_jax():
    """Import JAX with 64-bit types enabled.

    Without ``jax_enable_x64`` JAX silently computes float64 input in
    float32. The flag must be set before the first JAX array exists, so all
    uses of JAX here go through this function. float32 stays float32.
    """
    import jax

    jax.config.update("jax_enable_x64", True)
    return jax


def _mlp_gemm_floor(data):
    """The five matmuls of the MLP gradient alone, into preallocated outputs.

    ``X @ W1`` (N, h), ``A @ W2`` (N, K), ``A.T @ dZ2`` (h, K),
    ``dZ2 @ W2.T`` (N, h) and ``X.T @ dZ1`` (d, h), on dummy ``A``, ``dZ2``
    and ``dZ1`` of the right shapes: the BLAS work no implementation avoids.
    Returns None.
    """
    X, W1, W2 = data["X"], data["W1"], data["W2"]
    (n, h), k = (X.shape[0], W1.shape[1]), W2.shape[1]
    rng = np.random.default_rng(1)
    A, dZ2, dZ1 = (rng.random(shape, dtype=X.dtype) for shape in [(n, h), (n, k), (n, h)])
    Z1, Z2, dA = np.empty((n, h), X.dtype), np.empty((n, k), X.dtype), np.empty((n, h), X.dtype)
    dW1, dW2 = np.empty_like(W1), np.empty_like(W2)

    def run():
        np.matmul(X, W1, out=Z1)
        np.matmul(A, W2, out=Z2)
        np.matmul(A.T, dZ2, out=dW2)
        np.matmul(dZ2, W2.T, out=dA)
        np.matmul(X.T, dZ1, out=dW1)

    return run


def _mlp_numpy(data):
    """:func:`fusedgrad.reference.mlp_loss_grad`."""
    return functools.partial(reference.mlp_loss_grad, *_mlp_args(data))


def _mlp_torch(data):
    """PyTorch CPU autograd on tensors sharing the NumPy data, all cores.

    Each call sets the gradients to None, runs the forward pass with
    ``F.cross_entropy`` and ``loss.backward()``, and returns
    ``(loss, dW1, db1, dW2, db2)``.
    """
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(os.cpu_count())
    X, y = torch.from_numpy(data["X"]), torch.from_numpy(data["y"])
    params = [torch.from_numpy(data[key]).requires_grad_() for key in ("W1", "b1", "W2", "b2")]
    W1, b1, W2, b2 = params

    def run():
        for p in params:
            p.grad = None
        loss = F.cross_entropy(torch.sigmoid(X @ W1 + b1) @ W2 + b2, y)
        loss.backward()
        return (loss, *(p.grad for p in params))

    return run


def _mlp_jax(data):
    """``jax.jit(jax.value_and_grad(loss))`` on JAX arrays made once.

    Each call blocks until the results are ready and returns
    ``(loss, dW1, db1, dW2, db2)``.
    """
    jax = _import_jax()
    import jax.numpy as jnp

    def loss_fn(X, y, W1, b1, W2, b2):
        Z2 = jax.nn.sigmoid(X @ W1 + b1) @ W2 + b2
        return -jnp.take_along_axis(jax.nn.log_softmax(Z2), y[:, None], axis=1).mean()

    loss_grad = jax.jit(jax.value_and_grad(loss_fn, argnums=(2, 3, 4, 5)))
    args = [jnp.asarray(a) for a in _mlp_args(data)]

    def run():
        loss, grads = loss_grad(*args)
        return jax.block_until_ready((loss, *grads))

    return run


def _mlp_fused(data):
    """:func:`fusedgrad.kernels.mlp_loss_grad`."""
    return functools.partial(fused("mlp_loss_grad"), *_mlp_args(data))


def _network_gemm_floor(data):
    """The matrix products of the network's gradient alone, into preallocated outputs:
    ``A_{l-1} W_l`` for every layer, ``A_{l-1}^T dZ_l`` for every layer and
    ``dZ_l W_l^T`` below the top, on dummy activations of the right shapes."""
    X, coefs = data["X"], data["coefs"]
    n = X.shape[0]
    rng = np.random.default_rng(1)
    acts = [X] + [rng.random((n, W.shape[1]), dtype=X.dtype) for W in coefs]
    outs = [np.empty((n, W.shape[1]), X.dtype) for W in coefs]
    grads = [np.empty_like(W) for W in coefs]
    dAs = [np.empty((n, W.shape[0]), X.dtype) for W in coefs[1:]]

    def run():
        for layer, W in enumerate(coefs):
            np.matmul(acts[layer], W, out=outs[layer])
        for layer in range(len(coefs) - 1, -1, -1):
            np.matmul(acts[layer].T, acts[layer + 1], out=grads[layer])
            if layer > 0:
                np.matmul(acts[layer + 1], coefs[layer].T, out=dAs[layer - 1])

    return run


def _network_numpy(data, activation):
    """:func:`fusedgrad.reference.network_loss_grad`."""
    return functools.partial(reference.network_loss_grad, data["X"], data["y"], data["coefs"],
                             data["intercepts"], activation)


def _network_torch(data, activation):
    """PyTorch CPU autograd, as :func:`_mlp_torch`, layer by layer."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(os.cpu_count())
    f = {"relu": torch.relu, "tanh": torch.tanh, "logistic": torch.sigmoid,
         "identity": lambda z: z}[activation]
    X, y = torch.from_numpy(data["X"]), torch.from_numpy(data["y"])
    Ws = [torch.from_numpy(W).requires_grad_() for W in data["coefs"]]
    bs = [torch.from_numpy(b).requires_grad_() for b in data["intercepts"]]

    def run():
        for p in Ws + bs:
            p.grad = None
        A = X
        for W, b in zip(Ws[:-1], bs[:-1]):
            A = f(A @ W + b)
        loss = F.cross_entropy(A @ Ws[-1] + bs[-1], y)
        loss.backward()
        return (loss, [W.grad for W in Ws], [b.grad for b in bs])

    return run


def _network_jax(data, activation):
    """``jax.jit(jax.value_and_grad(loss))``, as :func:`_mlp_jax`."""
    jax = _import_jax()
    import jax.numpy as jnp

    f = {"relu": jax.nn.relu, "tanh": jnp.tanh, "logistic": jax.nn.sigmoid,
         "identity": lambda z: z}[activation]

    def loss_fn(params, X, y):
        Ws, bs = params
        A = X
        for W, b in zip(Ws[:-1], bs[:-1]):
            A = f(A @ W + b)
        Z = A @ Ws[-1] + bs[-1]
        return -jnp.take_along_axis(jax.nn.log_softmax(Z), y[:, None], axis=1).mean()

    loss_grad = jax.jit(jax.value_and_grad(loss_fn))
    params = ([jnp.asarray(W) for W in data["coefs"]],
              [jnp.asarray(b) for b in data["intercepts"]])
    X, y = jnp.asarray(data["X"]), jnp.asarray(data["y"])

    def run():
        loss, (dWs, dbs) = loss_grad(params, X, y)
        return jax.block_until_ready((loss, dWs, dbs))

    return run


def _network_fused(data, activation):
    """:func:`fusedgrad.kernels.network_loss_grad`."""
    return functools.partial(fused("network_loss_grad"), data["X"], data["y"], data["coefs"],
                             data["intercepts"], activation=activation)


#: Factories ``(data, activation) -> callable`` of the network section; each
#: callable returns ``(loss, coef_grads, intercept_grads)`` (the floor: None).
NETWORK_IMPLEMENTATIONS = {
    "gemm floor": lambda data, activation: _network_gemm_floor(data),
    "numpy": _network_numpy,
    "torch": _network_torch,
    "jax": _network_jax,
    "fused": _network_fused,
}

MLP_IMPLEMENTATIONS = {
    "gemm floor": _mlp_gemm_floor,
    "numpy": _mlp_numpy,
    "torch": _mlp_torch,
    "jax": _mlp_jax,
    "fused": _mlp_fused,
}

OLS_IMPLEMENTATIONS = {
    "X.sum()": lambda d: d["X"].sum,
    "numpy ols_loss_grad": lambda d: functools.partial(reference.ols_loss_grad, d["X"], d["y"], d["w"]),
    "fused ols_loss_grad": lambda d: functools.partial(fused("ols_loss_grad"), d["X"], d["y"], d["w"]),
    "X.T @ X": lambda d: functools.partial(np.matmul, d["X"].T, d["X"]),
    "numpy gram": lambda d: functools.partial(reference.gram, d["X"], d["y"]),
    "fused gram": lambda d: functools.partial(fused("gram"), d["X"], d["y"]),
}


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------


def prepare(factories, data):
    """Build the callables of every implementation whose library is installed.

    Parameters
    ----------
    factories : dict of str to callable
        Name to factory, as in :data:`MLP_IMPLEMENTATIONS`.
    data : dict
        The prepared arrays, passed to every factory.

    Returns
    -------
    callables : dict of str to callable
    skipped : dict of str to str
        Name to the reason, for the factories that raised ImportError.
    """
    callables, skipped = {}, {}
    for name, factory in factories.items():
        try:
            callables[name] = factory(data)
        except ImportError as exc:
            skipped[name] = str(exc)
    return callables, skipped


#: Seconds of idle time before each timed call. After a call returns, the
#: worker threads of OpenMP (PyTorch), Eigen (JAX) and OpenBLAS go on spinning
#: for a while and take cores from whatever runs next: measured, back to back,
#: (262144, 64, 128, 10) float32, PyTorch 321 ms and fusedgrad 71.5 ms, each
#: 267 ms and 65.5 ms after 0.3 s of idle time. Every implementation gets the
#: same pause.
PAUSE_S = 0.25


def time_round_robin(callables, repeat, pause=PAUSE_S):
    """Warm each callable up once, then time them round-robin.

    Parameters
    ----------
    callables : dict of str to callable
    repeat : int
        Timed calls of each callable.
    pause : float, default :data:`PAUSE_S`
        Seconds of sleep before each timed call (not timed).

    Returns
    -------
    timings : dict of str to dict
        Per name: ``median_ms``, ``times_ms`` (all timed calls) and
        ``first_call_ms`` (the warm-up, which includes any compilation).
    outputs : dict of str to object
        Per name, what the warm-up call returned.
    """
    first, outputs = {}, {}
    for name, fn in callables.items():
        start = time.perf_counter()
        outputs[name] = fn()
        first[name] = time.perf_counter() - start
    times = {name: [] for name in callables}
    for _ in range(repeat):
        for name, fn in callables.items():
            time.sleep(pause)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    timings = {
        name: {
            "median_ms": 1e3 * statistics.median(times[name]),
            "times_ms": [1e3 * t for t in times[name]],
            "first_call_ms": 1e3 * first[name],
        }
        for name in callables
    }
    return timings, outputs


def rel_diff(a, ref):
    """``max|a - ref| / max|ref|``, a relative difference that entries of
    ``ref`` near zero do not blow up."""
    a, ref = np.asarray(a, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.max(np.abs(a - ref)) / np.max(np.abs(ref)))


def bench_mlp(shape, dtype, repeat, pause=PAUSE_S):
    """Time every MLP implementation on one shape and dtype.

    Parameters
    ----------
    shape : tuple of int
        ``(N, d, h, K)``.
    dtype : str
    repeat : int
    pause : float
        See :func:`time_round_robin`.

    Returns
    -------
    dict
        ``shape``, ``dtype``, ``timings`` (see :func:`time_round_robin`),
        ``skipped`` and ``dW1_rel_diff``: :func:`rel_diff` of each
        implementation's ``dW1`` against the NumPy reference's.
    """
    callables, skipped = prepare(MLP_IMPLEMENTATIONS, mlp_data(*shape, dtype))
    timings, outputs = time_round_robin(callables, repeat, pause)
    ref_dW1 = outputs["numpy"][1]
    checks = {
        name: rel_diff(out[1], ref_dW1)
        for name, out in outputs.items()
        if out is not None and name != "numpy"
    }
    return {"shape": list(shape), "dtype": dtype, "timings": timings, "skipped": skipped, "dW1_rel_diff": checks}


def bench_network(shape, repeat, pause=PAUSE_S):
    """Time every network implementation on one ``(N, d, hidden, K, activation)``
    (:data:`NETWORK_DTYPE`); as :func:`bench_mlp`, with ``dW1_rel_diff`` the
    first layer's weight gradient against the NumPy reference's."""
    N, d, hidden, K, activation = shape
    data = network_data(N, d, hidden, K, NETWORK_DTYPE)
    factories = {name: functools.partial(factory, activation=activation)
                 for name, factory in NETWORK_IMPLEMENTATIONS.items()}
    callables, skipped = prepare(factories, data)
    timings, outputs = time_round_robin(callables, repeat, pause)
    ref_dW1 = outputs["numpy"][1][0]
    checks = {name: rel_diff(np.asarray(out[1][0]), ref_dW1)
              for name, out in outputs.items() if out is not None and name != "numpy"}
    return {"shape": [N, d, list(hidden), K, activation], "dtype": NETWORK_DTYPE,
            "timings": timings, "skipped": skipped, "dW1_rel_diff": checks}


def bench_ols(shape, repeat, pause=PAUSE_S):
    """Time the OLS loss-gradient and Gram implementations on one shape.

    Parameters
    ----------
    shape : tuple of int
        ``(N, d)``.
    repeat : int
    pause : float
        See :func:`time_round_robin`.

    Returns
    -------
    dict
        ``shape``, ``dtype``, ``timings``, ``skipped`` and ``rel_diff``:
        :func:`rel_diff` of the fused gradient and ``XtX`` against the
        reference's.
    """
    callables, skipped = prepare(OLS_IMPLEMENTATIONS, ols_data(*shape))
    timings, outputs = time_round_robin(callables, repeat, pause)
    checks = {}
    if "fused ols_loss_grad" in outputs:
        checks["grad"] = rel_diff(outputs["fused ols_loss_grad"][1], outputs["numpy ols_loss_grad"][1])
    if "fused gram" in outputs:
        checks["XtX"] = rel_diff(outputs["fused gram"][0], outputs["numpy gram"][0])
    return {"shape": list(shape), "dtype": OLS_DTYPE, "timings": timings, "skipped": skipped, "rel_diff": checks}


# ---------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------


def _proc_status_mib(field):
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"no {field} in /proc/self/status")


def _rss_probe(impl, shape):
    """Child-process side of the memory section: print one JSON line.

    Builds the inputs, warms the implementation up on a tiny shape of the
    same dtype (so compiled code is loaded), resets the peak RSS to the
    current RSS, calls the implementation once at ``shape`` and reports the
    peak's increase.

    The peak is ``VmHWM`` of ``/proc/self/status``, reset by writing 5 to
    ``/proc/self/clear_refs`` (Linux). ``getrusage(RUSAGE_SELF).ru_maxrss``
    cannot serve in a child process: it starts at the parent's peak,
    inherited through ``exec``, which would hide the kernel's peak behind
    the arrays the parent has held.
    """
    try:
        fn = reference.mlp_loss_grad if impl == "numpy" else fused("mlp_loss_grad")
    except ImportError as exc:
        print(json.dumps({"impl": impl, "skipped": str(exc)}))
        return
    start = _proc_status_mib("VmRSS")
    data = mlp_data(*shape, MEMORY_DTYPE)
    after_inputs = _proc_status_mib("VmRSS")
    fn(*_mlp_args(mlp_data(64, *shape[1:], MEMORY_DTYPE)))
    before = _proc_status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    fn(*_mlp_args(data))
    peak = _proc_status_mib("VmHWM")
    print(json.dumps({
        "impl": impl,
        "inputs_mib": after_inputs - start,
        "X_mib": data["X"].nbytes / 2**20,
        "rss_before_call_mib": before,
        "increase_mib": peak - before,
    }))


def bench_memory(shape):
    """Peak RSS increase of one MLP gradient call, NumPy reference and fused.

    Each implementation runs in a fresh process (this script with the hidden
    ``--rss-probe`` flag), so nothing earlier in this process counts.

    Parameters
    ----------
    shape : tuple of int
        ``(N, d, h, K)``; the dtype is float32.

    Returns
    -------
    dict
        ``shape``, ``dtype``, ``probes`` (the children's reports) and
        ``skipped`` (name to reason, for a child that skipped or failed).
    """
    probes, skipped = [], {}
    for impl in ("numpy", "fused"):
        command = [sys.executable, os.path.abspath(__file__), "--rss-probe", impl, *map(str, shape)]
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            skipped[impl] = "probe failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
            continue
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        if "skipped" in report:
            skipped[impl] = report["skipped"]
        else:
            probes.append(report)
    return {"shape": list(shape), "dtype": MEMORY_DTYPE, "probes": probes, "skipped": skipped}


# ---------------------------------------------------------------------------
# Machine and report
# ---------------------------------------------------------------------------


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_info():
    """CPU, core count, library versions and the BLAS libraries loaded so far.

    Called before any peer is imported, the BLAS list is NumPy's alone.

    Returns
    -------
    dict
    """
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        blas = []
    else:
        keys = ("internal_api", "version", "architecture", "threading_layer", "num_threads", "filepath")
        blas = [{k: lib.get(k) for k in keys} for lib in threadpool_info() if lib["user_api"] == "blas"]
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in ("numpy", "numba", "scipy", "torch", "jax", "jaxlib", "fusedgrad")},
        "blas": blas,
    }


def format_machine(info):
    """One markdown line describing the machine of :func:`machine_info`."""
    versions = ", ".join(f"{p} {v}" for p, v in info["versions"].items() if v is not None)
    blas = "; ".join(
        f"{b['internal_api']} {b['version']} ({b['architecture']}, {b['threading_layer']}, "
        f"{b['num_threads']} threads, {os.path.basename(b['filepath'])})"
        for b in info["blas"]
    ) or "unknown"
    return (
        f"**Machine:** {info['cpu']}, os.cpu_count() = {info['cpu_count']}; Python {info['python']}; "
        f"{versions}; BLAS: {blas}"
    )


def _fmt_ms(ms):
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.3g}"


def _median(record, name):
    timing = record["timings"].get(name)
    return None if timing is None else timing["median_ms"]


def _ms_cell(record, name):
    ms = _median(record, name)
    return None if ms is None else _fmt_ms(ms)


def _ratio_cell(record, numerator, denominator):
    num, den = _median(record, numerator), _median(record, denominator)
    return None if num is None or den is None else f"{num / den:.2f}"


def markdown_table(header, rows):
    """Render a markdown table, leaving out columns empty in every row.

    Parameters
    ----------
    header : list of str
    rows : list of list of (str or None)
        None is an empty cell, shown as a dash.

    Returns
    -------
    str
    """
    keep = [j for j in range(len(header)) if j == 0 or any(row[j] is not None for row in rows)]
    lines = [
        "| " + " | ".join(header[j] for j in keep) + " |",
        "|" + "|".join(":---" if j == 0 else "---:" for j in keep) + "|",
    ]
    lines += ["| " + " | ".join("–" if row[j] is None else row[j] for j in keep) + " |" for row in rows]
    return "\n".join(lines)


def _skip_notes(records):
    """Lines noting each skipped implementation once, with its reason."""
    reasons = {}
    for record in records:
        reasons.update(record["skipped"])
    return [f"- {name}: skipped ({reason})" for name, reason in reasons.items()]


def _pause_note(pause):
    return f" (each after {pause:g} s idle)" if pause else ""


#: The ratio columns of the MLP and network tables: (header, numerator, denominator).
_PEER_RATIOS = [("numpy/fused", "numpy", "fused"), ("torch/fused", "torch", "fused"),
                ("jax/fused", "jax", "fused"), ("fused/floor", "fused", "gemm floor")]


def _peer_report(title, first_header, label, names, records):
    """Markdown table (one row per record, labelled by ``label(record)``), skip notes
    and the dW1 sanity lines of the MLP and network sections."""
    rows = [[label(r)] + [_ms_cell(r, name) for name in names]
            + [_ratio_cell(r, num, den) for _, num, den in _PEER_RATIOS] for r in records]
    lines = [
        title,
        "",
        markdown_table([first_header, *names, *(head for head, _, _ in _PEER_RATIOS)], rows),
        "",
        *_skip_notes(records),
    ]
    for r in records:
        diffs = ", ".join(f"{name} {diff:.1e}" for name, diff in r["dW1_rel_diff"].items())
        lines.append(f"- dW1 vs numpy, max|Δ|/max|ref|, ({label(r)}): {diffs}")
    return "\n".join(lines) + "\n"


def mlp_report(records, dtype, repeat, pause=0.0):
    """Markdown table, skip notes and sanity lines of the MLP section for one dtype."""
    return _peer_report(
        f"### MLP loss and gradient, {dtype}: median of {repeat} calls{_pause_note(pause)}, ms",
        "N, d, h, K", lambda r: ", ".join(map(str, r["shape"])), list(MLP_IMPLEMENTATIONS),
        [r for r in records if r["dtype"] == dtype])


def network_report(records, repeat, pause=0.0):
    """Markdown table, skip notes and sanity lines of the network section."""

    def label(r):
        N, d, hidden, K, activation = r["shape"]
        return f"{N}, {'-'.join(map(str, [d, *hidden, K]))}, {activation}"

    return _peer_report(
        f"### Deeper networks (`network_loss_grad`), {NETWORK_DTYPE}: median of {repeat} calls"
        f"{_pause_note(pause)}, ms",
        "N, layers, activation", label, list(NETWORK_IMPLEMENTATIONS), records)


def ols_report(records, repeat, pause=0.0):
    """Markdown tables, skip notes and sanity lines of the OLS section."""
    sections = [
        ("OLS loss and gradient", "X.sum()", "numpy ols_loss_grad", "fused ols_loss_grad", "fused/X.sum()"),
        ("Gram matrix and X^T y", "X.T @ X", "numpy gram", "fused gram", "fused/(X.T@X)"),
    ]
    lines = []
    for title, floor, ref, fus, floor_label in sections:
        rows = [
            [", ".join(map(str, r["shape"])), _ms_cell(r, floor), _ms_cell(r, ref), _ms_cell(r, fus),
             _ratio_cell(r, ref, fus), _ratio_cell(r, fus, floor)]
            for r in records
        ]
        header = ["N, d", floor, "numpy", "fused", "numpy/fused", floor_label]
        lines += [f"### {title}, {OLS_DTYPE}: median of {repeat} calls{_pause_note(pause)}, ms", "", markdown_table(header, rows), ""]
    lines += _skip_notes(records)
    for r in records:
        if r["rel_diff"]:
            diffs = ", ".join(f"{name} {diff:.1e}" for name, diff in r["rel_diff"].items())
            lines.append(f"- fused vs numpy, max|Δ|/max|ref|, ({', '.join(map(str, r['shape']))}): {diffs}")
    return "\n".join(lines) + "\n"


def memory_report(record):
    """Markdown table and notes of the memory section."""
    n, d, h, k = record["shape"]
    rows = [
        [p["impl"], f"{p['inputs_mib']:.0f}", f"{p['increase_mib']:.0f}", f"{p['increase_mib'] / p['X_mib']:.2f}"]
        for p in record["probes"]
    ]
    one_nh = n * h * np.dtype(record["dtype"]).itemsize / 2**20
    lines = [
        f"### Peak memory of one MLP gradient call, N={n}, d={d}, h={h}, K={k}, {record['dtype']}",
        "",
        markdown_table(["implementation", "inputs MiB", "peak increase MiB", "increase / size of X"], rows),
        "",
        f"- Peak RSS above the inputs, parameters and compiled code, each in a fresh process; "
        f"for scale, one (N, h) array is {one_nh:.0f} MiB.",
        *_skip_notes([record]),
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def parse_args(argv=None):
    """Parse the command line; see ``--help``."""
    parser = argparse.ArgumentParser(
        description="Time fusedgrad's MLP and OLS kernels against NumPy, PyTorch and JAX "
        "on the same data, and print markdown tables.",
    )
    parser.add_argument("--dtype", nargs="+", choices=DTYPES, default=list(DTYPES),
                        help="dtypes of the MLP section (default: both); OLS is always float64")
    parser.add_argument("--shapes", nargs="+", type=int, metavar="I",
                        help="1-based indices of the MLP shapes to run (default: all): "
                        + ", ".join(f"{i} = {s}" for i, s in enumerate(MLP_SHAPES, 1)))
    parser.add_argument("--repeat", type=int, help="timed calls per implementation (default 7; 2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke run: small shapes, 2 calls")
    parser.add_argument("--pause", type=float, metavar="SECONDS",
                        help=f"idle time before each timed call, so that one library's spinning "
                        f"worker threads do not slow the next (default {PAUSE_S}; 0 with --quick)")
    parser.add_argument("--mlp", action=argparse.BooleanOptionalAction, default=True, help="MLP section")
    parser.add_argument("--network", action=argparse.BooleanOptionalAction, default=True,
                        help="deeper-network section (network_loss_grad, float32)")
    parser.add_argument("--ols", action=argparse.BooleanOptionalAction, default=True, help="OLS section")
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                        help="memory section (fresh processes)")
    parser.add_argument("--json", metavar="PATH", help="also write all results as JSON to PATH")
    parser.add_argument("--rss-probe", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    n_shapes = len(QUICK_MLP_SHAPES if args.quick else MLP_SHAPES)
    if args.shapes and not all(1 <= i <= n_shapes for i in args.shapes):
        parser.error(f"--shapes: indices run from 1 to {n_shapes}")
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.pause is not None and not 0 <= args.pause <= 60:
        parser.error("--pause must be between 0 and 60 seconds")
    return args


def _log(message):
    print(message, file=sys.stderr, flush=True)


def _timed_shapes(section, shapes, dtype, bench):
    """``[bench(shape) for shape in shapes]``, logging each shape and collecting
    garbage between them (the previous shape's arrays are large)."""
    records = []
    for shape in shapes:
        _log(f"{section} {shape} {dtype} ...")
        records.append(bench(shape))
        gc.collect()
    return records


def main(argv=None):
    """Run the benchmark and print its markdown report.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments without the program name; default
        ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit status, 0.
    """
    args = parse_args(argv)
    if args.rss_probe:
        impl, *shape = args.rss_probe
        _rss_probe(impl, tuple(map(int, shape)))
        return 0

    mlp_shapes = QUICK_MLP_SHAPES if args.quick else MLP_SHAPES
    if args.shapes:
        mlp_shapes = [mlp_shapes[i - 1] for i in args.shapes]
    repeat = args.repeat or (2 if args.quick else 7)
    pause = args.pause if args.pause is not None else (0.0 if args.quick else PAUSE_S)

    results = {"machine": machine_info(), "repeat": repeat, "pause_s": pause}
    print(format_machine(results["machine"]) + "\n", flush=True)

    if args.mlp:
        results["mlp"] = []
        for dtype in args.dtype:
            results["mlp"] += _timed_shapes(
                "mlp", mlp_shapes, dtype, lambda shape: bench_mlp(shape, dtype, repeat, pause))
            print(mlp_report(results["mlp"], dtype, repeat, pause), flush=True)

    if args.network:
        results["network"] = _timed_shapes(
            "network", QUICK_NETWORK_SHAPES if args.quick else NETWORK_SHAPES, NETWORK_DTYPE,
            lambda shape: bench_network(shape, repeat, pause))
        print(network_report(results["network"], repeat, pause), flush=True)

    if args.ols:
        results["ols"] = _timed_shapes(
            "ols", QUICK_OLS_SHAPES if args.quick else OLS_SHAPES, OLS_DTYPE,
            lambda shape: bench_ols(shape, repeat, pause))
        print(ols_report(results["ols"], repeat, pause), flush=True)

    if args.memory:
        shape = QUICK_MEMORY_SHAPE if args.quick else MEMORY_SHAPE
        _log(f"memory {shape} {MEMORY_DTYPE} ...")
        results["memory"] = bench_memory(shape)
        print(memory_report(results["memory"]), flush=True)

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
