"""The upper triangle of ``A.T @ A`` by register tiles, without BLAS.

OpenBLAS has no fast symmetric product for the Gram matrix of a tall block:
``syrk`` runs at the speed of a general product with half the multiply-adds
skipped in large blocks, and the small-matrix kernels that the other products
use do a full square product. This module computes the upper triangle
directly, the way a GEMM library's inner kernel does:

1. the block's rows are copied once into *panels* of ``2 * lanes`` columns
   (``lanes`` values to a vector register), each panel contiguous, the last
   one padded with zeros;
2. each *tile* of ``R`` rows and ``2 * lanes`` columns of the triangle is
   accumulated in ``2 * R`` vector registers over a run of the block's rows,
   with two vector loads from the column panel, ``R`` broadcast loads from
   the row panel and ``2 * R`` fused multiply-adds per row; the loop is
   emitted as LLVM IR (:func:`_tile_64`, :func:`_tile_32`), so its registers
   and instructions do not depend on the auto-vectoriser;
3. a tile is added into ``C`` with vector loads and stores (or, at the
   matrix's right and bottom edges, through a small scratch tile).

Tiles start on multiples of ``R`` rows and ``2 * lanes`` columns, so only the
diagonal tiles do work below the diagonal, and a diagonal tile whose rows
start in the second half of its panel is computed one vector wide: at 128
float64 columns 17/32 of the full product's multiply-adds (the BLAS block rows
did 5/8; the triangle itself is 129/256). Runs of at most :data:`KC` rows keep
a tile's two panels in the L1 cache.

There are no bounds checks in the tile loops: the callers size ``P`` with
:func:`packed_size` and pass offsets inside it.

Two tile shapes, by the width of the vector registers the kernels are compiled
for (:data:`fusedgrad.kernels._options.WIDE_VECTORS`): 64-byte vectors (AVX-512,
32 registers) with 8-row tiles (16 accumulators), 32-byte vectors (AVX2, 16
registers) with 4-row tiles (8 accumulators). Both compile everywhere; the
caller picks one with ``wide``.
"""

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from fusedgrad.kernels._options import INLINE

__all__ = ["gram_packed", "pack", "packed_gram", "packed_gemv", "packed_size", "panel_shape",
           "item_bytes", "KC"]

#: Rows of the block per run of the tile loop: a tile's column panel (KC rows
#: of 128 bytes) and row panel stay in a 48 KB L1 cache. Measured, float64,
#: 1e6 x 128, 2 threads: 128 rows 147-152 ms, 256 rows 150-159 ms.
KC = 128


def _make_tile(rows, vector_bytes, vectors=2):
    """An intrinsic accumulating one tile of ``rows`` x ``vectors * lanes`` into ``C``."""

    @intrinsic
    def tile(typingctx, P, a_off, b_off, k, ld, C, c_off, ldc):
        # C[c_off + r * ldc + c] += sum_n P[a_off + n * ld + r] * P[b_off + n * ld + c]
        # for r < rows, c < vectors * lanes: the tile's rows at a_off (+ r), its
        # columns at b_off, both with rows of ld values.
        dtype = P.dtype
        size = dtype.bitwidth // 8
        lanes = vector_bytes // size
        sig = types.void(P, a_off, b_off, k, ld, C, c_off, ldc)

        def codegen(context, builder, signature, args):
            i64 = ir.IntType(64)
            i32 = ir.IntType(32)

            def const(v):
                return ir.Constant(i64, v)

            fty = context.get_value_type(dtype)
            vty = ir.VectorType(fty, lanes)
            vptr = vty.as_pointer()
            p_data = context.make_array(signature.args[0])(context, builder, args[0]).data
            c_data = context.make_array(signature.args[5])(context, builder, args[5]).data
            a_off_, b_off_, k_, ld_, c_off_, ldc_ = [
                context.cast(builder, args[i], signature.args[i], types.int64)
                for i in (1, 2, 3, 4, 6, 7)]
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vty, [vty] * 3),
                f"llvm.fma.v{lanes}f{8 * size}")
            zero = ir.Constant(vty, [ir.Constant(fty, 0.0)] * lanes)
            undef = ir.Constant(vty, ir.Undefined)
            splat = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)

            entry = builder.basic_block
            head = builder.append_basic_block("tile.head")
            body = builder.append_basic_block("tile.body")
            done = builder.append_basic_block("tile.done")
            builder.branch(head)

            builder.position_at_end(head)
            n = builder.phi(i64)
            acc = [builder.phi(vty) for _ in range(vectors * rows)]
            n.add_incoming(const(0), entry)
            for a in acc:
                a.add_incoming(zero, entry)
            builder.cbranch(builder.icmp_signed("<", n, k_), body, done)

            builder.position_at_end(body)
            row = builder.mul(n, ld_)
            col = builder.gep(p_data, [builder.add(b_off_, row)])
            vec = [builder.load(builder.bitcast(builder.gep(col, [const(h * lanes)]), vptr),
                                align=size) for h in range(vectors)]
            rp = builder.gep(p_data, [builder.add(a_off_, row)])
            new = []
            for r in range(rows):
                s = builder.load(builder.gep(rp, [const(r)]), align=size)
                sv = builder.shuffle_vector(builder.insert_element(undef, s, ir.Constant(i32, 0)),
                                            undef, splat)
                for h in range(vectors):
                    new.append(builder.call(fma, [sv, vec[h], acc[vectors * r + h]]))
            last = builder.basic_block
            n.add_incoming(builder.add(n, const(1)), last)
            for a, v in zip(acc, new):
                a.add_incoming(v, last)
            builder.branch(head)

            builder.position_at_end(done)
            for r in range(rows):
                base = builder.add(c_off_, builder.mul(ldc_, const(r)))
                for h in range(vectors):
                    ptr = builder.bitcast(builder.gep(c_data, [builder.add(base, const(h * lanes))]),
                                          vptr)
                    builder.store(builder.fadd(builder.load(ptr, align=size), acc[vectors * r + h]),
                                  ptr, align=size)
            return context.get_dummy_value()

        return sig, codegen

    return tile


