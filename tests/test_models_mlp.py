"""MLPClassifier: scikit-learn's estimator, trained by the fused kernels.

Checked against independent references: scikit-learn's own MLPClassifier
(same initial weights, same minibatches, same update rules: the weights must
agree to float64 rounding), central finite differences of the loss, and
properties that must hold whatever the numbers (probabilities sum to one,
identical seeds give identical models, a memmap trains like the array it
holds, without copying it).
"""

import io
import math
import pickle
import tracemalloc
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.neural_network import MLPClassifier as SkMLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from _numdiff import numerical_grad
from fusedgrad.models import _persist, load
from fusedgrad.models import mlp as mlp_module
from fusedgrad.models._base import ConvergenceWarning, NotFittedError
from fusedgrad.models.mlp import MLPClassifier


def blobs(n=300, d=5, k=3, seed=0, dtype=np.float64, spread=0.6):
    """Gaussian clusters around random centres: an easy, seeded problem."""
    rng = np.random.default_rng(seed)
    centres = 2.0 * rng.standard_normal((k, d))
    y = rng.integers(0, k, n)
    X = centres[y] + spread * rng.standard_normal((n, d))
    return X.astype(dtype), y


def fit_quietly(model, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)  # scikit-learn's ConvergenceWarning
        return model.fit(X, y)


def max_rel_diff(ours, theirs):
    """Largest normwise relative difference over lists of arrays."""
    return max(np.abs(a - b).max() / np.abs(b).max() for a, b in zip(ours, theirs))


def params_of(model):
    return model.coefs_ + model.intercepts_


# ---------------------------------------------------------------------------
# The estimator at work
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["adam", "sgd", "gd"])
def test_fit_predict_score(solver):
    X, y = blobs(400, d=4, k=3, seed=1)
    lr = {"adam": 0.01, "sgd": 0.1, "gd": 0.5}[solver]
    model = fit_quietly(MLPClassifier((16,), solver=solver, learning_rate_init=lr, max_iter=150,
                                      random_state=0), X, y)
    assert model.score(X, y) > 0.9
    P = model.predict_proba(X)
    assert P.shape == (400, 3) and P.dtype == np.float32
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(model.predict(X), model.classes_[np.argmax(P, axis=1)])
    np.testing.assert_allclose(model.predict_log_proba(X), np.log(P), rtol=1e-5, atol=1e-6)
    assert model.loss_ == model.loss_curve_[-1] and len(model.loss_curve_) == model.n_iter_
    assert model.loss_curve_[-1] < model.loss_curve_[0]
    assert model.n_features_in_ == 4 and model.n_layers_ == 3 and model.n_outputs_ == 3
    assert model.out_activation_ == "softmax"
    assert [c.shape for c in model.coefs_] == [(4, 16), (16, 3)]
    assert [b.shape for b in model.intercepts_] == [(16,), (3,)]


def test_predict_log_proba_finite_where_probabilities_underflow():
    X, y = blobs(200, d=3, k=2, seed=2, spread=0.1)
    model = fit_quietly(MLPClassifier((8,), solver="adam", learning_rate_init=0.05, max_iter=50,
                                      random_state=0), X, y)
    far = 1e4 * X[:5]
    log_p = model.predict_log_proba(far)
    assert np.all(np.isfinite(log_p))
    np.testing.assert_allclose(np.exp(log_p), model.predict_proba(far), atol=1e-6)


def test_string_labels():
    X, y = blobs(300, d=4, k=3, seed=3)
    names = np.array(["cat", "dog", "eel"])[y]
    model = fit_quietly(MLPClassifier((8,), solver="adam", learning_rate_init=0.02, max_iter=80,
                                      random_state=0), X, list(names))
    np.testing.assert_array_equal(model.classes_, ["cat", "dog", "eel"])
    pred = model.predict(X)
    assert pred.dtype.kind == "U" and set(pred) <= {"cat", "dog", "eel"}
    assert model.score(X, names) > 0.9
    # the same model as with the integer codes of the same classes
    codes = fit_quietly(MLPClassifier((8,), solver="adam", learning_rate_init=0.02, max_iter=80,
                                      random_state=0), X, y)
    for a, b in zip(params_of(model), params_of(codes)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["int8", "uint64-huge", "sparse-int64", "bool", "float"])
