"""Estimator base shared by the models: scikit-learn's conventions without depending on it.

scikit-learn is not a dependency of fusedgrad, but the models follow its
estimator protocol so that ``sklearn.base.clone``, ``Pipeline``,
``GridSearchCV`` and ``cross_val_score`` accept them when it is installed.

API
---
``BaseModel``
    ``get_params(deep=True)``, ``set_params(**params)`` (nested ``a__b`` keys
    too) and ``__repr__`` (non-default parameters only), all driven by the
    signature of the subclass's ``__init__``, which must only store its
    keyword arguments unchanged under the same names. Also
    ``__sklearn_tags__`` (scikit-learn >= 1.6) and ``_more_tags`` (older),
    ``__sklearn_is_fitted__`` and ``_check_is_fitted()`` (raises
    :class:`NotFittedError` unless the subclass's ``_fitted_attribute``
    exists), and ``_validate_X(X, reset, dtype=None, ensure_finite=True)``,
    which checks a feature matrix with :func:`check_array` and records
    (``reset=True``, in ``fit``) or checks (``reset=False``, in ``predict``)
    ``n_features_in_``. Feature names, as scikit-learn keeps them:
    ``_fit_feature_names(names)`` records ``feature_names_in_`` (the string
    column names of a dataframe ``X``, from :func:`feature_names`) or drops
    it, and ``_check_feature_names(X)`` compares a later ``X``'s: a
    ``ValueError`` when both have names and they differ (in order too), a
    ``UserWarning`` when only one side has them. ``_predict_any(X, method)``
    runs a prediction method on an in-memory ``X`` or, lazily, on the row
    blocks of a dask array, after the fitted and feature-name checks.
``feature_names(X)``
    String column names of a dataframe as an object array; ``None`` for
    arrays and for columns with no string names; ``TypeError`` for a mix.
``RegressorMixin``, ``ClassifierMixin``
    Put them before ``BaseModel`` in the bases. They set the estimator type
    and provide ``score(X, y, sample_weight=None)``: R² (the coefficient of
    determination, 1.0 when ``y`` is constant and predicted exactly, as in
    scikit-learn) and mean accuracy.
``check_array(name, value, *, dtype=None, ndim=2, ensure_finite=True)``
    Coerces a user array (list, ndarray, memmap, DataFrame) to a
    C-contiguous float array. ``dtype=None`` keeps float32 and float64 and
    turns every other real numeric dtype into float64. Errors name the
    argument: ``TypeError`` for strings, complex, sparse or non-numeric
    data; ``ValueError`` for a wrong ndim (a 1-D ``X`` gets a reshape hint),
    no samples or no features, NaN or infinity.
``check_target(value, n_samples, dtype, name="y")``
    A 1-D real target of length ``n_samples`` in ``dtype`` (float), finite.
``NotFittedError``
    Subclass of ``ValueError`` and ``AttributeError``, as scikit-learn's.
``ConvergenceWarning``, ``DataConversionWarning``
    ``UserWarning`` subclasses: an iterative solver stopped at ``max_iter``;
    a column-vector ``y`` was flattened. Raise or warn with ``_sk(cls)``
    rather than ``cls``: once scikit-learn is imported it gives a subclass of
    both ours and scikit-learn's class of the same name, so that code (and
    scikit-learn's checks) catching scikit-learn's also catch ours.
"""

import functools
import inspect
import numbers
import sys
from collections import defaultdict

import numpy as np

from fusedgrad import _validate
from fusedgrad._validate import all_finite
from fusedgrad._warn import warn

__all__ = [
    "BaseModel",
    "RegressorMixin",
    "ClassifierMixin",
    "NotFittedError",
    "ConvergenceWarning",
    "DataConversionWarning",
    "check_array",
    "check_target",
    "feature_names",
    "sample_count",
]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


class NotFittedError(ValueError, AttributeError):
    """A method that needs a fitted model was called before ``fit``."""


