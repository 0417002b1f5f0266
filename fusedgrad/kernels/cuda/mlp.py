"""The whole forward and backward pass of the 2-layer MLP on the GPU."""

import functools
import math

import numba
import numpy as np
from numba import types

from fusedgrad.kernels import _options as opt
from fusedgrad.kernels.cuda import _gemm
from fusedgrad.kernels.cuda import _runtime as rt
from fusedgrad.kernels.cuda._device import fast_sigmoid, helpers
from fusedgrad.kernels.cuda._runtime import cuda, jit
from fusedgrad.kernels.cuda.affine import column_sums
from fusedgrad.kernels.cuda.softmax import softmax_ce_device

__all__ = ["mlp_loss_grad", "plan_fused", "loss_grad_device", "split_flat"]


# ---------------------------------------------------------------------------
# Thin layers: the whole pass of a row tile in one kernel
# ---------------------------------------------------------------------------


def _strides(D, H, NI, NJ, MI, MJ):
    """Row strides of the flat kernel's X and A tiles (and of W1 in shared
    memory): odd (rows start in different banks), and wide enough that the
    dW1 loop's columns ``ti + NI ii`` and ``tj + NJ jj`` stay in the row, so
    that loop tests nothing: what it reads past ``D`` and ``H`` only enters
    sums that are never stored."""
    return max(D, NI * MI) | 1, max(H, NJ * MJ) | 1


def _fused_shared_bytes(D, H, K, R, T, itemsize, w1_shared, NI=1, NJ=1, MI=1, MJ=1):
    XS, AS = _strides(D, H, NI, NJ, MI, MJ)
    words = R * (XS + AS + (K | 1)) + H * (K | 1) + H + K + T
    if w1_shared:
        words += D * AS
    return itemsize * words + 8 * T


@rt.cached_plan("CUDA_FUSED_TPB", "CUDA_FUSED_MAX_ACC", "CUDA_FUSED_MAX_ROWS",
                "CUDA_SHARED_BYTES")
