"""The whole forward and backward pass of the 2-layer MLP, fused over row chunks."""

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
from fusedgrad.kernels._math import sigmoid
from fusedgrad.kernels._partition import (
    add_column_sums,
    chunk_of,
    chunk_range,
    plan,
    sum_groups,
)
from fusedgrad.kernels.softmax import softmax_ce_rows

__all__ = ["mlp_loss_grad"]


@njit(**opt.PARALLEL)
def _mlp_loss_grad(X, y, rows, gather, sw, weighted, total, W1, b1, W2, b2, dW1, db1, dW2,
                   db2, chunk, groups, serial):
    """Jitted core: writes the gradients into ``dW1, db1, dW2, db2``, returns the loss.

    Assumes valid, C-contiguous input of one float dtype, labels in range and
    single-threaded BLAS (see :func:`mlp_loss_grad`). The samples are the rows
    of ``X`` or, when ``gather``, the rows ``X[rows]``, copied a chunk at a
    time into a per-group buffer.

    Each group walks its chunks of rows; for a chunk of ``m`` rows it keeps
    ``A`` (m, h), ``Z2`` (m, K) and ``dZ1`` (m, h) in cache:

    1. ``A = sigmoid(X_c W1 + b1)``              (gemm, then in place)
    2. ``Z2 = A W2 + b2``                         (gemm, then in place)
    3. loss and ``dZ2 = (softmax(Z2) - Y) / N``   (one pass per row, in place;
       with ``weighted``, row ``i`` times ``sw[i]`` and ``N`` is ``total``, the
       sum of the weights)
    4. ``dW2 += A^T dZ2``, ``db2 += sum dZ2``
    5. ``dZ1 = (dZ2 W2^T) * A (1 - A)``, ``db1 += sum dZ1``, ``dW1 += X_c^T dZ1``

    ``serial``: run on the calling thread alone (see
    :func:`~fusedgrad.kernels._blas.enter_threads`).
    """
    threads = enter_threads(serial)
    N = rows.shape[0] if gather else X.shape[0]
    d = X.shape[1]
    h = W1.shape[1]
    K = W2.shape[1]
    dt = X.dtype.type
    one = dt(1.0)
    inv_n = one / dt(total)
    n_chunks = (N + chunk - 1) // chunk
    # The weight-gradient partials are written (beta = 0) by each group's first
    # chunk: no serial zeroing of groups * d * h elements before the loop.
    pW1 = np.empty((groups,) + W1.shape, X.dtype)
    pb1 = np.zeros((groups, h), X.dtype)
    pW2 = np.empty((groups, h, K), X.dtype)
    pb2 = np.zeros((groups, K), X.dtype)
    ploss = np.zeros(groups, np.float64)
    for g in prange(groups):
        A = np.empty((chunk, h), X.dtype)
        Z2 = np.empty((chunk, K), X.dtype)
        dZ1 = np.empty((chunk, h), X.dtype)
        Xg = np.empty((chunk if gather else 0, d), X.dtype)
        first, stop = chunk_range(g, groups, n_chunks)
        for c in range(first, stop):
            r0 = c * chunk
            r1 = min(N, r0 + chunk)
            m = r1 - r0
            Xc = chunk_of(X, rows, gather, Xg, r0, r1)
            Ac, Z2c, dZ1c = A[:m], Z2[:m], dZ1[:m]
            mm_nn(Xc, W1, Ac, 0.0)
            for i in range(m):
                for j in range(h):
                    Ac[i, j] = sigmoid(Ac[i, j] + b1[j])
            mm_nn(Ac, W2, Z2c, 0.0)
            for i in range(m):
                for k in range(K):
                    Z2c[i, k] += b2[k]
            ploss[g] += softmax_ce_rows(Z2c, Z2c, y[r0:r1], sw[r0:r1] if weighted else sw,
                                        weighted, m, inv_n)
            add_column_sums(Z2c, m, pb2[g])
            beta = 0.0 if c == first else 1.0
            mm_tn(Ac, Z2c, pW2[g], beta)
            mm_nt(Z2c, W2, dZ1c, 0.0)
            acc = pb1[g]
            for i in range(m):  # the sigmoid's derivative and db1, in one pass
                for j in range(h):
                    a = Ac[i, j]
                    v = dZ1c[i, j] * (a * (one - a))
                    dZ1c[i, j] = v
                    acc[j] += v
            mm_tn(Xc, dZ1c, pW1[g], beta)
    sum_groups(pW1, dW1)
    sum_groups(pb1, db1)
    sum_groups(pW2, dW2)
    sum_groups(pb2, db2)
    loss = 0.0
    for g in range(groups):
        loss += ploss[g]
    leave_threads(threads)
    return dt(loss / total)


