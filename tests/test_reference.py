"""Tests of the oracle itself, :mod:`fusedgrad.reference`.

Every formula is checked against something that does not share its code:
central finite differences or the complex step (``tests/_numdiff.py``),
``numpy.linalg.lstsq``, ``scipy.special``, plain Python loops, and one tiny
network worked by hand with ``math.exp`` / ``math.log``.
"""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp
from scipy.special import softmax as scipy_softmax

from _numdiff import complex_step_grad, numerical_grad
from fusedgrad import reference as ref

# Tolerances. FD: central differences in float64 against an analytic
# derivative. CS: complex step (exact to rounding). DTYPE: an implementation
# in the given dtype against the same formula evaluated some other way.
FD = dict(rtol=1e-6, atol=1e-8)
CS = dict(rtol=1e-12, atol=1e-14)
DTYPE_TOL = {
    np.float32: dict(rtol=2e-5, atol=1e-6),
    np.float64: dict(rtol=1e-12, atol=1e-14),
}
DTYPES = [np.float32, np.float64]


def _rng(seed=0):
    return np.random.default_rng(seed)


def _mlp_params(rng, n, d, h, k, dtype=np.float64):
    X = rng.standard_normal((n, d)).astype(dtype)
    y = rng.integers(0, k, size=n)
    W1 = rng.standard_normal((d, h)).astype(dtype)
    b1 = rng.standard_normal(h).astype(dtype)
    W2 = rng.standard_normal((h, k)).astype(dtype)
    b2 = rng.standard_normal(k).astype(dtype)
    return X, y, W1, b1, W2, b2


# ---------------------------------------------------------------------------
# The helpers themselves, on derivatives known in closed form
# ---------------------------------------------------------------------------


def test_numdiff_helpers_on_known_derivatives():
    x = np.array([0.3, -1.2, 2.0])
    # f(x) = sum(sin(x) * x); df/dx_j = cos(x_j) x_j + sin(x_j)
    expected = np.cos(x) * x + np.sin(x)
    f = lambda v: np.sum(np.sin(v) * v)  # noqa: E731
    np.testing.assert_allclose(numerical_grad(f, x), expected, **FD)
    np.testing.assert_allclose(complex_step_grad(f, x), expected, **CS)
    # vector function: J[i, j] = d(M x)_i / dx_j = M[i, j]
    M = np.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(numerical_grad(lambda v: M @ v, x), M, **FD)
    np.testing.assert_allclose(complex_step_grad(lambda v: M @ v, x), M, **CS)


# ---------------------------------------------------------------------------
# 1. Affine map and quadratic form
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n, m", [(1, 1), (3, 4), (5, 2)])
def test_affine_jacobians(n, m):
    rng = _rng(n * 10 + m)
    x, A, b = rng.standard_normal(n), rng.standard_normal((n, m)), rng.standard_normal(m)
    dy_dx, dy_db = ref.affine_jacobians(A)
    assert dy_dx.shape == (m, n) and dy_db.shape == (m, m)

    J_fd = numerical_grad(lambda v: ref.affine(v, A, b), x)  # J[i, j] = dy_i/dx_j
    np.testing.assert_allclose(dy_dx, J_fd, **FD)
    np.testing.assert_allclose(dy_dx, complex_step_grad(lambda v: ref.affine(v, A, b), x), **CS)

    np.testing.assert_array_equal(dy_db, np.eye(m))
    np.testing.assert_allclose(numerical_grad(lambda v: ref.affine(x, A, v), b), np.eye(m), **FD)


def test_affine_jacobians_returns_a_copy():
    A = _rng().standard_normal((2, 3))
    dy_dx, _ = ref.affine_jacobians(A)
    dy_dx[:] = 0.0
    assert np.all(A != 0.0)


def test_affine_batch_matches_row_by_row():
    rng = _rng(1)
    X, A, b = rng.standard_normal((4, 3)), rng.standard_normal((3, 2)), rng.standard_normal(2)
    Y = ref.affine(X, A, b)
    for i in range(4):
        expected = [sum(X[i, j] * A[j, k] for j in range(3)) + b[k] for k in range(2)]
        np.testing.assert_allclose(Y[i], expected, **DTYPE_TOL[np.float64])