def test_labels_of_any_number_type(kind):
    """Labels are classes, whatever their type and spread: the same model as on 0..k-1."""
    X, y = blobs(90, d=3, k=3, seed=31)
    labels = {
        "int8": np.array([-128, 5, 127], np.int8)[y],
        "uint64-huge": np.array([2**63 + 7, 2**63 + 9, 2**64 - 1], np.uint64)[y],
        "sparse-int64": np.array([-(2**40), 3, 2**50])[y],
        "bool": (y == 1),
        "float": np.array([-1.0, 0.0, 2.5e9])[y],
    }[kind]
    kw = dict(hidden_layer_sizes=(4,), max_iter=3, random_state=0)
    model = fit_quietly(MLPClassifier(**kw), X, labels)
    np.testing.assert_array_equal(model.classes_, np.unique(labels))
    assert model.classes_.dtype == labels.dtype
    codes = np.searchsorted(np.unique(labels), labels)
    reference = fit_quietly(MLPClassifier(**kw), X, codes)
    for a, b in zip(params_of(model), params_of(reference)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(model.predict(X), model.classes_[reference.predict(X)])


def test_binary_problem_uses_two_softmax_units():
    X, y = blobs(200, d=3, k=2, seed=4)
    labels = np.where(y == 1, 7, -3)
    model = fit_quietly(MLPClassifier((6,), solver="adam", learning_rate_init=0.02, max_iter=60,
                                      random_state=0), X, labels)
    np.testing.assert_array_equal(model.classes_, [-3, 7])
    assert model.n_outputs_ == 2 and model.coefs_[-1].shape == (6, 2)
    assert model.predict_proba(X).shape == (200, 2)
    assert model.score(X, labels) > 0.9


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("x_dtype", [np.float32, np.float64, np.int64])
def test_dtype_kept(dtype, x_dtype):
    X, y = blobs(120, d=3, k=3, seed=5)
    X = (4 * X).astype(x_dtype)
    model = fit_quietly(MLPClassifier((5,), activation="tanh", solver="sgd", max_iter=3,
                                      dtype=dtype, random_state=0), X, y)
    for p in params_of(model):
        assert p.dtype == dtype
    assert model.predict_proba(X).dtype == dtype
    assert model.predict_log_proba(X).dtype == dtype


def test_float32_and_float64_train_alike():
    X, y = blobs(300, d=4, k=3, seed=6)
    kw = dict(hidden_layer_sizes=(8,), solver="sgd", learning_rate_init=0.1, max_iter=10,
              shuffle=False, random_state=0)
    m32 = fit_quietly(MLPClassifier(dtype="float32", **kw), X, y)
    m64 = fit_quietly(MLPClassifier(dtype="float64", **kw), X, y)
    assert max_rel_diff(params_of(m32), params_of(m64)) < 1e-4
    np.testing.assert_allclose(m32.loss_curve_, m64.loss_curve_, rtol=1e-5)


@pytest.mark.parametrize("hidden, activation", [((9,), "logistic"), ((6, 5), "relu"),
                                                ((), "identity")])
def test_same_random_state_same_model(hidden, activation):
    X, y = blobs(250, d=4, k=3, seed=7)
    kw = dict(hidden_layer_sizes=hidden, activation=activation, solver="sgd", batch_size=32,
              max_iter=5, early_stopping=True, n_iter_no_change=100, random_state=42)
    a = fit_quietly(MLPClassifier(**kw), X, y)
    b = fit_quietly(MLPClassifier(**kw), X, y)
    for p, q in zip(params_of(a), params_of(b)):
        np.testing.assert_array_equal(p, q)
    assert a.loss_curve_ == b.loss_curve_ and a.validation_scores_ == b.validation_scores_
    c = fit_quietly(MLPClassifier(**{**kw, "random_state": 43}), X, y)
    assert not np.array_equal(a.coefs_[0], c.coefs_[0])


# ---------------------------------------------------------------------------
# Agreement with scikit-learn: the same initial weights, batches and updates
# ---------------------------------------------------------------------------

N_AGREE = 240
LBFGS_AGREEMENT_LOGISTIC = dict(hidden_layer_sizes=(10,), activation="logistic", alpha=1e-3)


@pytest.fixture(scope="module")
def agree_data():
    X, y = blobs(N_AGREE, d=6, k=4, seed=8, spread=1.5)
    return X, y


def _both(X, y, **kw):
    # activation given: the defaults differ ('logistic' here, 'relu' in scikit-learn)
    settings = dict(max_iter=20, tol=0.0, n_iter_no_change=10**6, random_state=3,
                    activation="logistic")
    settings.update(kw)
    ours = fit_quietly(MLPClassifier(dtype="float64", **settings), X, y)
    if settings.get("solver") == "gd":
        settings.update(solver="sgd", batch_size=X.shape[0], shuffle=False, momentum=0.0)
    theirs = fit_quietly(SkMLPClassifier(**settings), X, y)
    return ours, theirs


AGREEMENT = {
    # the lecture's full-batch gradient descent, both ways of asking for it
    "sgd-full-batch": dict(hidden_layer_sizes=(10,), activation="logistic", solver="sgd",
                           momentum=0.0, alpha=0.0, batch_size=N_AGREE, shuffle=False,
                           learning_rate="constant", learning_rate_init=0.5),
    "gd": dict(hidden_layer_sizes=(10,), activation="logistic", solver="gd", alpha=0.0,
               learning_rate_init=0.5),
    "sgd-momentum-l2-shuffled": dict(hidden_layer_sizes=(10,), activation="logistic",
                                     solver="sgd", momentum=0.9, alpha=0.01, batch_size=50,
                                     learning_rate_init=0.05),
    "sgd-plain-momentum-invscaling": dict(hidden_layer_sizes=(10,), solver="sgd",
                                          nesterovs_momentum=False, learning_rate="invscaling",
                                          power_t=0.25, batch_size=64, learning_rate_init=0.2),
    "adam": dict(hidden_layer_sizes=(10,), solver="adam", alpha=1e-3, batch_size=40,
                 learning_rate_init=0.01),
    "adam-tanh-two-layers": dict(hidden_layer_sizes=(8, 6), activation="tanh", solver="adam",
                                 alpha=1e-3, batch_size=64, learning_rate_init=0.01),
    "sgd-relu-two-layers": dict(hidden_layer_sizes=(8, 6), activation="relu", solver="sgd",
                                alpha=1e-3, batch_size=64, learning_rate_init=0.05),
    "sgd-no-hidden-layer": dict(hidden_layer_sizes=(), activation="identity", solver="sgd",
                                batch_size=64, learning_rate_init=0.05),
}


@pytest.mark.parametrize("name", sorted(AGREEMENT))
def test_same_weights_as_scikit_learn(agree_data, name):
    X, y = agree_data
    ours, theirs = _both(X, y, **AGREEMENT[name])
    assert ours.n_iter_ == theirs.n_iter_ == 20
    assert max_rel_diff(params_of(ours), params_of(theirs)) < 1e-12
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-12)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-10,
                               atol=1e-14)


def test_initial_weights_are_scikit_learns(agree_data):
    X, y = agree_data
    for activation in ("logistic", "relu"):
        ours, theirs = _both(X, y, hidden_layer_sizes=(7, 5), activation=activation,
                             solver="sgd", max_iter=1, learning_rate_init=1e-300)
        for a, b in zip(params_of(ours), params_of(theirs)):
            np.testing.assert_array_equal(a, b)


def test_early_stopping_as_scikit_learn(agree_data):
    X, y = agree_data
    ours, theirs = _both(X, y, hidden_layer_sizes=(10,), solver="sgd", batch_size=32,
                         learning_rate_init=0.3, early_stopping=True, validation_fraction=0.2,
                         n_iter_no_change=3, tol=1e-3, max_iter=200)
    assert ours.validation_scores_ == theirs.validation_scores_
    assert ours.n_iter_ == theirs.n_iter_ < 200
    assert ours.best_loss_ is None and ours.best_validation_score_ == max(ours.validation_scores_)
    assert max_rel_diff(params_of(ours), params_of(theirs)) < 1e-12  # the best weights


def test_stopping_rule_as_scikit_learn(agree_data):
    """Stops when the training loss no longer improves by tol; adaptive divides the step."""
    X, y = agree_data
    for kw in (dict(learning_rate="constant"), dict(learning_rate="adaptive")):
        ours, theirs = _both(X, y, hidden_layer_sizes=(10,), solver="sgd", batch_size=60,
                             learning_rate_init=0.2, tol=1e-2, n_iter_no_change=2,
                             max_iter=300, **kw)
        assert ours.n_iter_ == theirs.n_iter_ < 300
        assert ours.best_loss_ == pytest.approx(theirs.best_loss_, rel=1e-12)
        assert ours._optimizer.learning_rate == pytest.approx(theirs._optimizer.learning_rate)


def test_warm_start_and_partial_fit_as_scikit_learn(agree_data):
    X, y = agree_data
    kw = dict(hidden_layer_sizes=(10,), activation="logistic", solver="sgd", batch_size=50,
              learning_rate_init=0.1, max_iter=4, tol=0.0, random_state=5)
    ours = MLPClassifier(dtype="float64", warm_start=True, **kw)
    theirs = SkMLPClassifier(warm_start=True, **kw)
    for _ in range(3):
        fit_quietly(ours, X, y)
        fit_quietly(theirs, X, y)
    assert len(ours.loss_curve_) == 12 and ours.n_iter_ == 4
    assert max_rel_diff(params_of(ours), params_of(theirs)) < 1e-12

    classes = np.unique(y)
    ours = MLPClassifier(dtype="float64", **kw)
    theirs = SkMLPClassifier(**kw)
    for part in np.array_split(np.arange(len(y)), 3):
        ours.partial_fit(X[part], y[part], classes=classes)
        theirs.partial_fit(X[part], y[part], classes=classes)
    assert ours.n_iter_ == 1 and ours.t_ == len(y) and len(ours.loss_curve_) == 3
    assert max_rel_diff(params_of(ours), params_of(theirs)) < 1e-12


