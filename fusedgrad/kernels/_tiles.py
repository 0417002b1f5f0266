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

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from fusedgrad.kernels._options import INLINE, JIT

__all__ = ["pack", "pack_shifted", "packed_gram", "packed_gemv", "packed_size", "panel_shape",
           "item_bytes", "KC", "PREFETCH_MIN_ROW_BYTES"]

#: Rows of the block per run of the tile loop: a tile's column panel (KC rows
#: of 128 bytes) and row panel stay in a 48 KB L1 cache. Measured, float64,
#: 1e6 x 128, 2 threads: 128 rows 147-152 ms, 256 rows 150-159 ms.
KC = 128

#: The Gram kernels prefetch the next run of rows during the tiles of the
#: current one for rows of at least this many bytes. Measured, float64,
#: 128e6 elements, 2 threads, 7 alternating calls each (ms, without -> with):
#: 32 columns 78-80 -> 84-85, 64: 107-108 -> 113-114, 96: 116-130 -> 122-137,
#: 128: 144-165 -> 134-155, 192: 193-197 -> 174-186, 256: 242-267 -> 230-251,
#: 512: 454-510 -> 463-500.
PREFETCH_MIN_ROW_BYTES = 1024


class _Emitter:
    """LLVM IR for the vector loops below: typed pointers, vector loads,
    broadcasts, FMAs, and a counted loop carrying vector accumulators."""

    def __init__(self, context, builder, dtype, vector_bytes):
        self.context, self.builder = context, builder
        self.size = dtype.bitwidth // 8
        self.lanes = vector_bytes // self.size
        self.i64, self.i32 = ir.IntType(64), ir.IntType(32)
        fty = context.get_value_type(dtype)
        self.vty = ir.VectorType(fty, self.lanes)
        self.zero = ir.Constant(self.vty, [ir.Constant(fty, 0.0)] * self.lanes)
        self._fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(self.vty, [self.vty] * 3),
            f"llvm.fma.v{self.lanes}f{8 * self.size}")

    def const(self, value):
        return ir.Constant(self.i64, value)

    def data(self, array_type, value):
        """The data pointer of an array argument."""
        return self.context.make_array(array_type)(self.context, self.builder, value).data

    def int64(self, value, value_type):
        return self.context.cast(self.builder, value, value_type, types.int64)

    def at(self, ptr, offset):
        """``ptr + offset`` elements (offset: an i64 value or a Python int)."""
        if isinstance(offset, int):
            offset = self.const(offset)
        return self.builder.gep(ptr, [offset])

    def load_vector(self, ptr):
        return self.builder.load(self.builder.bitcast(ptr, self.vty.as_pointer()), align=self.size)

    def splat(self, value):
        """The scalar ``value`` in every lane."""
        b = self.builder
        undef = ir.Constant(self.vty, ir.Undefined)
        one = b.insert_element(undef, value, ir.Constant(self.i32, 0))
        return b.shuffle_vector(one, undef, ir.Constant(ir.VectorType(self.i32, self.lanes),
                                                        [0] * self.lanes))

    def broadcast(self, ptr):
        """The scalar at ``ptr`` in every lane."""
        return self.splat(self.builder.load(ptr, align=self.size))

    def fma(self, a, x, acc):
        return self.builder.call(self._fma, [a, x, acc])

    def add_into(self, ptr, vector):
        """``*ptr += vector`` (unaligned)."""
        b = self.builder
        vptr = b.bitcast(ptr, self.vty.as_pointer())
        b.store(b.fadd(b.load(vptr, align=self.size), vector), vptr, align=self.size)

    def loop(self, count, accumulators, step):
        """``acc = step(n, acc)`` for n in range(count), from ``accumulators``
        zero vectors; returns the final accumulators."""
        b = self.builder
        entry = b.basic_block
        head = b.append_basic_block("loop.head")
        body = b.append_basic_block("loop.body")
        done = b.append_basic_block("loop.done")
        b.branch(head)
        b.position_at_end(head)
        n = b.phi(self.i64)
        acc = [b.phi(self.vty) for _ in range(accumulators)]
        n.add_incoming(self.const(0), entry)
        for a in acc:
            a.add_incoming(self.zero, entry)
        b.cbranch(b.icmp_signed("<", n, count), body, done)
        b.position_at_end(body)
        new = step(n, acc)
        last = b.basic_block
        n.add_incoming(b.add(n, self.const(1)), last)
        for a, v in zip(acc, new):
            a.add_incoming(v, last)
        b.branch(head)
        b.position_at_end(done)
        return acc