class ConvergenceWarning(UserWarning):
    """An iterative solver stopped at ``max_iter`` before meeting ``tol``."""


class DataConversionWarning(UserWarning):
    """Input data was converted (e.g. a column-vector ``y`` flattened)."""


@functools.lru_cache(maxsize=None)
def _with_sklearn(cls):
    """``cls``, or a subclass of it and of scikit-learn's class of the same name
    when ``sklearn.exceptions`` is already imported (so that code catching
    scikit-learn's exceptions and warnings also catches ours)."""
    sk = sys.modules.get("sklearn.exceptions")
    theirs = getattr(sk, cls.__name__, None) if sk is not None else None
    if theirs is None:
        return cls
    return type(cls.__name__, (cls, theirs), {"__module__": cls.__module__})


def _sk(cls):
    # Not cached while scikit-learn is absent, so a later import is noticed.
    if "sklearn.exceptions" not in sys.modules:
        return cls
    return _with_sklearn(cls)


def _resolve_dtype(name, dtype):
    if dtype is None:
        return None
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be None, 'float32' or 'float64', got {dtype!r}") from None
    if dt not in _FLOATS:
        raise ValueError(f"{name} must be None, 'float32' or 'float64', got {dtype!r}")
    return dt


def _refuse_masked(name, value):
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(
            f"{name} is a masked array; fusedgrad would ignore its mask: pass "
            f"{name}.filled(...) or drop the masked samples"
        )


def feature_names(X):
    """The column names of a dataframe ``X`` (pandas, polars, or anything with
    ``columns``) as an object array, when every name is a string; ``None`` for
    an array, and for names none of which is a string (pandas's default
    integer columns). The rule is scikit-learn's.

    Raises
    ------
    TypeError
        For string names mixed with others: whether to check them is then
        ambiguous.
    """
    if isinstance(X, np.ndarray) or _is_lazy_frame(X):
        return None
    columns = getattr(X, "columns", None)
    # a list (polars) or an index (pandas); not, e.g., a lazy dask.delayed attribute
    if not (isinstance(columns, (list, tuple)) or hasattr(columns, "__array__")):
        return None
    names = np.asarray(list(columns), dtype=object)
    if names.shape[0] == 0:
        return None
    kinds = sorted({type(v).__qualname__ for v in names})
    if kinds == ["str"]:
        return names
    if "str" in kinds:
        raise TypeError(
            f"X has feature names of the types {kinds}; feature names are checked only "
            "when all are strings: convert them, e.g. X.columns = X.columns.astype(str)"
        )
    return None


def _is_lazy_frame(value):
    """Whether ``value`` is a query that must be collected into a frame first
    (a polars ``LazyFrame``): it has ``collect`` but no array conversion. Dask
    collections, which convert, are fitted by :mod:`fusedgrad.models._dask`."""
    return hasattr(value, "collect") and not hasattr(value, "__array__") \
        and not hasattr(value, "__dask_graph__")


