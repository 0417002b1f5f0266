"""Input checks shared by the kernels and the models (plain Python).

The jitted loops do no bounds checks: a wrong shape or an out-of-range label
would read or write outside an array. Everything a kernel relies on is
therefore checked here first, before any compiled loop runs, and every error
names the offending argument:

* ``TypeError`` for a wrong kind of value (not an array, integer/bool/complex/
  object/float16 dtype, float arrays of different precisions, masked arrays,
  non-integer labels, a ``check_finite`` that is not a bool);
* ``ValueError`` for a wrong value (ndim, shape, empty, NaN/inf, labels out of
  range, a size the BLAS calls cannot take, an output that overlaps an input
  or cannot be written, a ragged list);
* ``MemoryError`` (naming the argument) when a view that must be copied does
  not fit in memory.

Shapes and dtypes of all arguments are checked before anything is copied or
scanned, so a mismatched input costs no memory however large its views are.
Valid arrays come back C-contiguous, aligned and in native byte order, in the
common floating dtype: non-contiguous, Fortran-ordered, negative-stride,
misaligned or byte-swapped input is copied. Read-only input is not copied:
it is passed on as a view flagged writeable (the jitted loops never write
their inputs), so read-only and writeable arrays share one compiled
specialisation instead of compiling one per combination.

Importing this module also makes a pip-installed TBB visible to Numba (see
:func:`_make_tbb_visible`): every kernel imports it first, and its finiteness
check is the first parallel loop a kernel call runs.
"""

import ctypes
import numbers
import os
import sys

import numpy as np
from numba import njit, prange

from fusedgrad.kernels import _options as opt

__all__ = ["float_arrays", "labels", "indices", "output", "all_finite", "require_finite",
           "weights", "row_weights"]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

#: The BLAS calls of the kernels take their sizes as 32-bit integers: every
#: axis but the samples axis (which the kernels cut into small chunks) must fit.
MAX_BLAS_SIZE = 2**31 - 1

#: The size name of the samples axis, the only one exempt from MAX_BLAS_SIZE.
SAMPLES = "n_samples"

#: The size name of the number of classes (the range of the labels).
CLASSES = "n_classes"


# ---------------------------------------------------------------------------
# Threading layer
# ---------------------------------------------------------------------------

_TBB_NAMES = {"linux": "libtbb.so.12", "darwin": "libtbb.12.dylib", "win32": "tbb12.dll"}


def _make_tbb_visible():
    """Load a pip-installed TBB so that Numba's default threading layer is ``tbb``.

    Numba picks the first of ``tbb, omp, workqueue`` that loads, unless the
    user chose a layer (``NUMBA_THREADING_LAYER``,
    ``NUMBA_THREADING_LAYER_PRIORITY`` or ``numba.config``): that choice is
    left alone, and only the library is loaded. Numba looks for TBB
    by its bare library name, which does not find the copy ``pip install tbb``
    puts in ``<prefix>/lib`` of a virtual environment; it then falls back to
    GNU OpenMP, which is not fork-safe (a forked child that runs a parallel
    kernel is terminated) and gives every calling thread its own team of
    threads (oversubscription when kernels are called from a thread pool).
    Loading that copy globally, by its full path, before Numba starts its
    threads makes the bare name resolve. Returns whether TBB is loaded.
    """
    name = _TBB_NAMES.get(sys.platform)
    if name is None:
        return False
    try:
        ctypes.CDLL(name)
        return True  # already visible
    except OSError:
        pass
    subdir = "Library/bin" if sys.platform == "win32" else "lib"
    candidates = [os.path.join(prefix, subdir, name)
                  for prefix in dict.fromkeys((sys.prefix, sys.base_prefix))]
    if not any(os.path.exists(path) for path in candidates):
        candidates = _tbb_files(name)  # elsewhere, e.g. pip install --user
    for path in candidates:
        if os.path.exists(path):
            try:
                ctypes.CDLL(path, mode=getattr(ctypes, "RTLD_GLOBAL", 0))
                return True
            except OSError:
                return False
    return False


