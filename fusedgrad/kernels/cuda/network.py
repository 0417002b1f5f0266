"""Loss and gradients of a multi-layer perceptron of any depth on the GPU.

The twin of :mod:`fusedgrad.kernels.network`. The lecture's network (one
logistic hidden layer) goes through :func:`fusedgrad.kernels.cuda.mlp_loss_grad`'s
kernels (the single fused kernel on thin layers); every other network through
the layered path of that module generalised to ``L`` layers: per chunk of
rows, one product per layer with the bias and the activation applied as the
tile is stored, the softmax cross-entropy kernel, and for each layer from the
top ``dW_l += A_{l-1}^T delta_l``, ``db_l += sum delta_l`` and
``delta_{l-1} = delta_l W_l^T * f'(A_{l-1})`` with the derivative applied as
the tile is stored. Every sum over rows is made of per-block partials added in
a fixed order, so results do not depend on scheduling.
"""

import numpy as np

from fusedgrad.kernels import _options as opt
from fusedgrad.kernels.cuda import _gemm, _train
from fusedgrad.kernels.cuda import _runtime as rt
from fusedgrad.kernels.cuda import mlp as _mlp
from fusedgrad.kernels.cuda.affine import column_sums
from fusedgrad.kernels.cuda.softmax import softmax_ce_device
from fusedgrad.kernels.network import HIDDEN_ACTIVATIONS, network_specs

__all__ = ["HIDDEN_ACTIVATIONS", "network_loss_grad", "loss_grad_device", "units_of",
           "flat_size", "split_flat"]


def units_of(Ws):
    """``[n_features, n_1, ..., n_classes]`` of the weight matrices ``Ws``."""
    return [int(Ws[0].shape[0])] + [int(W.shape[1]) for W in Ws]


def flat_size(units):
    """The length of the flat vector ``[W1 | b1 | W2 | b2 | ...]`` of a network."""
    return sum((n_in + 1) * n_out for n_in, n_out in zip(units[:-1], units[1:]))


def split_flat(flat, units):
    """Views ``(Ws, bs)`` of a flat vector laid out as ``[W1 | b1 | W2 | b2 | ...]``
    (the layout of the gradients here, and of the models' parameters on the
    GPU); for one hidden layer it is :func:`fusedgrad.kernels.cuda.mlp.split_flat`'s."""
    Ws, bs, o = [], [], 0
    for n_in, n_out in zip(units[:-1], units[1:]):
        Ws.append(flat[o:o + n_in * n_out].reshape(n_in, n_out))
        o += n_in * n_out
        bs.append(flat[o:o + n_out])
        o += n_out
    return Ws, bs


def _buffer(work, name, size, dtype):
    """A 1-D device array of ``size`` elements, kept in ``work`` (a dict that a
    training loop passes to every call) or new when ``work`` is None."""
    return rt.buffer(work, name, (size,), dtype)


def _rows_view(buf, m, n):
    return buf[: m * n].reshape(m, n)


def _is_lecture(Ws, activation):
    return len(Ws) == 2 and activation == "logistic"


