"""OLS linear regression: loss and gradient, and the Gram matrix, in one pass over X."""

import numpy as np
from numba import njit, prange

from fusedgrad import _validate
from fusedgrad.kernels import _options as opt
from fusedgrad.kernels._options import WIDE_VECTORS as WIDE
from fusedgrad.kernels._blas import (
    enter_threads,
    gram_tn,
    gram_uses_tiles,
    kernel_blas,
    leave_threads,
    serial_call,
    single_threaded_blas,
)
from fusedgrad.kernels._partition import chunk_range, plan, sum_groups
from fusedgrad.kernels._tiles import (
    KC,
    PREFETCH_MIN_ROW_BYTES,
    pack,
    pack_shifted,
    packed_gemv,
    packed_gram,
    packed_size,
    panel_shape,
)

__all__ = ["ols_loss_grad", "gram", "centered_gram"]


@njit(**opt.PARALLEL)
def _ols_loss_grad(X, y, w, sw, weighted, grad, chunk, groups, serial):
    """Jitted core: writes the gradient into ``grad`` and returns the loss.

    Per row: residual ``r = y_i - x_i w``; loss ``+= r^2``; gradient ``-= r x_i``
    (with ``weighted``: ``r`` times the row's weight ``sw[i]`` in both); both are
    divided by the number of rows, or by the sum of the weights (summed here, per
    group in float64, the groups in order).
    ``serial``: run on the calling thread alone (see :func:`enter_threads`).
    """
    threads = enter_threads(serial)
    N, d = X.shape
    n_chunks = (N + chunk - 1) // chunk
    pg = np.zeros((groups, d), X.dtype)
    ploss = np.zeros(groups, np.float64)
    pweight = np.zeros(groups, np.float64)
    for g in prange(groups):
        first, stop = chunk_range(g, groups, n_chunks)
        acc = pg[g]
        for c in range(first, stop):
            r0 = c * chunk
            r1 = min(N, r0 + chunk)
            sq = 0.0  # squared residuals summed in float64: r^2 may overflow float32
            for i in range(r0, r1):
                s = X.dtype.type(0.0)
                for j in range(d):
                    s += X[i, j] * w[j]
                r = y[i] - s
                rr = np.float64(r)
                if weighted:
                    sq += np.float64(sw[i]) * rr * rr
                    pweight[g] += np.float64(sw[i])
                    r = r * sw[i]
                else:
                    sq += rr * rr
                for j in range(d):
                    acc[j] -= r * X[i, j]
            ploss[g] += sq
    sum_groups(pg, grad)
    total = np.float64(N)
    if weighted:
        total = 0.0
        for g in range(groups):
            total += pweight[g]
    inv_n = X.dtype.type(1.0 / total)
    for j in range(d):
        grad[j] *= inv_n
    loss = 0.0
    for g in range(groups):
        loss += ploss[g]
    leave_threads(threads)
    return loss / (2.0 * total)


