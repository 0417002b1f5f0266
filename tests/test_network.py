"""``network_loss_grad`` (any depth, any hidden activation) against a NumPy reference.

The reference (:func:`fusedgrad.reference.network_loss_grad`, also the oracle
of the network rows of ``tests/cases.py``) is the lecture's backward pass
written layer by layer in plain NumPy; it is checked first against
central finite differences of its own loss. The kernel is then compared with it over depths 1-4, every hidden
activation, both dtypes and chunk sizes that make the rows span many chunks
and groups; with :func:`mlp_loss_grad` on the lecture's network; for
``rows=``, the thread count, the dtype of the outputs and every input check.
"""

import numba
import numpy as np
import pytest

from _numdiff import numerical_grad
from cases import TOLERANCE, rel_error
from fusedgrad import reference as ref
from fusedgrad.kernels import mlp_loss_grad, network_loss_grad
from fusedgrad.kernels._blas import single_threaded_blas
from fusedgrad.kernels.network import HIDDEN_ACTIVATIONS, PreparedLossGrad

SHAPES = {
    "softmax regression": (6, 4),
    "one hidden": (7, 9, 5),
    "two hidden": (5, 8, 6, 3),
    "three hidden": (4, 6, 3, 7, 2),
}


def network_reference(X, y, coefs, intercepts, activation):
    """:func:`fusedgrad.reference.network_loss_grad` in float64."""
    return ref.network_loss_grad(np.asarray(X, np.float64), y,
                                 [np.asarray(W, np.float64) for W in coefs],
                                 [np.asarray(b, np.float64) for b in intercepts], activation)


def make_network(sizes, N, dtype, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], N)
    coefs = [(rng.standard_normal((a, b)) / np.sqrt(a)).astype(dtype)
             for a, b in zip(sizes[:-1], sizes[1:])]
    intercepts = [(0.5 * rng.standard_normal(b)).astype(dtype) for b in sizes[1:]]
    return X, y, coefs, intercepts


def _flat(loss, dWs, dbs):
    return [np.float64(loss)] + [np.asarray(g, np.float64) for g in list(dWs) + list(dbs)]


# ---------------------------------------------------------------------------
# The reference
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh"])
@pytest.mark.parametrize("name", ["one hidden", "three hidden"])
def test_reference_matches_finite_differences(name, activation):
    X, y, coefs, intercepts = make_network(SHAPES[name], 11, np.float64, 1)
    _, dWs, dbs = network_reference(X, y, coefs, intercepts, activation)
    params = coefs + intercepts
    for p, g in zip(params, dWs + dbs):
        def loss_at(value, p=p):
            saved = p.copy()
            p[...] = value
            try:
                return network_reference(X, y, coefs, intercepts, activation)[0]
            finally:
                p[...] = saved
        np.testing.assert_allclose(g, numerical_grad(loss_at, p.copy()), rtol=1e-6, atol=1e-9)


def test_reference_is_the_lectures_mlp_for_one_logistic_layer():
    X, y, coefs, intercepts = make_network(SHAPES["one hidden"], 13, np.float64, 2)
    got = network_reference(X, y, coefs, intercepts, "logistic")
    want = ref.mlp_loss_grad(X, y, coefs[0], intercepts[0], coefs[1], intercepts[1])
    assert got[0] == pytest.approx(want[0], rel=1e-14)
    for g, w in zip(got[1] + got[2], (want[1], want[3], want[2], want[4])):
        np.testing.assert_allclose(g, w, rtol=1e-13, atol=1e-15)


