"""Tall-skinny QR (TSQR) of ``[1, X - shift, y - shift_y]``: the accurate least-squares path.

The rows are cut into the fixed chunks and groups of the other kernels
(:mod:`fusedgrad.kernels._partition`). Each group keeps the ``R`` factor of
the rows it has seen; for every chunk it stacks that ``R`` on the chunk's
rows, in a column-major float64 scratch block, and refactors (LAPACK
``dgeqrf``, single-threaded). The groups' ``R`` factors are then
stacked in group order and reduced by one more QR. Neither ``Q`` nor a copy
of ``X`` is ever formed; LAPACK runs single-threaded inside each group.

LAPACK is reached through SciPy (``scipy.linalg.cython_lapack``) under a fixed
symbol name, as the BLAS helpers of :mod:`fusedgrad.kernels._blas` are, so the
compiled kernel stays cacheable.
"""

import ctypes

import numpy as np
import scipy.linalg
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic
from scipy.linalg import cython_lapack

from fusedgrad import _validate
from fusedgrad.kernels import _options as opt
from fusedgrad.kernels._blas import single_threaded_blas
from fusedgrad.kernels._partition import chunk_range, plan

__all__ = ["tsqr"]


def _capsule_address(name):
    capsule = cython_lapack.__pyx_capi__[name]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype = ctypes.c_char_p
    get_name.argtypes = [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return get_pointer(capsule, get_name(capsule))


_DGEQRF = "fusedgrad_cython_lapack_dgeqrf"
llvm_binding.add_symbol(_DGEQRF, _capsule_address("dgeqrf"))


@intrinsic
def _dgeqrf(typingctx, m, n, a, lda, tau, work, lwork):
    """Column-major QR factorisation ``a = Q R`` of the ``m x n`` matrix ``a`` (Fortran dgeqrf).

    Returns LAPACK's ``info``.
    """
    if a.dtype != types.float64 or tau.dtype != types.float64 or work.dtype != types.float64:
        raise TypeError("_dgeqrf takes float64 arrays")
    sig = types.int32(m, n, a, lda, tau, work, lwork)

    def codegen(context, builder, signature, args):
        m_, n_, a_, lda_, tau_, work_, lwork_ = args
        i32 = ir.IntType(32)
        f64p = ir.DoubleType().as_pointer()
        ref = cgutils.alloca_once_value
        ints = [ref(builder, context.cast(builder, v, t, types.int32))
                for v, t in ((m_, m), (n_, n), (lda_, lda), (lwork_, lwork))]
        info = cgutils.alloca_once_value(builder, ir.Constant(i32, 0))

        def data(ty, val):
            arr = context.make_array(ty)(context, builder, val)
            return builder.bitcast(arr.data, f64p)

        fnty = ir.FunctionType(ir.VoidType(), [i32.as_pointer(), i32.as_pointer(), f64p,
                                               i32.as_pointer(), f64p, f64p, i32.as_pointer(),
                                               i32.as_pointer()])
        fn = cgutils.get_or_insert_function(builder.module, fnty, _DGEQRF)
        builder.call(fn, [ints[0], ints[1], data(a, a_), ints[2], data(tau, tau_),
                          data(work, work_), ints[3], info])
        return builder.load(info)

    return sig, codegen


#: Workspace of dgeqrf, in multiples of the number of columns (LAPACK's block size).
_WORK_PER_COLUMN = 64

#: Chunks hold at least this many rows per column of R, so that stacking R
#: on each chunk adds little work.
_ROWS_PER_COLUMN = 4


@njit(**opt.PARALLEL)
def _tsqr(X, y, sw, weighted, shift, intercept, chunk, groups, Rs):
    """Jitted core: ``Rs[g]`` (upper triangular, ``(P, P)``) is the R factor of the rows of
    group ``g`` of ``[1, X - shift[:d], y - shift[d]]`` (the ones column only if
    ``intercept``), ``P = d + 1 + intercept``; with ``weighted``, of those rows each
    times the square root of its weight ``sw``. Returns the first nonzero LAPACK info, or 0.
    """
    N, d = X.shape
    off = 1 if intercept else 0
    P = d + 1 + off
    n_chunks = (N + chunk - 1) // chunk
    infos = np.zeros(groups, np.int32)
    cap = P + chunk
    for g in prange(groups):
        first, stop = chunk_range(g, groups, n_chunks)
        # Column-major (P + chunk, P) block A, stored as the row-major (P, P + chunk)
        # array T = A^T: the running R in A's top P rows, the chunk's rows below.
        # Householder vectors then run along T's contiguous rows.
        T = np.zeros((P, cap), np.float64)
        tau = np.empty(P, np.float64)
        work = np.empty(P * _WORK_PER_COLUMN, np.float64)
        # the rows' factors: the square roots of their weights, or ones
        root = np.ones(chunk, np.float64)
        top = 0
        for c in range(first, stop):
            r0 = c * chunk
            r1 = min(N, r0 + chunk)
            m = r1 - r0
            if weighted:
                for i in range(m):
                    root[i] = np.sqrt(np.float64(sw[r0 + i]))
            if intercept:
                for i in range(m):
                    T[0, top + i] = root[i]
            for j in range(d):
                s = shift[j]
                col = T[off + j]
                for i in range(m):
                    col[top + i] = (X[r0 + i, j] - s) * root[i]
            col = T[off + d]
            s = shift[d]
            for i in range(m):
                col[top + i] = (y[r0 + i] - s) * root[i]
            rows = top + m
            info = _dgeqrf(rows, P, T, cap, tau, work, work.shape[0])
            if info != 0 and infos[g] == 0:
                infos[g] = info
            # Keep R (A's upper triangle, rows < min(rows, P)); clear the reflectors
            # stored below it in the top P rows, and rows of R that do not exist yet.
            k = min(rows, P)
            for j in range(P):
                for i in range(j + 1, P):
                    T[j, i] = 0.0
                if j >= k:
                    for i in range(k, P):
                        T[j, i] = 0.0
            top = P
        for i in range(P):
            for j in range(P):
                Rs[g, i, j] = T[j, i]
    for g in range(groups):
        if infos[g] != 0:
            return infos[g]
    return 0


def tsqr(X, y, shift=None, *, intercept=True, sample_weight=None, check_finite=True):
    r"""R factor of ``[1, X - shift[:d], y - shift[d]]`` by a tall-skinny QR in one pass.

    .. math:: [\mathbf 1, X - \mathbf 1 s_x^T, y - s_y] = Q R

    with ``Q`` orthonormal (never formed) and ``R`` upper triangular,
    ``(P, P)``, ``P = n_features + 1 + intercept``. Then
    ``R[k:k+d, k:k+d] w = R[k:k+d, -1]`` (``k = intercept``) is the
    least-squares solution (centred when ``intercept``), ``abs(R[-1, -1])``
    the norm of its residual, and with ``intercept`` the shifted column
    means are ``R[0, 1:] / R[0, 0]``. The ``shift`` (e.g. the column means)
    changes nothing in exact arithmetic; a shift near the means keeps the
    ones column far from collinear with the others.

    With ``sample_weight`` :math:`w`, every row (the ones column included)
    is multiplied by :math:`\sqrt{w_i}`: the R factor of the weighted
    least-squares problem. The shifted column means from ``R[0]`` are then
    the weighted means.

    The computation is in float64 whatever X's dtype (float32 rows are
    converted one cache-sized chunk at a time): this is the accurate path.
    Rows are factored in the kernels' fixed chunks and groups, so the
    result does not depend on the thread count.

    Parameters
    ----------
    X : array_like, shape (n_samples, n_features), float32 or float64
    y : array_like, shape (n_samples,), X's dtype
    shift : array_like, shape (n_features + 1,), optional
        Subtracted from the columns of ``[X, y]``; zeros when omitted.
    intercept : bool, default True
        Prepend a column of ones.
    sample_weight : array_like, shape (n_samples,), X's dtype, optional
        Non-negative weights of the rows, with a positive sum.
    check_finite : bool, default True

    Returns
    -------
    R : ndarray, shape (P, P), float64
        Upper triangular; its rows are defined up to sign.
    """
    X, y = _validate.float_arrays(
        [("X", X, ("n_samples", "n_features")), ("y", y, ("n_samples",))], check_finite
    )
    sw, _ = _validate.row_weights(sample_weight, X.dtype, X.shape[0], check_finite,
                                  want_sum=False)
    N, d = X.shape
    if shift is None:
        shift = np.zeros(d + 1)
    else:
        shift = np.ascontiguousarray(shift, dtype=np.float64)
        if shift.shape != (d + 1,):
            raise ValueError(f"shift must have shape ({d + 1},), got {shift.shape}")
        if check_finite and not np.all(np.isfinite(shift)):
            raise ValueError("shift contains NaN or infinity")
    P = d + 1 + int(bool(intercept))
    # A chunk of at least a few times P rows, so the stacked R (P rows) is a
    # small part of each factorisation; at most what keeps the block in L2.
    chunk, groups = plan(N, P * 8, P * P * 8)
    chunk = max(chunk, _ROWS_PER_COLUMN * P)
    groups = max(1, min(groups, -(-N // chunk)))
    Rs = np.empty((groups, P, P))
    with single_threaded_blas():
        info = _tsqr(X, y, sw, sw.shape[0] > 0, shift, bool(intercept), chunk, groups, Rs)
    if info != 0:
        raise RuntimeError(f"LAPACK dgeqrf failed with info={info}")
    if groups == 1:
        return Rs[0]
    R = scipy.linalg.qr(Rs.reshape(groups * P, P), mode="r", overwrite_a=True,
                        check_finite=False)[0]
    return np.triu(R[:P])
