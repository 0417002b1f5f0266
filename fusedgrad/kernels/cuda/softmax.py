"""Softmax with mean categorical cross-entropy on the GPU, one pass per row."""

import functools
import math

import numba
import numpy as np
from numba import types

from fusedgrad.kernels import _options as opt
from fusedgrad.kernels.cuda import _runtime as rt
from fusedgrad.kernels.cuda._device import helpers
from fusedgrad.kernels.cuda._runtime import cuda, jit

__all__ = ["softmax_cross_entropy"]


@functools.lru_cache(maxsize=None)
def _staged_kernel(dtype, K, tpb, shuffle, colsum, weighted=False, prefetch=True):
    """A block stages ``tpb`` whole rows in shared memory, one thread per row.

    Loads and stores of the tile are coalesced (consecutive threads touch
    consecutive elements of the row-major tile); each thread then reads its
    own row from shared memory. With ``colsum`` the kernel also writes the
    column sums of dZ of its rows (the bias gradient of the layer below).
    With ``weighted``, row ``i``'s loss and gradient are times ``sw[i]``.

    With ``prefetch`` a full tile (``tpb`` rows) is read into registers, the
    thread's ``K`` loads issued together, and the block's next tile is read
    while it works on this one: every thread keeps ``K`` loads in flight
    instead of the few that a load-then-store loop gives (on sm_90 ptxas
    groups four), so fewer blocks keep the memory system busy. Partial tiles
    (the last one) take the plain loop.
    """
    dt = np.dtype(dtype).type
    nbt = numba.from_dtype(np.dtype(dtype))
    one = dt(1.0)
    zero = dt(0.0)
    nan = dt(np.nan)
    d = helpers(np.dtype(dtype), tpb, shuffle)
    _d_block_sum = d._d_block_sum
    R = tpb
    TILE = R * K  # shapes must be compile-time constants
    phases = max(1, tpb // K)  # column-sum lanes per column
    col_threads = phases * K if K <= tpb else 0
    u = np.uint32
    uK, uPK, uTILE = u(K), u(phases * K), np.uint64(TILE)

    @jit()
    def kernel(Zf, y, sw, dZf, inv_n, loss_part, col_part):
        tile = cuda.shared.array(TILE, dtype=nbt)
        red = cuda.shared.array(tpb, dtype=types.float64)
        ctile = cuda.shared.array(tpb, dtype=types.float64)
        tid = cuda.threadIdx.x
        N = y.shape[0]
        n_tiles = (N + R - 1) // R
        loss = 0.0
        cacc = 0.0
        c_col = tid % K
        c_phase = tid // K
        t = cuda.blockIdx.x
        held = cuda.local.array(K, dtype=nbt)  # a full tile's K values per thread
        v = cuda.local.array(K, dtype=nbt)  # this thread's row
        have = False
        if prefetch and t < n_tiles and (t + 1) * R <= N:
            g0 = np.uint64(t) * uTILE + u(tid)
            for j in range(K):
                held[j] = Zf[g0 + u(j * tpb)]
            have = True
        while t < n_tiles:
            r0 = t * R
            rows = min(R, N - r0)
            base = r0 * K
            label = 0
            if tid < rows:
                label = y[r0 + tid]
            if have:
                for j in range(K):
                    tile[u(tid) + u(j * tpb)] = held[j]
            else:
                e = tid
                while e < rows * K:
                    tile[e] = Zf[base + e]
                    e += tpb
            cuda.syncthreads()
            if prefetch:  # the next tile's loads, in flight during this one
                tn = t + cuda.gridDim.x
                have = tn < n_tiles and (tn + 1) * R <= N
                if have:
                    g0 = np.uint64(tn) * uTILE + u(tid)
                    for j in range(K):
                        held[j] = Zf[g0 + u(j * tpb)]
            if tid < rows:
                # the row in registers (v: constant indices only), the tile
                # by unsigned offsets (no wrap-around test per access)
                o = u(tid) * uK
                # see 'Labels outside [0, K)': a label outside is only ever
                # compared below, never an index
                zy = tile[o + u(label)] if label >= 0 and label < K else nan
                for k in range(K):
                    v[k] = tile[o + u(k)]
                m = v[0]
                for k in range(1, K):
                    m = max(m, v[k])
                a = K - 1
                for k in range(K - 2, -1, -1):
                    if v[k] == m:
                        a = k
                s = zero
                ey = zero
                for k in range(K):
                    ek = math.exp(v[k] - m)
                    v[k] = ek
                    if k == label:
                        ey = ek
                    if k != a:
                        s += ek
                row_loss = np.float64(math.log1p(s)) + np.float64(m - zy)
                inv = inv_n
                if weighted:
                    row_loss *= np.float64(sw[r0 + tid])
                    inv = inv_n * sw[r0 + tid]
                loss += row_loss
                scale = inv / (one + s)
                gy = -s * scale if label == a else ey * scale - inv
                for k in range(K):
                    tile[o + u(k)] = gy if k == label else v[k] * scale
            cuda.syncthreads()
            if colsum and tid < col_threads:
                co = u(c_phase) * uK + u(c_col)
                c_end = u(rows) * uK
                while co < c_end:
                    cacc += tile[co]
                    co += uPK
            if rows == R:
                g0 = np.uint64(base) + u(tid)
                for j in range(K):
                    dZf[g0 + u(j * tpb)] = tile[u(tid) + u(j * tpb)]
            else:
                e = tid
                while e < rows * K:
                    dZf[base + e] = tile[e]
                    e += tpb
            cuda.syncthreads()
            t += cuda.gridDim.x
        total = _d_block_sum(red, loss)
        if tid == 0:
            loss_part[cuda.blockIdx.x] = total
        if colsum:
            ctile[tid] = cacc
            cuda.syncthreads()
            if tid < K:
                acc = 0.0
                for p in range(phases):
                    acc += ctile[p * K + tid]
                col_part[cuda.blockIdx.x, tid] = acc

    return kernel


@functools.lru_cache(maxsize=None)
def _row_kernel(dtype, tpb, shuffle, weighted=False):
    """A block per row (grid-stride over rows), its threads striding over the
    row: coalesced for any number of classes. Three block reductions per row:
    the maximum, its first index, and the sum of the other exponentials.
    With ``weighted``, row ``i``'s loss and gradient are times ``sw[i]``."""
    dt = np.dtype(dtype).type
    nbt = numba.from_dtype(np.dtype(dtype))
    one = dt(1.0)
    zero = dt(0.0)
    nan = dt(np.nan)
    d = helpers(np.dtype(dtype), tpb, shuffle)
    _d_block_sum, _d_block_max, _d_block_min_int = d._d_block_sum, d._d_block_max, d._d_block_min_int

    @jit()
    def kernel(Z, y, sw, dZ, inv_n, loss_part):
        redf = cuda.shared.array(tpb, dtype=nbt)
        redd = cuda.shared.array(tpb, dtype=types.float64)
        redi = cuda.shared.array(tpb, dtype=types.int64)
        tid = cuda.threadIdx.x
        N, K = Z.shape
        loss = 0.0
        r = cuda.blockIdx.x
        while r < N:
            m = Z[r, 0]
            k = tid
            while k < K:
                m = max(m, Z[r, k])
                k += tpb
            m = _d_block_max(redf, m)
            a = np.int64(K)
            k = tid
            while k < K:
                if Z[r, k] == m:
                    a = min(a, np.int64(k))
                k += tpb
            a = _d_block_min_int(redi, a)
            s = zero
            k = tid
            while k < K:
                if k != a:
                    s += math.exp(Z[r, k] - m)
                k += tpb
            s = _d_block_sum(redf, s)
            label = y[r]
            inv = inv_n * sw[r] if weighted else inv_n
            if tid == 0:
                # see 'Labels outside [0, K)': only ever compared below
                zy = Z[r, label] if label >= 0 and label < K else nan
                row_loss = np.float64(math.log1p(s)) + np.float64(m - zy)
                if weighted:
                    row_loss *= np.float64(sw[r])
                loss += row_loss
            scale = inv / (one + s)
            cuda.syncthreads()  # dZ may be Z: every read of the row is done
            k = tid
            while k < K:
                g = math.exp(Z[r, k] - m) * scale
                if k == label:
                    g = -s * scale if label == a else g - inv
                dZ[r, k] = g
                k += tpb
            cuda.syncthreads()
            r += cuda.gridDim.x
        total = _d_block_sum(redd, loss)
        if tid == 0:
            loss_part[cuda.blockIdx.x] = total

    return kernel


# Labels outside [0, K): every kernel that indexes by a class label (the two
# here, the fused MLP kernels) tests it first. Such a label indexes nothing
# (here the logit it would read is taken as NaN, and the label is otherwise
# only compared with column numbers; the fused kernels read and write at
# column 0 instead), and its row's loss is NaN, so the loss of the call is
# NaN. The wrappers then run the label check (``rt.check_labels``) and raise
# its ValueError: device labels need not be checked before the kernels
# (``CUDA_LABELS_IN_KERNEL``), which saves a check kernel and a synchronising
# copy per call. The test costs a compare and a select per row.

# the argument types of the partial-sum buffers, for the occupancy query
_F64_1 = types.Array(types.float64, 1, "C")
_F64_2 = types.Array(types.float64, 2, "C")


def softmax_ce_device(Z, y, dZ, colsum=False, n_total=None, sw=None, work=None):
    """Launch the softmax-CE kernels on device arrays.

    ``Z`` and ``dZ`` (n_samples, n_classes) may be the same array; ``y`` is on
    the device with labels in range. The gradient is divided by ``n_total``
    (default: the rows of ``Z``), so that row chunks of one batch can be
    processed apart. With ``sw`` (device weights of the rows of ``Z``, X's
    dtype) each row's loss and gradient are multiplied by its weight, and
    ``n_total`` is the sum of the weights of the whole batch.

    Returns
    -------
    loss_part : device array (n_blocks,), float64
        Per-block sums of the row losses (not divided by N).
    col_part : device array (n_blocks, n_classes) or None
        Per-block column sums of ``dZ`` (only when ``colsum``); None when
        ``colsum`` is False, or when the class count needs the per-row kernel
        (then sum ``dZ``'s columns separately).
    """
    N, K = Z.shape
    dtype = np.dtype(Z.dtype)
    inv_n = dtype.type(1.0) / dtype.type(N if n_total is None else n_total)
    shuffle = rt.use_shuffle()
    weighted = sw is not None
    if not weighted:
        sw = y  # not read
    if K <= opt.CUDA_SOFTMAX_STAGED_MAX_K and opt.CUDA_SOFTMAX_TPB * K * dtype.itemsize <= (
        opt.CUDA_SHARED_BYTES - 2 * opt.CUDA_SOFTMAX_TPB * 8
    ):
        tpb = opt.CUDA_SOFTMAX_TPB
        colsum = colsum and K <= tpb
        kernel = _staged_kernel(dtype, K, tpb, shuffle, colsum, weighted,
                                bool(opt.CUDA_SOFTMAX_PREFETCH))
        Zf, dZf = Z.reshape(N * K), dZ.reshape(N * K)
        blocks = rt.resident_grid(kernel, (Zf, y, sw, dZf, inv_n, _F64_1, _F64_2), tpb,
                                  -(-N // tpb), opt.CUDA_SOFTMAX_BLOCKS_PER_SM)
        loss_part = rt.buffer(work, "softmax.loss_partials", (blocks,), np.float64)
        col_part = rt.buffer(work, "softmax.column_partials", (blocks, K) if colsum else (1, 1),
                             np.float64)
        rt.launch(kernel, blocks, tpb, Zf, y, sw, dZf, inv_n, loss_part, col_part)
        return loss_part, (col_part if colsum else None)
    tpb = opt.CUDA_SOFTMAX_TPB
    kernel = _row_kernel(dtype, tpb, shuffle, weighted)
    blocks = rt.grid_size(N)
    loss_part = rt.buffer(work, "softmax.loss_partials", (blocks,), np.float64)
    rt.launch(kernel, blocks, tpb, Z, y, sw, dZ, inv_n, loss_part)
    return loss_part, None


def softmax_cross_entropy(Z, y, *, sample_weight=None, check_finite=True):
    r"""Mean categorical cross-entropy of ``softmax(Z)`` and its gradient, on the GPU.

    Same semantics as :func:`fusedgrad.kernels.softmax_cross_entropy`. Up to
    ``CUDA_SOFTMAX_STAGED_MAX_K`` classes a block loads a tile of whole rows
    into shared memory with coalesced reads and each thread handles one row
    (maximum, shifted exponentials, log-sum-exp, gradient) before the tile is
    written back with coalesced stores; for more classes a block handles one
    row at a time. Row losses are summed per block in float64 and the
    per-block sums are added in a fixed order.

    .. math::
        L = \frac1N \sum_i \Big(\log \sum_k e^{z_{ik}} - z_{i y_i}\Big), \qquad
        \frac{\partial L}{\partial Z} = \frac{\operatorname{softmax}(Z) - Y}{N}

    Parameters
    ----------
    Z : device or host array, shape (n_samples, n_classes), float32 or float64
        Logits.
    y : device or host array of int, shape (n_samples,)
        Class labels in ``[0, n_classes)``.
    sample_weight : device or host array, shape (n_samples,), Z's dtype, optional
        Non-negative weights of the rows (positive sum), as in
        :func:`fusedgrad.kernels.softmax_cross_entropy`; device weights are
        checked by a kernel, without a copy.
    check_finite : bool, default True
        Reject NaN/inf in ``Z``. Device labels outside the classes are found
        by the kernels, as in :func:`fusedgrad.kernels.cuda.mlp_loss_grad`.

    Returns
    -------
    loss : NumPy scalar of Z's dtype
    dZ : array, shape (n_samples, n_classes), Z's dtype
        A device array, or a NumPy array when all inputs were host arrays.
    """
    inp = rt.prepare(
        [("Z", Z, ("n_samples", "n_classes"))],
        check_finite,
        labels=("y", y, "n_samples", "n_classes"),
        labels_in_kernel=True,
    )
    (Zd,) = inp.arrays
    N, K = Zd.shape
    swd, total = rt.weights(sample_weight, inp.dtype, N, check_finite)
    n = N if swd is None else total
    dZ = rt.empty((N, K), inp.dtype)
    loss_part, _ = softmax_ce_device(Zd, inp.labels, dZ, n_total=n, sw=swd)
    loss = rt.device_array(1, np.float64)
    rt.sum_partials(loss_part.reshape(loss_part.shape[0], 1), loss, 1.0 / n)
    return rt.loss_value(loss, inp.dtype, inp), inp.result(dZ)
