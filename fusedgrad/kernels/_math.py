"""Vectorisable elementary functions for the jitted loops.

pip's llvmlite ships no SVML, so ``math.exp``/``np.exp`` inside a Numba loop
is a scalar libm call that blocks vectorisation. :func:`exp` here is plain
arithmetic that LLVM turns into SIMD code:

* Cody–Waite range reduction ``x = k ln2 + r`` with ``|r| <= ln2 / 2``,
  ``k`` an integer, ln2 split in a high and a low part;
* a polynomial for ``e^r``: Cephes' degree-5 minimax polynomial for float32,
  the degree-13 Taylor polynomial for float64 (truncation error < 5e-18);
  measured max. error (tests/test_math.py) below 1.3 ulp in both precisions
  over the whole normal range;
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

__all__ = ["exp", "log1p", "sigmoid", "tanh"]


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


@intrinsic
def _float_bits_as_int(typingctx, x):
    """Reinterpret the bits of a float32 (float64) as an int32 (int64)."""
    if x == types.float32:
        itype = types.int32
    elif x == types.float64:
        itype = types.int64
    else:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(itype))

    return itype(x), codegen


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
def _exp_reduced32(xc, k):
    """``e^r`` for ``r = xc - k ln2`` (``k`` an integer-valued float32)."""
    # The low part of k ln2 is formed from k's integer value: with k itself,
    # fast-math (reassociation with contraction) may fold the two products
    # into k * ln2 and lose the split's accuracy (measured: ~200 ulp in float64).
    ki = np.int32(k)
    r = xc - k * _LN2HI32 - _F32(ki) * _LN2LO32
    p = _C32[0]
    p = p * r + _C32[1]
    p = p * r + _C32[2]
    p = p * r + _C32[3]
    p = p * r + _C32[4]
    p = p * r + _C32[5]
    return p * (r * r) + r + _F32(1.0)


@njit(**INLINE)
def _exp32(x):
    xc = min(max(x, _LO32), _HI32)
    k = np.floor(xc * _LOG2E32 + _F32(0.5))
    k = min(max(k, _KMIN32), _KMAX32)
    p = _exp_reduced32(xc, k)
    # 2^k as (2^(k - 1) * 2 for k > 0): keeps the exponent bits in range at k = 128
    up = k > _F32(0.0)
    kk = np.int32(k) - np.int32(up) + np.int32(127)
    y = p * _int_bits_as_float(np.int32(kk << np.int32(23)))
    y = y * _F32(2.0) if up else y
    y = _F32(0.0) if x < _LO32 else y
    return _INF32 if x > _HI32 else y


@njit(**INLINE)
def _exp_reduced64(xc, k):
    """``e^r`` for ``r = xc - k ln2`` (``k`` an integer-valued float64)."""
    ki = np.int64(k)
    r = xc - k * _LN2HI64 - _F64(ki) * _LN2LO64
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
    return p * (r * r) + r + 1.0


@njit(**INLINE)
def _exp64(x):
    xc = min(max(x, _LO64), _HI64)
    k = np.floor(xc * _LOG2E64 + 0.5)
    k = min(max(k, _KMIN64), _KMAX64)
    p = _exp_reduced64(xc, k)
    up = k > 0.0
    kk = np.int64(k) - np.int64(up) + np.int64(1023)
    y = p * _int_bits_as_float(kk << np.int64(52))
    y = y * 2.0 if up else y
    y = 0.0 if x < _LO64 else y
    return np.inf if x > _HI64 else y


def _by_dtype(public, f32, f64):
    """Give the Python stub ``public`` its jitted implementation, inlined:
    ``f32`` for a float32 argument, ``f64`` for a float64 one."""

    def implementation(x):
        if x == types.float32:
            return lambda x: f32(x)
        if x == types.float64:
            return lambda x: f64(x)
        raise TypingError(f"{public.__name__} supports float32 and float64, not {x}")

    overload(public, inline="always")(implementation)


def exp(x):
    """Vectorisable ``e**x`` of a float32 or float64 scalar (jitted code only)."""
    raise NotImplementedError("fusedgrad.kernels._math.exp runs only inside jitted code")


_by_dtype(exp, _exp32, _exp64)


def sigmoid(z):
    """The logistic function ``1 / (1 + e^-z)`` (jitted code only).

    Exactly 1 far out on the right; 0 where the true value is below the
    smallest normal number (``z < -87.3`` in float32, ``z < -708.4`` in
    float64), as :func:`exp` flushes. Never NaN for finite or infinite ``z``;
    NaN for NaN. Within 3.5 ulp of the exact value elsewhere (tests/test_math.py).
    """
    raise NotImplementedError("fusedgrad.kernels._math.sigmoid runs only inside jitted code")


# The sigmoid's exponential needs no overflow, underflow or 2^128 handling:
# its argument is clamped to [LO, -LO], where 2^k has normal exponent bits
# (|k| <= 126, resp. 1022), and results below the smallest normal number are
# replaced by 0 afterwards. One third faster than 1 / (1 + exp(-z)) with the
# general exp (measured, float32 AVX-512: 0.57 -> 0.38 ns per element).


@njit(**INLINE)
def _exp_clamped32(x):
    """``e^x`` for ``x`` already clamped to ``[LO, -LO]`` (no range checks)."""
    k = np.floor(x * _LOG2E32 + _F32(0.5))
    return _exp_reduced32(x, k) * _int_bits_as_float(
        np.int32((np.int32(k) + np.int32(127)) << np.int32(23)))


@njit(**INLINE)
def _exp_clamped64(x):
    """``e^x`` for ``x`` already clamped to ``[LO, -LO]`` (no range checks)."""
    k = np.floor(x * _LOG2E64 + 0.5)
    return _exp_reduced64(x, k) * _int_bits_as_float((np.int64(k) + np.int64(1023)) << np.int64(52))


@njit(**INLINE)
def _sigmoid32(z):
    e = _exp_clamped32(min(max(-z, _LO32), -_LO32))
    s = _F32(1.0) / (_F32(1.0) + e)
    return _F32(0.0) if z < _LO32 else s  # (NaN propagates)


@njit(**INLINE)
def _sigmoid64(z):
    e = _exp_clamped64(min(max(-z, _LO64), -_LO64))
    s = 1.0 / (1.0 + e)
    return 0.0 if z < _LO64 else s


_by_dtype(sigmoid, _sigmoid32, _sigmoid64)


def tanh(z):
    """``tanh(z) = sign(z) (1 - e) / (1 + e)``, ``e = e^(-2|z|)`` (jitted code only).

    The exponential's argument is clamped as the sigmoid's (below it, ``e``
    is far below half an ulp of 1, so the result is exactly +-1): no branch
    on overflow. Absolute error a few units in the last place of 1 (near 0
    the subtraction ``1 - e`` cancels, as in every form from ``e``); NaN for NaN.
    """
    raise NotImplementedError("fusedgrad.kernels._math.tanh runs only inside jitted code")


@njit(**INLINE)
def _tanh32(z):
    e = _exp_clamped32(max(_F32(-2.0) * abs(z), _LO32))
    t = (_F32(1.0) - e) / (_F32(1.0) + e)
    return -t if z < _F32(0.0) else t


@njit(**INLINE)
def _tanh64(z):
    e = _exp_clamped64(max(-2.0 * abs(z), _LO64))
    t = (1.0 - e) / (1.0 + e)
    return -t if z < 0.0 else t


_by_dtype(tanh, _tanh32, _tanh64)


# log: x = 2^k (1 + f) with sqrt(2)/2 <= 1 + f < sqrt(2), s = f / (2 + f),
# log(1 + f) = f - f^2/2 + s (f^2/2 + R(s^2)) with fdlibm's minimax R
# (musl's four-term R in float32), ln2 split in a high and a low part.
_SQRT2_32 = _F32(1.41421356)
_LN2HI_LOG32, _LN2LO_LOG32 = _F32(6.9313812256e-01), _F32(9.0580006145e-06)
_LG32 = tuple(_F32(c) for c in (0.66666662693, 0.40000972152, 0.28498786688, 0.24279078841))
_SQRT2_64 = _F64(1.4142135623730951)
_TINY32, _TINY64 = _F32(2.0**-24), _F64(2.0**-53)
_LN2HI_LOG64, _LN2LO_LOG64 = _F64(6.93147180369123816490e-01), _F64(1.90821492927058770002e-10)
_LG64 = tuple(_F64(c) for c in (
    6.666666666666735130e-01, 3.999999999940941908e-01, 2.857142874366239149e-01,
    2.222219843214978396e-01, 1.818357216161805012e-01, 1.531383769920937332e-01,
    1.479819860511658591e-01))


@njit(**INLINE)
def _log1p_reduced32(f, dk):
    # log(2^dk (1 + f)) for sqrt(2)/2 <= 1 + f < sqrt(2)
    s = f / (_F32(2.0) + f)
    z = s * s
    w = z * z
    R = z * (_LG32[0] + w * _LG32[2]) + w * (_LG32[1] + w * _LG32[3])
    hfsq = _F32(0.5) * f * f
    return s * (hfsq + R) + dk * _LN2LO_LOG32 - hfsq + f + dk * _LN2HI_LOG32


@njit(**INLINE)
def _log1p_reduced64(f, dk):
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    t1 = w * (_LG64[1] + w * (_LG64[3] + w * _LG64[5]))
    t2 = z * (_LG64[0] + w * (_LG64[2] + w * (_LG64[4] + w * _LG64[6])))
    hfsq = 0.5 * f * f
    return s * (hfsq + t2 + t1) + dk * _LN2LO_LOG64 - hfsq + f + dk * _LN2HI_LOG64


@njit(**INLINE)
def _log1p32(t):
    # For t < sqrt(2) - 1 the reduced argument is t itself (exact); beyond it
    # u = 1 + t is reduced, and its rounding costs at most ~3 ulp since
    # log(u) > log(sqrt(2)). Never ``(1 + t) - 1``: fast-math would fold it to t.
    u = _F32(1.0) + t
    bits = _float_bits_as_int(u)
    k = (bits >> np.int32(23)) - np.int32(127)
    m = _int_bits_as_float(np.int32((bits & np.int32(0x007FFFFF)) | np.int32(0x3F800000)))
    big = m > _SQRT2_32
    m = m * _F32(0.5) if big else m
    dk = _F32(k + np.int64(big))  # m in [1, 2), halved if above sqrt(2)
    small = t < _SQRT2_32 - _F32(1.0)
    # Below 2^-24, log1p(t) rounds to t; the polynomial then sees a clamped
    # argument, so that it never computes with subnormal numbers (slow).
    f = max(t, _TINY32) if small else m - _F32(1.0)
    p = _log1p_reduced32(f, _F32(0.0) if small else dk)
    return t if t < _TINY32 else p


@njit(**INLINE)
def _log1p64(t):
    u = 1.0 + t
    bits = _float_bits_as_int(u)
    k = (bits >> np.int64(52)) - np.int64(1023)
    m = _int_bits_as_float((bits & np.int64(0x000FFFFFFFFFFFFF)) | np.int64(0x3FF0000000000000))
    big = m > _SQRT2_64
    m = m * 0.5 if big else m
    dk = _F64(k + np.int64(big))
    small = t < _SQRT2_64 - 1.0
    f = max(t, _TINY64) if small else m - 1.0
    p = _log1p_reduced64(f, 0.0 if small else dk)
    return t if t < _TINY64 else p


def log1p(t):
    """Vectorisable ``log(1 + t)`` of a finite float32 or float64 ``t >= 0`` (jitted code only).

    Below ``sqrt(2) - 1`` the polynomial of ``log(1 + f)`` is evaluated at
    ``f = t`` directly, so a tiny ``t`` keeps all its digits; above, ``1 + t``
    is split into ``2^k (1 + f)``. Error: below 3 ulp. No operation sees a
    subnormal number (those take a slow microcode path on x86).
    """
    raise NotImplementedError("fusedgrad.kernels._math.log1p runs only inside jitted code")


_by_dtype(log1p, _log1p32, _log1p64)
