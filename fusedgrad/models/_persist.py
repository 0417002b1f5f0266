"""Saving and loading fitted models in a format that runs no code when read.

A model file is one uncompressed NumPy ``.npz`` archive (a zip) holding the
model's fitted arrays and a JSON metadata entry, stored as a uint8 array
named ``__meta__``::

    {"format": "fusedgrad-model", "format_version": 1, "class": "LinearRegression",
     "fusedgrad_version": "0.1.0", "params": {...}, "state": {...}}

It is read with ``np.load(path, allow_pickle=False)``: object arrays (which
would need pickle, and so could run code) are refused, and the class is
looked up in a registry of fusedgrad's own model classes, never imported by
name. Every problem (a truncated or corrupted file, a file of another
format, an unknown class, a newer format version, an array of the wrong
shape or dtype) is a ``ValueError`` that names the file and what is wrong.

Model classes take part with the :func:`register` decorator and three methods:

* ``_persist_state(self) -> (params, state, arrays)``: ``params`` and
  ``state`` JSON-serialisable dicts (see :func:`jsonable`), ``arrays`` a dict
  of name -> numeric ndarray;
* classmethod ``_from_persist_state(cls, params, state, arrays) -> model``,
  which validates every array (see :func:`expect_array`) and raises
  ``ValueError`` on anything inconsistent;
* ``save(self, path)``, which calls :func:`save`.
"""

import json
import os
import tempfile
import zipfile

import numpy as np

__all__ = ["register", "save", "load", "jsonable", "expect_array", "FORMAT", "FORMAT_VERSION"]

FORMAT = "fusedgrad-model"
FORMAT_VERSION = 1
_META = "__meta__"
_REGISTRY = {}
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def register(cls):
    """Class decorator: make ``cls`` loadable by :func:`load` under ``cls.__name__``."""
    _REGISTRY[cls.__name__] = cls
    return cls


