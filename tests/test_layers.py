"""The layer kernels (:mod:`fusedgrad.kernels.layers`) against their NumPy reference.

The reference (``activation_reference`` and friends in ``tests/cases.py``) is
checked first: its backward pass against central finite differences of its
forward pass, and values worked by hand. Then every row of
``cases.LAYER_CASES`` (each activation, forward and backward, with and
without ``dX``) over shapes that span one and many chunks, in float32 and
float64; then agreement with the sigmoid kernels, extreme values, the input
checks and ``out=``.
"""

import numpy as np
import pytest

from _numdiff import numerical_grad
from cases import (
    DTYPES,
    LAYER_ACTIVATIONS,
    LAYER_CASES,
    activation_reference,
    affine_activation_backward_reference,
    affine_activation_reference,
    as_float64,
    compare,
    outputs,
)
from fusedgrad.kernels import affine_sigmoid, affine_sigmoid_backward
from fusedgrad.kernels.layers import ACTIVATIONS, affine_activation, affine_activation_backward


def test_reference_and_kernel_offer_the_same_activations():
    assert tuple(LAYER_ACTIVATIONS) == ACTIVATIONS


# ---------------------------------------------------------------------------
# The reference
# ---------------------------------------------------------------------------


def _layer_inputs(seed, activation, N=5, d=4, h=3):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, d))
    W = rng.standard_normal((d, h)) / np.sqrt(d)
    b = rng.standard_normal(h)
    if activation == "relu":
        # keep every pre-activation away from the kink at 0, where the
        # finite difference straddles two slopes
        Z = X @ W + b
        b = b + np.where(np.abs(Z).min(axis=0) < 0.05, 0.2, 0.0)
    dA = rng.standard_normal((N, h))
    return X, W, b, dA


