"""The estimator base shared by the models (fusedgrad.models._base): feature names.

A model fitted on a dataframe keeps its string column names in
``feature_names_in_`` and checks later inputs against them, as
scikit-learn's estimators do; the reference for the messages and the rules
is scikit-learn's own check, ``check_dataframe_column_names_consistency``.
The fitted parameters must not depend on whether ``X`` came as a dataframe.
"""

import warnings

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from fusedgrad.models import LinearRegression, MLPClassifier
from fusedgrad.models._base import ConvergenceWarning, feature_names

pd = pytest.importorskip("pandas")

NAMES = np.array(["height", "weight", "age", "score"], dtype=object)


def _data(seed=0, n=90):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, len(NAMES)))
    target = X @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.1 * rng.standard_normal(n)
    return X, target


def _model(kind, **params):
    if kind == "linear":
        return LinearRegression(**params)
    return MLPClassifier((5,), max_iter=3, random_state=0, **params)


def _y(kind, target):
    return target if kind == "linear" else (target > 0).astype(int) + (target > 2)


def _fit(model, X, y, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)  # scikit-learn's ConvergenceWarning
        method = kwargs.pop("method", "fit")
        return getattr(model, method)(X, y, **kwargs)


def _methods(model):
    names = ["predict", "predict_proba", "predict_log_proba"]
    return [getattr(model, n) for n in names if hasattr(model, n)]


def _parameters(model):
    if isinstance(model, LinearRegression):
        return [model.coef_, np.asarray(model.intercept_)]
    return model.coefs_ + model.intercepts_


KINDS = ["linear", "mlp"]


@pytest.mark.parametrize("kind", KINDS)
def test_dataframe_fit_keeps_names_and_parameters(kind):
    X, target = _data()
    y = _y(kind, target)
    frame = pd.DataFrame(X, columns=NAMES)
    model = _fit(_model(kind), frame, y)
    plain = _fit(_model(kind), X, y)
    assert model.feature_names_in_.dtype == object
    assert_array_equal(model.feature_names_in_, NAMES)
    assert not hasattr(plain, "feature_names_in_")
    for a, b in zip(_parameters(model), _parameters(plain)):
        assert_array_equal(a, b)  # the same bits: only the names are extra
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same names: no warning
        for method in _methods(model):
            assert_array_equal(method(frame), getattr(plain, method.__name__)(X))
        model.score(frame, y)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "columns, match",
    [
        (NAMES[::-1], "Feature names must be in the same order as they were in fit"),
        (["height", "weight", "age", "bmi"],
         "Feature names unseen at fit time:\n- bmi\nFeature names seen at fit time, yet now "
         "missing:\n- score\n"),
        (["a", "b", "c", "d", "e", "f", "g"], "Feature names unseen at fit time:\n- a\n- b\n- c\n- d\n- e\n- "
         r"\.\.\.\n"),
        (NAMES[:3], "Feature names seen at fit time, yet now missing:\n- score\n"),
    ],
    ids=["reordered", "renamed", "many-unseen", "missing"],
)
def test_other_names_are_refused(kind, columns, match):
    X, target = _data(1)
    model = _fit(_model(kind), pd.DataFrame(X, columns=NAMES), _y(kind, target))
    bad = pd.DataFrame(np.resize(X, (X.shape[0], len(columns))), columns=columns)
    for method in _methods(model):
        with pytest.raises(ValueError, match="The feature names should match those that were "
                                             "passed during fit.\n" + match):
            method(bad)


@pytest.mark.parametrize("kind", KINDS)
def test_names_on_one_side_only_warn(kind):
    X, target = _data(2)
    y = _y(kind, target)
    frame = pd.DataFrame(X, columns=NAMES)
    named = _fit(_model(kind), frame, y)
    for method in _methods(named):
        with pytest.warns(UserWarning, match="X does not have valid feature names, but "
                                             f"{type(named).__name__} was fitted with") as rec:
            method(X)
        assert rec[0].filename == __file__  # points at the caller
    # one call deeper (score calls predict): still the caller's line
    with pytest.warns(UserWarning, match="X does not have valid feature names") as rec:
        named.score(X, y)
    assert rec[0].filename == __file__
    unnamed = _fit(_model(kind), X, y)
    for method in _methods(unnamed):
        with pytest.warns(UserWarning, match="X has feature names, but "
                                             f"{type(unnamed).__name__} was fitted without"):
            method(frame)
    # a refit on an array forgets the names
    _fit(named, X, y)
    assert not hasattr(named, "feature_names_in_")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        named.predict(X)


@pytest.mark.parametrize("kind", KINDS)
def test_columns_without_string_names(kind):
    X, target = _data(3)
    y = _y(kind, target)
    model = _fit(_model(kind), pd.DataFrame(X), y)  # pandas's default integer names
    assert not hasattr(model, "feature_names_in_")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.predict(X)
        model.predict(pd.DataFrame(X))
    mixed = pd.DataFrame(X, columns=["a", "b", 2, 3])
    fresh = _model(kind)
    with pytest.raises(TypeError, match=r"\bX\b has feature names of the types \['int', 'str'\]"):
        fresh.fit(mixed, y)
    assert not hasattr(fresh, "n_features_in_")  # refused before anything was fitted
    with pytest.raises(TypeError, match=r"\bX\b has feature names"):
        model.predict(mixed)