def _tbb_files(name):
    """Paths of ``name`` among the files of the installed ``tbb`` distribution."""
    import importlib.metadata

    try:
        files = importlib.metadata.files("tbb") or []
    except importlib.metadata.PackageNotFoundError:
        return []
    return [str(f.locate()) for f in files if f.name == name]


_make_tbb_visible()


# ---------------------------------------------------------------------------
# Finiteness
# ---------------------------------------------------------------------------

_FINITE_BLOCK = 16384


#: Arrays of up to this many elements are checked on the calling thread: the
#: check reads about 4 elements per ns there, and waking the threads of a
#: parallel loop costs about 8 us (measured: 7 checks of a small network's
#: arrays took 75 us in parallel loops, as long as its whole gradient).
_SERIAL_FINITE = 1 << 18


@njit(**opt.INLINE)
def _count_nonfinite(block, exponent_mask):
    # A float is NaN or +-inf exactly when all its exponent bits are set.
    # Integer tests on the raw bits vectorise, and no fast-math flag can fold them.
    count = np.uint32(0)  # a narrow counter lets LLVM vectorise the loop
    for j in range(block.size):
        count += np.uint32((block[j] & exponent_mask) == exponent_mask)
    return count


@njit(**opt.PARALLEL)
def _count_nonfinite_blocks(bits, exponent_mask):
    n_blocks = (bits.size + _FINITE_BLOCK - 1) // _FINITE_BLOCK
    bad = 0
    for b in prange(n_blocks):
        bad += _count_nonfinite(bits[b * _FINITE_BLOCK:(b + 1) * _FINITE_BLOCK], exponent_mask)
    return bad


_EXPONENT_BITS = {
    np.dtype(np.float32): (np.uint32, np.uint32(0x7F800000)),
    np.dtype(np.float64): (np.uint64, np.uint64(0x7FF0000000000000)),
}


def all_finite(a):
    """Whether every element of the float array ``a`` is finite (one parallel pass)."""
    flat = a.reshape(-1) if a.flags.c_contiguous else np.ravel(a)
    uint, mask = _EXPONENT_BITS[flat.dtype]
    if flat.size <= _SERIAL_FINITE:
        return _first_nonfinite((_writeable(flat),)) < 0
    return _count_nonfinite_blocks(_writeable(flat.view(uint)), mask) == 0


@njit(**opt.JIT)
def _first_nonfinite(flats):
    """Index of the first of the 1-D C-contiguous float arrays ``flats`` (a tuple,
    one dtype, at most :data:`_SERIAL_FINITE` elements in all, so that the narrow
    counter cannot overflow) that holds NaN or infinity, or -1."""
    for i in range(len(flats)):
        flat = flats[i]
        if flat.itemsize == 4:
            bad = _count_nonfinite(flat.view(np.uint32), np.uint32(0x7F800000))
        else:
            bad = _count_nonfinite(flat.view(np.uint64), np.uint64(0x7FF0000000000000))
        if bad:
            return i
    return -1


# ---------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------


def _as_array(name, value):
    if type(value) is np.ndarray:
        return value
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(
            f"{name} is a masked array: fill or drop the masked entries first "
            "(e.g. with .filled() or .compressed())"
        )
    if isinstance(value, np.ndarray):
        return value.view(np.ndarray)  # np.matrix, np.memmap, ...: their data, plain
    if isinstance(value, (list, tuple, numbers.Number)) or hasattr(value, "__array__"):
        try:
            return np.asarray(value)
        except (ValueError, TypeError, OverflowError) as exc:
            raise ValueError(f"{name} cannot be converted to an array: {exc}") from exc
    raise TypeError(f"{name} must be an array, got {type(value).__name__}")


class _WriteableAlias:
    """The memory of a read-only array, offered to NumPy as writeable.

    Only for inputs of the jitted loops, which never write their inputs; it
    keeps the original array alive.
    """

    def __init__(self, a):
        self._array = a
        interface = dict(a.__array_interface__)
        interface["data"] = (interface["data"][0], False)
        self.__array_interface__ = interface


def _writeable(a):
    """``a``, or a view of its memory flagged writeable when ``a`` is read-only.

    Numba compiles a separate specialisation for every combination of
    read-only and writeable arguments; this keeps it to one per dtype.
    """
    if a.flags.writeable:
        return a
    return np.asarray(_WriteableAlias(a))


