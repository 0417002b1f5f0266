"""An affine layer with the sigmoid fused after the matmul, and its backward pass."""

import numpy as np
from numba import njit, prange

from fusedgrad import _validate
from fusedgrad.kernels import _options as opt
from fusedgrad.kernels._blas import mm_nn, mm_nt, mm_tn, single_threaded_blas
from fusedgrad.kernels._math import sigmoid
from fusedgrad.kernels._partition import add_column_sums, chunk_range, plan, sum_groups

__all__ = ["affine_sigmoid", "affine_sigmoid_backward"]


@njit(**opt.PARALLEL)
def _affine_sigmoid(X, W, b, out, chunk, groups):
    """Jitted core: ``out = sigmoid(X W + b)``, a row chunk at a time.

    Assumes valid C-contiguous input and single-threaded BLAS.
    """
    N = X.shape[0]
    n_out = W.shape[1]
    n_chunks = (N + chunk - 1) // chunk
    for g in prange(groups):
        first, stop = chunk_range(g, groups, n_chunks)
        for c in range(first, stop):
            r0 = c * chunk
            r1 = min(N, r0 + chunk)
            Ac = out[r0:r1]
            mm_nn(X[r0:r1], W, Ac, 0.0)
            for i in range(r1 - r0):
                for j in range(n_out):
                    Ac[i, j] = sigmoid(Ac[i, j] + b[j])


@njit(**opt.PARALLEL)
def _affine_sigmoid_backward(X, A, dA, W, dW, db, dX, with_dx, chunk, groups):
    """Jitted core: ``dZ = dA * A (1 - A)``; writes ``dW = X^T dZ``, ``db = sum dZ``
    and, when ``with_dx``, ``dX = dZ W^T``. ``dZ`` lives one chunk at a time.

    Assumes valid C-contiguous input and single-threaded BLAS.
    """
    N = X.shape[0]
    n_out = A.shape[1]
    one = X.dtype.type(1.0)
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
            dZc = dZ[:m]
            for i in range(m):
                for j in range(n_out):
                    a = A[r0 + i, j]
                    dZc[i, j] = dA[r0 + i, j] * a * (one - a)
            add_column_sums(dZc, m, pb[g])
            mm_tn(X[r0:r1], dZc, pW[g], 1.0)
            if with_dx:
                mm_nt(dZc, W, dX[r0:r1], 0.0)
    sum_groups(pW, dW)
    sum_groups(pb, db)


def affine_sigmoid(X, W, b, out=None, *, check_finite=True):
    r"""An affine layer and the sigmoid, fused: :math:`A = \sigma(X W + b)`.

    Each thread computes a cache-sized chunk of rows of ``X W`` (BLAS) and
    applies the bias and the sigmoid while the chunk is still in cache.

    Parameters
    ----------
    X : array_like, shape (n_samples, n_in), float32 or float64
    W : array_like, shape (n_in, n_out)
    b : array_like, shape (n_out,)
    out : ndarray, shape (n_samples, n_out), optional
        C-contiguous array of X's dtype to write the result into; it must not
        overlap the inputs.
    check_finite : bool, default True
        Reject NaN/inf in the inputs.

    Returns
    -------
    A : ndarray, shape (n_samples, n_out)
        ``out`` when given.
    """
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
    with single_threaded_blas():
        _affine_sigmoid(X, W, b, out, chunk, groups)
    return out


def affine_sigmoid_backward(X, A, dA, W=None, *, check_finite=True):
    r"""Backward pass of :func:`affine_sigmoid`, fused over row chunks.

    .. math::
        dZ = dA \odot A (1 - A), \quad dW = X^T dZ, \quad
        db = \textstyle\sum_{\text{rows}} dZ, \quad dX = dZ\, W^T

    ``dZ`` is never stored for the whole batch.

    Parameters
    ----------
    X : array_like, shape (n_samples, n_in), float32 or float64
        The layer's input.
    A : array_like, shape (n_samples, n_out)
        The layer's output ``sigmoid(X W + b)``.
    dA : array_like, shape (n_samples, n_out)
        Gradient of the loss with respect to ``A``.
    W : array_like, shape (n_in, n_out), optional
        The layer's weights; needed only for ``dX``.
    check_finite : bool, default True
        Reject NaN/inf in the inputs.

    Returns
    -------
    dW : ndarray, shape (n_in, n_out)
    db : ndarray, shape (n_out,)
    dX : ndarray, shape (n_samples, n_in), or None when ``W`` is None
    """
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
    with single_threaded_blas():
        _affine_sigmoid_backward(X, A, dA, W, dW, db, dX, with_dx, chunk, groups)
    return dW, db, (dX if with_dx else None)
