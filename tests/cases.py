"""The comparison table: every kernel beside its NumPy reference.

One row per operation (:data:`CASES`): the reference function
(:mod:`fusedgrad.reference`), the CPU kernel (:mod:`fusedgrad.kernels`), the
CUDA kernel (:mod:`fusedgrad.kernels.cuda`, when there is one), a seeded input
generator and the tolerance per dtype. The correctness tests
(``tests/test_kernels.py``, ``tests/test_determinism.py``) loop over this
table, and the asv benchmarks are meant to as well, so a new kernel is tested
and timed by adding one row here.

Input generators take ``(shape, dtype, seed)``: ``shape`` maps the size names
of :data:`SIZE_NAMES` to ints (a generator reads only the names listed in its
row's ``dims``); the result is the positional argument tuple shared by the
reference and the kernel. Floating-point data is drawn in float64 and then
cast, so a float32 call and a float64 call with the same seed see the same
numbers up to rounding, and the numbers are scaled so logits and
pre-activations are of order one.

Tolerance: the kernel, run in float32 or float64, is compared with the
reference evaluated **in float64 on the same (cast) inputs**, output by
output, by the normwise relative error ``max|a - b| / max|b|``
(:func:`rel_error`); it must not exceed ``tolerance[dtype]``.

Kernels are looked up by name on first use, not at import, so this module
imports even while a kernel is missing (its rows then fail, loudly, when
used).
"""

import importlib
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from fusedgrad import reference

__all__ = [
    "Case",
    "CASES",
    "DTYPES",
    "SIZE_NAMES",
    "TOLERANCE",
    "as_float64",
    "outputs",
    "rel_error",
    "compare",
]

#: The precisions every kernel supports.
DTYPES = (np.float32, np.float64)

#: Size names used by the generators: samples, features, hidden units, classes.
SIZE_NAMES = ("N", "d", "h", "K")

#: Largest normwise relative error of a kernel against the float64 reference.
TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


# ---------------------------------------------------------------------------
# Seeded input generators: (shape, dtype, seed) -> argument tuple
# ---------------------------------------------------------------------------


def _normal(rng, size, dtype, scale=1.0):
    return (scale * rng.standard_normal(size)).astype(dtype)


def mlp_args(shape, dtype, seed):
    """``(X, y, W1, b1, W2, b2)`` of :func:`mlp_loss_grad`."""
    N, d, h, K = (shape[s] for s in ("N", "d", "h", "K"))
    rng = np.random.default_rng(seed)
    X = _normal(rng, (N, d), dtype)
    y = rng.integers(0, K, size=N)
    W1 = _normal(rng, (d, h), dtype, 1.0 / np.sqrt(d))
    b1 = _normal(rng, h, dtype, 0.5)
    W2 = _normal(rng, (h, K), dtype, 2.0 / np.sqrt(h))
    b2 = _normal(rng, K, dtype, 0.5)
    return X, y, W1, b1, W2, b2


def softmax_args(shape, dtype, seed):
    """``(Z, y)`` of :func:`softmax_cross_entropy`."""
    N, K = shape["N"], shape["K"]
    rng = np.random.default_rng(seed)
    return _normal(rng, (N, K), dtype, 2.0), rng.integers(0, K, size=N)


def affine_sigmoid_args(shape, dtype, seed):
    """``(X, W, b)`` of :func:`affine_sigmoid`: ``d`` inputs, ``h`` outputs."""
    N, d, h = shape["N"], shape["d"], shape["h"]
    rng = np.random.default_rng(seed)
    X = _normal(rng, (N, d), dtype)
    W = _normal(rng, (d, h), dtype, 2.0 / np.sqrt(d))
    b = _normal(rng, h, dtype)
    return X, W, b


