"""Matrix products on the GPU with the elementwise stages fused around them.

:func:`matmul` computes ``C (+)= op(A) @ op(B)`` followed by an epilogue
(bias, bias and sigmoid, or the sigmoid derivative of an activation) with
one of:

* for a small B (a thin layer's weights, see :func:`plan_thin`), a product
  not summed over rows: one pass of a kernel that keeps B in shared memory,
  walks over tiles of rows of A, keeps a micro-tile of C per thread in
  registers, applies the epilogue there and stores each tile of C as one
  contiguous run;
* for thin A and B, the sums over rows ``A^T B`` (see
  :func:`plan_thin_sum`): one pass in which each block keeps its share of
  the sums in registers over its tiles of rows;
* otherwise a tiled shared-memory kernel written in numba.cuda: a block
  computes a ``BM x BN`` tile of C, stepping through the inner dimension
  ``BK`` at a time; each thread keeps a ``TM x TN`` micro-tile in registers,
  its rows and columns strided by the thread grid so that shared-memory
  reads are free of bank conflicts; the epilogue is applied as the tile is
  stored; or
* cuBLAS through CuPy (when installed, see ``CUDA_GEMM``), followed by one
  elementwise pass for the epilogue.

Products summed over many rows (``A^T B`` with A and B of n_samples rows)
give per-block (or, in the tiled kernel, per-row-range) partial sums, added
in a fixed order by :func:`fusedgrad.kernels.cuda._runtime.sum_partials`,
so results do not depend on scheduling.
"""

import functools
import math

import numba
import numpy as np

from fusedgrad.kernels import _options as opt
from fusedgrad.kernels.cuda import _runtime as rt
from fusedgrad.kernels.cuda._device import fast_sigmoid, helpers
from fusedgrad.kernels.cuda._runtime import cuda, jit

__all__ = ["EPI_NONE", "EPI_BIAS", "EPI_BIAS_SIGMOID", "EPI_DSIGMOID", "EPI_BIAS_TANH",
           "EPI_BIAS_RELU", "EPI_DTANH", "EPI_DRELU", "FORWARD_EPI", "BACKWARD_EPI", "matmul",
           "epilogue", "backend"]

# The epilogues, applied to each element ``v`` of the product as it is stored.
# The derivative ones take the activation ``a = aux[m, n]`` (the layer's
# output; ``aux`` may be ``C`` itself with the numba kernel, which reads it
# before writing), as in :mod:`fusedgrad.kernels.layers`.
EPI_NONE = 0  #: C = product
EPI_BIAS = 1  #: C = product + bias
EPI_BIAS_SIGMOID = 2  #: C = sigmoid(product + bias)
EPI_DSIGMOID = 3  #: C = product * a * (1 - a)
EPI_BIAS_TANH = 4  #: C = tanh(product + bias)
EPI_BIAS_RELU = 5  #: C = max(product + bias, 0)
EPI_DTANH = 6  #: C = product * (1 - a) * (1 + a)
EPI_DRELU = 7  #: C = product where a > 0, else 0

#: The epilogue of a hidden layer's forward product ``A W + b``, by activation.
FORWARD_EPI = {"identity": EPI_BIAS, "logistic": EPI_BIAS_SIGMOID, "tanh": EPI_BIAS_TANH,
               "relu": EPI_BIAS_RELU}
#: The epilogue of the backward product ``delta W^T``, times ``f'`` of the
#: layer below, by that layer's activation.
BACKWARD_EPI = {"identity": EPI_NONE, "logistic": EPI_DSIGMOID, "tanh": EPI_DTANH,
                "relu": EPI_DRELU}

_NEEDS_BIAS = (EPI_BIAS, EPI_BIAS_SIGMOID, EPI_BIAS_TANH, EPI_BIAS_RELU)
_NEEDS_AUX = (EPI_DSIGMOID, EPI_DTANH, EPI_DRELU)


def _fast(dtype, epi):
    """The ``fast`` key of the factories below: whether epilogue ``epi`` takes
    the fast sigmoid (False for every other epilogue, so that they are not
    built twice)."""
    return epi == EPI_BIAS_SIGMOID and fast_sigmoid(dtype)


