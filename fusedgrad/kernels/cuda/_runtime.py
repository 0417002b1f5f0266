"""What every CUDA kernel wrapper shares: the import guard, launch sizes,
input checks on host and device arrays, output allocation and the second pass
over per-block partial sums.

numba-cuda is optional. This module imports on any machine; :data:`cuda` is
``numba.cuda`` when numba-cuda imports and None otherwise, and
:func:`require` raises a :class:`RuntimeError` that says what is missing.

Input conventions of every kernel in :mod:`fusedgrad.kernels.cuda`:

* A *device array* is a numba device array or any object with
  ``__cuda_array_interface__`` (CuPy, PyTorch); it is used in place, never
  copied to the host. A non-contiguous one is copied once on the device.
* Anything else is a *host array* (NumPy array or array-like): it is checked
  exactly as the CPU kernels check it and copied to the device.
* Outputs are numba device arrays when at least one input is a device array,
  NumPy arrays when all inputs are host arrays. A loss is always returned as a
  NumPy scalar of the input dtype (one value copied back).
* Checks that need the data (NaN/inf, labels in range) run as small
  reduction kernels on device arrays; their results come back in one copy of
  a few integers, so a call synchronises once before its kernels run.
"""

import functools
import importlib.util
import math
import numbers
import types as types_module
import warnings

import numpy as np
from numba import types

from fusedgrad import _validate
from fusedgrad.kernels import _options as opt

__all__ = [
    "cuda",
    "is_available",
    "require",
    "simulator",
    "use_shuffle",
    "grid_size",
    "Inputs",
    "prepare",
    "empty",
    "to_host",
    "sum_partials",
]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

cuda = None
_IMPORT_ERROR = None

def _numba_cuda_installed():
    try:
        return importlib.util.find_spec("numba_cuda") is not None
    except (ImportError, ValueError):  # e.g. sys.modules["numba_cuda"] = None
        return False


if not _numba_cuda_installed():
    _IMPORT_ERROR = "numba-cuda is not installed (pip install 'fusedgrad[cuda]')"
else:
    try:
        from numba import cuda
    except Exception as exc:  # a broken or incompatible installation
        cuda = None
        _IMPORT_ERROR = f"numba.cuda failed to import: {type(exc).__name__}: {exc}"


if cuda is not None:
    from numba.core import config as _numba_config


def simulator():
    """Whether numba's CUDA simulator is in use (``NUMBA_ENABLE_CUDASIM=1``)."""
    return cuda is not None and bool(_numba_config.ENABLE_CUDASIM)


@functools.lru_cache(maxsize=None)
def _unavailable_reason():
    if cuda is None:
        return _IMPORT_ERROR
    if simulator():
        return None
    try:
        if cuda.is_available():
            return None
    except Exception as exc:  # driver present but broken
        return f"the CUDA driver failed to initialise: {type(exc).__name__}: {exc}"
    return "no CUDA GPU or driver was found"


def is_available():
    """Whether the CUDA kernels can run here.

    True when numba-cuda is installed and a CUDA GPU with a working driver is
    present, or when numba's CUDA simulator is switched on
    (``NUMBA_ENABLE_CUDASIM=1``, which runs the kernels slowly on the CPU).

    Returns
    -------
    bool
    """
    return _unavailable_reason() is None


def require():
    """Raise RuntimeError, saying why, unless :func:`is_available`."""
    reason = _unavailable_reason()
    if reason is not None:
        raise RuntimeError(
            f"fusedgrad.kernels.cuda cannot run: {reason}. "
            "Use the CPU kernels in fusedgrad.kernels instead."
        )


def use_shuffle():
    """Whether block reductions use warp shuffles (see ``CUDA_WARP_SHUFFLE``)."""
    if opt.CUDA_WARP_SHUFFLE is None:
        return not simulator()
    return bool(opt.CUDA_WARP_SHUFFLE)


@functools.lru_cache(maxsize=None)
def _multiprocessors():
    if simulator():
        return opt.CUDA_DEFAULT_SMS
    try:
        return int(cuda.get_current_device().MULTIPROCESSOR_COUNT)
    except Exception:
        return opt.CUDA_DEFAULT_SMS


def grid_size(work, per_sm=None):
    """Blocks of a grid-stride kernel over ``work`` units (tiles, rows, ...)."""
    per_sm = opt.CUDA_BLOCKS_PER_SM if per_sm is None else per_sm
    blocks = max(1, min(int(work), per_sm * _multiprocessors()))
    if opt.CUDA_MAX_BLOCKS is not None:
        blocks = min(blocks, int(opt.CUDA_MAX_BLOCKS))
    return blocks


def cached_plan(*options):
    """Cache a kernel plan (a pure function of its arguments and of the
    ``options`` named, read from :mod:`fusedgrad.kernels._options` at each
    call and made part of the key, so that changing one plans anew).

    The plans search over thread grids in Python; cached, a wrapper's call
    no longer repeats that search (``plan_thin`` took about 20 us a call on a
    2-core VM). A dict plan comes back read-only, as it is shared by every
    call. ``test_cuda.py::test_cached_plans_name_every_option_they_read``
    checks ``options`` against the function's source.
    """

    def decorate(fn):
        cache = {}

        @functools.wraps(fn)
        def plan(*args):
            key = (args, tuple([getattr(opt, name) for name in options]))
            try:
                return cache[key]
            except KeyError:
                pass
            result = fn(*args)
            if isinstance(result, dict):
                result = types_module.MappingProxyType(result)
            cache[key] = result
            return result

        plan.options = options
        plan.cache_clear = cache.clear
        return plan

    return decorate


_RESIDENT = {}


@functools.lru_cache(maxsize=None)
def array_type(dtype, ndim):
    """The numba type of a C-contiguous ``ndim``-D array of ``dtype``, for
    :func:`resident_grid`'s buffers not yet allocated (built once: a numba
    type from ``nbt[:, ::1]`` took about 15 us a call)."""
    import numba

    return types.Array(numba.from_dtype(np.dtype(dtype)), ndim, "C")


def _array_key(a):
    """An array's dtype, dimensions and layout as numba types a device array:
    C, F, or A (also for a broadcast axis, of stride 0)."""
    if a.size and 0 in a.strides:
        layout = "A"
    else:
        flags = a.flags
        layout = "C" if flags["C_CONTIGUOUS"] else "F" if flags["F_CONTIGUOUS"] else "A"
    return (a.dtype, a.ndim, layout)