def _backward_args(shape, dtype, seed, with_W):
    X, W, b = affine_sigmoid_args(shape, dtype, seed)
    A = reference.affine_sigmoid(*as_float64((X, W, b))).astype(dtype)
    rng = np.random.default_rng(seed + 1)
    dA = _normal(rng, A.shape, dtype)
    return (X, A, dA, W) if with_W else (X, A, dA)


def affine_sigmoid_backward_args(shape, dtype, seed):
    """``(X, A, dA, W)`` of :func:`affine_sigmoid_backward`, ``A`` the forward output."""
    return _backward_args(shape, dtype, seed, True)


def affine_sigmoid_backward_no_W_args(shape, dtype, seed):
    """``(X, A, dA)``: the backward pass without ``dX``."""
    return _backward_args(shape, dtype, seed, False)


def ols_args(shape, dtype, seed):
    """``(X, y, w)`` of :func:`ols_loss_grad`; ``y`` unrelated to ``X w`` (no cancellation)."""
    N, d = shape["N"], shape["d"]
    rng = np.random.default_rng(seed)
    return _normal(rng, (N, d), dtype), _normal(rng, N, dtype), _normal(rng, d, dtype)


def gram_args(shape, dtype, seed):
    """``(X, y)`` of :func:`gram`."""
    return ols_args(shape, dtype, seed)[:2]


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One operation: reference, kernels, inputs and tolerance.

    Attributes
    ----------
    name : str
        Key of the row (``function``, or ``function/variant``).
    function : str
        The public name, the same in :mod:`fusedgrad.reference`,
        :mod:`fusedgrad.kernels` and :mod:`fusedgrad.kernels.cuda`.
    dims : tuple of str
        The size names (from :data:`SIZE_NAMES`) the generator reads.
    make_args : callable
        ``make_args(shape, dtype, seed) -> tuple`` of positional arguments.
    tolerance : mapping
        ``np.dtype -> float``: largest normwise relative error against the
        reference evaluated in float64.
    kernel_options : tuple of dict
        Keyword arguments the kernel must give the same answer under, e.g.
        private chunk sizes that make small inputs span many chunks.
    """

    name: str
    function: str
    dims: tuple
    make_args: Callable
    tolerance: Mapping = field(default_factory=lambda: dict(TOLERANCE))
    kernel_options: tuple = ({},)

    @property
    def reference(self):
        """The NumPy reference, :mod:`fusedgrad.reference`."""
        return getattr(reference, self.function)

    @property
    def kernel(self):
        """The CPU kernel, :mod:`fusedgrad.kernels` (AttributeError if missing)."""
        return getattr(importlib.import_module("fusedgrad.kernels"), self.function)

    @property
    def cuda_kernel(self):
        """The CUDA kernel, or None where :mod:`fusedgrad.kernels.cuda` has none."""
        try:
            cuda = importlib.import_module("fusedgrad.kernels.cuda")
        except ImportError:
            return None
        return getattr(cuda, self.function, None)

    def project(self, shape):
        """The sizes of ``shape`` this row reads, as a tuple (for deduplication and ids)."""
        return tuple(shape[s] for s in self.dims)

    def shape_id(self, shape):
        return ",".join(f"{s}={shape[s]}" for s in self.dims)


CASES = {
    case.name: case
    for case in [
        Case(
            "mlp_loss_grad",
            "mlp_loss_grad",
            ("N", "d", "h", "K"),
            mlp_args,
            # 64 rows per chunk (the minimum the planner picks on its own) and
            # 1 row per chunk: small N spans many chunks and all groups.
            kernel_options=({}, {"_max_chunk_rows": 64}, {"_max_chunk_rows": 1}),
        ),
        Case("softmax_cross_entropy", "softmax_cross_entropy", ("N", "K"), softmax_args),
        Case("affine_sigmoid", "affine_sigmoid", ("N", "d", "h"), affine_sigmoid_args),
        Case(
            "affine_sigmoid_backward",
            "affine_sigmoid_backward",
            ("N", "d", "h"),
            affine_sigmoid_backward_args,
        ),
        Case(
            "affine_sigmoid_backward/no_W",
            "affine_sigmoid_backward",
            ("N", "d", "h"),
            affine_sigmoid_backward_no_W_args,
        ),
        Case("ols_loss_grad", "ols_loss_grad", ("N", "d"), ols_args),
        Case("gram", "gram", ("N", "d"), gram_args),
    ]
}


# ---------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------


def as_float64(args):
    """The arguments with every floating-point array cast to float64 (labels untouched)."""
    return tuple(
        a.astype(np.float64)
        if isinstance(a, np.ndarray) and np.issubdtype(a.dtype, np.floating)
        else a
        for a in args
    )


def outputs(result):
    """A kernel's or reference's result as a tuple (a lone array becomes a 1-tuple)."""
    return result if isinstance(result, tuple) else (result,)


def rel_error(got, want):
    """Normwise relative error ``max|got - want| / max|want|`` (absolute when want is 0)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise AssertionError(f"shape {got.shape} != reference shape {want.shape}")
    if want.size == 0:
        return 0.0
    err = np.max(np.abs(got - want))
    scale = np.max(np.abs(want))
    return float(err / scale) if scale > 0 else float(err)


