"""Model files: ``model.save(path)`` / ``fusedgrad.models.load(path)`` (and pickle).

Round trips must give identical predictions; every damaged, foreign or
inconsistent file must give a ValueError naming the file, and loading must
never run code (no pickle).
"""

import json
import os
import pickle
import zipfile
from contextlib import nullcontext

import numpy as np
import pytest

from fusedgrad.models import LinearRegression, MLPClassifier, NotFittedError, load
from fusedgrad.models import _persist


def _data(seed=0, n=120, d=4):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    return X, rng


def _linear(solver="auto", fit_intercept=True, dtype=np.float64):
    X, rng = _data()
    X = X.astype(dtype)
    y = (X @ np.arange(1.0, 5.0) + 2.0 + 0.1 * rng.standard_normal(len(X))).astype(dtype)
    return LinearRegression(solver=solver, fit_intercept=fit_intercept).fit(X, y), X


def _mlp(labels="str", hidden=(6,), dtype="float32", solver="adam"):
    X, rng = _data(1)
    codes = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)
    y = np.array(["cat", "dog", "emu"])[codes] if labels == "str" else codes * 10 - 5
    model = MLPClassifier(hidden_layer_sizes=hidden, max_iter=5, random_state=0, dtype=dtype,
                          solver=solver)
    with pytest.warns(Warning):  # 5 iterations do not converge
        model.fit(X, y)
    return model, X


def _named(make):
    """``make()``'s model refitted on a dataframe of ``X``: ``feature_names_in_`` too."""
    pd = pytest.importorskip("pandas")
    model, X = make()
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
    y = model.predict(X)
    with pytest.warns(Warning) if isinstance(model, MLPClassifier) else nullcontext():
        model.fit(frame, y)  # the MLP's 5 iterations do not converge
    return model, frame


MODELS = {
    "linear-normal": lambda: _linear(),
    "linear-qr-no-intercept": lambda: _linear("qr", False),
    "linear-gd-float32": lambda: _linear("gd", True, np.float32),
    "mlp-str-labels": lambda: _mlp(),
    "mlp-int-labels-2-layers-f64": lambda: _mlp("int", (5, 3), "float64"),
    "mlp-lbfgs": lambda: _mlp(solver="lbfgs"),
    "linear-feature-names": lambda: _named(_linear),
    "mlp-feature-names": lambda: _named(_mlp),
}


def _outputs(model, X):
    out = [model.predict(X)]
    if hasattr(model, "predict_proba"):
        out.append(model.predict_proba(X))
    return out


def _fitted_attributes(model):
    return {k: v for k, v in vars(model).items() if k.endswith("_") and not k.startswith("_")}


def _same(a, b):
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (np.asarray(a).dtype == np.asarray(b).dtype
                and np.array_equal(a, b, equal_nan=np.asarray(a).dtype.kind == "f"))
    if isinstance(a, np.generic):
        return type(a) is type(b) and (a == b or (np.isnan(a) and np.isnan(b)))
    return a == b


@pytest.fixture(params=list(MODELS))
def fitted(request):
    return MODELS[request.param]()


def test_round_trip(fitted, tmp_path):
    model, X = fitted
    path = tmp_path / "model.fgm"  # any name: nothing is appended
    model.save(path)
    assert os.listdir(tmp_path) == ["model.fgm"]  # no temporary file left behind
    loaded = load(path)
    assert type(loaded) is type(model)
    assert loaded.get_params() == model.get_params()
    for got, want in zip(_outputs(loaded, X), _outputs(model, X)):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    a, b = _fitted_attributes(model), _fitted_attributes(loaded)
    assert a.keys() == b.keys()
    for name in a:
        assert _same(a[name], b[name]), name
    assert loaded.score(X, model.predict(X)) == 1.0
    # the archive is a plain npz: arrays and JSON metadata, nothing else
    with np.load(path, allow_pickle=False) as archive:
        meta = json.loads(archive["__meta__"].tobytes())
    assert meta["format"] == "fusedgrad-model" and meta["format_version"] == 1
    assert meta["class"] == type(model).__name__


def test_pickle_round_trip(fitted):
    model, X = fitted
    again = pickle.loads(pickle.dumps(model))
    for got, want in zip(_outputs(again, X), _outputs(model, X)):
        assert np.array_equal(got, want)


