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
    rt.launch(kernel, (col_tiles, ranges), tpb, dA, A, dZ, part, rows_per_range)
    rt.sum_partials(part, out, 1.0, accumulate)
    return out


# ---------------------------------------------------------------------------
# Thin layers' backward pass in one kernel
# ---------------------------------------------------------------------------


def plan_backward(n_in, n_out, itemsize, with_dx):
    """The layout of :func:`_backward_kernel` for a layer of ``n_in -> n_out``
    units, or None where it does not apply (the thin kernels do not, see
    ``_gemm.plan_thin_sum`` and ``_gemm.plan_thin``, or the tiles do not fit
    in shared memory).

    Returns
    -------
    dict or None
        ``sums``: the layout of the sums ``[X | 1]^T dZ`` (as
        ``plan_thin_sum``); ``dx``: that of ``dZ W^T`` (as ``plan_thin``), or
        None without ``dX``; ``R``: rows per tile.
    """
    sums = _gemm.plan_thin_sum(n_in + 1, n_out, itemsize)
    dx = _gemm.plan_thin(n_out, n_in, itemsize) if with_dx else None
    if sums is None or (with_dx and dx is None):
        return None
    R = dx["R"] if with_dx else sums["R"]
    if _backward_shared_bytes(n_in, n_out, sums, dx, R, itemsize) > opt.CUDA_SHARED_BYTES:
        return None
    return dict(sums=sums, dx=dx, R=R)


def _backward_strides(n_in, n_out, sums, dx):
    """Row strides of the X tile (with a column of ones after X; the dX tile
    later), the dZ tile and ``W^T``: odd, and wide enough for every thread's
    columns (see ``_gemm._thin_sum_strides``)."""
    SX, SZ = _gemm._thin_sum_strides(n_in + 1, n_out, sums["NI"], sums["NJ"], sums["MI"],
                                     sums["MJ"])
    BS = (max(n_in, dx["NJ"] * dx["MJ"]) | 1) if dx is not None else 1
    return SX, SZ, BS


def _backward_shared_bytes(n_in, n_out, sums, dx, R, itemsize):
    SX, SZ, BS = _backward_strides(n_in, n_out, sums, dx)
    return itemsize * (R * (SX + SZ) + n_out * BS + sums["T"])