def compare(case, got, want, dtype):
    """Assert that each output of ``got`` is within the row's tolerance of ``want``.

    ``want`` is the reference result in float64. Outputs that are None in the
    reference (``dX`` without ``W``) must be None in the kernel too.

    Returns
    -------
    errors : list of float
        The relative error of each output (None where both are None).
    """
    got, want = outputs(got), outputs(want)
    assert len(got) == len(want), f"{case.name}: {len(got)} outputs, reference has {len(want)}"
    tol = case.tolerance[np.dtype(dtype)]
    errors = []
    for i, (g, w) in enumerate(zip(got, want)):
        if w is None:
            assert g is None, f"{case.name}: output {i} should be None"
            errors.append(None)
            continue
        assert g is not None, f"{case.name}: output {i} is None"
        err = rel_error(g, w)
        errors.append(err)
        assert err <= tol, (
            f"{case.name} {np.dtype(dtype)}: output {i} has relative error {err:.3g} > {tol:g}"
        )
    return errors


# ---------------------------------------------------------------------------
# Layers with any activation (fusedgrad.kernels.layers)
# ---------------------------------------------------------------------------

#: The activations of :func:`fusedgrad.kernels.layers.affine_activation`.
LAYER_ACTIVATIONS = ("identity", "logistic", "tanh", "relu", "softmax")


def activation_reference(Z, activation):
    """``f(Z)`` in plain NumPy (float64): the textbook formulas."""
    if activation == "identity":
        return Z.copy()
    if activation == "logistic":
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-Z))
    if activation == "tanh":
        return np.tanh(Z)
    if activation == "relu":
        return np.maximum(Z, 0.0)
    if activation == "softmax":
        E = np.exp(Z - Z.max(axis=1, keepdims=True))
        return E / E.sum(axis=1, keepdims=True)
    raise ValueError(activation)


def activation_derivative_reference(A, dA, activation):
    """``dZ = dA * f'(Z)``, from the output ``A = f(Z)`` (a row's Jacobian for softmax)."""
    if activation == "identity":
        return dA.copy()
    if activation == "logistic":
        return dA * A * (1.0 - A)
    if activation == "tanh":
        return dA * (1.0 - A**2)
    if activation == "relu":
        return dA * (A > 0)
    if activation == "softmax":
        # dZ_k = sum_j dA_j dA_j/dZ_k, with dA_j/dZ_k = A_j (delta_jk - A_k)
        return A * (dA - np.sum(dA * A, axis=1, keepdims=True))
    raise ValueError(activation)


def affine_activation_reference(X, W, b, *, activation):
    """``f(X W + b)``."""
    return activation_reference(X @ W + b, activation)


