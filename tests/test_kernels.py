"""The CPU kernels (:mod:`fusedgrad.kernels`) against the NumPy reference.

Driven by the comparison table in ``tests/cases.py``: every row is run over
a fixed set of shapes (n = 1, one feature, one hidden unit, two classes,
and sample counts that are not a multiple of the chunk size, so several
chunks and groups take part) and over random small shapes (hypothesis), in
float32 and float64, and compared with the reference evaluated in float64.
Then the contract around the numbers: output dtypes, untouched inputs,
``out=``, memory layouts, and extreme values.
"""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fusedgrad.kernels
from cases import CASES, DTYPES, as_float64, compare, outputs, rel_error
from fusedgrad import reference as ref

# (N, d, h, K). The planner's chunks hold 64 to 2048 rows, so 2049, 4096 and
# 5000 rows make several chunks with and without a ragged last one; the mlp
# row of the table also runs with 64 and 1 row per chunk, where 37, 200 and
# 1000 rows span many chunks and all groups.
SHAPES = [
    dict(N=1, d=1, h=1, K=2),
    dict(N=1, d=4, h=3, K=5),
    dict(N=2, d=1, h=5, K=2),
    dict(N=37, d=6, h=1, K=3),
    dict(N=200, d=13, h=9, K=2),
    dict(N=1000, d=8, h=16, K=10),
    dict(N=2049, d=2, h=3, K=4),
    dict(N=4096, d=5, h=2, K=3),
    dict(N=5000, d=3, h=5, K=7),
]


def _opts_id(opts):
    return ",".join(f"{k}={v}" for k, v in opts.items()) or "default"


def _reference_params():
    params = []
    for case in CASES.values():
        seen = set()
        for shape in SHAPES:
            key = case.project(shape)
            if key in seen:
                continue
            seen.add(key)
            for opts in case.kernel_options:
                for dtype in DTYPES:
                    params.append(
                        pytest.param(
                            case,
                            shape,
                            opts,
                            dtype,
                            id=f"{case.name}-{case.shape_id(shape)}-{_opts_id(opts)}-"
                            f"{np.dtype(dtype).name}",
                        )
                    )
    return params


def _run(case, shape, dtype, seed=0, **opts):
    args = case.make_args(shape, dtype, seed)
    got = case.kernel(*args, **opts)
    want = case.reference(*as_float64(args))
    return args, got, want


def test_table_covers_every_kernel():
    assert {case.function for case in CASES.values()} == set(fusedgrad.kernels.__all__)


def test_shapes_span_several_chunks():
    """SHAPES relies on chunks of at most 2048 rows for the multi-chunk cases."""
    from fusedgrad.kernels import _options

    assert _options.MAX_CHUNK_ROWS <= 2048


def test_compare_catches_an_error():
    """The tolerance machinery is not vacuous: 10 x tolerance is rejected, 0.1 x passes."""
    case = CASES["softmax_cross_entropy"]
    for dtype in DTYPES:
        tol = case.tolerance[np.dtype(dtype)]
        loss, dZ = case.reference(*case.make_args(dict(N=20, K=3), np.float64, 0))
        compare(case, (loss * (1 + 0.1 * tol), dZ), (loss, dZ), dtype)
        with pytest.raises(AssertionError, match="output 1"):
            bad = dZ.copy()
            bad[3, 1] += 10 * tol * np.abs(dZ).max()
            compare(case, (loss, bad), (loss, dZ), dtype)


@pytest.mark.parametrize("case, shape, opts, dtype", _reference_params())
def test_matches_reference(case, shape, opts, dtype):
    _, got, want = _run(case, shape, dtype, seed=shape["N"], **opts)
    compare(case, got, want, dtype)


@pytest.mark.parametrize("name", sorted(CASES))
# derandomize: the same examples in every run. With fresh random examples, a
# float32 bias gradient of one hidden unit summed over rows of both signs can
# exceed the normwise 1e-5 (measured: 5.7e-5 at N=232, d=h=1, where the sum
# cancels to 1/300 of its terms' magnitude): a limit of float32, not a bug,
# but one that made CI fail by chance.
@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    N=st.integers(1, 300),
    d=st.integers(1, 40),
    h=st.integers(1, 40),
    K=st.integers(2, 12),
    dtype=st.sampled_from(DTYPES),
    option=st.integers(0, 2),
    seed=st.integers(0, 2**32 - 1),
)
def test_matches_reference_random_shapes(name, N, d, h, K, dtype, option, seed):
    case = CASES[name]
    opts = case.kernel_options[option % len(case.kernel_options)]
    _, got, want = _run(case, dict(N=N, d=d, h=h, K=K), dtype, seed, **opts)
    compare(case, got, want, dtype)


