"""Small kernels of the models' training loops on the GPU (``device='cuda'``).

Everything a fit needs between two gradient evaluations, so that the data
and the parameters stay on the device for the whole fit:

* :func:`gather_rows` builds a minibatch from a device array of row indices;
* :func:`sgd_update` and :func:`adam_update` update a flat parameter vector
  in place with the optimizers' formulas of :mod:`fusedgrad.models.mlp`
  (the same operations in the same order, in the parameters' dtype), adding
  the L2 term ``l2 * W`` to the gradient of the weight entries, and leave
  per-block sums of the squared weights for the L2 loss;
* :func:`accumulate_loss` adds a batch's loss to a device accumulator, and
  :func:`count_nonfinite` / :func:`count_correct` add the epoch's checks to
  it, so that one copy of a few numbers per epoch brings them to the host;
* :func:`logits`, :func:`softmax_rows`, :func:`argmax_rows`: the forward
  pass of a network for prediction;
* :func:`column_means`, :func:`center`, :func:`gd_step`: the linear model.

All functions take numba device arrays and launch kernels on the default
stream; none copies anything to the host.
"""

import functools
import math

import numpy as np
from numba import types

from fusedgrad.kernels import _options as opt
from fusedgrad.kernels.cuda import _gemm
from fusedgrad.kernels.cuda import _runtime as rt
from fusedgrad.kernels.cuda._device import helpers
from fusedgrad.kernels.cuda._runtime import cuda, jit

__all__ = [
    "gather_rows",
    "sgd_update",
    "adam_update",
    "accumulate_loss",
    "count_nonfinite",
    "count_correct",
    "logits",
    "softmax_rows",
    "argmax_rows",
    "column_means",
    "center",
    "gd_step",
    "copy",
]