# ---------------------------------------------------------------------------
# Sample weights
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def agree_weights():
    rng = np.random.default_rng(30)
    w = rng.uniform(0.0, 3.0, N_AGREE)
    w[rng.random(N_AGREE) < 0.2] = 0.0
    return w


def _both_weighted(X, y, w, **kw):
    settings = dict(max_iter=20, tol=0.0, n_iter_no_change=10**6, random_state=3,
                    activation="logistic")
    settings.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both stop at max_iter
        ours = MLPClassifier(dtype="float64", **settings).fit(X, y, sample_weight=w)
        if settings.get("solver") == "gd":
            settings.update(solver="sgd", batch_size=X.shape[0], shuffle=False, momentum=0.0)
        theirs = SkMLPClassifier(**settings).fit(X, y, sample_weight=w)
    return ours, theirs


WEIGHTED_AGREEMENT = {name: AGREEMENT[name] for name in
                      ("gd", "sgd-momentum-l2-shuffled", "adam-tanh-two-layers",
                       "sgd-relu-two-layers")}
WEIGHTED_AGREEMENT["lbfgs"] = dict(solver="lbfgs", **LBFGS_AGREEMENT_LOGISTIC)


@pytest.mark.parametrize("name", sorted(WEIGHTED_AGREEMENT))
def test_weighted_same_weights_as_scikit_learn(agree_data, agree_weights, name):
    """scikit-learn's weighting: each batch's weighted mean loss, its L2 term over
    the sum of its weights; the same steps, so the same weights."""
    X, y = agree_data
    ours, theirs = _both_weighted(X, y, agree_weights, **WEIGHTED_AGREEMENT[name])
    assert ours.n_iter_ == theirs.n_iter_ == 20
    assert max_rel_diff(params_of(ours), params_of(theirs)) < 1e-10
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-10)
    unweighted = fit_quietly(MLPClassifier(dtype="float64", max_iter=20, tol=0.0,
                                           n_iter_no_change=10**6, random_state=3,
                                           **WEIGHTED_AGREEMENT[name]), X, y)
    assert max_rel_diff(params_of(unweighted), params_of(ours)) > 1e-3  # weights matter


def test_weighted_early_stopping_and_partial_fit_as_scikit_learn(agree_data, agree_weights):
    X, y = agree_data
    ours, theirs = _both_weighted(X, y, agree_weights, hidden_layer_sizes=(10,), solver="sgd",
                                  batch_size=32, learning_rate_init=0.3, early_stopping=True,
                                  validation_fraction=0.2, n_iter_no_change=3, tol=1e-3,
                                  max_iter=200)
    # the weighted accuracy of the same split
    np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_, rtol=1e-12)
    assert ours.n_iter_ == theirs.n_iter_ < 200
    assert max_rel_diff(params_of(ours), params_of(theirs)) < 1e-12

    kw = dict(hidden_layer_sizes=(10,), activation="relu", solver="adam", batch_size=50,
              random_state=5)
    ours = MLPClassifier(dtype="float64", **kw)
    theirs = SkMLPClassifier(**kw)
    classes = np.unique(y)
    for part in np.array_split(np.arange(len(y)), 3):
        ours.partial_fit(X[part], y[part], agree_weights[part], classes=classes)
        theirs.partial_fit(X[part], y[part], agree_weights[part], classes=classes)
    assert max_rel_diff(params_of(ours), params_of(theirs)) < 1e-12


def test_batch_of_zero_weights_takes_no_step(agree_data):
    """scikit-learn divides by a batch's weight sum (NaN for a sum of 0); here such a
    batch is skipped: with plain SGD, as if its rows were not there."""
    X, y = agree_data
    w = np.ones(N_AGREE)
    w[:40] = 0.0  # the first batch of 40
    kw = dict(hidden_layer_sizes=(6,), solver="sgd", momentum=0.0, batch_size=40,
              shuffle=False, alpha=0.01, random_state=0, dtype="float64")
    classes = np.unique(y)
    skipped = MLPClassifier(**kw).partial_fit(X, y, w, classes=classes)
    without = MLPClassifier(**kw).partial_fit(X[40:], y[40:], classes=classes)
    assert max_rel_diff(params_of(skipped), params_of(without)) < 1e-14
    assert np.isfinite(skipped.loss_)


def test_scalar_and_unit_weights_are_the_unweighted_fit(agree_data):
    X, y = agree_data
    kw = dict(hidden_layer_sizes=(6,), max_iter=5, random_state=0)
    plain = fit_quietly(MLPClassifier(**kw), X, y)
    for sw in (1.0, np.ones(N_AGREE), [1] * N_AGREE):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = MLPClassifier(**kw).fit(X, y, sample_weight=sw)
        for a, b in zip(params_of(model), params_of(plain)):
            np.testing.assert_array_equal(a, b)


