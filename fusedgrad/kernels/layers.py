"""Affine layers with any activation fused after the matmul, and their backward pass.

The building blocks of networks other than the lecture's (whose whole pass is
:func:`fusedgrad.kernels.mlp_loss_grad`): other activations, more layers, and
the output layer's probabilities for prediction. Same design as
:mod:`fusedgrad.kernels.affine`: a row chunk of ``X W`` is computed by BLAS
and the bias and activation are applied while it is in cache; the backward
pass keeps ``dZ`` one chunk at a time and sums the parameter gradients in
per-group buffers, added in a fixed order (bit-identical for any number of
threads).

Activations (:data:`ACTIVATIONS`), applied to ``Z = X W + b``; their
derivatives are written in terms of the output ``A`` (as scikit-learn does),
so the backward pass needs no stored ``Z``:

==============  ==================================  ======================================
name            forward ``A = f(Z)``                backward ``dZ`` from ``A`` and ``dA``
==============  ==================================  ======================================
``identity``    ``Z``                               ``dA``
``logistic``    ``1 / (1 + exp(-Z))``               ``dA * A (1 - A)``
``tanh``        ``tanh(Z)``                         ``dA * (1 - A**2)``
``relu``        ``max(Z, 0)``                       ``dA * (A > 0)``
``softmax``     ``exp(Z - max) / sum exp(Z - max)`` ``A * (dA - sum_k dA_k A_k)``, by row
==============  ==================================  ======================================

The exponential is the vectorisable one of :mod:`fusedgrad.kernels._math`;
``tanh`` (:func:`fusedgrad.kernels._math.tanh`) is ``sign(z) (1 - e) / (1 + e)``
with ``e = e^(-2|z|)``, its argument clamped as the sigmoid's (no overflow
branch: 0.88 -> 0.59 ns per element in float32), within 2 units in the last
place of 1 (an absolute, not a relative, bound near 0).
"""

import numpy as np
from numba import njit, prange

from fusedgrad import _validate
from fusedgrad.kernels import _options as opt
from fusedgrad.kernels._blas import (
    enter_threads,
    kernel_blas,
    leave_threads,
    mm_nn,
    mm_nt,
    mm_tn,
    serial_call,
)
from fusedgrad.kernels._math import exp, sigmoid, tanh
from fusedgrad.kernels._partition import add_column_sums, chunk_range, plan, sum_groups

__all__ = ["ACTIVATIONS", "affine_activation", "affine_activation_backward"]

#: The activations of :func:`affine_activation`, in the order of their codes.
ACTIVATIONS = ("identity", "logistic", "tanh", "relu", "softmax")

_IDENTITY, _LOGISTIC, _TANH, _RELU, _SOFTMAX = range(len(ACTIVATIONS))


def _activation_code(activation):
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return ACTIVATIONS.index(activation)


# One serial helper per activation and direction. They are separate functions
# (not branches of one inlined body) so that each loop is compiled, and
# vectorised, on its own.


@njit(**opt.JIT)
def _forward_identity(Ac, b, rows):
    for i in range(rows):
        for j in range(Ac.shape[1]):
            Ac[i, j] += b[j]


@njit(**opt.JIT)
def _forward_logistic(Ac, b, rows):
    for i in range(rows):
        for j in range(Ac.shape[1]):
            Ac[i, j] = sigmoid(Ac[i, j] + b[j])


@njit(**opt.JIT)
def _forward_tanh(Ac, b, rows):
    for i in range(rows):
        for j in range(Ac.shape[1]):
            Ac[i, j] = tanh(Ac[i, j] + b[j])


@njit(**opt.JIT)
def _forward_relu(Ac, b, rows):
    zero = Ac.dtype.type(0.0)
    for i in range(rows):
        for j in range(Ac.shape[1]):
            z = Ac[i, j] + b[j]
            Ac[i, j] = zero if z < zero else z  # NaN propagates


@njit(**opt.JIT)
def _forward_softmax(Ac, b, rows):
    n = Ac.shape[1]
    zero, one = Ac.dtype.type(0.0), Ac.dtype.type(1.0)
    for i in range(rows):
        for j in range(n):
            Ac[i, j] += b[j]
        m = Ac[i, 0]
        for j in range(1, n):
            m = max(m, Ac[i, j])
        s = zero
        for j in range(n):
            e = exp(Ac[i, j] - m)
            Ac[i, j] = e
            s += e
        inv = one / s
        for j in range(n):
            Ac[i, j] *= inv


@njit(**opt.INLINE)
def _activate_rows(Ac, b, rows, act):
    """In place, for ``i < rows``: ``Ac[i] = f(Ac[i] + b)``, ``f`` given by its code."""
    if act == _IDENTITY:
        _forward_identity(Ac, b, rows)
    elif act == _LOGISTIC:
        _forward_logistic(Ac, b, rows)
    elif act == _TANH:
        _forward_tanh(Ac, b, rows)
    elif act == _RELU:
        _forward_relu(Ac, b, rows)
    else:
        _forward_softmax(Ac, b, rows)


