"""Vectorisable elementary functions for the jitted loops.

pip's llvmlite ships no SVML, so ``math.exp``/``np.exp`` inside a Numba loop
is a scalar libm call that blocks vectorisation. :func:`exp` here is plain
arithmetic that LLVM turns into SIMD code:

* Cody–Waite range reduction ``x = k ln2 + r`` with ``|r| <= ln2 / 2``,
  ``k`` an integer, ln2 split in a high and a low part;
* a polynomial for ``e^r``: Cephes' degree-5 minimax polynomial for float32
  (max. rel. error 3e-7, ~2 ulp, on [-87, 88]), the degree-13 Taylor
  polynomial for float64 (truncation error < 5e-18, max. rel. error ~2 ulp);
* ``2^k`` built from its bits (an LLVM ``bitcast``, vectorisable).

The results overflow to ``inf`` and underflow to ``0`` as ``np.exp`` does,
except that results below the smallest normal number flush to 0.
Every constant is typed in the argument's precision, so float32 code stays
float32 (a Python float literal would promote it to float64).
"""

import numpy as np
from numba import njit, types
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload

from fusedgrad.kernels._options import INLINE

__all__ = ["exp", "sigmoid"]


@intrinsic
def _int_bits_as_float(typingctx, bits):
    """Reinterpret the bits of an int32 (int64) as a float32 (float64)."""
    if bits == types.int32:
        ftype = types.float32
    elif bits == types.int64:
        ftype = types.float64
    else:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(ftype))

    return ftype(bits), codegen


_F32 = np.float32
_F64 = np.float64

# float32: e^x = 2^k e^r, valid between the smallest normal and the largest float
_LO32, _HI32 = _F32(-87.33654), _F32(88.72284)
_LOG2E32 = _F32(1.44269504088896341)
_LN2HI32, _LN2LO32 = _F32(0.693359375), _F32(-2.12194440e-4)
_C32 = tuple(_F32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                               4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))
_KMAX32, _KMIN32 = _F32(128.0), _F32(-126.0)
_INF32 = _F32(np.inf)

_LO64, _HI64 = _F64(-708.3964185322641), _F64(709.782712893384)
_LOG2E64 = _F64(1.4426950408889634)
_LN2HI64, _LN2LO64 = _F64(6.93147180369123816490e-01), _F64(1.90821492927058770002e-10)
_KMAX64, _KMIN64 = _F64(1024.0), _F64(-1022.0)
# 1/j! for j = 13 .. 2
_C64 = tuple(_F64(1.0 / np.prod(np.arange(1, j + 1, dtype=np.float64))) for j in range(13, 1, -1))


@njit(**INLINE)
def _exp32(x):
    xc = min(max(x, _LO32), _HI32)
    k = np.floor(xc * _LOG2E32 + _F32(0.5))
    k = min(max(k, _KMIN32), _KMAX32)
    r = xc - k * _LN2HI32 - k * _LN2LO32
    p = _C32[0]
    p = p * r + _C32[1]
    p = p * r + _C32[2]
    p = p * r + _C32[3]
    p = p * r + _C32[4]
    p = p * r + _C32[5]
    p = p * (r * r) + r + _F32(1.0)
    # 2^k as (2^(k - 1) * 2 for k > 0): keeps the exponent bits in range at k = 128
    up = k > _F32(0.0)
    kk = np.int32(k) - np.int32(up) + np.int32(127)
    y = p * _int_bits_as_float(np.int32(kk << np.int32(23)))
    y = y * _F32(2.0) if up else y
    y = _F32(0.0) if x < _LO32 else y
    return _INF32 if x > _HI32 else y


@njit(**INLINE)
def _exp64(x):
    xc = min(max(x, _LO64), _HI64)
    k = np.floor(xc * _LOG2E64 + 0.5)
    k = min(max(k, _KMIN64), _KMAX64)
    r = xc - k * _LN2HI64 - k * _LN2LO64
    p = _C64[0]
    p = p * r + _C64[1]
    p = p * r + _C64[2]
    p = p * r + _C64[3]
    p = p * r + _C64[4]
    p = p * r + _C64[5]
    p = p * r + _C64[6]
    p = p * r + _C64[7]
    p = p * r + _C64[8]
    p = p * r + _C64[9]
    p = p * r + _C64[10]
    p = p * r + _C64[11]
    p = p * (r * r) + r + 1.0
    up = k > 0.0
    kk = np.int64(k) - np.int64(up) + np.int64(1023)
    y = p * _int_bits_as_float(kk << np.int64(52))
    y = y * 2.0 if up else y
    y = 0.0 if x < _LO64 else y
    return np.inf if x > _HI64 else y


def exp(x):
    """Vectorisable ``e**x`` of a float32 or float64 scalar (jitted code only)."""
    raise NotImplementedError("fusedgrad.kernels._math.exp runs only inside jitted code")


@overload(exp, inline="always")
def _exp_overload(x):
    if x == types.float32:
        return lambda x: _exp32(x)
    if x == types.float64:
        return lambda x: _exp64(x)
    raise TypingError(f"exp supports float32 and float64, not {x}")


def sigmoid(z):
    """The logistic function ``1 / (1 + e^-z)`` (jitted code only).

    Exactly 0 or 1 far out (e^-z overflows to inf, 1/inf = 0), never NaN for finite z.
    """
    raise NotImplementedError("fusedgrad.kernels._math.sigmoid runs only inside jitted code")


@overload(sigmoid, inline="always")
def _sigmoid_overload(z):
    if z == types.float32:
        one32 = _F32(1.0)
        return lambda z: one32 / (one32 + _exp32(-z))
    if z == types.float64:
        return lambda z: 1.0 / (1.0 + _exp64(-z))
    raise TypingError(f"sigmoid supports float32 and float64, not {z}")
