"""OLS linear regression on the GPU: loss and gradient in one pass over X, and the Gram matrix."""

import functools

import numba
import numpy as np
from numba import types

from fusedgrad.kernels import _options as opt
from fusedgrad.kernels.cuda import _gemm
from fusedgrad.kernels.cuda import _runtime as rt
from fusedgrad.kernels.cuda._device import helpers
from fusedgrad.kernels.cuda._runtime import cuda, jit

__all__ = ["ols_loss_grad", "gram", "loss_grad_device"]


def _pow2_floor(n):
    return 1 << (max(1, int(n)).bit_length() - 1)


def _plan(d, itemsize, tpb):
    """Rows per tile of the one-pass kernel, or 0 when a row does not fit."""
    D1 = d | 1  # odd row stride: rows start in different shared-memory banks
    fixed = itemsize * (d + 2 * tpb) + 8 * tpb
    R = min(opt.CUDA_OLS_MAX_ROWS, tpb)
    while R >= 1 and fixed + itemsize * R * (D1 + 1) > opt.CUDA_SHARED_BYTES:
        R //= 2
    return _pow2_floor(R) if R >= 1 else 0


@functools.lru_cache(maxsize=None)
def _ols_kernel(dtype, d, R, tpb, shuffle, prefetch=True):
    """One pass over X: a block stages a tile of R rows in shared memory
    (coalesced loads), computes the R residuals with ``tpb / R`` threads per
    row, then adds ``r_i x_i`` to the gradient sums its threads keep in
    registers (column ``j``, row lane ``p``) across all its tiles.

    With ``prefetch`` a full tile is read into registers (a thread's
    ``ceil(R d / tpb)`` loads issued together) and the block's next tile is
    read while it works on this one, as in the staged softmax kernel; the
    last, partial tile takes the plain loop. The tile and the global reads
    are indexed by unsigned offsets and the loops over a row or a column run
    on them (SASS, sm_90, float32, d = 16: the tile loop 659 -> 352
    instructions, the plain copy 53 -> 5 an element, the gradient sums 9.5 ->
    4.75 a row)."""
    dt = np.dtype(dtype).type
    nbt = numba.from_dtype(np.dtype(dtype))
    zero = dt(0.0)
    D1 = d | 1
    G = tpb // R  # threads per row in the dot products
    CW = min(d, tpb)  # gradient columns per pass
    P = tpb // CW  # gradient row lanes
    Q = -(-d // CW)  # columns per thread
    _d_block_sum = helpers(np.dtype(dtype), tpb, shuffle)._d_block_sum
    RD = R * d
    LT = -(-RD // tpb)  # loads per thread of a full tile
    # ptxas (sm_90, float32): d = 16 takes 72 registers with the prefetch (62
    # without); at d = 128 a thread would hold 32 values across the tile's
    # work (240 registers in a first build, one block per SM).
    prefetch = prefetch and LT <= 8

    u = np.uint32
    XN = R * D1
    ud, uD1, uG, uP, uPD1, uT, uRD = u(d), u(D1), u(G), u(P), u(P * D1), u(tpb), np.uint64(RD)

    @jit()
    def kernel(Xf, y, w, loss_part, grad_part):
        # Xf: X (N, d) viewed flat (a tile is RD consecutive values); the
        # tile and the global reads are indexed by unsigned offsets (numba
        # tests a signed index for wrap-around on every access)
        Xs = cuda.shared.array(XN, dtype=nbt)  # row r at r * D1
        ws = cuda.shared.array(D1, dtype=nbt)
        rs = cuda.shared.array(R, dtype=nbt)
        buf = cuda.shared.array(tpb, dtype=nbt)
        red = cuda.shared.array(tpb, dtype=types.float64)
        gacc = cuda.local.array(Q, dtype=nbt)
        held = cuda.local.array(LT, dtype=nbt)
        tid = cuda.threadIdx.x
        N = y.shape[0]
        for q in range(Q):
            gacc[q] = zero
        j = tid
        while j < d:
            ws[j] = w[j]
            j += tpb
        row = tid // G
        g = tid - row * G
        lane = tid // CW
        col = tid - lane * CW
        loss = 0.0
        n_tiles = (N + R - 1) // R
        t = cuda.blockIdx.x
        have = False
        if prefetch and t < n_tiles and (t + 1) * R <= N:
            g0 = np.uint64(t) * uRD + u(tid)
            for q in range(LT):
                if tid + q * tpb < RD:
                    held[q] = Xf[g0 + u(q * tpb)]
            have = True
        while t < n_tiles:
            r0 = t * R
            rows = min(R, N - r0)
            yv = zero
            if tid < rows:
                yv = y[r0 + tid]
            if have:
                for q in range(LT):
                    e = u(tid) + u(q * tpb)
                    if tid + q * tpb < RD:
                        rr = e // ud
                        Xs[rr * uD1 + (e - rr * ud)] = held[q]
            else:
                e = u(tid)
                e_end = u(rows) * ud
                g0 = np.uint64(r0) * ud
                while e < e_end:
                    rr = e // ud
                    Xs[rr * uD1 + (e - rr * ud)] = Xf[g0 + e]
                    e += uT
            cuda.syncthreads()
            if prefetch:  # the next tile's loads, in flight during this one
                tn = t + cuda.gridDim.x
                have = tn < n_tiles and (tn + 1) * R <= N
                if have:
                    g0 = np.uint64(tn) * uRD + u(tid)
                    for q in range(LT):
                        if tid + q * tpb < RD:
                            held[q] = Xf[g0 + u(q * tpb)]
            s = zero
            if row < rows:
                xo = u(row) * uD1 + u(g)
                c = u(g)
                while c < ud:
                    s += Xs[xo] * ws[c]
                    xo += uG
                    c += uG
            buf[tid] = s
            cuda.syncthreads()
            if tid < rows:
                s = zero
                for q in range(G):
                    s += buf[u(tid) * uG + u(q)]
                r = yv - s
                rs[tid] = r
                loss += np.float64(r) * np.float64(r)
            cuda.syncthreads()
            if lane < P:
                for q in range(Q):
                    c = col + q * CW
                    if c < d:
                        acc = gacc[q]
                        ro = u(lane)
                        xo = u(lane) * uD1 + u(c)
                        r_end = u(rows)
                        while ro < r_end:
                            acc += rs[ro] * Xs[xo]
                            ro += uP
                            xo += uPD1
                        gacc[q] = acc
            cuda.syncthreads()
            t += cuda.gridDim.x
        total = _d_block_sum(red, loss)
        if tid == 0:
            loss_part[cuda.blockIdx.x] = total
        for q in range(Q):
            buf[tid] = gacc[q]
            cuda.syncthreads()
            c = col + q * CW
            if lane == 0 and c < d:
                s = buf[tid]
                for p in range(1, P):
                    s += buf[p * CW + tid]
                grad_part[cuda.blockIdx.x, c] = s
            cuda.syncthreads()

    return kernel


@functools.lru_cache(maxsize=None)
def _residual_kernel(dtype, tpb, shuffle):
    """``rn = -(y - Xw) / N`` from ``Xw``, and per-block sums of the squared residuals."""
    _d_block_sum = helpers(np.dtype(dtype), tpb, shuffle)._d_block_sum

    @jit()
    def kernel(Xw, y, rn, inv_n, loss_part):
        red = cuda.shared.array(tpb, dtype=types.float64)
        loss = 0.0
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < y.shape[0]:
            r = y[i] - Xw[i, 0]
            loss += np.float64(r) * np.float64(r)
            rn[i, 0] = -r * inv_n
            i += step
        total = _d_block_sum(red, loss)
        if cuda.threadIdx.x == 0:
            loss_part[cuda.blockIdx.x] = total

    return kernel


def ols_loss_grad(X, y, w, *, check_finite=True):
    r"""OLS loss and gradient in one pass over ``X``, on the GPU.

    Same semantics as :func:`fusedgrad.kernels.ols_loss_grad`:

    .. math::
        L(w) = \frac{1}{2n} \lVert y - w X^T \rVert^2, \qquad
        \nabla L(w) = -\frac1n \textstyle\sum_i r_i x_i, \quad r_i = y_i - x_i w

    A block stages tiles of rows in shared memory; residuals and the
    gradient sums are formed from the staged tile, so X is read once. The
    per-block sums are added in a fixed order; the loss is summed in float64.
    When one row does not fit in shared memory, two passes are made instead
    (``Xw``, then ``X^T r``).

    Parameters
    ----------
    X : device or host array, shape (n_samples, n_features), float32 or float64
    y : device or host array, shape (n_samples,), X's dtype
    w : device or host array, shape (n_features,), X's dtype
    check_finite : bool, default True

    Returns
    -------
    loss : NumPy scalar of X's dtype
    grad : array, shape (n_features,)
    """
    inp = rt.prepare(
        [("X", X, ("n_samples", "n_features")), ("y", y, ("n_samples",)),
         ("w", w, ("n_features",))],
        check_finite,
    )
    Xd, yd, wd = inp.arrays
    grad = rt.empty(Xd.shape[1], inp.dtype)
    loss = rt.device_array(1, np.float64)
    loss_grad_device(Xd, yd, wd, grad, loss)
    return rt.loss_value(loss, inp.dtype), inp.result(grad)


def loss_grad_device(Xd, yd, wd, grad, loss, work=None):
    """:func:`ols_loss_grad` on prepared device arrays, without any check or copy.

    ``grad`` (n_features,) receives the gradient and ``loss`` (1,), float64,
    the loss; nothing is copied to the host and nothing synchronises (for the
    training loop of ``LinearRegression(device='cuda')``). ``work``: a dict
    that keeps the scratch (the blocks' partial sums; on the two-pass path
    ``X w`` and the residuals, two N-vectors) between the loop's iterations;
    without it they are allocated per call.
    """
    N, d = Xd.shape
    dtype = np.dtype(Xd.dtype)
    tpb = opt.CUDA_TPB
    shuffle = rt.use_shuffle()
    R = _plan(d, dtype.itemsize, tpb)
    if R:
        kernel = _ols_kernel(dtype, d, R, tpb, shuffle, bool(opt.CUDA_OLS_PREFETCH))
        Xf = Xd.reshape(N * d)
        blocks = rt.resident_grid(
            kernel, (Xf, yd, wd, rt.array_type(np.float64, 1), rt.array_type(dtype, 2)), tpb,
            -(-N // R),
            opt.CUDA_OLS_BLOCKS_PER_SM)
        loss_part = rt.buffer(work, "ols.loss_part", (blocks,), np.float64)
        grad_part = rt.buffer(work, "ols.grad_part", (blocks, d), dtype)
        rt.launch(kernel, blocks, tpb, Xf, yd, wd, loss_part, grad_part)
        rt.sum_partials(grad_part, grad, -1.0 / N,
                        also=(loss_part.reshape(blocks, 1), loss, 0.5 / N, False))
        return
    Xw = rt.buffer(work, "ols.Xw", (N, 1), dtype)
    _gemm.matmul(Xd, wd.reshape(d, 1), Xw, work=work)
    rn = rt.buffer(work, "ols.residuals", (N, 1), dtype)
    blocks = rt.grid_size(-(-N // tpb))
    loss_part = rt.buffer(work, "ols.loss_part", (blocks,), np.float64)
    inv_n = dtype.type(1.0) / dtype.type(N)
    rt.launch(_residual_kernel(dtype, tpb, shuffle), blocks, tpb, Xw, yd, rn, inv_n, loss_part)
    _gemm.matmul(Xd, rn, grad.reshape(d, 1), ta=True, work=work)
    rt.sum_partials(loss_part.reshape(blocks, 1), loss, 0.5 / N)


def gram(X, y, *, check_finite=True):
    r"""The inputs of the analytic OLS solution, on the GPU.

    .. math:: X^T X, \qquad y X

    With the numba kernels, one pass over ``X``: the product
    :math:`X^T [X \mid y]` with ``y`` read as one more column, summed over row
    ranges (or, for a thin ``X``, by each block over its tiles of rows, see
    ``_gemm.plan_thin_sum``) whose partial sums are added in a fixed order.
    With cuBLAS (``CUDA_GEMM``) and an ``X`` too wide for the thin kernel,
    two products.

    Parameters
    ----------
    X : device or host array, shape (n_samples, n_features), float32 or float64
    y : device or host array, shape (n_samples,), X's dtype
    check_finite : bool, default True

    Returns
    -------
    XtX : array, shape (n_features, n_features)
    Xty : array, shape (n_features,)
    """
    inp = rt.prepare(
        [("X", X, ("n_samples", "n_features")), ("y", y, ("n_samples",))], check_finite
    )
    Xd, yd = inp.arrays
    N, d = Xd.shape
    XtX = rt.empty((d, d), inp.dtype)
    Xty = rt.empty(d, inp.dtype)
    if _gemm.backend() == "cupy" and _gemm.plan_thin_sum(d, d + 1, inp.dtype.itemsize) is None:
        _gemm.matmul(Xd, Xd, XtX, ta=True)
        _gemm.matmul(Xd, yd.reshape(N, 1), Xty.reshape(d, 1), ta=True)
    else:
        C = rt.device_array((d, d + 1), inp.dtype)
        _gemm.matmul(Xd, Xd, C, ta=True, bvec=yd)
        rt.split_columns(C, XtX, Xty)
    return inp.result(XtX), inp.result(Xty)