def _arg_key(a):
    """What numba's typing of a launch argument depends on, without building
    a numba type: a numba type as it is; an array's :func:`_array_key`; a
    scalar's Python type."""
    if isinstance(a, types.Type):
        return a
    if isinstance(a, np.generic) or not hasattr(a, "shape"):
        return type(a)
    return _array_key(a)


def resident_grid(kernel, args, tpb, work, per_sm=None):
    """Blocks of a grid-stride kernel launched on ``args``: ``per_sm`` per
    multiprocessor as :func:`grid_size`, or with ``per_sm`` None as many as
    the GPU holds at once for this kernel's registers and shared memory (the
    driver's occupancy calculator, asked once per kernel and argument types;
    ``args`` may hold numba types for buffers not yet allocated):
    a memory-bound kernel then has all the loads in flight it can, and no
    block waits for a second wave. At most ``work``."""
    if per_sm is not None or simulator() or not hasattr(kernel, "compile"):
        return grid_size(work, per_sm)
    import numba

    # keyed by what the arguments' types depend on: typing every argument
    # (the launch does so again) cost about 5 us an array on a 2-core VM
    key = (kernel, tuple([_arg_key(a) for a in args]), int(tpb))
    n = _RESIDENT.get(key)
    if n is None:
        typeof = getattr(kernel, "typeof_pyval", numba.typeof)  # the launch's own typing
        sig = tuple(a if isinstance(a, types.Type) else typeof(a) for a in args)
        n = _RESIDENT[key] = int(kernel.compile(sig).max_cooperative_grid_blocks(int(tpb)))
    blocks = max(1, min(int(work), n))
    if opt.CUDA_MAX_BLOCKS is not None:
        blocks = min(blocks, int(opt.CUDA_MAX_BLOCKS))
    return blocks


def jit(**extra):
    """``cuda.jit`` with the options of :mod:`fusedgrad.kernels._options`.

    ``launch_bounds`` (a register budget for the compiler) is dropped under
    the simulator, whose ``jit`` does not take it."""
    if extra.get("launch_bounds") is None or simulator():
        extra.pop("launch_bounds", None)
    return cuda.jit(**dict(opt.CUDA_JIT, **extra))


# ---------------------------------------------------------------------------
# Kernel launches
# ---------------------------------------------------------------------------

# numba's launch of a compiled kernel (``kernel[grid, block](*args)``) types
# every argument (a fresh array's numba type took about 5 us on a 2-core VM),
# finds the overload, then marshals every argument in Python: an array
# becomes 5 + 2 * ndim parameters through an argument wrapper and a memory
# view, about 6 us an array there, 30-50 us for the wrappers' kernels of
# 5-12 arrays. launch() keys the compiled kernel by what its typing depends
# on and packs the same parameters directly; once per kernel and key it
# compares its packing with numba's own (``_Kernel._prepare_args``), and a
# key whose packing differs, or whose arguments it does not know, is left to
# numba's launch for good. The driver call is numba's: the same cuda.core
# ``launch`` with the same stream and launch configuration.

_LAUNCHERS = {}  # (dispatcher, argument keys) -> (compiled kernel, packers) or None
_MISSING = object()
_ARRAY = object()  # the packer of an array argument
_FAST_TYPES = None  # (numba's dispatcher class, its device array class, its module)


def _fast_types():
    global _FAST_TYPES
    if _FAST_TYPES is None:
        _FAST_TYPES = (None, None, None)  # numba's launch only
        if simulator():
            return _FAST_TYPES
        try:
            from numba.cuda import dispatcher
            from numba.cuda.cudadrv.devicearray import DeviceNDArray
        except Exception:  # another numba-cuda
            return _FAST_TYPES
        if (hasattr(dispatcher, "CUDA_CORE_GE_1_0") and hasattr(dispatcher, "launch")
                and hasattr(dispatcher, "LaunchConfig")):
            _FAST_TYPES = (dispatcher.CUDADispatcher, DeviceNDArray, dispatcher)
    return _FAST_TYPES


def _launch_arg_key(a, device_array):
    """What numba's typing of a launch argument depends on, exactly (None for
    an argument :func:`launch` leaves to numba): a numba device array's
    :func:`_array_key`, a Python scalar's type, a NumPy scalar's dtype."""
    t = type(a)
    if t is device_array:
        return _array_key(a) if a.ndim else None
    if t is float or t is bool:
        return t
    if t is int:
        return t if -(1 << 63) <= a < (1 << 63) else None
    if isinstance(a, (np.floating, np.integer, np.bool_)):
        return a.dtype
    return None


def _launch_key(kernel, args, device_array):
    """:func:`launch`'s key of a kernel and its arguments, or None."""
    key = [kernel]
    for a in args:
        k = _launch_arg_key(a, device_array)
        if k is None:
            return None
        key.append(k)
    return tuple(key)


def _packers(argtypes):
    """How :func:`launch` packs each argument of a kernel compiled for
    ``argtypes``, as numba's ``_Kernel._prepare_args`` does; None if one is
    of a type it does not pack."""
    import ctypes

    out = []
    for ty in argtypes:
        if isinstance(ty, types.Array) and ty.ndim > 0:
            out.append(_ARRAY)
        elif isinstance(ty, types.Integer):
            out.append(getattr(ctypes, f"c_{ty}"))
        elif ty == types.float64:
            out.append(ctypes.c_double)
        elif ty == types.float32:
            out.append(ctypes.c_float)
        elif ty == types.boolean:
            out.append(None)
        else:
            return None
    return tuple(out)


def _pack(packers, args):
    params = []
    for packer, a in zip(packers, args):
        if packer is _ARRAY:
            # numba's order: meminfo, parent, size, itemsize, data, shape, strides
            params += (0, 0, a.size, a.dtype.itemsize, a.device_ctypes_pointer.value)
            params += a.shape
            params += a.strides
        elif packer is None:
            params.append(a)
        else:
            params.append(packer(a))
    return params


def _same_params(ours, numbas):
    import ctypes

    if len(ours) != len(numbas):
        return False
    for x, y in zip(ours, numbas):
        if type(x) is not type(y):
            return False
        if isinstance(x, ctypes._SimpleCData):
            x, y = x.value, y.value
        if not (x == y or (x != x and y != y)):
            return False
    return True