# ---------------------------------------------------------------------------
# The kernel against the reference
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", HIDDEN_ACTIVATIONS)
@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("N, max_chunk", [(1, None), (300, None), (300, 16)])
def test_kernel_matches_reference(name, activation, dtype, N, max_chunk):
    X, y, coefs, intercepts = make_network(SHAPES[name], N, dtype, 3)
    loss, dWs, dbs = network_loss_grad(X, y, coefs, intercepts, activation=activation,
                                       _max_chunk_rows=max_chunk)
    assert np.asarray(loss).dtype == dtype
    assert all(g.dtype == dtype and g.shape == p.shape
               for g, p in zip(dWs + dbs, coefs + intercepts))
    want = network_reference(X, y, coefs, intercepts, activation)
    tol = TOLERANCE[np.dtype(dtype)]
    for g, w in zip(_flat(loss, dWs, dbs), _flat(*want)):
        assert rel_error(g, w) <= tol


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_logistic_layer_agrees_with_mlp_loss_grad(dtype):
    X, y, (W1, W2), (b1, b2) = make_network((12, 20, 4), 500, dtype, 4)
    loss, (dW1, dW2), (db1, db2) = network_loss_grad(X, y, [W1, W2], [b1, b2],
                                                     activation="logistic")
    want = mlp_loss_grad(X, y, W1, b1, W2, b2)
    tol = TOLERANCE[np.dtype(dtype)]
    for g, w in zip((loss, dW1, db1, dW2, db2), want):
        assert rel_error(g, w) <= tol


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_rows_equal_the_gathered_batch_bit_for_bit(activation):
    X, y, coefs, intercepts = make_network(SHAPES["two hidden"], 400, np.float32, 5)
    rows = np.random.default_rng(6).integers(0, 400, 250)  # any order, repeats
    got = network_loss_grad(X, y[rows], coefs, intercepts, activation=activation, rows=rows,
                            _max_chunk_rows=32)
    want = network_loss_grad(X[rows], y[rows], coefs, intercepts, activation=activation,
                             _max_chunk_rows=32)
    for g, w in zip(_flat(*got), _flat(*want)):
        assert np.array_equal(g, w)


def test_same_bits_for_any_number_of_threads():
    X, y, coefs, intercepts = make_network(SHAPES["two hidden"], 3000, np.float64, 7)
    threads = numba.get_num_threads()
    results = []
    try:
        for n in sorted({1, threads}):
            numba.set_num_threads(n)
            results.append(_flat(*network_loss_grad(X, y, coefs, intercepts, activation="tanh",
                                                    _max_chunk_rows=64)))
    finally:
        numba.set_num_threads(threads)
    for g, w in zip(results[0], results[-1]):
        assert np.array_equal(g, w)


@pytest.mark.parametrize("name, activation", [
    (name, activation) for name in ("one hidden", "three hidden")
    for activation in HIDDEN_ACTIVATIONS if (name, activation) != ("one hidden", "logistic")
])
def test_prepared_step_equals_the_kernel(name, activation):
    """The models' step (no validation, reused buffers) gives the kernel's bits,
    also with rows, and overwrites its previous gradients completely."""
    X, y, coefs, intercepts = make_network(SHAPES[name], 700, np.float32, 8)
    step = PreparedLossGrad(coefs, intercepts, activation)
    rows = np.random.default_rng(9).permutation(700)[:333].astype(np.intp)
    with single_threaded_blas():
        for _ in range(2):
            loss, grads = step(X, y.astype(np.intp))
            want = network_loss_grad(X, y, coefs, intercepts, activation=activation)
            assert loss == float(want[0])
            assert all(np.array_equal(g, w) for g, w in zip(grads, want[1] + want[2]))
            loss, grads = step(X, y[rows].astype(np.intp), rows)
            want = network_loss_grad(X, y[rows], coefs, intercepts, activation=activation,
                                     rows=rows)
            assert loss == float(want[0])
            assert all(np.array_equal(g, w) for g, w in zip(grads, want[1] + want[2]))


def test_prepared_step_of_the_lectures_network_is_mlp_loss_grad():
    X, y, coefs, intercepts = make_network((10, 16, 3), 900, np.float64, 10)
    step = PreparedLossGrad(coefs, intercepts, "logistic")
    rows = np.random.default_rng(12).integers(0, 900, 500).astype(np.intp)
    for batch_rows in (None, rows):
        labels = y if batch_rows is None else y[rows]
        with single_threaded_blas():
            loss, (dW1, dW2, db1, db2) = step(X, labels.astype(np.intp), batch_rows)
        want = mlp_loss_grad(X, labels, coefs[0], intercepts[0], coefs[1], intercepts[1],
                             rows=batch_rows)
        assert loss == float(want[0])
        for g, w in zip((dW1, db1, dW2, db2), want[1:]):
            assert np.array_equal(g, w)


# ---------------------------------------------------------------------------
# Bad input: a clear error naming the argument, before any compiled loop
# ---------------------------------------------------------------------------


def _good():
    X, y, coefs, intercepts = make_network(SHAPES["two hidden"], 20, np.float64, 11)
    return dict(X=X, y=y, coefs=coefs, intercepts=intercepts, activation="relu")