@njit(**opt.PARALLEL)
def _gram(X, y, XtX, Xty, chunk, groups, serial):
    """Jitted core: writes ``X^T X`` and ``y X``; returns whether the diagonal
    of ``X^T X`` and ``y X`` are finite.

    Each chunk of rows is packed into panels and multiplied by the register
    tiles of :mod:`fusedgrad.kernels._tiles` (``y X`` from the same panels),
    or, for narrow rows (:func:`gram_uses_tiles`), by BLAS (:func:`gram_tn`).

    ``serial``: run on the calling thread alone (see :func:`enter_threads`).
    """
    threads = enter_threads(serial)
    N, d = X.shape
    n_chunks = (N + chunk - 1) // chunk
    tiles = gram_uses_tiles(d, X.itemsize)
    prefetch = d * X.itemsize >= PREFETCH_MIN_ROW_BYTES
    flat = X.reshape(N * d)
    pG = np.zeros((groups, d, d), X.dtype)
    pv = np.zeros((groups, d), X.dtype)
    for g in prange(groups):
        first, stop = chunk_range(g, groups, n_chunks)
        acc = pv[g]
        P = np.empty(packed_size(min(KC, N), d, X.itemsize, WIDE) if tiles else 0, X.dtype)
        for c in range(first, stop):
            r0 = c * chunk
            r1 = min(N, r0 + chunk)
            if tiles:
                for k0 in range(r0, r1, KC):
                    k1 = min(r1, k0 + KC)
                    pack(X[k0:k1], d, P, WIDE)
                    # wide rows: the group's next run is read while this one is multiplied
                    ahead = min(k1 + KC, stop * chunk, N) if prefetch else k1
                    packed_gram(P, k1 - k0, d, pG[g], WIDE, flat, k1 * d, ahead * d)
                    packed_gemv(P, k1 - k0, d, y[k0:k1], acc, WIDE)
            else:
                gram_tn(X[r0:r1], pG[g], 1.0)
                for i in range(r0, r1):
                    yi = y[i]
                    for j in range(d):
                        acc[j] += yi * X[i, j]
    sum_groups(pG, XtX)
    sum_groups(pv, Xty)
    finite = True
    for i in range(d):
        if not (np.isfinite(XtX[i, i]) and np.isfinite(Xty[i])):
            finite = False
        for j in range(i):
            XtX[i, j] = XtX[j, i]
    leave_threads(threads)
    return finite


def _gram_chunk_row_bytes(d, itemsize):
    """Bytes per row that the chunk size of the Gram kernels is planned with.

    The tile path ran best on chunks of 512-1024 rows (measured when a chunk
    was packed whole; float64, 2 threads, 1e6 x 128: 256 rows 173 ms, 512:
    157, 1024: 151, 2048: 176; 128e6 elements, 64 columns: 1024 rows 103 ms,
    2048: 115; 256 columns: 256 rows 273 ms, 512: 247): its rows count as at
    most 1 KB, which makes chunks of at least 512 rows.
    """
    if gram_uses_tiles(d, itemsize):
        return min(d * itemsize, 1024)
    return (d + 1) * itemsize


def _ols_inputs(X, y, extra, check_finite, deferred=()):
    specs = [("X", X, ("n_samples", "n_features")), ("y", y, ("n_samples",))] + extra
    return _validate.float_arrays(specs, check_finite, deferred=deferred)


def _weighted_inputs(X, y, extra, sample_weight, check_finite, deferred=()):
    """:func:`_ols_inputs`, then ``sample_weight`` by
    :func:`fusedgrad._validate.row_weights` (an empty array when ``None``; these
    kernels sum the weights themselves in their pass)."""
    arrays = _ols_inputs(X, y, extra, check_finite, deferred)
    sw, _ = _validate.row_weights(sample_weight, arrays[0].dtype, arrays[0].shape[0],
                                  check_finite, want_sum=False)
    return arrays + [sw]


def ols_loss_grad(X, y, w, *, sample_weight=None, check_finite=True):
    r"""OLS loss and gradient in one pass over ``X``.

    .. math::
        L(w) = \frac{1}{2n} \lVert y - w X^T \rVert^2, \qquad
        \nabla L(w) = \frac1n \left(-y X + w X^T X\right) = -\frac1n \textstyle\sum_i r_i x_i

    with residuals :math:`r_i = y_i - x_i w`; ``X^T X`` is never formed.
    The loss is accumulated in float64 and returned in X's dtype. With
    ``sample_weight`` :math:`s`, the weighted mean replaces the mean:
    :math:`L = \sum_i s_i r_i^2 / (2 \sum_i s_i)`,
    :math:`\nabla L = -\sum_i s_i r_i x_i / \sum_i s_i`.

    The finiteness check of ``X`` and ``y`` costs no second pass over them:
    a NaN or infinity in either makes a residual, and so the float64 loss,
    non-finite (IEEE arithmetic; the kernels' fast-math flags keep NaN and
    inf), and only then are they scanned, to raise the ``ValueError`` that
    names the argument. ``w`` is checked before the pass.

    Parameters
    ----------
    X : array_like, shape (n_samples, n_features), float32 or float64
    y : array_like, shape (n_samples,), X's dtype
    w : array_like, shape (n_features,), X's dtype
    sample_weight : array_like, shape (n_samples,), X's dtype, optional
        Non-negative weights of the rows, with a positive sum.
    check_finite : bool, default True

    Returns
    -------
    loss : scalar of X's dtype
    grad : ndarray, shape (n_features,)
    """
    X, y, w, sw = _weighted_inputs(X, y, [("w", w, ("n_features",))], sample_weight,
                                   check_finite, deferred=("X", "y"))
    N, d = X.shape
    chunk, groups = plan(N, (d + 1) * X.itemsize, d * X.itemsize)
    grad = np.empty(d, X.dtype)
    loss = _ols_loss_grad(X, y, w, sw, sw.shape[0] > 0, grad, chunk, groups,
                          serial_call("ols_loss_grad", (X,)))
    if check_finite and not np.isfinite(loss):
        _validate.require_finite(("X", X), ("y", y))
    with np.errstate(over="ignore"):  # a float64 sum beyond float32's range is inf in float32
        return X.dtype.type(loss), grad


