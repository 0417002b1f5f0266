"""The BLAS helpers of ``fusedgrad.kernels._blas`` and the kernels' shapes that cut them.

Products with a long dimension and two small ones are cut into pieces that
OpenBLAS runs with its small-matrix kernels; these tests check the pieces
(a ragged last one included) against NumPy's own product, ``beta`` = 0 and
1, the Gram matrix's BLAS paths (full product and ``syrk``) and its packed
register tiles (``_tiles``, both tile shapes), and whole kernels at shapes
where the cutting or the switch between BLAS and the tiles happens (the
comparison table's shapes are too small for it).
"""

import numpy as np
import pytest
from numba import njit

from cases import rel_error
from fusedgrad import reference as ref
from fusedgrad.kernels import _options as opt
from fusedgrad.kernels import gram, mlp_loss_grad, ols_loss_grad
from fusedgrad.kernels.ols import centered_gram
from fusedgrad.kernels import _tiles
from fusedgrad.kernels._blas import (
    GRAM_GEMM_MIN_ROWS,
    GRAM_TILES_MAX_ROW_BYTES,
    GRAM_TILES_MIN_ROW_BYTES,
    MIN_PIECE_ROWS,
    SMALL_MNK,
    gram_tn,
    gram_uses_tiles,
    mm_nn,
    mm_nt,
    mm_tn,
    piece_rows,
    single_threaded_blas,
)
from fusedgrad.kernels._partition import plan

_OPTIONS = dict(opt.JIT, cache=False)
DTYPES = [np.float32, np.float64]
TOL = {np.float32: 1e-5, np.float64: 1e-12}


@njit(**_OPTIONS)
def _nn(A, B, C, beta):
    mm_nn(A, B, C, beta)


@njit(**_OPTIONS)
def _tn(A, B, C, beta):
    mm_tn(A, B, C, beta)


@njit(**_OPTIONS)
def _nt(A, B, C, beta):
    mm_nt(A, B, C, beta)


@njit(**_OPTIONS)
def _gram(A, C, beta):
    gram_tn(A, C, beta)


@njit(**_OPTIONS)
def _piece_rows(rows, other):
    return piece_rows(rows, other)