def affine_activation_backward_reference(X, A, dA, W=None, *, activation):
    """``(dW, db, dX)`` of :func:`affine_activation_reference`; ``dX`` None without ``W``."""
    dZ = activation_derivative_reference(A, dA, activation)
    return X.T @ dZ, dZ.sum(axis=0), (None if W is None else dZ @ W.T)


_LAYER_REFERENCES = {
    "affine_activation": affine_activation_reference,
    "affine_activation_backward": affine_activation_backward_reference,
}


def _layer_backward_args(shape, dtype, seed, activation, with_W):
    X, W, b = affine_sigmoid_args(shape, dtype, seed)
    A = affine_activation_reference(*as_float64((X, W, b)), activation=activation).astype(dtype)
    rng = np.random.default_rng(seed + 1)
    dA = _normal(rng, A.shape, dtype)
    return (X, A, dA, W) if with_W else (X, A, dA)


@dataclass(frozen=True)
class LayerCase(Case):
    """A row of a layer kernel with its activation bound.

    The kernels take the activation as a keyword
    (``affine_activation(X, W, b, out=None, *, activation)``,
    ``affine_activation_backward(X, A, dA, W=None, *, activation)``); the
    row's ``kernel`` and ``reference`` take the arrays only, like every other
    row.
    The reference is the NumPy code above, the kernel lives in
    :mod:`fusedgrad.kernels.layers`.
    """

    activation: str = "identity"

    def _bind(self, fn):
        activation = self.activation

        def bound(*args, **options):
            return fn(*args, activation=activation, **options)

        return bound

    @property
    def reference(self):
        return self._bind(_LAYER_REFERENCES[self.function])

    @property
    def kernel(self):
        layers = importlib.import_module("fusedgrad.kernels.layers")
        return self._bind(getattr(layers, self.function))

    @property
    def cuda_kernel(self):
        fn = Case.cuda_kernel.fget(self)
        return None if fn is None else self._bind(fn)


def _layer_cases():
    for act in LAYER_ACTIVATIONS:
        yield LayerCase(f"affine_activation/{act}", "affine_activation", ("N", "d", "h"),
                        affine_sigmoid_args, activation=act)
        yield LayerCase(
            f"affine_activation_backward/{act}", "affine_activation_backward", ("N", "d", "h"),
            lambda shape, dtype, seed, act=act: _layer_backward_args(shape, dtype, seed, act, True),
            activation=act,
        )
        yield LayerCase(
            f"affine_activation_backward/{act}/no_W", "affine_activation_backward",
            ("N", "d", "h"),
            lambda shape, dtype, seed, act=act: _layer_backward_args(shape, dtype, seed, act,
                                                                     False),
            activation=act,
        )


#: The rows of the layer kernels. They join :data:`CASES` (and so every test
#: and benchmark that loops over the table) once :mod:`fusedgrad.kernels`
#: exports their functions; ``tests/test_layers.py`` runs them either way.
LAYER_CASES = {case.name: case for case in _layer_cases()}

_exported = set(getattr(importlib.import_module("fusedgrad.kernels"), "__all__", ()))
CASES.update({name: case for name, case in LAYER_CASES.items() if case.function in _exported})


# ---------------------------------------------------------------------------
# network_loss_grad: rows with two hidden layers, one per hidden activation
# ---------------------------------------------------------------------------

#: Hidden activations of the ``network_loss_grad`` rows.
NETWORK_ACTIVATIONS = ("identity", "logistic", "tanh", "relu")


def network_args(shape, dtype, seed):
    """``(X, y, W1, b1, W2, b2, W3, b3)``: a network ``d -> h -> h2 -> K`` with
    ``h2 = h // 2 + 1`` (so the two hidden widths differ)."""
    N, d, h, K = (shape[s] for s in ("N", "d", "h", "K"))
    h2 = h // 2 + 1
    rng = np.random.default_rng(seed)
    X = _normal(rng, (N, d), dtype)
    y = rng.integers(0, K, size=N)
    args = [X, y]
    for n_in, n_out in ((d, h), (h, h2), (h2, K)):
        args += [_normal(rng, (n_in, n_out), dtype, 1.5 / np.sqrt(n_in)),
                 _normal(rng, n_out, dtype, 0.5)]
    return tuple(args)