def _blocks(n, tpb):
    return rt.grid_size(-(-max(int(n), 1) // tpb))


# ---------------------------------------------------------------------------
# Minibatches
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _gather_kernel(with_y):
    @jit()
    def kernel(X, y, rows, Xb, yb):
        d = X.shape[1]
        e = cuda.grid(1)
        step = cuda.gridsize(1)
        while e < Xb.shape[0] * d:
            r = e // d
            c = e - r * d
            src = rows[r]
            Xb[r, c] = X[src, c]
            if with_y and c == 0:
                yb[r] = y[src]
            e += step

    return kernel


def gather_rows(X, y, rows, Xb, yb):
    """``Xb[:] = X[rows]`` and ``yb[:] = y[rows]`` (device arrays, ``len(rows)``
    rows); with ``y`` None only ``Xb`` (``yb`` is then not used)."""
    tpb = opt.CUDA_TPB
    with_y = y is not None
    if not with_y:
        y = yb = rows
    rt.launch(_gather_kernel(with_y), _blocks(Xb.shape[0] * X.shape[1], tpb), tpb,
              X, y, rows, Xb, yb)


def copy(src, dst):
    """``dst[:] = src`` for 1-D device arrays of one length."""
    _, copy1d, _ = rt._copy_kernels()
    tpb = opt.CUDA_TPB
    rt.launch(copy1d, _blocks(dst.shape[0], tpb), tpb, src, dst)


# ---------------------------------------------------------------------------
# Optimizer updates on a flat parameter vector [W1 | b1 | W2 | b2 | ...]
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _update_kernels(dtype, tpb, shuffle):
    dt = np.dtype(dtype).type
    zero = dt(0.0)
    _d_block_sum = helpers(np.dtype(dtype), tpb, shuffle)._d_block_sum

    @jit(device=True)
    def _d_weight_term(i, pi, gi, l2, biases):
        # the L2 term added to a weight entry's gradient, and its square (float64)
        # for the loss; the bias entries, [biases[l, 0], biases[l, 1]) for each
        # layer l, have neither
        for layer in range(biases.shape[0]):
            if i >= biases[layer, 0] and i < biases[layer, 1]:
                return gi, 0.0
        if l2 != zero:
            gi = gi + l2 * pi
        return gi, np.float64(pi) * np.float64(pi)

    @jit(device=True)
    def _d_store_block_sum(red, sq, sq_part):
        total = _d_block_sum(red, sq)
        if cuda.threadIdx.x == 0:
            sq_part[cuda.blockIdx.x] = total

    @jit()
    def sgd(p, g, v, lr, mu, nesterov, l2, biases, sq_part):
        red = cuda.shared.array(tpb, dtype=types.float64)
        sq = 0.0
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < p.shape[0]:
            pi = p[i]
            gi = g[i]
            gi, w2 = _d_weight_term(i, pi, gi, l2, biases)
            sq += w2
            gi = gi * lr
            if mu == zero:
                p[i] = pi - gi
            else:
                vi = v[i] * mu
                vi = vi - gi
                v[i] = vi
                if nesterov:
                    s = vi * mu
                    s = s - gi
                    p[i] = pi + s
                else:
                    p[i] = pi + vi
            i += step
        _d_store_block_sum(red, sq, sq_part)

    @jit()
    def adam(p, g, m, v, neg_lr, b1, b2, one_b1, one_b2, eps, l2, biases, sq_part):
        red = cuda.shared.array(tpb, dtype=types.float64)
        sq = 0.0
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < p.shape[0]:
            pi = p[i]
            gi = g[i]
            gi, w2 = _d_weight_term(i, pi, gi, l2, biases)
            sq += w2
            mi = m[i] * b1
            mi = mi + gi * one_b1
            m[i] = mi
            vi = v[i] * b2
            t = gi * gi
            t = t * one_b2
            vi = vi + t
            v[i] = vi
            t = math.sqrt(vi)
            t = t + eps
            s = mi * neg_lr
            s = s / t
            p[i] = pi + s
            i += step
        _d_store_block_sum(red, sq, sq_part)

    return sgd, adam


def update_blocks(n):
    """Blocks of an update of ``n`` parameters (the length of its ``sq_part``)."""
    return _blocks(n, opt.CUDA_TPB)


def bias_ranges(units):
    """The ``[start, stop)`` of each layer's biases in the flat parameter vector
    ``[W1 | b1 | W2 | b2 | ...]`` of a network of ``units``
    (``[n_features, n_1, ..., n_classes]``), as an ``(L, 2)`` int64 device
    array: the ``biases`` argument of the updates."""
    out, o = [], 0
    for n_in, n_out in zip(units[:-1], units[1:]):
        o += n_in * n_out
        out.append((o, o + n_out))
        o += n_out
    return cuda.to_device(np.array(out, np.int64))


def sgd_update(p, g, v, lr, momentum, nesterov, l2, biases, sq_part):
    """Gradient descent with momentum on the flat parameters ``p``, in place.

    ``g <- g + l2 p`` on the weight entries, ``g <- lr g``; then
    ``p <- p - g`` when ``momentum`` is 0, else ``v <- momentum v - g`` and
    ``p <- p + v`` (or ``p + (momentum v - g)`` with Nesterov's momentum).
    Every constant is rounded to the parameters' dtype first, as NumPy does
    with a Python float. ``biases`` (:func:`bias_ranges`) says which entries
    are biases; every other entry is a weight. ``sq_part[b]`` receives block
    ``b``'s sum of the squared weights (before the update), in float64.
    """
    dt = np.dtype(p.dtype).type
    tpb = opt.CUDA_TPB
    sgd, _ = _update_kernels(np.dtype(p.dtype), tpb, rt.use_shuffle())
    rt.launch(sgd, sq_part.shape[0], tpb, p, g, v, dt(lr), dt(momentum), bool(nesterov),
              dt(l2), biases, sq_part)


def adam_update(p, g, m, v, lr, beta_1, beta_2, epsilon, l2, biases, sq_part):
    """Adam's step on the flat parameters ``p``, in place (``lr`` already bias-corrected):
    ``m <- b1 m + (1 - b1) g``, ``v <- b2 v + (1 - b2) g^2``,
    ``p <- p + (-lr m) / (sqrt(v) + eps)``. L2 term and ``sq_part`` as
    :func:`sgd_update`."""
    dt = np.dtype(p.dtype).type
    tpb = opt.CUDA_TPB
    _, adam = _update_kernels(np.dtype(p.dtype), tpb, rt.use_shuffle())
    rt.launch(adam, sq_part.shape[0], tpb, p, g, m, v, dt(-lr), dt(beta_1), dt(beta_2),
              dt(1 - beta_1), dt(1 - beta_2), dt(epsilon), dt(l2), biases, sq_part)


# ---------------------------------------------------------------------------
# Epoch statistics: acc = [sum of n_b * batch loss, non-finite count, correct count]
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _stat_kernels(tpb, shuffle):
    _d_block_sum = helpers(np.dtype(np.float64), tpb, shuffle)._d_block_sum

    @jit()
    def accumulate(acc, loss, sq_part, n_rows, half_alpha):
        if cuda.grid(1) == 0:
            sq = 0.0
            for b in range(sq_part.shape[0]):
                sq += sq_part[b]
            acc[0] += loss[0] * n_rows + half_alpha * sq

    @jit(device=True)
    def _d_add_block_count(buf, count, acc, slot):
        # acc[slot] += the block's sum of the threads' counts, one atomic per
        # block (integers: exact, order-free)
        total = _d_block_sum(buf, count)
        if cuda.threadIdx.x == 0 and total > 0:
            cuda.atomic.add(acc, slot, np.float64(total))

    @jit(device=True)
    def _d_first_argmax(Z, r):
        best = 0
        for k in range(1, Z.shape[1]):
            if Z[r, k] > Z[r, best]:
                best = k
        return best

    @jit()
    def correct_weights(Z, y, w, out):
        # out[r] = w[r] where the row's first largest logit is at the label, else 0
        r = cuda.grid(1)
        step = cuda.gridsize(1)
        while r < Z.shape[0]:
            out[r] = np.float64(w[r]) if _d_first_argmax(Z, r) == y[r] else 0.0
            r += step

    @jit()
    def correct(Z, y, acc, slot):
        # rows whose first largest logit is at the label
        buf = cuda.shared.array(tpb, dtype=types.int64)
        count = 0
        r = cuda.grid(1)
        step = cuda.gridsize(1)
        while r < Z.shape[0]:
            if _d_first_argmax(Z, r) == y[r]:
                count += 1
            r += step
        _d_add_block_count(buf, count, acc, slot)

    return accumulate, correct, correct_weights


def accumulate_loss(acc, loss, sq_part, n_rows, alpha):
    """``acc[0] += n_rows * loss[0] + alpha / 2 * sum(sq_part)``: a batch's
    loss with the L2 term, times its rows (``loss``: the mean cross-entropy)."""
    accumulate, _, _ = _stat_kernels(opt.CUDA_TPB, rt.use_shuffle())
    rt.launch(accumulate, 1, 1, acc, loss, sq_part, float(n_rows), 0.5 * float(alpha))


def count_nonfinite(a, acc, slot):
    """``acc[slot] += number of NaN/inf in the 1-D device array a``: the input
    checks' kernel (:func:`fusedgrad.kernels.cuda._runtime._check_kernels`),
    whose integer atomic add is converted to ``acc``'s float64."""
    tpb = opt.CUDA_TPB
    nonfinite, _ = rt._check_kernels(tpb, opt.CUDA_CHECK_UNROLL)
    rt.launch(nonfinite, _blocks(a.shape[0], tpb), tpb, a, acc, slot)


def count_correct(Z, y, acc, slot):
    """``acc[slot] += number of rows of Z whose (first) largest entry is at y``."""
    tpb = opt.CUDA_TPB
    _, correct, _ = _stat_kernels(tpb, rt.use_shuffle())
    rt.launch(correct, _blocks(Z.shape[0], tpb), tpb, Z, y, acc, slot)


def sum_correct_weights(Z, y, w, hits, acc, slot):
    """``acc[slot] += sum of w[r] over the rows of Z whose (first) largest entry is
    at y[r]``, in a fixed order (``hits``: a float64 device array of Z's rows)."""
    tpb = opt.CUDA_TPB
    _, _, correct_weights = _stat_kernels(tpb, rt.use_shuffle())
    rt.launch(correct_weights, _blocks(Z.shape[0], tpb), tpb, Z, y, w, hits)
    rt.sum_partials(hits.reshape(hits.shape[0], 1), acc[slot:slot + 1], 1.0, True)


# ---------------------------------------------------------------------------
# Prediction: the forward pass of a network
# ---------------------------------------------------------------------------


def logits(X, Ws, bs, activation, As, Z):
    """The output layer's ``Z = A_{L-1} W_L + b_L`` of the network ``Ws, bs``
    with hidden activation ``activation``; ``As`` (one array per hidden layer)
    receive the hidden activations."""
    prev = X
    for W, b, A in zip(Ws[:-1], bs[:-1], As):
        _gemm.matmul(prev, W, A, epi=_gemm.FORWARD_EPI[activation], bias=b)
        prev = A
    _gemm.matmul(prev, Ws[-1], Z, epi=_gemm.EPI_BIAS, bias=bs[-1])
    return Z


@functools.lru_cache(maxsize=None)
def _row_kernels(dtype):
    # The sum starts from a zero of Z's dtype: ``Z[r, 0] * 0`` (an int64 zero)
    # would make it, and the divisions, float64 in a float32 kernel.
    zero = np.dtype(dtype).type(0.0)

    @jit()
    def softmax(Z):
        r = cuda.grid(1)
        step = cuda.gridsize(1)
        K = Z.shape[1]
        while r < Z.shape[0]:
            m = Z[r, 0]
            for k in range(1, K):
                m = max(m, Z[r, k])
            s = zero
            for k in range(K):
                e = math.exp(Z[r, k] - m)
                Z[r, k] = e
                s += e
            for k in range(K):
                Z[r, k] = Z[r, k] / s
            r += step

    @jit()
    def argmax(Z, out):
        r = cuda.grid(1)
        step = cuda.gridsize(1)
        while r < Z.shape[0]:
            best = 0
            for k in range(1, Z.shape[1]):
                if Z[r, k] > Z[r, best]:
                    best = k
            out[r] = best
            r += step

    return softmax, argmax


def softmax_rows(Z):
    """The softmax of each row of ``Z``, in place (the row max subtracted first)."""
    softmax, _ = _row_kernels(np.dtype(Z.dtype))
    tpb = opt.CUDA_TPB
    rt.launch(softmax, _blocks(Z.shape[0], tpb), tpb, Z)


def argmax_rows(Z, out):
    """``out[r]`` = the first column of the largest entry of row ``r``."""
    _, argmax = _row_kernels(np.dtype(Z.dtype))
    tpb = opt.CUDA_TPB
    rt.launch(argmax, _blocks(Z.shape[0], tpb), tpb, Z, out)


# ---------------------------------------------------------------------------
# The linear model
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _linear_kernels(dtype, tpb, shuffle):
    dt = np.dtype(dtype).type
    one = dt(1.0)
    _d_block_sum = helpers(np.dtype(dtype), tpb, shuffle)._d_block_sum

    @jit()
    def colsum(X, y, sw, weighted, part, rows_per_block):
        # part[b * L + lane, c]: float64 sum of column c of [X, y] over the
        # rows r0 + lane, r0 + lane + L, ... of block b's row range (each row
        # times its weight sw[r] when weighted).
        d = X.shape[1]
        W = d + 1
        tid = cuda.threadIdx.x
        if tpb >= W:
            L = tpb // W
            lane = tid // W
            c = tid - lane * W
            cstep = W
        else:
            L = 1
            lane = 0
            c = tid
            cstep = tpb
        if lane < L:
            b = cuda.blockIdx.x
            r0 = b * rows_per_block
            r1 = min(X.shape[0], r0 + rows_per_block)
            while c < W:
                s = 0.0
                r = r0 + lane
                while r < r1:
                    if c < d:
                        v = np.float64(X[r, c])
                    else:
                        v = np.float64(y[r])
                    if weighted:
                        v *= np.float64(sw[r])
                    s += v
                    r += L
                part[b * L + lane, c] = s
                c += cstep

    @jit()
    def shift(X, y, mean, scale, scaled):
        d = X.shape[1]
        e = cuda.grid(1)
        step = cuda.gridsize(1)
        while e < X.shape[0] * d:
            r = e // d
            c = e - r * d
            a = scale[r] if scaled else one  # times 1: the same bits
            X[r, c] = (X[r, c] - dt(mean[c])) * a
            if c == 0:
                y[r] = (y[r] - dt(mean[d])) * a
            e += step

    @jit()
    def step(w, grad, lr, w_next, loss, stats):
        # one block: stats = [loss, ||grad||^2 in float64]; w_next = w - lr grad
        red = cuda.shared.array(tpb, dtype=types.float64)
        tid = cuda.threadIdx.x
        s = 0.0
        j = tid
        while j < w.shape[0]:
            g = grad[j]
            s += np.float64(g) * np.float64(g)
            w_next[j] = w[j] - lr * g
            j += tpb
        total = _d_block_sum(red, s)
        if tid == 0:
            stats[0] = loss[0]
            stats[1] = total

    return colsum, shift, step


def column_means(X, y, mean, sample_weight=None, total=None):
    """``mean[:d]`` = the column means of ``X``, ``mean[d]`` that of ``y``, in float64;
    with ``sample_weight`` (a device array of X's dtype, summing to ``total``)
    the weighted means.

    Each block sums a range of rows, several threads per column, into its own
    partial row; the partials are added in a fixed order.
    """
    N, d = X.shape
    tpb = opt.CUDA_TPB
    colsum, _, _ = _linear_kernels(np.dtype(X.dtype), tpb, rt.use_shuffle())
    lanes = max(1, tpb // (d + 1))
    blocks = rt.grid_size(-(-N // tpb))
    rows_per_block = -(-N // blocks)
    blocks = -(-N // rows_per_block)
    part = cuda.device_array((blocks * lanes, d + 1), np.float64)
    weighted = sample_weight is not None
    sw = sample_weight if weighted else cuda.device_array(0, X.dtype)
    rt.launch(colsum, blocks, tpb, X, y, sw, weighted, part, rows_per_block)
    rt.sum_partials(part, mean, 1.0 / (total if weighted else N))
    return mean


def center(X, y, mean, scale=None):
    """``X -= mean[:d]`` and ``y -= mean[d]`` in place (the means rounded to X's dtype);
    then each row of both times ``scale`` (a device array of X's dtype), if given."""
    tpb = opt.CUDA_TPB
    _, shift, _ = _linear_kernels(np.dtype(X.dtype), tpb, rt.use_shuffle())
    scaled = scale is not None
    if not scaled:
        scale = cuda.device_array(0, X.dtype)
    rt.launch(shift, _blocks(X.size, tpb), tpb, X, y, mean, scale, scaled)


def gd_step(w, grad, lr, w_next, loss, stats):
    """``w_next = w - lr * grad``; ``stats = [loss[0], ||grad||^2]`` (float64), one block."""
    tpb = opt.CUDA_TPB
    _, _, step = _linear_kernels(np.dtype(w.dtype), tpb, rt.use_shuffle())
    rt.launch(step, 1, tpb, w, grad, np.dtype(w.dtype).type(lr), w_next, loss, stats)
