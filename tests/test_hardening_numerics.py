"""Numerical hardening: extreme but finite inputs give finite, right answers.

Every kernel call here runs under ``np.errstate(all="raise")`` with warnings
turned into errors, so an overflow, invalid operation or division by zero
anywhere in the Python part of a kernel, or a NumPy warning, fails the test.
(The jitted loops themselves never raise floating-point errors; what they
compute is checked against exact values and the NumPy reference.) The
reference runs under the same state except for underflow: its ``exp`` of
very negative logits underflows to 0 by design.
"""

import math
import warnings

import numpy as np
import pytest

import fusedgrad.kernels as K
from cases import CASES, DTYPES, as_float64, compare
from fusedgrad import reference as ref


@pytest.fixture
def strict():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):
            yield


def reference(function, *args):
    with np.errstate(all="raise", under="ignore"):
        return getattr(ref, function)(*as_float64(args))


# ---------------------------------------------------------------------------
# Softmax cross-entropy
# ---------------------------------------------------------------------------


@pytest.mark.usefixtures("strict")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1e4, 1e30])
def test_softmax_ce_huge_logits_finite(dtype, scale):
    """Logits of +-scale: the label often at probability ~0 (loss ~ 2 * scale)."""
    rng = np.random.default_rng(1)
    N, Kc = 3000, 7  # several chunks
    Z = rng.choice([-scale, 0.0, scale], size=(N, Kc)).astype(dtype)
    y = rng.integers(0, Kc, N)
    loss, dZ = K.softmax_cross_entropy(Z, y)
    assert np.isfinite(loss) and np.all(np.isfinite(dZ))
    assert loss.dtype == dtype and dZ.dtype == dtype
    want_loss, want_dZ = reference("softmax_cross_entropy", Z, y)
    compare(CASES["softmax_cross_entropy"], (loss, dZ), (want_loss, want_dZ), dtype)
    # every row of the gradient sums to 0 (softmax minus one-hot)
    assert np.max(np.abs(dZ.sum(axis=1, dtype=np.float64))) <= 4 * np.finfo(dtype).eps / N


@pytest.mark.usefixtures("strict")
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_ce_label_at_probability_zero(dtype):
    """One class at +1e4, the label at -1e4: p(label) = e^-2e4 = 0 in any float."""
    N = 5
    Z = np.zeros((N, 4), dtype)
    Z[:, 0] = 1e4
    Z[:, 3] = -1e4
    y = np.full(N, 3)
    loss, dZ = K.softmax_cross_entropy(Z, y)
    # exact: log(e^1e4 + 2 + e^-1e4) - (-1e4) = 2e4 + log1p(2 e^-1e4) = 2e4
    assert loss == dtype(2e4)
    expect = np.zeros((N, 4))
    expect[:, 0] = 1.0 / N  # softmax puts all mass on class 0
    expect[:, 3] = -1.0 / N  # minus the one-hot of the label
    np.testing.assert_array_equal(dZ, expect.astype(dtype))


@pytest.mark.usefixtures("strict")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gap", [30.0, 90.0, 200.0, 800.0])
def test_softmax_ce_small_label_probability(dtype, gap):
    """The label's probability e^-gap, down to below the smallest normal float."""
    Z = np.array([[gap, 0.0, 0.0]], dtype)
    y = np.array([1])
    loss, dZ = K.softmax_cross_entropy(Z, y)
    t = math.exp(-gap)  # 0.0 for the largest gap, which is then exact
    exact_loss = gap + math.log1p(2 * t)
    assert abs(loss - exact_loss) <= 2 * np.finfo(dtype).eps * exact_loss
    p = t / (1 + 2 * t)
    np.testing.assert_allclose(dZ[0], [1 - 2 * p, p - 1, p], rtol=4 * np.finfo(dtype).eps,
                               atol=np.finfo(dtype).tiny)


@pytest.mark.usefixtures("strict")
def test_softmax_ce_float32_extremes():
    """Logits near the float32 limits: the gradient stays finite and exact; the
    loss is finite while the true loss is representable, else +inf (never NaN)."""
    big = np.float32(1e38)
    Z = np.array([[big, -big, 0.0]], np.float32)
    loss, dZ = K.softmax_cross_entropy(Z, [1])
    assert loss == np.float32(2e38)
    np.testing.assert_array_equal(dZ, [[1.0, -1.0, 0.0]])
    Z = np.array([[3e38, -3e38, 0.0]], np.float32)  # true loss 6e38 > float32 max
    loss, dZ = K.softmax_cross_entropy(Z, [1])
    assert loss == np.inf
    np.testing.assert_array_equal(dZ, [[1.0, -1.0, 0.0]])