def check_array(name, value, *, dtype=None, ndim=2, ensure_finite=True, n_samples=None,
                n_features=None, owner=None, samples_of=None):
    """Coerce user data to a C-contiguous float array of ``ndim`` dimensions.

    Parameters
    ----------
    name : str
        Name of the argument, used in error messages.
    value : array_like
        The data.
    dtype : None, str or numpy dtype
        Target dtype. ``None`` keeps float32/float64 input and converts any
        other real numeric input to float64.
    ndim : int, default 2
        Required number of dimensions.
    ensure_finite : bool, default True
        Reject NaN and infinity.
    n_samples, n_features : int, optional
        Required sizes, checked before anything is converted or copied.
    owner : str, optional
        Name of the estimator, for the message of a wrong ``n_features``.
    samples_of : str, optional
        Name of the argument ``n_samples`` comes from, for the message.

    Returns
    -------
    ndarray
        C-contiguous, of the resolved dtype; ``value`` itself (or a view of
        it) when no conversion is needed.
    """
    target = _resolve_dtype("dtype", dtype)
    if type(value).__module__.startswith("scipy.sparse"):
        raise TypeError(f"{name} is a sparse matrix; fusedgrad needs a dense array")
    if value is None or isinstance(value, (str, bytes, dict, set)):
        raise TypeError(f"{name} must be an array of numbers, got {type(value).__name__}")
    if _is_lazy_frame(value):
        raise TypeError(f"{name} is a lazy query ({type(value).__name__}); collect it into a "
                        "DataFrame first (e.g. X.collect())")
    _refuse_masked(name, value)
    try:
        a = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name} cannot be converted to an array: {exc}") from None
    length_error = None
    if n_samples is not None and a.ndim >= 1 and a.shape[0] != n_samples and samples_of:
        length_error = (f"{samples_of} has {n_samples} values but {name} has {a.shape[0]} "
                        "samples")
    return _check_converted(name, a, target, ndim, ensure_finite, n_samples, n_features, owner,
                            length_error)


def sample_count(name, value):
    """The number of samples of array-like ``value`` (no copy of an array), or None
    when it is not array-like (its own check reports that later)."""
    if value is None or isinstance(value, (str, bytes, dict, set)):
        return None
    try:
        a = np.asarray(value)
    except (ValueError, TypeError):
        return None
    return a.shape[0] if a.ndim >= 1 else None


def _objects_to_float(name, a, dtype):
    """Object array ``a`` (e.g. of a DataFrame's mixed or nullable columns) as ``dtype``.

    pandas's missing value ``pd.NA`` becomes NaN, which the finiteness check
    then names as it names NaN; anything else that is not a number is a
    ``TypeError`` naming the argument.
    """
    try:
        return a.astype(dtype)
    except (ValueError, TypeError) as exc:
        error = exc
    pd = sys.modules.get("pandas")
    if pd is not None:
        missing = np.asarray(np.frompyfunc(lambda v: v is pd.NA, 1, 1)(a), dtype=bool)
        if missing.any():
            try:
                return np.where(missing, np.nan, a).astype(dtype)
            except (ValueError, TypeError) as exc:
                error = exc
    raise TypeError(f"{name} holds objects that are not numbers: {error}") from None


def _check_converted(name, a, target, ndim, ensure_finite, n_samples=None, n_features=None,
                     owner=None, length_error=None):
    kind = a.dtype.kind
    if kind in "USV":
        raise TypeError(f"{name} must hold numbers, got dtype {a.dtype} (strings or bytes)")
    if kind == "c":
        # ValueError, as scikit-learn raises for complex data.
        raise ValueError(f"{name} holds complex numbers. Complex data not supported")
    if kind == "O":
        a = _objects_to_float(name, a, np.float64 if target is None else target)
    elif kind not in "biuf":
        raise TypeError(f"{name} must hold numbers, got dtype {a.dtype}")
    if a.ndim != ndim:
        if ndim == 2 and a.ndim == 1:
            raise ValueError(
                f"{name} must be 2-D (n_samples, n_features), got a 1-D array of shape "
                f"{a.shape}. Reshape your data either using {name}.reshape(-1, 1) if it has "
                f"a single feature or {name}.reshape(1, -1) if it contains a single sample"
            )
        raise ValueError(f"{name} must be {ndim}-D, got {a.ndim}-D array of shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(
            f"{name} is empty: found array with 0 sample(s) (shape={a.shape}) while a "
            "minimum of 1 is required."
        )
    if ndim == 2 and a.shape[1] == 0:
        raise ValueError(
            f"{name} has no features: found array with 0 feature(s) (shape={a.shape}) while "
            "a minimum of 1 is required."
        )
    if n_samples is not None and a.shape[0] != n_samples:
        raise ValueError(length_error or f"{name} has {a.shape[0]} samples, expected {n_samples}")
    if n_features is not None and ndim == 2 and a.shape[1] != n_features:
        raise ValueError(
            f"{name} has {a.shape[1]} features, but {owner or 'the model'} is expecting "
            f"{n_features} features as input"
        )
    if target is None:
        target = a.dtype if a.dtype in _FLOATS else np.dtype(np.float64)
    a = np.ascontiguousarray(a, dtype=target)
    if ensure_finite and not all_finite(a):
        raise ValueError(f"{name} contains NaN or infinity")
    return a