def test_weights_of_rows_converted_in_blocks(monkeypatch, agree_data, agree_weights):
    """X that must be converted goes through in blocks of rows, each with its weights."""
    X, y = agree_data
    kw = dict(hidden_layer_sizes=(6,), solver="lbfgs", max_iter=5, random_state=0,
              dtype="float64")
    whole = MLPClassifier(**kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        whole.fit(X, y, sample_weight=agree_weights)
        monkeypatch.setattr(mlp_module, "_BLOCK_ROWS", 7)
        blocked = MLPClassifier(**kw).fit(np.asfortranarray(X), y, sample_weight=agree_weights)
    assert max_rel_diff(params_of(blocked), params_of(whole)) < 1e-10


BAD_WEIGHTS = [
    (np.ones(3), ValueError, "sample_weight has 3 values but X has"),
    ([1.0, -1.0] * (N_AGREE // 2), ValueError, "sample_weight must be non-negative"),
    (np.zeros(N_AGREE), ValueError, "sample_weight must have a positive sum"),
    (np.full(N_AGREE, np.nan), ValueError, "sample_weight contains NaN"),
    ("heavy", TypeError, "sample_weight must be an array"),
]


@pytest.mark.parametrize("value, error, match", BAD_WEIGHTS)
def test_bad_weights_are_named(agree_data, value, error, match):
    X, y = agree_data
    with pytest.raises(error, match=match):
        MLPClassifier(max_iter=1).fit(X, y, sample_weight=value)


def test_early_stopping_split_of_zero_weights_is_refused(agree_data):
    """One sample of nonzero weight: either part of the split has weight 0."""
    X, y = agree_data
    for k in range(4):
        w = np.zeros(N_AGREE)
        w[k] = 1.0
        with pytest.raises(ValueError, match="sample_weight is 0 for every sample of the "
                                             "(validation|training) split of early_stopping"):
            MLPClassifier(early_stopping=True, validation_fraction=0.1, max_iter=2,
                          random_state=0).fit(X, y, sample_weight=w)


# ---------------------------------------------------------------------------
# solver='lbfgs': SciPy's L-BFGS-B on the full-batch loss
# ---------------------------------------------------------------------------

LBFGS_AGREEMENT = {
    "logistic": LBFGS_AGREEMENT_LOGISTIC,
    "tanh-two-layers": dict(hidden_layer_sizes=(8, 6), activation="tanh", alpha=1e-3),
    "relu-two-layers-no-l2": dict(hidden_layer_sizes=(8, 6), activation="relu", alpha=0.0),
}


@pytest.mark.parametrize("name", sorted(LBFGS_AGREEMENT))
def test_lbfgs_same_weights_as_scikit_learn(agree_data, name):
    """The same start, loss and gradient (to rounding), so the same iterates:
    20 L-BFGS iterations agree to 1e-10 (they part slowly later, as any two
    implementations of a line search on a nonconvex loss would)."""
    X, y = agree_data
    ours, theirs = _both(X, y, solver="lbfgs", **LBFGS_AGREEMENT[name])
    assert ours.n_iter_ == theirs.n_iter_ == 20
    assert max_rel_diff(params_of(ours), params_of(theirs)) < 1e-10
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-10)
    assert len(ours.loss_curve_) == 20 and ours.loss_curve_[-1] == ours.loss_
    assert all(b < a for a, b in zip(ours.loss_curve_, ours.loss_curve_[1:]))
    assert ours.t_ == 0 and ours.validation_scores_ is None


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_lbfgs_stops_at_a_stationary_point(dtype):
    """Stopped by tol: no gradient component of the L2-penalised loss above
    tol, by the NumPy reference's gradient at the fitted weights."""
    from fusedgrad import reference

    X, y = blobs(150, d=4, k=3, seed=31, spread=1.5)
    tol, alpha = 1e-4, 0.1
    model = MLPClassifier((6,), solver="lbfgs", alpha=alpha, tol=tol, max_iter=2000,
                          random_state=0, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converges: no ConvergenceWarning
        model.fit(X, y)
    assert model.n_iter_ < 2000 and model.coefs_[0].dtype == np.dtype(dtype)
    (W1, W2), (b1, b2) = [[p.astype(np.float64) for p in ps]
                          for ps in (model.coefs_, model.intercepts_)]
    loss, dW1, db1, dW2, db2 = reference.mlp_loss_grad(X, y, W1, b1, W2, b2)
    n = X.shape[0]
    grads = [dW1 + alpha * W1 / n, db1, dW2 + alpha * W2 / n, db2]
    # SciPy's test is on the float64 vector; the float32 gradient carries rounding
    assert max(np.max(np.abs(g)) for g in grads) <= (1.0 if dtype == "float64" else 1.5) * tol
    penalty = 0.5 * alpha * (np.sum(W1 ** 2) + np.sum(W2 ** 2)) / n
    assert model.loss_ == pytest.approx(loss + penalty, rel=1e-12 if dtype == "float64" else 1e-5)


def test_lbfgs_limits_warn_as_scikit_learn(capsys):
    from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning

    X, y = blobs(120, d=4, k=3, seed=32)
    model = MLPClassifier((5,), solver="lbfgs", max_iter=3, tol=0.0, random_state=0)
    with pytest.warns(SkConvergenceWarning, match=r"lbfgs failed to converge after 3 "
                                                  r"iteration\(s\).*max_iter=3") as record:
        model.fit(X, y)
    assert record[0].filename == __file__  # points at the caller
    assert model.n_iter_ == 3 and len(model.loss_curve_) == 3
    with pytest.warns(SkConvergenceWarning):
        model.set_params(verbose=True).fit(X, y)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in lines] == ["iteration 1/3", "iteration 2/3",
                                                      "iteration 3/3"]
    assert float(lines[-1].split("loss ")[1].split(",")[0]) == pytest.approx(model.loss_)
    evaluations = []
    original = MLPClassifier._loss_grad

    def counted(self, *args, **kwargs):
        evaluations.append(1)
        return original(self, *args, **kwargs)

    model = MLPClassifier((5,), solver="lbfgs", max_fun=4, tol=0.0, random_state=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(MLPClassifier, "_loss_grad", counted)
        with pytest.warns(SkConvergenceWarning, match=r"max_fun=4"):
            model.fit(X, y)
    assert 4 <= len(evaluations) <= 5 and model.n_iter_ <= 4  # SciPy stops past max_fun


def test_lbfgs_warm_start_continues_and_partial_fit_is_refused():
    X, y = blobs(120, d=4, k=3, seed=33)
    model = MLPClassifier((5,), solver="lbfgs", max_iter=5, tol=0.0, warm_start=True,
                          random_state=0)
    fit_quietly(model, X, y)
    first = model.loss_
    fit_quietly(model, X, y)
    assert len(model.loss_curve_) == 10 and model.n_iter_ == 5
    assert model.loss_curve_[5] < first  # went on from the fitted weights
    with pytest.raises(ValueError, match="partial_fit is not available for solver='lbfgs'"):
        model.partial_fit(X, y)


# ---------------------------------------------------------------------------
# The gradient itself
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("hidden, activation", [((5,), "logistic"), ((4, 3), "tanh"),
                                                ((4, 3), "relu")])
def test_gradient_matches_finite_differences(hidden, activation):
    """The loss (with the L2 term) and its gradient, against central differences."""
    X, y = blobs(40, d=3, k=3, seed=9)
    model = MLPClassifier(hidden, activation=activation, alpha=0.3, dtype="float64",
                          random_state=0)
    fit_quietly(model.set_params(max_iter=1, learning_rate_init=1e-300), X, y)
    step = _step(model)
    codes = np.searchsorted(model.classes_, y)
    rows = slice(0, len(y))
    params = params_of(model)
    _, grads, _ = model._loss_grad(step, X, codes, rows, len(y), np.dtype(np.float64))
    grads = [g.copy() for g in grads]  # the step reuses its gradient arrays
    for p, g in zip(params, grads):
        def loss_at(value, p=p):
            saved = p.copy()
            p[...] = value
            try:
                return model._loss_grad(step, X, codes, rows, len(y), np.dtype(np.float64))[0]
            finally:
                p[...] = saved
        np.testing.assert_allclose(g, numerical_grad(loss_at, p.copy()), rtol=1e-5, atol=1e-8)


def _step(model):
    """The fit's loss-and-gradient step of ``model``'s current parameters."""
    kernels = mlp_module._device_kernels("cpu")
    return kernels.loss_grad(model.coefs_, model.intercepts_, model.activation)


def test_blocks_give_the_same_gradient(monkeypatch):
    """Rows that must be converted go through in blocks: same loss and gradient as one
    call on the native array."""
    X, y = blobs(100, d=4, k=3, seed=10)
    codes = np.searchsorted(np.unique(y), y)
    for hidden, activation in (((6,), "logistic"), ((5, 4), "tanh")):
        model = fit_quietly(MLPClassifier(hidden, activation=activation, alpha=0.1,
                                          dtype="float64", max_iter=1, random_state=0), X, y)
        step = _step(model)
        copied = lambda result: (result[0], [g.copy() for g in result[1]])  # noqa: E731
        rows = np.random.default_rng(0).permutation(100)
        whole = copied(model._loss_grad(step, X, codes, rows, 100, np.dtype(np.float64)))
        monkeypatch.setattr(mlp_module, "_BLOCK_ROWS", 7)
        blocked = copied(model._loss_grad(step, np.asfortranarray(X), codes, rows, 100,
                                          np.dtype(np.float64)))
        sliced = copied(model._loss_grad(step, np.asfortranarray(X), codes, slice(0, 100), 100,
                                         np.dtype(np.float64)))
        monkeypatch.undo()
        assert blocked[0] == pytest.approx(whole[0], rel=1e-13)
        assert sliced[0] == pytest.approx(whole[0], rel=1e-13)
        assert max_rel_diff(blocked[1], whole[1]) < 1e-13
        assert max_rel_diff(sliced[1], whole[1]) < 1e-13


def test_prediction_in_blocks(monkeypatch):
    X, y = blobs(50, d=3, k=3, seed=11)
    model = fit_quietly(MLPClassifier((6,), max_iter=5, random_state=0), X, y)
    P, labels, log_p = model.predict_proba(X), model.predict(X), model.predict_log_proba(X)
    monkeypatch.setattr(mlp_module, "_BLOCK_ROWS", 8)
    np.testing.assert_array_equal(model.predict_proba(X), P)
    np.testing.assert_array_equal(model.predict(X), labels)
    np.testing.assert_array_equal(model.predict_log_proba(X), log_p)


# ---------------------------------------------------------------------------
# scikit-learn's estimator protocol
# ---------------------------------------------------------------------------


def test_get_set_params_and_clone():
    model = MLPClassifier((7, 3), activation="tanh", solver="sgd", alpha=0.5, dtype="float64")
    params = model.get_params()
    assert params["hidden_layer_sizes"] == (7, 3) and params["activation"] == "tanh"
    assert params["dtype"] == "float64" and params["device"] == "cpu"
    assert set(params) >= {"solver", "alpha", "batch_size", "learning_rate_init", "momentum",
                           "max_iter", "tol", "n_iter_no_change", "early_stopping",
                           "validation_fraction", "shuffle", "warm_start", "random_state",
                           "verbose", "nesterovs_momentum", "beta_1", "beta_2", "epsilon"}
    assert model.set_params(alpha=0.1, max_iter=3) is model and model.alpha == 0.1
    with pytest.raises(ValueError, match="learning_rate_int"):
        model.set_params(learning_rate_int=0.1)
    copy = clone(model)
    assert copy is not model and copy.get_params() == model.get_params()
    assert "activation='tanh'" in repr(model)


def test_pipeline_and_grid_search():
    X, y = blobs(150, d=4, k=3, seed=12)
    pipe = make_pipeline(StandardScaler(), MLPClassifier((8,), max_iter=60,
                                                         learning_rate_init=0.02, random_state=0))
    search = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1e-1]}, cv=2)
    fit_quietly(search, X, y)
    assert search.best_score_ > 0.8
    assert search.predict(X).shape == (150,)
    assert set(search.cv_results_["param_mlpclassifier__alpha"]) == {1e-4, 1e-1}