def gram(X, y, *, check_finite=True):
    r"""The inputs of the analytic OLS solution, in one pass over ``X``.

    .. math:: X^T X, \qquad y X

    ``X^T X`` is symmetric: from 32 to 512 float64 (64 to 1024 float32)
    features, each
    chunk of rows is packed into panels and only the upper triangle's register
    tiles are computed (:mod:`fusedgrad.kernels._tiles`, 17/32 of a full
    product's multiply-adds at 128 features), ``y X`` from the same panels, and the triangle
    is mirrored; for fewer features, a full product cut into pieces small
    enough for OpenBLAS's unpacked small-matrix kernels is faster (about
    twice as fast as ``syrk`` at 16 features); for more, BLAS ``syrk``.

    The finiteness check of ``X`` and ``y`` costs no second pass over them:
    a NaN or infinity in ``X`` makes the diagonal of ``X^T X`` (a sum of
    squares) non-finite, one in ``y`` makes ``y X`` non-finite, and only
    then are they scanned, to raise the ``ValueError`` that names the
    argument.

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
    X, y = _ols_inputs(X, y, [], check_finite, deferred=("X", "y"))
    N, d = X.shape
    chunk, groups = plan(N, _gram_chunk_row_bytes(d, X.itemsize), (d + 1) * d * X.itemsize)
    XtX = np.empty((d, d), X.dtype)
    Xty = np.empty(d, X.dtype)
    serial = serial_call("gram", (X,))
    with kernel_blas(serial):
        finite = _gram(X, y, XtX, Xty, chunk, groups, serial)
    if check_finite and not finite:
        _validate.require_finite(("X", X), ("y", y))
    return XtX, Xty


@njit(**opt.PARALLEL)
def _centered_gram(X, y, sw, weighted, chunk, groups, counts, means, scatters):
    """Jitted core: per-group weight, mean and centred scatter of the columns of ``[X, y]``.

    Writes, for each group ``g`` of the fixed partition, ``counts[g]`` (its
    rows, or with ``weighted`` the sum of their weights ``sw``), ``means[g]``
    (``(d + 1,)``, weighted) and the upper triangle of ``scatters[g]``
    (``(d + 1, d + 1)``, the (weighted) sum of outer products of the rows of
    ``[X, y]`` minus the group's mean), all float64.

    Each chunk is shifted by an estimate of its mean (the mean of the group's
    previous chunk, or its own for the first) into a cache-resident scratch
    block (in X's dtype; with weights, each row times the square root of its
    weight), its scatter is taken there (packed into panels for the register
    tiles of :mod:`fusedgrad.kernels._tiles`, or by BLAS for narrow rows, as
    in :func:`_gram`), corrected for the shift's
    rounding by the block's (weighted) column sums, and merged into the
    group's float64 accumulators with the pairwise update of Chan, Golub and
    LeVeque (weights in place of counts). No cancellation between large
    uncentred sums ever happens, so float32 input keeps float32 speed and
    accuracy. A chunk whose weights are all 0 adds nothing.
    """
    N, d = X.shape
    p = d + 1
    n_chunks = (N + chunk - 1) // chunk
    tiles = gram_uses_tiles(d, X.itemsize)
    one = X.dtype.type(1.0)
    prefetch = d * X.itemsize >= PREFETCH_MIN_ROW_BYTES
    flat = X.reshape(N * d)
    for g in prange(groups):
        first, stop = chunk_range(g, groups, n_chunks)
        # The shifted block: [X, y] row by row (BLAS), or X's columns packed
        # into panels and y's apart (tiles).
        Z = np.empty((0 if tiles else chunk, p), X.dtype)
        P = np.empty(packed_size(KC, d, X.itemsize, WIDE) if tiles else 0, X.dtype)
        zy = np.empty(KC if tiles else 0, X.dtype)
        S = np.zeros((p, p), X.dtype)
        shift = np.empty(p, X.dtype)
        root = np.empty(chunk if weighted else 0, X.dtype)
        s = np.empty(p, np.float64)
        delta = np.empty(p, np.float64)
        M_prev = np.empty(p, np.float64)
        M = means[g]
        C = scatters[g]
        M[:] = 0.0
        C[:] = 0.0
        n_g = 0.0
        for c in range(first, stop):
            r0 = c * chunk
            r1 = min(N, r0 + chunk)
            m = r1 - r0
            m_w = np.float64(m)
            if weighted:
                m_w = 0.0
                for i in range(m):
                    m_w += np.float64(sw[r0 + i])
                    root[i] = np.sqrt(sw[r0 + i])
                if m_w == 0.0:
                    continue
            # The shift, in X's dtype: the mean of the group's previous chunk
            # (already known), or this chunk's own (weighted) mean.
            if n_g == 0.0:
                s[:] = 0.0
                for i in range(r0, r1):
                    wi = np.float64(sw[i]) if weighted else 1.0
                    for j in range(d):
                        s[j] += wi * X[i, j]
                    s[d] += wi * y[i]
                for j in range(p):
                    shift[j] = s[j] / m_w
            else:
                for j in range(p):
                    shift[j] = M_prev[j]
            # Shifted (and weighted) block and its exact weighted column sums (float64).
            s[:] = 0.0
            if tiles:
                # Runs of KC rows, shifted and scaled straight into the run's
                # panels (whole panels in vector registers).
                S[:, :] = 0
                syy = 0.0
                for k0 in range(0, m, KC):
                    k = min(m, k0 + KC) - k0
                    pack_shifted(X, r0 + k0, k, shift, root[k0:k0 + k], weighted, P, s, WIDE)
                    for i in range(k):
                        a = root[k0 + i] if weighted else one
                        aa = np.float64(a)
                        z = (y[r0 + k0 + i] - shift[d]) * a
                        zy[i] = z
                        s[d] += aa * z
                        syy += z * z
                    # wide rows: the group's next run is read while this one is multiplied
                    start = r0 + k0 + k
                    ahead = min(start + KC, stop * chunk, N) if prefetch else start
                    # X's block S[:d, :d] (upper triangle) and X^T y in S[:d, d]
                    packed_gram(P, k, d, S, WIDE, flat, start * d, ahead * d)
                    packed_gemv(P, k, d, zy[:k], S[:d, d], WIDE)
                S[d, d] = syy
            else:
                if weighted:
                    for i in range(m):
                        a = root[i]
                        aa = np.float64(a)
                        for j in range(d):
                            z = (X[r0 + i, j] - shift[j]) * a
                            Z[i, j] = z
                            s[j] += aa * z
                        z = (y[r0 + i] - shift[d]) * a
                        Z[i, d] = z
                        s[d] += aa * z
                else:
                    for i in range(m):
                        for j in range(d):
                            z = X[r0 + i, j] - shift[j]
                            Z[i, j] = z
                            s[j] += z
                        z = y[r0 + i] - shift[d]
                        Z[i, d] = z
                        s[d] += z
                gram_tn(Z[:m], S, 0.0)
            # Merge (weight m_w, mean shift + s/m_w, scatter S - s s^T / m_w) into the group.
            n_new = n_g + m_w
            f = n_g * m_w / n_new
            inv_m = 1.0 / m_w
            for j in range(p):
                delta[j] = (shift[j] + s[j] * inv_m) - M[j]
            for a in range(p):
                sa = s[a] * inv_m
                fa = f * delta[a]
                for b in range(a, p):
                    C[a, b] += (S[a, b] - sa * s[b]) + fa * delta[b]
            w = m_w / n_new
            for j in range(p):
                M[j] += delta[j] * w
                M_prev[j] = shift[j] + s[j] * inv_m
            n_g = n_new
        counts[g] = n_g


def _merge_moments(counts, means, scatters):
    """Combine per-group (count, mean, scatter) in group order (Chan et al.)."""
    n = 0.0
    mean = np.zeros(means.shape[1])
    scatter = np.zeros(scatters.shape[1:])
    for n_b, mean_b, scatter_b in zip(counts, means, scatters):
        if n_b == 0:
            continue
        n_new = n + n_b
        delta = mean_b - mean
        scatter += scatter_b + (n * n_b / n_new) * np.outer(delta, delta)
        mean += delta * (n_b / n_new)
        n = n_new
    return mean, scatter


def centered_gram(X, y, *, sample_weight=None, check_finite=True):
    r"""Means and centred Gram matrix of ``[X, y]`` in one pass over ``X``.

    With :math:`A = [X, y]` (``(n_samples, n_features + 1)``) and its column
    means :math:`\bar a`:

    .. math::
        \text{mean} = \bar a, \qquad
        \text{scatter} = (A - \mathbf 1 \bar a)^T (A - \mathbf 1 \bar a)

    so that ``scatter[:d, :d]`` is the centred :math:`X^T X`, ``scatter[:d, d]``
    the centred :math:`X^T y` and ``scatter[d, d]`` the total sum of squares
    of ``y``; the uncentred products are ``scatter + n * outer(mean, mean)``.
    These are the inputs of the least-squares fit with an intercept, obtained
    without copying ``X`` and without the cancellation of
    :math:`X^T X - n \bar x \bar x^T`.

    With ``sample_weight`` :math:`w` both are weighted: the mean is
    :math:`\sum_i w_i a_i / \sum_i w_i` and the scatter
    :math:`\sum_i w_i (a_i - \bar a)^T (a_i - \bar a)`, the inputs of the
    weighted least-squares fit; ``scatter + sum(w) * outer(mean, mean)`` is
    then :math:`A^T \operatorname{diag}(w) A`.

    Rows are processed in chunks: each chunk is shifted by its own mean in a
    cache-sized scratch block, its products are taken in ``X``'s dtype (as in
    :func:`gram`), and the chunks are merged in float64 by the pairwise update
    of Chan, Golub and LeVeque, in a fixed order (the result does not depend
    on the thread count). float32 input is thus read and multiplied in
    float32, but not accumulated over more than one chunk in float32.

    Parameters
    ----------
    X : array_like, shape (n_samples, n_features), float32 or float64
    y : array_like, shape (n_samples,), X's dtype
    sample_weight : array_like, shape (n_samples,), X's dtype, optional
        Non-negative weights of the rows, with a positive sum.
    check_finite : bool, default True

    Returns
    -------
    mean : ndarray, shape (n_features + 1,), float64
        Column means of ``X`` followed by the mean of ``y`` (weighted).
    scatter : ndarray, shape (n_features + 1, n_features + 1), float64
        Symmetric centred Gram matrix of ``[X, y]``.
    """
    X, y, sw = _weighted_inputs(X, y, [], sample_weight, check_finite)
    N, d = X.shape
    p = d + 1
    # per group: the float64 scatter and the chunk's scatter in X's dtype
    chunk, groups = plan(N, 2 * _gram_chunk_row_bytes(d, X.itemsize), p * p * (8 + X.itemsize))
    counts = np.zeros(groups)
    means = np.empty((groups, p))
    scatters = np.empty((groups, p, p))
    with single_threaded_blas():
        _centered_gram(X, y, sw, sw.shape[0] > 0, chunk, groups, counts, means, scatters)
    mean, scatter = _merge_moments(counts, means, scatters)
    upper = np.triu(scatter)
    scatter = upper + np.triu(upper, 1).T
    return mean, scatter