# ---------------------------------------------------------------------------
# Sigmoid
# ---------------------------------------------------------------------------


@pytest.mark.usefixtures("strict")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("z", [1e3, 1e4, 1e30, float(np.finfo(np.float32).max)])
def test_sigmoid_saturates_without_overflow(dtype, z):
    """sigma(+z) = 1 and sigma(-z) = 0 exactly, in the kernel and the reference."""
    X = np.array([[1.0], [-1.0]], dtype)
    W = np.array([[z, -z]], dtype)
    b = np.zeros(2, dtype)
    A = K.affine_sigmoid(X, W, b)
    np.testing.assert_array_equal(A, [[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_array_equal(reference("affine_sigmoid", X, W, b), A)
    # through the bias too
    A = K.affine_sigmoid(np.zeros((3, 1), dtype), np.zeros((1, 2), dtype),
                         np.array([z, -z], dtype))
    np.testing.assert_array_equal(A, [[1.0, 0.0]] * 3)


@pytest.mark.usefixtures("strict")
@pytest.mark.parametrize("dtype", DTYPES)
def test_mlp_saturated_network_finite(dtype):
    """Hidden units saturated at 0/1 and logits of +-1e4: finite loss and gradients."""
    rng = np.random.default_rng(3)
    N, d, h, Kc = 2500, 4, 6, 3
    X = rng.choice([-1.0, 1.0], size=(N, d)).astype(dtype)
    y = rng.integers(0, Kc, N)
    W1 = rng.choice([-1e3, 1e3], size=(d, h)).astype(dtype)
    b1 = np.zeros(h, dtype)
    W2 = rng.choice([-1e4, 1e4], size=(h, Kc)).astype(dtype)
    b2 = np.zeros(Kc, dtype)
    loss, dW1, db1, dW2, db2 = K.mlp_loss_grad(X, y, W1, b1, W2, b2)
    for g in (loss, dW1, db1, dW2, db2):
        assert np.all(np.isfinite(g)) and np.asarray(g).dtype == dtype
    want = reference("mlp_loss_grad", X, y, W1, b1, W2, b2)
    compare(CASES["mlp_loss_grad"], (loss, dW1, db1, dW2, db2), want, dtype)


# ---------------------------------------------------------------------------
# OLS
# ---------------------------------------------------------------------------


@pytest.mark.usefixtures("strict")
@pytest.mark.parametrize("dtype", DTYPES)
def test_ols_rank_deficient_kernels(dtype):
    """A duplicated column: the loss, gradient and Gram matrix stay exact and
    finite (the kernels solve nothing, so rank does not matter to them)."""
    rng = np.random.default_rng(4)
    X = rng.standard_normal((300, 3)).astype(dtype)
    X = np.column_stack([X, X[:, 0], np.zeros(300, dtype)])  # rank 3 of 5
    y = rng.standard_normal(300).astype(dtype)
    w = rng.standard_normal(5).astype(dtype)
    loss, grad = K.ols_loss_grad(X, y, w)
    compare(CASES["ols_loss_grad"], (loss, grad), reference("ols_loss_grad", X, y, w), dtype)
    assert grad[0] == grad[3] and grad[4] == 0  # equal columns, equal gradients
    XtX, Xty = K.gram(X, y)
    compare(CASES["gram"], (XtX, Xty), reference("gram", X, y), dtype)
    np.testing.assert_array_equal(XtX, XtX.T)
    assert np.linalg.matrix_rank(XtX.astype(np.float64)) == 3


@pytest.mark.usefixtures("strict")
def test_ols_loss_float32_large_residuals():
    """Residuals of 1e19: r**2 = 1e38 per row, the loss 5e37 fits float32."""
    N = 1000
    X = np.ones((N, 1), np.float32)
    y = np.full(N, 1e19, np.float32)
    w = np.zeros(1, np.float32)
    loss, grad = K.ols_loss_grad(X, y, w)
    assert np.isfinite(loss) and abs(loss / np.float32(5e37) - 1) < 1e-5
    assert np.all(np.isfinite(grad))


# ---------------------------------------------------------------------------
# The models
# ---------------------------------------------------------------------------


def _model_warnings():
    """The warnings the models document; every other warning is an error."""
    from fusedgrad.models import ConvergenceWarning, IllConditionedWarning, RankDeficientWarning

    return RankDeficientWarning, IllConditionedWarning, ConvergenceWarning


def _rank_deficient_designs():
    """Exactly rank deficient in float32 too: small integers, exact combinations."""
    rng = np.random.default_rng(11)
    base = rng.integers(-4, 5, (60, 3)).astype(np.float64)
    return {
        "duplicate-column": np.column_stack([base, base[:, 1]]),
        "combination": np.column_stack([base, base[:, 0] - 2 * base[:, 2]]),
        "zero-column": np.column_stack([base, np.zeros(60)]),
        "constant-column": np.column_stack([base, np.full(60, 3.0)]),  # = the intercept
        "more-features-than-samples": rng.integers(-4, 5, (4, 7)).astype(np.float64),
    }


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("solver", ["auto", "normal", "qr", "gd"])
@pytest.mark.parametrize("design", sorted(_rank_deficient_designs()))
@pytest.mark.parametrize("dtype", DTYPES)
def test_ols_rank_deficient_fit(design, solver, fit_intercept, dtype):
    """Every solver on a rank-deficient X: finite coefficients (never NaN), the
    least-squares fitted values, the documented RankDeficientWarning from the
    direct solvers; and no other warning or floating-point error."""
    from fusedgrad.models import LinearRegression

    documented = _model_warnings()
    X = _rank_deficient_designs()[design]
    rng = np.random.default_rng(12)
    y = X @ rng.standard_normal(X.shape[1]) + 0.1 * rng.standard_normal(X.shape[0]) + 1.0
    X, y = X.astype(dtype), y.astype(dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with np.errstate(all="raise", under="ignore"):
            model = LinearRegression(solver=solver, fit_intercept=fit_intercept,
                                     max_iter=5000).fit(X, y)
            pred = model.predict(X)
    others = [w for w in caught if not issubclass(w.category, documented)]
    assert not others, [str(w.message) for w in others]
    assert np.all(np.isfinite(model.coef_)) and np.isfinite(model.intercept_)
    # the least-squares fitted values are unique even where the coefficients are not
    A = np.column_stack([X.astype(np.float64), np.ones(len(X))]) if fit_intercept \
        else X.astype(np.float64)
    best = A @ np.linalg.lstsq(A, y.astype(np.float64), rcond=None)[0]
    scale = np.max(np.abs(best))
    tol = 1e-3 if solver == "gd" or dtype is np.float32 else 1e-8
    assert np.max(np.abs(pred - best)) <= tol * scale, (model.solver_, model.rank_)
    deficient = design != "constant-column" or fit_intercept  # else the column is a feature
    if solver != "gd" and deficient:
        assert model.rank_ < X.shape[1]
        assert any(issubclass(w.category, documented[0]) for w in caught), \
            "no RankDeficientWarning"


@pytest.mark.parametrize("dtype", DTYPES)
def test_ols_rank_deficient_minimum_norm(dtype):
    """solver='qr' without intercept returns the minimum-norm solution, as lstsq."""
    from fusedgrad.models import LinearRegression, RankDeficientWarning

    X = _rank_deficient_designs()["combination"]
    y = X @ np.array([1.0, 2.0, -1.0, 0.5])
    with pytest.warns(RankDeficientWarning):
        model = LinearRegression(solver="qr", fit_intercept=False).fit(X.astype(dtype),
                                                                      y.astype(dtype))
    # minimum norm in units of the column norms (the documented scaling)
    norms = np.linalg.norm(X, axis=0)
    want = np.linalg.lstsq(X / norms, y, rcond=None)[0] / norms
    tol = 1e-4 if dtype is np.float32 else 1e-10
    np.testing.assert_allclose(model.coef_, want, rtol=tol, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("solver, params", [
    ("sgd", dict(hidden_layer_sizes=(8,))),
    ("sgd", dict(hidden_layer_sizes=(8, 4), activation="relu")),
    ("gd", dict(hidden_layer_sizes=(8,))),
], ids=["sgd-fused", "sgd-layered-relu", "gd-fused"])
def test_mlp_too_large_learning_rate_raises_documented_error(solver, params, dtype):
    """A step size that makes training diverge stops with the documented
    ValueError naming the learning rate; no floating-point warning on the way."""
    from fusedgrad.models import MLPClassifier

    rng = np.random.default_rng(13)
    X = (10 * rng.standard_normal((200, 5))).astype(dtype)
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)
    model = MLPClassifier(solver=solver, learning_rate_init=1e30, max_iter=50, random_state=0,
                          dtype=np.dtype(dtype).name, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"), pytest.raises(ValueError, match=r"diverged.*learning_rate"):
            model.fit(X, y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_gd_too_large_learning_rate_raises(dtype):
    from fusedgrad.models import LinearRegression

    rng = np.random.default_rng(14)
    X = rng.standard_normal((100, 3)).astype(dtype)
    y = (X @ np.ones(3)).astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"), pytest.raises(ValueError, match="learning_rate"):
            LinearRegression(solver="gd", learning_rate=1e6, max_iter=10_000).fit(X, y)