@pytest.mark.parametrize("n", [1, 2, 5])
def test_quadratic_form_and_gradients(n):
    rng = _rng(n)
    x = rng.standard_normal(n)
    A = rng.standard_normal((n, n))  # deliberately not symmetric
    if n > 1:
        assert not np.allclose(A, A.T)

    # value, by the double sum
    expected = sum(x[i] * A[i, j] * x[j] for i in range(n) for j in range(n))
    np.testing.assert_allclose(ref.quadratic_form(x, A), expected, **DTYPE_TOL[np.float64])

    gx = ref.quadratic_form_grad_x(x, A)
    np.testing.assert_allclose(gx, complex_step_grad(lambda v: ref.quadratic_form(v, A), x), **CS)
    np.testing.assert_allclose(gx, numerical_grad(lambda v: ref.quadratic_form(v, A), x), **FD)

    gA = ref.quadratic_form_grad_A(x)
    assert gA.shape == (n, n)
    np.testing.assert_allclose(gA, complex_step_grad(lambda M: ref.quadratic_form(x, M), A), **CS)
    np.testing.assert_allclose(gA, numerical_grad(lambda M: ref.quadratic_form(x, M), A), **FD)


# ---------------------------------------------------------------------------
# 2. OLS
# ---------------------------------------------------------------------------


OLS_SHAPES = [(1, 1), (5, 1), (7, 3), (20, 5)]


@pytest.mark.parametrize("n, d", OLS_SHAPES)
def test_ols_loss_by_loop(n, d):
    rng = _rng(n + d)
    X, y, w = rng.standard_normal((n, d)), rng.standard_normal(n), rng.standard_normal(d)
    sq = sum((y[i] - sum(X[i, j] * w[j] for j in range(d))) ** 2 for i in range(n))
    np.testing.assert_allclose(ref.ols_loss(X, y, w), sq / (2 * n), **DTYPE_TOL[np.float64])


@pytest.mark.parametrize("n, d", OLS_SHAPES)
def test_ols_grad_numerically(n, d):
    rng = _rng(n * d)
    X, y, w = rng.standard_normal((n, d)), rng.standard_normal(n), rng.standard_normal(d)
    g = ref.ols_grad(X, y, w)
    loss = lambda v: ref.ols_loss(X, y, v)  # noqa: E731
    np.testing.assert_allclose(g, complex_step_grad(loss, w), **CS)
    np.testing.assert_allclose(g, numerical_grad(loss, w), **FD)

    L, g2 = ref.ols_loss_grad(X, y, w)
    assert L == ref.ols_loss(X, y, w)
    np.testing.assert_array_equal(g2, g)


@pytest.mark.parametrize("n, d", OLS_SHAPES)
def test_ols_solve_against_lstsq(n, d):
    rng = _rng(100 + n + d)
    X, y = rng.standard_normal((n, d)), rng.standard_normal(n)
    w = ref.ols_solve(X, y)
    w_lstsq = np.linalg.lstsq(X, y, rcond=None)[0]
    np.testing.assert_allclose(w, w_lstsq, rtol=1e-9, atol=1e-11)
    # the gradient vanishes at the minimiser
    np.testing.assert_allclose(ref.ols_grad(X, y, w), 0.0, atol=1e-12)


def test_gram_by_loops():
    X = np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 4.0]])
    y = np.array([2.0, -1.0, 3.0])
    XtX, Xty = ref.gram(X, y)
    n, d = X.shape
    XtX_loop = [[sum(X[i, a] * X[i, b] for i in range(n)) for b in range(d)] for a in range(d)]
    Xty_loop = [sum(y[i] * X[i, a] for i in range(n)) for a in range(d)]
    # small integers and halves: the sums are exact
    np.testing.assert_array_equal(XtX, XtX_loop)
    np.testing.assert_array_equal(Xty, Xty_loop)
    np.testing.assert_array_equal(XtX, [[10.25, 1.0], [1.0, 21.0]])
    np.testing.assert_array_equal(Xty, [0.5, 17.0])


# ---------------------------------------------------------------------------
# 3. Sigmoid and the affine-sigmoid layer
# ---------------------------------------------------------------------------