def _make_tile(rows, vector_bytes, vectors=2):
    """An intrinsic accumulating one tile of ``rows`` x ``vectors * lanes`` into ``C``."""

    @intrinsic
    def tile(typingctx, P, a_off, b_off, k, ld, C, c_off, ldc):
        # C[c_off + r * ldc + c] += sum_n P[a_off + n * ld + r] * P[b_off + n * ld + c]
        # for r < rows, c < vectors * lanes: the tile's rows at a_off (+ r), its
        # columns at b_off, both with rows of ld values.
        sig = types.void(P, a_off, b_off, k, ld, C, c_off, ldc)

        def codegen(context, builder, signature, args):
            e = _Emitter(context, builder, P.dtype, vector_bytes)
            p_data = e.data(signature.args[0], args[0])
            c_data = e.data(signature.args[5], args[5])
            a_off_, b_off_, k_, ld_, c_off_, ldc_ = [
                e.int64(args[i], signature.args[i]) for i in (1, 2, 3, 4, 6, 7)]

            def step(n, acc):
                row = builder.mul(n, ld_)
                col = e.at(p_data, builder.add(b_off_, row))
                vec = [e.load_vector(e.at(col, h * e.lanes)) for h in range(vectors)]
                first = e.at(p_data, builder.add(a_off_, row))
                new = []
                for r in range(rows):
                    sv = e.broadcast(e.at(first, r))
                    new.extend(e.fma(sv, vec[h], acc[vectors * r + h]) for h in range(vectors))
                return new

            acc = e.loop(k_, vectors * rows, step)
            for r in range(rows):
                base = e.at(c_data, builder.add(c_off_, builder.mul(ldc_, e.const(r))))
                for h in range(vectors):
                    e.add_into(e.at(base, h * e.lanes), acc[vectors * r + h])
            return context.get_dummy_value()

        return sig, codegen

    return tile


def _make_column(vector_bytes):
    """An intrinsic adding one column panel's product with a vector into ``v``."""

    @intrinsic
    def column(typingctx, P, b_off, k, z, z_off, v, v_off):
        # v[v_off + c] += sum_n z[z_off + n] * P[b_off + n * pw + c], c < pw = 2 * lanes
        sig = types.void(P, b_off, k, z, z_off, v, v_off)

        def codegen(context, builder, signature, args):
            e = _Emitter(context, builder, P.dtype, vector_bytes)
            p_data = e.data(signature.args[0], args[0])
            z_data = e.data(signature.args[3], args[3])
            v_data = e.data(signature.args[5], args[5])
            b_off_, k_, z_off_, v_off_ = [e.int64(args[i], signature.args[i]) for i in (1, 2, 4, 6)]

            def step(n, acc):
                col = e.at(p_data, builder.add(b_off_, builder.mul(n, e.const(2 * e.lanes))))
                sv = e.broadcast(e.at(z_data, builder.add(z_off_, n)))
                return [e.fma(sv, e.load_vector(e.at(col, h * e.lanes)), acc[h]) for h in range(2)]

            acc = e.loop(k_, 2, step)
            for h in range(2):
                e.add_into(e.at(v_data, builder.add(v_off_, e.const(h * e.lanes))), acc[h])
            return context.get_dummy_value()

        return sig, codegen

    return column


def _make_shift_row(vector_bytes):
    """An intrinsic packing whole panels of one shifted, scaled row and adding it to its sums."""

    @intrinsic
    def shift_row(typingctx, P, p_off, p_stride, X, x_off, shift, a, s, panels):
        # for j < panels * pw (pw = 2 * lanes), q = j // pw, c = j % pw:
        #   z = (X[x_off + j] - shift[j]) * a
        #   P[p_off + q * p_stride + c] = z;  s[j] += float64(z) * float64(a)
        # the operations of the scalar loop, in vectors (s is float64).
        sig = types.void(P, p_off, p_stride, X, x_off, shift, a, s, panels)

        def codegen(context, builder, signature, args):
            e = _Emitter(context, builder, P.dtype, vector_bytes)
            e64 = _Emitter(context, builder, types.float64, 8 * e.lanes)
            p_data, x_data, shift_data, s_data = [
                e.data(signature.args[i], args[i]) for i in (0, 3, 5, 7)]
            p_off_, p_stride_, x_off_, panels_ = [
                e.int64(args[i], signature.args[i]) for i in (1, 2, 4, 8)]
            av = e.splat(context.cast(builder, args[6], signature.args[6], P.dtype))
            aa = builder.fpext(av, e64.vty) if e.size < 8 else av
            pw = 2 * e.lanes

            def step(q, acc):
                j = builder.mul(q, e.const(pw))
                dst = e.at(p_data, builder.add(p_off_, builder.mul(q, p_stride_)))
                for h in range(2):
                    jh = builder.add(j, e.const(h * e.lanes))
                    x = e.load_vector(e.at(x_data, builder.add(x_off_, jh)))
                    z = builder.fmul(builder.fsub(x, e.load_vector(e.at(shift_data, jh))), av)
                    builder.store(z, builder.bitcast(e.at(dst, h * e.lanes), e.vty.as_pointer()),
                                  align=e.size)
                    z64 = builder.fpext(z, e64.vty) if e.size < 8 else z
                    e64.add_into(e.at(s_data, jh), builder.fmul(z64, aa))
                return []

            e.loop(panels_, 0, step)
            return context.get_dummy_value()

        return sig, codegen

    return shift_row