def check_target(value, n_samples, dtype, name="y"):
    """A regression target: 1-D, length ``n_samples``, finite, in ``dtype``.

    A column vector ``(n_samples, 1)`` is flattened with a
    :class:`DataConversionWarning`, as scikit-learn does.
    """
    if value is None:
        raise ValueError(
            f"{name} is None: this estimator requires y to be passed, but the target y is None"
        )
    if type(value).__module__.startswith("scipy.sparse"):
        raise TypeError(f"{name} is a sparse matrix; fusedgrad needs a dense array")
    if isinstance(value, (str, bytes, dict, set)):
        raise TypeError(f"{name} must be an array of numbers, got {type(value).__name__}")
    _refuse_masked(name, value)
    try:
        a = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name} cannot be converted to an array: {exc}") from None
    if a.ndim == 2 and a.shape[1] == 1:
        warn(
            f"A column-vector {name} was passed when a 1d array was expected. Please change "
            f"the shape of {name} to (n_samples,), for example using ravel().",
            _sk(DataConversionWarning),
        )
        a = a.reshape(-1)
    if a.ndim == 2:
        raise ValueError(
            f"{name} must be 1-D of length {n_samples}, got shape {a.shape} "
            "(multi-output targets are not supported)"
        )
    if a.ndim == 1 and a.shape[0] != n_samples:
        raise ValueError(f"{name} has {a.shape[0]} values but X has {n_samples} samples")
    return _check_converted(name, a, _resolve_dtype("dtype", dtype), 1, True)


def check_sample_weight(value, n_samples, dtype, positive_sum=True):
    """Sample weights for ``fit``: ``None`` (unweighted), a real number (the same
    weight for every sample) or 1-D of length ``n_samples``; finite, non-negative,
    with a positive sum (unless not ``positive_sum``: a block of a larger set),
    in ``dtype``. Returns ``(weights or None, float64 sum of the weights, number of
    nonzero weights)``; the checks and sums take one pass."""
    if value is None:
        return None, float(n_samples), n_samples
    if _is_real(value) or (isinstance(value, np.ndarray) and value.ndim == 0
                           and value.dtype.kind in "iuf"):
        value = np.full(n_samples, value, dtype=np.float64)
    w = check_array("sample_weight", value, dtype=dtype, ndim=1, ensure_finite=False)
    if w.shape[0] != n_samples:
        raise ValueError(f"sample_weight has {w.shape[0]} values but X has {n_samples} samples")
    return (w, *_validate.weights("sample_weight", w, positive_sum))