@pytest.mark.parametrize("activation", LAYER_ACTIVATIONS)
def test_reference_backward_is_the_derivative_of_the_forward(activation):
    """<dA, f(X W + b)> differentiated numerically in X, W and b."""
    X, W, b, dA = _layer_inputs(0, activation)
    A = affine_activation_reference(X, W, b, activation=activation)
    dW, db, dX = affine_activation_backward_reference(X, A, dA, W, activation=activation)

    def loss(X_, W_, b_):
        return np.sum(dA * affine_activation_reference(X_, W_, b_, activation=activation))

    np.testing.assert_allclose(dW, numerical_grad(lambda w: loss(X, w, b), W), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(db, numerical_grad(lambda c: loss(X, W, c), b), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(dX, numerical_grad(lambda x: loss(x, W, b), X), rtol=1e-6, atol=1e-9)
    assert affine_activation_backward_reference(X, A, dA, activation=activation)[2] is None


def test_reference_by_hand():
    Z = np.array([[0.0, np.log(3.0), -2.0]])
    np.testing.assert_allclose(activation_reference(Z, "logistic"),
                               [[0.5, 0.75, 1 / (1 + np.e**2)]])
    np.testing.assert_allclose(activation_reference(Z, "tanh"),
                               [[0.0, 0.8, -(np.e**4 - 1) / (np.e**4 + 1)]])
    np.testing.assert_array_equal(activation_reference(Z, "relu"), [[0.0, np.log(3.0), 0.0]])
    # softmax of (0, log 3, log 2): e^z = (1, 3, 2), sum 6
    np.testing.assert_allclose(activation_reference(np.log([[1.0, 3.0, 2.0]]), "softmax"),
                               [[1 / 6, 1 / 2, 1 / 3]])
    # softmax backward of dA = e_0 at A = (1/6, 1/2, 1/3): A_0 (delta_0k - A_k)
    dZ = affine_activation_backward_reference(np.eye(3), np.array([[1 / 6, 1 / 2, 1 / 3]] * 3),
                                              np.array([[1.0, 0.0, 0.0]] * 3),
                                              activation="softmax")[1] / 3
    np.testing.assert_allclose(dZ, [1 / 6 * 5 / 6, -1 / 6 * 1 / 2, -1 / 6 * 1 / 3])


# ---------------------------------------------------------------------------
# The kernels against the reference
# ---------------------------------------------------------------------------

# 64 to 2048 rows per chunk: 1 row, a few, and 3000 (several chunks and groups)
SHAPES = [
    dict(N=1, d=1, h=1),
    dict(N=2, d=3, h=1),
    dict(N=37, d=6, h=2),
    dict(N=200, d=13, h=9),
    dict(N=3000, d=7, h=5),
]


def _params():
    for name, case in LAYER_CASES.items():
        for shape in SHAPES:
            for dtype in DTYPES:
                yield pytest.param(case, shape, dtype,
                                   id=f"{name}-{case.shape_id(shape)}-{np.dtype(dtype).name}")


@pytest.mark.parametrize("case, shape, dtype", list(_params()))
def test_matches_reference(case, shape, dtype):
    args = case.make_args(shape, dtype, shape["N"])
    got = case.kernel(*args)
    for g in outputs(got):
        assert g is None or g.dtype == dtype
    compare(case, got, case.reference(*as_float64(args)), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_inputs_untouched_and_layouts_equal(name, dtype):
    case = LAYER_CASES[name]
    args = case.make_args(dict(N=300, d=6, h=4), dtype, 3)
    before = [a.copy() for a in args]
    expected = case.kernel(*args)
    for a, b in zip(args, before):
        np.testing.assert_array_equal(a, b)
    fortran = tuple(np.asfortranarray(a) for a in args)
    for g, e in zip(outputs(case.kernel(*fortran)), outputs(expected)):
        assert (g is None and e is None) or np.array_equal(g, e)
    for g, e in zip(outputs(case.kernel(*args, check_finite=False)), outputs(expected)):
        assert (g is None and e is None) or np.array_equal(g, e)


@pytest.mark.parametrize("dtype", DTYPES)
def test_logistic_is_the_sigmoid_kernel(dtype):
    """Same chunking, same sigmoid: the general kernel gives the sigmoid kernel's bits."""
    X, W, b = LAYER_CASES["affine_activation/logistic"].make_args(dict(N=2500, d=9, h=7), dtype, 4)
    A = affine_activation(X, W, b, activation="logistic")
    np.testing.assert_array_equal(A, affine_sigmoid(X, W, b))
    dA = np.random.default_rng(5).standard_normal(A.shape).astype(dtype)
    for g, e in zip(affine_activation_backward(X, A, dA, W, activation="logistic"),
                    affine_sigmoid_backward(X, A, dA, W)):
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("dtype", DTYPES)
def test_repeatable(dtype):
    case = LAYER_CASES["affine_activation_backward/tanh"]
    args = case.make_args(dict(N=5000, d=7, h=9), dtype, 6)
    first, second = case.kernel(*args), case.kernel(*args)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# Extreme values
# ---------------------------------------------------------------------------


@pytest.fixture
def no_warnings():
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        yield


@pytest.mark.usefixtures("no_warnings")
@pytest.mark.parametrize("dtype", DTYPES)
def test_saturation_is_exact(dtype):
    X = np.array([[1.0], [-1.0], [0.0]], dtype)
    W = np.array([[1e4, -1e4, 0.0]], dtype)
    b = np.zeros(3, dtype)
    np.testing.assert_array_equal(affine_activation(X, W, b, activation="tanh"),
                                  [[1, -1, 0], [-1, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(affine_activation(X, W, b, activation="relu"),
                                  [[1e4, 0, 0], [0, 1e4, 0], [0, 0, 0]])
    P = affine_activation(X, W, b, activation="softmax")
    np.testing.assert_array_equal(P, np.array([[1, 0, 0], [0, 1, 0], [1 / 3, 1 / 3, 1 / 3]], dtype))
    assert P.dtype == dtype
    # huge logits of equal size: no overflow, each row sums to 1
    P = affine_activation(np.ones((2, 1), dtype), np.array([[3e4, 3e4, -3e4]], dtype),
                          np.zeros(3, dtype), activation="softmax")
    np.testing.assert_array_equal(P, [[0.5, 0.5, 0.0]] * 2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tanh_accuracy_over_its_range(dtype):
    """Absolute error of a few units of the last place of 1, over [-20, 20]."""
    z = np.linspace(-20, 20, 40001).astype(dtype)
    got = affine_activation(z[:, None], np.ones((1, 1), dtype), np.zeros(1, dtype),
                            activation="tanh")[:, 0]
    err = np.abs(got.astype(np.float64) - np.tanh(z.astype(np.float64)))
    assert err.max() <= 4 * np.finfo(dtype).eps
    assert np.all(np.abs(got) <= 1) and np.all(np.sign(got) == np.sign(z))


# ---------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------


def _forward_args(dtype=np.float64):
    return LAYER_CASES["affine_activation/tanh"].make_args(dict(N=8, d=3, h=4), dtype, 0)


@pytest.mark.parametrize("activation", ["sigmoid", "", None, 1, "RELU"])
def test_bad_activation_named(activation):
    X, W, b = _forward_args()
    with pytest.raises(ValueError, match="activation"):
        affine_activation(X, W, b, activation=activation)
    A = affine_activation(X, W, b, activation="tanh")
    with pytest.raises(ValueError, match="activation"):
        affine_activation_backward(X, A, A, W, activation=activation)


def test_bad_arrays_named():
    X, W, b = _forward_args()
    with pytest.raises(ValueError, match=r"\bW\b"):
        affine_activation(X, W[:2], b, activation="relu")
    with pytest.raises(ValueError, match=r"\bb\b"):
        affine_activation(X, W, b[:2], activation="relu")
    with pytest.raises(TypeError, match=r"\bW\b"):
        affine_activation(X, W.astype(np.float32), b, activation="relu")
    with pytest.raises(TypeError, match=r"\bX\b"):
        affine_activation(X.astype(int), W, b, activation="relu")
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"\bX\b.*NaN"):
        affine_activation(bad, W, b, activation="relu")
    A = affine_activation(X, W, b, activation="relu")
    with pytest.raises(ValueError, match=r"\bdA\b"):
        affine_activation_backward(X, A, A[:5], W, activation="relu")
    with pytest.raises(ValueError, match=r"\bA\b"):
        affine_activation_backward(X, A[:, :3], A, W, activation="relu")
    # the activation is a keyword: never taken for out= or W by position
    with pytest.raises(TypeError, match="positional"):
        affine_activation(X, W, b, None, "relu")
    with pytest.raises(TypeError, match="activation"):
        affine_activation(X, W, b)
    with pytest.raises(TypeError, match="activation"):
        affine_activation_backward(X, A, A, W)


def test_out():
    X, W, b = _forward_args()
    out = np.full((8, 4), np.nan)
    assert affine_activation(X, W, b, out, activation="softmax") is out
    np.testing.assert_array_equal(out, affine_activation(X, W, b, activation="softmax"))
    with pytest.raises(ValueError, match=r"\bout\b"):
        affine_activation(X, W, b, np.empty((8, 3)), activation="softmax")
    with pytest.raises(TypeError, match=r"\bout\b"):
        affine_activation(X, W, b, np.empty((8, 4), np.float32), activation="softmax")
    with pytest.raises(ValueError, match=r"\bout\b.*overlaps"):
        Xo = np.zeros((8, 4))
        affine_activation(Xo, np.eye(4), np.zeros(4), Xo, activation="relu")


# ---------------------------------------------------------------------------
# mlp_loss_grad(rows=): minibatches gathered inside the fused kernel
# ---------------------------------------------------------------------------


def _mlp_args(dtype, N=3000):
    from cases import CASES

    return CASES["mlp_loss_grad"].make_args(dict(N=N, d=6, h=5, K=4), dtype, 11)


@pytest.mark.parametrize("chunk", [None, 64, 1])
@pytest.mark.parametrize("dtype", DTYPES)
def test_mlp_rows_equals_the_gathered_batch(dtype, chunk):
    from fusedgrad.kernels import mlp_loss_grad

    X, y, *params = _mlp_args(dtype)
    rng = np.random.default_rng(12)
    for rows in (rng.permutation(3000)[:1000], rng.integers(0, 3000, 700).astype(np.int32),
                 np.array([2999]), np.arange(3000)[::-1]):
        got = mlp_loss_grad(X, y[rows], *params, rows=rows, _max_chunk_rows=chunk)
        want = mlp_loss_grad(X[rows], y[rows], *params, _max_chunk_rows=chunk)
        for g, w in zip(got, want):
            assert g.dtype == dtype
            np.testing.assert_array_equal(g, w)
    from cases import CASES
    from fusedgrad import reference

    compare(CASES["mlp_loss_grad"], got,
            reference.mlp_loss_grad(*as_float64((X[rows], y[rows], *params))), dtype)


def test_mlp_rows_checked():
    from fusedgrad.kernels import mlp_loss_grad

    X, y, *params = _mlp_args(np.float64, N=50)
    rows = np.arange(10)
    with pytest.raises(TypeError, match=r"\brows\b"):
        mlp_loss_grad(X, y[rows], *params, rows=rows.astype(float))
    with pytest.raises(ValueError, match=r"\brows\b.*50"):
        mlp_loss_grad(X, y[:11], *params, rows=np.append(rows, 50))
    with pytest.raises(ValueError, match=r"\brows\b.*-1"):
        mlp_loss_grad(X, y[:11], *params, rows=np.append(rows, -1))
    with pytest.raises(ValueError, match=r"\brows\b"):
        mlp_loss_grad(X, y[:10], *params, rows=rows.reshape(2, 5))
    with pytest.raises(ValueError, match=r"\brows\b.*empty"):
        mlp_loss_grad(X, y[:0], *params, rows=rows[:0])
    with pytest.raises(ValueError, match=r"\by\b.*10 samples"):
        mlp_loss_grad(X, y, *params, rows=rows)