def test_piece_rows():
    # a whole product that qualifies, or one whose pieces would be too short, is not cut
    assert _piece_rows(100, 10_000) == 100
    assert _piece_rows(10**6, SMALL_MNK // (MIN_PIECE_ROWS - 1)) == 10**6
    for rows, other in [(1024, 64 * 128), (1024, 128 * 10), (5000, 7000), (10**6, 3)]:
        piece = _piece_rows(rows, other)
        assert piece & (piece - 1) == 0 and MIN_PIECE_ROWS <= piece < rows
        assert piece * other <= SMALL_MNK < 2 * piece * other
    assert _piece_rows(0, 100) == 1


def _rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


# (long, other two): 1000 rows cut into 128-row pieces with a ragged last one
# (1000 = 7 * 128 + 104), 300 rows into 32-row pieces, and a product that is not cut.
PRODUCT_SHAPES = [(1000, 70, 100), (300, 180, 170), (50, 3, 4)]


@pytest.mark.parametrize("beta", [0.0, 1.0])
@pytest.mark.parametrize("m, k, n", PRODUCT_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_products_match_numpy(m, k, n, beta, dtype):
    rng = np.random.default_rng(m + k + n)
    with single_threaded_blas():
        # C (m, n) = A (m, k) @ B (k, n) + beta C
        A, B, C0 = _rand(rng, (m, k), dtype), _rand(rng, (k, n), dtype), _rand(rng, (m, n), dtype)
        C = C0.copy()
        _nn(A, B, C, beta)
        want = A.astype(np.float64) @ B.astype(np.float64) + beta * C0
        assert rel_error(C, want) < TOL[dtype]
        # C (n, k) = A (m, n).T @ B (m, k) + beta C: the pieces are summed over the long axis
        A, B, C0 = _rand(rng, (m, n), dtype), _rand(rng, (m, k), dtype), _rand(rng, (n, k), dtype)
        C = C0.copy()
        _tn(A, B, C, beta)
        want = A.astype(np.float64).T @ B.astype(np.float64) + beta * C0
        assert rel_error(C, want) < TOL[dtype]
        # C (m, n) = A (m, k) @ B (n, k).T + beta C
        A, B, C0 = _rand(rng, (m, k), dtype), _rand(rng, (n, k), dtype), _rand(rng, (m, n), dtype)
        C = C0.copy()
        _nt(A, B, C, beta)
        want = A.astype(np.float64) @ B.astype(np.float64).T + beta * C0
        assert rel_error(C, want) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_tn_over_zero_rows_scales_by_beta(dtype):
    A, B = np.empty((0, 3), dtype), np.empty((0, 4), dtype)
    C = np.full((3, 4), 7.0, dtype)
    with single_threaded_blas():
        _tn(A, B, C, 0.0)
    np.testing.assert_array_equal(C, 0.0)


# Widths on both sides of the switch from the full product to syrk (62 | 63).
BLAS_GRAM_WIDTHS = [1, 16, 62, 63, 225]


@pytest.mark.parametrize("p", BLAS_GRAM_WIDTHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gram_tn_upper_triangle(p, dtype):
    rng = np.random.default_rng(p)
    A = _rand(rng, (3001, p), dtype)
    C0 = _rand(rng, (p, p), dtype)
    for beta in (0.0, 1.0):
        C = C0.copy()
        with single_threaded_blas():
            _gram(A, C, beta)
        want = A.astype(np.float64).T @ A.astype(np.float64) + beta * C0
        assert rel_error(np.triu(C), np.triu(want)) < TOL[dtype]
    assert (SMALL_MNK // (p * p) >= GRAM_GEMM_MIN_ROWS) == (p <= 62)


@njit(**_OPTIONS)
def _packed(A, C, beta, P, wide):
    # C = A.T @ A + beta * C on the upper triangle, as the Gram kernels use the tiles
    m, p = A.shape
    if beta == 0:
        C[:, :] = 0
    else:
        C *= beta
    _tiles.pack(A, p, P, wide)
    _tiles.packed_gram(P, m, p, C, wide, P, 0, 0)


@njit(**_OPTIONS)
def _packed_gemv(A, z, v, P, wide):
    m, p = A.shape
    _tiles.pack(A, p, P, wide)
    _tiles.packed_gemv(P, m, p, z, v, wide)


@njit(**_OPTIONS)
def _packed_size(m, p, itemsize, wide):
    return _tiles.packed_size(m, p, itemsize, wide)


def _scratch(m, p, dtype, wide, rng):
    """The tiles' scratch buffer, poisoned with NaN (every element used is written first)."""
    size = _packed_size(m, p, np.dtype(dtype).itemsize, wide)
    return np.full(size, np.nan, dtype)


# Widths: one column, less than a panel, exactly one and two panels of either
# tile shape (8, 16, 32, 64 columns), one more and one fewer, and a wide ragged
# one; rows: none, one, fewer than a run of KC rows, and several runs with a
# ragged last one.
TILE_WIDTHS = [1, 7, 8, 15, 16, 17, 31, 32, 33, 64, 100, 203]
TILE_ROWS = [0, 1, 37, 3 * _tiles.KC + 5]


@pytest.mark.parametrize("wide", [True, False], ids=["64-byte", "32-byte"])
@pytest.mark.parametrize("p", TILE_WIDTHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_gram_tiles(p, dtype, wide):
    # Against the float64 product for every beta (0 ignores NaN in C), and the
    # column panel's product with a vector (X^T y) against NumPy's.
    rng = np.random.default_rng(p)
    for m in TILE_ROWS:
        A = _rand(rng, (m, p), dtype)
        C0 = _rand(rng, (p, p), dtype)
        want = A.astype(np.float64).T @ A.astype(np.float64)
        for beta in (0.0, 1.0, 0.5):
            C = np.full_like(C0, np.nan) if beta == 0 else C0.copy()
            _packed(A, C, beta, _scratch(m, p, dtype, wide, rng), wide)
            expect = want + (0 if beta == 0 else beta * C0.astype(np.float64))
            scale = max(1.0, np.abs(expect).max())
            assert np.abs(np.triu(C) - np.triu(expect)).max() / scale < TOL[dtype], (m, beta)
        z = _rand(rng, m, dtype)
        v0 = _rand(rng, p, dtype)
        v = v0.copy()
        _packed_gemv(A, z, v, _scratch(m, p, dtype, wide, rng), wide)
        expect = v0 + z.astype(np.float64) @ A.astype(np.float64)
        assert rel_error(v, expect) < TOL[dtype], m


@njit(**_OPTIONS)
def _pack_shifted(X, r0, m, shift, roots, weighted, P, s, wide):
    _tiles.pack_shifted(X, r0, m, shift, roots, weighted, P, s, wide)


def _unpack(P, m, p, pw):
    """The (m, p) block that P's panels hold, and the padding beyond column p."""
    panels = -(-p // pw)
    block = P[:panels * m * pw].reshape(panels, m, pw).transpose(1, 0, 2).reshape(m, panels * pw)
    return block[:, :p], block[:, p:]


@pytest.mark.parametrize("wide", [True, False], ids=["64-byte", "32-byte"])
@pytest.mark.parametrize("p", TILE_WIDTHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_pack_shifted(p, dtype, wide):
    # Rows r0 : r0 + m of X, shifted and scaled, in the panels, padded with
    # zeros (exactly NumPy's values: the same operations); their float64 sums
    # weighted by the scales added to s (to rounding: the compiled code may
    # fuse the multiply-add).
    rng = np.random.default_rng(p + 1)
    pw = (128 if wide else 64) // np.dtype(dtype).itemsize
    X = (_rand(rng, (300, p), dtype) * 4 + 3).astype(dtype)
    shift = _rand(rng, p, dtype)
    for m, r0 in ((0, 0), (1, 299), (37, 5), (_tiles.KC, 100)):
        for weighted in (False, True):
            roots = np.sqrt(rng.random(m)).astype(dtype) if weighted else np.empty(0, dtype)
            a = roots if weighted else np.ones(m, dtype)
            P = _scratch(m, p, dtype, wide, rng)
            s0 = rng.standard_normal(p + 1)
            s = s0.copy()
            _pack_shifted(X, r0, m, shift, roots, weighted, P, s, wide)
            Z = (X[r0:r0 + m] - shift) * a[:, None]
            assert Z.dtype == dtype
            block, pad = _unpack(P, m, p, pw)
            np.testing.assert_array_equal(block, Z)
            np.testing.assert_array_equal(pad, 0)
            want = s0.copy()
            for n in range(m):  # row by row, in order, as the kernel adds
                want[:p] += np.float64(a[n]) * Z[n].astype(np.float64)
            np.testing.assert_allclose(s, want, rtol=0, atol=1e-14 * max(1, m) * np.abs(want).max())


@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_gram_views(dtype):
    # A row block of a larger array (the kernels pass X[r0:r1]) and a
    # group's slice of the partial sums (pG[g]) are packed and written in place.
    rng = np.random.default_rng(7)
    X = _rand(rng, (700, 48), dtype)
    pG = np.zeros((3, 48, 48), dtype)
    _packed(X[123:456], pG[1], 1.0, _scratch(333, 48, dtype, True, rng), True)
    want = X[123:456].astype(np.float64).T @ X[123:456].astype(np.float64)
    assert rel_error(np.triu(pG[1]), np.triu(want)) < TOL[dtype]
    np.testing.assert_array_equal(pG[0], 0)
    np.testing.assert_array_equal(pG[2], 0)


def test_gram_uses_tiles_thresholds():
    for itemsize in (4, 8):
        low = GRAM_TILES_MIN_ROW_BYTES // itemsize
        high = GRAM_TILES_MAX_ROW_BYTES // itemsize
        assert not _uses_tiles(low - 1, itemsize) and _uses_tiles(low, itemsize)
        assert _uses_tiles(high, itemsize) and not _uses_tiles(high + 1, itemsize)


@njit(**_OPTIONS)
def _uses_tiles(p, itemsize):
    return gram_uses_tiles(p, itemsize)


# Widths of the Gram kernels on both sides of the switches from BLAS to the
# tiles (31 | 32 float64 columns, 63 | 64 float32) and back to BLAS (512 | 513
# float64 columns, 1024 | 1025 float32), and ones with ragged panels.
GRAM_WIDTHS = [1, 16, 31, 32, 63, 64, 100, 225, 512, 513, 1024, 1025]


@pytest.mark.parametrize("d", GRAM_WIDTHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gram_kernel_every_path(d, dtype):
    rng = np.random.default_rng(d)
    X, y = _rand(rng, (5000, d), dtype), _rand(rng, 5000, dtype)
    XtX, Xty = gram(X, y)
    want_XtX, want_Xty = ref.gram(X.astype(np.float64), y.astype(np.float64))
    assert rel_error(XtX, want_XtX) < TOL[dtype]
    assert rel_error(Xty, want_Xty) < TOL[dtype]
    np.testing.assert_array_equal(XtX, XtX.T)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("d", GRAM_WIDTHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_centered_gram_every_path(d, dtype, weighted):
    # Off-centre data (means far from 0), so that a missing shift would show.
    rng = np.random.default_rng(d)
    X = (_rand(rng, (5000, d), dtype) + 10).astype(dtype)
    y = (_rand(rng, 5000, dtype) - 5).astype(dtype)
    w = rng.uniform(0, 2, 5000).astype(dtype) if weighted else None
    mean, scatter = centered_gram(X, y, sample_weight=w)
    A = np.column_stack([X, y]).astype(np.float64)
    s = np.ones(5000) if w is None else w.astype(np.float64)
    want_mean = s @ A / s.sum()
    centred = A - want_mean
    want = (centred * s[:, None]).T @ centred
    assert rel_error(mean, want_mean) < TOL[dtype]
    assert rel_error(scatter, want) < 10 * TOL[dtype]
    np.testing.assert_array_equal(scatter, scatter.T)


# Shapes of the MLP at which the products of a chunk are cut: the first
# layer's (d * h = 64 * 128), and the output layer's (h * K = 100 * 40);
# 3001 rows leave a ragged last chunk.
MLP_CUT_SHAPES = [((3001, 64, 128, 10), "d * h"), ((3001, 4, 100, 40), "h * K")]


@pytest.mark.parametrize("shape, cut", MLP_CUT_SHAPES, ids=[c for _, c in MLP_CUT_SHAPES])
@pytest.mark.parametrize("dtype", DTYPES)
def test_mlp_at_cut_shapes(shape, cut, dtype):
    N, d, h, K = shape
    item = np.dtype(dtype).itemsize
    chunk, _ = plan(N, (d + 2 * h + K) * item, (d * h + h * K + h + K) * item)
    other = d * h if cut == "d * h" else h * K
    assert _piece_rows(chunk, other) < chunk  # the shape does cut its chunks
    rng = np.random.default_rng(N + d)
    X = _rand(rng, (N, d), dtype)
    y = rng.integers(0, K, N)
    W1 = (rng.standard_normal((d, h)) / np.sqrt(d)).astype(dtype)
    b1 = _rand(rng, h, dtype)
    W2 = (rng.standard_normal((h, K)) / np.sqrt(h)).astype(dtype)
    b2 = _rand(rng, K, dtype)
    got = mlp_loss_grad(X, y, W1, b1, W2, b2)
    want = ref.mlp_loss_grad(*(a.astype(np.float64) for a in (X,)), y,
                             *(a.astype(np.float64) for a in (W1, b1, W2, b2)))
    for g, w in zip(got, want):
        assert rel_error(g, w) < TOL[dtype]


# ---------------------------------------------------------------------------
# The one-pass finiteness check of ols_loss_grad and gram
# ---------------------------------------------------------------------------


def _poisoned(kernel, dtype, d, where, value, position, zero_w):
    rng = np.random.default_rng(position)
    N = 5003
    X, y, w = _rand(rng, (N, d), dtype), _rand(rng, N, dtype), _rand(rng, d, dtype)
    if zero_w:
        w[:] = 0  # inf * 0 is NaN: still caught
    row = position % N
    if where == "X":
        X[row, position % d] = value
    else:
        X[row] = 0  # y's bad value meets a zero row of X: 0 * inf is NaN
        y[row] = value
    args = (X, y, w) if kernel is ols_loss_grad else (X, y)
    return args


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["X", "y"])
@pytest.mark.parametrize("d", [3, 100])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, zero_w", [(ols_loss_grad, False), (ols_loss_grad, True),
                                            (gram, False)],
                         ids=["ols_loss_grad", "ols_loss_grad-w=0", "gram"])
def test_non_finite_found_without_a_second_pass(kernel, zero_w, dtype, d, where, value):
    for position in (0, 1234, 5002 * d + d - 1):
        args = _poisoned(kernel, dtype, d, where, value, position, zero_w)
        with pytest.raises(ValueError, match=f"^{where} contains NaN or infinity"):
            kernel(*args)
        kernel(*args, check_finite=False)  # no error without the check


@pytest.mark.parametrize("kernel", [ols_loss_grad, gram], ids=["ols_loss_grad", "gram"])
def test_finite_input_that_overflows_is_returned(kernel):
    """Finite float32 input whose sums overflow: no error, inf in the result (as NumPy)."""
    X = np.full((100, 3), 1e19, np.float32)
    y = np.full(100, 1e19, np.float32)
    args = (X, y, np.ones(3, np.float32)) if kernel is ols_loss_grad else (X, y)
    with np.errstate(over="ignore"):
        out = kernel(*args)
    assert not all(np.isfinite(o).all() for o in out)


def test_single_threaded_blas_limits_scipys_blas():
    """The limit covers the library the kernels call (SciPy's BLAS, through
    cython_blas), sets it to one thread and restores it; NumPy's bundled copy,
    which the kernels never call, is left alone."""
    import os

    from threadpoolctl import threadpool_info

    from fusedgrad.kernels._blas import kernel_blas_libraries

    def counts():
        return {i["filepath"]: i["num_threads"] for i in threadpool_info()
                if i["user_api"] == "blas"}

    limited = {lib.filepath for lib in kernel_blas_libraries()}
    assert limited
    numpy_dir = os.path.realpath(os.path.dirname(np.__file__))
    scipy_dir = os.path.realpath(os.path.dirname(__import__("scipy").__file__))
    before = counts()
    for path in before:
        real = os.path.realpath(path)
        if real.startswith(scipy_dir) or real.startswith(scipy_dir + ".libs"):
            assert path in limited, (path, limited)
        if real.startswith(numpy_dir) and len(before) > 1:
            assert path not in limited, (path, limited)
    with single_threaded_blas():
        inside = counts()
        assert all(inside[p] == 1 for p in limited), inside
        assert all(inside[p] == before[p] for p in before if p not in limited), inside
    assert counts() == before


def test_wide_vectors_follow_numba_target(monkeypatch):
    # With NUMBA_CPU_NAME naming a target, its feature list decides the tile
    # width; otherwise the host's features do.
    from llvmlite import binding as llvm
    from numba.core import config

    monkeypatch.setattr(config, "CPU_NAME", "haswell")
    monkeypatch.setattr(config, "CPU_FEATURES", "+avx2,+fma,-avx512f")
    assert opt._wide_vectors() is False
    monkeypatch.setattr(config, "CPU_FEATURES", "+avx2,+fma,+avx512f")
    assert opt._wide_vectors() is True
    monkeypatch.setattr(config, "CPU_NAME", None)
    assert opt._wide_vectors() is bool(llvm.get_host_cpu_features().get("avx512f", False))
