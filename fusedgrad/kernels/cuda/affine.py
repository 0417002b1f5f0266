"""An affine layer with the sigmoid fused after the matmul, and its backward pass, on the GPU."""

import functools

import numba
import numpy as np

from fusedgrad.kernels import _options as opt
from fusedgrad.kernels.cuda import _gemm, _train
from fusedgrad.kernels.cuda import _runtime as rt
from fusedgrad.kernels.cuda._runtime import cuda, jit

__all__ = ["affine_sigmoid", "affine_sigmoid_backward"]


@functools.lru_cache(maxsize=None)
def _column_kernel(dtype, n_cols, tpb, deriv):
    """Column sums over row ranges, optionally of ``dZ = dA * f'``.

    ``deriv``: None (sums of ``A``) or a derivative epilogue of
    :mod:`~fusedgrad.kernels.cuda._gemm` (``EPI_DSIGMOID``, ``EPI_DTANH``,
    ``EPI_DRELU``), which writes ``dZ`` from ``dA`` and the activation ``A``
    and sums it. A block covers ``CW`` columns and ``RW = tpb // CW`` row
    lanes; consecutive threads take consecutive columns of one row, so a warp
    reads contiguous memory even for a handful of columns. Each block handles
    one row range (``blockIdx.y``) and writes the sums of its rows to
    ``part[range, col]``, its lanes added in a fixed order.
    """
    dt = np.dtype(dtype).type
    nbt = numba.from_dtype(np.dtype(dtype))
    zero = dt(0.0)
    CW = min(n_cols, tpb)
    RW = tpb // CW
    with_dz = deriv is not None
    _d_deriv = _gemm._epilogue_fn(np.dtype(dtype), deriv if with_dz else _gemm.EPI_NONE)

    @jit()
    def kernel(dA, A, dZ, part, rows_per_range):
        red = cuda.shared.array(tpb, dtype=nbt)
        tid = cuda.threadIdx.x
        lane = tid // CW
        c = cuda.blockIdx.x * CW + (tid - lane * CW)
        N = A.shape[0]
        r0 = cuda.blockIdx.y * rows_per_range
        r1 = min(N, r0 + rows_per_range)
        s = zero
        if lane < RW and c < n_cols:
            r = r0 + lane
            while r < r1:
                if with_dz:
                    g = _d_deriv(dA[r, c], dA[r], A, r, c)
                    dZ[r, c] = g
                    s += g
                else:
                    s += A[r, c]
                r += RW
        red[tid] = s
        cuda.syncthreads()
        if lane == 0 and c < n_cols:
            for q in range(1, RW):
                s += red[q * CW + tid]
            part[cuda.blockIdx.y, c] = s

    return kernel, CW