def test_dtype_class_parameter_is_stored_by_name(tmp_path):
    X, rng = _data()
    y = X.sum(axis=1)
    model = LinearRegression(dtype=np.float32).fit(X, y)
    model.save(tmp_path / "m")
    loaded = load(tmp_path / "m")
    assert loaded.dtype == "float32" and loaded.coef_.dtype == np.float32
    assert np.array_equal(loaded.predict(X), model.predict(X))


def test_save_unfitted(tmp_path):
    with pytest.raises(NotFittedError):
        LinearRegression().save(tmp_path / "never-written.npz")
    assert os.listdir(tmp_path) == []


def test_failed_save_keeps_existing_file(tmp_path, monkeypatch):
    model, _ = _linear()
    path = tmp_path / "m.npz"
    model.save(path)
    before = path.read_bytes()
    params, state, arrays = model._persist_state()
    arrays["bad"] = np.array([object()], dtype=object)
    monkeypatch.setattr(model, "_persist_state", lambda: (params, state, arrays))
    with pytest.raises(TypeError, match="numeric"):
        model.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.npz"]


# ---------------------------------------------------------------------------
# Damaged and foreign files
# ---------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    model, X = _linear()
    path = tmp_path / "model.npz"
    model.save(path)
    return path, model, X


@pytest.mark.parametrize("keep", [0, 3, 30, 0.5, -22, -1])
def test_truncated_file(saved, keep):
    path, _, _ = saved
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    path.write_bytes(data[:n])
    with pytest.raises(ValueError, match=str(path).replace("\\", "\\\\")):
        load(path)


def test_every_corrupted_byte_is_refused_or_harmless(saved):
    """Flipping any one byte either gives a ValueError or (in a field nobody reads,
    e.g. a timestamp) a model that predicts exactly as before: never a wrong model
    or another exception."""
    path, model, X = saved
    data = bytearray(path.read_bytes())
    want = model.predict(X)
    refused = 0
    for i in range(len(data)):
        damaged = bytearray(data)
        damaged[i] ^= 0x10
        path.write_bytes(bytes(damaged))
        try:
            loaded = load(path)
        except ValueError as exc:
            assert str(path) in str(exc)
            refused += 1
            continue
        assert np.array_equal(loaded.predict(X), want), f"byte {i}"
    assert refused > len(data) // 2


def test_foreign_files(tmp_path):
    npy = tmp_path / "a.npy"
    np.save(npy, np.arange(3.0))
    with pytest.raises(ValueError, match="a.npy: this is a NumPy .npy array file"):
        load(npy)
    text = tmp_path / "notes.txt"
    text.write_text("coef_ = [1, 2, 3]\n")
    with pytest.raises(ValueError, match="not a fusedgrad model file"):
        load(text)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="not a fusedgrad model file"):
        load(empty)
    npz = tmp_path / "plain.npz"
    np.savez(npz, coef_=np.arange(3.0), intercept_=np.array(1.0))
    with pytest.raises(ValueError, match="without fusedgrad metadata"):
        load(npz)
    plain_zip = tmp_path / "docs.zip"
    with zipfile.ZipFile(plain_zip, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match="docs.zip"):
        load(plain_zip)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.npz")


def _rewrite(path, meta=None, arrays=None, raw_meta=None):
    """Rewrite a model file with edited metadata and/or arrays."""
    with np.load(path, allow_pickle=False) as archive:
        old_meta = json.loads(archive["__meta__"].tobytes())
        old_arrays = {k: archive[k] for k in archive.files if k != "__meta__"}
    new_meta = meta(old_meta) if meta else old_meta
    new_arrays = arrays(old_arrays) if arrays else old_arrays
    blob = raw_meta if raw_meta is not None else np.frombuffer(
        json.dumps(new_meta).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, __meta__=blob, **new_arrays)


def _set(key, value):
    def edit(meta):
        meta[key] = value
        return meta
    return edit