@functools.lru_cache(maxsize=None)
def _backward_kernel(dtype, n_in, n_out, deriv, with_dx, R, sums, dx):
    """The backward pass of a thin affine layer, one pass over the rows.

    For each tile of ``R`` rows a block copies X in (beside a column of
    ones), forms ``dZ = dA * f'(A)`` from dA and the activation A as it copies
    them in (the derivative epilogue ``deriv``), adds the tile's
    ``[X | 1]^T dZ`` to its sums in registers (``_gemm._thin_sum_kernel``'s
    loop: dW, and db as the row of ones), then computes the tile of
    ``dX = dZ W^T`` with ``W^T`` in shared memory (``_gemm._thin_kernel``'s
    loop), puts it where the X tile was and stores it as one contiguous run.
    dZ is never written to global memory. At the end the row lanes' sums are
    added in lane order and written to ``part[block]``.

    ``sums`` and ``dx`` are the layouts of :func:`plan_backward`, as tuples of
    their items (hashable, for the cache).
    """
    sums, dx = dict(sums), (dict(dx) if dx is not None else None)
    dt = np.dtype(dtype).type
    nbt = numba.from_dtype(np.dtype(dtype))
    zero, one = dt(0.0), dt(1.0)
    u = np.uint32
    T, NL, NI, NJ, MI, MJ = (sums[k] for k in ("T", "NL", "NI", "NJ", "MI", "MJ"))
    FI, FJ, FR, FM = (dx[k] for k in ("NI", "NJ", "MR", "MJ")) if with_dx else (1, 1, 1, 1)
    Ka = n_in + 1
    G = NI * NJ
    SX, SZ, BS = _backward_strides(n_in, n_out, sums, dx)
    XSN, ZSN, BSN = R * SX, R * SZ, (n_out * BS if with_dx else 1)
    NACC, NACC2 = MI * MJ, FR * FM
    uin, uout, uSX, uSZ, uT = u(n_in), u(n_out), u(SX), u(SZ), u(T)
    _d_deriv = _gemm._epilogue_fn(np.dtype(dtype), deriv)
    _d_add_rows, _d_store_sums = _gemm._row_sum_fns(np.dtype(dtype), Ka, n_out, T, NL, NI, NJ,
                                                    MI, MJ, SX, SZ)
    _d_tile_product = _gemm._tile_product_fn(np.dtype(dtype), n_out, FI, FJ, FR, FM, SZ, BS)

    @jit()
    def kernel(Xf, A1, dAf, W, dXf, part):
        # Xf, dAf, dXf: X (N, n_in), dA (N, n_out), dX (N, n_in) viewed flat;
        # A1: A viewed as one row (the derivative epilogue reads A1[0, n])
        Xs = cuda.shared.array(XSN, dtype=nbt)  # [X | 1] row r at r * SX, then dX
        Zs = cuda.shared.array(ZSN, dtype=nbt)  # dZ row r at r * SZ
        Ws = cuda.shared.array(BSN, dtype=nbt)  # W^T row k at k * BS
        buf = cuda.shared.array(T, dtype=nbt)
        acc = cuda.local.array(NACC, dtype=nbt)
        av = cuda.local.array(MI, dtype=nbt)
        bv = cuda.local.array(MJ, dtype=nbt)
        acc2 = cuda.local.array(NACC2, dtype=nbt)
        wv = cuda.local.array(FM, dtype=nbt)
        tid = cuda.threadIdx.x
        lane = tid // G
        ti = (tid - lane * G) // NJ
        tj = tid - lane * G - ti * NJ
        fi = tid // FJ
        fj = tid - fi * FJ
        N = Xf.shape[0] // n_in
        for q in range(NACC):
            acc[q] = zero
        # column n_in of the X tile is all ones (its sums are db); the other
        # padding columns enter only sums that are never stored
        e = tid
        while e < XSN:
            Xs[e] = one if e % SX == n_in else zero
            e += T
        e = tid
        while e < ZSN:
            Zs[e] = zero
            e += T
        if with_dx:
            e = tid
            while e < BSN:
                k = e // BS
                i = e - k * BS
                Ws[e] = W[i, k] if i < n_in else zero
                e += T
        cuda.syncthreads()
        n_tiles = (N + R - 1) // R
        t = cuda.blockIdx.x
        while t < n_tiles:
            r0 = t * R
            rows = min(R, N - r0)
            e = u(tid)
            e_end = u(rows) * uin
            g0 = np.uint64(r0) * uin
            while e < e_end:
                rr = e // uin
                Xs[rr * uSX + (e - rr * uin)] = Xf[g0 + e]
                e += uT
            e = u(tid)
            e_end = u(rows) * uout
            g0 = np.uint64(r0) * uout
            while e < e_end:
                rr = e // uout
                Zs[rr * uSZ + (e - rr * uout)] = _d_deriv(dAf[g0 + e], dAf, A1, 0, g0 + e)
                e += uT
            cuda.syncthreads()
            _d_add_rows(Xs, Zs, acc, av, bv, lane, ti, tj, rows)  # [X | 1]^T dZ
            cuda.syncthreads()
            if with_dx:
                # dX = dZ W^T into the X tile's place, then stored contiguously
                _d_tile_product(Zs, Ws, acc2, wv, fi, fj)
                for rr in range(FR):
                    r = fi + FI * rr
                    if r < rows:
                        for jj in range(FM):
                            i = fj + FJ * jj
                            if i < n_in:
                                Xs[u(r) * uSX + u(i)] = acc2[rr * FM + jj]
                cuda.syncthreads()
                e = u(tid)
                e_end = u(rows) * uin
                g0 = np.uint64(r0) * uin
                while e < e_end:
                    rr = e // uin
                    dXf[g0 + e] = Xs[rr * uSX + (e - rr * uin)]
                    e += uT
                cuda.syncthreads()
            t += cuda.gridDim.x
        # part[b] = [dW | db] of this block
        _d_store_sums(acc, buf, part, cuda.blockIdx.x, tid, lane, ti, tj)

    return kernel


def _backward_fused(Xd, Ad, dAd, Wd, deriv, plan, dtype):
    """``dW, db, dX`` (dX None without ``Wd``) by :func:`_backward_kernel`."""
    N, n_in = Xd.shape
    n_out = Ad.shape[1]
    with_dx = Wd is not None
    sums, dx = plan["sums"], plan["dx"]
    kernel = _backward_kernel(dtype, n_in, n_out, int(deriv), with_dx, plan["R"],
                              tuple(sorted(sums.items())),
                              tuple(sorted(dx.items())) if with_dx else None)
    dX = rt.empty((N, n_in), dtype) if with_dx else None
    args = (Xd.reshape(N * n_in), Ad.reshape(1, N * n_out), dAd.reshape(N * n_out),
            Wd if with_dx else _gemm._dummy(dtype, 2),
            dX.reshape(N * n_in) if with_dx else _gemm._dummy(dtype, 1))
    blocks = rt.resident_grid(kernel, args + (rt.array_type(dtype, 2),), sums["T"],
                              -(-N // plan["R"]))
    part = rt.device_array((blocks, (n_in + 1) * n_out), dtype)
    rt.launch(kernel, blocks, sums["T"], *args, part)
    flat = rt.empty((n_in + 1) * n_out, dtype)
    rt.sum_partials(part, flat)
    return flat[: n_in * n_out].reshape(n_in, n_out), flat[n_in * n_out:], dX


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
    if delta is None and opt.CUDA_THIN_BACKWARD:
        plan = plan_backward(n_in, n_out, inp.dtype.itemsize, W is not None)
        if plan is not None:
            dW, db, dX = _backward_fused(Xd, Ad, dAd, inp.arrays[3] if W is not None else None,
                                         _gemm.BACKWARD_EPI[activation], plan, inp.dtype)
            return inp.result(dW), inp.result(db), inp.result(dX)
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

    For a thin layer (:func:`plan_backward`) one kernel does it all in one
    pass over the rows, ``dZ`` never leaving shared memory. Otherwise ``dZ``
    and the per-block column sums of ``db`` come from one elementwise pass;
    ``dW`` is a product summed over row ranges whose partial tiles are added
    in a fixed order, ``dX`` a tiled product (or cuBLAS).

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
