"""Softmax with mean categorical cross-entropy, fused in one pass per row."""

import numpy as np
from numba import njit, prange

from fusedgrad import _validate
from fusedgrad.kernels import _options as opt
from fusedgrad.kernels._blas import enter_threads, leave_threads, serial_call
from fusedgrad.kernels._math import exp, log1p
from fusedgrad.kernels._partition import chunk_range, plan

__all__ = ["softmax_cross_entropy"]


#: Up to this many classes, rows are handled in transposed blocks (see
#: :func:`softmax_ce_rows`); beyond it, one row at a time.
_COLUMNS_MAX_CLASSES = 32

#: Elements of a transposed block of logits (it stays in L1 cache).
_BLOCK_ELEMENTS = 4096


@njit(**opt.INLINE)
def softmax_ce_rows(Z, dZ, y, sw, weighted, rows, inv_n):
    """Loss and gradient of ``rows`` rows of logits; returns the summed row losses (float64).

    With ``weighted``, row ``i``'s loss and gradient are multiplied by its
    weight ``sw[i]`` (``sw`` is not read otherwise). With few classes a row is
    too short to fill a SIMD register, so blocks of rows are transposed into a
    small scratch array and processed across rows (:func:`_ce_block_columns`);
    with many classes, row by row (:func:`_ce_rows`). Both compute the same
    sums in the same order.
    """
    K = Z.shape[1]
    if K > _COLUMNS_MAX_CLASSES:
        return _ce_rows(Z, dZ, y, sw, weighted, rows, inv_n)
    block = max(16, (_BLOCK_ELEMENTS // K) // 16 * 16)
    T = np.empty((K, block), Z.dtype)
    scratch = np.empty((4, block), Z.dtype)
    total = 0.0
    for r0 in range(0, rows, block):
        r1 = min(rows, r0 + block)
        total += _ce_block_columns(Z, dZ, y, sw, weighted, r0, r1, inv_n, T, scratch)
    return total


@njit(**opt.JIT)
def _ce_block_columns(Z, dZ, y, sw, weighted, r0, r1, inv_n, T, scratch):
    """Rows ``[r0, r1)`` of :func:`softmax_ce_rows`, vectorised across rows.

    ``T`` (K, block) receives the transposed logits and then their shifted
    exponentials; ``scratch`` holds per-row maximum, first argmax, ``t`` and
    the logit of the label.
    """
    K = Z.shape[1]
    n = r1 - r0
    zero = Z.dtype.type(0.0)
    one = Z.dtype.type(1.0)
    mx, am, t, zy = scratch[0], scratch[1], scratch[2], scratch[3]
    for i in range(n):
        row = r0 + i
        zy[i] = Z[row, y[row]]
        for k in range(K):
            T[k, i] = Z[row, k]
    for i in range(n):
        mx[i] = T[0, i]
    for k in range(1, K):
        for i in range(n):
            mx[i] = max(mx[i], T[k, i])
    # the first index of the maximum (as a float: exact for any K here)
    for i in range(n):
        am[i] = Z.dtype.type(K - 1)
    for k in range(K - 2, -1, -1):
        kf = Z.dtype.type(k)
        for i in range(n):
            am[i] = kf if T[k, i] == mx[i] else am[i]
    for i in range(n):
        t[i] = zero
    for k in range(K):
        for i in range(n):
            T[k, i] = exp(T[k, i] - mx[i])
    for k in range(K):
        kf = Z.dtype.type(k)
        for i in range(n):
            t[i] += zero if am[i] == kf else T[k, i]
    log_sum = 0.0
    margin_sum = 0.0
    for i in range(n):
        # one call site of the inlined log1p (two trip numba's IR checks)
        lt = np.float64(log1p(t[i]))
        mg = np.float64(mx[i] - zy[i])
        if weighted:
            wi = np.float64(sw[r0 + i])
            lt *= wi
            mg *= wi
        log_sum += lt
        margin_sum += mg
    for i in range(n):
        row = r0 + i
        inv = inv_n * sw[row] if weighted else inv_n
        scale = inv / (one + t[i])
        label = y[row]
        ey = T[label, i]
        for k in range(K):
            dZ[row, k] = T[k, i] * scale
        if label == np.intp(am[i]):
            dZ[row, label] = -t[i] * scale
        else:
            dZ[row, label] = ey * scale - inv
    return log_sum + margin_sum


@njit(**opt.JIT)
def _ce_rows(Z, dZ, y, sw, weighted, rows, inv_n):
    """Loss and gradient of ``rows`` rows of logits, one row at a time (many classes).

    Per row, with ``m = max z`` (first reached at ``k = a``) and
    ``t = sum_{k != a} e^(z_k - m)`` (the sum of the exponentials is ``s = 1 + t``):
    loss ``log1p(t) + m - z_y`` and gradient ``(e^(z - m) / s - onehot(y)) * inv_n``,
    written to ``dZ``. For a confident prediction (``y = a``, ``t`` tiny)
    the label's entry is computed as ``-t / s * inv_n``: forming ``s`` and
    subtracting 1 again would cancel all of ``t``'s digits.
    ``Z`` and ``dZ`` may be the same array (the logits are then overwritten).
    With ``weighted``, row ``i``'s loss and ``inv_n`` are multiplied by ``sw[i]``.
    """
    K = Z.shape[1]
    # The losses log1p(t) and the margins m - z_y are summed apart: with
    # fast-math reassociation, one sum of log1p(t) + (m - z_y) may be evaluated
    # as (sum + m) - z_y, which cancels the digits of a small loss.
    log_sum = 0.0
    margin_sum = 0.0
    zero = Z.dtype.type(0.0)
    one = Z.dtype.type(1.0)
    for i in range(rows):
        label = y[i]
        zy = Z[i, label]
        m = Z[i, 0]
        for k in range(1, K):
            m = max(m, Z[i, k])
        a = K - 1  # the first index of the maximum, found without branches
        for k in range(K - 2, -1, -1):
            a = k if Z[i, k] == m else a
        for k in range(K):
            dZ[i, k] = exp(Z[i, k] - m)
        t = zero
        for k in range(a):
            t += dZ[i, k]
        for k in range(a + 1, K):
            t += dZ[i, k]
        lt = np.float64(log1p(t))
        mg = np.float64(m - zy)
        inv = inv_n
        if weighted:
            wi = np.float64(sw[i])
            lt *= wi
            mg *= wi
            inv = inv_n * sw[i]
        log_sum += lt
        margin_sum += mg
        scale = inv / (one + t)
        ey = dZ[i, label]
        for k in range(K):
            dZ[i, k] *= scale
        if label == a:
            dZ[i, label] = -t * scale
        else:
            dZ[i, label] = ey * scale - inv
    return log_sum + margin_sum


@njit(**opt.PARALLEL)
def _softmax_cross_entropy(Z, y, sw, weighted, total, dZ, chunk, groups, serial):
    """Jitted core: writes the gradient into ``dZ`` and returns the mean loss
    (weighted by ``sw`` with ``weighted``; ``total``: the number of rows or the
    sum of the weights).

    Assumes valid, C-contiguous input (see :func:`softmax_cross_entropy`).
    ``serial``: run on the calling thread alone (see
    :func:`~fusedgrad.kernels._blas.enter_threads`).
    """
    threads = enter_threads(serial)
    N = Z.shape[0]
    n_chunks = (N + chunk - 1) // chunk
    inv_n = Z.dtype.type(1.0) / Z.dtype.type(total)
    partial = np.zeros(groups, np.float64)
    for g in prange(groups):
        first, stop = chunk_range(g, groups, n_chunks)
        for c in range(first, stop):
            r0 = c * chunk
            r1 = min(N, r0 + chunk)
            partial[g] += softmax_ce_rows(Z[r0:r1], dZ[r0:r1], y[r0:r1],
                                          sw[r0:r1] if weighted else sw, weighted, r1 - r0,
                                          inv_n)
    loss = 0.0
    for g in range(groups):
        loss += partial[g]
    leave_threads(threads)
    return Z.dtype.type(loss / total)


def softmax_cross_entropy(Z, y, *, sample_weight=None, check_finite=True):
    r"""Mean categorical cross-entropy of ``softmax(Z)`` and its gradient, fused.

    One pass per row: the row maximum, the shifted exponentials and their
    sum, the log-sum-exp and the gradient, with no intermediate array.

    .. math::
        L = \frac1N \sum_i \Big(\log \sum_k e^{z_{ik}} - z_{i y_i}\Big), \qquad
        \frac{\partial L}{\partial Z} = \frac{\operatorname{softmax}(Z) - Y}{N}

    Parameters
    ----------
    Z : array_like, shape (n_samples, n_classes), float32 or float64
        Logits.
    y : array_like of int, shape (n_samples,)
        Class labels in ``[0, n_classes)``.
    sample_weight : array_like, shape (n_samples,), Z's dtype, optional
        Non-negative weights of the rows, with a positive sum: the weighted
        mean :math:`\sum_i s_i \ell_i / \sum_i s_i` replaces the mean, and
        row ``i`` of the gradient is multiplied by :math:`s_i N / \sum s`.
    check_finite : bool, default True
        Reject NaN/inf in ``Z`` (one extra pass over it).

    Returns
    -------
    loss : scalar of Z's dtype
    dZ : ndarray, shape (n_samples, n_classes), Z's dtype
    """
    Z, y = _validate.float_arrays([("Z", Z, ("n_samples", "n_classes"))], check_finite,
                                  labels=("y", y))
    N, K = Z.shape
    sw, total = _validate.row_weights(sample_weight, Z.dtype, N, check_finite, "Z", "Z")
    chunk, groups = plan(N, 2 * K * Z.itemsize, 8)
    dZ = np.empty_like(Z)
    serial = serial_call("softmax_cross_entropy", (Z,))
    loss = _softmax_cross_entropy(Z, y, sw, sw.shape[0] > 0, total, dZ, chunk, groups, serial)
    return Z.dtype.type(loss), dZ