def test_sigmoid_matches_logistic_formula():
    z = np.linspace(-30.0, 30.0, 601)
    expected = 1.0 / (1.0 + np.exp(-z))
    # 1 + tanh(z/2) cancels for z << 0, so the error there is absolute
    # (about machine epsilon), not relative.
    np.testing.assert_allclose(ref.sigmoid(z), expected, rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(ref.sigmoid(z.astype(np.float32)), expected, rtol=1e-6, atol=1e-7)
    assert ref.sigmoid(0.0) == 0.5


def test_sigmoid_derivative_complex_step():
    z = np.linspace(-8.0, 8.0, 9)
    s = ref.sigmoid(z)
    d = complex_step_grad(lambda v: ref.sigmoid(v), z)
    np.testing.assert_allclose(np.diag(d), s * (1.0 - s), **CS)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_saturates_exactly_without_warnings(dtype):
    z = np.array([1e3, -1e3, 1e4, -1e4], dtype=dtype)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        s = ref.sigmoid(z)
        scalars = [ref.sigmoid(dtype(v)) for v in z]
    np.testing.assert_array_equal(s, [1.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(scalars, [1.0, 0.0, 1.0, 0.0])
    assert s.dtype == dtype
    assert all(type(v) is dtype for v in scalars)


@pytest.mark.parametrize("n, n_in, n_out", [(1, 1, 1), (4, 3, 2), (6, 2, 5)])
def test_affine_sigmoid_backward_numerically(n, n_in, n_out):
    rng = _rng(n + 7 * n_in + 13 * n_out)
    X = rng.standard_normal((n, n_in))
    W = rng.standard_normal((n_in, n_out))
    b = rng.standard_normal(n_out)
    dA = rng.standard_normal((n, n_out))
    A = ref.affine_sigmoid(X, W, b)
    np.testing.assert_allclose(A, 1.0 / (1.0 + np.exp(-(X @ W + b))), rtol=1e-13, atol=1e-16)

    dW, db, dX = ref.affine_sigmoid_backward(X, A, dA, W)

    # the scalar whose gradient the backward pass returns: sum(A * dA)
    def f(X_, W_, b_):
        return np.sum(ref.affine_sigmoid(X_, W_, b_) * dA)

    np.testing.assert_allclose(dW, numerical_grad(lambda v: f(X, v, b), W), **FD)
    np.testing.assert_allclose(db, numerical_grad(lambda v: f(X, W, v), b), **FD)
    np.testing.assert_allclose(dX, numerical_grad(lambda v: f(v, W, b), X), **FD)
    # sigmoid is analytic, so the complex step applies too
    np.testing.assert_allclose(dW, complex_step_grad(lambda v: f(X, v, b), W), **CS)

    dW0, db0, dX0 = ref.affine_sigmoid_backward(X, A, dA)
    assert dX0 is None
    np.testing.assert_array_equal(dW0, dW)
    np.testing.assert_array_equal(db0, db)


# ---------------------------------------------------------------------------
# 4. Softmax and cross-entropy
# ---------------------------------------------------------------------------


def _cross_entropy_by_loops(Z, y):
    """-mean(log softmax(Z)[i, y_i]) with math.exp / math.log, no shifting."""
    total = 0.0
    for row, label in zip(Z.tolist(), y.tolist()):
        denom = sum(math.exp(v) for v in row)
        total -= math.log(math.exp(row[label]) / denom)
    return total / len(y)


@pytest.mark.parametrize("n, k", [(1, 2), (5, 3), (8, 4)])
def test_softmax_cross_entropy_moderate_logits(n, k):
    rng = _rng(n * k)
    Z = 3.0 * rng.standard_normal((n, k))
    y = rng.integers(0, k, size=n)
    Z_before = Z.copy()
    loss, dZ = ref.softmax_cross_entropy(Z, y)
    np.testing.assert_array_equal(Z, Z_before)  # input untouched

    np.testing.assert_allclose(loss, _cross_entropy_by_loops(Z, y), rtol=1e-12)
    expected = np.mean(logsumexp(Z, axis=1) - Z[np.arange(n), y])
    np.testing.assert_allclose(loss, expected, rtol=1e-12)

    dZ_fd = numerical_grad(lambda v: ref.softmax_cross_entropy(v, y)[0], Z)
    np.testing.assert_allclose(dZ, dZ_fd, **FD)
    np.testing.assert_allclose(dZ.sum(axis=1), 0.0, atol=1e-15)

    S = ref.softmax(Z)
    np.testing.assert_allclose(S, scipy_softmax(Z, axis=1), rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(S.sum(axis=1), 1.0, rtol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_huge_logits_exact(dtype):
    Z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]], dtype=dtype)
    y = np.array([1, 2])
    # exp(-2e4) underflows to 0 by design; overflow, 0/0 or inf-inf must not occur
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        loss, dZ = ref.softmax_cross_entropy(Z, y)
        S = ref.softmax(Z)
    # row 0: log(1 + 0 + 0) - (-2e4) = 2e4;  row 1: log(1) - 0 = 0
    assert loss == dtype(1e4)
    assert type(loss) is dtype and dZ.dtype == dtype and S.dtype == dtype
    # dZ = (softmax - onehot) / 2
    np.testing.assert_array_equal(dZ, np.array([[0.5, -0.5, 0.0], [0.0, 0.0, 0.0]], dtype=dtype))
    np.testing.assert_array_equal(S, [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_huge_random_logits_finite(dtype):
    rng = _rng(3)
    Z = rng.uniform(-1e4, 1e4, size=(16, 5)).astype(dtype)
    Z[0] = 1e4  # a row of ties at the top
    y = rng.integers(0, 5, size=16)
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        loss, dZ = ref.softmax_cross_entropy(Z, y)
        S = ref.softmax(Z)
    assert np.isfinite(loss) and np.all(np.isfinite(dZ)) and np.all(np.isfinite(S))
    Z64 = Z.astype(np.float64)
    expected = np.mean(logsumexp(Z64, axis=1) - Z64[np.arange(16), y])
    np.testing.assert_allclose(loss, expected, **DTYPE_TOL[dtype])
    np.testing.assert_allclose(S.sum(axis=1), 1.0, **DTYPE_TOL[dtype])
    np.testing.assert_allclose(S[0], 0.2, **DTYPE_TOL[dtype])
    assert np.all(np.abs(dZ) <= 1.0 / 16)


# ---------------------------------------------------------------------------
# 5. The 2-layer MLP
# ---------------------------------------------------------------------------


MLP_SHAPES = [(5, 3, 4, 3), (1, 1, 1, 2), (6, 2, 3, 4)]


@pytest.mark.parametrize("n, d, h, k", MLP_SHAPES)
def test_mlp_forward(n, d, h, k):
    X, y, W1, b1, W2, b2 = _mlp_params(_rng(n), n, d, h, k)
    Z1, A, Z2, Yhat = ref.mlp_forward(X, W1, b1, W2, b2)
    assert Z1.shape == A.shape == (n, h)
    assert Z2.shape == Yhat.shape == (n, k)
    np.testing.assert_allclose(Yhat.sum(axis=1), 1.0, rtol=1e-14)
    np.testing.assert_allclose(A, 1.0 / (1.0 + np.exp(-Z1)), rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(Yhat, scipy_softmax(Z2, axis=1), rtol=1e-12, atol=1e-16)
    loss = ref.mlp_loss_grad(X, y, W1, b1, W2, b2)[0]
    np.testing.assert_allclose(loss, _cross_entropy_by_loops(Z2, y), rtol=1e-12)


def _check_mlp_grads(X, y, W1, b1, W2, b2, tol=FD):
    loss, dW1, db1, dW2, db2 = ref.mlp_loss_grad(X, y, W1, b1, W2, b2)
    params = [W1, b1, W2, b2]
    for p, (name, grad) in enumerate(zip(["W1", "b1", "W2", "b2"], [dW1, db1, dW2, db2])):
        assert grad.shape == params[p].shape, name

        def f(v, p=p):
            args = list(params)
            args[p] = v
            return ref.mlp_loss_grad(X, y, *args)[0]

        np.testing.assert_allclose(grad, numerical_grad(f, params[p]), err_msg=name, **tol)


@pytest.mark.parametrize("n, d, h, k", MLP_SHAPES)
def test_mlp_loss_grad_numerically(n, d, h, k):
    _check_mlp_grads(*_mlp_params(_rng(10 + n), n, d, h, k))


def test_mlp_loss_grad_non_contiguous_input():
    X, y, W1, b1, W2, b2 = _mlp_params(_rng(4), 5, 3, 4, 3)
    big = np.zeros((10, 6))
    big[::2, ::2] = X
    Xs = big[::2, ::2]
    assert not Xs.flags.c_contiguous
    W1f = np.asfortranarray(W1)
    for a, b in zip(ref.mlp_loss_grad(Xs, y, W1f, b1, W2, b2),
                    ref.mlp_loss_grad(X, y, W1, b1, W2, b2)):
        np.testing.assert_allclose(a, b, **DTYPE_TOL[np.float64])


def test_mlp_worked_by_hand():
    # One sample, d = 1, h = 1, K = 2, label 0.
    x, label = 2.0, 0
    W1, b1 = np.array([[0.5]]), np.array([math.log(3.0) - 1.0])
    W2, b2 = np.array([[2.0, -2.0]]), np.array([0.0, 1.0])
    # z1 = x W1 + b1 = 2 * 0.5 + ln 3 - 1 = ln 3
    # a  = 1 / (1 + e^{-ln 3}) = 1 / (1 + 1/3) = 3/4;   a (1 - a) = 3/16
    # z2 = a W2 + b2 = [0.75 * 2, 0.75 * -2 + 1] = [1.5, -0.5]
    # softmax: p0 = 1 / (1 + e^{-2}),  p1 = e^{-0.5} / (e^{1.5} + e^{-0.5}) = 1 / (1 + e^2)
    # loss = -log p0 = log(1 + e^{-2}) ~= 0.126928
    p1 = 1.0 / (1.0 + math.exp(2.0))  # ~= 0.119203
    loss = math.log(1.0 + math.exp(-2.0))
    # dL/dz2 = (yhat - onehot) / N = [p0 - 1, p1] = [-p1, p1]
    dZ2 = [-p1, p1]
    # dW2 = a^T dZ2 = 0.75 * [-p1, p1];  db2 = dZ2
    dW2 = [[-0.75 * p1, 0.75 * p1]]
    db2 = dZ2
    # dA  = dZ2 W2^T = -p1 * 2 + p1 * (-2) = -4 p1
    # dZ1 = dA * a (1 - a) = -4 p1 * 3/16 = -0.75 p1
    # dW1 = x^T dZ1 = 2 * -0.75 p1 = -1.5 p1;  db1 = dZ1 = -0.75 p1
    dW1 = [[-1.5 * p1]]
    db1 = [-0.75 * p1]

    X, y = np.array([[x]]), np.array([label])
    got = ref.mlp_loss_grad(X, y, W1, b1, W2, b2)
    tol = dict(rtol=1e-14, atol=1e-16)
    np.testing.assert_allclose(got[0], loss, **tol)
    for g, e, name in zip(got[1:], [dW1, db1, dW2, db2], ["dW1", "db1", "dW2", "db2"]):
        np.testing.assert_allclose(g, e, err_msg=name, **tol)
    Z1, A, Z2, Yhat = ref.mlp_forward(X, W1, b1, W2, b2)
    np.testing.assert_allclose(Z1, [[math.log(3.0)]], **tol)
    np.testing.assert_allclose(A, [[0.75]], **tol)
    np.testing.assert_allclose(Z2, [[1.5, -0.5]], **tol)
    np.testing.assert_allclose(Yhat, [[1.0 - p1, p1]], **tol)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 6),
    d=st.integers(1, 4),
    h=st.integers(1, 4),
    k=st.integers(2, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_mlp_loss_grad_numerically_random_shapes(n, d, h, k, seed):
    _check_mlp_grads(*_mlp_params(_rng(seed), n, d, h, k))


@pytest.mark.parametrize("n, d, h, k", MLP_SHAPES)
def test_mlp_loss_grad_float32_close_to_float64(n, d, h, k):
    params64 = _mlp_params(_rng(20 + n), n, d, h, k)
    X, y, W1, b1, W2, b2 = params64
    params32 = [X.astype(np.float32), y] + [p.astype(np.float32) for p in (W1, b1, W2, b2)]
    for a, b in zip(ref.mlp_loss_grad(*params32), ref.mlp_loss_grad(*params64)):
        np.testing.assert_allclose(a, b, **DTYPE_TOL[np.float32])


# ---------------------------------------------------------------------------
# 6. dtype: every function keeps float32 as float32 (and float64 as float64)
# ---------------------------------------------------------------------------


def _dtype_cases():
    """function name -> builder of its arguments in a given dtype."""

    def arr(rng, shape, dtype):
        return rng.standard_normal(shape).astype(dtype)

    def mlp_args(rng, dt):
        X, y, W1, b1, W2, b2 = _mlp_params(rng, 4, 3, 2, 3, dt)
        return X, W1, b1, W2, b2

    def backward_args(rng, dt, with_W):
        X, W, b = arr(rng, (4, 3), dt), arr(rng, (3, 2), dt), arr(rng, 2, dt)
        args = (X, ref.affine_sigmoid(X, W, b), arr(rng, (4, 2), dt))
        return args + (W,) if with_W else args

    labels = np.array([0, 2, 1, 2])
    return {
        "affine": lambda r, dt: (arr(r, (4, 3), dt), arr(r, (3, 2), dt), arr(r, 2, dt)),
        "affine_jacobians": lambda r, dt: (arr(r, (3, 2), dt),),
        "quadratic_form": lambda r, dt: (arr(r, 3, dt), arr(r, (3, 3), dt)),
        "quadratic_form_grad_x": lambda r, dt: (arr(r, 3, dt), arr(r, (3, 3), dt)),
        "quadratic_form_grad_A": lambda r, dt: (arr(r, 3, dt),),
        "ols_loss": lambda r, dt: (arr(r, (5, 2), dt), arr(r, 5, dt), arr(r, 2, dt)),
        "ols_grad": lambda r, dt: (arr(r, (5, 2), dt), arr(r, 5, dt), arr(r, 2, dt)),
        "ols_loss_grad": lambda r, dt: (arr(r, (5, 2), dt), arr(r, 5, dt), arr(r, 2, dt)),
        "ols_solve": lambda r, dt: (arr(r, (5, 2), dt), arr(r, 5, dt)),
        "gram": lambda r, dt: (arr(r, (5, 2), dt), arr(r, 5, dt)),
        "sigmoid": lambda r, dt: (arr(r, (4, 3), dt),),
        "affine_sigmoid": lambda r, dt: (arr(r, (4, 3), dt), arr(r, (3, 2), dt), arr(r, 2, dt)),
        "affine_sigmoid_backward": lambda r, dt: backward_args(r, dt, True),
        "affine_sigmoid_backward/no_W": lambda r, dt: backward_args(r, dt, False),
        "softmax": lambda r, dt: (arr(r, (4, 3), dt),),
        "softmax_cross_entropy": lambda r, dt: (arr(r, (4, 3), dt), labels),
        "mlp_forward": mlp_args,
        "mlp_loss_grad": lambda r, dt: (lambda a: (a[0], labels) + a[1:])(mlp_args(r, dt)),
        "network_loss_grad": lambda r, dt: (
            arr(r, (4, 3), dt), labels,
            [arr(r, (3, 5), dt), arr(r, (5, 2), dt), arr(r, (2, 3), dt)],
            [arr(r, 5, dt), arr(r, 2, dt), arr(r, 3, dt)], "tanh"),
    }


DTYPE_CASES = _dtype_cases()


def test_dtype_cases_cover_every_public_function():
    assert {name.split("/")[0] for name in DTYPE_CASES} == set(ref.__all__)


def _flatten(out):
    if isinstance(out, (tuple, list)):
        for o in out:
            yield from _flatten(o)
    elif out is not None:
        yield out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(DTYPE_CASES))
def test_dtype_preserved(name, dtype):
    func = getattr(ref, name.split("/")[0])
    outputs = list(_flatten(func(*DTYPE_CASES[name](_rng(), dtype))))
    assert outputs
    for out in outputs:
        assert isinstance(out, (np.ndarray, np.generic)), type(out)
        assert out.dtype == dtype, (name, out.dtype)