def jsonable(value):
    """``value`` with tuples as lists, NumPy scalars as Python numbers and dtypes as names.

    Raises ``TypeError`` for anything else that JSON cannot hold.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, np.dtype):
        return value.name
    if isinstance(value, type) and issubclass(value, np.generic):
        return np.dtype(value).name
    raise TypeError(f"cannot store a value of type {type(value).__name__} in model metadata")


def expect_array(arrays, name, shape, dtypes):
    """``arrays[name]``, checked to exist with ``shape`` and a dtype in ``dtypes``.

    ``shape`` is a tuple of ints; ``dtypes`` a dtype or a tuple of dtypes.
    Raises ``ValueError`` naming the array otherwise.
    """
    if name not in arrays:
        raise ValueError(f"the array {name!r} is missing")
    a = arrays[name]
    if not isinstance(dtypes, tuple):
        dtypes = (dtypes,)
    dtypes = tuple(np.dtype(t) for t in dtypes)
    if a.dtype not in dtypes:
        want = " or ".join(t.name for t in dtypes)
        raise ValueError(f"the array {name!r} has dtype {a.dtype}, expected {want}")
    if a.shape != tuple(shape):
        raise ValueError(f"the array {name!r} has shape {a.shape}, expected {tuple(shape)}")
    return a


def save(model, path):
    """Write ``model`` (fitted) to ``path`` as one ``.npz`` file; the name is used as given.

    The file is written to a temporary name in the same directory and then
    renamed, so an interrupted save never leaves a half-written model at
    ``path``.
    """
    cls_name = type(model).__name__
    if _REGISTRY.get(cls_name) is not type(model):
        raise TypeError(f"{cls_name} is not a registered fusedgrad model class")
    from fusedgrad._version import __version__

    params, state, arrays = model._persist_state()
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "class": cls_name,
        "fusedgrad_version": __version__,
        "params": jsonable(params),
        "state": jsonable(state),
    }
    for name, a in arrays.items():
        if name == _META or not name.isidentifier():
            raise ValueError(f"invalid array name {name!r}")
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf":
            raise TypeError(f"array {name!r} must be a numeric ndarray")
    blob = np.frombuffer(json.dumps(meta, allow_nan=False).encode("utf-8"), dtype=np.uint8)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fusedgrad-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{_META: blob}, **arrays)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _bad(path, what):
    return ValueError(f"{path}: {what}")


def _read_archive(path):
    """The metadata dict and the arrays of a model file (no class checks yet)."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(_NPY_MAGIC):
        raise _bad(path, "this is a NumPy .npy array file, not a fusedgrad model file")
    if not head.startswith(_ZIP_MAGIC):
        raise _bad(path, "not a fusedgrad model file (not an .npz/zip archive)")
    try:
        with zipfile.ZipFile(path) as z:
            members = z.infolist()
    except Exception as exc:  # any failure to parse the zip directory is damage
        raise _bad(path, f"corrupted or truncated model file ({type(exc).__name__}: {exc})") \
            from None
    if not any(m.filename == _META + ".npy" for m in members):
        raise _bad(path, f"an .npz/zip archive without fusedgrad metadata ({_META!r}): "
                   "not a fusedgrad model file")
    for m in members:
        # fusedgrad writes stored (uncompressed) members only; refusing the others
        # also refuses decompression bombs
        if m.compress_type != zipfile.ZIP_STORED:
            raise _bad(path, f"the member {m.filename!r} is compressed: not written by "
                       "fusedgrad, or corrupted")
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            for name in archive.files:
                try:
                    arrays[name] = archive[name]
                except ValueError as exc:
                    if "allow_pickle" in str(exc):
                        raise _bad(path, f"the array {name!r} holds Python objects (pickle); "
                                   "refused, loading a model never runs code") from None
                    raise
    except ValueError as exc:
        if str(exc).startswith(f"{path}:"):
            raise
        raise _bad(path, f"corrupted or truncated model file ({exc})") from None
    except Exception as exc:  # zip, npy-header, size and memory errors alike: damage
        raise _bad(path, f"corrupted or truncated model file ({type(exc).__name__}: {exc})") \
            from None
    if _META not in arrays:
        raise _bad(path, f"an .npz/zip archive without fusedgrad metadata ({_META!r}): "
                   "not a fusedgrad model file")
    raw = arrays.pop(_META)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise _bad(path, f"the metadata entry {_META!r} is not a 1-D uint8 array")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(path, f"the metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise _bad(path, "the metadata is not a JSON object")
    return meta, arrays


def load(path):
    """Load a model written by ``model.save(path)``.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    model
        A fitted estimator of the class that was saved.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        The file is not a fusedgrad model file, is truncated or corrupted,
        was written by a newer format version, names an unknown class, or
        holds inconsistent arrays or metadata. The message names the file.
    """
    path = os.fspath(path)
    meta, arrays = _read_archive(path)
    if meta.get("format") != FORMAT:
        raise _bad(path, f"metadata format is {meta.get('format')!r}, expected {FORMAT!r}: "
                   "not a fusedgrad model file")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _bad(path, f"invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise _bad(path, f"written with model format version {version} (by fusedgrad "
                   f"{meta.get('fusedgrad_version', '?')}); this fusedgrad reads format "
                   f"version {FORMAT_VERSION} at most: upgrade fusedgrad")
    cls_name = meta.get("class")
    cls = _REGISTRY.get(cls_name) if isinstance(cls_name, str) else None
    if cls is None:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise _bad(path, f"unknown model class {cls_name!r} (known: {known})")
    params, state = meta.get("params"), meta.get("state")
    if not isinstance(params, dict) or not isinstance(state, dict):
        raise _bad(path, "the metadata lacks the 'params' or 'state' object")
    unknown = set(params) - set(cls._get_param_names())
    if unknown:
        raise _bad(path, f"unknown parameters for {cls_name}: {sorted(unknown)}")
    try:
        return cls._from_persist_state(params, state, arrays)
    except (ValueError, TypeError, KeyError) as exc:
        raise _bad(path, f"inconsistent {cls_name} model: {exc}") from None