def test_pickle():
    X, y = blobs(80, d=3, k=3, seed=13)
    model = fit_quietly(MLPClassifier((5,), max_iter=5, random_state=0), X, y)
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.predict_proba(X), model.predict_proba(X))


def test_not_fitted():
    with pytest.raises(NotFittedError, match="fit"):
        MLPClassifier().predict(np.zeros((2, 3)))


# ---------------------------------------------------------------------------
# warm_start, partial_fit, early stopping
# ---------------------------------------------------------------------------


def test_warm_start_continues_the_same_path():
    """Momentum-free steps on unshuffled data: 2 x 5 epochs are 10 epochs."""
    X, y = blobs(120, d=3, k=3, seed=14)
    kw = dict(hidden_layer_sizes=(6,), solver="sgd", momentum=0.0, batch_size=30, shuffle=False,
              learning_rate_init=0.1, tol=0.0, random_state=0)
    warm = MLPClassifier(max_iter=5, warm_start=True, **kw)
    fit_quietly(warm, X, y)
    fit_quietly(warm, X, y)
    once = fit_quietly(MLPClassifier(max_iter=10, **kw), X, y)
    for a, b in zip(params_of(warm), params_of(once)):
        np.testing.assert_array_equal(a, b)
    assert warm.loss_curve_ == once.loss_curve_
    cold = fit_quietly(MLPClassifier(max_iter=5, **kw), X, y)
    first = cold.coefs_[0].copy()
    fit_quietly(cold, X, y)  # warm_start=False: starts again from the initial weights
    np.testing.assert_array_equal(cold.coefs_[0], first)


def test_warm_start_checks():
    X, y = blobs(60, d=3, k=3, seed=15)
    model = fit_quietly(MLPClassifier((4,), max_iter=2, warm_start=True), X, y)
    with pytest.raises(ValueError, match="classes"):
        model.fit(X, np.where(y == 2, 5, y))
    with pytest.raises(ValueError, match="features"):
        model.fit(X[:, :2], y)
    with pytest.raises(ValueError, match="hidden_layer_sizes"):
        model.set_params(hidden_layer_sizes=(5,)).fit(X, y)


def test_partial_fit():
    X, y = blobs(300, d=4, k=3, seed=16)
    model = MLPClassifier((10,), solver="sgd", learning_rate_init=0.1, random_state=0)
    with pytest.raises(ValueError, match="classes"):
        model.partial_fit(X, y)
    first = y != 2  # the first chunk lacks a class
    model.partial_fit(X[first], y[first], classes=[0, 1, 2])
    np.testing.assert_array_equal(model.classes_, [0, 1, 2])
    assert model.coefs_[-1].shape == (10, 3)
    for _ in range(30):
        model.partial_fit(X, y)
    assert model.score(X, y) > 0.9
    assert len(model.loss_curve_) == 31 and model.n_iter_ == 1
    with pytest.raises(ValueError, match="classes"):
        model.partial_fit(X, np.where(y == 2, 9, y))
    with pytest.raises(ValueError, match="classes"):
        model.partial_fit(X, y, classes=[0, 1, 2, 3])


def test_partial_fit_after_early_stopping_fit():
    X, y = blobs(200, d=3, k=3, seed=17)
    model = fit_quietly(MLPClassifier((5,), early_stopping=True, max_iter=5, random_state=0), X, y)
    scores = list(model.validation_scores_)
    model.partial_fit(X, y)  # no validation split from a partial batch, and no error
    assert model.validation_scores_ == scores and len(model.loss_curve_) == 6


