"""Device functions shared by the CUDA kernels (``_d_*``).

Built per dtype (and block size) by :func:`helpers`, so that constants are
typed in the array dtype: a float64 literal in a float32 kernel would make the
GPU compute in float64.
"""

import functools
import math

import numpy as np

from fusedgrad.kernels import _options as opt
from fusedgrad.kernels.cuda import _runtime as rt
from fusedgrad.kernels.cuda._runtime import cuda, jit


def fast_sigmoid(dtype):
    """Whether kernels of ``dtype`` take the fast sigmoid (``CUDA_FAST_SIGMOID``).

    The fast sigmoid divides ``1 / (1 + exp(-z))`` by ``__fdividef`` (PTX
    ``div.approx.f32``: at most 2 ulp for a divisor up to 2**126, and 0 above,
    where the exact quotient is below 1e-38) instead of the IEEE division,
    whose rounding step, slow-path branch and call split every sigmoid off the
    code around it. ``exp`` stays libdevice's accurate ``expf`` (at most 2
    ulp), so the sigmoid is within about 5 ulp for every ``z``. float32 only:
    float64 kernels keep the IEEE division.
    """
    return bool(opt.CUDA_FAST_SIGMOID) and np.dtype(dtype) == np.float32


@functools.lru_cache(maxsize=None)
def fast_division():
    """``a / b`` by ``__fdividef`` on a GPU; under the simulator, which has no
    libdevice, the IEEE division (the simulated kernels then compute what the
    IEEE sigmoid does)."""
    if rt.simulator():

        @jit(device=True)
        def _d_div(a, b):
            return a / b

        return _d_div
    from numba.cuda import libdevice

    @jit(device=True)
    def _d_div(a, b):
        return libdevice.fast_fdividef(a, b)

    return _d_div


@functools.lru_cache(maxsize=None)
def helpers(dtype, tpb, shuffle, fast_sigmoid=False):
    """Device functions for arrays of ``dtype`` in blocks of ``tpb`` threads.

    Parameters
    ----------
    dtype : numpy dtype
        float32 or float64.
    tpb : int
        Threads per block (a power of two; a multiple of 32 when ``shuffle``).
    shuffle : bool
        Reduce within warps with ``shfl_down_sync`` rather than through
        shared memory only.
    fast_sigmoid : bool
        Divide by the approximate division of :func:`fast_division` in
        ``_d_sigmoid`` (see :func:`fast_sigmoid`).

    Returns
    -------
    types.SimpleNamespace
        ``_d_sigmoid``, ``_d_block_sum``, ``_d_block_max``, ``_d_block_min_int``.
    """
    from types import SimpleNamespace

    dt = np.dtype(dtype).type
    one = dt(1.0)
    n_warps = max(1, tpb // 32)
    if shuffle and tpb % 32:
        raise ValueError(f"warp-shuffle reductions need a multiple of 32 threads, got {tpb}")

    if fast_sigmoid:
        _d_div = fast_division()

        @jit(device=True)
        def _d_sigmoid(z):
            """The logistic function, approximate division; exp(-z) = inf gives 0."""
            return _d_div(one, one + math.exp(-z))

    else:

        @jit(device=True)
        def _d_sigmoid(z):
            """The logistic function; exp(-z) = inf gives 0, never NaN."""
            return one / (one + math.exp(-z))

    if shuffle:

        @jit(device=True)
        def _d_warp_sum(v):
            for off in (16, 8, 4, 2, 1):
                v += cuda.shfl_down_sync(0xFFFFFFFF, v, off)
            return v

        @jit(device=True)
        def _d_warp_max(v):
            for off in (16, 8, 4, 2, 1):
                v = max(v, cuda.shfl_down_sync(0xFFFFFFFF, v, off))
            return v

        @jit(device=True)
        def _d_warp_min(v):
            for off in (16, 8, 4, 2, 1):
                v = min(v, cuda.shfl_down_sync(0xFFFFFFFF, v, off))
            return v

        @jit(device=True)
        def _d_block_sum(buf, v):
            """Sum of ``v`` over the block (fixed order); every thread gets it.

            ``buf``: shared array of at least ``tpb`` elements of v's type.
            """
            tid = cuda.threadIdx.x
            lane = tid & 31
            warp = tid >> 5
            v = _d_warp_sum(v)
            if lane == 0:
                buf[warp] = v
            cuda.syncthreads()
            if warp == 0:
                v = buf[lane] if lane < n_warps else buf[0] * 0
                v = _d_warp_sum(v)
                if lane == 0:
                    buf[0] = v
            cuda.syncthreads()
            total = buf[0]
            cuda.syncthreads()
            return total

        @jit(device=True)
        def _d_block_max(buf, v):
            """Maximum of ``v`` over the block; every thread gets it."""
            tid = cuda.threadIdx.x
            lane = tid & 31
            warp = tid >> 5
            v = _d_warp_max(v)
            if lane == 0:
                buf[warp] = v
            cuda.syncthreads()
            if warp == 0:
                v = buf[lane] if lane < n_warps else buf[0]
                v = _d_warp_max(v)
                if lane == 0:
                    buf[0] = v
            cuda.syncthreads()
            total = buf[0]
            cuda.syncthreads()
            return total

        @jit(device=True)
        def _d_block_min_int(ibuf, v):
            """Minimum of the integer ``v`` over the block; every thread gets it."""
            tid = cuda.threadIdx.x
            lane = tid & 31
            warp = tid >> 5
            v = _d_warp_min(v)
            if lane == 0:
                ibuf[warp] = v
            cuda.syncthreads()
            if warp == 0:
                v = ibuf[lane] if lane < n_warps else ibuf[0]
                v = _d_warp_min(v)
                if lane == 0:
                    ibuf[0] = v
            cuda.syncthreads()
            total = ibuf[0]
            cuda.syncthreads()
            return total

    else:

        @jit(device=True)
        def _d_block_sum(buf, v):
            """Sum of ``v`` over the block by a shared-memory tree (fixed order)."""
            tid = cuda.threadIdx.x
            buf[tid] = v
            cuda.syncthreads()
            s = tpb // 2
            while s > 0:
                if tid < s:
                    buf[tid] += buf[tid + s]
                cuda.syncthreads()
                s //= 2
            total = buf[0]
            cuda.syncthreads()
            return total

        @jit(device=True)
        def _d_block_max(buf, v):
            """Maximum of ``v`` over the block by a shared-memory tree."""
            tid = cuda.threadIdx.x
            buf[tid] = v
            cuda.syncthreads()
            s = tpb // 2
            while s > 0:
                if tid < s:
                    buf[tid] = max(buf[tid], buf[tid + s])
                cuda.syncthreads()
                s //= 2
            total = buf[0]
            cuda.syncthreads()
            return total

        @jit(device=True)
        def _d_block_min_int(ibuf, v):
            """Minimum of the integer ``v`` over the block by a shared-memory tree."""
            tid = cuda.threadIdx.x
            ibuf[tid] = v
            cuda.syncthreads()
            s = tpb // 2
            while s > 0:
                if tid < s:
                    ibuf[tid] = min(ibuf[tid], ibuf[tid + s])
                cuda.syncthreads()
                s //= 2
            total = ibuf[0]
            cuda.syncthreads()
            return total

    return SimpleNamespace(
        _d_sigmoid=_d_sigmoid,
        _d_block_sum=_d_block_sum,
        _d_block_max=_d_block_max,
        _d_block_min_int=_d_block_min_int,
    )