def column_sums(A, out, *, dA=None, dZ=None, deriv=_gemm.EPI_DSIGMOID, accumulate=False,
                work=None):
    """``out (+)= A.sum(axis=0)``, or with ``dA``: ``dZ = dA * f'`` (``f'`` from
    the activation ``A`` by the epilogue ``deriv``, by default the sigmoid's
    ``A (1 - A)``) and ``out (+)= dZ.sum(axis=0)`` in the same pass. Device
    arrays; ``dZ`` may be ``dA``."""
    N, n_cols = A.shape
    dtype = np.dtype(A.dtype)
    tpb = opt.CUDA_TPB
    with_dz = dA is not None
    kernel, CW = _column_kernel(dtype, n_cols, tpb, int(deriv) if with_dz else None)
    col_tiles = -(-n_cols // CW)
    ranges = max(1, min(rt.grid_size(1 << 30) // col_tiles, -(-N // (tpb // CW))))
    rows_per_range = -(-N // ranges)
    ranges = -(-N // rows_per_range)
    part = rt.buffer(work, "column_sums.partials", (ranges, n_cols), dtype)
    if not with_dz:
        dA = dZ = A
    kernel[(col_tiles, ranges), tpb](dA, A, dZ, part, rows_per_range)
    rt.sum_partials(part, out, 1.0, accumulate)
    return out


def forward(X, W, b, out, activation, check_finite):
    """The body of :func:`affine_sigmoid` and of
    :func:`fusedgrad.kernels.cuda.affine_activation`: checks, then
    ``f(X W + b)`` with ``f``'s epilogue (``'softmax'``: the bias epilogue,
    then a row pass)."""
    inp = rt.prepare(
        [("X", X, ("n_samples", "n_in")), ("W", W, ("n_in", "n_out")), ("b", b, ("n_out",))],
        check_finite,
    )
    Xd, Wd, bd = inp.arrays
    N, n_out = Xd.shape[0], Wd.shape[1]
    target = None
    if out is not None:
        target = rt.output("out", out, (N, n_out), inp.dtype, [("X", X), ("W", W), ("b", b)])
    A = target if target is not None and rt.is_device(target) else rt.empty((N, n_out), inp.dtype)
    if activation == "softmax":
        _gemm.matmul(Xd, Wd, A, epi=_gemm.EPI_BIAS, bias=bd)
        _train.softmax_rows(A)
    else:
        _gemm.matmul(Xd, Wd, A, epi=_gemm.FORWARD_EPI[activation], bias=bd)
    if target is None:
        return inp.result(A)
    if not rt.is_device(target):
        A.copy_to_host(out)
    return out


def backward(X, A, dA, W, activation, check_finite, delta=None):
    """The body of :func:`affine_sigmoid_backward` and of
    :func:`fusedgrad.kernels.cuda.affine_activation_backward`; ``delta(Ad,
    dAd, dZ)`` writes ``dZ`` for the activations the column pass does not
    handle (softmax)."""
    specs = [("X", X, ("n_samples", "n_in")), ("A", A, ("n_samples", "n_out")),
             ("dA", dA, ("n_samples", "n_out"))]
    if W is not None:
        specs.append(("W", W, ("n_in", "n_out")))
    inp = rt.prepare(specs, check_finite)
    Xd, Ad, dAd = inp.arrays[:3]
    N, n_in = Xd.shape
    n_out = Ad.shape[1]
    db = rt.empty(n_out, inp.dtype)
    if activation == "identity":  # dZ = dA
        dZ = dAd
        column_sums(dZ, db)
    elif delta is not None:
        dZ = rt.device_array((N, n_out), inp.dtype)
        delta(Ad, dAd, dZ)
        column_sums(dZ, db)
    else:
        dZ = rt.device_array((N, n_out), inp.dtype)
        column_sums(Ad, db, dA=dAd, dZ=dZ, deriv=_gemm.BACKWARD_EPI[activation])
    dW = rt.empty((n_in, n_out), inp.dtype)
    _gemm.matmul(Xd, dZ, dW, ta=True)
    dX = None
    if W is not None:
        dX = rt.empty((N, n_in), inp.dtype)
        _gemm.matmul(dZ, inp.arrays[3], dX, tb=True)
    return inp.result(dW), inp.result(db), inp.result(dX)


def affine_sigmoid(X, W, b, out=None, *, check_finite=True):
    r"""An affine layer and the sigmoid, fused, on the GPU: :math:`A = \sigma(X W + b)`.

    Same semantics as :func:`fusedgrad.kernels.affine_sigmoid`. Where W is
    small (``_gemm.plan_thin``), one pass: W stays in shared memory while a
    block walks over tiles of rows of X, and bias and sigmoid are applied as
    each tile of A is formed. Otherwise the product is a tiled shared-memory
    matmul (or cuBLAS through CuPy, see ``CUDA_GEMM``); bias and sigmoid are
    applied as each tile is stored (or in one elementwise pass after cuBLAS).

    Parameters
    ----------
    X : device or host array, shape (n_samples, n_in), float32 or float64
    W : device or host array, shape (n_in, n_out)
    b : device or host array, shape (n_out,)
    out : device or host array, shape (n_samples, n_out), optional
        C-contiguous array of X's dtype to write into; it must not overlap the
        inputs.
    check_finite : bool, default True
        Reject NaN/inf in the inputs.

    Returns
    -------
    A : array, shape (n_samples, n_out)
        ``out`` when given; else a device array, or a NumPy array when all
        inputs were host arrays.
    """
    return forward(X, W, b, out, "logistic", check_finite)


def affine_sigmoid_backward(X, A, dA, W=None, *, check_finite=True):
    r"""Backward pass of :func:`affine_sigmoid` on the GPU.

    .. math::
        dZ = dA \odot A (1 - A), \quad dW = X^T dZ, \quad
        db = \textstyle\sum_{\text{rows}} dZ, \quad dX = dZ\, W^T

    ``dZ`` and the per-block column sums of ``db`` come from one elementwise
    pass; ``dW`` is a product summed over row ranges whose partial tiles are
    added in a fixed order, ``dX`` a tiled product (or cuBLAS).

    Parameters
    ----------
    X : device or host array, shape (n_samples, n_in), float32 or float64
    A : device or host array, shape (n_samples, n_out)
        The layer's output ``sigmoid(X W + b)``.
    dA : device or host array, shape (n_samples, n_out)
    W : device or host array, shape (n_in, n_out), optional
        Needed only for ``dX``.
    check_finite : bool, default True

    Returns
    -------
    dW : array, shape (n_in, n_out)
    db : array, shape (n_out,)
    dX : array, shape (n_samples, n_in), or None when ``W`` is None
    """
    return backward(X, A, dA, W, "logistic", check_finite)