@njit(**opt.JIT)
def _backward_logistic(A, dA, dZ, rows):
    one = A.dtype.type(1.0)
    for i in range(rows):
        for j in range(A.shape[1]):
            a = A[i, j]
            dZ[i, j] = dA[i, j] * a * (one - a)


@njit(**opt.JIT)
def _backward_tanh(A, dA, dZ, rows):
    one = A.dtype.type(1.0)
    for i in range(rows):
        for j in range(A.shape[1]):
            a = A[i, j]
            # (1 - a)(1 + a), not 1 - a*a: near |a| = 1 the rounding of a*a
            # would be amplified by the cancellation (1 - |a| is exact there)
            dZ[i, j] = dA[i, j] * ((one - a) * (one + a))


@njit(**opt.JIT)
def _backward_relu(A, dA, dZ, rows):
    zero = A.dtype.type(0.0)
    for i in range(rows):
        for j in range(A.shape[1]):
            dZ[i, j] = dA[i, j] if A[i, j] > zero else zero


@njit(**opt.JIT)
def _backward_softmax(A, dA, dZ, rows):
    # dA - s cancels where dA is nearly constant along the row (measured: the
    # float32 rounding of s alone cost 1.7e-5 relative error), so s and the
    # difference are formed in float64 and each dZ is rounded once.
    for i in range(rows):
        s = 0.0
        for j in range(A.shape[1]):
            s += np.float64(dA[i, j]) * np.float64(A[i, j])
        for j in range(A.shape[1]):
            dZ[i, j] = A.dtype.type(np.float64(A[i, j]) * (np.float64(dA[i, j]) - s))


@njit(**opt.INLINE)
def _delta_rows(A, dA, dZ, rows, act):
    """``dZ[i] = dA[i] * f'`` for ``i < rows``, with ``f'`` written in terms of ``A``
    (not called for the identity, whose ``dZ`` is ``dA`` itself)."""
    if act == _LOGISTIC:
        _backward_logistic(A, dA, dZ, rows)
    elif act == _TANH:
        _backward_tanh(A, dA, dZ, rows)
    elif act == _RELU:
        _backward_relu(A, dA, dZ, rows)
    else:
        _backward_softmax(A, dA, dZ, rows)


@njit(**opt.PARALLEL)
def _affine_activation(X, W, b, out, act, chunk, groups, serial):
    """Jitted core: ``out = f(X W + b)``, a row chunk at a time.

    Assumes valid C-contiguous input, a valid activation code and
    single-threaded BLAS.
    ``serial``: run on the calling thread alone (see
    :func:`~fusedgrad.kernels._blas.enter_threads`).
    """
    threads = enter_threads(serial)
    N = X.shape[0]
    n_chunks = (N + chunk - 1) // chunk
    for g in prange(groups):
        first, stop = chunk_range(g, groups, n_chunks)
        for c in range(first, stop):
            r0 = c * chunk
            r1 = min(N, r0 + chunk)
            Ac = out[r0:r1]
            mm_nn(X[r0:r1], W, Ac, 0.0)
            _activate_rows(Ac, b, r1 - r0, act)
    leave_threads(threads)


@njit(**opt.PARALLEL)
def _affine_activation_backward(X, A, dA, W, dW, db, dX, act, with_dx, chunk, groups, serial):
    """Jitted core: ``dZ = dA * f'(A)``; writes ``dW = X^T dZ``, ``db = sum dZ`` and,
    when ``with_dx``, ``dX = dZ W^T``. ``dZ`` lives one chunk at a time.

    Assumes valid C-contiguous input, a valid activation code and
    single-threaded BLAS.
    ``serial``: run on the calling thread alone (see
    :func:`~fusedgrad.kernels._blas.enter_threads`).
    """
    threads = enter_threads(serial)
    N = X.shape[0]
    n_out = A.shape[1]
    n_chunks = (N + chunk - 1) // chunk
    pW = np.zeros((groups,) + dW.shape, X.dtype)
    pb = np.zeros((groups, n_out), X.dtype)
    for g in prange(groups):
        dZ = np.empty((chunk, n_out), X.dtype)
        first, stop = chunk_range(g, groups, n_chunks)
        for c in range(first, stop):
            r0 = c * chunk
            r1 = min(N, r0 + chunk)
            m = r1 - r0
            if act == _IDENTITY:
                dZc = dA[r0:r1]
            else:
                dZc = dZ[:m]
                _delta_rows(A[r0:r1], dA[r0:r1], dZc, m, act)
            add_column_sums(dZc, m, pb[g])
            mm_tn(X[r0:r1], dZc, pW[g], 1.0)
            if with_dx:
                mm_nt(dZc, W, dX[r0:r1], 0.0)
    sum_groups(pW, dW)
    sum_groups(pb, db)
    leave_threads(threads)


