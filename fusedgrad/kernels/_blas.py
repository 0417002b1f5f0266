"""Single-threaded BLAS level-3 calls from inside jitted (and parallel) loops.

NumPy's ``np.dot`` in nopython mode allocates its result and cannot
accumulate (``beta = 1``), transpose in place or write into a slice of a
scratch buffer; the fused kernels need all three. This module exposes SciPy's
BLAS (``scipy.linalg.cython_blas``) ``sgemm``/``dgemm``/``ssyrk``/``dsyrk``
to Numba under fixed symbol names, so that compiled code refers to them by
name and stays cacheable (a baked-in function address would change between
processes and make ``cache=True`` fail).

The helpers take row-major (C-contiguous) 2-D arrays, which BLAS sees as
their column-major transposes.

BLAS must run single-threaded while a parallel kernel calls it from several
threads: :func:`single_threaded_blas` sets that for the duration of a call.
"""

import ctypes
import itertools
import threading
from contextlib import contextmanager, nullcontext

import numba
import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.ufunc.parallel import _launch_threads
from scipy.linalg import cython_blas

from fusedgrad.kernels import _options as opt
from fusedgrad.kernels._options import INLINE

__all__ = ["mm_nn", "mm_tn", "mm_nt", "syrk_tn", "gram_tn", "gram_uses_tiles", "piece_rows",
           "single_threaded_blas", "serial_call", "kernel_blas", "enter_threads", "leave_threads"]