def _launcher(kernel, config, args):
    """The compiled kernel and packers for ``args``' key, or None where the
    launch is left to numba (the kernel has just been launched by numba, so
    it is compiled for these argument types)."""
    try:
        if getattr(kernel, "_launch_config_sensitive", False) or config.sharedmem:
            return None
        sig = tuple(kernel.typeof_pyval(a) for a in args)
        compiled = kernel.overloads.get(sig)
        if compiled is None or compiled.debug or compiled.extensions:
            return None
        packers = _packers(compiled.argument_types)
        if packers is None:
            return None
        numbas, retr = [], []
        for ty, a in zip(compiled.argument_types, args):
            compiled._prepare_args(ty, a, config.stream, retr, numbas)
        compiled._codelibrary.get_cufunc  # noqa: B018 (launch() calls it)
        ours = _pack(packers, args)
    except (AttributeError, NotImplementedError):  # numba-cuda's internals moved
        return None
    if not _same_params(ours, numbas):
        return None
    return compiled, packers


_CONFIGS = {}  # (kernel, grid, block) -> kernel[grid, block]


def _configured(kernel, grid, block):
    """``kernel[grid, block]`` of numba's dispatcher, kept. numba warns when it configures a grid
    of fewer than 128 blocks ("will likely result in GPU under-utilization");
    the wrappers' second passes and small calls use such grids on purpose,
    so the warning is silenced for them (for the configuration only, once
    per kernel and grid; the user's own kernels keep numba's warning)."""
    key = (kernel, grid, block)
    try:
        config = _CONFIGS.get(key)
    except TypeError:  # a list for a grid: not kept
        return kernel[grid, block]
    if config is None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Grid size .* under-utilization")
            config = kernel[grid, block]
        if len(_CONFIGS) >= 4096:
            _CONFIGS.clear()
        _CONFIGS[key] = config
    return config


def launch(kernel, grid, block, *args):
    """``kernel[grid, block](*args)``, with the arguments packed by this
    module once numba has compiled the kernel for their types (see the
    comment above; ``CUDA_FAST_LAUNCH``). Anything but numba's own dispatcher
    and device arrays (the simulator's kernels, CuPy or PyTorch arrays, the
    benchmarks' stand-ins) goes through ``kernel[grid, block]``."""
    dispatcher_type, device_array, nb_dispatcher = _FAST_TYPES or _fast_types()
    if type(kernel) is not dispatcher_type:  # the simulator's configures itself
        kernel[grid, block](*args)
        return
    config = _configured(kernel, grid, block)
    if not opt.CUDA_FAST_LAUNCH:
        config(*args)
        return
    key = _launch_key(kernel, args, device_array)
    if key is None:
        config(*args)
        return
    entry = _LAUNCHERS.get(key, _MISSING)
    if entry is _MISSING:
        config(*args)  # compiles the kernel for these types if need be
        _LAUNCHERS[key] = _launcher(kernel, config, args)
        return
    if entry is None or config.pre_launch_callbacks:
        config(*args)
        return
    compiled, packers = entry
    params = _pack(packers, args)
    cufunc = compiled._codelibrary.get_cufunc()
    # the launch configuration as numba builds it (cuda.core renamed the flag in 1.0)
    if nb_dispatcher.CUDA_CORE_GE_1_0:
        launch_config = nb_dispatcher.LaunchConfig(grid=config.griddim, block=config.blockdim,
                                                   shmem_size=0,
                                                   is_cooperative=compiled.cooperative)
    else:
        launch_config = nb_dispatcher.LaunchConfig(grid=config.griddim, block=config.blockdim,
                                                   shmem_size=0,
                                                   cooperative_launch=compiled.cooperative)
    nb_dispatcher.launch(config.stream, launch_config, cufunc.kernel, *params)


def rows(a, start, stop):
    """``a[start:stop]``, rows of a device array, with ``0 <= start < stop <=
    len(a)``. For a C-contiguous numba device array the view is built as
    numba's slicing builds it (a view of its memory, the same shape, strides
    and stream) without numba's general indexing: about 5 us against 13 on a
    2-core VM, for each of a training loop's per-step slices. Anything else
    is sliced by numba."""
    _, device_array, _ = _FAST_TYPES or _fast_types()
    if (type(a) is not device_array or not 0 <= start < stop <= a.shape[0]
            or not a.flags["C_CONTIGUOUS"]):
        return a[start:stop]
    step = a.strides[0]
    return device_array((stop - start,) + a.shape[1:], a.strides, a.dtype, stream=a.stream,
                        gpu_data=a.gpu_data.view(start * step, stop * step))


# ---------------------------------------------------------------------------
# Small kernels of the wrappers: checks, copies, fills, second passes
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _count_nonfinite_fn(tpb, U):
    """Device function ``count_block(a, flags, slot, buf)``: ``flags[slot]
    +=`` the number of NaN/inf in the 1-D ``a``, over a grid-stride loop of
    ``U`` elements a round (see :func:`_check_kernels`); block partial counts
    in the shared ``buf`` (``tpb`` int64), one integer atomic per block
    (exact, order-free). Ends with a barrier after which only thread 0 reads
    ``buf[0]``, so the calls can follow one another on one buffer."""

    @jit(device=True)
    def count_block(a, flags, slot, buf):
        tid = cuda.threadIdx.x
        count = 0
        if U == 1:
            i = cuda.grid(1)
            step = cuda.gridsize(1)
            while i < a.shape[0]:
                if not math.isfinite(a[i]):
                    count += 1
                i += step
        else:
            n = np.uint64(a.shape[0])
            step = np.uint64(cuda.gridsize(1))
            i = np.uint64(cuda.grid(1))
            last = step * np.uint64(U - 1)  # a round's last offset past i
            while i + last < n:
                for j in range(U):
                    count += 0 if math.isfinite(a[i + np.uint64(j) * step]) else 1
                i += step * np.uint64(U)
            while i < n:
                count += 0 if math.isfinite(a[i]) else 1
                i += step
        buf[tid] = count
        cuda.syncthreads()
        s = tpb // 2
        while s > 0:
            if tid < s:
                buf[tid] += buf[tid + s]
            cuda.syncthreads()
            s //= 2
        if tid == 0 and buf[0] > 0:
            cuda.atomic.add(flags, slot, buf[0])

    return count_block