def relu_network_args(shape, dtype, seed):
    """:func:`network_args` with the rows of ``X`` whose hidden pre-activations
    come near ReLU's kink redrawn: no ``|z| < margin`` in any hidden layer.

    A pre-activation within rounding error of 0 takes the other side of the
    kink in float32 than in the float64 reference, which switches that
    unit's whole gradient contribution on or off: one such row moved ``dW1``
    by 1e-3 to 1e-2 (normwise) at (6000, 784, 256, 10) in 4 of 30 seeds,
    for any correct float32 kernel. ``margin`` is some 100 times the float32
    error of ``z`` (about ``eps * sqrt(n_in) * rms(z)``)."""
    X, y, *params = network_args(shape, dtype, seed)
    rng = np.random.default_rng(seed + 1)
    W = [p.astype(np.float64) for p in params[0:-2:2]]
    b = [p.astype(np.float64) for p in params[1:-2:2]]
    for _ in range(100):
        A = X.astype(np.float64)
        near = np.zeros(X.shape[0], dtype=bool)
        for Wl, bl in zip(W, b):
            Z = A @ Wl + bl
            margin = 1e-5 * np.sqrt(Wl.shape[0]) * np.sqrt(np.mean(Z**2))
            near |= (np.abs(Z) < margin).any(axis=1)
            A = np.maximum(Z, 0.0)
        if not near.any():
            return (X, y, *params)
        X[near] = _normal(rng, (int(near.sum()), X.shape[1]), X.dtype)
    raise AssertionError("could not draw rows away from the ReLU kinks")


def network_loss_grad_reference(X, y, *params, activation):
    """:func:`fusedgrad.reference.network_loss_grad` with the parameters flat:
    ``params`` are ``W1, b1, ..., WL, bL``, the result ``(loss, dW1, db1, ...)``."""
    loss, dWs, dbs = reference.network_loss_grad(X, y, list(params[0::2]), list(params[1::2]),
                                                 activation)
    return (loss, *(g for pair in zip(dWs, dbs) for g in pair))


@dataclass(frozen=True)
class NetworkCase(Case):
    """A row of :func:`fusedgrad.kernels.network_loss_grad` with its activation bound
    and its lists flattened: the row's kernel takes ``(X, y, W1, b1, W2, b2, ...)``
    and returns ``(loss, dW1, db1, dW2, db2, ...)``, like every other row."""

    activation: str = "relu"

    @property
    def reference(self):
        activation = self.activation
        return lambda X, y, *params: network_loss_grad_reference(X, y, *params,
                                                                 activation=activation)

    def _bind_lists(self, fn):
        activation = self.activation

        def bound(X, y, *params, **options):
            loss, dWs, dbs = fn(X, y, list(params[0::2]), list(params[1::2]),
                                activation=activation, **options)
            return (loss, *(g for pair in zip(dWs, dbs) for g in pair))

        return bound

    @property
    def kernel(self):
        return self._bind_lists(getattr(importlib.import_module("fusedgrad.kernels"),
                                        self.function))

    @property
    def cuda_kernel(self):
        fn = Case.cuda_kernel.fget(self)
        return None if fn is None else self._bind_lists(fn)


NETWORK_CASES = {
    case.name: case
    for case in (
        NetworkCase(f"network_loss_grad/{act}", "network_loss_grad", ("N", "d", "h", "K"),
                    relu_network_args if act == "relu" else network_args,
                    kernel_options=({}, {"_max_chunk_rows": 64}),
                    activation=act)
        for act in NETWORK_ACTIVATIONS
    )
}
CASES.update({name: case for name, case in NETWORK_CASES.items() if case.function in _exported})