def _make_column(vector_bytes):
    """An intrinsic adding one column panel's product with a vector into ``v``."""

    @intrinsic
    def column(typingctx, P, b_off, k, z, z_off, v, v_off):
        # v[v_off + c] += sum_n z[z_off + n] * P[b_off + n * pw + c], c < pw = 2 * lanes
        dtype = P.dtype
        size = dtype.bitwidth // 8
        lanes = vector_bytes // size
        pw = 2 * lanes
        sig = types.void(P, b_off, k, z, z_off, v, v_off)

        def codegen(context, builder, signature, args):
            i64 = ir.IntType(64)
            i32 = ir.IntType(32)

            def const(x):
                return ir.Constant(i64, x)

            fty = context.get_value_type(dtype)
            vty = ir.VectorType(fty, lanes)
            vptr = vty.as_pointer()
            p_data = context.make_array(signature.args[0])(context, builder, args[0]).data
            z_data = context.make_array(signature.args[3])(context, builder, args[3]).data
            v_data = context.make_array(signature.args[5])(context, builder, args[5]).data
            b_off_, k_, z_off_, v_off_ = [
                context.cast(builder, args[i], signature.args[i], types.int64)
                for i in (1, 2, 4, 6)]
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vty, [vty] * 3),
                f"llvm.fma.v{lanes}f{8 * size}")
            zero = ir.Constant(vty, [ir.Constant(fty, 0.0)] * lanes)
            undef = ir.Constant(vty, ir.Undefined)
            splat = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)

            entry = builder.basic_block
            head = builder.append_basic_block("column.head")
            body = builder.append_basic_block("column.body")
            done = builder.append_basic_block("column.done")
            builder.branch(head)
            builder.position_at_end(head)
            n = builder.phi(i64)
            acc = [builder.phi(vty) for _ in range(2)]
            n.add_incoming(const(0), entry)
            for a in acc:
                a.add_incoming(zero, entry)
            builder.cbranch(builder.icmp_signed("<", n, k_), body, done)
            builder.position_at_end(body)
            col = builder.gep(p_data, [builder.add(b_off_, builder.mul(n, const(pw)))])
            s = builder.load(builder.gep(z_data, [builder.add(z_off_, n)]), align=size)
            sv = builder.shuffle_vector(builder.insert_element(undef, s, ir.Constant(i32, 0)),
                                        undef, splat)
            new = []
            for h in range(2):
                vec = builder.load(builder.bitcast(builder.gep(col, [const(h * lanes)]), vptr),
                                   align=size)
                new.append(builder.call(fma, [sv, vec, acc[h]]))
            last = builder.basic_block
            n.add_incoming(builder.add(n, const(1)), last)
            for a, x in zip(acc, new):
                a.add_incoming(x, last)
            builder.branch(head)
            builder.position_at_end(done)
            for h in range(2):
                ptr = builder.bitcast(builder.gep(v_data, [builder.add(v_off_, const(h * lanes))]),
                                      vptr)
                builder.store(builder.fadd(builder.load(ptr, align=size), acc[h]), ptr, align=size)
            return context.get_dummy_value()

        return sig, codegen

    return column


#: 8-row tiles of 64-byte vectors (AVX-512: 16 accumulators of 32 registers).
_tile_64 = _make_tile(8, 64)
#: 4-row tiles of 32-byte vectors (AVX2: 8 accumulators of 16 registers).
_tile_32 = _make_tile(4, 32)
#: The same tiles one vector wide: the right half of a diagonal tile whose
#: rows start in the second half of their panel (its left half lies below the
#: diagonal).
_half_64 = _make_tile(8, 64, 1)
_half_32 = _make_tile(4, 32, 1)
_column_64 = _make_column(64)
_column_32 = _make_column(32)


def item_bytes(a):
    """The item size of array ``a`` as a compile-time constant (``a.itemsize``
    is read from the array at run time, which leaves the panel loops'
    trip counts unknown to LLVM)."""
    return a.itemsize