@functools.lru_cache(maxsize=None)
def _check_group_kernel(tpb, unroll):
    """The NaN/inf count of up to four 1-D arrays of one type in one launch:
    ``flags[slot + j] +=`` the count of ``a_j`` for ``j < k`` (the unused
    arguments repeat ``a0``)."""
    count_block = _count_nonfinite_fn(tpb, int(unroll))

    @jit()
    def count_nonfinite_group(a0, a1, a2, a3, k, flags, slot):
        buf = cuda.shared.array(tpb, types.int64)
        count_block(a0, flags, slot, buf)
        if k > 1:
            count_block(a1, flags, slot + 1, buf)
        if k > 2:
            count_block(a2, flags, slot + 2, buf)
        if k > 3:
            count_block(a3, flags, slot + 3, buf)

    return count_nonfinite_group


@functools.lru_cache(maxsize=None)
def _check_kernels(tpb, unroll=1):
    """Kernels that count non-finite values and out-of-range labels.

    ``unroll`` (``CUDA_CHECK_UNROLL``): elements of ``a`` a thread tests per
    round of the NaN count's grid-stride loop, on unsigned offsets. SASS
    (sm_90, float32): with 8, a round's 8 loads are issued back to back, 7.6
    instructions an element, 30 registers; the plain loop (1), which LLVM
    unrolls 16 times, interleaves its loads with signed 64-bit index code,
    16 instructions an element, 54 registers (its grid: 4 blocks of 256 per
    multiprocessor; the unrolled one's: as many as fit, 8).
    """
    count_block = _count_nonfinite_fn(tpb, int(unroll))

    @jit()
    def count_nonfinite(a, flags, slot):
        # a: 1-D; flags[slot] += number of NaN/inf
        buf = cuda.shared.array(tpb, types.int64)
        count_block(a, flags, slot, buf)

    @jit()
    def label_range(y, n_classes, flags, slot):
        # flags[slot]: count of labels outside [0, n_classes);
        # flags[slot + 1], flags[slot + 2]: running min and max label.
        buf = cuda.shared.array(tpb, types.int64)
        tid = cuda.threadIdx.x
        bad = 0
        lo = np.int64(0x7FFFFFFFFFFFFFFF)
        hi = np.int64(-0x7FFFFFFFFFFFFFFF)
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < y.shape[0]:
            v = np.int64(y[i])
            if v < 0 or v >= n_classes:
                bad += 1
            lo = min(lo, v)
            hi = max(hi, v)
            i += step
        buf[tid] = bad
        cuda.syncthreads()
        s = tpb // 2
        while s > 0:
            if tid < s:
                buf[tid] += buf[tid + s]
            cuda.syncthreads()
            s //= 2
        if tid == 0 and buf[0] > 0:
            cuda.atomic.add(flags, slot, buf[0])
        if bad > 0:
            cuda.atomic.min(flags, slot + 1, lo)
            cuda.atomic.max(flags, slot + 2, hi)

    return count_nonfinite, label_range


@functools.lru_cache(maxsize=None)
def _copy_kernels():
    @jit()
    def copy2d(src, dst):
        n_cols = dst.shape[1]
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < dst.shape[0] * n_cols:
            r = i // n_cols
            c = i - r * n_cols
            dst[r, c] = src[r, c]
            i += step

    @jit()
    def copy1d(src, dst):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < dst.shape[0]:
            dst[i] = src[i]
            i += step

    @jit()
    def fill(a, value):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < a.shape[0]:
            a[i] = value
            i += step

    return copy2d, copy1d, fill


@functools.lru_cache(maxsize=None)
def _cupy():
    """CuPy, or None when it does not import (asked once: a failed import is
    not cached by Python, and every allocation asks)."""
    try:
        import cupy
    except Exception:
        return None
    return cupy


def pool():
    """CuPy, whose caching memory pool then allocates the wrappers' outputs
    and scratch, or None (numba's ``cuda.device_array``: a ``cudaMalloc`` per
    array, and a batched ``cudaFree`` that synchronises). See ``CUDA_ALLOCATOR``."""
    choice = opt.CUDA_ALLOCATOR
    if choice == "numba" or simulator():
        return None
    if choice not in ("auto", "cupy"):
        raise ValueError(f"CUDA_ALLOCATOR must be 'auto', 'numba' or 'cupy', got {choice!r}")
    cp = _cupy()
    if cp is None and choice == "cupy":
        raise RuntimeError("CUDA_ALLOCATOR = 'cupy' but CuPy does not import")
    return cp


def _wrap(desc, owner):
    """A numba device array over memory described by ``desc`` (owned by ``owner``)."""
    return cuda.from_cuda_array_interface(desc, owner=owner, sync=False)


def device_array(shape, dtype):
    """An uninitialised device array: from CuPy's memory pool when :func:`pool`
    gives one (the block returns to the pool when the array is freed, so a
    wrapper called in a loop reuses its memory, as PyTorch's caching
    allocator does), else numba's ``cuda.device_array``. Either is a numba
    device array on the legacy default stream, the stream every kernel here
    runs on."""
    cp = pool()
    if cp is None:
        return cuda.device_array(shape, dtype)
    a = cp.empty(shape, dtype)
    desc = dict(a.__cuda_array_interface__)
    desc.pop("stream", None)  # CuPy's legacy default stream: ours too, no sync needed
    return _wrap(desc, a)


def to_device(host):
    """A host array copied into a new :func:`device_array`."""
    host = np.ascontiguousarray(host)
    if 0 in host.strides:
        # a length-1 axis of stride 0 (``x[:, None]``) is contiguous to NumPy,
        # but numba's copy drops it as a broadcast axis (the simulator's
        # copy then fails on the shapes): a plain copy has no stride 0
        host = host.copy()
    a = device_array(host.shape, host.dtype)
    if host.size:
        a.copy_to_device(host)
    return a


#: When True every output buffer is filled with NaN (0x7F.. for integers)
#: before a kernel writes it, so an element a kernel forgets stays NaN.
#: Used by the tests and ``benchmarks/gpu_check.py``; costs a pass per output.
POISON = False