def test_early_stopping_keeps_the_best_weights():
    X, y = blobs(400, d=4, k=3, seed=18, spread=2.0)
    model = fit_quietly(MLPClassifier((30,), solver="sgd", learning_rate_init=0.5, batch_size=16,
                                      early_stopping=True, n_iter_no_change=4, max_iter=100,
                                      random_state=1), X, y)
    assert len(model.validation_scores_) == model.n_iter_ < 100
    assert model.best_validation_score_ == max(model.validation_scores_)
    # the validation rows: scikit-learn's split, drawn after the initial weights
    rng = np.random.RandomState(1)
    for fan_in, fan_out in ((4, 30), (30, 3)):
        bound = np.sqrt(2.0 / (fan_in + fan_out))
        rng.uniform(-bound, bound, (fan_in, fan_out))
        rng.uniform(-bound, bound, fan_out)
    val = rng.permutation(400)[:40]
    assert model.score(X[val], y[val]) == model.best_validation_score_


# ---------------------------------------------------------------------------
# Large data: memmaps, memory, no copies
# ---------------------------------------------------------------------------


def _memmap(tmp_path, X):
    mm = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=X.dtype, shape=X.shape)
    mm[...] = X
    mm.flush()
    return np.load(tmp_path / "X.npy", mmap_mode="r")