@functools.lru_cache(maxsize=None)
def _epilogue_fn(dtype, epi, fast=False):
    """The device function ``f(v, bias, aux, m, n)`` of epilogue ``epi`` for
    element ``(m, n)`` of a product (``epi`` is a compile-time constant;
    ``fast``: the sigmoid of :func:`_device.fast_sigmoid`)."""
    dt = np.dtype(dtype).type
    one = dt(1.0)
    zero = dt(0.0)
    _d_sigmoid = helpers(np.dtype(dtype), 32, False, fast)._d_sigmoid

    @jit(device=True)
    def _d_epilogue(v, bias, aux, m, n):
        if epi == EPI_BIAS:
            v += bias[n]
        elif epi == EPI_BIAS_SIGMOID:
            v = _d_sigmoid(v + bias[n])
        elif epi == EPI_BIAS_TANH:
            v = math.tanh(v + bias[n])
        elif epi == EPI_BIAS_RELU:
            v += bias[n]
            v = zero if v < zero else v  # NaN propagates, as on the CPU
        elif epi == EPI_DSIGMOID:
            a = aux[m, n]
            v = v * a * (one - a)
        elif epi == EPI_DTANH:
            a = aux[m, n]
            v = v * ((one - a) * (one + a))  # as the CPU kernels: exact near |a| = 1
        elif epi == EPI_DRELU:
            v = v if aux[m, n] > zero else zero
        return v

    return _d_epilogue


_cupy = rt._cupy


def backend():
    """The library of the large products: "numba" or "cupy" (see ``CUDA_GEMM``)."""
    choice = opt.CUDA_GEMM
    if choice == "numba" or rt.simulator():
        return "numba"
    if choice == "cupy":
        if _cupy() is None:
            raise RuntimeError("CUDA_GEMM = 'cupy' but CuPy does not import")
        return "cupy"
    if choice != "auto":
        raise ValueError(f"CUDA_GEMM must be 'auto', 'numba' or 'cupy', got {choice!r}")
    return "cupy" if _cupy() is not None else "numba"