def _r2(y, y_pred, sample_weight):
    y = np.asarray(y, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if sample_weight is None:
        w = np.ones_like(y)
    else:
        w = check_array("sample_weight", sample_weight, dtype=np.float64, ndim=1)
        if w.shape[0] != y.shape[0]:
            raise ValueError(
                f"sample_weight has {w.shape[0]} values but y has {y.shape[0]}"
            )
    mean = np.sum(w * y) / np.sum(w)
    ss_res = np.sum(w * (y - y_pred) ** 2)
    ss_tot = np.sum(w * (y - mean) ** 2)
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else 0.0
    return float(1.0 - ss_res / ss_tot)


class BaseModel:
    """Parameter handling of a fusedgrad estimator (see the module docstring)."""

    #: "regressor" or "classifier", set by the mixins.
    _estimator_type = None
    #: A fitted attribute whose presence means "fitted" (subclasses override).
    _fitted_attribute = "n_features_in_"

    @classmethod
    def _get_param_names(cls):
        init = cls.__init__
        if init is object.__init__:
            return []
        params = []
        for p in inspect.signature(init).parameters.values():
            if p.name == "self" or p.kind == p.VAR_KEYWORD:
                continue
            if p.kind == p.VAR_POSITIONAL:
                raise RuntimeError(f"{cls.__name__}.__init__ must not take *args")
            params.append(p.name)
        return sorted(params)

    def get_params(self, deep=True):
        """Parameters of this estimator.

        Parameters
        ----------
        deep : bool, default True
            Also return the parameters of contained estimators, as
            ``<name>__<parameter>``.

        Returns
        -------
        dict
        """
        out = {}
        for key in self._get_param_names():
            value = getattr(self, key)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update((f"{key}__{k}", v) for k, v in value.get_params().items())
            out[key] = value
        return out

    def set_params(self, **params):
        """Set parameters (``name=value`` or nested ``name__param=value``); returns self."""
        if not params:
            return self
        valid = self.get_params(deep=True)
        nested = defaultdict(dict)
        for key, value in params.items():
            key, delim, sub_key = key.partition("__")
            if key not in valid:
                raise ValueError(
                    f"Invalid parameter {key!r} for estimator {type(self).__name__}. "
                    f"Valid parameters are: {self._get_param_names()!r}."
                )
            if delim:
                nested[key][sub_key] = value
            else:
                setattr(self, key, value)
                valid[key] = value
        for key, sub in nested.items():
            valid[key].set_params(**sub)
        return self

    def __repr__(self):
        sig = inspect.signature(type(self).__init__)
        parts = []
        for name in self._get_param_names():
            value = getattr(self, name)
            default = sig.parameters[name].default
            same = False
            try:
                same = value is default or bool(value == default)
            except Exception:  # e.g. arrays: show them
                same = False
            if not same:
                parts.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    # --- scikit-learn integration -------------------------------------------------

    def __sklearn_tags__(self):
        from sklearn.utils import ClassifierTags, RegressorTags, Tags, TargetTags

        tags = Tags(
            estimator_type=self._estimator_type,
            target_tags=TargetTags(required=self._estimator_type is not None),
            transformer_tags=None,
            regressor_tags=RegressorTags() if self._estimator_type == "regressor" else None,
            classifier_tags=ClassifierTags() if self._estimator_type == "classifier" else None,
        )
        return tags

    def _more_tags(self):
        return {"requires_y": self._estimator_type is not None}

    def __sklearn_is_fitted__(self):
        return hasattr(self, self._fitted_attribute)

    def _check_is_fitted(self):
        if not self.__sklearn_is_fitted__():
            raise _sk(NotFittedError)(
                f"This {type(self).__name__} instance is not fitted yet; call 'fit' first."
            )

    def _validate_X(self, X, reset, dtype=None, ensure_finite=True):
        """Check ``X`` (see :func:`check_array`); record or check ``n_features_in_``."""
        X = check_array("X", X, dtype=dtype, ensure_finite=ensure_finite,
                        n_features=None if reset else self.n_features_in_,
                        owner=type(self).__name__)
        if reset:
            self.n_features_in_ = X.shape[1]
        return X

    def _fit_feature_names(self, names):
        """Record ``names`` (:func:`feature_names` of the fitted ``X``) as
        ``feature_names_in_``, or drop a previous fit's when ``None``."""
        if names is not None:
            self.feature_names_in_ = names
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_

    def _check_feature_names(self, X):
        """Compare the feature names of ``X`` with those of the fit (see the module docstring)."""
        fitted = getattr(self, "feature_names_in_", None)
        names = feature_names(X)
        owner = type(self).__name__
        if fitted is None and names is None:
            return
        if fitted is None or names is None:
            warn(
                f"X has feature names, but {owner} was fitted without feature names"
                if fitted is None else
                f"X does not have valid feature names, but {owner} was fitted with feature "
                "names",
                UserWarning,
            )
            return
        if names.shape == fitted.shape and np.all(names == fitted):
            return
        unseen = sorted(set(names) - set(fitted))
        missing = sorted(set(fitted) - set(names))

        def listed(title, values):
            shown = "".join(f"- {v}\n" for v in values[:5])
            return f"{title}:\n{shown}" + ("- ...\n" if len(values) > 5 else "")

        message = "The feature names should match those that were passed during fit.\n"
        if unseen:
            message += listed("Feature names unseen at fit time", unseen)
        if missing:
            message += listed("Feature names seen at fit time, yet now missing", missing)
        if not unseen and not missing:
            message += "Feature names must be in the same order as they were in fit.\n"
        raise ValueError(message)

    def _persist_feature_names(self, state):
        """Add ``feature_names_in_``, where the fit had names, to a model file's ``state``."""
        if hasattr(self, "feature_names_in_"):
            state["feature_names_in_"] = [str(v) for v in self.feature_names_in_]

    def _restore_feature_names(self, state):
        """Set ``feature_names_in_`` from a model file's ``state`` (after ``n_features_in_``)."""
        names = state.get("feature_names_in_")
        if names is None:
            return
        if (not isinstance(names, list) or len(names) != self.n_features_in_
                or not all(isinstance(v, str) for v in names)):
            raise ValueError(f"feature_names_in_ must be a list of {self.n_features_in_} "
                             f"strings, got {names!r}")
        self.feature_names_in_ = np.asarray(names, dtype=object)

    def _predict_any(self, X, method):
        """``method(X)`` for an in-memory ``X``; for a dask array, a lazy dask
        array of ``method`` over its row blocks. Checks first that the model
        is fitted and the feature names of ``X`` (once, not per block)."""
        from fusedgrad.models import _dask  # it imports this module

        self._check_is_fitted()
        self._check_feature_names(X)
        if _dask.is_dask_collection(X):
            return _dask.map_rows(X, self.n_features_in_, type(self).__name__, method)
        return method(X)


class RegressorMixin:
    """Estimator type "regressor" and ``score`` = R²."""

    _estimator_type = "regressor"

    def score(self, X, y, sample_weight=None):
        """Coefficient of determination R² of ``predict(X)`` against ``y``.

        Parameters
        ----------
        X : array_like, shape (n_samples, n_features)
        y : array_like, shape (n_samples,)
        sample_weight : array_like, shape (n_samples,), optional

        Returns
        -------
        float
            ``1 - SS_res / SS_tot``, computed in float64.
        """
        y_pred = self.predict(X)
        y = check_target(y, y_pred.shape[0], np.float64)
        return _r2(y, y_pred, sample_weight)


class ClassifierMixin:
    """Estimator type "classifier" and ``score`` = mean accuracy."""

    _estimator_type = "classifier"

    def score(self, X, y, sample_weight=None):
        """Mean accuracy of ``predict(X)`` against ``y`` (weighted if given).

        Parameters
        ----------
        X : array_like, shape (n_samples, n_features)
        y : array_like, shape (n_samples,)
        sample_weight : array_like, shape (n_samples,), optional

        Returns
        -------
        float
        """
        y_pred = self.predict(X)
        _refuse_masked("y", y)
        try:
            y = np.asarray(y)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"y cannot be converted to an array: {exc}") from None
        if y.shape != y_pred.shape:
            raise ValueError(f"y has shape {y.shape} but X has {y_pred.shape[0]} samples")
        correct = (y_pred == y).astype(np.float64)
        if sample_weight is None:
            return float(correct.mean())
        w = check_array("sample_weight", sample_weight, dtype=np.float64, ndim=1)
        if w.shape[0] != y.shape[0]:
            raise ValueError(f"sample_weight has {w.shape[0]} values but y has {y.shape[0]}")
        return float(np.sum(w * correct) / np.sum(w))


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