def empty(shape, dtype):
    """An uninitialised device array (NaN-filled when :data:`POISON` is set)."""
    a = device_array(shape, dtype)
    if POISON and a.size:
        flat = a.reshape(a.size)
        value = np.nan if np.dtype(dtype).kind == "f" else np.iinfo(dtype).max
        _, _, fill = _copy_kernels()
        launch(fill, grid_size(-(-a.size // opt.CUDA_TPB)), opt.CUDA_TPB, flat,
               np.dtype(dtype).type(value))
    return a


def zeros(shape, dtype):
    """A zero-filled device array."""
    a = device_array(shape, dtype)
    if a.size:
        _, _, fill = _copy_kernels()
        launch(fill, grid_size(-(-a.size // opt.CUDA_TPB)), opt.CUDA_TPB, a.reshape(a.size),
               np.dtype(dtype).type(0))
    return a


def buffer(work, name, shape, dtype):
    """A device array of ``shape``: a view of one kept in ``work`` under ``name``
    (a dict that a training loop passes to every call, so that its steps
    allocate nothing; grown when too small), or a new one when ``work`` is None."""
    size = int(math.prod(shape))
    dtype = np.dtype(dtype)
    if work is None:
        return device_array(shape, dtype)
    a = work.get(name)
    if a is None or a.shape[0] < size or np.dtype(a.dtype) != dtype:
        a = work[name] = cuda.device_array(max(size, 1), dtype)
    return a[:size].reshape(shape)


def to_host(a):
    """A device array copied to a new NumPy array."""
    return a.copy_to_host()


@functools.lru_cache(maxsize=None)
def _column_sums_fn(tpb, cw):
    """The second pass's device function: ``out[c] (+)= scale * sum_g
    partials[g, c]`` in float64, g in order, for the columns of block ``b``
    of ``nb`` (a grid stride of ``nb`` blocks). ``red``: a shared array of
    ``tpb`` float64.

    ``cw == 0``: a thread per column (wide outputs, split-K products).
    Otherwise a block per ``cw`` columns, its ``gl = tpb // cw`` lanes each
    summing every ``gl``-th partial of a column (consecutive threads read
    consecutive columns), then a tree over the lanes in shared memory; fixed
    order for a given ``tpb``."""
    if cw == 0:
        @jit(device=True)
        def threads(partials, out, scale, accumulate, b, nb, red):
            m = b * tpb + cuda.threadIdx.x
            step = nb * tpb
            while m < out.shape[0]:
                s = 0.0
                for g in range(partials.shape[0]):
                    s += partials[g, m]
                s *= scale
                if accumulate:
                    s += out[m]
                out[m] = s
                m += step

        return threads

    gl = tpb // cw

    @jit(device=True)
    def lanes(partials, out, scale, accumulate, b, nb, red):
        tid = cuda.threadIdx.x
        lane = tid // cw
        G = partials.shape[0]
        M = out.shape[0]
        col0 = b * cw
        while col0 < M:  # the same trip count for the whole block
            c = col0 + tid - lane * cw
            s = 0.0
            if lane < gl and c < M:
                g = lane
                while g < G:
                    s += partials[g, c]
                    g += gl
            red[tid] = s
            cuda.syncthreads()
            stride = 1
            while stride < gl:
                if lane % (2 * stride) == 0 and lane + stride < gl:
                    red[tid] += red[tid + stride * cw]
                cuda.syncthreads()
                stride *= 2
            if lane == 0 and c < M:
                v = red[tid] * scale
                if accumulate:
                    v += out[c]
                out[c] = v
            cuda.syncthreads()
            col0 += nb * cw

    return lanes


@functools.lru_cache(maxsize=None)
def _sum_kernel(tpb, cw):
    """The second pass over one set of partials (see :func:`_column_sums_fn`)."""
    columns = _column_sums_fn(tpb, cw)

    @jit()
    def sum_partials(partials, out, scale, accumulate):
        red = cuda.shared.array(tpb, dtype=types.float64)
        columns(partials, out, scale, accumulate, cuda.blockIdx.x, cuda.gridDim.x, red)

    return sum_partials


@functools.lru_cache(maxsize=None)
def _sum_pair_kernel(tpb, cw_a, cw_b):
    """The second passes over two sets of partials in one launch: the first
    ``blocks_a`` blocks sum the first set, the others the second (each as
    :func:`_column_sums_fn`; a block's branch is the same for all its
    threads)."""
    columns_a, columns_b = _column_sums_fn(tpb, cw_a), _column_sums_fn(tpb, cw_b)

    @jit()
    def sum_partials_pair(pa, oa, sa, acc_a, pb, ob, sb, acc_b, blocks_a):
        red = cuda.shared.array(tpb, dtype=types.float64)
        b = cuda.blockIdx.x
        if b < blocks_a:
            columns_a(pa, oa, sa, acc_a, b, blocks_a, red)
        else:
            columns_b(pb, ob, sb, acc_b, b - blocks_a, cuda.gridDim.x - blocks_a, red)

    return sum_partials_pair


def _sum_plan(partials, out, tpb):
    """(cw, blocks) of the second pass over ``partials`` into ``out``."""
    m = out.shape[0]
    if m <= opt.CUDA_SUM_BLOCK_MAX_COLS and partials.shape[0] > 1:
        cw = min(32, m, tpb)
        return cw, grid_size(-(-m // cw))
    return 0, grid_size(-(-m // tpb))


def sum_partials(partials, out, scale=1.0, accumulate=False, also=None):
    """``out (+)= scale * partials.sum(axis=0)``: the fixed-order second pass.

    ``partials`` is (n_blocks, m) on the device, ``out`` a 1-D device array
    of length m (any contiguous array viewed flat). Sums in float64.

    Up to ``CUDA_SUM_BLOCK_MAX_COLS`` columns (a loss, the bias gradients)
    a block sums each group of 32 columns, so that the partials of one
    column are read by a block's threads in parallel; on the first GPU run
    the loss's sum was one thread reading its 528 partials one after the
    other. Wider outputs (split-K products) keep a thread per column.

    ``also``: ``(partials, out, scale, accumulate)`` of a second pass made
    in the same launch (a gradient's and a loss's partials: one launch
    fewer), unless ``CUDA_SUM_PAIRS`` is False.
    """
    tpb = opt.CUDA_TPB
    cw, blocks = _sum_plan(partials, out, tpb)
    if also is not None and not opt.CUDA_SUM_PAIRS:
        sum_partials(partials, out, scale, accumulate)
        partials, out, scale, accumulate = also
        also = None
        cw, blocks = _sum_plan(partials, out, tpb)
    if also is None:
        launch(_sum_kernel(tpb, cw), blocks, tpb, partials, out, float(scale),
               bool(accumulate))
        return
    pb, ob, sb, acc_b = also
    cw_b, blocks_b = _sum_plan(pb, ob, tpb)
    launch(_sum_pair_kernel(tpb, cw, cw_b), blocks + blocks_b, tpb, partials, out,
           float(scale), bool(accumulate), pb, ob, float(sb), bool(acc_b), blocks)


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------


def _is_device(value):
    return bool(getattr(value, "__cuda_ndarray__", False)) or hasattr(
        value, "__cuda_array_interface__"
    )


def _as_device(value):
    if getattr(value, "__cuda_ndarray__", False):
        return value
    desc = value.__cuda_array_interface__
    # A producer that names the legacy default stream (CuPy: 1) queued its
    # work where every kernel here runs: stream order already puts ours after
    # it, so the host need not wait (numba's as_cuda_array would synchronise
    # that stream, i.e. the device, once per input). Any other stream: wait.
    from numba.cuda.core import config

    legacy = desc.get("stream") == 1 and not config.CUDA_PER_THREAD_DEFAULT_STREAM
    return cuda.from_cuda_array_interface(desc, owner=value, sync=not legacy)


def _host(name, value):
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (list, tuple, numbers.Number)) or hasattr(value, "__array__"):
        return np.asarray(value)
    raise TypeError(f"{name} must be an array, got {type(value).__name__}")


def _is_c_contiguous(a):
    try:
        return bool(a.is_c_contiguous())
    except AttributeError:
        return bool(a.flags["C_CONTIGUOUS"])


def _contiguous(a):
    """A C-contiguous device array with the contents of device array ``a``."""
    if _is_c_contiguous(a):
        return a
    out = device_array(a.shape, a.dtype)
    copy2d, copy1d, _ = _copy_kernels()
    tpb = opt.CUDA_TPB
    blocks = grid_size(-(-max(a.size, 1) // tpb))
    if a.ndim == 1:
        launch(copy1d, blocks, tpb, a, out)
    else:
        launch(copy2d, blocks, tpb, a, out)
    return out


def _shape_text(shape):
    return "(" + ", ".join(str(s) for s in shape) + ")"


class Inputs:
    """The prepared inputs of one call.

    Attributes
    ----------
    arrays : list
        C-contiguous device arrays, in the order of the specs.
    labels : device array or None
        The labels, on the device (any integer dtype).
    host : bool
        True when every input was a host array: results go back to the host.
    dtype : numpy.dtype
        The common floating dtype.
    sizes : dict
        The named sizes of the specs (``n_samples`` ...).
    indices : device array or None
        The row indices, on the device (any integer dtype).
    unchecked_labels : (name, n_classes) or None
        Set when the device labels' range was left to the kernels (see
        :func:`prepare`'s ``labels_in_kernel``): :func:`loss_value` then
        checks them when the loss is not finite.
    """

    def __init__(self, arrays, labels, host, dtype, sizes, indices=None,
                 unchecked_labels=None):
        self.arrays = arrays
        self.labels = labels
        self.host = host
        self.unchecked_labels = unchecked_labels
        self.dtype = dtype
        self.sizes = sizes
        self.indices = indices

    def result(self, a):
        """An output as the caller gets it (NumPy when all inputs were host)."""
        if a is None:
            return None
        return to_host(a) if self.host else a


_I64_MAX, _I64_MIN = int(np.iinfo(np.int64).max), int(np.iinfo(np.int64).min)


def prepare(specs, check_finite=True, labels=None, indices=None, labels_in_kernel=False):
    """Check float inputs (and labels) and bring them to the device.

    Parameters
    ----------
    specs : list of (name, value, shape)
        As :func:`fusedgrad._validate.float_arrays`: ``shape`` holds ints and
        size names.
    check_finite : bool
        Reject NaN/inf (a reduction kernel on device arrays).
    labels : (name, value, samples_name, classes_name), optional
        Integer labels of length ``sizes[samples_name]`` in
        ``[0, sizes[classes_name])``.
    indices : (name, value, rows_name), optional
        Nonempty 1-D integer row indices in ``[0, sizes[rows_name])``; their
        count becomes the size ``"n_rows"`` (which ``labels`` may name).
    labels_in_kernel : bool
        The caller's kernels test every label they index by and make the loss
        NaN for one outside ``[0, n_classes)`` (see softmax.py, "Labels
        outside [0, K)"), and the caller reads its loss with
        :func:`loss_value`: with ``CUDA_LABELS_IN_KERNEL`` the range of
        device labels is then not checked here (no check kernel, no
        synchronising copy), only when the loss comes back NaN. Their dtype
        and shape are checked here as always, and host labels on the host.

    Returns
    -------
    Inputs

    Raises
    ------
    TypeError, ValueError
        The same errors, with the same messages, as the CPU kernels.
    """
    require()
    values = []
    on_device = []
    for name, value, _ in specs:
        dev = _is_device(value)
        values.append(_as_device(value) if dev else _host(name, value))
        on_device.append(dev)

    dtype = None
    first = None
    for a, (name, _, _) in zip(values, specs):
        dt = np.dtype(a.dtype)
        if dt not in _FLOAT_DTYPES:
            raise TypeError(f"{name} must be a float32 or float64 array, got dtype {dt}")
        if dtype is None:
            dtype, first = dt, name
        elif dt != dtype:
            raise TypeError(
                f"{name} has dtype {dt} but {first} has dtype {dtype}: "
                "all float inputs must have the same dtype (cast them first)"
            )

    sizes, origin = {}, {}
    for a, (name, _, shape) in zip(values, specs):
        a_shape = tuple(a.shape)
        if len(a_shape) != len(shape):
            raise ValueError(
                f"{name} must be {len(shape)}-D with shape {_shape_text(shape)}, "
                f"got {len(a_shape)}-D array of shape {a_shape}"
            )
        for axis, (want, got) in enumerate(zip(shape, a_shape)):
            if isinstance(want, str):
                if want not in sizes:
                    sizes[want], origin[want] = got, (name, axis)
                    if got == 0:
                        raise ValueError(f"{name} is empty: its axis {axis} ({want}) has size 0")
                elif sizes[want] != got:
                    other, other_axis = origin[want]
                    raise ValueError(
                        f"{name} has shape {a_shape}, expected {_shape_text(shape)}: "
                        f"its axis {axis} ({want}) is {got} but axis {other_axis} of "
                        f"{other} is {sizes[want]}"
                    )
            elif want != got:
                raise ValueError(f"{name} must have size {want} on axis {axis}, got shape {a_shape}")

    idx = idx_device = None
    if indices is not None:
        i_name, i_value, rows_name = indices
        n_rows = sizes[rows_name]
        idx_device = _is_device(i_value)
        if idx_device:
            idx = _as_device(i_value)
            i_dtype = np.dtype(idx.dtype)
            if i_dtype == np.bool_ or not np.issubdtype(i_dtype, np.integer):
                raise TypeError(f"{i_name} must hold integer row indices, got dtype {i_dtype}")
            if len(idx.shape) != 1:
                raise ValueError(f"{i_name} must be 1-D, got shape {tuple(idx.shape)}")
            if idx.shape[0] == 0:
                raise ValueError(f"{i_name} is empty: it selects no samples")
        else:
            idx = _validate.indices(i_name, i_value, n_rows).astype(np.int64, copy=False)
        sizes["n_rows"] = int(idx.shape[0])

    y = y_device = None
    if labels is not None:
        y_name, y_value, samples, classes = labels
        n, k = sizes[samples], sizes[classes]
        y_device = _is_device(y_value)
        if y_device:
            y = _as_device(y_value)
            y_dtype = np.dtype(y.dtype)
            if y_dtype.kind not in "iu":  # (bool is kind "b")
                raise TypeError(
                    f"{y_name} must hold integer class labels in [0, {k}), got dtype {y_dtype}"
                )
            if len(y.shape) != 1:
                raise ValueError(f"{y_name} must be 1-D of length {n}, got shape {tuple(y.shape)}")
            if y.shape[0] != n:
                raise ValueError(f"{y_name} has {y.shape[0]} labels but there are {n} samples")
        else:
            y = _validate.labels(y_name, y_value, n, k).astype(np.int64, copy=False)

    # Data checks: host arrays on the host, device arrays by kernels whose
    # counts come back in a single copy.
    device_checks = []  # (kind, name, slot)
    flags = None
    init = [0] * (sum(on_device) if check_finite else 0)
    defer = y_device and labels_in_kernel and bool(opt.CUDA_LABELS_IN_KERNEL)
    if y_device and not defer:
        init += [0, _I64_MAX, _I64_MIN]
    if idx_device:
        init += [0, _I64_MAX, _I64_MIN]
    if init:
        flags = to_device(np.array(init, dtype=np.int64))
    _, label_range = _check_kernels(opt.CUDA_TPB, opt.CUDA_CHECK_UNROLL)
    tpb = opt.CUDA_TPB
    slot = 0
    counted = []  # (flat device array, its slot)
    for i, ((name, _, _), a) in enumerate(zip(specs, values)):
        if not check_finite:
            continue
        if on_device[i]:
            flat = _contiguous(a)
            counted.append((flat.reshape(flat.size), slot))
            device_checks.append(("finite", name, slot))
            slot += 1
    _count_nonfinite(counted, flags)
    if y_device and not defer:
        launch(label_range, grid_size(-(-y.shape[0] // tpb)), tpb,
               y, np.int64(sizes[labels[3]]), flags, slot)
        device_checks.append(("labels", labels[0], slot))
        slot += 3
    if idx_device:
        launch(label_range, grid_size(-(-idx.shape[0] // tpb)), tpb,
               idx, np.int64(sizes[indices[2]]), flags, slot)
        device_checks.append(("indices", indices[0], slot))

    counts = flags.copy_to_host() if flags is not None else None
    for i, ((name, _, _), a) in enumerate(zip(specs, values)):
        if not check_finite:
            break
        if on_device[i]:
            slot = next(s for kind, nm, s in device_checks if kind == "finite" and nm == name)
            if counts[slot]:
                raise ValueError(f"{name} contains NaN or infinity")
        elif not _validate.all_finite(np.ascontiguousarray(a)):
            raise ValueError(f"{name} contains NaN or infinity")
    for kind, name, slot in device_checks:
        if kind == "finite" or not counts[slot]:
            continue
        lo, hi = int(counts[slot + 1]), int(counts[slot + 2])
        bad = lo if lo < 0 else hi
        if kind == "labels":
            raise _label_error(name, bad, sizes[labels[3]])
        n = sizes[indices[2]]
        raise ValueError(f"{name} holds index {bad}, outside [0, {n}) for {n} rows")

    arrays = []
    for a, dev in zip(values, on_device):
        if dev:
            arrays.append(_contiguous(a))
        else:
            arrays.append(to_device(a))
    if y is not None and not y_device:
        y = to_device(y)
    if idx is not None and not idx_device:
        idx = to_device(idx)
    host = not any(on_device) and not y_device and not idx_device
    return Inputs(arrays, y, host, dtype, sizes, idx,
                  (labels[0], sizes[labels[3]]) if defer else None)


def _count_nonfinite(counted, flags):
    """Launch the NaN/inf counts of ``counted`` (``(flat, slot)`` pairs, slots
    consecutive): up to ``CUDA_CHECK_GROUP`` arrays of one dtype a launch
    (four at most), else one each."""
    tpb, U = opt.CUDA_TPB, opt.CUDA_CHECK_UNROLL
    group = min(4, int(opt.CUDA_CHECK_GROUP))
    count_nonfinite, _ = _check_kernels(tpb, U)
    i = 0
    while i < len(counted):
        flat, slot = counted[i]
        k = 1
        while (k < group and i + k < len(counted)
               and counted[i + k][0].dtype == flat.dtype):
            k += 1
        work = max(a.size for a, _ in counted[i:i + k])
        if k > 1:
            kernel = _check_group_kernel(tpb, U)
            arrays = [a for a, _ in counted[i:i + k]] + [flat] * (4 - k)
            args = (*arrays, k, flags, slot)
        else:
            kernel, args = count_nonfinite, (flat, flags, slot)
        if U > 1:
            blocks = resident_grid(kernel, args, tpb, -(-work // (tpb * U)))
        else:
            blocks = grid_size(-(-work // tpb))
        launch(kernel, blocks, tpb, *args)
        i += k


def check_labels(name, y, n_classes):
    """Raise the ValueError of :func:`prepare` if device labels ``y`` hold a
    value outside ``[0, n_classes)`` (a check kernel and a copy back)."""
    flags = to_device(np.array([0, _I64_MAX, _I64_MIN], dtype=np.int64))
    label_range = _check_kernels(opt.CUDA_TPB, opt.CUDA_CHECK_UNROLL)[1]
    tpb = opt.CUDA_TPB
    launch(label_range, grid_size(-(-y.shape[0] // tpb)), tpb, y, np.int64(n_classes), flags, 0)
    count, lo, hi = (int(v) for v in flags.copy_to_host())
    if count:
        raise _label_error(name, lo if lo < 0 else hi, n_classes)


def _label_error(name, bad, k):
    return ValueError(f"{name} holds label {bad}, outside [0, {k}) for {k} classes")


def loss_value(loss_sum, dtype, inputs=None):
    """The loss kept as a one-element float64 device array, as a NumPy scalar.

    With the :class:`Inputs` of the call, whose labels the kernels checked
    (``unchecked_labels``), a loss that is not finite has the labels checked:
    a label outside the classes raises ValueError; otherwise the loss is
    returned as it is (NaN from NaN inputs with ``check_finite=False``)."""
    value = np.dtype(dtype).type(loss_sum.copy_to_host()[0])
    if inputs is not None and inputs.unchecked_labels is not None and not np.isfinite(value):
        check_labels(inputs.unchecked_labels[0], inputs.labels, inputs.unchecked_labels[1])
    return value


def is_device(value):
    """Whether ``value`` is a device array (numba, or ``__cuda_array_interface__``)."""
    return _is_device(value)


def _span(a):
    """The byte range ``[start, stop)`` of a device array, or None if unknown."""
    try:
        iface = a.__cuda_array_interface__
    except AttributeError:
        return None
    start = int(iface["data"][0])
    return start, start + int(np.prod(iface["shape"], dtype=np.int64)) * np.dtype(iface["typestr"]).itemsize


def _device_overlap(a, b):
    fa, fb = getattr(a, "_ary", None), getattr(b, "_ary", None)
    if fa is not None and fb is not None:  # simulator arrays wrap NumPy arrays
        return np.shares_memory(fa, fb)
    sa, sb = _span(a), _span(b)
    if sa is None or sb is None:
        return False
    return sa[0] < sb[1] and sb[0] < sa[1]


def output(name, value, shape, dtype, inputs=()):
    """Check a caller-supplied output (host or device): shape, dtype,
    C-contiguous, not overlapping any of ``inputs`` (name, value) pairs."""
    if not _is_device(value):
        host_inputs = [(n, v) for n, v in inputs if isinstance(v, np.ndarray)]
        return _validate.output(name, value, shape, dtype, host_inputs)
    a = _as_device(value)
    if np.dtype(a.dtype) != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {np.dtype(a.dtype)}")
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(a.shape)}")
    if not _is_c_contiguous(a):
        raise ValueError(f"{name} must be C-contiguous")
    for other_name, other in inputs:
        if _is_device(other) and _device_overlap(a, _as_device(other)):
            raise ValueError(f"{name} overlaps input {other_name}")
    return a


@functools.lru_cache(maxsize=None)
def _split_kernel():
    @jit()
    def split(C, left, last):
        # left = C[:, :-1], last = C[:, -1]
        n = left.shape[1]
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < C.shape[0] * C.shape[1]:
            r = i // C.shape[1]
            c = i - r * C.shape[1]
            if c < n:
                left[r, c] = C[r, c]
            else:
                last[r] = C[r, c]
            i += step

    return split


def split_columns(C, left, last):
    """Copy ``C[:, :-1]`` into ``left`` and ``C[:, -1]`` into ``last`` (device arrays)."""
    tpb = opt.CUDA_TPB
    launch(_split_kernel(), grid_size(-(-C.size // tpb)), tpb, C, left, last)


@functools.lru_cache(maxsize=None)
def _weight_kernel(tpb):
    @jit()
    def weight_stats(w, out):
        # out[b] = (float64 sum, NaN/inf count, negative count, smallest value)
        # of the weights block b visits: each thread in its grid-stride order,
        # then a fixed tree over the block; the caller adds the blocks in order.
        buf = cuda.shared.array((4, tpb), types.float64)
        tid = cuda.threadIdx.x
        total = 0.0
        bad = 0.0
        negative = 0.0
        low = 0.0
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < w.shape[0]:
            v = np.float64(w[i])
            total += v
            if not math.isfinite(v):
                bad += 1.0
            elif v < 0:
                negative += 1.0
                low = min(low, v)
            i += step
        buf[0, tid] = total
        buf[1, tid] = bad
        buf[2, tid] = negative
        buf[3, tid] = low
        cuda.syncthreads()
        s = tpb // 2
        while s > 0:
            if tid < s:
                buf[0, tid] += buf[0, tid + s]
                buf[1, tid] += buf[1, tid + s]
                buf[2, tid] += buf[2, tid + s]
                buf[3, tid] = min(buf[3, tid], buf[3, tid + s])
            cuda.syncthreads()
            s //= 2
        if tid == 0:
            b = cuda.blockIdx.x
            for k in range(4):
                out[b, k] = buf[k, 0]

    return weight_stats


def weights(value, dtype, n_rows, check_finite=True):
    """Sample weights for a kernel: ``(device array of dtype, float64 sum)``, or
    ``(None, None)`` when ``value`` is None.

    The checks of :func:`fusedgrad._validate.row_weights` (dtype, shape and,
    with ``check_finite``, finite, none negative, a positive sum). Host
    weights are checked on the host and copied in; device weights stay on
    the device: a reduction kernel gives their sum and counts, which come
    back in one copy of a few numbers per block.
    """
    if value is None:
        return None, None
    dtype = np.dtype(dtype)
    if not _is_device(value):
        w, total = _validate.row_weights(value, dtype, n_rows, check_finite)
        return to_device(w), total
    w = _as_device(value)
    _validate.weights_layout(w.dtype, w.shape, dtype, n_rows)
    if not np.dtype(w.dtype).isnative:  # no byte swap on the device
        raise TypeError(f"sample_weight must be in native byte order, got dtype {w.dtype}")
    w = _contiguous(w)
    tpb = opt.CUDA_TPB
    blocks = grid_size(-(-max(n_rows, 1) // tpb))
    out = device_array((blocks, 4), np.float64)
    launch(_weight_kernel(tpb), blocks, tpb, w, out)
    stats = out.copy_to_host()
    total = 0.0
    for b in range(blocks):  # in block order: the same sum on every call
        total += float(stats[b, 0])
    if check_finite:
        if stats[:, 1].any():
            raise ValueError("sample_weight contains NaN or infinity")
        if stats[:, 2].any():
            raise ValueError(f"sample_weight must be non-negative: it holds "
                             f"{float(stats[:, 3].min())!r}")
        _validate.require_positive_sum("sample_weight", total)
    return w, total
