"""OLS linear regression: loss and gradient, and the Gram matrix, in one pass over X."""

import numpy as np
from numba import njit, prange

from fusedgrad import _validate
from fusedgrad.kernels import _options as opt
from fusedgrad.kernels._blas import single_threaded_blas, syrk_tn
from fusedgrad.kernels._partition import chunk_range, plan, sum_groups

__all__ = ["ols_loss_grad", "gram"]


@njit(**opt.PARALLEL)
def _ols_loss_grad(X, y, w, grad, chunk, groups):
    """Jitted core: writes the gradient into ``grad`` and returns the loss.

    Per row: residual ``r = y_i - x_i w``; loss ``+= r^2``; gradient ``-= r x_i``.
    """
    N, d = X.shape
    n_chunks = (N + chunk - 1) // chunk
    pg = np.zeros((groups, d), X.dtype)
    ploss = np.zeros(groups, np.float64)
    for g in prange(groups):
        first, stop = chunk_range(g, groups, n_chunks)
        acc = pg[g]
        for c in range(first, stop):
            r0 = c * chunk
            r1 = min(N, r0 + chunk)
            sq = X.dtype.type(0.0)
            for i in range(r0, r1):
                s = X.dtype.type(0.0)
                for j in range(d):
                    s += X[i, j] * w[j]
                r = y[i] - s
                sq += r * r
                for j in range(d):
                    acc[j] -= r * X[i, j]
            ploss[g] += sq
    sum_groups(pg, grad)
    inv_n = X.dtype.type(1.0) / X.dtype.type(N)
    for j in range(d):
        grad[j] *= inv_n
    total = 0.0
    for g in range(groups):
        total += ploss[g]
    return total / (2.0 * N)


@njit(**opt.PARALLEL)
def _gram(X, y, XtX, Xty, chunk, groups):
    """Jitted core: writes ``X^T X`` (via syrk: one triangle, half the work) and ``y X``."""
    N, d = X.shape
    n_chunks = (N + chunk - 1) // chunk
    pG = np.zeros((groups, d, d), X.dtype)
    pv = np.zeros((groups, d), X.dtype)
    for g in prange(groups):
        first, stop = chunk_range(g, groups, n_chunks)
        acc = pv[g]
        for c in range(first, stop):
            r0 = c * chunk
            r1 = min(N, r0 + chunk)
            syrk_tn(X[r0:r1], pG[g], 1.0)
            for i in range(r0, r1):
                yi = y[i]
                for j in range(d):
                    acc[j] += yi * X[i, j]
    sum_groups(pG, XtX)
    sum_groups(pv, Xty)
    for i in range(d):
        for j in range(i):
            XtX[i, j] = XtX[j, i]


def _ols_inputs(X, y, extra, check_finite):
    specs = [("X", X, ("n_samples", "n_features")), ("y", y, ("n_samples",))] + extra
    return _validate.float_arrays(specs, check_finite)


def ols_loss_grad(X, y, w, *, check_finite=True):
    r"""OLS loss and gradient in one pass over ``X``.

    .. math::
        L(w) = \frac{1}{2n} \lVert y - w X^T \rVert^2, \qquad
        \nabla L(w) = \frac1n \left(-y X + w X^T X\right) = -\frac1n \textstyle\sum_i r_i x_i

    with residuals :math:`r_i = y_i - x_i w`; ``X^T X`` is never formed.
    The loss is accumulated in float64 and returned in X's dtype.

    Parameters
    ----------
    X : array_like, shape (n_samples, n_features), float32 or float64
    y : array_like, shape (n_samples,), X's dtype
    w : array_like, shape (n_features,), X's dtype
    check_finite : bool, default True

    Returns
    -------
    loss : scalar of X's dtype
    grad : ndarray, shape (n_features,)
    """
    X, y, w = _ols_inputs(X, y, [("w", w, ("n_features",))], check_finite)
    N, d = X.shape
    chunk, groups = plan(N, (d + 1) * X.itemsize, d * X.itemsize)
    grad = np.empty(d, X.dtype)
    loss = _ols_loss_grad(X, y, w, grad, chunk, groups)
    return X.dtype.type(loss), grad


def gram(X, y, *, check_finite=True):
    r"""The inputs of the analytic OLS solution, in one pass over ``X``.

    .. math:: X^T X, \qquad y X

    ``X^T X`` is symmetric: only one triangle is computed (BLAS ``syrk``) and
    mirrored, half the work of ``X.T @ X``.

    Parameters
    ----------
    X : array_like, shape (n_samples, n_features), float32 or float64
    y : array_like, shape (n_samples,), X's dtype
    check_finite : bool, default True

    Returns
    -------
    XtX : ndarray, shape (n_features, n_features)
    Xty : ndarray, shape (n_features,)
    """
    X, y = _ols_inputs(X, y, [], check_finite)
    N, d = X.shape
    chunk, groups = plan(N, (d + 1) * X.itemsize, (d + 1) * d * X.itemsize)
    XtX = np.empty((d, d), X.dtype)
    Xty = np.empty(d, X.dtype)
    with single_threaded_blas():
        _gram(X, y, XtX, Xty, chunk, groups)
    return XtX, Xty