@pytest.mark.parametrize("change, error, match", [
    (dict(activation="softmax"), ValueError, "activation"),
    (dict(activation="Relu"), ValueError, "activation"),
    (dict(activation=None), ValueError, "activation"),
    (dict(coefs=np.zeros((5, 8))), TypeError, "coefs"),
    (dict(coefs=[]), ValueError, "coefs"),
    (dict(intercepts="b"), TypeError, "intercepts"),
])
def test_bad_arguments(change, error, match):
    args = _good()
    args.update(change)
    with pytest.raises(error, match=match):
        network_loss_grad(**args)


def test_bad_layers_name_the_array():
    args = _good()
    with pytest.raises(ValueError, match="one array per layer"):
        network_loss_grad(**dict(args, intercepts=args["intercepts"][:2]))
    coefs = list(args["coefs"])
    coefs[1] = np.zeros((7, 6))  # the previous layer has 8 units
    with pytest.raises(ValueError, match=r"coefs\[1\]"):
        network_loss_grad(**dict(args, coefs=coefs))
    intercepts = list(args["intercepts"])
    intercepts[2] = np.zeros(4)  # 3 classes
    with pytest.raises(ValueError, match=r"intercepts\[2\]"):
        network_loss_grad(**dict(args, intercepts=intercepts))
    coefs = list(args["coefs"])
    coefs[2] = coefs[2].astype(np.float32)
    with pytest.raises(TypeError, match=r"coefs\[2\]"):
        network_loss_grad(**dict(args, coefs=coefs))
    coefs = [c.copy() for c in args["coefs"]]
    coefs[1][2, 3] = np.nan
    with pytest.raises(ValueError, match=r"coefs\[1\]"):
        network_loss_grad(**dict(args, coefs=coefs))


def test_bad_arrays_in_the_lists_are_named():
    args = _good()
    for bad, error in ((np.ma.masked_array(args["coefs"][0]), TypeError),
                       (args["coefs"][0].astype(np.complex128), TypeError),
                       (args["coefs"][0][None], ValueError),
                       ("weights", TypeError)):
        coefs = list(args["coefs"])
        coefs[0] = bad
        with pytest.raises(error, match=r"coefs\[0\]"):
            network_loss_grad(**dict(args, coefs=coefs))
    intercepts = list(args["intercepts"])
    intercepts[1] = np.full(6, np.inf)
    with pytest.raises(ValueError, match=r"intercepts\[1\]"):
        network_loss_grad(**dict(args, intercepts=intercepts))
    X = args["X"].copy()
    X[3, 1] = np.nan
    with pytest.raises(ValueError, match="X"):
        network_loss_grad(**dict(args, X=X))
    network_loss_grad(**dict(args, X=X), check_finite=False)  # the caller's choice


def test_bad_labels_and_rows():
    args = _good()
    with pytest.raises(ValueError, match="y"):
        network_loss_grad(**dict(args, y=np.full(20, 3)))  # 3 classes: labels 0..2
    with pytest.raises(ValueError, match="y"):
        network_loss_grad(**dict(args, y=np.zeros(19, int)))
    with pytest.raises(ValueError, match="rows"):
        network_loss_grad(**dict(args, y=np.zeros(2, int)), rows=np.array([0, 20]))
    with pytest.raises(ValueError, match="y"):
        network_loss_grad(**dict(args, y=np.zeros(3, int)), rows=np.array([0, 1]))


def test_prepared_step_rejects_parameters_it_would_misread():
    X, y, coefs, intercepts = make_network(SHAPES["two hidden"], 10, np.float32, 13)
    with pytest.raises(ValueError, match=r"coefs\[1\]"):
        PreparedLossGrad([coefs[0], np.asfortranarray(coefs[1]), coefs[2]], intercepts, "relu")
    with pytest.raises(ValueError, match=r"intercepts\[0\]"):
        PreparedLossGrad(coefs, [intercepts[0].astype(np.float64)] + intercepts[1:], "relu")


# ---------------------------------------------------------------------------
# Sample weights
# ---------------------------------------------------------------------------


def weighted_reference(X, y, coefs, intercepts, activation, s):
    """The weighted mean of the rows' own losses and gradients, each row through the
    reference alone: ``sum_i s_i (loss_i, grads_i) / sum_i s_i`` (float64)."""
    total = None
    for i in range(X.shape[0]):
        row = _flat(*network_reference(X[i:i + 1], y[i:i + 1], coefs, intercepts, activation))
        part = [float(s[i]) * r for r in row]
        total = part if total is None else [t + p for t, p in zip(total, part)]
    return [t / float(np.sum(s, dtype=np.float64)) for t in total]