@overload(item_bytes, inline="always")
def _item_bytes(a):
    size = a.dtype.bitwidth // 8

    def impl(a):
        return size

    return impl


@njit(**INLINE)
def panel_shape(p, itemsize, wide):
    """(tile rows, panel width, panels) for ``p`` columns."""
    rows = 8 if wide else 4
    pw = (128 if wide else 64) // itemsize
    return rows, pw, (p + pw - 1) // pw


@njit(**INLINE)
def packed_size(m, p, itemsize, wide):
    """Elements of the scratch buffer of :func:`gram_packed` for ``m`` rows of ``p`` columns:
    the panels, a scratch tile and a padded column."""
    rows, pw, panels = panel_shape(p, itemsize, wide)
    return panels * pw * m + rows * pw + panels * pw


@njit(**INLINE)
def pack(A, p, P, wide):
    """Copy the first ``p`` columns of A (m, >= p) into the panels of ``P``:
    ``P[(q * m + n) * pw + c] = A[n, q * pw + c]``, zeros beyond column p."""
    m = A.shape[0]
    rows, pw, panels = panel_shape(p, item_bytes(A), wide)
    packed = P[:panels * m * pw].reshape((panels, m, pw))
    for n in range(m):
        src = A[n]
        for q in range(panels - 1):
            dst = packed[q, n]
            for c in range(pw):
                dst[c] = src[q * pw + c]
        c0 = (panels - 1) * pw
        dst = packed[panels - 1, n]
        for c in range(p - c0):
            dst[c] = src[c0 + c]
        for c in range(p - c0, pw):
            dst[c] = 0


@njit(**INLINE)
def packed_gram(P, m, p, C, wide):
    """Add the upper triangle of ``A.T @ A`` into C (p, p), A (m, p) packed in P by :func:`pack`.

    Parts of C's lower triangle get partial sums.
    """
    rows, pw, panels = panel_shape(p, item_bytes(P), wide)
    panel = m * pw
    scratch = P[panels * panel:panels * panel + rows * pw]
    edge = scratch.reshape((rows, pw))
    flat = C.reshape(p * p)
    for k0 in range(0, m, KC):
        k = min(m, k0 + KC) - k0
        for i0 in range(0, p, rows):
            qi = i0 // pw
            a_off = qi * panel + k0 * pw + (i0 - qi * pw)
            for qj in range(qi, panels):
                j0 = qj * pw
                b_off = qj * panel + k0 * pw
                half = pw // 2
                if qj == qi and i0 - j0 >= half and i0 + rows <= p and j0 + pw <= p:
                    if wide:
                        _half_64(P, a_off, b_off + half, k, pw, flat, i0 * p + j0 + half, p)
                    else:
                        _half_32(P, a_off, b_off + half, k, pw, flat, i0 * p + j0 + half, p)
                elif i0 + rows <= p and j0 + pw <= p:
                    if wide:
                        _tile_64(P, a_off, b_off, k, pw, flat, i0 * p + j0, p)
                    else:
                        _tile_32(P, a_off, b_off, k, pw, flat, i0 * p + j0, p)
                else:
                    scratch[:] = 0
                    if wide:
                        _tile_64(P, a_off, b_off, k, pw, scratch, 0, pw)
                    else:
                        _tile_32(P, a_off, b_off, k, pw, scratch, 0, pw)
                    for r in range(min(rows, p - i0)):
                        dst = C[i0 + r]
                        src = edge[r]
                        for c in range(min(pw, p - j0)):
                            dst[j0 + c] += src[c]


@njit(**INLINE)
def packed_gemv(P, m, p, z, v, wide):
    """Add ``z @ A`` into v (p,), A (m, p) packed in P by :func:`pack`, z (m,) of A's dtype."""
    rows, pw, panels = panel_shape(p, item_bytes(P), wide)
    panel = m * pw
    col = P[panels * panel + rows * pw:panels * panel + rows * pw + panels * pw]
    col[:] = 0
    for q in range(panels):
        if wide:
            _column_64(P, q * panel, m, z, 0, col, q * pw)
        else:
            _column_32(P, q * panel, m, z, 0, col, q * pw)
    for j in range(p):
        v[j] += col[j]


@njit(**INLINE)
def gram_packed(A, C, beta, P, wide):
    """Row-major ``C = A.T @ A + beta * C``, valid on the upper triangle of C.

    A (m, p) C-contiguous, C (p, p) C-contiguous; the lower triangle of C is
    left with partial sums. ``P``: a 1-D scratch buffer of A's dtype with at
    least :func:`packed_size` elements. ``wide``: 64-byte vector tiles, else
    32-byte ones (see the module's docstring). ``beta`` = 0 ignores C's
    previous contents (NaN included).
    """
    m, p = A.shape
    if beta == 0:
        C[:, :] = 0
    elif beta != 1:
        for i in range(p):
            for j in range(p):
                C[i, j] *= beta
    if m == 0:
        return
    pack(A, p, P, wide)
    packed_gram(P, m, p, C, wide)
