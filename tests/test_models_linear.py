"""fusedgrad.models.LinearRegression and the kernels under it (centered_gram, tsqr).

References: NumPy in float64 (moments, QR, ``numpy.linalg.lstsq``), scikit-learn's
LinearRegression, and analytic values (the loss at w = 0, exact fits).
"""

import warnings

import numba
import numpy as np
import pytest
from numpy.testing import assert_allclose

from fusedgrad.kernels.ols import centered_gram, ols_loss_grad
from fusedgrad.kernels.qr import tsqr
from fusedgrad.models import (
    ConvergenceWarning,
    IllConditionedWarning,
    LinearRegression,
    NotFittedError,
    RankDeficientWarning,
)

DTYPES = [np.float32, np.float64]
SOLVERS = ["auto", "normal", "qr", "gd"]


def make_data(N, d, dtype=np.float64, seed=0, offset=3.0, noise=0.1):
    """Features with nonzero means and unequal scales, a linear target plus noise."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, d)) * rng.uniform(0.5, 3.0, d) + offset
    w = rng.standard_normal(d)
    y = X @ w + 1.5 + noise * rng.standard_normal(N)
    return X.astype(dtype), y.astype(dtype)


def lstsq_fit(X, y, fit_intercept=True):
    """(coef, intercept) by numpy.linalg.lstsq in float64 (minimum-norm on the centred data)."""
    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.float64)
    if fit_intercept:
        mx, my = X.mean(axis=0), y.mean()
        coef = np.linalg.lstsq(X - mx, y - my, rcond=None)[0]
        return coef, my - mx @ coef
    return np.linalg.lstsq(X, y, rcond=None)[0], 0.0


def quiet_fit(model, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return model.fit(X, y)


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------

# 1 row; fewer rows than columns; several chunks and groups with a ragged end
KERNEL_SHAPES = [(1, 1), (3, 5), (37, 4), (5000, 3), (20000, 9)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,d", KERNEL_SHAPES)
def test_centered_gram_matches_numpy(N, d, dtype):
    X, y = make_data(N, d, dtype, offset=50.0)
    A = np.column_stack([X, y]).astype(np.float64)
    mean_ref = A.mean(axis=0)
    scatter_ref = (A - mean_ref).T @ (A - mean_ref)
    mean, scatter = centered_gram(X, y)
    assert mean.dtype == scatter.dtype == np.float64
    assert_allclose(mean, mean_ref, rtol=1e-13 if dtype == np.float64 else 1e-7)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert np.abs(scatter - scatter_ref).max() <= tol * max(np.abs(scatter_ref).max(), 1e-300)
    assert np.array_equal(scatter, scatter.T)


def test_centered_gram_float32_many_rows_no_cancellation():
    """1e6 float32 rows with mean 1000 and spread 1: the naive X^T X - n m m^T would keep
    no correct digit in float32; the chunk-shifted pass keeps about 6."""
    rng = np.random.default_rng(1)
    X = (1000.0 + rng.standard_normal((1_000_000, 2))).astype(np.float32)
    y = (X[:, 0] - X[:, 1] + rng.standard_normal(X.shape[0])).astype(np.float32)
    A = np.column_stack([X, y]).astype(np.float64)
    m = A.mean(axis=0)
    ref = (A - m).T @ (A - m)
    mean, scatter = centered_gram(X, y)
    spread = np.sqrt(np.diag(ref) / len(y))
    assert np.all(np.abs(mean - m) <= 1e-9 * (np.abs(m) + spread))
    assert np.abs(scatter - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("intercept", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,d", KERNEL_SHAPES)
def test_tsqr_matches_numpy_qr(N, d, dtype, intercept):
    X, y = make_data(N, d, dtype)
    shift = np.r_[X[:7].mean(axis=0), y[:7].mean()].astype(np.float64)
    cols = ([np.ones(N)] if intercept else []) + [X - shift[:d], y - shift[d]]
    A = np.column_stack(cols).astype(np.float64)
    R = tsqr(X, y, shift, intercept=intercept)
    P = d + 1 + intercept
    assert R.shape == (P, P) and R.dtype == np.float64
    assert np.array_equal(R, np.triu(R))
    # R^T R = A^T A identifies R up to the signs of its rows.
    assert_allclose(R.T @ R, A.T @ A, rtol=0, atol=1e-12 * np.abs(A.T @ A).max())


def test_kernels_do_not_depend_on_thread_count():
    X, y = make_data(30000, 5, seed=3)
    n = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = centered_gram(X, y), tsqr(X, y)
    finally:
        numba.set_num_threads(n)
    many = centered_gram(X, y), tsqr(X, y)
    assert all(np.array_equal(a, b) for a, b in zip(one[0], many[0]))
    assert np.array_equal(one[1], many[1])


# Weights: some rows 0, some whole chunks (2,048 rows) 0, the first chunk of one
# group 0, and a wide range of positive values.
def make_weights(N, dtype, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.0, 4.0, N) ** 2
    w[rng.random(N) < 0.2] = 0.0
    if N > 2048:
        w[:2048] = 0.0
        w[4096:8192] = 0.0
    return w.astype(dtype)


def weighted_moments(X, y, w):
    """Float64 weighted means and centred scatter of [X, y], straight from the definition."""
    A = np.column_stack([X, y]).astype(np.float64)
    w = w.astype(np.float64)
    mean = (w @ A) / w.sum()
    return mean, (A - mean).T @ ((A - mean) * w[:, None])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,d", KERNEL_SHAPES[1:] + [(30000, 4)])
def test_centered_gram_weighted_matches_numpy(N, d, dtype):
    X, y = make_data(N, d, dtype, offset=50.0)
    w = make_weights(N, dtype)
    if not w.any():
        w[0] = 1.0
    mean_ref, scatter_ref = weighted_moments(X, y, w)
    mean, scatter = centered_gram(X, y, sample_weight=w)
    assert_allclose(mean, mean_ref, rtol=1e-13 if dtype == np.float64 else 1e-7)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert np.abs(scatter - scatter_ref).max() <= tol * max(np.abs(scatter_ref).max(), 1e-300)
    assert np.array_equal(scatter, scatter.T)


@pytest.mark.parametrize("intercept", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,d", [(37, 4), (20000, 9)])
def test_tsqr_weighted_matches_numpy(N, d, dtype, intercept):
    X, y = make_data(N, d, dtype)
    w = make_weights(N, dtype, seed=1)
    shift = np.r_[X[:7].mean(axis=0), y[:7].mean()].astype(np.float64)
    cols = ([np.ones(N)] if intercept else []) + [X - shift[:d], y - shift[d]]
    A = np.column_stack(cols).astype(np.float64) * np.sqrt(w.astype(np.float64))[:, None]
    R = tsqr(X, y, shift, intercept=intercept, sample_weight=w)
    assert np.array_equal(R, np.triu(R))
    assert_allclose(R.T @ R, A.T @ A, rtol=0, atol=1e-12 * np.abs(A.T @ A).max())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,d", [(1, 1), (37, 4), (20000, 9)])
def test_ols_loss_grad_weighted_matches_definition(N, d, dtype):
    X, y = make_data(N, d, dtype, seed=2)
    w = np.random.default_rng(3).standard_normal(d).astype(dtype)
    s = make_weights(N, dtype, seed=4)
    if not s.any():
        s[:] = 2.5
    r = y.astype(np.float64) - X.astype(np.float64) @ w.astype(np.float64)
    s64 = s.astype(np.float64)
    loss_ref = (s64 * r * r).sum() / (2 * s64.sum())
    grad_ref = -(s64 * r) @ X.astype(np.float64) / s64.sum()
    loss, grad = ols_loss_grad(X, y, w, sample_weight=s)
    assert grad.dtype == dtype and np.asarray(loss).dtype == dtype
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    assert loss == pytest.approx(loss_ref, rel=rtol)
    assert np.abs(grad - grad_ref).max() <= rtol * np.abs(grad_ref).max()


def test_weighted_kernels_with_unit_weights_equal_unweighted():
    X, y = make_data(20000, 5, seed=5)
    ones = np.ones(len(y))
    w = np.arange(5.0)
    assert all(np.array_equal(a, b) for a, b in zip(centered_gram(X, y, sample_weight=ones),
                                                    centered_gram(X, y)))
    assert np.array_equal(tsqr(X, y, sample_weight=ones), tsqr(X, y))
    assert all(np.array_equal(a, b) for a, b in zip(ols_loss_grad(X, y, w, sample_weight=ones),
                                                    ols_loss_grad(X, y, w)))


@pytest.mark.parametrize("kernel", ["centered_gram", "tsqr", "ols_loss_grad"])
def test_weighted_kernels_check_weights(kernel):
    X, y = make_data(10, 2)
    call = {"centered_gram": lambda s: centered_gram(X, y, sample_weight=s),
            "tsqr": lambda s: tsqr(X, y, sample_weight=s),
            "ols_loss_grad": lambda s: ols_loss_grad(X, y, np.zeros(2), sample_weight=s)}[kernel]
    with pytest.raises(TypeError, match="sample_weight has dtype float32 but X"):
        call(np.ones(10, np.float32))
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(10,\)"):
        call(np.ones(9))
    with pytest.raises(ValueError, match="sample_weight must be non-negative: it holds -1.0"):
        call(np.r_[np.ones(9), -1.0])
    with pytest.raises(ValueError, match="sample_weight must have a positive sum"):
        call(np.zeros(10))
    with pytest.raises(ValueError, match="sample_weight contains NaN"):
        call(np.r_[np.ones(9), np.nan])


# ---------------------------------------------------------------------------
# Agreement with scikit-learn and lstsq
# ---------------------------------------------------------------------------

# Gradient descent without intercept on these offset features is slow (the
# uncentred problem is ill-conditioned); test_gd_converges_* covers it.
SOLVER_INTERCEPT = [(s, fi) for s in SOLVERS for fi in (True, False) if (s, fi) != ("gd", False)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("solver,fit_intercept", SOLVER_INTERCEPT)
@pytest.mark.parametrize("N,d", [(500, 7), (5000, 3)])
def test_matches_sklearn(solver, fit_intercept, dtype, N, d):
    sklm = pytest.importorskip("sklearn.linear_model")
    X, y = make_data(N, d, dtype, seed=N + d)
    tol = 1e-12 if dtype == np.float64 else 1e-6  # float32 gradients stall near 1e-7
    model = LinearRegression(solver=solver, fit_intercept=fit_intercept, tol=tol,
                             max_iter=20000)
    quiet_fit(model, X, y)
    # scikit-learn on the same numbers in float64: the accurate answer for both dtypes
    ref = sklm.LinearRegression(fit_intercept=fit_intercept).fit(X.astype(np.float64), y)
    assert model.coef_.dtype == dtype and model.coef_.shape == (d,)
    assert np.asarray(model.intercept_).dtype == dtype
    if dtype == np.float64:
        rtol = 1e-7 if solver == "gd" else 1e-10
    else:
        rtol = 2e-4
    scale = np.abs(ref.coef_).max()
    assert np.abs(model.coef_ - ref.coef_).max() <= rtol * scale
    assert abs(model.intercept_ - ref.intercept_) <= rtol * max(abs(ref.intercept_), scale)
    assert model.n_features_in_ == d
    assert model.solver_ == ("normal" if solver == "auto" else solver)
    assert model.rank_ == d
    pred = model.predict(X)
    assert pred.dtype == dtype
    assert_allclose(pred, ref.predict(X.astype(np.float64)), rtol=10 * rtol,
                    atol=10 * rtol * np.abs(y).max())
    assert model.score(X, y) == pytest.approx(ref.score(X.astype(np.float64), y),
                                              rel=10 * rtol)
    if dtype == np.float32 and solver != "gd":
        # scikit-learn in float32 is no more accurate than fusedgrad in float32
        ref32 = sklm.LinearRegression(fit_intercept=fit_intercept).fit(X, y)
        assert (np.abs(model.coef_ - ref.coef_).max()
                <= max(2 * np.abs(ref32.coef_ - ref.coef_).max(), 1e-5 * scale))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("solver,fit_intercept", SOLVER_INTERCEPT)
def test_weighted_fit_matches_sklearn(solver, fit_intercept, dtype):
    sklm = pytest.importorskip("sklearn.linear_model")
    X, y = make_data(20000, 4, dtype, seed=11, noise=1.0)
    y = (y + 3.0 * (X[:, 0] - X[:, 0].mean()) ** 2).astype(dtype)  # not linear: weights matter
    w = make_weights(len(y), dtype, seed=12)
    tol = 1e-12 if dtype == np.float64 else 1e-6
    model = LinearRegression(solver=solver, fit_intercept=fit_intercept, tol=tol,
                             max_iter=20000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.fit(X, y, sample_weight=w)
    ref = sklm.LinearRegression(fit_intercept=fit_intercept).fit(
        X.astype(np.float64), y.astype(np.float64), sample_weight=w.astype(np.float64))
    unweighted = sklm.LinearRegression(fit_intercept=fit_intercept).fit(
        X.astype(np.float64), y.astype(np.float64))
    scale = np.abs(ref.coef_).max()
    rtol = (1e-7 if solver == "gd" else 1e-10) if dtype == np.float64 else 2e-4
    assert model.coef_.dtype == dtype and np.asarray(model.intercept_).dtype == dtype
    assert np.abs(model.coef_ - ref.coef_).max() <= rtol * scale
    assert abs(model.intercept_ - ref.intercept_) <= rtol * max(abs(ref.intercept_), scale)
    # the weights matter here: the unweighted fit is far away
    assert np.abs(unweighted.coef_ - ref.coef_).max() > 20 * 2e-4 * scale


@pytest.mark.parametrize("solver", SOLVERS)
def test_integer_weights_equal_repeated_rows(solver):
    """Weight k is k copies of the row; weight 0 is no row at all."""
    X, y = make_data(3000, 5, seed=13, noise=1.0)
    counts = np.random.default_rng(14).integers(0, 4, len(y))
    repeated = np.repeat(np.arange(len(y)), counts)
    kwargs = dict(solver=solver, tol=1e-12, max_iter=20000)
    weighted = quiet_fit_weighted(LinearRegression(**kwargs), X, y, counts)
    copies = quiet_fit(LinearRegression(**kwargs), X[repeated], y[repeated])
    rtol = 1e-7 if solver == "gd" else 1e-11
    assert_allclose(weighted.coef_, copies.coef_, rtol=rtol)
    assert_allclose(weighted.intercept_, copies.intercept_, rtol=rtol)
    assert weighted.rank_ == copies.rank_ == 5


def quiet_fit_weighted(model, X, y, sample_weight):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return model.fit(X, y, sample_weight=sample_weight)


def test_scalar_and_constant_weights_equal_unweighted():
    X, y = make_data(500, 3, seed=15)
    plain = quiet_fit(LinearRegression(), X, y)
    for sw in (2.5, np.full(len(y), 0.1), [3] * len(y)):
        model = quiet_fit_weighted(LinearRegression(), X, y, sw)
        assert_allclose(model.coef_, plain.coef_, rtol=1e-12)
        assert_allclose(model.intercept_, plain.intercept_, rtol=1e-12)


def test_fewer_weighted_rows_than_features_is_rank_deficient():
    """Rows of weight 0 do not count: 3 weighted rows cannot determine 5 features."""
    X, y = make_data(50, 5, seed=16)
    w = np.zeros(50)
    w[[3, 17, 40]] = 1.0
    for solver in ("auto", "qr"):
        with pytest.warns(RankDeficientWarning):
            model = LinearRegression(solver=solver).fit(X, y, sample_weight=w)
        assert model.rank_ == 2
        # the minimum-norm fit interpolates the three weighted rows
        assert_allclose(model.predict(X[w > 0]), y[w > 0], rtol=1e-9)


BAD_WEIGHTS = [
    ("too short", np.ones(3), ValueError, "sample_weight has 3 values but X has 4 samples"),
    ("2-D", np.ones((4, 1)), ValueError, "sample_weight must be 1-D"),
    ("negative", [1.0, -2.0, 1.0, 1.0], ValueError, "sample_weight must be non-negative"),
    ("all zero", np.zeros(4), ValueError, "sample_weight must have a positive sum"),
    ("zero scalar", 0.0, ValueError, "sample_weight must have a positive sum"),
    ("NaN", [1.0, np.nan, 1.0, 1.0], ValueError, "sample_weight contains NaN"),
    ("inf scalar", np.inf, ValueError, "sample_weight contains NaN or infinity"),
    ("strings", ["a", "b", "c", "d"], TypeError, "sample_weight must hold numbers"),
    ("dict", {}, TypeError, "sample_weight must be an array"),
]


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("what,sw,exc,match", BAD_WEIGHTS, ids=[b[0] for b in BAD_WEIGHTS])
def test_bad_sample_weight(what, sw, exc, match, solver):
    with pytest.raises(exc, match=match):
        LinearRegression(solver=solver).fit(*make_data(4, 2), sample_weight=sw)


def test_intercept_off_fits_through_origin():
    X, y = make_data(400, 3, seed=5)
    y = X @ np.array([1.0, -2.0, 0.5])  # exact, no intercept
    for solver in ["normal", "qr", "auto"]:
        m = quiet_fit(LinearRegression(fit_intercept=False, solver=solver), X, y)
        assert m.intercept_ == 0.0
        assert_allclose(m.coef_, [1.0, -2.0, 0.5], rtol=1e-12)
        with_b = quiet_fit(LinearRegression(solver=solver), X, y + 10.0)
        assert_allclose(with_b.coef_, [1.0, -2.0, 0.5], rtol=1e-12)
        assert with_b.intercept_ == pytest.approx(10.0, rel=1e-12)


def test_float32_large_n_matches_float64():
    """scikit-learn#33032: float32 regression drifts beyond ~500k rows. Here a float32 fit
    of 1e6 rows with large feature means agrees with the float64 fit of the same numbers."""
    rng = np.random.default_rng(2)
    N = 1_000_000
    X = (np.array([100.0, -50.0, 10.0]) + rng.standard_normal((N, 3))).astype(np.float32)
    y = (X.astype(np.float64) @ [2.0, -1.0, 0.5] + 7.0
         + 0.1 * rng.standard_normal(N)).astype(np.float32)
    m32 = quiet_fit(LinearRegression(solver="normal"), X, y)
    coef, b = lstsq_fit(X, y)
    assert m32.coef_.dtype == np.float32
    assert np.abs(m32.coef_ - coef).max() <= 1e-5 * np.abs(coef).max()
    # the intercept is ~ mean(y) - mean(X) w with terms ~200: float32 rounding of those
    assert abs(m32.intercept_ - b) <= 1e-5 * 250
    r32 = y - m32.predict(X).astype(np.float64)
    r64 = y - (X.astype(np.float64) @ coef + b)
    assert np.linalg.norm(r32) <= (1 + 1e-4) * np.linalg.norm(r64)


# ---------------------------------------------------------------------------
# Ill-conditioned and rank-deficient designs
# ---------------------------------------------------------------------------

def poly_data(N=4000, degree=10, seed=0):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0.0, 1.0, N))
    X = np.column_stack([t**k for k in range(1, degree + 1)])
    y = np.sin(6 * t) + 0.01 * rng.standard_normal(N)
    return X, y


def test_auto_is_as_accurate_as_lstsq_on_polynomial_features():
    X, y = poly_data()
    A = np.column_stack([np.ones(len(y)), X])
    w = np.linalg.lstsq(A, y, rcond=None)[0]
    r_ref = np.linalg.norm(y - A @ w)
    m = quiet_fit(LinearRegression(), X, y)  # no warning: QR handles it
    assert m.solver_ == "qr" and m.rank_ == X.shape[1]
    assert m.cond_ > 1e8  # the normal equations would be used below 1/sqrt(eps)
    r = np.linalg.norm(y - m.predict(X))
    assert r == pytest.approx(r_ref, rel=1e-9)
    assert_allclose(m.predict(X), A @ w, rtol=0, atol=1e-8)
    # same answer from the QR solver directly
    q = quiet_fit(LinearRegression(solver="qr"), X, y)
    assert np.linalg.norm(y - q.predict(X)) == pytest.approx(r_ref, rel=1e-9)


def test_forced_normal_warns_when_ill_conditioned():
    X, y = poly_data()
    with pytest.warns(IllConditionedWarning, match="solver='qr'"):
        m = LinearRegression(solver="normal").fit(X, y)
    assert m.solver_ == "normal"


def test_forced_normal_on_singular_gram_warns_and_returns_min_norm():
    X, y = make_data(300, 3, seed=8)
    X = np.column_stack([X, X[:, 0]])  # duplicate column
    with pytest.warns(RankDeficientWarning, match="rank 3 of 4"):
        m = LinearRegression(solver="normal").fit(X, y)
    coef, b = lstsq_fit(X, y)
    assert m.rank_ == 3
    assert_allclose(m.predict(X), X @ coef + b, rtol=1e-6)
    assert m.coef_[0] == pytest.approx(m.coef_[3], rel=1e-6)


@pytest.mark.parametrize("solver", ["auto", "qr"])
def test_rank_deficient_gives_min_norm_with_warning(solver):
    X, y = make_data(300, 4, seed=9)
    X = np.column_stack([X, X[:, 1] - 2.0 * X[:, 2], X[:, 0]])  # rank 4 of 6
    with pytest.warns(RankDeficientWarning, match="rank 4 of 6"):
        m = LinearRegression(solver=solver).fit(X, y)
    assert m.solver_ == "qr" and m.rank_ == 4
    coef, b = lstsq_fit(X, y)
    # predictions (and the residual) are unique even when the coefficients are not
    assert_allclose(m.predict(X), X @ coef + b, rtol=1e-10, atol=1e-10)
    # exact duplicates of equal norm share their weight equally
    assert m.coef_[0] == pytest.approx(m.coef_[5], rel=1e-10)


def test_constant_feature_gets_zero_weight():
    X, y = make_data(200, 3, seed=10)
    X[:, 1] = 4.0
    with pytest.warns(RankDeficientWarning, match="rank 2 of 3"):
        m = LinearRegression().fit(X, y)
    assert m.coef_[1] == 0.0
    coef, b = lstsq_fit(X, y)
    assert_allclose(m.predict(X), X @ coef + b, rtol=1e-10)


def test_fewer_samples_than_features():
    X, y = make_data(5, 8, seed=11)
    with pytest.warns(RankDeficientWarning):
        m = LinearRegression().fit(X, y)
    assert m.rank_ == 4  # 5 centred rows span 4 dimensions
    assert_allclose(m.predict(X), y, atol=1e-10)  # interpolates
    coef, _ = lstsq_fit(X / np.linalg.norm(X - X.mean(0), axis=0), y)
    # minimum norm in units of the column norms
    assert_allclose(m.coef_ * np.linalg.norm(X - X.mean(0), axis=0), coef, rtol=1e-8)


def test_single_sample():
    with pytest.warns(RankDeficientWarning):
        m = LinearRegression().fit([[1.0, 2.0]], [3.0])
    assert_allclose(m.coef_, 0.0)
    assert m.intercept_ == 3.0
    with pytest.warns(RankDeficientWarning, match="rank 1 of 2"):
        m = LinearRegression(fit_intercept=False).fit([[1.0, 2.0]], [5.0])
    # minimum norm in units of the column norms (1 and 2): z = (2.5, 2.5), w = z / norms
    assert_allclose(m.coef_, [2.5, 1.25], rtol=1e-14)
    assert_allclose(m.predict([[1.0, 2.0]]), [5.0], rtol=1e-14)


# ---------------------------------------------------------------------------
# Gradient descent
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gd_converges_to_normal_solution(dtype, fit_intercept):
    X, y = make_data(2000, 4, dtype, seed=12, offset=1.0)
    normal = quiet_fit(LinearRegression(solver="normal", fit_intercept=fit_intercept), X, y)
    tol = 1e-9 if dtype == np.float64 else 1e-6
    gd = quiet_fit(LinearRegression(solver="gd", fit_intercept=fit_intercept, tol=tol,
                                    max_iter=50000), X, y)
    rtol = 1e-6 if dtype == np.float64 else 1e-3
    assert_allclose(gd.coef_, normal.coef_, rtol=rtol, atol=rtol * np.abs(normal.coef_).max())
    assert gd.intercept_ == pytest.approx(normal.intercept_, rel=rtol, abs=rtol)
    assert gd.n_iter_ == len(gd.loss_curve_) >= 2
    curve = np.array(gd.loss_curve_)
    assert np.all(np.diff(curve) <= 1e-6 * curve[0])  # the safe step never increases the loss
    # analytic first loss: w = 0 (b = mean(y) with an intercept)
    y64 = y.astype(np.float64)
    r0 = y64 - y64.mean() if fit_intercept else y64
    assert curve[0] == pytest.approx(r0 @ r0 / (2 * len(y)), rel=1e-5)
    # the last loss is the minimum: the normal solution's loss
    r = y64 - normal.predict(X).astype(np.float64)
    assert curve[-1] == pytest.approx(r @ r / (2 * len(y)), rel=10 * rtol)


def test_gd_fixed_learning_rate_and_convergence_warning():
    X, y = make_data(300, 3, seed=13, offset=0.0)
    with pytest.warns(ConvergenceWarning, match="max_iter=3"):
        m = LinearRegression(solver="gd", max_iter=3, learning_rate=0.01).fit(X, y)
    assert m.n_iter_ == 3 and len(m.loss_curve_) == 3
    assert m.loss_curve_[2] < m.loss_curve_[0]


def test_gd_divergence_names_learning_rate():
    X, y = make_data(300, 3, seed=14)
    with pytest.raises(ValueError, match="learning_rate=1000.0"):
        LinearRegression(solver="gd", learning_rate=1000.0, max_iter=2000).fit(X, y)


def test_refit_with_other_solver_drops_gd_state():
    X, y = make_data(100, 2, seed=15)
    m = quiet_fit(LinearRegression(solver="gd"), X, y)
    assert hasattr(m, "loss_curve_")
    m.set_params(solver="normal")
    quiet_fit(m, X, y)
    assert not hasattr(m, "loss_curve_") and m.n_iter_ == 1


# ---------------------------------------------------------------------------
# Estimator contract
# ---------------------------------------------------------------------------

def test_params_repr_and_unfitted():
    m = LinearRegression(solver="qr", tol=1e-3)
    assert m.get_params() == dict(fit_intercept=True, solver="qr", learning_rate="auto",
                                  max_iter=1000, tol=1e-3, dtype=None, device="cpu")
    assert repr(m) == "LinearRegression(solver='qr', tol=0.001)"
    assert m.set_params(solver="gd") is m and m.solver == "gd"
    with pytest.raises(ValueError, match="Invalid parameter 'alpha'"):
        m.set_params(alpha=1.0)
    with pytest.raises(NotFittedError, match="fit"):
        m.predict([[1.0]])
    assert not hasattr(m, "coef_")


def test_fit_returns_self_and_input_unchanged():
    X, y = make_data(50, 2)
    X0, y0 = X.copy(), y.copy()
    m = LinearRegression()
    assert m.fit(X, y) is m
    assert np.array_equal(X, X0) and np.array_equal(y, y0)


def test_layouts_and_dtypes():
    X, y = make_data(3000, 5, seed=16)
    ref = quiet_fit(LinearRegression(), X, y)
    F = np.asfortranarray(X)
    wide = np.zeros((3000, 10))
    wide[:, ::2] = X
    for Xv in (F, wide[:, ::2], X.tolist()):
        assert_allclose(quiet_fit(LinearRegression(), Xv, y).coef_, ref.coef_, rtol=1e-12)
    ints = np.round(X * 10).astype(np.int64)
    m = quiet_fit(LinearRegression(), ints, y)
    assert m.coef_.dtype == np.float64
    m32 = quiet_fit(LinearRegression(dtype="float32"), X, y)
    assert m32.coef_.dtype == np.float32
    assert_allclose(m32.coef_, ref.coef_, rtol=1e-4)
    with pytest.warns(UserWarning, match="column-vector y"):
        col = LinearRegression().fit(X, y[:, None])
    assert_allclose(col.coef_, ref.coef_, rtol=1e-12)


def test_deterministic():
    X, y = make_data(20000, 6, seed=17)
    for solver in ["normal", "qr"]:
        a = quiet_fit(LinearRegression(solver=solver), X, y)
        b = quiet_fit(LinearRegression(solver=solver), X, y)
        assert np.array_equal(a.coef_, b.coef_) and a.intercept_ == b.intercept_


BAD_INPUTS = [
    ("3-D X", np.zeros((4, 2, 2)), np.zeros(4), ValueError, "X must be 2-D"),
    ("1-D X", np.arange(4.0), np.zeros(4), ValueError, "X must be 2-D.*reshape"),
    ("y too short", np.zeros((4, 2)), np.zeros(3), ValueError, "y has 3 values but X has 4"),
    ("2-D y", np.zeros((4, 2)), np.zeros((4, 2)), ValueError, "y must be 1-D"),
    ("NaN in X", np.array([[1.0, np.nan], [2.0, 3.0]]), np.zeros(2), ValueError, "X contains NaN"),
    ("inf in y", np.ones((2, 2)), np.array([1.0, np.inf]), ValueError, "y contains NaN"),
    ("strings X", [["a", "b"], ["c", "d"]], [1.0, 2.0], TypeError, "X must hold numbers"),
    ("strings y", np.ones((2, 1)), ["a", "b"], TypeError, "y must hold numbers"),
    ("empty X", np.zeros((0, 3)), np.zeros(0), ValueError, "X is empty"),
    ("no features", np.zeros((3, 0)), np.zeros(3), ValueError, "X has no features"),
    ("complex X", np.ones((2, 2), complex), np.zeros(2), ValueError, "X holds complex"),
    ("None y", np.ones((2, 2)), None, ValueError, "y is None"),
    ("object X", np.array([[1.0, {}]], dtype=object), [1.0], TypeError, "X holds objects"),
    ("str X", "abc", [1.0], TypeError, "X must be an array"),
]


@pytest.mark.parametrize("what,X,y,exc,match", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs(what, X, y, exc, match):
    with pytest.raises(exc, match=match):
        LinearRegression().fit(X, y)


def test_bad_predict_input():
    m = quiet_fit(LinearRegression(), *make_data(20, 3))
    with pytest.raises(ValueError, match="X has 2 features, but LinearRegression is expecting 3"):
        m.predict(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="X contains NaN"):
        m.predict(np.full((2, 3), np.nan))
    with pytest.raises(ValueError, match="y has 2 values but X has 20"):
        m.score(make_data(20, 3)[0], [1.0, 2.0])


@pytest.mark.parametrize(
    "params,exc,match",
    [
        (dict(solver="lsqr"), ValueError, "solver must be one of"),
        (dict(learning_rate=-1.0), ValueError, "learning_rate must be"),
        (dict(learning_rate="fast"), ValueError, "learning_rate must be"),
        (dict(max_iter=0), ValueError, "max_iter must be"),
        (dict(max_iter=2.5), ValueError, "max_iter must be"),
        (dict(tol=-1.0), ValueError, "tol must be"),
        (dict(dtype="int32"), ValueError, "dtype must be"),
        (dict(device="gpu"), ValueError, "device must be 'cpu' or 'cuda'"),
        (dict(fit_intercept="yes"), TypeError, "fit_intercept must be"),
    ],
)
def test_bad_params(params, exc, match):
    with pytest.raises(exc, match=match):
        LinearRegression(**params).fit(*make_data(10, 2))


# ---------------------------------------------------------------------------
# scikit-learn integration
# ---------------------------------------------------------------------------

def test_sklearn_clone_pipeline_grid_search_cross_val():
    sklearn = pytest.importorskip("sklearn")
    from sklearn.base import clone, is_regressor
    from sklearn.metrics import r2_score
    from sklearn.model_selection import GridSearchCV, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = make_data(300, 4, seed=18)
    m = LinearRegression(solver="qr", fit_intercept=False)
    c = clone(m)
    assert c is not m and c.get_params() == m.get_params()
    fitted = quiet_fit(LinearRegression(), X, y)
    assert not hasattr(clone(fitted), "coef_")
    assert is_regressor(m)
    assert fitted.score(X, y) == pytest.approx(r2_score(y, fitted.predict(X)), rel=1e-12)
    pipe = make_pipeline(StandardScaler(), LinearRegression())
    search = GridSearchCV(pipe, {"linearregression__fit_intercept": [False, True]}, cv=3)
    search.fit(X, y)
    assert search.best_params_ == {"linearregression__fit_intercept": True}
    scores = cross_val_score(LinearRegression(), X, y, cv=3)
    ref = cross_val_score(sklearn.linear_model.LinearRegression(), X, y, cv=3)
    assert_allclose(scores, ref, rtol=1e-10)


def test_sklearn_check_estimator():
    pytest.importorskip("sklearn")
    from sklearn.utils.estimator_checks import check_estimator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(LinearRegression(), on_fail=None)
    failed = {r["check_name"]: str(r["exception"]) for r in results if r["status"] == "failed"}
    assert failed == {}