def make_weights(N, dtype, seed):
    rng = np.random.default_rng(seed)
    s = rng.uniform(0.0, 3.0, N) ** 2
    s[rng.random(N) < 0.25] = 0.0
    s[:N // 4] = 0.0  # whole chunks of weight 0
    s[-1] = 1.0
    return s.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ["logistic", "relu"])
@pytest.mark.parametrize("name", ["softmax regression", "one hidden", "two hidden"])
@pytest.mark.parametrize("max_chunk", [None, 8])
def test_weighted_kernel_is_the_weighted_mean_of_the_rows(name, activation, dtype, max_chunk):
    X, y, coefs, intercepts = make_network(SHAPES[name], 60, dtype, 8)
    s = make_weights(60, dtype, 9)
    got = network_loss_grad(X, y, coefs, intercepts, activation=activation, sample_weight=s,
                            _max_chunk_rows=max_chunk)
    assert np.asarray(got[0]).dtype == dtype and all(g.dtype == dtype for g in got[1] + got[2])
    want = weighted_reference(X, y, coefs, intercepts, activation, s)
    tol = TOLERANCE[np.dtype(dtype)]
    for g, w in zip(_flat(*got), want):
        assert rel_error(g, w) <= tol
    if len(coefs) == 2 and activation == "logistic":  # the lecture's kernel
        W1, W2 = coefs
        b1, b2 = intercepts
        lecture = mlp_loss_grad(X, y, W1, b1, W2, b2, sample_weight=s,
                                _max_chunk_rows=max_chunk)
        for g, w in zip([np.float64(lecture[0])] + [np.asarray(a, np.float64)
                                                    for a in lecture[1:]],
                        [want[0], want[1], want[3], want[2], want[4]]):
            assert rel_error(g, w) <= tol


def test_weighted_rows_and_integer_weights():
    """With ``rows``, the weights are those of the selected rows; an integer weight
    is that many copies of the row (against the unweighted reference)."""
    X, y, coefs, intercepts = make_network(SHAPES["two hidden"], 200, np.float64, 10)
    rows = np.random.default_rng(11).integers(0, 200, 90)
    counts = np.random.default_rng(12).integers(0, 4, 90).astype(np.float64)
    counts[0] = 1.0
    got = network_loss_grad(X, y[rows], coefs, intercepts, activation="tanh", rows=rows,
                            sample_weight=counts, _max_chunk_rows=16)
    copies = np.repeat(rows, counts.astype(int))
    want = network_reference(X[copies], y[copies], coefs, intercepts, "tanh")
    for g, w in zip(_flat(*got), _flat(*want)):
        assert rel_error(g, w) <= 1e-12


def test_unit_weights_are_the_unweighted_kernel_bit_for_bit():
    X, y, coefs, intercepts = make_network(SHAPES["two hidden"], 300, np.float32, 13)
    ones = np.ones(300, np.float32)
    got = network_loss_grad(X, y, coefs, intercepts, activation="relu", sample_weight=ones)
    want = network_loss_grad(X, y, coefs, intercepts, activation="relu")
    for g, w in zip(_flat(*got), _flat(*want)):
        assert np.array_equal(g, w)


@pytest.mark.parametrize("value, error, match", [
    (np.ones(20, np.float32), TypeError, "sample_weight has dtype float32 but X"),
    (np.ones(19), ValueError, r"sample_weight must have shape \(20,\)"),
    (np.ones((20, 1)), ValueError, r"sample_weight must have shape \(20,\)"),
    (np.r_[np.ones(19), -0.5], ValueError, "sample_weight must be non-negative: it holds -0.5"),
    (np.zeros(20), ValueError, "sample_weight must have a positive sum"),
    (np.r_[np.ones(19), np.inf], ValueError, "sample_weight contains NaN or infinity"),
    (np.array(["a"] * 20), TypeError, "sample_weight must be a float32 or float64 array"),
])
def test_bad_weights_are_named(value, error, match):
    X, y, coefs, intercepts = make_network(SHAPES["one hidden"], 20, np.float64, 14)
    with pytest.raises(error, match=match):
        network_loss_grad(X, y, coefs, intercepts, activation="relu", sample_weight=value)
    with pytest.raises(error, match=match):
        mlp_loss_grad(X, y, *coefs[:1], *intercepts[:1], coefs[1], intercepts[1],
                      sample_weight=value)