@intrinsic
def _prefetch(typingctx, a, offset):
    """Prefetch the cache line of ``a[offset]`` into L2 (``llvm.prefetch``:
    read, locality 2); a hint, never a fault."""
    sig = types.void(a, offset)

    def codegen(context, builder, signature, args):
        e = _Emitter(context, builder, a.dtype, 64)
        i8p = ir.IntType(8).as_pointer()
        ptr = builder.bitcast(e.at(e.data(signature.args[0], args[0]),
                                   e.int64(args[1], signature.args[1])), i8p)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p] + [e.i32] * 3),
            "llvm.prefetch." + i8p.intrinsic_name)
        builder.call(fn, [ptr] + [ir.Constant(e.i32, v) for v in (0, 2, 1)])
        return context.get_dummy_value()

    return sig, codegen


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
_shift_row_64 = _make_shift_row(64)
_shift_row_32 = _make_shift_row(32)


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
    """Elements of the scratch buffer ``P`` of :func:`pack`, :func:`packed_gram` and
    :func:`packed_gemv` for ``m`` rows of ``p`` columns: the panels, a scratch tile
    and a padded column."""
    rows, pw, panels = panel_shape(p, itemsize, wide)
    return panels * pw * m + rows * pw + panels * pw


@njit(**JIT)
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


@njit(**JIT)
def pack_shifted(X, r0, m, shift, roots, weighted, P, s, wide):
    """Pack rows ``r0 : r0 + m`` of X, shifted and scaled, into the panels of
    ``P`` as :func:`pack` does: ``Z[n] = (X[r0 + n] - shift[:p]) * a_n``, ``a_n
    = roots[n]`` with ``weighted``, else 1 (p = X.shape[1]); and add
    ``float64(a_n) * Z[n]`` (float64) into ``s[:p]``.

    Whole panels are formed in vector registers (no copy in between, and no
    run-time alias checks per row, which the loop in Numba needed); the last,
    partial panel by a scalar loop with the same operations.
    """
    p = X.shape[1]
    rows, pw, panels = panel_shape(p, item_bytes(P), wide)
    full = p // pw
    c0 = full * pw
    flat = X.reshape(X.size)
    packed = P[:panels * m * pw].reshape((panels, m, pw))
    one = X.dtype.type(1.0)
    for n in range(m):
        a = roots[n] if weighted else one
        if wide:
            _shift_row_64(P, n * pw, m * pw, flat, (r0 + n) * p, shift, a, s, full)
        else:
            _shift_row_32(P, n * pw, m * pw, flat, (r0 + n) * p, shift, a, s, full)
        if c0 < p:
            aa = np.float64(a)
            dst = packed[full, n]
            for c in range(p - c0):
                z = (X[r0 + n, c0 + c] - shift[c0 + c]) * a
                dst[c] = z
                s[c0 + c] += aa * z
            for c in range(p - c0, pw):
                dst[c] = 0


@njit(**JIT)
def packed_gram(P, m, p, C, wide, ahead, a0, a1):
    """Add the upper triangle of ``A.T @ A`` into ``C[:p, :p]``, A (m, p) packed in P by
    :func:`pack`; C C-contiguous, (p, p) or wider.

    Parts of the block's lower triangle get partial sums. ``ahead[a0:a1]`` (a 1-D
    array, any dtype; an empty range for none): data the caller reads next,
    prefetched into L2 a few cache lines after each tile, so that its reading
    overlaps the tiles' arithmetic.
    """
    rows, pw, panels = panel_shape(p, item_bytes(P), wide)
    panel = m * pw
    scratch = P[panels * panel:panels * panel + rows * pw]
    edge = scratch.reshape((rows, pw))
    ldc = C.shape[1]
    flat = C.reshape(C.size)
    per_line = 64 // item_bytes(ahead)
    lines = max(0, a1 - a0 + per_line - 1) // per_line
    tiles = 0
    for i0 in range(0, p, rows):
        tiles += panels - i0 // pw
    tiles *= (m + KC - 1) // KC
    done = 0
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
                        _half_64(P, a_off, b_off + half, k, pw, flat, i0 * ldc + j0 + half, ldc)
                    else:
                        _half_32(P, a_off, b_off + half, k, pw, flat, i0 * ldc + j0 + half, ldc)
                elif i0 + rows <= p and j0 + pw <= p:
                    if wide:
                        _tile_64(P, a_off, b_off, k, pw, flat, i0 * ldc + j0, ldc)
                    else:
                        _tile_32(P, a_off, b_off, k, pw, flat, i0 * ldc + j0, ldc)
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
                for line in range(done * lines // tiles, (done + 1) * lines // tiles):
                    _prefetch(ahead, a0 + line * per_line)
                done += 1


@njit(**JIT)
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