def _prepared(name, a, dtype):
    """C-contiguous, aligned, native-order ``a`` of ``dtype``; copied only if needed."""
    if a.dtype == dtype and a.flags.c_contiguous and a.flags.aligned:
        return _writeable(a)
    try:
        return np.array(a, dtype=dtype, order="C", copy=True)
    except MemoryError as exc:
        size = a.size * np.dtype(dtype).itemsize / 2**30
        raise MemoryError(
            f"{name}: no memory for a C-contiguous copy of this {a.shape} array "
            f"({size:.3g} GiB); pass a C-contiguous {np.dtype(dtype)} array"
        ) from exc


def _native_float(a):
    """The native-order float32/float64 dtype of ``a``, or None."""
    return _native_float_dtype(a.dtype)


def _native_float_dtype(dtype):
    """The native-order float32/float64 dtype of ``dtype``, or None."""
    if dtype in _FLOAT_DTYPES:
        return dtype
    if dtype.kind != "f":
        return None
    native = dtype.newbyteorder("=")
    return native if native in _FLOAT_DTYPES else None


def _shape_text(shape):
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _check_flag(check_finite):
    if not isinstance(check_finite, (bool, np.bool_)):
        raise TypeError(f"check_finite must be True or False, got {check_finite!r}")


def float_arrays(specs, check_finite=True, labels=None, deferred=()):
    """Check and prepare floating-point arrays that must share one dtype.

    Parameters
    ----------
    specs : list of (name, value, shape)
        ``shape`` is a tuple of ints (required sizes) and strings (named
        sizes, bound by their first occurrence and required equal after).
        Every named size but ``"n_samples"`` must be at most
        :data:`MAX_BLAS_SIZE`.
    check_finite : bool
        Reject arrays that hold NaN or inf.
    labels : (name, value), optional
        Class labels of shape ``("n_samples",)`` with values in
        ``[0, "n_classes")`` (see :func:`labels`); their kind and length are
        checked with the shapes, before any array is copied.
    deferred : tuple of str
        Names of arrays whose finiteness the caller checks itself, after a
        kernel whose result is non-finite whenever they are (see
        :func:`require_finite`): a one-pass kernel then reads them once.

    Returns
    -------
    arrays : list of ndarray
        C-contiguous, aligned arrays of the common dtype, in the order of
        ``specs``, followed by the labels (``intp``) when given.
    """
    _check_flag(check_finite)
    arrays = []
    dtype = None
    first = None
    for name, value, _ in specs:
        a = _as_array(name, value)
        native = _native_float(a)
        if native is None:
            raise TypeError(f"{name} must be a float32 or float64 array, got dtype {a.dtype}")
        if dtype is None:
            dtype, first = native, name
        elif native != dtype:
            raise TypeError(
                f"{name} has dtype {native} but {first} has dtype {dtype}: "
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
                    if want != SAMPLES and got > MAX_BLAS_SIZE:
                        raise ValueError(
                            f"{name} has {got} on its axis {axis} ({want}): at most "
                            f"{MAX_BLAS_SIZE} is supported (the BLAS calls take 32-bit sizes)"
                        )
                elif sizes[want] != got:
                    other, other_axis = origin[want]
                    raise ValueError(
                        f"{name} has shape {a.shape}, expected {_shape_text(shape)}: "
                        f"its axis {axis} ({want}) is {got} but axis {other_axis} of "
                        f"{other} is {sizes[want]}"
                    )
            elif want != got:
                raise ValueError(f"{name} must have size {want} on axis {axis}, got shape {a.shape}")

    if labels is not None:
        y_name, y = labels
        y = _label_array(y_name, y, sizes.get(SAMPLES), sizes.get(CLASSES))

    out = [_prepared(name, a, dtype) for a, (name, _, _) in zip(arrays, specs)]
    if check_finite:
        require_finite(*[(name, a) for a, (name, _, _) in zip(out, specs)
                         if name not in deferred])
    if labels is not None:
        out.append(_label_range(y_name, y, sizes[CLASSES]))
    return out


def _small_flats(named):
    """1-D views of the arrays of ``named`` for :func:`_first_nonfinite`, or None
    where they are not all small, C-contiguous and of one float dtype."""
    if not named:
        return None
    dtype = named[0][1].dtype
    if dtype not in _FLOAT_DTYPES:
        return None
    flats = []
    total = 0
    for _, a in named:
        flags = a.flags
        if a.dtype != dtype or not flags.c_contiguous:
            return None
        total += a.size
        flats.append(a.reshape(-1) if flags.writeable else _writeable(a).reshape(-1))
    return tuple(flats) if total <= _SERIAL_FINITE else None


def require_finite(*named):
    """Raise ``ValueError`` naming the first of the ``(name, array)`` pairs
    that holds NaN or infinity.

    Small C-contiguous arrays of one dtype (together at most
    :data:`_SERIAL_FINITE` elements, the inputs of a small call) are scanned
    in one compiled call, which costs one dispatch instead of one per array
    (measured: 2.2 instead of 4.0 us for the three inputs of a 512-row layer).
    """
    flats = _small_flats(named)
    if flats is not None:
        bad = _first_nonfinite(flats)
        if bad >= 0:
            raise ValueError(f"{named[bad][0]} contains NaN or infinity")
        return
    for name, a in named:
        if not all_finite(a):
            raise ValueError(f"{name} contains NaN or infinity")


def _label_array(name, value, n_samples, n_classes):
    """Labels as an array of integers of length ``n_samples`` (values unchecked)."""
    y = _as_array(name, value)
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise TypeError(
            f"{name} must hold integer class labels in [0, {n_classes}), got dtype {y.dtype}"
        )
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D of length {n_samples}, got shape {y.shape}")
    if y.shape[0] != n_samples:
        raise ValueError(f"{name} has {y.shape[0]} labels but there are {n_samples} samples")
    if y.size == 0:
        raise ValueError(f"{name} is empty")
    return y


def _label_range(name, y, n_classes):
    """``y`` checked to lie in ``[0, n_classes)``, as C-contiguous ``intp``."""
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= n_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} holds label {bad}, outside [0, {n_classes}) for {n_classes} classes")
    return _prepared(name, y, np.dtype(np.intp))


