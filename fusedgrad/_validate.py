"""Input checks shared by the kernels and the models (plain Python).

The jitted loops do no bounds checks: a wrong shape or an out-of-range label
would read or write outside an array. Everything a kernel relies on is
therefore checked here first, and every error names the offending argument:

* ``TypeError`` for a wrong kind of value (not an array, integer/bool/complex/
  object dtype, float arrays of different precisions, non-integer labels);
* ``ValueError`` for a wrong value (ndim, shape, empty, NaN/inf, labels out of
  range, an output that overlaps an input).

Valid arrays come back C-contiguous (non-contiguous, Fortran-ordered or
negative-stride input is copied) and in the common floating dtype.
"""

import numbers

import numpy as np
from numba import njit, prange

__all__ = ["float_arrays", "labels", "output", "all_finite"]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


_FINITE_BLOCK = 16384


@njit(parallel=True, cache=True, nogil=True)
def _count_nonfinite_blocks(bits, exponent_mask):
    # A float is NaN or +-inf exactly when all its exponent bits are set.
    # Integer tests on the raw bits vectorise, and no fast-math flag can fold them.
    n_blocks = (bits.size + _FINITE_BLOCK - 1) // _FINITE_BLOCK
    bad = 0
    for b in prange(n_blocks):
        block = bits[b * _FINITE_BLOCK:(b + 1) * _FINITE_BLOCK]
        count = np.uint32(0)  # a narrow counter lets LLVM vectorise the loop
        for j in range(block.size):
            count += np.uint32((block[j] & exponent_mask) == exponent_mask)
        bad += count
    return bad


_EXPONENT_BITS = {
    np.dtype(np.float32): (np.uint32, np.uint32(0x7F800000)),
    np.dtype(np.float64): (np.uint64, np.uint64(0x7FF0000000000000)),
}


def all_finite(a):
    """Whether every element of the float array ``a`` is finite (one parallel pass)."""
    flat = a.reshape(-1) if a.flags.c_contiguous else np.ravel(a)
    uint, mask = _EXPONENT_BITS[flat.dtype]
    return _count_nonfinite_blocks(flat.view(uint), mask) == 0


def _as_array(name, value):
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (list, tuple, numbers.Number)) or hasattr(value, "__array__"):
        return np.asarray(value)
    raise TypeError(f"{name} must be an array, got {type(value).__name__}")


def _shape_text(shape):
    return "(" + ", ".join(str(s) for s in shape) + ")"


def float_arrays(specs, check_finite=True):
    """Check and prepare floating-point arrays that must share one dtype.

    Parameters
    ----------
    specs : list of (name, value, shape)
        ``shape`` is a tuple of ints (required sizes) and strings (named
        sizes, bound by their first occurrence and required equal after).
    check_finite : bool
        Reject arrays that hold NaN or inf.

    Returns
    -------
    arrays : list of ndarray
        C-contiguous arrays of the common dtype, in the order of ``specs``.
    """
    arrays = []
    dtype = None
    first = None
    for name, value, _ in specs:
        a = _as_array(name, value)
        if a.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name} must be a float32 or float64 array, got dtype {a.dtype}")
        if dtype is None:
            dtype, first = a.dtype, name
        elif a.dtype != dtype:
            raise TypeError(
                f"{name} has dtype {a.dtype} but {first} has dtype {dtype}: "
                "all float inputs must have the same dtype (cast them first)"
            )
        arrays.append(a)

    sizes = {}
    origin = {}
    for a, (name, _, shape) in zip(arrays, specs):
        if a.ndim != len(shape):
            raise ValueError(
                f"{name} must be {len(shape)}-D with shape {_shape_text(shape)}, "
                f"got {a.ndim}-D array of shape {a.shape}"
            )
        for axis, (want, got) in enumerate(zip(shape, a.shape)):
            if isinstance(want, str):
                if want not in sizes:
                    sizes[want], origin[want] = got, (name, axis)
                    if got == 0:
                        raise ValueError(f"{name} is empty: its axis {axis} ({want}) has size 0")
                elif sizes[want] != got:
                    other, other_axis = origin[want]
                    raise ValueError(
                        f"{name} has shape {a.shape}, expected {_shape_text(shape)}: "
                        f"its axis {axis} ({want}) is {got} but axis {other_axis} of "
                        f"{other} is {sizes[want]}"
                    )
            elif want != got:
                raise ValueError(f"{name} must have size {want} on axis {axis}, got shape {a.shape}")

    out = []
    for a, (name, _, _) in zip(arrays, specs):
        a = np.ascontiguousarray(a)
        if check_finite and not all_finite(a):
            raise ValueError(f"{name} contains NaN or infinity")
        out.append(a)
    return out


def labels(name, value, n_samples, n_classes):
    """Check integer class labels: shape ``(n_samples,)``, values in ``[0, n_classes)``.

    Returns an ``intp`` C-contiguous copy or view.
    """
    y = _as_array(name, value)
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise TypeError(
            f"{name} must hold integer class labels in [0, {n_classes}), got dtype {y.dtype}"
        )
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D of length {n_samples}, got shape {y.shape}")
    if y.shape[0] != n_samples:
        raise ValueError(f"{name} has {y.shape[0]} labels but there are {n_samples} samples")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= n_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} holds label {bad}, outside [0, {n_classes}) for {n_classes} classes")
    return np.ascontiguousarray(y, dtype=np.intp)


def output(name, value, shape, dtype, inputs=()):
    """Check a caller-supplied output array: exact shape and dtype, C-contiguous,
    writeable, sharing no memory with any of ``inputs``."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(value).__name__}")
    if value.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {value.dtype}")
    if value.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {value.shape}")
    if not value.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if not value.flags.writeable:
        raise ValueError(f"{name} is read-only")
    for other_name, other in inputs:
        if np.shares_memory(value, other):
            raise ValueError(f"{name} overlaps input {other_name}")
    return value