def test_feature_names_rule():
    X, _ = _data()
    assert feature_names(X) is None
    assert feature_names(X.tolist()) is None
    assert feature_names(pd.DataFrame(X)) is None
    assert feature_names(pd.DataFrame(X[:, :0])) is None
    got = feature_names(pd.DataFrame(X, columns=NAMES))
    assert got.dtype == object and list(got) == list(NAMES)


@pytest.mark.parametrize("how", ["partial_fit", "warm_start"])
def test_mlp_later_fits_check_names(how):
    X, target = _data(4)
    y = _y("mlp", target)
    frame = pd.DataFrame(X, columns=NAMES)
    kwargs = {"method": "partial_fit", "classes": [0, 1, 2]} if how == "partial_fit" else {}
    model = _fit(_model("mlp", warm_start=how == "warm_start"), frame, y, **dict(kwargs))
    before = [p.copy() for p in _parameters(model)]
    with pytest.raises(ValueError, match="same order as they were in fit"):
        _fit(model, frame[NAMES[::-1]], y, **dict(kwargs))
    for a, b in zip(_parameters(model), before):
        assert_array_equal(a, b)  # refused before a step was taken
    _fit(model, frame, y, **dict(kwargs))  # the same names go on training
    assert model.n_iter_ >= 1


def test_dask_prediction_checks_names_once():
    da = pytest.importorskip("dask.array")
    X, target = _data(5, n=300)
    model = _fit(_model("mlp"), pd.DataFrame(X, columns=NAMES), _y("mlp", target))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lazy = model.predict_proba(da.from_array(X, chunks=(100, -1)))
        result = lazy.compute(scheduler="sync")
    assert [str(w.message)[:40] for w in caught] == [
        "X does not have valid feature names, but"]  # once, not once per block
    assert_array_equal(result, model._predict_proba(X))


@pytest.mark.parametrize("kind, params", [("linear", {}), ("mlp", {}),
                                          ("mlp", {"early_stopping": True})])
def test_scikit_learn_column_name_check(kind, params):
    pytest.importorskip("sklearn")
    from sklearn.utils.estimator_checks import check_dataframe_column_names_consistency

    model = _model(kind, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)
        check_dataframe_column_names_consistency(type(model).__name__, model)


@pytest.mark.parametrize("kind", KINDS)
def test_nullable_columns(kind):
    """pandas's nullable dtypes (an object array in NumPy): numbers fit as the
    float data does; a missing value ``pd.NA`` is named as NaN is."""
    X, target = _data(6)
    X[:, 1] = np.round(3 * X[:, 1])  # integers, for an Int64 column
    y = _y(kind, target)
    frame = pd.DataFrame(X, columns=NAMES).astype({"height": "Float64", "weight": "Int64"})
    assert np.asarray(frame).dtype == object
    model = _fit(_model(kind), frame, y)
    for a, b in zip(_parameters(model), _parameters(_fit(_model(kind), X, y))):
        assert_array_equal(a, b)
    holed = frame.copy()
    holed.loc[7, "weight"] = pd.NA
    with pytest.raises(ValueError, match=r"\bX\b contains NaN"):
        _fit(_model(kind), holed, y)
    with pytest.raises(ValueError, match=r"\bX\b contains NaN"):
        model.predict(holed)
    holed["note"] = "x"
    with pytest.raises(TypeError, match=r"\bX\b holds objects that are not numbers"):
        _fit(_model(kind), holed, y)


# ---------------------------------------------------------------------------
# polars: frames convert through NumPy, names come from ``columns`` (a list)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_polars_frame_fits_as_the_array_does(kind):
    pl = pytest.importorskip("polars")
    X, target = _data(7)
    y = _y(kind, target)
    frame = pl.DataFrame({name: X[:, j] for j, name in enumerate(NAMES)})
    model = _fit(_model(kind), frame, pl.Series("y", y))
    plain = _fit(_model(kind), X, y)
    assert_array_equal(model.feature_names_in_, NAMES)
    for a, b in zip(_parameters(model), _parameters(plain)):
        assert_array_equal(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method in _methods(model):
            assert_array_equal(method(frame), getattr(plain, method.__name__)(X))
    reordered = frame.select(list(NAMES[::-1]))
    with pytest.raises(ValueError, match="Feature names must be in the same order"):
        model.predict(reordered)
    # float32 columns keep float32
    narrow = _fit(_model(kind), frame.cast(pl.Float32), y)
    assert all(p.dtype == np.float32 for p in _parameters(narrow))
    # a null is named as NaN is; a text column is refused by name
    holed = frame.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(None)
                               .otherwise(pl.col("age")).alias("age"))
    with pytest.raises(ValueError, match=r"\bX\b contains NaN"):
        _fit(_model(kind), holed, y)
    with pytest.raises(TypeError, match=r"\bX\b"):
        _fit(_model(kind), frame.with_columns(pl.lit("x").alias("age")), y)
    # a lazy query must be collected first
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and asking it for its columns is not attempted
        with pytest.raises(TypeError, match=r"X is a lazy query \(LazyFrame\)"):
            _fit(_model(kind), frame.lazy(), y)


def test_polars_string_labels():
    pl = pytest.importorskip("polars")
    X, target = _data(8)
    labels = np.array(["low", "mid", "high"])[_y("mlp", target)]
    model = _fit(_model("mlp"), X, pl.Series("label", labels))
    plain = _fit(_model("mlp"), X, labels)
    assert_array_equal(model.classes_, plain.classes_)
    assert_array_equal(model.predict(X), plain.predict(X))