def labels(name, value, n_samples, n_classes):
    """Check integer class labels: shape ``(n_samples,)``, values in ``[0, n_classes)``.

    Returns an ``intp`` C-contiguous copy or view.
    """
    return _label_range(name, _label_array(name, value, n_samples, n_classes), n_classes)


def indices(name, value, n):
    """Check row indices: a nonempty 1-D integer array with values in ``[0, n)``.

    Returns an ``intp`` C-contiguous copy or view (read-only input is not
    copied, as for the float arrays).
    """
    r = _as_array(name, value)
    if r.dtype == np.bool_ or not np.issubdtype(r.dtype, np.integer):
        raise TypeError(f"{name} must hold integer row indices, got dtype {r.dtype}")
    if r.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {r.shape}")
    if r.shape[0] == 0:
        raise ValueError(f"{name} is empty: it selects no samples")
    lo, hi = int(r.min()), int(r.max())
    if lo < 0 or hi >= n:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} holds index {bad}, outside [0, {n}) for {n} rows")
    return _prepared(name, r, np.dtype(np.intp))


def output(name, value, shape, dtype, inputs=()):
    """Check a caller-supplied output array: exact shape and dtype, C-contiguous,
    aligned, writeable, sharing no memory with any of ``inputs``."""
    if not isinstance(value, np.ndarray) or isinstance(value, np.ma.MaskedArray):
        raise TypeError(f"{name} must be a numpy array, got {type(value).__name__}")
    if value.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {value.dtype}")
    if value.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {value.shape}")
    if not value.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if not value.flags.aligned:
        raise ValueError(f"{name} must be aligned")
    if not value.flags.writeable:
        raise ValueError(f"{name} is read-only")
    for other_name, other in inputs:
        if np.shares_memory(value, other):
            raise ValueError(f"{name} overlaps input {other_name}")
    return value


#: Weights summed per block of this many, the blocks in order: the sum does not
#: depend on the thread count.
_WEIGHT_BLOCK = 1 << 16