@pytest.mark.parametrize(
    "edit,match",
    [
        (dict(meta=_set("format_version", 2)), "format version 2.*upgrade fusedgrad"),
        (dict(meta=_set("format_version", "1")), "invalid format_version"),
        (dict(meta=_set("format", "other-tool")), "not a fusedgrad model file"),
        (dict(meta=_set("class", "os.system")), "unknown model class 'os.system'"),
        (dict(meta=_set("params", {"alpha": 1.0})), r"unknown parameters.*alpha"),
        (dict(meta=_set("params", {"solver": "magic"})), "solver must be one of"),
        (dict(meta=_set("state", None)), "'params' or 'state'"),
        (dict(raw_meta=np.frombuffer(b"{not json", np.uint8)), "not valid JSON"),
        (dict(raw_meta=np.frombuffer(b"[1, 2]", np.uint8)), "not a JSON object"),
        (dict(raw_meta=np.arange(4.0)), "not a 1-D uint8 array"),
    ],
    ids=["newer-version", "bad-version", "other-format", "unknown-class", "unknown-param",
         "bad-param", "no-state", "bad-json", "json-list", "meta-dtype"],
)
def test_bad_metadata(saved, edit, match):
    path, _, _ = saved
    _rewrite(path, **edit)
    with pytest.raises(ValueError, match=match) as info:
        load(path)
    assert str(path) in str(info.value)


def _with(name, value):
    def edit(arrays):
        arrays[name] = value
        return arrays
    return edit


def _without(name):
    def edit(arrays):
        del arrays[name]
        return arrays
    return edit


@pytest.mark.parametrize(
    "edit,match",
    [
        (_with("coef_", np.zeros(3)), r"'coef_' has shape \(3,\), expected \(4,\)"),
        (_with("coef_", np.zeros((4, 1))), r"'coef_' has shape \(4, 1\)"),
        (_with("coef_", np.zeros(4, np.int64)), "'coef_' has dtype int64"),
        (_with("intercept_", np.zeros(1)), r"'intercept_' has shape \(1,\), expected \(\)"),
        (_with("intercept_", np.float32(0.0)), "'intercept_' has dtype float32"),
        (_with("coef_", np.array([1.0, np.nan, 0.0, 0.0])), "NaN"),
        (_without("coef_"), "'coef_' is missing"),
        (_with("extra", np.zeros(2)), "unexpected arrays"),
    ],
    ids=["short", "2-D", "int", "intercept-shape", "intercept-dtype", "nan", "missing",
         "extra"],
)
def test_wrong_arrays_linear(saved, edit, match):
    path, _, _ = saved
    _rewrite(path, arrays=edit)
    with pytest.raises(ValueError, match=match) as info:
        load(path)
    assert str(path) in str(info.value)


def test_wrong_arrays_mlp(tmp_path):
    model, _ = _mlp(hidden=(6,))
    path = tmp_path / "mlp.npz"
    for edit, match in [
        (_with("coefs_0", np.zeros((4, 5), np.float32)), r"'coefs_0' has shape \(4, 5\)"),
        (_with("intercepts_1", np.zeros(3)), "'intercepts_1' has dtype float64"),
        (_without("coefs_1"), "'coefs_1' is missing"),
    ]:
        model.save(path)
        _rewrite(path, arrays=edit)
        with pytest.raises(ValueError, match=match):
            load(path)


def test_wrong_state(saved):
    path, _, _ = saved

    def state(key, value):
        def edit(meta):
            meta["state"][key] = value
            return meta
        return edit

    for key, value, match in [("n_features_in_", 3, "coef_' has shape"),
                              ("n_features_in_", "4", "n_features_in_ must be"),
                              ("rank_", 9, "rank_ must be"),
                              ("solver_", "svd", "solver_ must be"),
                              ("feature_names_in_", ["a", "b"], "feature_names_in_ must be"),
                              ("feature_names_in_", [1, 2, 3, 4], "feature_names_in_ must be"),
                              ("feature_names_in_", "abcd", "feature_names_in_ must be")]:
        good = path.read_bytes()
        _rewrite(path, meta=state(key, value))
        with pytest.raises(ValueError, match=match):
            load(path)
        path.write_bytes(good)


class _Trap:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("where", ["array", "meta"])
def test_loading_never_runs_code(saved, tmp_path, where):
    path, _, _ = saved
    marker = tmp_path / "code-ran"
    trap = np.array([_Trap(str(marker))], dtype=object)
    # the trap does fire when unpickled, so the test can fail
    np.save(tmp_path / "t.npy", trap)
    np.load(tmp_path / "t.npy", allow_pickle=True)
    assert marker.exists()
    marker.unlink()
    if where == "array":
        _rewrite(path, arrays=_with("coef_", trap))
    else:
        _rewrite(path, raw_meta=trap)
    with pytest.raises(ValueError, match="pickle|Object arrays|object"):
        load(path)
    assert not marker.exists()


def test_registry_only_holds_models():
    assert _persist._REGISTRY == {"LinearRegression": LinearRegression,
                                  "MLPClassifier": MLPClassifier}