@functools.lru_cache(maxsize=None)
def _gemm_kernel(dtype, ta, tb, epi, aug, partial, BM, BN, BK, TM, TN, fast=False):
    dt = np.dtype(dtype).type
    nbt = numba.from_dtype(np.dtype(dtype))
    zero = dt(0.0)
    NTM = BM // TM
    NTN = BN // TN
    T = NTM * NTN
    BM1, BN1, TMN = BM + 1, BN + 1, TM * TN  # shapes must be compile-time constants
    _d_epilogue = _epilogue_fn(np.dtype(dtype), epi, fast)

    @jit()
    def kernel(A, B, bvec, C, bias, aux, M, Nc, Kd, k_chunk, accumulate):
        # C (M, Nc) or, with ``partial``, C (splits, M, Nc): the product over
        # the inner indices [split * k_chunk, (split + 1) * k_chunk).
        As = cuda.shared.array((BK, BM1), dtype=nbt)
        Bs = cuda.shared.array((BK, BN1), dtype=nbt)
        acc = cuda.local.array(TMN, dtype=nbt)
        af = cuda.local.array(TM, dtype=nbt)
        bf = cuda.local.array(TN, dtype=nbt)
        tid = cuda.threadIdx.x
        tm = tid // NTN
        tn = tid - tm * NTN
        nb_cols = Nc - 1 if aug else Nc
        tiles_n = (Nc + BN - 1) // BN
        n_tiles = ((M + BM - 1) // BM) * tiles_n
        split = cuda.blockIdx.y
        kb = split * k_chunk
        ke = min(Kd, kb + k_chunk)
        tile = cuda.blockIdx.x
        while tile < n_tiles:
            tile_m = tile // tiles_n
            m0 = tile_m * BM
            n0 = (tile - tile_m * tiles_n) * BN
            for i in range(TM * TN):
                acc[i] = zero
            k0 = kb
            while k0 < ke:
                e = tid
                while e < BK * BM:
                    if ta:  # A is (Kd, M): consecutive threads, consecutive m
                        kk = e // BM
                        mm = e - kk * BM
                    else:  # A is (M, Kd): consecutive threads, consecutive k
                        mm = e // BK
                        kk = e - mm * BK
                    k = k0 + kk
                    m = m0 + mm
                    v = zero
                    if k < ke and m < M:
                        v = A[k, m] if ta else A[m, k]
                    As[kk, mm] = v
                    e += T
                e = tid
                while e < BK * BN:
                    if tb:  # B is (Nc, Kd)
                        nn = e // BK
                        kk = e - nn * BK
                    else:  # B is (Kd, Nc)
                        kk = e // BN
                        nn = e - kk * BN
                    k = k0 + kk
                    n = n0 + nn
                    v = zero
                    if k < ke and n < Nc:
                        if tb:
                            v = B[n, k]
                        elif aug and n == nb_cols:
                            v = bvec[k]
                        else:
                            v = B[k, n]
                    Bs[kk, nn] = v
                    e += T
                cuda.syncthreads()
                for kk in range(BK):
                    for i in range(TM):
                        af[i] = As[kk, tm + NTM * i]
                    for j in range(TN):
                        bf[j] = Bs[kk, tn + NTN * j]
                    for i in range(TM):
                        for j in range(TN):
                            acc[i * TN + j] += af[i] * bf[j]
                cuda.syncthreads()
                k0 += BK
            for i in range(TM):
                m = m0 + tm + NTM * i
                if m < M:
                    for j in range(TN):
                        n = n0 + tn + NTN * j
                        if n < Nc:
                            v = acc[i * TN + j]
                            if partial:
                                C[split, m, n] = v
                            else:
                                if accumulate:
                                    v += C[m, n]
                                C[m, n] = _d_epilogue(v, bias, aux, m, n)
            tile += cuda.gridDim.x

    return kernel, T


@functools.lru_cache(maxsize=None)
def _epilogue_kernel(dtype, epi, fast=False):
    _d_epilogue = _epilogue_fn(np.dtype(dtype), epi, fast)

    @jit()
    def kernel(C, bias, aux):
        n_cols = C.shape[1]
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < C.shape[0] * n_cols:
            r = i // n_cols
            c = i - r * n_cols
            C[r, c] = _d_epilogue(C[r, c], bias, aux, r, c)
            i += step

    return kernel


_DUMMY = {}


def _dummy(dtype, ndim):
    key = (np.dtype(dtype), ndim, rt.simulator())
    if key not in _DUMMY:
        _DUMMY[key] = cuda.device_array((1,) * ndim, dtype)
    return _DUMMY[key]


# ---------------------------------------------------------------------------
# Thin products: B in shared memory, one pass over row tiles of A and C
# ---------------------------------------------------------------------------


def _thin_strides(Kd, Nc, NJ, MJ):
    """Row strides of the thin kernel's A tile, B and C tile in shared memory:
    odd, so that rows start in different banks; B's rows as wide as the
    thread grid's columns (``NJ * MJ``), so that reading past ``Nc`` needs no
    test (those columns are zero and their sums are never stored)."""
    return Kd | 1, max(Nc, NJ * MJ) | 1, Nc | 1


def _thin_shared_bytes(Kd, Nc, NJ, MJ, R, itemsize):
    XS, BS, CS = _thin_strides(Kd, Nc, NJ, MJ)
    return itemsize * (Kd * BS + R * (XS + CS))


@rt.cached_plan("CUDA_THIN", "CUDA_THIN_MAX_B", "CUDA_THIN_TPB", "CUDA_THIN_MAX_ACC",
                "CUDA_THIN_MAX_ROWS", "CUDA_SHARED_BYTES")
def plan_thin(Kd, Nc, itemsize):
    """The layout of the thin kernel (:func:`_thin_kernel`) for an inner
    dimension ``Kd`` and ``Nc`` output columns, or None where it does not
    apply (``CUDA_THIN`` off, B larger than ``CUDA_THIN_MAX_B`` values, or no
    tile of at least ``min(32, T)`` rows fits in shared memory beside B with
    at most half the thread grid's columns idle: a single output column, as
    in ``X w``, would leave all but one thread of each row idle).

    Threads form an ``NI x NJ`` grid; thread ``(ti, tj)`` computes rows
    ``ti + NI * rr`` (``rr < MR``) and columns ``tj + NJ * jj`` (``jj < MJ``)
    of a tile of ``R = NI * MR`` rows. Chosen to spend the fewest issue slots
    (``MR + MJ`` shared loads and ``MR * MJ`` multiply-adds per inner index)
    per useful multiply-add, then the tallest tile.

    Returns
    -------
    dict or None
        ``T, NI, NJ, MR, MJ, R``.
    """
    if not opt.CUDA_THIN or Kd * Nc > opt.CUDA_THIN_MAX_B:
        return None
    T = opt.CUDA_THIN_TPB
    best = None
    nj = 1
    while nj <= T:
        mj = -(-Nc // nj)
        ni = T // nj
        mr = 1
        # at most half the thread grid's columns past Nc
        while nj * mj <= 2 * Nc and mr * mj <= opt.CUDA_THIN_MAX_ACC:
            R = ni * mr
            if (min(32, T) <= R <= opt.CUDA_THIN_MAX_ROWS
                    and _thin_shared_bytes(Kd, Nc, nj, mj, R, itemsize) <= opt.CUDA_SHARED_BYTES):
                key = ((mr + mj + mr * mj) * nj / (mr * Nc), -R)
                if best is None or key < best[0]:
                    best = (key, dict(T=T, NI=ni, NJ=nj, MR=mr, MJ=mj, R=R))
            mr *= 2
        nj *= 2
    return None if best is None else best[1]


@functools.lru_cache(maxsize=None)
def _tile_product_fn(dtype, Kd, NI, NJ, MR, MJ, SA, SB):
    """The device function of a row tile times a small matrix in shared
    memory, shared by :func:`_thin_kernel` and the thin layers' backward
    kernel (``affine._backward_kernel``).

    ``_d_tile_product(As, Bs, acc, bv, ti, tj)`` sets thread ``(ti, tj)``'s
    ``MR x MJ`` micro-tile ``acc`` to the product of the rows
    ``ti + NI * rr`` of the tile ``As`` (row stride ``SA``, ``Kd`` columns)
    and the columns ``tj + NJ * jj`` of ``Bs`` (``Kd`` rows of stride ``SB``),
    walking the inner index on its offset.
    """
    dt = np.dtype(dtype).type
    zero = dt(0.0)
    u = np.uint32
    uKd, uSB = u(Kd), u(SB)

    @jit(device=True)
    def _d_tile_product(As, Bs, acc, bv, ti, tj):
        for q in range(MR * MJ):
            acc[q] = zero
        ak = u(ti) * u(SA)
        a_stop = ak + uKd
        bk = u(tj)
        while ak != a_stop:  # k = 0 .. Kd - 1, on the offset
            for jj in range(MJ):
                bv[jj] = Bs[bk + u(NJ * jj)]
            for rr in range(MR):
                a = As[ak + u(NI * SA * rr)]
                for jj in range(MJ):
                    acc[rr * MJ + jj] += a * bv[jj]
            ak += u(1)
            bk += uSB

    return _d_tile_product


@functools.lru_cache(maxsize=None)
def _thin_kernel(dtype, Kd, Nc, tb, epi, T, NI, NJ, MR, MJ, fast=False):
    """``C = epi(A @ op(B))`` for a B small enough to stay in shared memory.

    A block copies B (transposed when ``tb``) into shared memory once, then
    walks over tiles of ``R`` rows: the tile of A is copied in as one
    contiguous run (rows of a C-contiguous A are consecutive), each thread
    computes its ``MR x MJ`` micro-tile in registers, applies the epilogue and
    writes it to a C tile in shared memory, and the tile goes to C as one
    contiguous run. Offsets are unsigned and the inner loop runs on its offset
    (see ``mlp._flat_kernel``). With ``aux`` the epilogue reads ``aux[m, n]``
    before the tile of C is stored: ``aux`` may be C itself.
    """
    dt = np.dtype(dtype).type
    nbt = numba.from_dtype(np.dtype(dtype))
    zero = dt(0.0)
    u = np.uint32
    R = NI * MR
    XS, BS, CS = _thin_strides(Kd, Nc, NJ, MJ)
    XSN, BSN, CSN, NACC = R * XS, Kd * BS, R * CS, MR * MJ
    uKd, uNc, uXS, uCS, uT = u(Kd), u(Nc), u(XS), u(CS), u(T)
    _d_epilogue = _epilogue_fn(np.dtype(dtype), epi, fast)
    _d_tile_product = _tile_product_fn(np.dtype(dtype), Kd, NI, NJ, MR, MJ, XS, BS)

    @jit()
    def kernel(Af, B, Cf, bias, aux):
        # Af, Cf: A (M, Kd) and C (M, Nc) viewed flat
        Xs = cuda.shared.array(XSN, dtype=nbt)  # row r at r * XS
        Bs = cuda.shared.array(BSN, dtype=nbt)  # op(B) row k at k * BS
        Cs = cuda.shared.array(CSN, dtype=nbt)  # row r at r * CS
        acc = cuda.local.array(NACC, dtype=nbt)
        bv = cuda.local.array(MJ, dtype=nbt)
        tid = cuda.threadIdx.x
        ti = tid // NJ
        tj = tid - ti * NJ
        M = Af.shape[0] // Kd
        # rows past a partial tile's end enter only sums that are never
        # stored; zeroed so that nothing reads uninitialised memory
        e = tid
        while e < XSN:
            Xs[e] = zero
            e += T
        e = tid
        while e < BSN:
            k = e // BS
            n = e - k * BS
            v = zero
            if n < Nc:
                v = B[n, k] if tb else B[k, n]
            Bs[e] = v
            e += T
        cuda.syncthreads()
        n_tiles = (M + R - 1) // R
        t = cuda.blockIdx.x
        while t < n_tiles:
            r0 = t * R
            rows = min(R, M - r0)
            e = u(tid)
            e_end = u(rows) * uKd
            g0 = np.uint64(r0) * uKd
            while e < e_end:
                rr = e // uKd
                Xs[rr * uXS + (e - rr * uKd)] = Af[g0 + e]
                e += uT
            cuda.syncthreads()
            _d_tile_product(Xs, Bs, acc, bv, ti, tj)
            for rr in range(MR):
                r = ti + NI * rr
                if r < rows:
                    for jj in range(MJ):
                        j = tj + NJ * jj
                        if j < Nc:
                            Cs[u(r) * uCS + u(j)] = _d_epilogue(acc[rr * MJ + jj], bias, aux,
                                                                r0 + r, j)
            cuda.syncthreads()
            e = u(tid)
            e_end = u(rows) * uNc
            g0 = np.uint64(r0) * uNc
            while e < e_end:
                rr = e // uNc
                Cf[g0 + e] = Cs[rr * uCS + (e - rr * uNc)]
                e += uT
            # the next tile's copy into Xs needs no barrier: every thread has
            # passed the one above, so no one still reads Xs
            t += cuda.gridDim.x

    return kernel


def _thin(A, B, C, tb, epi, bias, aux, plan):
    M, Kd = A.shape
    Nc = C.shape[1]
    dtype = np.dtype(C.dtype)
    kernel = _thin_kernel(dtype, Kd, Nc, bool(tb), int(epi), plan["T"], plan["NI"], plan["NJ"],
                          plan["MR"], plan["MJ"], _fast(dtype, epi))
    args = (A.reshape(M * Kd), B, C.reshape(M * Nc), bias, aux)
    blocks = rt.resident_grid(kernel, args, plan["T"], -(-M // plan["R"]))
    rt.launch(kernel, blocks, plan["T"], *args)


@rt.cached_plan("CUDA_THIN", "CUDA_THIN_SUM_MAX_RATIO", "CUDA_THIN_TPB", "CUDA_THIN_MAX_ROWS",
                "CUDA_SHARED_BYTES", "CUDA_FUSED_MAX_ACC")
def plan_thin_sum(Ka, Nb, itemsize):
    """The layout of the thin row-sum kernel (:func:`_thin_sum_kernel`) for
    ``A^T B`` with ``Ka`` columns of A and ``Nb`` of B, or None where it does
    not apply: ``CUDA_THIN`` off, or more than ``CUDA_THIN_SUM_MAX_RATIO``
    multiply-adds per value read (``Ka * Nb / (Ka + Nb)``: wider products are
    bound by arithmetic, where cuBLAS does better).

    The block's threads form ``NL`` row lanes of an ``NI x NJ`` grid each;
    thread ``(lane, ti, tj)`` sums the outputs ``(ti + NI * ii, tj + NJ * jj)``
    (``ii < MI``, ``jj < MJ``, at most ``CUDA_FUSED_MAX_ACC`` of them) over
    the rows ``lane, lane + NL, ...`` of each tile of ``R`` rows. The grid is
    the one with the fewest issue slots a row, ``NI NJ (MI MJ + MI + MJ)``
    (multiply-adds and shared loads): the fewer threads share a row, the fewer
    loads, as long as their sums fit in registers.

    Returns
    -------
    dict or None
        ``T, NL, NI, NJ, MI, MJ, R``.
    """
    if not opt.CUDA_THIN or Ka * Nb > opt.CUDA_THIN_SUM_MAX_RATIO * (Ka + Nb):
        return None
    T = opt.CUDA_THIN_TPB
    best = None
    ni = 1
    while ni <= T:
        nj = 1
        while ni * nj <= T:
            mi, mj = -(-Ka // ni), -(-Nb // nj)
            SA, SB = _thin_sum_strides(Ka, Nb, ni, nj, mi, mj)
            R = min(opt.CUDA_THIN_MAX_ROWS,
                    (opt.CUDA_SHARED_BYTES // itemsize - T) // (SA + SB))
            # tiles of at least 32 rows (or T), at least two rows a lane
            if mi * mj <= opt.CUDA_FUSED_MAX_ACC and R >= max(min(32, T), 2 * T // (ni * nj)):
                key = (ni * nj * (mi * mj + mi + mj), ni * nj)
                if best is None or key < best[0]:
                    best = (key, dict(T=T, NL=T // (ni * nj), NI=ni, NJ=nj, MI=mi, MJ=mj, R=R))
            nj *= 2
        ni *= 2
    return None if best is None else best[1]


def _thin_sum_strides(Ka, Nb, NI, NJ, MI, MJ):
    """Row strides of the row-sum kernel's A and B tiles: odd, and wide
    enough that a thread's columns past ``Ka`` and ``Nb`` stay in the row
    (their sums are never stored)."""
    return max(Ka, NI * MI) | 1, max(Nb, NJ * MJ) | 1


@functools.lru_cache(maxsize=None)
def _row_sum_fns(dtype, Ka, Nb, T, NL, NI, NJ, MI, MJ, SA, SB):
    """The device functions of the row sums ``A^T B`` over a tile in shared
    memory, shared by :func:`_thin_sum_kernel` and the thin layers' backward
    kernel (``affine._backward_kernel``).

    ``_d_add_rows(As, Bs, acc, av, bv, lane, ti, tj, rows)`` adds the rows
    ``lane, lane + NL, ... < rows`` of the tiles (row strides ``SA``, ``SB``)
    to thread ``(lane, ti, tj)``'s ``MI x MJ`` sums ``acc``, walking them on
    their offsets; ``_d_store_sums(acc, buf, part, b, tid, lane, ti, tj)``
    adds the lanes' sums in lane order (through ``buf``, ``T`` values of
    shared memory) and writes ``part[b, i * Nb + j]`` for ``i < Ka``,
    ``j < Nb``.
    """
    u = np.uint32
    G = NI * NJ
    uSA, uSB = u(SA), u(SB)
    uLA, uLB = u(NL * SA), u(NL * SB)

    @jit(device=True)
    def _d_add_rows(As, Bs, acc, av, bv, lane, ti, tj, rows):
        n_mine = (rows - lane + NL - 1) // NL if lane < rows else 0
        ao = u(lane) * uSA + u(ti)
        bo = u(lane) * uSB + u(tj)
        a_end = ao + u(n_mine) * uLA
        while ao != a_end:  # a loop on the offset: no range counter
            for ii in range(MI):
                av[ii] = As[ao + u(NI * ii)]
            for jj in range(MJ):
                bv[jj] = Bs[bo + u(NJ * jj)]
            for ii in range(MI):
                for jj in range(MJ):
                    acc[ii * MJ + jj] += av[ii] * bv[jj]
            ao += uLA
            bo += uLB

    @jit(device=True)
    def _d_store_sums(acc, buf, part, b, tid, lane, ti, tj):
        for ii in range(MI):
            for jj in range(MJ):
                buf[tid] = acc[ii * MJ + jj]
                cuda.syncthreads()
                i = ti + NI * ii
                j = tj + NJ * jj
                if lane == 0 and i < Ka and j < Nb:
                    g = buf[tid]
                    for q in range(1, NL):
                        g += buf[q * G + tid]
                    part[b, i * Nb + j] = g
                cuda.syncthreads()

    return _d_add_rows, _d_store_sums


@functools.lru_cache(maxsize=None)
def _thin_sum_kernel(dtype, Ka, Nb, aug, T, NL, NI, NJ, MI, MJ, R):
    """Per-block partial sums of ``A^T [B | bvec]`` for thin A and B.

    A block walks over tiles of ``R`` rows: the tiles of A and B are copied
    into shared memory as contiguous runs (``bvec``, when ``aug``, as B's
    last column), and each thread adds its lane's rows of the tile to its
    ``MI x MJ`` sums in registers (the fused MLP kernel's dW1 loop). At the
    end the lanes' sums are added in lane order and the block writes them to
    ``part[block]``; a second pass adds the blocks' rows in a fixed order.
    """
    dt = np.dtype(dtype).type
    nbt = numba.from_dtype(np.dtype(dtype))
    zero = dt(0.0)
    u = np.uint32
    SA, SB = _thin_sum_strides(Ka, Nb, NI, NJ, MI, MJ)
    Nb0 = Nb - 1 if aug else Nb  # columns of B itself
    G = NI * NJ  # threads of a lane
    ASN, BSN, NACC = R * SA, R * SB, MI * MJ
    uKa, uNb0, uSA, uSB, uT = u(Ka), u(max(Nb0, 1)), u(SA), u(SB), u(T)
    _d_add_rows, _d_store_sums = _row_sum_fns(np.dtype(dtype), Ka, Nb, T, NL, NI, NJ, MI, MJ,
                                              SA, SB)

    @jit()
    def kernel(Af, Bf, bvec, part):
        # Af, Bf: A (M, Ka) and B (M, Nb0) viewed flat
        As = cuda.shared.array(ASN, dtype=nbt)  # row r at r * SA
        Bs = cuda.shared.array(BSN, dtype=nbt)  # row r at r * SB
        buf = cuda.shared.array(T, dtype=nbt)
        acc = cuda.local.array(NACC, dtype=nbt)
        av = cuda.local.array(MI, dtype=nbt)
        bv = cuda.local.array(MJ, dtype=nbt)
        tid = cuda.threadIdx.x
        lane = tid // G
        ti = (tid - lane * G) // NJ
        tj = tid - lane * G - ti * NJ
        M = Af.shape[0] // Ka
        for q in range(NACC):
            acc[q] = zero
        # the padding columns enter only sums that are never stored; zeroed
        # so that nothing reads uninitialised memory
        e = tid
        while e < ASN:
            As[e] = zero
            e += T
        e = tid
        while e < BSN:
            Bs[e] = zero
            e += T
        cuda.syncthreads()
        n_tiles = (M + R - 1) // R
        t = cuda.blockIdx.x
        while t < n_tiles:
            r0 = t * R
            rows = min(R, M - r0)
            e = u(tid)
            e_end = u(rows) * uKa
            g0 = np.uint64(r0) * uKa
            while e < e_end:
                rr = e // uKa
                As[rr * uSA + (e - rr * uKa)] = Af[g0 + e]
                e += uT
            if Nb0 > 0:
                e = u(tid)
                e_end = u(rows) * uNb0
                g0 = np.uint64(r0) * uNb0
                while e < e_end:
                    rr = e // uNb0
                    Bs[rr * uSB + (e - rr * uNb0)] = Bf[g0 + e]
                    e += uT
            if aug:
                e = tid
                while e < rows:
                    Bs[u(e) * uSB + u(Nb0)] = bvec[r0 + e]
                    e += T
            cuda.syncthreads()
            _d_add_rows(As, Bs, acc, av, bv, lane, ti, tj, rows)
            cuda.syncthreads()
            t += cuda.gridDim.x
        _d_store_sums(acc, buf, part, cuda.blockIdx.x, tid, lane, ti, tj)

    return kernel


def _thin_sum(A, B, C, bvec, accumulate, plan, work):
    M, Ka = A.shape
    Nb = C.shape[1]
    aug = bvec is not None
    dtype = np.dtype(C.dtype)
    kernel = _thin_sum_kernel(dtype, Ka, Nb, aug, plan["T"], plan["NL"], plan["NI"],
                              plan["NJ"], plan["MI"], plan["MJ"], plan["R"])
    Bf = B.reshape(B.size) if B.shape[1] > 0 else _dummy(dtype, 1)
    bv = bvec if aug else _dummy(dtype, 1)
    Af = A.reshape(A.size)
    blocks = rt.resident_grid(kernel, (Af, Bf, bv, rt.array_type(dtype, 2)), plan["T"],
                              -(-M // plan["R"]))
    part = rt.buffer(work, "gemm.thin_partials", (blocks, Ka * Nb), dtype)
    rt.launch(kernel, blocks, plan["T"], Af, Bf, bv, part)
    rt.sum_partials(part, C.reshape(Ka * Nb), 1.0, accumulate)


def _tile(size, block, micro):
    """Block and micro-tile edge for an output edge of ``size``: the configured
    ones, shrunk (powers of two, at least 8 threads along the edge when the
    configured block has that many) for thin outputs, where a full block
    would mostly compute padding."""
    threads = max(1, block // micro)
    while block > 1 and block // 2 >= size:
        block //= 2
    micro = max(1, min(micro, block // min(threads, 8)))
    return block, micro


def splits_for(n_tiles, inner, block_k):
    """How many row ranges a product summed over ``inner`` rows is split into."""
    if inner <= 4 * block_k:
        return 1
    want = -(-rt.grid_size(1 << 30) // max(1, n_tiles))
    most = max(1, inner // (4 * block_k))
    return int(max(1, min(want, most, opt.CUDA_MAX_SPLITS)))


def matmul(A, B, C, *, ta=False, tb=False, epi=EPI_NONE, bias=None, aux=None, bvec=None,
           accumulate=False, use_library=True, work=None):
    """``C (+)= op(A) @ op(B)``, then the epilogue ``epi``; all device arrays.

    Parameters
    ----------
    A, B : device arrays, 2-D, C-contiguous, one float dtype
        ``op(A)`` is ``A.T`` when ``ta``, likewise ``op(B)``.
    C : device array (M, N)
        The output; with ``accumulate`` the product is added to it (only with
        ``EPI_NONE``).
    epi : int
        One of the ``EPI_*`` constants; ``bias`` (N,) and ``aux`` (M, N) as
        it needs. ``aux`` may be ``C`` itself (the product is then computed
        by the numba kernel, which reads each element of ``aux`` before it
        stores the same element of ``C``; cuBLAS would overwrite ``aux``
        before the epilogue reads it).
    bvec : device array (K,), optional
        Appended to ``op(B)`` as one more column (only without ``tb``): C then
        has one more column than ``B``.
    use_library : bool
        Allow cuBLAS (through CuPy) where ``backend()`` says so; products
        with a tiny inner dimension are better left to the numba kernel.
    """
    M = A.shape[1] if ta else A.shape[0]
    Kd = A.shape[0] if ta else A.shape[1]
    Nb = B.shape[0] if tb else B.shape[1]
    Nc = Nb + (1 if bvec is not None else 0)
    if accumulate and epi != EPI_NONE:
        raise ValueError("accumulate works with EPI_NONE only")
    dtype = np.dtype(C.dtype)
    if not ta and bvec is None and not accumulate and M > 0:
        plan = plan_thin(Kd, Nc, dtype.itemsize)
        if plan is not None:
            bias = _dummy(dtype, 1) if bias is None else bias
            aux = _dummy(dtype, 2) if aux is None else aux
            _thin(A, B, C, tb, epi, bias, aux, plan)
            return C
    if ta and not tb and epi == EPI_NONE and Kd > 0:
        plan = plan_thin_sum(M, Nc, dtype.itemsize)
        if plan is not None:
            _thin_sum(A, B, C, bvec, accumulate, plan, work)
            return C
    if use_library and bvec is None and aux is not C and backend() == "cupy":
        _cupy_matmul(A, B, C, ta, tb, epi, bias, aux, accumulate)
        return C
    BM, TM = _tile(M, opt.CUDA_GEMM_BM, opt.CUDA_GEMM_TM)
    BN, TN = _tile(Nc, opt.CUDA_GEMM_BN, opt.CUDA_GEMM_TN)
    BK = opt.CUDA_GEMM_BK
    n_tiles = -(-M // BM) * -(-Nc // BN)
    splits = splits_for(n_tiles, Kd, BK) if (ta and epi == EPI_NONE) else 1
    bias = _dummy(dtype, 1) if bias is None else bias
    aux = _dummy(dtype, 2) if aux is None else aux
    bvec_arg = _dummy(dtype, 1) if bvec is None else bvec
    k_chunk = -(-Kd // splits)
    k_chunk = -(-k_chunk // BK) * BK
    splits = -(-Kd // k_chunk)
    partial = splits > 1
    kernel, T = _gemm_kernel(dtype, bool(ta), bool(tb), int(epi), bvec is not None, partial,
                             BM, BN, BK, TM, TN, _fast(dtype, epi))
    grid = (rt.grid_size(n_tiles), splits)
    if partial:
        P = rt.buffer(work, "gemm.partials", (splits, M, Nc), dtype)
        rt.launch(kernel, grid, T, A, B, bvec_arg, P, bias, aux, M, Nc, Kd, k_chunk, False)
        rt.sum_partials(P.reshape(splits, M * Nc), C.reshape(M * Nc), 1.0, accumulate)
    else:
        rt.launch(kernel, grid, T, A, B, bvec_arg, C, bias, aux, M, Nc, Kd, k_chunk,
                  bool(accumulate))
    return C


def epilogue(C, epi, bias=None, aux=None):
    """Apply ``epi`` to ``C`` in place (one elementwise pass)."""
    if epi == EPI_NONE:
        return
    dtype = np.dtype(C.dtype)
    bias = _dummy(dtype, 1) if bias is None else bias
    aux = _dummy(dtype, 2) if aux is None else aux
    tpb = opt.CUDA_TPB
    rt.launch(_epilogue_kernel(dtype, int(epi), _fast(dtype, epi)),
              rt.grid_size(-(-C.size // tpb)), tpb, C, bias, aux)


def _cupy_matmul(A, B, C, ta, tb, epi, bias, aux, accumulate):
    cp = _cupy()
    a = cp.asarray(A)
    b = cp.asarray(B)
    a = a.T if ta else a
    b = b.T if tb else b
    c = cp.asarray(C)
    if accumulate:
        c += cp.matmul(a, b)
    else:
        cp.matmul(a, b, out=c)
    epilogue(C, epi, bias, aux)