@njit(**opt.PARALLEL)
def _weight_stats(w):
    """``(non-finite count, negative count, float64 sum of the others, nonzero count)``
    of the weights ``w``, in one parallel pass over fixed blocks."""
    n = w.shape[0]
    n_blocks = (n + _WEIGHT_BLOCK - 1) // _WEIGHT_BLOCK
    sums = np.zeros(n_blocks)
    counts = np.zeros((n_blocks, 3), np.int64)
    for b in prange(n_blocks):
        total = 0.0
        bad = 0
        negative = 0
        nonzero = 0
        for i in range(b * _WEIGHT_BLOCK, min(n, (b + 1) * _WEIGHT_BLOCK)):
            v = np.float64(w[i])
            if not np.isfinite(v):
                bad += 1
            elif v < 0.0:
                negative += 1
            else:
                total += v
                nonzero += v != 0.0
        sums[b] = total
        counts[b, 0] = bad
        counts[b, 1] = negative
        counts[b, 2] = nonzero
    total = 0.0
    for b in range(n_blocks):
        total += sums[b]
    return counts[:, 0].sum(), counts[:, 1].sum(), total, counts[:, 2].sum()


def require_positive_sum(name, total):
    """The sum of the weights ``name`` must be positive and finite."""
    if not total > 0:
        raise ValueError(f"{name} must have a positive sum: all weights are zero")
    if total == np.inf:
        raise ValueError(f"{name} must have a finite sum: it overflows")


def weights(name, w, positive_sum=True):
    """Check float weights ``w`` (one per sample): finite, none negative and, with
    ``positive_sum``, a positive finite sum; one pass. Returns ``(float64 sum,
    number of nonzero weights)``."""
    bad, negative, total, nonzero = _weight_stats(_writeable(w))
    if bad:
        raise ValueError(f"{name} contains NaN or infinity")
    if negative:
        raise ValueError(f"{name} must be non-negative: it holds {float(w[w < 0][0])!r}")
    if positive_sum:
        require_positive_sum(name, total)
    return float(total), int(nonzero)


def weights_layout(w_dtype, shape, dtype, n_rows, rows_name="X", first="X"):
    """The dtype and shape checks of :func:`row_weights`, on the dtype and shape
    of the weights (of a host or a device array): a float32/float64 dtype (in
    either byte order), that of the float inputs, and ``(n_rows,)``."""
    native = _native_float_dtype(np.dtype(w_dtype))
    if native is None:
        raise TypeError(f"sample_weight must be a float32 or float64 array, got dtype {w_dtype}")
    if native != dtype:
        raise TypeError(f"sample_weight has dtype {native} but {first} has dtype {dtype}: all "
                        "float inputs must have the same dtype (cast them first)")
    if len(shape) != 1 or shape[0] != n_rows:
        raise ValueError(f"sample_weight must have shape ({n_rows},) (one weight per row of "
                         f"{rows_name}), got shape {tuple(shape)}")


def row_weights(value, dtype, n_rows, check_finite=True, rows_name="X", first="X",
                want_sum=True):
    """Weights ``sample_weight`` of ``n_rows`` rows (the samples, or the rows a
    ``rows`` argument selects) for a kernel whose float inputs have ``dtype``:
    ``(w, float64 sum)`` with ``w`` 1-D, C-contiguous, of ``dtype``;
    ``(empty array, n_rows)`` when ``value`` is None.

    With ``check_finite`` the values are checked (finite, none negative, a
    positive sum: :func:`weights`, whose pass gives the sum); without it, as
    for the other arrays, they are not scanned, and the sum is taken only if
    ``want_sum`` (None otherwise: for a kernel that sums the weights itself).
    """
    if value is None:
        return np.empty(0, dtype), float(n_rows)
    w = _as_array("sample_weight", value)
    weights_layout(w.dtype, w.shape, dtype, n_rows, rows_name, first)
    w = _prepared("sample_weight", w, dtype)
    if check_finite:
        return w, weights("sample_weight", w)[0]
    return w, (float(np.sum(w, dtype=np.float64)) if want_sum else None)