def _chunk_rows(units, itemsize):
    hidden = units[1:-1]
    widest = max(hidden, default=0)
    row_bytes = (units[0] + sum(hidden) + units[-1] + 2 * widest) * itemsize
    return max(1, opt.CUDA_CHUNK_BYTES // row_bytes)


def _raw_products():
    """Whether the products come from cuBLAS, which stores them raw: the
    derivative of the backward products then goes into the pass that sums the
    bias gradient (the numba kernel applies it as it stores the tile)."""
    return _gemm.backend() == "cupy"


def _layered(Xd, yd, rows, Ws, bs, activation, dWs, dbs, loss, work, sw=None, total=None):
    """The layered path over chunks of rows (of ``X[rows]`` when ``rows`` is given;
    ``sw``: the weights of those rows, summing to ``total``)."""
    N = rows.shape[0] if rows is not None else Xd.shape[0]
    n = N if sw is None else total
    units = units_of(Ws)
    L = len(Ws)
    dtype = np.dtype(Xd.dtype)
    fwd, bwd = _gemm.FORWARD_EPI[activation], _gemm.BACKWARD_EPI[activation]
    raw = _raw_products()
    chunk = min(N, _chunk_rows(units, dtype.itemsize))
    hidden = units[1:-1]
    widest = max(hidden, default=0)
    A_bufs = [_buffer(work, f"A{l}", chunk * n, dtype) for l, n in enumerate(hidden)]
    D_bufs = [_buffer(work, f"D{i}", chunk * widest, dtype) for i in range(2 if L > 1 else 0)]
    Z_buf = _buffer(work, "Z", chunk * units[-1], dtype)
    X_buf = _buffer(work, "X", chunk * units[0], dtype) if rows is not None else None
    for c, r0 in enumerate(range(0, N, chunk)):
        r1 = min(N, r0 + chunk)
        m = r1 - r0
        acc = c > 0
        if rows is None:
            Xc = Xd[r0:r1]
        else:
            Xc = _rows_view(X_buf, m, units[0])
            _train.gather_rows(Xd, None, rows[r0:r1], Xc, None)
        yc = yd[r0:r1]
        As = [_rows_view(buf, m, n) for buf, n in zip(A_bufs, hidden)]
        Z = _rows_view(Z_buf, m, units[-1])
        prev = Xc
        for l in range(L - 1):
            _gemm.matmul(prev, Ws[l], As[l], epi=fwd, bias=bs[l], work=work)
            prev = As[l]
        _gemm.matmul(prev, Ws[-1], Z, epi=_gemm.EPI_BIAS, bias=bs[-1], work=work)
        loss_part, col_part = softmax_ce_device(Z, yc, Z, colsum=True, n_total=n,
                                                sw=None if sw is None else sw[r0:r1], work=work)
        loss_sum = (loss_part.reshape(loss_part.shape[0], 1), loss, 1.0 / n, acc)
        if col_part is not None:
            rt.sum_partials(col_part, dbs[-1], 1.0, acc, also=loss_sum)
        else:
            rt.sum_partials(*loss_sum)
            column_sums(Z, dbs[-1], accumulate=acc, work=work)
        delta = Z
        for l in range(L - 1, -1, -1):
            below = Xc if l == 0 else As[l - 1]
            _gemm.matmul(below, delta, dWs[l], ta=True, accumulate=acc, work=work)
            if l == 0:
                break
            nxt = _rows_view(D_bufs[(L - 1 - l) % 2], m, units[l])
            if raw and bwd != _gemm.EPI_NONE:
                _gemm.matmul(delta, Ws[l], nxt, tb=True, work=work)
                column_sums(below, dbs[l - 1], dA=nxt, dZ=nxt, deriv=bwd, accumulate=acc,
                            work=work)
            else:
                _gemm.matmul(delta, Ws[l], nxt, tb=True, epi=bwd, aux=below, work=work)
                column_sums(nxt, dbs[l - 1], accumulate=acc, work=work)
            delta = nxt


def loss_grad_device(Xd, yd, Ws, bs, activation, flat, loss, *, rows=None, work=None,
                     sample_weight=None, total=None):
    """:func:`network_loss_grad` on prepared device arrays, without any check.

    For callers that validated their data once and call many times (the
    models' training loops): nothing is copied to the host and nothing
    synchronises.

    Parameters
    ----------
    Xd : device array (n_samples, n_features)
        C-contiguous rows (a slice of consecutive rows of a C-contiguous
        array is fine).
    yd : device array of int, (n_samples,) or, with ``rows``, (n_rows,)
        Labels in ``[0, n_classes)``.
    Ws, bs : lists of device arrays
        C-contiguous, shapes as in :func:`network_loss_grad`.
    activation : str
        One of :data:`HIDDEN_ACTIVATIONS`.
    flat : device array, shape ``(flat_size(units),)``, X's dtype
        Receives the gradients laid out as ``[dW1 | db1 | dW2 | db2 | ...]``
        (see :func:`split_flat`).
    loss : device array, shape (1,), float64
        Receives the mean cross-entropy.
    rows : device array of int, optional
        Indices in ``[0, n_samples)``: the loss and gradients of ``X[rows]``.
    work : dict, optional
        Keeps the activation buffers between calls (a training loop passes the
        same dict to every step); without it they are allocated per call.
    sample_weight : device array, shape like ``yd``, X's dtype, optional
        The weights of the samples, and ``total``, their sum (a float from the
        caller): the weighted mean of the cross-entropy replaces the mean.
    """
    units = units_of(Ws)
    dtype = np.dtype(Xd.dtype)
    if _is_lecture(Ws, activation):
        n = rows.shape[0] if rows is not None else Xd.shape[0]
        if rows is None or n * units[0] * dtype.itemsize <= opt.CUDA_CHUNK_BYTES:
            if rows is not None:
                Xg = _rows_view(_buffer(work, "X", n * units[0], dtype), n, units[0])
                _train.gather_rows(Xd, None, rows, Xg, None)
                Xd = Xg
            _mlp.loss_grad_device(Xd, yd, Ws[0], bs[0], Ws[1], bs[1], flat, loss,
                                  sample_weight=sample_weight, total=total, work=work)
            return
    dWs, dbs = split_flat(flat, units)
    _layered(Xd, yd, rows, Ws, bs, activation, dWs, dbs, loss, work, sample_weight, total)


def network_loss_grad(X, y, coefs, intercepts, *, activation, rows=None, sample_weight=None,
                      check_finite=True):
    r"""Loss and gradients of a multi-layer perceptron classifier on the GPU.

    Same semantics as :func:`fusedgrad.kernels.network_loss_grad`: the
    network :math:`A_l = f(A_{l-1} W_l + b_l)`,
    :math:`\hat Y = \operatorname{softmax}(A_{L-1} W_L + b_L)`, mean
    categorical cross-entropy, and

    .. math::
        \delta_L = \frac{\hat Y - Y}{N}, \quad
        \frac{\partial L}{\partial W_l} = A_{l-1}^T \delta_l, \quad
        \frac{\partial L}{\partial b_l} = \textstyle\sum_{\text{rows}} \delta_l, \quad
        \delta_{l-1} = \delta_l W_l^T \odot f'(A_{l-1})

    One logistic hidden layer runs the kernels of
    :func:`~fusedgrad.kernels.cuda.mlp_loss_grad`; any other network one
    product per layer and direction (tiled numba.cuda or cuBLAS, see
    ``CUDA_GEMM``) with the bias, the activation and its derivative fused
    into the products' stores, over chunks of at most ``CUDA_CHUNK_BYTES``
    of activations.

    Parameters
    ----------
    X : device or host array, shape (n_samples, n_features), float32 or float64
    y : device or host array of int, shape (n_samples,) or (n_rows,)
        Class labels in ``[0, n_classes)``: of the rows of ``X``, or of the
        rows ``X[rows]`` when ``rows`` is given.
    coefs : list or tuple of device or host arrays
        ``W_1 ... W_L``, shapes ``(n_features, n_1)``, ..., ``(n_{L-1}, n_classes)``.
    intercepts : list or tuple of device or host arrays
        ``b_1 ... b_L``, shapes ``(n_1,)``, ..., ``(n_classes,)``.
    activation : {'identity', 'logistic', 'tanh', 'relu'}
        The activation ``f`` of the hidden layers (keyword only, required).
    rows : device or host array of int, shape (n_rows,), optional
        The loss and gradients of the samples ``X[rows]``, gathered on the
        device a chunk at a time.
    sample_weight : device or host array, shape like ``y``, X's dtype, optional
        Non-negative weights of the samples (positive sum), as in
        :func:`fusedgrad.kernels.network_loss_grad`; device weights are
        checked by a kernel, without a copy.
    check_finite : bool, default True
        Reject NaN/inf in the inputs (a reduction kernel per device array).

    Returns
    -------
    loss : NumPy scalar of X's dtype
    coef_grads : list of arrays
        Shaped like ``coefs``: device arrays, or NumPy arrays when all inputs
        were host arrays.
    intercept_grads : list of arrays
        Shaped like ``intercepts``.

    Raises
    ------
    TypeError, ValueError
        Naming the argument (``coefs[1]``, ``rows``, ...), before any
        kernel runs; except device labels outside the classes, which the
        kernels find (see :func:`fusedgrad.kernels.cuda.mlp_loss_grad`).
    """
    L, specs = network_specs(X, coefs, intercepts, activation)
    gather = rows is not None
    inp = rt.prepare(
        specs,
        check_finite,
        labels=("y", y, "n_rows" if gather else "n_samples", "n_classes"),
        indices=("rows", rows, "n_samples") if gather else None,
        labels_in_kernel=True,
    )
    Xd, arrays = inp.arrays[0], inp.arrays[1:]
    Ws, bs = arrays[:L], arrays[L:]
    units = units_of(Ws)
    n = inp.indices.shape[0] if gather else Xd.shape[0]
    swd, total = rt.weights(sample_weight, inp.dtype, n, check_finite)
    flat = rt.empty(flat_size(units), inp.dtype)
    loss = rt.device_array(1, np.float64)
    loss_grad_device(Xd, inp.labels, Ws, bs, activation, flat, loss, rows=inp.indices,
                     sample_weight=swd, total=total)
    dWs, dbs = split_flat(flat, units)
    return (rt.loss_value(loss, inp.dtype, inp), [inp.result(g) for g in dWs],
            [inp.result(g) for g in dbs])