def affine_activation(X, W, b, out=None, *, activation, check_finite=True):
    r"""An affine layer and its activation, fused: :math:`A = f(X W + b)`.

    Each thread computes a cache-sized chunk of rows of ``X W`` (BLAS) and
    applies the bias and the activation while the chunk is still in cache.
    ``affine_activation(X, W, b, activation="logistic")`` equals
    :func:`fusedgrad.kernels.affine_sigmoid` (same positional arguments, the
    activation is a required keyword); ``"softmax"`` gives the class
    probabilities of an output layer.

    Parameters
    ----------
    X : array_like, shape (n_samples, n_in), float32 or float64
    W : array_like, shape (n_in, n_out)
    b : array_like, shape (n_out,)
    out : ndarray, shape (n_samples, n_out), optional
        C-contiguous array of X's dtype to write the result into; it must not
        overlap the inputs.
    activation : {'identity', 'logistic', 'tanh', 'relu', 'softmax'}
        ``f`` (keyword only); ``'softmax'`` acts on each row as a whole.
    check_finite : bool, default True
        Reject NaN/inf in the inputs.

    Returns
    -------
    A : ndarray, shape (n_samples, n_out)
        ``out`` when given.
    """
    act = _activation_code(activation)
    X, W, b = _validate.float_arrays(
        [("X", X, ("n_samples", "n_in")), ("W", W, ("n_in", "n_out")), ("b", b, ("n_out",))],
        check_finite,
    )
    N, n_out = X.shape[0], W.shape[1]
    if out is None:
        out = np.empty((N, n_out), X.dtype)
    else:
        _validate.output("out", out, (N, n_out), X.dtype, [("X", X), ("W", W), ("b", b)])
    chunk, groups = plan(N, (X.shape[1] + n_out) * X.itemsize, 0)
    serial = serial_call("affine_activation", (X, W))
    with kernel_blas(serial):
        _affine_activation(X, W, b, out, act, chunk, groups, serial)
    return out


def affine_activation_backward(X, A, dA, W=None, *, activation, check_finite=True):
    r"""Backward pass of :func:`affine_activation`, fused over row chunks.

    .. math::
        dZ = dA \odot f'(Z), \quad dW = X^T dZ, \quad
        db = \textstyle\sum_{\text{rows}} dZ, \quad dX = dZ\, W^T

    with :math:`f'` expressed through the layer's output ``A`` (see the
    module's table). ``dZ`` is never stored for the whole batch.

    Parameters
    ----------
    X : array_like, shape (n_samples, n_in), float32 or float64
        The layer's input.
    A : array_like, shape (n_samples, n_out)
        The layer's output ``f(X W + b)`` (for ``'identity'`` it is not read,
        but its shape is checked).
    dA : array_like, shape (n_samples, n_out)
        Gradient of the loss with respect to ``A``.
    W : array_like, shape (n_in, n_out), optional
        The layer's weights; needed only for ``dX``.
    activation : {'identity', 'logistic', 'tanh', 'relu', 'softmax'}
        The layer's ``f`` (keyword only).
    check_finite : bool, default True
        Reject NaN/inf in the inputs.

    Returns
    -------
    dW : ndarray, shape (n_in, n_out)
    db : ndarray, shape (n_out,)
    dX : ndarray, shape (n_samples, n_in), or None when ``W`` is None
    """
    act = _activation_code(activation)
    specs = [("X", X, ("n_samples", "n_in")), ("A", A, ("n_samples", "n_out")),
             ("dA", dA, ("n_samples", "n_out"))]
    if W is not None:
        specs.append(("W", W, ("n_in", "n_out")))
    arrays = _validate.float_arrays(specs, check_finite)
    X, A, dA = arrays[:3]
    N, n_in = X.shape
    n_out = A.shape[1]
    with_dx = W is not None
    W = arrays[3] if with_dx else np.zeros((1, 1), X.dtype)
    dX = np.empty((N, n_in), X.dtype) if with_dx else np.zeros((1, 1), X.dtype)
    dW = np.empty((n_in, n_out), X.dtype)
    db = np.empty(n_out, X.dtype)
    chunk, groups = plan(N, (2 * n_in + 3 * n_out) * X.itemsize, (n_in + 1) * n_out * X.itemsize)
    serial = serial_call("affine_activation_backward", (X, A, dA))
    with kernel_blas(serial):
        _affine_activation_backward(X, A, dA, W, dW, db, dX, act, with_dx, chunk, groups,
                                    serial)
    return dW, db, (dX if with_dx else None)
