"""Model files beyond ``tests/test_persist.py``: hostile headers and other processes.

``tests/test_persist.py`` covers truncated files, every flipped byte,
foreign formats, bad metadata, wrong arrays and pickle payloads. Added here:

* an array whose ``.npy`` header declares a huge shape over a few bytes of
  data (a file of a kilobyte that asks for terabytes) is refused with the
  documented ``ValueError`` naming the file, in a subprocess under an
  address-space limit, so that an attempt to allocate cannot take the
  machine's memory;
* a directory instead of a file gives an ``OSError`` naming it;
* a model saved in one process loads in a fresh one and predicts the same.
"""

import io
import json
import os
import subprocess
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent


def _fitted():
    from fusedgrad.models import LinearRegression, MLPClassifier

    rng = np.random.default_rng(31)
    X = rng.standard_normal((200, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lin = LinearRegression().fit(X, X @ np.arange(1.0, 5.0))
        mlp = MLPClassifier(hidden_layer_sizes=(5,), max_iter=3, random_state=0).fit(
            X, (X[:, 0] > 0).astype(int))
    return {"LinearRegression": lin, "MLPClassifier": mlp}, X


def _npy_bytes(descr, shape, payload):
    """A .npy member whose header declares ``shape`` but holds ``payload`` bytes."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + payload


def _with_member(path, name, data):
    """Rewrite the model file ``path`` with member ``name`` replaced by raw bytes."""
    with zipfile.ZipFile(path) as z:
        members = {m.filename: z.read(m.filename) for m in z.infolist()}
    members[name + ".npy"] = data
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for member, blob in members.items():
            z.writestr(member, blob)


HOSTILE = {
    # declared shape: (elements of coef_) -> the file is a few hundred bytes
    "terabytes": (2**40,),
    "gigabytes": (2**28,),
    "overflowing": (2**62, 2**62),
    "negative": (-4,),
}

HOSTILE_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    sys.path.insert(0, sys.argv[1])
    from fusedgrad.models import load
    vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
    limit = vm + 2**30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out = {}
    for path in sys.argv[2:]:
        try:
            load(path)
        except Exception as exc:
            out[path] = [type(exc).__name__, str(exc)]
        else:
            out[path] = ["no error", ""]
    print(json.dumps(out))
    """
)


def test_huge_declared_shapes_refused(tmp_path):
    models, _ = _fitted()
    paths = {}
    for cls, model in models.items():
        member = "coef_" if cls == "LinearRegression" else "coefs_0"
        for key, shape in HOSTILE.items():
            path = tmp_path / f"{cls}-{key}.npz"
            model.save(path)
            _with_member(path, member, _npy_bytes("<f8", shape, b"\0" * 64))
            assert path.stat().st_size < 100_000
            paths[str(path)] = (cls, key)
    # the import of the package happens in the child; importing it preloads nothing big
    proc = subprocess.run([sys.executable, "-c", HOSTILE_SCRIPT, str(TESTS), *paths],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for path, (kind, message) in results.items():
        assert kind == "ValueError", (paths[path], kind, message[:300])
        assert path in message, (paths[path], message[:300])


def test_directory_instead_of_file(tmp_path):
    from fusedgrad.models import load

    with pytest.raises(OSError, match=str(tmp_path).replace("\\", "\\\\")):
        load(tmp_path)


LOAD_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from fusedgrad.models import load
    X = np.load(sys.argv[1])
    for path, out in zip(sys.argv[2::2], sys.argv[3::2]):
        model = load(path)
        result = [model.predict(X)]
        if hasattr(model, "predict_proba"):
            result.append(model.predict_proba(X))
        np.save(out, np.concatenate([np.ravel(r).astype(np.float64) for r in result]))
    """
)


def test_saved_model_loads_in_a_fresh_process(tmp_path):
    models, X = _fitted()
    np.save(tmp_path / "X.npy", X)
    argv, want = [], {}
    for cls, model in models.items():
        path, out = tmp_path / f"{cls}.npz", tmp_path / f"{cls}-out.npy"
        model.save(path)
        result = [model.predict(X)]
        if hasattr(model, "predict_proba"):
            result.append(model.predict_proba(X))
        want[out] = np.concatenate([np.ravel(r).astype(np.float64) for r in result])
        argv += [str(path), str(out)]
    proc = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(tmp_path / "X.npy"), *argv],
                          env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for out, expected in want.items():
        np.testing.assert_array_equal(np.load(out), expected)
