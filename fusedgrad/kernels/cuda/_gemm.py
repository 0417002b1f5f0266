"""Matrix products on the GPU with the elementwise stages fused around them.

:func:`matmul` computes ``C (+)= op(A) @ op(B)`` followed by an epilogue
(bias, bias and sigmoid, or the sigmoid derivative of an activation), with
either

* a tiled shared-memory kernel written in numba.cuda: a block computes a
  ``BM x BN`` tile of C, stepping through the inner dimension ``BK`` at a
  time; each thread keeps a ``TM x TN`` micro-tile in registers, its rows and
  columns strided by the thread grid so that shared-memory reads are free of
  bank conflicts; the epilogue is applied as the tile is stored; or
* cuBLAS through CuPy (when installed, see ``CUDA_GEMM``), followed by one
  elementwise pass for the epilogue.

Products summed over many rows (``A^T B`` with A and B of n_samples rows)
are split over row ranges: each split writes its own partial tile and the
partials are added in a fixed order by :func:`fusedgrad.kernels.cuda._runtime.sum_partials`,
so results do not depend on scheduling.
"""

import functools
import math

import numba
import numpy as np

from fusedgrad.kernels import _options as opt
from fusedgrad.kernels.cuda import _runtime as rt
from fusedgrad.kernels.cuda._device import helpers
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


@functools.lru_cache(maxsize=None)
def _epilogue_fn(dtype, epi):
    """The device function ``f(v, bias, aux, m, n)`` of epilogue ``epi`` for
    element ``(m, n)`` of a product (``epi`` is a compile-time constant)."""
    dt = np.dtype(dtype).type
    one = dt(1.0)
    zero = dt(0.0)
    _d_sigmoid = helpers(np.dtype(dtype), 32, False)._d_sigmoid

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
def _gemm_kernel(dtype, ta, tb, epi, aug, partial, BM, BN, BK, TM, TN):
    dt = np.dtype(dtype).type
    nbt = numba.from_dtype(np.dtype(dtype))
    zero = dt(0.0)
    NTM = BM // TM
    NTN = BN // TN
    T = NTM * NTN
    BM1, BN1, TMN = BM + 1, BN + 1, TM * TN  # shapes must be compile-time constants
    _d_epilogue = _epilogue_fn(np.dtype(dtype), epi)

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
def _epilogue_kernel(dtype, epi):
    _d_epilogue = _epilogue_fn(np.dtype(dtype), epi)

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
                             BM, BN, BK, TM, TN)
    grid = (rt.grid_size(n_tiles), splits)
    if partial:
        P = rt.buffer(work, "gemm.partials", (splits, M, Nc), dtype)
        kernel[grid, T](A, B, bvec_arg, P, bias, aux, M, Nc, Kd, k_chunk, False)
        rt.sum_partials(P.reshape(splits, M * Nc), C.reshape(M * Nc), 1.0, accumulate)
    else:
        kernel[grid, T](A, B, bvec_arg, C, bias, aux, M, Nc, Kd, k_chunk, bool(accumulate))
    return C


def epilogue(C, epi, bias=None, aux=None):
    """Apply ``epi`` to ``C`` in place (one elementwise pass)."""
    if epi == EPI_NONE:
        return
    dtype = np.dtype(C.dtype)
    bias = _dummy(dtype, 1) if bias is None else bias
    aux = _dummy(dtype, 2) if aux is None else aux
    tpb = opt.CUDA_TPB
    _epilogue_kernel(dtype, int(epi))[rt.grid_size(-(-C.size // tpb)), tpb](C, bias, aux)


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
