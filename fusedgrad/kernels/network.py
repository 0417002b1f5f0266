"""Loss and gradients of a multi-layer perceptron of any depth, fused over row chunks.

:func:`network_loss_grad` is :func:`fusedgrad.kernels.mlp_loss_grad` for any
number of hidden layers and any of the activations of
:mod:`fusedgrad.kernels.layers`: the whole forward pass, the softmax
cross-entropy and the whole backward pass of a chunk of rows run while the
chunk's activations are in cache, and each group of chunks sums its weight
gradients into its own buffer. One call does what the layer-by-layer kernels
do in ``2 L + 1`` calls, without storing any activation of the whole batch.
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
from fusedgrad.kernels._partition import (
    add_column_sums,
    chunk_of,
    chunk_range,
    plan,
    sum_groups,
)
from fusedgrad.kernels.layers import _IDENTITY, ACTIVATIONS, _activate_rows, _delta_rows
from fusedgrad.kernels.mlp import _NO_ROWS, _NO_WEIGHTS, _mlp_loss_grad
from fusedgrad.kernels.softmax import softmax_ce_rows

__all__ = ["HIDDEN_ACTIVATIONS", "network_loss_grad"]

#: The activations of the hidden layers of :func:`network_loss_grad`.
HIDDEN_ACTIVATIONS = ("identity", "logistic", "tanh", "relu")


@njit(**opt.INLINE)
def _units(buf, offsets, layer, rows, chunk):
    """The ``(rows, width)`` activations of hidden ``layer`` in a chunk buffer
    where each hidden layer owns ``chunk * width`` elements from
    ``chunk * offsets[layer]`` on."""
    start = chunk * offsets[layer]
    width = offsets[layer + 1] - offsets[layer]
    return buf[start:start + rows * width].reshape((rows, width))


@njit(**opt.PARALLEL)
def _network_loss_grad(X, y, rows, gather, sw, weighted, total, Ws, bs, act, w_off, b_off,
                       u_off, dW, db, chunk, groups, serial):
    """Jitted core: writes the gradients of all weights into the flat ``dW`` (the
    matrices one after the other, row-major) and of all biases into ``db``,
    returns the loss.

    Assumes valid, C-contiguous input of one float dtype, labels in range, a
    hidden activation code and single-threaded BLAS (see
    :func:`network_loss_grad`). ``w_off``, ``b_off``: offsets of each layer's
    weights and biases in ``dW``, ``db``; ``u_off``: of each hidden layer's
    units in a row of hidden activations.

    For a chunk of ``m`` rows, with ``A_0`` the chunk of ``X``:

    1. ``A_l = f(A_{l-1} W_l + b_l)`` for the hidden layers, ``Z = A W_L + b_L``
       (gemm, then bias and activation in place);
    2. loss and ``dZ = (softmax(Z) - Y) / N``, in place of ``Z`` (with
       ``weighted``, row ``i`` times ``sw[i]`` and ``N`` is ``total``, the sum
       of the weights);
    3. from the last layer down: ``dW_l += A_{l-1}^T dZ``, ``db_l += sum dZ``;
       below the first layer, ``dA = dZ W_l^T`` and ``dZ <- dA * f'(A_{l-1})``
       (two scratch buffers; with the identity, ``dZ`` is ``dA``).

    ``serial``: run on the calling thread alone (see
    :func:`~fusedgrad.kernels._blas.enter_threads`).
    """
    threads = enter_threads(serial)
    L = len(Ws)
    N = rows.shape[0] if gather else X.shape[0]
    d = X.shape[1]
    K = Ws[L - 1].shape[1]
    dt = X.dtype.type
    inv_n = dt(1.0) / dt(total)
    n_chunks = (N + chunk - 1) // chunk
    hidden = u_off[L - 1]
    widest = 1
    for l in range(L - 1):
        widest = max(widest, u_off[l + 1] - u_off[l])
    n_w = w_off[L]
    n_b = b_off[L]
    # written (beta = 0) by each group's first chunk: no serial zeroing
    pW = np.empty((groups, n_w), X.dtype)
    # bias gradients summed in float64: a float32 column sum over thousands of
    # rows lost up to 1.2e-5 (normwise, N = 2049) against the float64 reference
    pb = np.zeros((groups, n_b), np.float64)
    ploss = np.zeros(groups, np.float64)
    for g in prange(groups):
        acts = np.empty(chunk * max(hidden, 1), X.dtype)
        Z = np.empty((chunk, K), X.dtype)
        dA = np.empty(chunk * widest, X.dtype)
        # dZ of the hidden layers: not written over A or dA, since with an
        # output that is also an input LLVM's runtime alias check fails and
        # the loop runs scalar, branching per element (3.5 ns per element
        # measured for relu, against 0.1 vectorised)
        dZh = np.empty(chunk * widest, X.dtype)
        Xg = np.empty((chunk if gather else 0, d), X.dtype)
        first, stop = chunk_range(g, groups, n_chunks)
        for c in range(first, stop):
            r0 = c * chunk
            r1 = min(N, r0 + chunk)
            m = r1 - r0
            Xc = chunk_of(X, rows, gather, Xg, r0, r1)
            Zc = Z[:m]
            # one call site per BLAS product and per activation: each is inlined
            # with its loop over pieces, and the compile time grows with each site
            A_in = Xc
            for l in range(L):
                A_out = Zc if l == L - 1 else _units(acts, u_off, l, m, chunk)
                mm_nn(A_in, Ws[l], A_out, 0.0)
                _activate_rows(A_out, bs[l], m, _IDENTITY if l == L - 1 else act)
                A_in = A_out
            ploss[g] += softmax_ce_rows(Zc, Zc, y[r0:r1], sw[r0:r1] if weighted else sw,
                                        weighted, m, inv_n)
            beta = 0.0 if c == first else 1.0
            dZ = Zc
            dz_in_da = False  # with the identity, dZ alternates between dA and dZh
            for l in range(L - 1, -1, -1):
                n_in, n_out = Ws[l].shape
                add_column_sums(dZ, m, pb[g][b_off[l]:b_off[l + 1]])
                gW = pW[g][w_off[l]:w_off[l + 1]].reshape((n_in, n_out))
                A_prev = Xc if l == 0 else _units(acts, u_off, l - 1, m, chunk)
                mm_tn(A_prev, dZ, gW, beta)
                if l > 0:
                    # dA = dZ W^T; with the identity it is the next dZ, written to
                    # the buffer dZ is not in
                    out = dZh if act == _IDENTITY and dz_in_da else dA
                    dAc = out[:m * n_in].reshape((m, n_in))
                    mm_nt(dZ, Ws[l], dAc, 0.0)
                    if act == _IDENTITY:
                        dZ = dAc
                        dz_in_da = not dz_in_da
                    else:
                        dZn = dZh[:m * n_in].reshape((m, n_in))
                        _delta_rows(A_prev, dAc, dZn, m, act)
                        dZ = dZn
    sum_groups(pW, dW)
    sum_groups(pb, db)
    loss = 0.0
    for g in range(groups):
        loss += ploss[g]
    leave_threads(threads)
    return dt(loss / total)



def _offsets(Ws):
    """Offsets of each layer's weights, biases and (hidden) units in the flat
    gradient buffers and the chunk buffer of hidden activations (``intp``)."""
    widths = [W.shape[1] for W in Ws]
    sizes = [W.shape[0] * W.shape[1] for W in Ws]
    w_off, b_off = [0], [0]
    for size, width in zip(sizes, widths):
        w_off.append(w_off[-1] + size)
        b_off.append(b_off[-1] + width)
    return (np.array(w_off, np.intp), np.array(b_off, np.intp),
            np.array(b_off[:-1], np.intp))


def _layer_list(name, values):
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"{name} must be a list or tuple of arrays, one per layer, "
                        f"got {type(values).__name__}")
    if len(values) == 0:
        raise ValueError(f"{name} must hold at least one array (the output layer)")
    return list(values)


def network_specs(X, coefs, intercepts, activation):
    """The checks of :func:`network_loss_grad` (and its CUDA twin) before the
    arrays': the activation, the two lists; returns the number of layers and
    the specs of ``X``, ``coefs[i]``, ``intercepts[i]`` for
    :func:`fusedgrad._validate.float_arrays`, their shapes tied by name."""
    if not isinstance(activation, str) or activation not in HIDDEN_ACTIVATIONS:
        raise ValueError(f"activation must be one of {HIDDEN_ACTIVATIONS}, got {activation!r}")
    coefs = _layer_list("coefs", coefs)
    intercepts = _layer_list("intercepts", intercepts)
    if len(coefs) != len(intercepts):
        raise ValueError(f"coefs and intercepts must have one array per layer, got "
                         f"{len(coefs)} and {len(intercepts)}")
    L = len(coefs)
    units = ["n_features"] + [f"n_units[{i}]" for i in range(1, L)] + ["n_classes"]
    specs = [("X", X, ("n_samples", "n_features"))]
    specs += [(f"coefs[{i}]", W, (units[i], units[i + 1])) for i, W in enumerate(coefs)]
    specs += [(f"intercepts[{i}]", b, (units[i + 1],)) for i, b in enumerate(intercepts)]
    return L, specs


def network_loss_grad(X, y, coefs, intercepts, *, activation, rows=None, sample_weight=None,
                      check_finite=True, _max_chunk_rows=None):
    r"""Loss and gradients of a multi-layer perceptron classifier, forward and backward fused.

    The network :math:`A_0 = X`, :math:`A_l = f(A_{l-1} W_l + b_l)` for the
    hidden layers :math:`l = 1 \dots L-1`, :math:`\hat Y = \operatorname{softmax}(A_{L-1} W_L + b_L)`,
    with mean categorical cross-entropy; :func:`~fusedgrad.kernels.mlp_loss_grad`
    is the case of one logistic hidden layer. The backward pass:

    .. math::
        \delta_L = \frac{\hat Y - Y}{N}, \quad
        \frac{\partial L}{\partial W_l} = A_{l-1}^T \delta_l, \quad
        \frac{\partial L}{\partial b_l} = \textstyle\sum_{\text{rows}} \delta_l, \quad
        \delta_{l-1} = \delta_l W_l^T \odot f'(A_{l-1})

    with :math:`f'` written in terms of the activations, as in
    :func:`~fusedgrad.kernels.layers.affine_activation_backward`. ``X`` is
    processed in row chunks, one group of chunks per thread, every layer of a
    chunk while it is in cache: the extra memory is
    ``O(groups * (chunk * sum(units) + n_weights))``, independent of
    ``n_samples``, and the result is bit-identical for any number of threads.

    Parameters
    ----------
    X : array_like, shape (n_samples, n_features), float32 or float64
    y : array_like of int, shape (n_samples,) or (n_rows,)
        Class labels in ``[0, n_classes)``: of the rows of ``X``, or of the
        rows ``X[rows]`` when ``rows`` is given.
    coefs : list or tuple of array_like
        The weight matrices ``W_1 ... W_L``, shapes ``(n_features, n_1)``,
        ``(n_1, n_2)``, ..., ``(n_{L-1}, n_classes)``.
    intercepts : list or tuple of array_like
        The biases ``b_1 ... b_L``, shapes ``(n_1,)``, ..., ``(n_classes,)``.
    activation : {'identity', 'logistic', 'tanh', 'relu'}
        The activation ``f`` of the hidden layers (keyword only, required).
    rows : array_like of int, shape (n_rows,), optional
        Compute the loss and gradients of the samples ``X[rows]`` without
        forming ``X[rows]`` (gathered a chunk at a time into a buffer that
        stays in cache); the result equals that of ``X[rows]``, bit for bit.
    sample_weight : array_like, shape like ``y``, X's dtype, optional
        Non-negative weights of the samples (with a positive sum): the weighted
        mean of the cross-entropy, :math:`\sum_i s_i \ell_i / \sum_i s_i`,
        replaces the mean, so row ``i`` of :math:`\delta_L` is
        :math:`s_i (\hat y_i - y_i) / \sum s` (scikit-learn's weighting).
    check_finite : bool, default True
        Reject NaN/inf in the inputs (one extra pass over all of ``X``).

    Returns
    -------
    loss : scalar of X's dtype
    coef_grads : list of ndarray
        Shaped like ``coefs``, in X's dtype.
    intercept_grads : list of ndarray
        Shaped like ``intercepts``.

    Raises
    ------
    TypeError, ValueError
        Naming the argument (``coefs[1]``, ``intercepts[0]``, ...), before any
        compiled loop runs.
    """
    L, specs = network_specs(X, coefs, intercepts, activation)
    gather = rows is not None
    X, *arrays = _validate.float_arrays(specs, check_finite,
                                        labels=None if gather else ("y", y))
    Ws, bs = tuple(arrays[:L]), tuple(arrays[L:2 * L])
    N, d = X.shape
    K = Ws[-1].shape[1]
    if gather:
        rows = _validate.indices("rows", rows, N)
        N = rows.shape[0]
        y = _validate.labels("y", y, N, K)
    else:
        rows = _NO_ROWS
        y = arrays[2 * L]
    sw, total = _validate.row_weights(sample_weight, X.dtype, N, check_finite,
                                      "rows" if gather else "X")
    w_off, b_off, u_off = _offsets(Ws)
    item = X.itemsize
    widths = [W.shape[1] for W in Ws]
    hidden = int(u_off[-1])
    widest = max(widths[:-1], default=0)
    chunk, groups = plan(N, (d + hidden + 2 * widest + K) * item,
                         int(w_off[-1] + b_off[-1]) * item, _max_chunk_rows)
    dW = np.empty(int(w_off[-1]), X.dtype)
    db = np.empty(int(b_off[-1]), X.dtype)
    serial = serial_call("network_loss_grad", (X, *Ws))
    with kernel_blas(serial):
        loss = _network_loss_grad(X, y, rows, gather, sw, sw.shape[0] > 0, total, Ws, bs,
                                  ACTIVATIONS.index(activation), w_off, b_off, u_off, dW, db,
                                  chunk, groups, serial)
    coef_grads = [dW[w_off[i]:w_off[i + 1]].reshape(W.shape) for i, W in enumerate(Ws)]
    intercept_grads = [db[b_off[i]:b_off[i + 1]] for i in range(L)]
    return X.dtype.type(loss), coef_grads, intercept_grads


class PreparedLossGrad:
    """Loss and gradients of one network, called many times in a training loop.

    For the models: they check ``X``, the labels and the parameters once per
    fit, so each step runs only the compiled core (of
    :func:`~fusedgrad.kernels.mlp_loss_grad` for the lecture's network, one
    logistic hidden layer, else of :func:`network_loss_grad`), with no
    validation and no new gradient buffers (the wrappers' checks cost 35-60
    us per call, as much as the whole step at 200 rows).

    Parameters
    ----------
    coefs, intercepts : list of ndarray
        C-contiguous, of one float dtype, shapes as in
        :func:`network_loss_grad`. They are used by reference: updating them
        in place between calls is what a training loop does.
    activation : str
        One of :data:`HIDDEN_ACTIVATIONS`.

    Calling it with ``X`` (C-contiguous, the parameters' dtype, finite),
    ``y`` (``intp`` labels in range, one per sample) and optionally ``rows``
    (``intp`` indices into ``X``) and ``sample_weight`` (the weights of the
    samples, in X's dtype, and ``total``, their float64 sum; checked by the
    caller) returns ``(loss, grads)``: a float and the
    list ``coef_grads + intercept_grads``. The gradient arrays are reused:
    each call overwrites those of the previous one. Must be called inside
    :func:`~fusedgrad.kernels._blas.single_threaded_blas`.
    """

    def __init__(self, coefs, intercepts, activation):
        self.Ws, self.bs = tuple(coefs), tuple(intercepts)
        dtype = self.Ws[0].dtype
        for name, arrays in (("coefs", self.Ws), ("intercepts", self.bs)):
            for i, a in enumerate(arrays):
                if not (a.flags.c_contiguous and a.dtype == dtype and a.dtype.kind == "f"):
                    # the compiled core reads every array as C-contiguous
                    raise ValueError(f"{name}[{i}] must be a C-contiguous array of "
                                     f"{dtype} (got {a.dtype}, C-contiguous: "
                                     f"{a.flags.c_contiguous})")
        L = len(self.Ws)
        self.lecture = L == 2 and activation == "logistic"
        self.act = ACTIVATIONS.index(activation)
        widths = [W.shape[1] for W in self.Ws]
        self.w_off, self.b_off, self.u_off = _offsets(self.Ws)
        self.dW = np.empty(int(self.w_off[-1]), dtype)
        self.db = np.empty(int(self.b_off[-1]), dtype)
        self.grads = ([self.dW[self.w_off[i]:self.w_off[i + 1]].reshape(W.shape)
                       for i, W in enumerate(self.Ws)]
                      + [self.db[self.b_off[i]:self.b_off[i + 1]] for i in range(L)])
        d, item = self.Ws[0].shape[0], dtype.itemsize
        hidden, widest = int(self.u_off[-1]), max(widths[:-1], default=0)
        if self.lecture:
            self.row_bytes = (d + 2 * widths[0] + widths[1]) * item
        else:
            self.row_bytes = (d + hidden + 2 * widest + widths[-1]) * item
        self.group_bytes = int(self.w_off[-1] + self.b_off[-1]) * item
        self._plans = {}

    def __call__(self, X, y, rows=None, sample_weight=None, total=None):
        gather = rows is not None
        n = rows.shape[0] if gather else X.shape[0]
        chunking = self._plans.get(n)
        if chunking is None:
            # the weights and the n rows the step reads
            serial = serial_call("mlp_loss_grad" if self.lecture else "network_loss_grad",
                                 self.Ws, n * X.shape[1] * X.itemsize)
            chunking = self._plans[n] = plan(n, self.row_bytes, self.group_bytes) + (serial,)
        chunk, groups, serial = chunking
        rows = rows if gather else _NO_ROWS
        weighted = sample_weight is not None
        if weighted:
            sw = sample_weight
        else:
            sw, total = _NO_WEIGHTS[X.dtype.type], float(n)
        if self.lecture:
            dW1, dW2, db1, db2 = self.grads
            loss = _mlp_loss_grad(X, y, rows, gather, sw, weighted, total, self.Ws[0],
                                  self.bs[0], self.Ws[1], self.bs[1], dW1, db1, dW2, db2,
                                  chunk, groups, serial)
        else:
            loss = _network_loss_grad(X, y, rows, gather, sw, weighted, total, self.Ws,
                                      self.bs, self.act, self.w_off, self.b_off, self.u_off,
                                      self.dW, self.db, chunk, groups, serial)
        return float(loss), self.grads
