"""The ``fusedgrad`` command: data loading, ``train``, ``demo`` and its errors.

The command is run as a subprocess (``python -m fusedgrad``), as a user runs
it; the data loader is also tested directly.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from fusedgrad import cli


def run(*args, cwd=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "fusedgrad", *args],
        capture_output=True, text=True, cwd=cwd, timeout=timeout,
    )


def blobs(n=300, d=5, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 3.0, (k, d))
    y = rng.integers(0, k, n)
    return centers[y] + rng.normal(0.0, 1.0, (n, d)), y


# ---------------------------------------------------------------------------
# load_data


def test_load_csv_with_header_and_string_labels(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,species,b\n1.5,cat,2\n3,dog,4.25\n-1,cat,0\n")
    X, y, _ = cli.load_data(str(path), label_column="species")
    np.testing.assert_array_equal(X, [[1.5, 2.0], [3.0, 4.25], [-1.0, 0.0]])
    assert list(y) == ["cat", "dog", "cat"]


def test_load_csv_without_header_default_last_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("1,2,0\n3,4,1\n5,6,2\n")
    X, y, _ = cli.load_data(str(path))
    np.testing.assert_array_equal(X, [[1, 2], [3, 4], [5, 6]])
    assert y.dtype.kind == "i" and list(y) == [0, 1, 2]


def test_load_csv_negative_index_and_float_target(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("0.5,1,2\n1.5,3,4\n")
    X, y, _ = cli.load_data(str(path), label_column="0")
    np.testing.assert_array_equal(X, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(y, [0.5, 1.5])
    X, y, _ = cli.load_data(str(path), label_column="-2")
    np.testing.assert_array_equal(y, [1, 3])


def test_load_npy_and_npz(tmp_path):
    X, y = blobs(20)
    np.save(tmp_path / "d.npy", np.column_stack([X, y]))
    X1, y1, _ = cli.load_data(str(tmp_path / "d.npy"))
    np.testing.assert_array_equal(X1, X)
    np.testing.assert_array_equal(y1, y)
    np.savez(tmp_path / "d.npz", features=X, labels=y)
    X2, y2, _ = cli.load_data(str(tmp_path / "d.npz"), x_key="features", y_key="labels")
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y2, y)


@pytest.mark.parametrize(
    "name, content, kwargs, message",
    [
        ("d.csv", "a,b\n1,2\n", {"label_column": "c"}, "'c' is not a column"),
        ("d.csv", "1,2\n3,4\n", {"label_column": "5"}, "out of range"),
        ("d.csv", "1,2\n3,4\n", {"label_column": "name"}, "no header"),
        ("d.csv", "1,2,0\n3,4\n", {}, "line 2 has 2 fields"),
        ("d.csv", "a,b\n1,x\n", {"label_column": "a"}, "non-number"),
        ("d.csv", "", {}, "no data"),
        ("d.json", "{}", {}, "unknown file type"),
        ("d.npy", "not numpy", {}, "cannot read"),
    ],
)
def test_load_errors(tmp_path, name, content, kwargs, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(cli.UsageError, match=message):
        cli.load_data(str(path), **kwargs)


def test_load_missing_file(tmp_path):
    with pytest.raises(cli.UsageError, match="no such file"):
        cli.load_data(str(tmp_path / "missing.csv"))


# ---------------------------------------------------------------------------
# The command, as a subprocess


def test_train_mlp_csv_save_and_load(tmp_path):
    X, y = blobs(400)
    names = np.array(["red", "green", "blue"])[y]
    path = tmp_path / "train.csv"
    with open(path, "w") as f:
        f.write("x0,x1,x2,x3,x4,colour\n")
        for row, label in zip(X, names):
            f.write(",".join(f"{v:.6f}" for v in row) + f",{label}\n")
    model_path = tmp_path / "model.npz"
    result = run("train", "mlp", str(path), "--label-column", "colour", "--hidden", "16",
                 "--max-iter", "50", "--learning-rate", "0.01", "--save", str(model_path))
    assert result.returncode == 0, result.stderr
    assert "held-out accuracy" in result.stdout
    accuracy = float(result.stdout.split("held-out accuracy")[1].split()[0])
    assert accuracy > 0.9  # well-separated clusters
    from fusedgrad.models import load

    model = load(str(model_path))
    assert set(model.classes_) == {"red", "green", "blue"}
    assert np.mean(model.predict(X.astype(np.float32)) == names) > 0.9


def test_train_mlp_lbfgs(tmp_path):
    X, y = blobs(300)
    np.save(tmp_path / "d.npy", np.column_stack([X, y]))
    result = run("train", "mlp", str(tmp_path / "d.npy"), "--solver", "lbfgs", "--hidden", "8",
                 "--max-iter", "100")
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split("held-out accuracy")[1].split()[0]) > 0.9


def test_train_ols_npy(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(500, 4))
    target = X @ np.array([1.0, -2.0, 0.5, 3.0]) + 7.0 + rng.normal(0.0, 0.01, 500)
    np.save(tmp_path / "d.npy", np.column_stack([target, X]))
    result = run("train", "ols", str(tmp_path / "d.npy"), "--label-column", "0")
    assert result.returncode == 0, result.stderr
    r2 = float(result.stdout.split("held-out R²")[1].split()[0])
    assert r2 > 0.999


def test_load_weight_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,w,b,t\n1,0.5,2,0\n3,2,4,1\n")
    X, y, w = cli.load_data(str(path), label_column="t", weight_column="w")
    np.testing.assert_array_equal(X, [[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(w, [0.5, 2.0])
    np.testing.assert_array_equal(y, [0, 1])
    np.save(tmp_path / "d.npy", np.array([[1.0, 0.5, 2.0, 0.0], [3.0, 2.0, 4.0, 1.0]]))
    X2, y2, w2 = cli.load_data(str(tmp_path / "d.npy"), weight_column="1")
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(w2, w)
    np.savez(tmp_path / "d.npz", X=X, y=y, sw=w)
    assert np.array_equal(cli.load_data(str(tmp_path / "d.npz"), w_key="sw")[2], w)
    assert cli.load_data(str(tmp_path / "d.npz"))[2] is None
    with pytest.raises(cli.UsageError, match="no array 'weights'"):
        cli.load_data(str(tmp_path / "d.npz"), w_key="weights")
    with pytest.raises(cli.UsageError, match="is the label column"):
        cli.load_data(str(path), label_column="t", weight_column="3")
    with pytest.raises(cli.UsageError, match="--weight-column 'v' is not a column"):
        cli.load_data(str(path), weight_column="v")


def test_train_ols_weighted(tmp_path):
    """The weights reach the fit: two lines, one with weight 0 everywhere."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=600)
    heavy = rng.random(600) < 0.5
    target = np.where(heavy, 2.0 * x + 1.0, -3.0 * x)
    w = heavy.astype(float)
    np.save(tmp_path / "d.npy", np.column_stack([x, w, target]))
    result = run("train", "ols", str(tmp_path / "d.npy"), "--weight-column", "1")
    assert result.returncode == 0, result.stderr
    assert "weighted" in result.stdout
    assert float(result.stdout.split("held-out weighted R²")[1].split()[0]) > 0.999999
    bad = np.column_stack([x, -w, target])
    np.save(tmp_path / "bad.npy", bad)
    result = run("train", "ols", str(tmp_path / "bad.npy"), "--weight-column", "1")
    assert result.returncode == 1
    assert "sample_weight must be non-negative" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "mlp", "missing.csv"], "no such file"),
        (["train", "ols", "d.csv", "--label-column", "zzz"], "not a column"),
        (["train", "mlp", "d.csv", "--hidden", "0"], "positive integer"),
        (["train", "mlp", "d.csv", "--test-fraction", "1.5"], "in [0, 1)"),
        (["train", "svm", "d.csv"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_command_errors_are_one_line(tmp_path, args, message):
    (tmp_path / "d.csv").write_text("a,b,t\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n9,1,0\n")
    result = run(*args, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_train_bad_hyperparameter_is_one_line(tmp_path):
    X, y = blobs(100)
    np.save(tmp_path / "d.npy", np.column_stack([X, y]))
    result = run("train", "mlp", str(tmp_path / "d.npy"), "--solver", "lbfgs-ish")
    assert result.returncode == 1
    assert "solver" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_version():
    result = run("--version")
    assert result.returncode == 0
    from fusedgrad import __version__

    assert __version__ in result.stdout


def test_demo_small():
    pytest.importorskip("sklearn")
    result = run("demo", "--samples", "5000", "--epochs", "2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # The digits model reaches the accuracy the README promises.
    line = next(l for l in out.splitlines() if l.strip().startswith("| fusedgrad |"))
    assert float(line.split("|")[2]) >= 0.95
    assert "held-out R²" in out and "speed-up" in out