def _capsule_address(name):
    capsule = cython_blas.__pyx_capi__[name]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype = ctypes.c_char_p
    get_name.argtypes = [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return get_pointer(capsule, get_name(capsule))


_SYMBOLS = {}
for _routine in ("sgemm", "dgemm", "ssyrk", "dsyrk"):
    _SYMBOLS[_routine] = f"fusedgrad_cython_blas_{_routine}"
    llvm_binding.add_symbol(_SYMBOLS[_routine], _capsule_address(_routine))


def _prefix(dtype):
    if dtype == types.float32:
        return "s"
    if dtype == types.float64:
        return "d"
    raise TypeError(f"BLAS helpers support float32 and float64, not {dtype}")


def _data_pointer(context, builder, array_type, value, elem_ptr_type):
    array = context.make_array(array_type)(context, builder, value)
    return builder.bitcast(array.data, elem_ptr_type)


@intrinsic
def _gemm(typingctx, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Column-major ``c = alpha * op(a) @ op(b) + beta * c`` (Fortran gemm)."""
    prefix = _prefix(c.dtype)
    sig = types.void(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    def codegen(context, builder, signature, args):
        (ta, tb, m_, n_, k_, alpha_, a_, lda_, b_, ldb_, beta_, c_, ldc_) = args
        fty = context.get_value_type(c.dtype)
        fptr = fty.as_pointer()
        i32 = ir.IntType(32)
        i8 = ir.IntType(8)

        ref = cgutils.alloca_once_value
        char_args = [ref(builder, context.cast(builder, v, t, types.uint8))
                     for v, t in ((ta, transa), (tb, transb))]
        int_args = [ref(builder, context.cast(builder, v, t, types.int32))
                    for v, t in ((m_, m), (n_, n), (k_, k), (lda_, lda), (ldb_, ldb), (ldc_, ldc))]
        alpha_p = ref(builder, context.cast(builder, alpha_, alpha, c.dtype))
        beta_p = ref(builder, context.cast(builder, beta_, beta, c.dtype))
        a_p = _data_pointer(context, builder, a, a_, fptr)
        b_p = _data_pointer(context, builder, b, b_, fptr)
        c_p = _data_pointer(context, builder, c, c_, fptr)
        fnty = ir.FunctionType(ir.VoidType(), [i8.as_pointer()] * 2 + [i32.as_pointer()] * 3
                               + [fptr, fptr, i32.as_pointer(), fptr, i32.as_pointer(),
                                  fptr, fptr, i32.as_pointer()])
        fn = cgutils.get_or_insert_function(builder.module, fnty, _SYMBOLS[prefix + "gemm"])
        builder.call(fn, [char_args[0], char_args[1], int_args[0], int_args[1], int_args[2],
                          alpha_p, a_p, int_args[3], b_p, int_args[4], beta_p, c_p, int_args[5]])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _syrk(typingctx, uplo, trans, n, k, alpha, a, lda, beta, c, ldc):
    """Column-major ``c = alpha * op(a) @ op(a).T + beta * c`` on one triangle (Fortran syrk)."""
    prefix = _prefix(c.dtype)
    sig = types.void(uplo, trans, n, k, alpha, a, lda, beta, c, ldc)

    def codegen(context, builder, signature, args):
        (uplo_, trans_, n_, k_, alpha_, a_, lda_, beta_, c_, ldc_) = args
        fty = context.get_value_type(c.dtype)
        fptr = fty.as_pointer()
        i32 = ir.IntType(32)
        i8 = ir.IntType(8)
        ref = cgutils.alloca_once_value
        u_p = ref(builder, context.cast(builder, uplo_, uplo, types.uint8))
        t_p = ref(builder, context.cast(builder, trans_, trans, types.uint8))
        n_p = ref(builder, context.cast(builder, n_, n, types.int32))
        k_p = ref(builder, context.cast(builder, k_, k, types.int32))
        lda_p = ref(builder, context.cast(builder, lda_, lda, types.int32))
        ldc_p = ref(builder, context.cast(builder, ldc_, ldc, types.int32))
        alpha_p = ref(builder, context.cast(builder, alpha_, alpha, c.dtype))
        beta_p = ref(builder, context.cast(builder, beta_, beta, c.dtype))
        a_p = _data_pointer(context, builder, a, a_, fptr)
        c_p = _data_pointer(context, builder, c, c_, fptr)
        fnty = ir.FunctionType(ir.VoidType(), [i8.as_pointer()] * 2 + [i32.as_pointer()] * 2
                               + [fptr, fptr, i32.as_pointer(), fptr, fptr, i32.as_pointer()])
        fn = cgutils.get_or_insert_function(builder.module, fnty, _SYMBOLS[prefix + "syrk"])
        builder.call(fn, [u_p, t_p, n_p, k_p, alpha_p, a_p, lda_p, beta_p, c_p, ldc_p])
        return context.get_dummy_value()

    return sig, codegen


_N = np.uint8(ord("N"))
_T = np.uint8(ord("T"))
_L = np.uint8(ord("L"))


#: OpenBLAS (0.3.x on x86-64 with AVX-512) computes a product of at most this
#: many multiply-adds, ``m * n * k``, with its small-matrix kernels, which
#: skip packing the operands into buffers. For the thin layers of the MLP
#: those run 1.2-2.8x faster than the packed path (measured, single thread:
#: the (64, 128) weight gradient of a 1024-row chunk 32.3 ms -> 21.6 ms per
#: 262144 rows in float32, 84.2 -> 45.4 ms in float64), so a long product
#: whose other two dimensions are small is cut along its long dimension into
#: pieces that qualify.
SMALL_MNK = 100**3

#: A piece has at least this many rows; below it the product is not cut.
MIN_PIECE_ROWS = 32


@njit(**INLINE)
def piece_rows(rows, other):
    """Rows per piece when a product of ``rows * other`` multiply-adds is cut
    along its ``rows`` dimension (see :data:`SMALL_MNK`): the largest power of
    two whose piece qualifies for the small-matrix kernels, or ``rows`` (no
    cut) when that is below :data:`MIN_PIECE_ROWS` or the whole product
    qualifies already."""
    limit = SMALL_MNK // max(1, other)
    if limit >= rows or limit < MIN_PIECE_ROWS:
        return max(1, rows)
    piece = MIN_PIECE_ROWS
    while piece * 2 <= limit:
        piece *= 2
    return piece


@njit(**INLINE)
def mm_nn(A, B, C, beta):
    """Row-major ``C = A @ B + beta * C``; A (m, k), B (k, n), C (m, n), all C-contiguous.

    Cut into pieces of rows of A and C (:func:`piece_rows`).
    """
    m, k = A.shape
    n = B.shape[1]
    piece = piece_rows(m, k * n)
    for r0 in range(0, max(m, 1), piece):
        r1 = min(m, r0 + piece)
        # column-major view: C^T (n, m) = B^T (n, k) @ A^T (k, m)
        _gemm(_N, _N, n, r1 - r0, k, 1.0, B, n, A[r0:r1], k, beta, C[r0:r1], n)


@njit(**INLINE)
def mm_tn(A, B, C, beta):
    """Row-major ``C = A.T @ B + beta * C``; A (m, p), B (m, n), C (p, n), all C-contiguous.

    Cut into pieces of rows of A and B (:func:`piece_rows`), summed into C in
    row order.
    """
    m, p = A.shape
    n = B.shape[1]
    piece = piece_rows(m, p * n)
    for r0 in range(0, max(m, 1), piece):
        r1 = min(m, r0 + piece)
        # column-major view: C^T (n, p) = B^T (n, m) @ A (m, p)
        _gemm(_N, _T, n, p, r1 - r0, 1.0, B[r0:r1], n, A[r0:r1], p, beta if r0 == 0 else 1.0,
              C, n)


@njit(**INLINE)
def mm_nt(A, B, C, beta):
    """Row-major ``C = A @ B.T + beta * C``; A (m, n), B (p, n), C (m, p), all C-contiguous.

    Cut into pieces of rows of A and C (:func:`piece_rows`).
    """
    m, n = A.shape
    p = B.shape[0]
    piece = piece_rows(m, n * p)
    for r0 in range(0, max(m, 1), piece):
        r1 = min(m, r0 + piece)
        # column-major view: C^T (p, m) = B (p, n) @ A^T (n, m)
        _gemm(_T, _N, p, r1 - r0, n, 1.0, B, n, A[r0:r1], n, beta, C[r0:r1], p)


@njit(**INLINE)
def syrk_tn(A, C, beta):
    """Row-major ``C = A.T @ A + beta * C`` on the upper triangle of C only.

    A (m, p) and C (p, p) C-contiguous. In column-major terms C^T = A^T (A^T)^T
    with A^T (p, m) stored with leading dimension p; BLAS's lower triangle of
    the column-major C^T is the row-major upper triangle of C.
    """
    m, p = A.shape
    _syrk(_L, _N, p, m, 1.0, A, p, beta, C, p)


#: :func:`gram_tn` computes ``A.T @ A`` as a full product in small-matrix
#: pieces (twice the multiply-adds of ``syrk``, which fills one triangle) when
#: a piece has at least this many rows, i.e. up to 62 columns. Measured, one
#: thread, float64, 64e6 elements: 8 columns 35 ms against syrk's 71 ms, 16
#: columns 41 against 87, 32 columns 84 against 107, 48 columns 104 against
#: 121; at 64 columns the two are even (136 vs 139).
GRAM_GEMM_MIN_ROWS = 256

#: Rows of ``A`` of at least this many bytes make the Gram kernels use the
#: packed register tiles of :mod:`fusedgrad.kernels._tiles` instead of BLAS
#: (:func:`gram_uses_tiles`): at least two panels of 64-byte-vector tiles.
#: Measured (2 threads, 128e6 elements, X^T X and X^T y, BLAS -> tiles, ms):
#: float64 16 columns 66 -> 75, 32: 110 -> 82, 64: 133 -> 110, 128: 200 ->
#: 156, 256: 348 -> 247; float32 16 columns 40 -> 90, 32: 59 -> 56, 48: 70
#: -> 72, 64: 71 -> 56, 128: 94 -> 79, 256: 189 -> 126.
GRAM_TILES_MIN_ROW_BYTES = 256

#: ... and rows of at most this many bytes: wider, the tiles' additions into
#: the (p, p) result after each run of rows outweigh their savings, and
#: ``syrk`` is used (ms, 2 threads, 128e6 elements, syrk -> tiles: float64
#: 512 columns 539-562 -> 477-502, 1024: 1062 -> 970-1069, 2048: 2332 ->
#: 2455-2632; float32 512 columns 323 -> 267, 1024: 545 -> 495).
GRAM_TILES_MAX_ROW_BYTES = 4096


@njit(**INLINE)
def gram_uses_tiles(p, itemsize):
    """Whether the Gram kernels take the tile path for ``p`` columns of ``itemsize`` bytes."""
    return GRAM_TILES_MIN_ROW_BYTES <= p * itemsize <= GRAM_TILES_MAX_ROW_BYTES


@njit(**INLINE)
def gram_tn(A, C, beta):
    """Row-major ``C = A.T @ A + beta * C`` by BLAS, valid at least on the upper triangle of C.

    A (m, p) and C (p, p) C-contiguous. A full product in small-matrix pieces
    up to 62 columns (:data:`GRAM_GEMM_MIN_ROWS`), ``syrk`` beyond. The Gram
    kernels use it outside the tiles' range (:func:`gram_uses_tiles`).
    """
    m, p = A.shape
    if SMALL_MNK // max(1, p * p) >= GRAM_GEMM_MIN_ROWS:
        mm_tn(A, A, C, beta)
    else:
        syrk_tn(A, C, beta)


_controller_lock = threading.Lock()
_controller = None


def _blas_controller():
    global _controller
    with _controller_lock:
        if _controller is None:
            from threadpoolctl import ThreadpoolController

            _controller = ThreadpoolController().select(user_api="blas")
        return _controller


_kernel_libs = None


def _numpy_dirs():
    """Where NumPy keeps the libraries it bundles (``numpy/``, ``numpy.libs``
    beside it, ``numpy/.dylibs``), resolved."""
    import os

    root = os.path.realpath(os.path.dirname(np.__file__))
    return [root + os.sep, root + ".libs" + os.sep]


def kernel_blas_libraries():
    """The controllers of the BLAS libraries the kernels call: every loaded one
    but NumPy's own bundled copy.

    The kernels call only SciPy's BLAS (``scipy.linalg.cython_blas``). With
    the wheels from PyPI NumPy bundles a second OpenBLAS, which they never
    call: leaving it alone halves the cost of the limit (each library's
    setter costs about 3 us, and setting a pool back to two threads costs the
    next call another 3 to 6). Where NumPy and SciPy share one library (a
    system or conda BLAS), it is not inside NumPy's directory and is limited.
    When nothing but NumPy's copy is found, every library is limited.
    """
    global _kernel_libs
    if _kernel_libs is None:
        import os

        libs = list(_blas_controller().lib_controllers)
        dirs = _numpy_dirs()
        others = [lib for lib in libs
                  if not any(os.path.realpath(lib.filepath).startswith(d) for d in dirs)]
        _kernel_libs = others or libs
    return _kernel_libs


def _count_setter(lib):
    """A function that sets the thread count of ``lib`` (a threadpoolctl
    controller) for the whole process, from any thread.

    threadpoolctl 3.8 and later ignore ``set_num_threads`` on an OpenBLAS with
    its own (pthreads) pool from every Python thread but the first one that
    called it, "the controlling thread", so that threads do not fight over the
    pool's size. fusedgrad's limit is shared by its callers instead (the first
    entry sets it, the last exit restores it, on whichever threads), and
    through the controller a kernel called from a worker thread, after one
    was called from the main thread, ran with BLAS still multi-threaded
    inside its own threads: ``tsqr`` 3 to 6 times slower from a worker
    thread, 10 to 20 times from two at once (benchmarks/NOTES.md). For that
    OpenBLAS this calls the library's own setter; other libraries and an
    OpenBLAS on OpenMP (per-thread counts) keep the controller's.
    """
    if getattr(lib, "internal_api", None) == "openblas" and \
            getattr(lib, "threading_layer", None) != "openmp":
        for prefix, suffix in itertools.product(("", "scipy_"), ("", "64_", "_64")):
            name = f"{prefix}openblas_set_num_threads{suffix}"
            if hasattr(lib.dynlib, name):
                return ctypes.CFUNCTYPE(None, ctypes.c_int)((name, lib.dynlib))
    return lib.set_num_threads


_setters = {}


def _set_count(lib, n):
    setter = _setters.get(id(lib))
    if setter is None:
        setter = _setters[id(lib)] = _count_setter(lib)
    setter(n)


_depth_lock = threading.Lock()
_depth = 0
_limiter = None


@contextmanager
def single_threaded_blas():
    """Limit the kernels' BLAS to one thread while a parallel kernel runs.

    Each kernel thread calls BLAS on its own chunk; a multi-threaded BLAS
    inside them would oversubscribe the cores (or serialise the calls).

    Entries nest, also across Python threads: the outermost entry sets the
    limit and the last exit restores the original thread counts (on any
    thread: see :func:`_count_setter`); an inner entry costs a lock and a
    counter only. A training loop enters once around all its kernel calls, so
    the kernels' own entries are free. A count that someone else changed
    while the limit was held (it is no longer 1) is left as they set it.
    """
    global _depth, _limiter
    with _depth_lock:
        if _depth == 0:
            _limiter = _limit_to_one()
        _depth += 1
    try:
        yield
    finally:
        with _depth_lock:
            _depth -= 1
            if _depth == 0:
                saved, _limiter = _limiter, None
                for lib, n in saved:
                    if lib.get_num_threads() == 1:
                        _set_count(lib, n)


def _limit_to_one():
    """Set the kernels' BLAS to one thread; return ``(library, previous count)`` pairs.

    The library controllers' own getters and setters (one C call each):
    threadpoolctl's ``limit()`` does the same but first queries every
    library's full description, 8.9 us per entry and exit against 3.4."""
    saved = []
    for lib in kernel_blas_libraries():
        n = lib.get_num_threads()
        if n is not None:
            _set_count(lib, 1)
            saved.append((lib, n))
    return saved


def serial_call(kernel, arrays, nbytes=0):
    """Whether a call of ``kernel`` runs its parallel loops on the calling thread alone.

    True when the float inputs ``arrays`` (and ``nbytes`` more, of inputs
    that are no array of their own) hold fewer bytes than the kernel's
    entry of :data:`~fusedgrad.kernels._options.SERIAL_CALL_BYTES`: waking
    the other threads costs more than they save there. The compiled core is
    told so (its ``serial`` argument) and switches itself, with
    :func:`enter_threads` and :func:`leave_threads`. The work partition does
    not depend on the thread count, so the result is the same bit for bit.
    """
    return nbytes + sum(a.nbytes for a in arrays) < opt.SERIAL_CALL_BYTES[kernel]


_NO_LIMIT = nullcontext()


def kernel_blas(serial):
    """The BLAS threads of one kernel call: :func:`single_threaded_blas`, unless
    the call is ``serial`` or Numba runs one thread. BLAS is then called from
    one thread only and keeps its own threads (it uses them only for products
    large enough to gain)."""
    if serial or numba.get_num_threads() == 1:
        return _NO_LIMIT
    return single_threaded_blas()


@intrinsic
def _get_num_threads(typingctx):
    """``numba.get_num_threads()`` for compiled code that stays cacheable.

    Numba's own jittable ``get_num_threads`` and ``set_num_threads`` call the
    threading layer through ctypes pointers, which Numba refuses to cache
    ("dynamic globals"). These two call the same C functions (``int
    get_num_threads(void)``, ``void set_num_threads(int)``) by the symbol
    names Numba registers for them, as its own parallel loops do (by
    ``numba.np.ufunc.parallel._launch_threads``).
    """
    _launch_threads()  # registers the symbols; a cached parallel core relaunches on load

    def codegen(context, builder, signature, args):
        # declared as Numba's parallel loops declare it (returning intp), which
        # they may do in the same module
        fnty = ir.FunctionType(context.get_value_type(types.intp), [])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "get_num_threads")
        return builder.call(fn, [])

    return types.intp(), codegen


@intrinsic
def _set_num_threads(typingctx, n):
    """``numba.set_num_threads(n)`` for compiled code (see :func:`_get_num_threads`)."""
    _launch_threads()

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i32]),
                                            "set_num_threads")
        builder.call(fn, [builder.trunc(args[0], i32)])
        return context.get_dummy_value()

    return types.none(types.intp), codegen


if not opt.SERIAL:

    @njit(**INLINE)
    def enter_threads(serial):
        """In a compiled core, before its parallel loops: when ``serial``, run
        them on the calling thread alone. Returns the thread count to restore
        with :func:`leave_threads`.

        The thread count is the calling thread's own (Numba keeps it per
        thread). Switched here, in compiled code, it costs nothing
        measurable; from Python, the two switches and a context manager cost
        3-8 us per call, a third of a 512-row ``gram``. The core raises
        nothing between the two calls (no bounds checks, NumPy's error model)
        but an allocation failure, which on a serial (small) call would be of
        a few kilobytes.
        """
        previous = _get_num_threads()
        if serial:
            _set_num_threads(1)
        return previous

    @njit(**INLINE)
    def leave_threads(previous):
        """In a compiled core, after its parallel loops: undo :func:`enter_threads`."""
        _set_num_threads(previous)

else:
    # FUSEDGRAD_SERIAL=1 (a test build): the "parallel" loops are plain loops.
    # Nothing to switch, and no threading layer to call: a cached function
    # without parallel loops does not start it when it is loaded.

    @njit(**INLINE)
    def enter_threads(serial):
        return 0

    @njit(**INLINE)
    def leave_threads(previous):
        pass