@pytest.mark.parametrize("shuffle, early_stopping", [(True, False), (False, True)])
def test_memmap_trains_like_the_array(tmp_path, shuffle, early_stopping):
    X, y = blobs(3000, d=8, k=3, seed=19, dtype=np.float32)
    mm = _memmap(tmp_path, X)
    kw = dict(hidden_layer_sizes=(6,), solver="sgd", batch_size=256, max_iter=2, shuffle=shuffle,
              early_stopping=early_stopping, random_state=0)
    from_array = fit_quietly(MLPClassifier(**kw), X, y)
    from_memmap = fit_quietly(MLPClassifier(**kw), mm, y)
    for a, b in zip(params_of(from_array), params_of(from_memmap)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(from_memmap.predict(mm), from_array.predict(X))


@pytest.mark.parametrize("x_dtype, solver", [(np.float32, "sgd"), (np.float64, "sgd"),
                                             (np.float32, "gd")])
def test_memmap_peak_memory_bounded(tmp_path, monkeypatch, x_dtype, solver):
    """Training reads the memmap a batch (or a block of rows) at a time: the memory
    NumPy allocates is a few bytes of indices and labels per row plus one block,
    never a copy of X (the float64 memmap is converted to float32 a block at a time)."""
    X, y = blobs(40_000, d=32, k=4, seed=20, dtype=x_dtype)
    mm = _memmap(tmp_path, X)
    del X
    monkeypatch.setattr(mlp_module, "_BLOCK_ROWS", 2048)
    model = MLPClassifier((8,), solver=solver, batch_size=512, max_iter=2, random_state=0)
    # compile first, on the same arrays (the finiteness check of a large X and the
    # last, shorter batch have their own compiled paths)
    fit_quietly(model.set_params(max_iter=1), mm, y)
    model.predict(mm)
    tracemalloc.start()
    try:
        fit_quietly(model.set_params(max_iter=2), mm, y)
        model.predict(mm)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    float32_bytes = mm.shape[0] * mm.shape[1] * 4
    assert peak < float32_bytes / 4, (peak, float32_bytes)
    assert len(model.loss_curve_) == 2 and np.isfinite(model.loss_)


@pytest.mark.parametrize("hidden, activation", [((5,), "logistic"), ((5, 4), "relu")])
def test_batches_are_views_or_gathered_in_the_kernel(monkeypatch, hidden, activation):
    """The fused kernel gets a view of consecutive rows, or X itself and the row
    indices of a shuffled batch: no copy of X or of a batch of it is made, for
    the lecture's network and for any other."""
    from fusedgrad.kernels import network

    X, y = blobs(1000, d=4, k=3, seed=21, dtype=np.float32)
    calls = []
    real = network.PreparedLossGrad.__call__

    def spy(self, X_, y_, rows=None, sample_weight=None, total=None):
        calls.append((np.shares_memory(X_, X), X_.shape[0], None if rows is None else len(rows)))
        return real(self, X_, y_, rows, sample_weight, total)

    monkeypatch.setattr(network.PreparedLossGrad, "__call__", spy)
    net = dict(hidden_layer_sizes=hidden, activation=activation, max_iter=1)
    fit_quietly(MLPClassifier(solver="sgd", batch_size=100, shuffle=False, **net), X, y)
    assert calls == [(True, 100, None)] * 10
    calls.clear()
    fit_quietly(MLPClassifier(solver="sgd", batch_size=300, shuffle=True, **net), X, y)
    assert calls == [(True, 1000, 300)] * 3 + [(True, 1000, 100)]
    calls.clear()
    fit_quietly(MLPClassifier(solver="gd", shuffle=True, **net), X, y)
    assert calls == [(True, 1000, None)]


# ---------------------------------------------------------------------------
# Output, divergence, bad input
# ---------------------------------------------------------------------------


def test_verbose_progress_on_stderr(capsys):
    X, y = blobs(100, d=3, k=3, seed=22)
    fit_quietly(MLPClassifier((4,), max_iter=3, tol=0.0, verbose=True, random_state=0), X, y)
    out, err = capsys.readouterr()
    assert out == ""
    lines = [line for line in err.splitlines() if line.startswith("epoch")]
    assert len(lines) == 3 and lines[0].startswith("epoch 1/3: loss ")
    assert all("samples/s" in line for line in lines)
    fit_quietly(MLPClassifier((4,), max_iter=3, early_stopping=True, verbose=True,
                              random_state=0), X, y)
    assert "validation score" in capsys.readouterr().err
    fit_quietly(MLPClassifier((4,), max_iter=3, random_state=0), X, y)
    assert capsys.readouterr() == ("", "")


def test_max_iter_warns():
    X, y = blobs(60, d=3, k=3, seed=23)
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        MLPClassifier((4,), max_iter=2, tol=0.0).fit(X, y)
    # code that filters scikit-learn's class catches it too
    from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning

    with pytest.warns(SkConvergenceWarning, match="Maximum iterations"):
        MLPClassifier((4,), max_iter=2, tol=0.0).fit(X, y)


@pytest.mark.parametrize("method", ["fit", "partial_fit"])
def test_column_vector_labels_warn_and_fit_as_1d(method):
    from sklearn.exceptions import DataConversionWarning

    X, y = blobs(60, d=3, k=3, seed=30)
    kwargs = {"classes": [0, 1, 2]} if method == "partial_fit" else {}
    flat = getattr(MLPClassifier((4,), max_iter=3, random_state=0), method)
    column = getattr(MLPClassifier((4,), max_iter=3, random_state=0), method)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        flat = flat(X, y, **kwargs)
        with pytest.warns(DataConversionWarning, match="column-vector y") as record:
            column = column(X, y[:, None], **kwargs)
    assert record[0].filename == __file__  # points at the caller
    for a, b in zip(flat.coefs_ + flat.intercepts_, column.coefs_ + column.intercepts_):
        np.testing.assert_array_equal(a, b)


def test_sklearn_check_estimator():
    from sklearn.utils.estimator_checks import check_estimator

    # Weights equal to repeated rows only for a full-batch solver: scikit-learn
    # runs this check on its own MLPClassifier with solver='lbfgs' (next test).
    stochastic = {"check_sample_weight_equivalence_on_dense_data":
                  "minibatches of repeated rows are not the weighted minibatches"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(MLPClassifier(), on_fail=None,
                                  expected_failed_checks=stochastic)
    failed = {r["check_name"]: str(r["exception"]) for r in results if r["status"] == "failed"}
    assert failed == {}
    assert {r["check_name"] for r in results} >= {"check_all_zero_sample_weights_error",
                                                  "check_sample_weights_not_overwritten"}


@pytest.mark.parametrize("solver", ["lbfgs", "gd"])
def test_sklearn_weights_equal_repeated_rows(solver):
    """scikit-learn's check: integer weights give the model of the repeated rows."""
    from sklearn.utils.estimator_checks import check_sample_weight_equivalence_on_dense_data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_sample_weight_equivalence_on_dense_data(
            "MLPClassifier", MLPClassifier(solver=solver, random_state=0, dtype="float64"))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_divergence_names_the_learning_rate(dtype):
    X, y = blobs(200, d=3, k=3, seed=24)
    model = MLPClassifier((5,), activation="relu", solver="sgd", learning_rate_init=1e30,
                          max_iter=20, dtype=dtype, random_state=0)
    with pytest.raises(ValueError, match=r"learning_rate_init \(now 1e\+30\)"):
        fit_quietly(model, 1e3 * X, y)


BAD_PARAMS = [
    ("hidden_layer_sizes", (10, 0), ValueError),
    ("hidden_layer_sizes", "10", TypeError),
    ("hidden_layer_sizes", (2.5,), TypeError),
    ("activation", "sigmoid", ValueError),
    ("solver", "newton", ValueError),
    ("alpha", -1.0, ValueError),
    ("batch_size", 0, ValueError),
    ("batch_size", "all", TypeError),
    ("learning_rate", "optimal", ValueError),
    ("learning_rate_init", 0.0, ValueError),
    ("learning_rate_init", float("nan"), ValueError),
    ("max_iter", 0, ValueError),
    ("max_iter", 2.0, TypeError),
    ("shuffle", "yes", TypeError),
    ("tol", -1e-3, ValueError),
    ("momentum", 1.5, ValueError),
    ("validation_fraction", 1.0, ValueError),
    ("beta_1", 1.0, ValueError),
    ("beta_2", -0.1, ValueError),
    ("epsilon", 0.0, ValueError),
    ("n_iter_no_change", 0, ValueError),
    ("max_fun", 0, ValueError),
    ("max_fun", 2.5, TypeError),
    ("dtype", "float16", ValueError),
    ("dtype", "int32", ValueError),
    ("device", "tpu", ValueError),
    ("random_state", "seed", TypeError),
    ("random_state", -1, ValueError),
    ("warm_start", None, TypeError),
]


@pytest.mark.parametrize("name, value, exc", BAD_PARAMS,
                         ids=[f"{n}={v!r}" for n, v, _ in BAD_PARAMS])
def test_bad_parameter_named(name, value, exc):
    X, y = blobs(30, d=2, k=2, seed=26)
    with pytest.raises(exc, match=name):
        MLPClassifier(**{name: value}).fit(X, y)


def _bad_inputs():
    X, y = blobs(30, d=3, k=3, seed=27)
    nan = X.copy()
    nan[4, 1] = np.nan
    inf32 = X.copy()
    inf32[2, 2] = 1e300  # finite in float64, not in float32
    return [
        ("X-nan", nan, y, ValueError, r"\bX\b.*NaN"),
        ("X-too-large-for-float32", inf32, y, ValueError, r"\bX\b.*float32"),
        ("X-1d", X[:, 0], y, ValueError, r"\bX\b.*2-D"),
        ("X-3d", X[None], y, ValueError, r"\bX\b"),
        ("X-empty", X[:0], y[:0], ValueError, r"\bX\b.*empty"),
        ("X-strings", np.array([["a", "b", "c"]] * 30), y, TypeError, r"\bX\b"),
        ("X-complex", X.astype(complex), y, (TypeError, ValueError), r"\bX\b.*complex"),
        ("X-none", None, y, TypeError, r"\bX\b"),
        ("y-short", X, y[:-1], ValueError, r"\by\b.*29"),
        ("y-2d", X, np.stack([y, y], axis=1), ValueError, r"\by\b"),
        ("y-continuous", X, y + 0.5, ValueError, r"\by\b.*continuous"),
        ("y-nan", X, np.where(y == 1, np.nan, y), ValueError, r"\by\b.*NaN"),
        ("y-one-class", X, np.zeros(30, int), ValueError, r"\by\b.*one class"),
        ("y-none", X, None, ValueError, r"\by\b is None"),
        ("y-mixed-types", X, np.array([1, "a"] * 15, dtype=object), TypeError, r"\by\b"),
        ("y-ragged", X, [0, [1, 2]] + [0] * 28, ValueError, r"\by\b"),
        ("X-masked", np.ma.masked_array(X, mask=X > 1), y, TypeError, r"\bX\b.*mask"),
        ("y-masked", X, np.ma.masked_array(y, mask=y == 1), TypeError, r"\by\b.*mask"),
    ]


@pytest.mark.parametrize("X, y, exc, match",
                         [pytest.param(*case[1:], id=case[0]) for case in _bad_inputs()])
def test_bad_fit_input_named(X, y, exc, match):
    with pytest.raises(exc, match=match):
        MLPClassifier((3,), max_iter=1).fit(X, y)


def test_bad_predict_input_named():
    X, y = blobs(30, d=3, k=3, seed=28)
    model = fit_quietly(MLPClassifier((3,), max_iter=1), X, y)
    bad = X.copy()
    bad[0, 0] = np.inf
    for method in (model.predict, model.predict_proba, model.predict_log_proba):
        with pytest.raises(ValueError, match=r"X has 2 features, but MLPClassifier is "
                                             r"expecting 3 features"):
            method(X[:, :2])
        with pytest.raises(ValueError, match=r"\bX\b.*NaN or infinity"):
            method(bad)
    with pytest.raises(ValueError, match=r"\by\b"):
        model.score(X, y[:5])


# ---------------------------------------------------------------------------
# Persistence
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("labels", ["ints", "strings", "floats"])
def test_save_load_round_trip(tmp_path, labels):
    X, y = blobs(150, d=4, k=3, seed=29)
    y = {"ints": y * 10 - 5, "strings": np.array(["a", "bb", "c"])[y], "floats": y * 2.0}[labels]
    model = fit_quietly(MLPClassifier((6, 4), activation="tanh", max_iter=4, early_stopping=True,
                                      dtype="float64", random_state=np.random.RandomState(0)),
                        X, y)
    path = tmp_path / "model.npz"
    model.save(path)
    again = load(path)
    assert type(again) is MLPClassifier
    params = model.get_params()
    params["random_state"] = None  # a RandomState object is not saved
    assert again.get_params() == params
    np.testing.assert_array_equal(again.classes_, model.classes_)
    for a, b in zip(params_of(again), params_of(model)):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == np.float64
    for name in ("loss_", "loss_curve_", "best_loss_", "validation_scores_",
                 "best_validation_score_", "n_iter_", "t_", "n_features_in_", "n_layers_",
                 "n_outputs_", "out_activation_"):
        assert getattr(again, name) == getattr(model, name), name
    np.testing.assert_array_equal(again.predict(X), model.predict(X))
    np.testing.assert_array_equal(again.predict_proba(X), model.predict_proba(X))
    # and it trains on
    again.partial_fit(X, y)
    assert len(again.loss_curve_) == len(model.loss_curve_) + 1


def test_save_needs_a_fitted_model(tmp_path):
    with pytest.raises(NotFittedError):
        MLPClassifier().save(tmp_path / "m.npz")


def test_load_rejects_inconsistent_arrays(tmp_path):
    X, y = blobs(60, d=3, k=3, seed=30)
    model = fit_quietly(MLPClassifier((4,), max_iter=2, random_state=0), X, y)
    params, state, arrays = model._persist_state()

    def write(arrays_, state_=state, name="bad.npz"):
        import json

        meta = {"format": _persist.FORMAT, "format_version": 1, "class": "MLPClassifier",
                "fusedgrad_version": "0", "params": _persist.jsonable(params),
                "state": _persist.jsonable(state_)}
        blob = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, __meta__=blob, **arrays_)
        (tmp_path / name).write_bytes(buffer.getvalue())
        return tmp_path / name

    good = write(arrays, name="good.npz")
    np.testing.assert_array_equal(load(good).predict(X), model.predict(X))
    with pytest.raises(ValueError, match=r"bad\.npz.*coefs_0.*shape"):
        load(write({**arrays, "coefs_0": arrays["coefs_0"][:2]}))
    with pytest.raises(ValueError, match=r"bad\.npz.*intercepts_1.*dtype"):
        load(write({**arrays, "intercepts_1": arrays["intercepts_1"].astype(np.float64)}))
    with pytest.raises(ValueError, match=r"bad\.npz.*coefs_1.*missing"):
        load(write({k: v for k, v in arrays.items() if k != "coefs_1"}))
    with pytest.raises(ValueError, match=r"bad\.npz.*n_layers_"):
        load(write(arrays, {**state, "n_layers_": 4}))
    with pytest.raises(ValueError, match=r"bad\.npz.*classes_"):
        load(write({**arrays, "classes_": arrays["classes_"][::-1].copy()}))
    with pytest.raises(ValueError, match=r"bad\.npz.*NaN"):
        load(write({**arrays, "coefs_0": np.full_like(arrays["coefs_0"], np.nan)}))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("solver, options", [
    ("sgd", dict(momentum=0.0)), ("sgd", dict(momentum=0.9, nesterov=False)),
    ("sgd", dict(momentum=0.9, nesterov=True)), ("adam", {}),
])
@pytest.mark.parametrize("l2", [0.0, 0.37])
@pytest.mark.parametrize("same_list", [False, True])
def test_compiled_updates_are_the_numpy_updates_bit_for_bit(dtype, solver, options, l2,
                                                            same_list):
    """The optimizers' compiled step against scikit-learn's sequence of NumPy
    operations (written out below: the L2 term's gradient added to the weights'
    gradients, then each parameter's update), over several steps. The
    gradients come in a new list each step, or (as in a fit) in the same
    list whose arrays are overwritten."""
    rng = np.random.default_rng(30)
    shapes = [(7, 5), (5, 3), (5,), (3,)]
    start = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(4)]
    lr, mu, nesterov = 0.05, options.get("momentum", 0.0), options.get("nesterov", False)
    b1, b2, eps = 0.9, 0.999, 1e-8

    params = [p.copy() for p in start]
    if solver == "sgd":
        opt = mlp_module._SGDOptimizer(params, lr, "constant", mu, nesterov, 0.5)
    else:
        opt = mlp_module._AdamOptimizer(params, lr, b1, b2, eps)
    buffer = [np.empty_like(p) for p in start]
    for step in grads:
        if same_list:
            for g, value in zip(buffer, step):
                g[...] = value
        passed = buffer if same_list else [g.copy() for g in step]
        opt.update_params(params, passed, 2, l2)  # overwrites the gradients with the steps

    want = [p.copy() for p in start]
    first = [np.zeros_like(p) for p in start]  # velocities, or Adam's m
    second = [np.zeros_like(p) for p in start]  # Adam's v
    for t, step in enumerate(grads, 1):
        rate = lr * math.sqrt(1 - b2**t) / (1 - b1**t)  # a Python float, as the model's
        step = [g.copy() for g in step]
        if l2:
            for g, W in zip(step[:2], want[:2]):  # MLPClassifier._add_l2
                g += l2 * W
        for p, g, m, v in zip(want, step, first, second):
            if solver == "sgd":
                g *= lr
                if mu == 0.0:
                    p -= g
                    continue
                m *= mu
                m -= g
                p += (m * mu - g) if nesterov else m
            else:
                m *= b1
                m += g * (1 - b1)
                v *= b2
                v += (g * g) * (1 - b2)
                g[...] = (m * -rate) / (np.sqrt(v) + eps)
                p += g

    # the parameters, and the last step's scaled gradients (where a wrong rounding
    # of the L2 term shows before the parameters' larger values absorb it)
    for a, b in zip(params + passed, want + step):
        assert a.dtype == dtype
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("hidden, activation", [((6,), "logistic"), ((6, 4), "relu")])
def test_assigned_parameters_in_any_layout_train_as_contiguous_ones(hidden, activation):
    """coefs_ assigned as transposed copies or read-only views (warm start) train
    exactly as their C-contiguous equals: the compiled step reads every parameter as
    C-contiguous, so the model makes them so first."""
    X, y = blobs(300, d=5, k=3, seed=31, dtype=np.float32)
    base = fit_quietly(MLPClassifier(hidden, activation=activation, max_iter=2, random_state=0),
                       X, y)
    runs = []
    for layout in ("C", "F", "read-only"):
        model = MLPClassifier(hidden, activation=activation, max_iter=2, random_state=0,
                              warm_start=True)
        model = fit_quietly(model, X, y)  # the same optimizer state in every run
        coefs = [c.copy() for c in base.coefs_]
        if layout == "F":
            coefs = [np.asfortranarray(c) for c in coefs]
        elif layout == "read-only":
            for c in coefs:
                c.flags.writeable = False
        model.coefs_ = coefs
        model.intercepts_ = [b.copy() for b in base.intercepts_]
        runs.append(fit_quietly(model, X, y))
    for other in runs[1:]:
        for a, b in zip(params_of(runs[0]), params_of(other)):
            np.testing.assert_array_equal(a, b)