def plan_fused(D, H, K, itemsize, tpb=None):
    """The layout of the fused kernel for these sizes, or None when the layer
    is too wide for it (then the layered path runs).

    Threads form an ``NI x NJ`` grid; thread ``(ti, tj)`` owns the hidden
    units ``j = tj + NJ * jj`` (``jj < MJ``), the rows ``ti + NI * rr`` of a
    tile in the forward product and the inputs ``i = ti + NI * ii``
    (``ii < MI``) of the dW1 sums it keeps in registers. ``R`` rows per tile.

    Returns
    -------
    dict or None
        ``T, NI, NJ, MI, MJ, MR, R, w1_shared``.
    """
    T = opt.CUDA_FUSED_TPB if tpb is None else tpb
    acc_max = opt.CUDA_FUSED_MAX_ACC
    if -(-H * K // T) > acc_max or K > T:
        return None
    best = None
    nj = 1
    while nj <= T:
        ni = T // nj
        mi, mj = -(-D // ni), -(-H // nj)
        if mi * mj <= acc_max and ni <= opt.CUDA_FUSED_MAX_ROWS:
            # Issue slots per row and thread in the dW1 sums: MI * MJ FMAs or,
            # when shared memory is the bottleneck (about one load per four
            # FMAs per multiprocessor), MI + MJ loads.
            score = max(mi * mj, 4 * (mi + mj))
            if best is None or score < best[0]:
                best = (score, ni, nj, mi, mj)
        nj *= 2
    if best is None:
        return None
    _, NI, NJ, MI, MJ = best
    for w1_shared in (True, False):
        R = (min(T, opt.CUDA_FUSED_MAX_ROWS) // NI) * NI
        while R >= NI and (
            _fused_shared_bytes(D, H, K, R, T, itemsize, w1_shared, NI, NJ, MI, MJ)
            > opt.CUDA_SHARED_BYTES
            or (R // NI) * MJ > acc_max
        ):
            R -= NI
        if R >= NI and (w1_shared is False or R >= min(32, T)):
            return dict(T=T, NI=NI, NJ=NJ, MI=MI, MJ=MJ, MR=R // NI, R=R, w1_shared=w1_shared)
    return None


@functools.lru_cache(maxsize=None)
def _fused_kernel(dtype, D, H, K, T, NI, NJ, MI, MJ, MR, R, w1_shared, shuffle, min_blocks,
                  weighted=False, fast=False):
    dt = np.dtype(dtype).type
    nbt = numba.from_dtype(np.dtype(dtype))
    zero = dt(0.0)
    one = dt(1.0)
    D1, H1, K1 = D | 1, H | 1, K | 1
    Q2 = -(-H * K // T)  # dW2 entries per thread
    MK = -(-K // NJ)  # db2 columns per thread
    W1R = D if w1_shared else 1
    NACC1, NZT = MI * MJ, MR * MJ  # shapes must be compile-time constants
    d = helpers(np.dtype(dtype), T, shuffle, fast)
    _d_sigmoid, _d_block_sum = d._d_sigmoid, d._d_block_sum
    o_b1 = D * H
    o_w2 = o_b1 + H
    o_b2 = o_w2 + H * K

    @jit(launch_bounds=None if min_blocks is None else (T, min_blocks))
    def kernel(X, y, sw, W1, b1, W2, b2, inv_n, part, loss_part):
        Xs = cuda.shared.array((R, D1), dtype=nbt)
        As = cuda.shared.array((R, H1), dtype=nbt)  # A, then dZ1
        Zs = cuda.shared.array((R, K1), dtype=nbt)  # Z2, then dZ2
        W2s = cuda.shared.array((H, K1), dtype=nbt)
        W1s = cuda.shared.array((W1R, H1), dtype=nbt)
        b1s = cuda.shared.array(H, dtype=nbt)
        b2s = cuda.shared.array(K, dtype=nbt)
        buf = cuda.shared.array(T, dtype=nbt)
        red = cuda.shared.array(T, dtype=types.float64)
        acc1 = cuda.local.array(NACC1, dtype=nbt)  # dW1[ti + NI ii, tj + NJ jj]
        accb1 = cuda.local.array(MJ, dtype=nbt)
        acc2 = cuda.local.array(Q2, dtype=nbt)  # dW2 entries tid + T q
        accb2 = cuda.local.array(MK, dtype=nbt)
        zt = cuda.local.array(NZT, dtype=nbt)
        xv = cuda.local.array(MI, dtype=nbt)
        gv = cuda.local.array(MJ, dtype=nbt)
        tid = cuda.threadIdx.x
        ti = tid // NJ
        tj = tid - ti * NJ
        N = X.shape[0]

        for q in range(MI * MJ):
            acc1[q] = zero
        for q in range(MJ):
            accb1[q] = zero
        for q in range(Q2):
            acc2[q] = zero
        for q in range(MK):
            accb2[q] = zero
        e = tid
        while e < H * K:
            jj = e // K
            W2s[jj, e - jj * K] = W2[jj, e - jj * K]
            e += T
        e = tid
        while e < H:
            b1s[e] = b1[e]
            e += T
        e = tid
        while e < K:
            b2s[e] = b2[e]
            e += T
        if w1_shared:
            e = tid
            while e < D * H:
                ii = e // H
                W1s[ii, e - ii * H] = W1[ii, e - ii * H]
                e += T
        loss = 0.0

        n_tiles = (N + R - 1) // R
        t = cuda.blockIdx.x
        while t < n_tiles:
            r0 = t * R
            rows = min(R, N - r0)
            # X tile, coalesced
            e = tid
            while e < rows * D:
                rr = e // D
                Xs[rr, e - rr * D] = X[r0 + rr, e - rr * D]
                e += T
            cuda.syncthreads()
            # A = sigmoid(X W1 + b1): micro-tile of MR rows x MJ units
            for q in range(MR * MJ):
                zt[q] = zero
            for k in range(D):
                for jj in range(MJ):
                    j = tj + NJ * jj
                    if j < H:
                        gv[jj] = W1s[k, j] if w1_shared else W1[k, j]
                    else:
                        gv[jj] = zero
                for rr in range(MR):
                    # rows past the tile's end hold no data (never stored below)
                    r = ti + NI * rr
                    xk = Xs[r, k] if r < rows else zero
                    for jj in range(MJ):
                        zt[rr * MJ + jj] += xk * gv[jj]
            for rr in range(MR):
                r = ti + NI * rr
                if r < rows:
                    for jj in range(MJ):
                        j = tj + NJ * jj
                        if j < H:
                            As[r, j] = _d_sigmoid(zt[rr * MJ + jj] + b1s[j])
            cuda.syncthreads()
            # Z2 = A W2 + b2
            e = tid
            while e < rows * K:
                r = e // K
                k = e - r * K
                z = b2s[k]
                for j in range(H):
                    z += As[r, j] * W2s[j, k]
                Zs[r, k] = z
                e += T
            cuda.syncthreads()
            # softmax cross-entropy, one thread per row: dZ2 = (softmax - Y) / N
            if tid < rows:
                label = y[r0 + tid]
                bad = label < 0 or label >= K  # see softmax.py, 'Labels outside [0, K)'
                if bad:
                    label = 0
                zy = Zs[tid, label]
                m = Zs[tid, 0]
                for k in range(1, K):
                    m = max(m, Zs[tid, k])
                a = K - 1
                for k in range(K - 2, -1, -1):
                    if Zs[tid, k] == m:
                        a = k
                s = zero
                for k in range(K):
                    ek = math.exp(Zs[tid, k] - m)
                    Zs[tid, k] = ek
                    if k != a:
                        s += ek
                row_loss = np.float64(math.log1p(s)) + np.float64(m - zy)
                if bad:
                    row_loss = np.nan
                inv = inv_n
                if weighted:  # a compile-time constant: no branch in the unweighted kernel
                    row_loss *= np.float64(sw[r0 + tid])
                    inv = inv_n * sw[r0 + tid]
                loss += row_loss
                scale = inv / (one + s)
                ey = Zs[tid, label]
                for k in range(K):
                    Zs[tid, k] *= scale
                if label == a:
                    Zs[tid, label] = -s * scale
                else:
                    Zs[tid, label] = ey * scale - inv
            cuda.syncthreads()
            # dW2 += A^T dZ2, db2 += sum dZ2
            for q in range(Q2):
                e = tid + T * q
                if e < H * K:
                    j = e // K
                    k = e - j * K
                    g = acc2[q]
                    for r in range(rows):
                        g += As[r, j] * Zs[r, k]
                    acc2[q] = g
            for kk in range(MK):
                k = tj + NJ * kk
                if k < K:
                    g = accb2[kk]
                    r = ti
                    while r < rows:
                        g += Zs[r, k]
                        r += NI
                    accb2[kk] = g
            cuda.syncthreads()
            # dZ1 = (dZ2 W2^T) * A (1 - A), in place of A; db1 += sum dZ1
            for rr in range(MR):
                r = ti + NI * rr
                if r < rows:
                    for jj in range(MJ):
                        j = tj + NJ * jj
                        if j < H:
                            g = zero
                            for k in range(K):
                                g += Zs[r, k] * W2s[j, k]
                            av = As[r, j]
                            g = g * av * (one - av)
                            As[r, j] = g
                            accb1[jj] += g
            cuda.syncthreads()
            # dW1 += X^T dZ1: micro-tile of MI inputs x MJ units
            for r in range(rows):
                for ii in range(MI):
                    i = ti + NI * ii
                    xv[ii] = Xs[r, i] if i < D else zero
                for jj in range(MJ):
                    j = tj + NJ * jj
                    gv[jj] = As[r, j] if j < H else zero
                for ii in range(MI):
                    for jj in range(MJ):
                        acc1[ii * MJ + jj] += xv[ii] * gv[jj]
            cuda.syncthreads()
            t += cuda.gridDim.x

        # this block's partial sums: [dW1 | db1 | dW2 | db2]
        b = cuda.blockIdx.x
        for ii in range(MI):
            i = ti + NI * ii
            if i < D:
                for jj in range(MJ):
                    j = tj + NJ * jj
                    if j < H:
                        part[b, i * H + j] = acc1[ii * MJ + jj]
        for q in range(Q2):
            e = tid + T * q
            if e < H * K:
                part[b, o_w2 + e] = acc2[q]
        for jj in range(MJ):
            buf[tid] = accb1[jj]
            cuda.syncthreads()
            j = tj + NJ * jj
            if ti == 0 and j < H:
                g = zero
                for p in range(NI):
                    g += buf[p * NJ + tj]
                part[b, o_b1 + j] = g
            cuda.syncthreads()
        for kk in range(MK):
            buf[tid] = accb2[kk]
            cuda.syncthreads()
            k = tj + NJ * kk
            if ti == 0 and k < K:
                g = zero
                for p in range(NI):
                    g += buf[p * NJ + tj]
                part[b, o_b2 + k] = g
            cuda.syncthreads()
        total = _d_block_sum(red, loss)
        if tid == 0:
            loss_part[b] = total

    return kernel


@functools.lru_cache(maxsize=None)
def _flat_kernel(dtype, D, H, K, T, NI, NJ, MI, MJ, MR, R, w1_shared, shuffle, min_blocks,
                 weighted=False, fast=False):
    """:func:`_fused_kernel` with its shared tiles flat and its inner loops
    walking them by unsigned running offsets.

    The same arithmetic in the same order; what changes is the index code. The
    two-dimensional ``Xs[r, c]`` of the first kernel makes numba emit, per
    access, a signed 64-bit multiply-add and a negative-index wrap-around
    test, and the ``if i < D`` tests of the dW1 loop a compare and a select
    per load. Here a flat array indexed by an unsigned offset has no
    wrap-around test, the offsets advance by a constant per row, and the
    tiles' rows are wide enough (:func:`_strides`) for the dW1 loop to read
    past ``D`` and ``H`` without a test (those sums are never stored). The
    loops over a tile's rows and over ``j < H`` in ``A W2`` run on their
    offset (``while xo != x_end``): a ``for r in range(rows)`` keeps numba's
    64-bit range counter (five instructions an iteration, in every unrolled
    copy), and with ``!=`` rather than ``<`` LLVM knows the trip count of a
    loop striding by more than one (the offset cannot step over the end),
    unrolls it 16 times and folds the offsets into the loads. The forward
    product's ``k < D`` runs on its offset with ``<`` (it steps by one, and
    unrolled further so at (16, 32, 4) in the SASS). Where the
    thread grid does not overhang the layer, the forward product reads W1 at
    constant offsets from one address, without the clamp to column ``H - 1``.
    With ``K <= 16`` a thread reads a row of dZ2 into registers once for all
    its units in ``dZ2 W2^T``.
    """
    dt = np.dtype(dtype).type
    nbt = numba.from_dtype(np.dtype(dtype))
    zero = dt(0.0)
    one = dt(1.0)
    u = np.uint32
    XS, AS = _strides(D, H, NI, NJ, MI, MJ)
    KS = K | 1
    Q2 = -(-H * K // T)  # dW2 entries per thread
    MK = -(-K // NJ)  # db2 columns per thread
    NACC1, NZT = MI * MJ, MR * MJ  # shapes must be compile-time constants
    XSN, ASN, ZSN, W2N = R * XS, R * AS, R * KS, H * KS
    W1N = D * AS if w1_shared else 1
    uXS, uAS, uKS, uNIKS, uD, uT = u(XS), u(AS), u(KS), u(NI * KS), u(D), u(T)
    uH, uHm1, uK = u(H), u(H - 1), u(K)
    overhang = NJ * MJ > H  # the thread grid has columns past H
    ZV = K <= 16  # a row of dZ2 fits in registers
    d = helpers(np.dtype(dtype), T, shuffle, fast)
    _d_sigmoid, _d_block_sum = d._d_sigmoid, d._d_block_sum
    o_b1 = D * H
    o_w2 = o_b1 + H
    o_b2 = o_w2 + H * K

    @jit(device=True)
    def _d_column_dot(As, Zs, ao, zo, z_len, g):
        """``g`` plus the dot product of a column of the A tile (from offset
        ``ao``) and one of the Z tile (from ``zo``, ``z_len / KS`` rows)."""
        z_end = zo + z_len
        while zo != z_end:  # a loop on the offset: no range counter
            g += As[ao] * Zs[zo]
            ao += uAS
            zo += uKS
        return g

    @jit(launch_bounds=None if min_blocks is None else (T, min_blocks))
    def kernel(Xf, y, sw, W1f, b1, W2, b2, inv_n, part, loss_part):
        # Xf, W1f: X (N, D) and W1 (D, H) viewed flat (a tile of X is R * D
        # consecutive values)
        Xs = cuda.shared.array(XSN, dtype=nbt)  # row r at r * XS
        As = cuda.shared.array(ASN, dtype=nbt)  # A, then dZ1; row r at r * AS
        Zs = cuda.shared.array(ZSN, dtype=nbt)  # Z2, then dZ2; row r at r * KS
        W2s = cuda.shared.array(W2N, dtype=nbt)  # row j at j * KS
        W1s = cuda.shared.array(W1N, dtype=nbt)  # row k at k * AS
        b1s = cuda.shared.array(H, dtype=nbt)
        b2s = cuda.shared.array(K, dtype=nbt)
        buf = cuda.shared.array(T, dtype=nbt)
        red = cuda.shared.array(T, dtype=types.float64)
        acc1 = cuda.local.array(NACC1, dtype=nbt)  # dW1[ti + NI ii, tj + NJ jj]
        accb1 = cuda.local.array(MJ, dtype=nbt)
        acc2 = cuda.local.array(Q2, dtype=nbt)  # dW2 entries tid + T q
        accb2 = cuda.local.array(MK, dtype=nbt)
        zt = cuda.local.array(NZT, dtype=nbt)
        xv = cuda.local.array(MI, dtype=nbt)
        gv = cuda.local.array(MJ, dtype=nbt)
        zv = cuda.local.array(K if ZV else 1, dtype=nbt)
        tid = cuda.threadIdx.x
        ti = tid // NJ
        tj = tid - ti * NJ
        N = Xf.shape[0] // D

        for q in range(MI * MJ):
            acc1[q] = zero
        for q in range(MJ):
            accb1[q] = zero
        for q in range(Q2):
            acc2[q] = zero
        for q in range(MK):
            accb2[q] = zero
        # the tiles' padding columns enter only sums that are never stored;
        # zeroed so that nothing reads uninitialised memory
        e = tid
        while e < XSN:
            Xs[e] = zero
            e += T
        e = tid
        while e < ASN:
            As[e] = zero
            e += T
        e = tid
        while e < H * K:
            jj = e // K
            W2s[jj * KS + e - jj * K] = W2[jj, e - jj * K]
            e += T
        e = tid
        while e < H:
            b1s[e] = b1[e]
            e += T
        e = tid
        while e < K:
            b2s[e] = b2[e]
            e += T
        if w1_shared:
            e = tid
            while e < D * AS:
                ii = e // AS
                c = e - ii * AS
                W1s[e] = W1f[ii * H + c] if c < H else zero
                e += T
        cuda.syncthreads()
        loss = 0.0
        x_row = u(ti) * uXS  # this thread's first row of the forward product
        z_own = u(tid) * uKS  # the row of Zs this thread's softmax handles

        n_tiles = (N + R - 1) // R
        t = cuda.blockIdx.x
        while t < n_tiles:
            r0 = t * R
            rows = min(R, N - r0)
            # X tile, coalesced
            e = u(tid)
            e_end = u(rows * D)
            g0 = np.uint64(r0) * uD
            while e < e_end:
                rr = e // uD
                Xs[rr * uXS + (e - rr * uD)] = Xf[g0 + e]
                e += uT
            cuda.syncthreads()
            # A = sigmoid(X W1 + b1): micro-tile of MR rows x MJ units. Rows
            # past the tile's end read stale values and are never stored.
            for q in range(MR * MJ):
                zt[q] = zero
            xk = x_row
            x_stop = x_row + uD
            wk = u(tj)  # W1s: row k at k * AS
            gk = u(0)  # W1f: row k at k * H
            while xk < x_stop:  # k = 0 .. D - 1, on the offset
                for jj in range(MJ):
                    if w1_shared:
                        gv[jj] = W1s[wk + u(NJ * jj)]
                    elif overhang:
                        # a column past H (the thread grid overhanging the
                        # layer) reads column H - 1: its sums are never stored
                        gv[jj] = W1f[gk + min(u(tj) + u(NJ * jj), uHm1)]
                    else:
                        gv[jj] = W1f[gk + u(tj) + u(NJ * jj)]
                for rr in range(MR):
                    xk_r = Xs[xk + u(NI * XS * rr)]
                    for jj in range(MJ):
                        zt[rr * MJ + jj] += xk_r * gv[jj]
                xk += u(1)
                wk += uAS
                gk += uH
            for rr in range(MR):
                r = ti + NI * rr
                if r < rows:
                    for jj in range(MJ):
                        j = tj + NJ * jj
                        if j < H:
                            As[u(r) * uAS + u(j)] = _d_sigmoid(zt[rr * MJ + jj] + b1s[j])
            cuda.syncthreads()
            # Z2 = A W2 + b2
            e = u(tid)
            e_end = u(rows) * uK
            while e < e_end:
                r = e // uK
                k = e - r * uK
                z = b2s[k]
                ao = r * uAS
                a_end = ao + uH
                wo = k
                while ao != a_end:  # j = 0 .. H - 1, on the offset
                    z += As[ao] * W2s[wo]
                    ao += u(1)
                    wo += uKS
                Zs[r * uKS + k] = z
                e += uT
            cuda.syncthreads()
            # softmax cross-entropy, one thread per row: dZ2 = (softmax - Y) / N
            if tid < rows:
                label = y[r0 + tid]
                bad = label < 0 or label >= K  # see softmax.py, 'Labels outside [0, K)'
                if bad:
                    label = 0
                zy = Zs[z_own + u(label)]
                m = Zs[z_own]
                for k in range(1, K):
                    m = max(m, Zs[z_own + u(k)])
                a = K - 1
                for k in range(K - 2, -1, -1):
                    if Zs[z_own + u(k)] == m:
                        a = k
                s = zero
                for k in range(K):
                    ek = math.exp(Zs[z_own + u(k)] - m)
                    Zs[z_own + u(k)] = ek
                    if k != a:
                        s += ek
                row_loss = np.float64(math.log1p(s)) + np.float64(m - zy)
                if bad:
                    row_loss = np.nan
                inv = inv_n
                if weighted:  # a compile-time constant: no branch in the unweighted kernel
                    row_loss *= np.float64(sw[r0 + tid])
                    inv = inv_n * sw[r0 + tid]
                loss += row_loss
                scale = inv / (one + s)
                ey = Zs[z_own + u(label)]
                for k in range(K):
                    Zs[z_own + u(k)] *= scale
                if label == a:
                    Zs[z_own + u(label)] = -s * scale
                else:
                    Zs[z_own + u(label)] = ey * scale - inv
            cuda.syncthreads()
            # dW2 += A^T dZ2, db2 += sum dZ2
            for q in range(Q2):
                e = tid + T * q
                if e < H * K:
                    j = e // K
                    k = e - j * K
                    acc2[q] = _d_column_dot(As, Zs, u(j), u(k), u(rows) * uKS, acc2[q])
            for kk in range(MK):
                k = tj + NJ * kk
                if k < K:
                    g = accb2[kk]
                    zo = u(ti) * uKS + u(k)
                    r = ti
                    while r < rows:
                        g += Zs[zo]
                        zo += uNIKS
                        r += NI
                    accb2[kk] = g
            cuda.syncthreads()
            # dZ1 = (dZ2 W2^T) * A (1 - A), in place of A; db1 += sum dZ1
            for rr in range(MR):
                r = ti + NI * rr
                if r < rows:
                    zo = u(r) * uKS
                    if ZV:  # the row of dZ2 in registers, read once for all units
                        for k in range(K):
                            zv[k] = Zs[zo + u(k)]
                    for jj in range(MJ):
                        j = tj + NJ * jj
                        if j < H:
                            wj = u(j) * uKS
                            g = zero
                            for k in range(K):
                                g += (zv[k] if ZV else Zs[zo + u(k)]) * W2s[wj + u(k)]
                            ao = u(r) * uAS + u(j)
                            av = As[ao]
                            g = g * av * (one - av)
                            As[ao] = g
                            accb1[jj] += g
            cuda.syncthreads()
            # dW1 += X^T dZ1: micro-tile of MI inputs x MJ units; the sums of
            # the columns past D and H are never stored
            xo = u(ti)
            ao = u(tj)
            x_end = xo + u(rows) * uXS
            while xo != x_end:  # a loop on the offset: no range counter
                for ii in range(MI):
                    xv[ii] = Xs[xo + u(NI * ii)]
                for jj in range(MJ):
                    gv[jj] = As[ao + u(NJ * jj)]
                for ii in range(MI):
                    for jj in range(MJ):
                        acc1[ii * MJ + jj] += xv[ii] * gv[jj]
                xo += uXS
                ao += uAS
            cuda.syncthreads()
            t += cuda.gridDim.x

        # this block's partial sums: [dW1 | db1 | dW2 | db2]
        b = cuda.blockIdx.x
        for ii in range(MI):
            i = ti + NI * ii
            if i < D:
                for jj in range(MJ):
                    j = tj + NJ * jj
                    if j < H:
                        part[b, i * H + j] = acc1[ii * MJ + jj]
        for q in range(Q2):
            e = tid + T * q
            if e < H * K:
                part[b, o_w2 + e] = acc2[q]
        for jj in range(MJ):
            buf[tid] = accb1[jj]
            cuda.syncthreads()
            j = tj + NJ * jj
            if ti == 0 and j < H:
                g = zero
                for p in range(NI):
                    g += buf[p * NJ + tj]
                part[b, o_b1 + j] = g
            cuda.syncthreads()
        for kk in range(MK):
            buf[tid] = accb2[kk]
            cuda.syncthreads()
            k = tj + NJ * kk
            if ti == 0 and k < K:
                g = zero
                for p in range(NI):
                    g += buf[p * NJ + tj]
                part[b, o_b2 + k] = g
            cuda.syncthreads()
        total = _d_block_sum(red, loss)
        if tid == 0:
            loss_part[b] = total

    return kernel


def _fused(Xd, yd, W1, b1, W2, b2, flat, loss, plan, sw=None, total=None, work=None):
    N, D = Xd.shape
    H, K = W2.shape
    dtype = np.dtype(Xd.dtype)
    weighted = sw is not None
    factory = _flat_kernel if opt.CUDA_FUSED_FLAT else _fused_kernel
    kernel = factory(dtype, D, H, K, plan["T"], plan["NI"], plan["NJ"], plan["MI"],
                     plan["MJ"], plan["MR"], plan["R"], plan["w1_shared"], rt.use_shuffle(),
                     opt.CUDA_FUSED_MIN_BLOCKS, weighted, fast_sigmoid(dtype))
    blocks = rt.grid_size(-(-N // plan["R"]), opt.CUDA_FUSED_BLOCKS_PER_SM)
    part = rt.buffer(work, "mlp.part", (blocks, flat.shape[0]), dtype)
    loss_part = rt.buffer(work, "mlp.loss_part", (blocks,), np.float64)
    n = total if weighted else N
    inv_n = dtype.type(1.0) / dtype.type(n)
    X_arg, W1_arg = (Xd.reshape(N * D), W1.reshape(D * H)) if opt.CUDA_FUSED_FLAT else (Xd, W1)
    rt.launch(kernel, blocks, plan["T"], X_arg, yd, sw if weighted else yd, W1_arg, b1, W2, b2,
              inv_n, part, loss_part)
    rt.sum_partials(part, flat, also=(loss_part.reshape(blocks, 1), loss, 1.0 / n, False))


# ---------------------------------------------------------------------------
# Wide layers: matrix products with the elementwise stages fused around them
# ---------------------------------------------------------------------------


def _layered(Xd, yd, W1, b1, W2, b2, dW1, db1, dW2, db2, loss, chunk_rows, sw=None,
             total=None, work=None):
    N, D = Xd.shape
    n = N if sw is None else total
    H, K = W2.shape
    dtype = np.dtype(Xd.dtype)
    chunk = max(1, min(N, chunk_rows))
    A_buf = rt.buffer(work, "mlp.A", (chunk, H), dtype)
    Z_buf = rt.buffer(work, "mlp.Z", (chunk, K), dtype)
    for c, r0 in enumerate(range(0, N, chunk)):
        r1 = min(N, r0 + chunk)
        m = r1 - r0
        acc = c > 0
        Xc, yc, A, Z = Xd[r0:r1], yd[r0:r1], A_buf[:m], Z_buf[:m]
        _gemm.matmul(Xc, W1, A, epi=_gemm.EPI_BIAS_SIGMOID, bias=b1, work=work)
        _gemm.matmul(A, W2, Z, epi=_gemm.EPI_BIAS, bias=b2, work=work)
        loss_part, col_part = softmax_ce_device(Z, yc, Z, colsum=True, n_total=n,
                                                sw=None if sw is None else sw[r0:r1], work=work)
        loss_sum = (loss_part.reshape(loss_part.shape[0], 1), loss, 1.0 / n, acc)
        if col_part is not None:
            rt.sum_partials(col_part, db2, 1.0, acc, also=loss_sum)
        else:
            rt.sum_partials(*loss_sum)
            column_sums(Z, db2, accumulate=acc, work=work)
        _gemm.matmul(A, Z, dW2, ta=True, accumulate=acc, work=work)
        _gemm.matmul(Z, W2, A, tb=True, epi=_gemm.EPI_DSIGMOID, aux=A, use_library=False,
                     work=work)
        column_sums(A, db1, accumulate=acc, work=work)
        _gemm.matmul(Xc, A, dW1, ta=True, accumulate=acc, work=work)


def mlp_loss_grad(X, y, W1, b1, W2, b2, *, sample_weight=None, check_finite=True, _path=None):
    r"""Loss and gradients of the 2-layer MLP on the GPU, forward and backward fused.

    Same semantics as :func:`fusedgrad.kernels.mlp_loss_grad`.

    .. math::
        \delta^2 = \frac{\hat Y - Y}{N}, \quad
        \frac{\partial L}{\partial W^2} = a^T \delta^2, \quad
        \delta^1 = \delta^2 W^{2T} \odot a(1-a), \quad
        \frac{\partial L}{\partial W^1} = x^T \delta^1

    Two paths:

    * **fused** (thin layers, see :func:`plan_fused`): one kernel. A block walks
      over tiles of rows; for each tile it computes the activations, logits,
      softmax gradient and ``dZ1`` in shared memory (never in global memory)
      and adds the tile's contribution to the weight gradients, which each
      thread keeps in registers across all its tiles. At the end each block
      writes its partial gradients, and a second pass adds them in block
      order.
    * **layered** (wide layers): per chunk of rows, the products
      ``sigmoid(X W1 + b1)``, ``A W2 + b2``, ``A^T dZ2``, ``dZ2 W2^T``
      (with ``* A (1 - A)`` fused in its store) and ``X^T dZ1`` as tiled
      numba.cuda kernels or cuBLAS (``CUDA_GEMM``), the softmax-CE and the
      bias gradients as row-wise kernels.

    Parameters
    ----------
    X : device or host array, shape (n_samples, n_features), float32 or float64
    y : device or host array of int, shape (n_samples,)
        Class labels in ``[0, n_classes)``.
    W1 : device or host array, shape (n_features, n_hidden)
    b1 : device or host array, shape (n_hidden,)
    W2 : device or host array, shape (n_hidden, n_classes)
    b2 : device or host array, shape (n_classes,)
    sample_weight : device or host array, shape (n_samples,), X's dtype, optional
        Non-negative weights of the samples (positive sum), as in
        :func:`fusedgrad.kernels.mlp_loss_grad`; device weights are
        checked by a kernel, without a copy.
    check_finite : bool, default True
        Reject NaN/inf in the inputs (a reduction kernel per device array).

    Returns
    -------
    loss : NumPy scalar of X's dtype
    dW1, db1, dW2, db2 : arrays
        Shaped like ``W1, b1, W2, b2``: device arrays, or NumPy arrays when all
        inputs were host arrays.

    Raises
    ------
    TypeError, ValueError
        Naming the argument, before any kernel runs; except device labels
        outside ``[0, n_classes)``: their range is tested by the kernels
        that index by them (a label outside reads nothing outside its row and
        makes the loss NaN), and a NaN loss has the labels checked and their
        ValueError raised before anything is returned
        (``CUDA_LABELS_IN_KERNEL``; False checks them first, with a kernel
        and a synchronising copy).
    """
    inp = rt.prepare(
        [
            ("X", X, ("n_samples", "n_features")),
            ("W1", W1, ("n_features", "n_hidden")),
            ("b1", b1, ("n_hidden",)),
            ("W2", W2, ("n_hidden", "n_classes")),
            ("b2", b2, ("n_classes",)),
        ],
        check_finite,
        labels=("y", y, "n_samples", "n_classes"),
        labels_in_kernel=True,
    )
    Xd, W1d, b1d, W2d, b2d = inp.arrays
    N, D = Xd.shape
    H, K = W2d.shape
    dtype = inp.dtype
    if _path not in (None, "fused", "layered"):
        raise ValueError(f"_path must be 'fused' or 'layered', got {_path!r}")
    if _path == "fused" and plan_fused(D, H, K, dtype.itemsize) is None:
        raise ValueError(f"the fused path does not fit layers of {D} x {H} x {K}")
    swd, total = rt.weights(sample_weight, dtype, N, check_finite)
    flat = rt.empty(D * H + H + H * K + K, dtype)
    loss = rt.device_array(1, np.float64)
    loss_grad_device(Xd, inp.labels, W1d, b1d, W2d, b2d, flat, loss, _path=_path,
                     sample_weight=swd, total=total)
    dW1, db1, dW2, db2 = split_flat(flat, D, H, K)
    return (rt.loss_value(loss, dtype, inp), inp.result(dW1), inp.result(db1), inp.result(dW2),
            inp.result(db2))


def split_flat(flat, D, H, K):
    """Views ``W1 (D, H), b1 (H,), W2 (H, K), b2 (K,)`` of a flat vector laid
    out as ``[W1 | b1 | W2 | b2]`` (the layout of the gradients here)."""
    return (flat[: D * H].reshape(D, H), flat[D * H: D * H + H],
            flat[D * H + H: D * H + H + H * K].reshape(H, K), flat[D * H + H + H * K:])


def loss_grad_device(Xd, yd, W1d, b1d, W2d, b2d, flat, loss, *, _path=None,
                     sample_weight=None, total=None, work=None):
    """:func:`mlp_loss_grad` on prepared device arrays, without any check or copy.

    For callers that validated their data once and call many times (the
    models' training loops): nothing is copied to the host and nothing
    synchronises. ``yd`` must hold labels in ``[0, n_classes)``.

    Parameters
    ----------
    Xd, yd, W1d, b1d, W2d, b2d : device arrays
        As :func:`mlp_loss_grad` takes them; C-contiguous rows (a slice of
        consecutive rows of a C-contiguous array is fine).
    flat : device array, shape (D*H + H + H*K + K,), X's dtype
        Receives the gradients laid out as ``[dW1 | db1 | dW2 | db2]``
        (see :func:`split_flat`).
    loss : device array, shape (1,), float64
        Receives the mean cross-entropy.
    sample_weight : device array, shape (n_samples,), X's dtype, optional
        The samples' weights, and ``total``, their sum (a float, from the
        caller): the weighted mean replaces the mean.
    work : dict, optional
        Keeps the scratch buffers (the blocks' partial sums, the activations
        of a chunk) between calls: a training loop passes the same dict to
        every step, which then allocates nothing; without it they are
        allocated per call.
    """
    N, D = Xd.shape
    H, K = W2d.shape
    dtype = np.dtype(Xd.dtype)
    plan = plan_fused(D, H, K, dtype.itemsize)
    path = _path or ("fused" if plan is not None else "layered")
    if path == "fused":
        _fused(Xd, yd, W1d, b1d, W2d, b2d, flat, loss, plan, sample_weight, total, work)
    else:
        dW1, db1, dW2, db2 = split_flat(flat, D, H, K)
        chunk_rows = max(1, opt.CUDA_CHUNK_BYTES // ((H + K) * dtype.itemsize))
        _layered(Xd, yd, W1d, b1d, W2d, b2d, dW1, db1, dW2, db2, loss, chunk_rows,
                 sample_weight, total, work)