SMALL = dict(N=50, d=6, h=4, K=3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_output_dtypes_and_shapes(name, dtype):
    case = CASES[name]
    args, got, want = _run(case, SMALL, dtype)
    for i, (g, w) in enumerate(zip(outputs(got), outputs(want))):
        if w is None:
            assert g is None
            continue
        if np.ndim(w) == 0:
            # the loss: a NumPy scalar of the input dtype, not a 0-d array or a Python float
            assert isinstance(g, np.generic), (i, type(g))
        else:
            assert isinstance(g, np.ndarray), (i, type(g))
            assert g.shape == w.shape, (i, g.shape, w.shape)
        assert g.dtype == dtype, (i, g.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_inputs_not_modified(name, dtype):
    case = CASES[name]
    args = case.make_args(SMALL, dtype, 1)
    before = [a.copy() for a in args]
    case.kernel(*args)
    for i, (a, b) in enumerate(zip(args, before)):
        np.testing.assert_array_equal(a, b, err_msg=f"argument {i} modified")
        assert a.dtype == b.dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_check_finite_false_same_result(name, dtype):
    case = CASES[name]
    args = case.make_args(SMALL, dtype, 2)
    for a, b in zip(outputs(case.kernel(*args)), outputs(case.kernel(*args, check_finite=False))):
        assert (a is None and b is None) or np.array_equal(a, b)


# ---------------------------------------------------------------------------
# Memory layout: non-contiguous input is handled like its contiguous copy
# ---------------------------------------------------------------------------


def _relayout(a, layout):
    """A view of a copy of ``a`` in the given memory layout, equal to ``a``."""
    if not isinstance(a, np.ndarray):
        return a
    if layout == "fortran":
        return np.asfortranarray(a) if a.ndim > 1 else a
    every_other = (slice(None, None, 2),) * a.ndim
    if layout == "strided":
        big = np.zeros(tuple(2 * s for s in a.shape), a.dtype)
        big[every_other] = a
        return big[every_other]
    if layout == "reversed":
        backwards = (slice(None, None, -1),) * a.ndim
        return a[backwards].copy()[backwards]
    raise ValueError(layout)


@pytest.mark.parametrize("layout", ["fortran", "strided", "reversed"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_layouts_give_same_result(name, dtype, layout):
    case = CASES[name]
    args = case.make_args(SMALL, dtype, 3)
    moved = tuple(_relayout(a, layout) for a in args)
    for a, m in zip(args, moved):
        np.testing.assert_array_equal(a, m)
        if layout != "fortran" or a.ndim > 1:
            assert not m.flags.c_contiguous
    expected = case.kernel(*args)
    got = case.kernel(*moved)
    for i, (g, e) in enumerate(zip(outputs(got), outputs(expected))):
        assert (g is None and e is None) or np.array_equal(g, e), f"output {i} differs"


@pytest.mark.parametrize("label_dtype", [np.int8, np.uint8, np.int32, np.uint64, "list"])
@pytest.mark.parametrize("name", ["mlp_loss_grad", "softmax_cross_entropy"])
def test_label_dtypes_give_same_result(name, label_dtype):
    case = CASES[name]
    args = case.make_args(SMALL, np.float64, 4)
    y = args[1]
    y2 = y.tolist() if label_dtype == "list" else y.astype(label_dtype)
    expected = case.kernel(*args)
    got = case.kernel(args[0], y2, *args[2:])
    for g, e in zip(outputs(got), outputs(expected)):
        assert np.array_equal(g, e)


# ---------------------------------------------------------------------------
# affine_sigmoid(out=)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_affine_sigmoid_out_filled_and_returned(dtype):
    X, W, b = CASES["affine_sigmoid"].make_args(dict(N=3000, d=7, h=5), dtype, 5)
    out = np.full((3000, 5), np.nan, dtype)
    got = fusedgrad.kernels.affine_sigmoid(X, W, b, out=out)
    assert got is out
    np.testing.assert_array_equal(out, fusedgrad.kernels.affine_sigmoid(X, W, b))
    # positional too, as the signature affine_sigmoid(X, W, b, out=None) allows
    out2 = np.empty_like(out)
    assert fusedgrad.kernels.affine_sigmoid(X, W, b, out2) is out2
    np.testing.assert_array_equal(out2, out)


# ---------------------------------------------------------------------------
# Extreme values: no overflow, no NaN, no warnings
# ---------------------------------------------------------------------------


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
            yield


@pytest.mark.usefixtures("no_warnings")
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_huge_logits(dtype):
    rng = np.random.default_rng(6)
    N, K = 300, 6
    Z = rng.uniform(-1e4, 1e4, size=(N, K)).astype(dtype)
    Z[0] = 1e4  # ties at the top
    Z[1] = -1e4  # ties at the bottom
    Z[2] = [1e4, -1e4, 0.0, 1e4, -1e4, 0.0]
    Z[3, :] = -1e4
    Z[3, 0] = 1e4
    y = rng.integers(0, K, size=N)
    y[3] = 1  # the worst label: loss 2e4
    loss, dZ = fusedgrad.kernels.softmax_cross_entropy(Z, y)
    assert np.isfinite(loss) and np.all(np.isfinite(dZ))
    assert type(loss) is dtype and dZ.dtype == dtype
    compare(CASES["softmax_cross_entropy"], (loss, dZ),
            ref.softmax_cross_entropy(Z.astype(np.float64), y), dtype)
    # exact values where the answer is exact: uniform rows, one dominant logit
    np.testing.assert_allclose(dZ[0], (1.0 / K - (np.arange(K) == y[0])) / N, rtol=1e-6)
    assert dZ[3, 0] == dtype(1.0 / N) and dZ[3, 1] == dtype(-1.0 / N)


@pytest.mark.usefixtures("no_warnings")
@pytest.mark.parametrize("dtype", DTYPES)
def test_mlp_huge_weights_finite(dtype):
    rng = np.random.default_rng(7)
    N, d, h, K = 500, 5, 6, 4
    X = rng.standard_normal((N, d)).astype(dtype)
    y = rng.integers(0, K, size=N)
    W1 = (1e3 * rng.standard_normal((d, h))).astype(dtype)  # sigmoid saturates to 0 / 1
    b1 = (1e3 * rng.standard_normal(h)).astype(dtype)
    W2 = (3e3 * rng.standard_normal((h, K))).astype(dtype)  # logits of order 1e4
    b2 = (1e3 * rng.standard_normal(K)).astype(dtype)
    for chunk in (None, 64):
        loss, *grads = fusedgrad.kernels.mlp_loss_grad(X, y, W1, b1, W2, b2,
                                                       _max_chunk_rows=chunk)
        assert np.isfinite(loss) and loss > 1e3
        for g in grads:
            assert np.all(np.isfinite(g)) and g.dtype == dtype
        ref_loss = ref.mlp_loss_grad(*as_float64((X, y, W1, b1, W2, b2)))[0]
        assert rel_error(loss, ref_loss) <= 1e-5


@pytest.mark.usefixtures("no_warnings")
@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_saturates_exactly(dtype):
    X = np.array([[1.0], [-1.0], [0.0], [0.0]], dtype)
    W = np.array([[1e3, -1e3, 0.0]], dtype)
    b = np.array([0.0, 0.0, 0.0], dtype)
    A = fusedgrad.kernels.affine_sigmoid(X, W, b)
    np.testing.assert_array_equal(A, [[1, 0, 0.5], [0, 1, 0.5], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])
    b = np.array([1e3, -1e3, 0.0], dtype)
    A = fusedgrad.kernels.affine_sigmoid(np.zeros((2, 1), dtype), W, b)
    np.testing.assert_array_equal(A, [[1, 0, 0.5], [1, 0, 0.5]])
    assert A.dtype == dtype
    # backward through a saturated sigmoid: A (1 - A) = 0 exactly
    X, W, b = X[:2], W[:, :2], np.zeros(2, dtype)
    A = fusedgrad.kernels.affine_sigmoid(X, W, b)
    np.testing.assert_array_equal(A, [[1, 0], [0, 1]])
    dW, db, dX = fusedgrad.kernels.affine_sigmoid_backward(X, A, np.ones((2, 2), dtype), W)
    assert not np.any(dW) and not np.any(db) and not np.any(dX)


# ---------------------------------------------------------------------------
# The loss of confident predictions
# ---------------------------------------------------------------------------

# When the label's logit leads the K - 1 others by a margin m, with
# t = (K - 1) e^-m the row's loss is log(1 + t) ~ t and its gradient is
# (e^-m, ..., -t, ...) / ((1 + t) N). Computed as log(s) and e_k / s - 1, with
# s = sum_k e^(z_k - max) rounded to the working precision, the rounding of s
# (half an ulp of 1) becomes a relative error of ~eps / (2 t) in the loss and
# in the label's gradient: 1e-4 in float32 at m = 7, 1e-10 in float64 at m = 14;
# in float32 at m = 20 both come out exactly 0. log1p(t) and -t / s, with t
# summed from the other terms, keep full relative precision. The reference
# shares the log(s) formula, so these tests compare with the exact values.
# (The random tests above meet this only with very few rows, all predicted
# confidently and correctly.)
MARGINS = [4.0, 7.0, 10.0, 14.0, 20.0]


def _confident_exact(margin, K, label, N):
    """Exact loss and dZ (float64) of N rows of logits: 0, except margin at label."""
    e = np.exp(-margin)
    t = (K - 1) * e
    row = np.full(K, e / (1.0 + t))
    row[label] = -t / (1.0 + t)
    return np.log1p(t), np.tile(row / N, (N, 1))


def _confident_params():
    """margin x dtype."""
    for margin in MARGINS:
        for dtype in DTYPES:
            yield pytest.param(margin, dtype, id=f"{margin:g}-{np.dtype(dtype).name}")


@pytest.mark.parametrize("K", [2, 5])
@pytest.mark.parametrize("margin, dtype", list(_confident_params()))
def test_softmax_cross_entropy_confident_predictions(margin, K, dtype):
    N = 3
    Z = np.zeros((N, K), dtype)
    Z[:, 1] = margin
    y = np.ones(N, dtype=np.intp)
    tol = CASES["softmax_cross_entropy"].tolerance[np.dtype(dtype)]
    loss, dZ = fusedgrad.kernels.softmax_cross_entropy(Z, y)
    want_loss, want_dZ = _confident_exact(margin, K, 1, N)
    assert rel_error(loss, want_loss) <= tol, f"loss {loss!r}, exact {want_loss!r}"
    assert rel_error(dZ, want_dZ) <= tol, f"dZ[0] {dZ[0]}, exact {want_dZ[0]}"


@pytest.mark.parametrize("margin, dtype", list(_confident_params()))
def test_mlp_confident_predictions(margin, dtype):
    N = 2
    X, y, W1, b1, W2, b2 = CASES["mlp_loss_grad"].make_args(dict(N=N, d=3, h=4, K=2), dtype, 0)
    y[:] = 0
    W2 = np.zeros_like(W2)
    b2 = np.array([margin, 0.0], dtype)  # logits (margin, 0) on every row
    tol = CASES["mlp_loss_grad"].tolerance[np.dtype(dtype)]
    loss, dW1, db1, dW2, db2 = fusedgrad.kernels.mlp_loss_grad(X, y, W1, b1, W2, b2)
    want_loss, want_dZ2 = _confident_exact(margin, 2, 0, N)
    A = ref.affine_sigmoid(*as_float64((X, W1, b1)))
    assert rel_error(loss, want_loss) <= tol, f"loss {loss!r}, exact {want_loss!r}"
    assert rel_error(db2, want_dZ2.sum(axis=0)) <= tol
    assert rel_error(dW2, A.T @ want_dZ2) <= tol
    assert not np.any(dW1) and not np.any(db1)  # W2 = 0 stops the gradient


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("K", [3, 40])  # transposed blocks; row by row
def test_softmax_cross_entropy_weighted_is_the_weighted_mean_of_the_rows(K, dtype):
    rng = np.random.default_rng(K)
    N = 5000
    Z = (3 * rng.standard_normal((N, K))).astype(dtype)
    y = rng.integers(0, K, N)
    s = (rng.uniform(0, 2, N) * (rng.random(N) < 0.7)).astype(dtype)
    s[:1024] = 0.0
    loss, dZ = fusedgrad.kernels.softmax_cross_entropy(Z, y, sample_weight=s)
    # each row alone through the NumPy reference, then the weighted mean
    row_losses = np.array([ref.softmax_cross_entropy(Z[i:i + 1].astype(np.float64),
                                                           y[i:i + 1])[0] for i in range(N)])
    _, row_grads = ref.softmax_cross_entropy(Z.astype(np.float64), y)  # (p - Y) / N
    w = s.astype(np.float64) / s.astype(np.float64).sum()
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert loss.dtype == dtype and dZ.dtype == dtype
    assert loss == pytest.approx(w @ row_losses, rel=tol)
    want = row_grads * N * w[:, None]
    assert np.abs(dZ - want).max() <= tol * np.abs(want).max()
    assert np.all(dZ[s == 0] == 0)