_NO_ROWS = np.zeros(0, np.intp)
#: The unused weights argument of an unweighted call, per dtype.
_NO_WEIGHTS = {np.float32: np.zeros(0, np.float32), np.float64: np.zeros(0, np.float64)}


def mlp_loss_grad(X, y, W1, b1, W2, b2, *, rows=None, sample_weight=None, check_finite=True,
                  _max_chunk_rows=None):
    r"""Loss and gradients of the 2-layer MLP, forward and backward pass fused.

    The network of the lecture, :math:`\hat y = \operatorname{softmax}(\sigma(x W^1 + b^1) W^2 + b^2)`
    with mean categorical cross-entropy. ``X`` is processed in row chunks
    sized to stay in a core's cache, one group of chunks per thread; no
    activation of the whole batch is ever stored, so the extra memory is
    ``O(groups * (chunk * h + d * h))``, independent of ``n_samples``.

    .. math::
        \delta^2 = \frac{\hat Y - Y}{N}, \quad
        \frac{\partial L}{\partial W^2} = a^T \delta^2, \quad
        \delta^1 = \delta^2 W^{2T} \odot a(1-a), \quad
        \frac{\partial L}{\partial W^1} = x^T \delta^1

    and the bias gradients are the column sums of :math:`\delta^2`, :math:`\delta^1`.

    Parameters
    ----------
    X : array_like, shape (n_samples, n_features), float32 or float64
    y : array_like of int, shape (n_samples,) or (n_rows,)
        Class labels in ``[0, n_classes)``: of the rows of ``X``, or of the
        rows ``X[rows]`` when ``rows`` is given.
    W1 : array_like, shape (n_features, n_hidden)
    b1 : array_like, shape (n_hidden,)
    W2 : array_like, shape (n_hidden, n_classes)
    b2 : array_like, shape (n_classes,)
    rows : array_like of int, shape (n_rows,), optional
        Compute the loss and gradients of the samples ``X[rows]`` (a
        minibatch of a larger ``X``, in any order, repeats allowed) without
        forming ``X[rows]``: each chunk's rows are gathered into a buffer that
        stays in cache. The result equals that of ``X[rows]``, bit for bit.
    sample_weight : array_like, shape like ``y``, X's dtype, optional
        Non-negative weights of the samples (with a positive sum): the weighted
        mean of the cross-entropy, :math:`\sum_i s_i \ell_i / \sum_i s_i`,
        replaces the mean, so row ``i`` of :math:`\delta^2` is
        :math:`s_i (\hat y_i - y_i) / \sum s` (scikit-learn's weighting).
    check_finite : bool, default True
        Reject NaN/inf in the inputs (one extra pass over all of ``X``, also
        when ``rows`` selects only some of it).

    Returns
    -------
    loss : scalar of X's dtype
    dW1, db1, dW2, db2 : ndarrays
        Shaped like ``W1, b1, W2, b2``, in their dtype.
    """
    gather = rows is not None
    # Without rows, the labels have the samples axis of X: checked before any
    # float array is copied. With rows, they are checked against the rows.
    X, W1, b1, W2, b2, *labels = _validate.float_arrays(
        [
            ("X", X, ("n_samples", "n_features")),
            ("W1", W1, ("n_features", "n_hidden")),
            ("b1", b1, ("n_hidden",)),
            ("W2", W2, ("n_hidden", "n_classes")),
            ("b2", b2, ("n_classes",)),
        ],
        check_finite,
        labels=None if gather else ("y", y),
    )
    N, d = X.shape
    h, K = W2.shape
    if gather:
        rows = _validate.indices("rows", rows, N)
        N = rows.shape[0]
        y = _validate.labels("y", y, N, K)
    else:
        rows = _NO_ROWS
        (y,) = labels
    sw, total = _validate.row_weights(sample_weight, X.dtype, N, check_finite,
                                      "rows" if gather else "X")
    item = X.itemsize
    # the same chunks with and without rows (so the same bits); a gathered
    # chunk adds one (chunk, d) buffer to the working set
    chunk, groups = plan(N, (d + 2 * h + K) * item, (d * h + h * K + h + K) * item,
                         _max_chunk_rows)
    dW1, db1 = np.empty_like(W1), np.empty_like(b1)
    dW2, db2 = np.empty_like(W2), np.empty_like(b2)
    serial = serial_call("mlp_loss_grad", (X, W1, W2))
    with kernel_blas(serial):
        loss = _mlp_loss_grad(X, y, rows, gather, sw, sw.shape[0] > 0, total, W1, b1, W2, b2,
                              dW1, db1, dW2, db2, chunk, groups, serial)
    return X.dtype.type(loss), dW1, db1, dW2, db2
