"""The ``fusedgrad`` command: ``demo``, ``train`` and ``bench``.

* ``fusedgrad demo`` -- the README's main job, on built-in data only:
  :class:`~fusedgrad.models.MLPClassifier` on scikit-learn's bundled
  handwritten digits, :class:`~fusedgrad.models.LinearRegression` on the
  bundled diabetes data (each beside scikit-learn's estimator), a large-batch
  run on generated data with a progress bar, and a table of fused kernel vs
  NumPy reference time per epoch.
* ``fusedgrad train {mlp,ols} DATA`` -- fit a model on a ``.npy``, ``.npz``
  or ``.csv`` file, print a summary, optionally ``--save`` it.
* ``fusedgrad bench`` -- the peer comparison tables (:mod:`fusedgrad.bench`).

Errors in the user's input (a missing file, a bad column, a bad flag) are
reported as one line on stderr with a non-zero exit status, not a traceback.
"""

import argparse
import csv
import os
import sys
import time
import warnings

import numpy as np

from fusedgrad import __version__, kernels, reference


class UsageError(Exception):
    """An error in the command's input: printed as one line, exit status 1."""


# ---------------------------------------------------------------------------
# Data


def make_blobs(n_samples, n_features, n_classes, dtype, seed=0):
    """Gaussian class clusters: the demo's generated large-batch data set.

    Returns ``X`` (n_samples, n_features) of ``dtype`` and integer labels
    ``y``; the class means are far enough apart that a small MLP separates
    them well.
    """
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 0.6, (n_classes, n_features))
    y = rng.integers(0, n_classes, n_samples)
    X = (centers[y] + rng.normal(0.0, 1.0, (n_samples, n_features))).astype(dtype)
    return X, y


def _split(n_samples, test_fraction, seed):
    """Indices of a shuffled train/test split."""
    order = np.random.default_rng(seed).permutation(n_samples)
    n_test = int(round(n_samples * test_fraction))
    if n_test < 1 or n_test >= n_samples:
        raise UsageError(
            f"--test-fraction {test_fraction} leaves no training or no test sample "
            f"of {n_samples}"
        )
    return order[n_test:], order[:n_test]


def _column_index(spec, names, n_columns, flag="--label-column"):
    """Resolve ``--label-column`` or ``--weight-column`` (``flag``): an index,
    negative allowed, or a header name."""
    if spec is None:
        return n_columns - 1
    try:
        index = int(spec)
    except ValueError:
        if names is None:
            raise UsageError(
                f"{flag} {spec!r} is a name but the file has no header row"
            ) from None
        if spec not in names:
            raise UsageError(
                f"{flag} {spec!r} is not a column; the columns are {', '.join(names)}"
            ) from None
        return names.index(spec)
    if not -n_columns <= index < n_columns:
        raise UsageError(f"{flag} {index} is out of range for {n_columns} columns")
    return index % n_columns


def _columns(label_column, weight_column, names, n_columns):
    """The label column, the weight column (None without ``--weight-column``) and
    the feature columns (all others)."""
    label = _column_index(label_column, names, n_columns)
    weight = None
    if weight_column is not None:
        weight = _column_index(weight_column, names, n_columns, "--weight-column")
        if weight == label:
            raise UsageError(f"--weight-column {weight_column!r} is the label column")
    features = [j for j in range(n_columns) if j not in (label, weight)]
    if not features:
        raise UsageError("no feature columns are left besides the label and weight columns")
    return label, weight, features


def _parse_labels(values):
    """Labels as numbers when they all parse as numbers, else as strings."""
    try:
        numbers = np.asarray(values, dtype=np.float64)
    except ValueError:
        return np.asarray(values)
    if np.all(numbers == np.round(numbers)):
        return numbers.astype(np.int64)
    return numbers


def _load_csv(path, label_column, delimiter, weight_column=None):
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f, delimiter=delimiter) if row]
    if not rows:
        raise UsageError(f"{path} holds no data")
    names = None
    try:
        [float(v) for i, v in enumerate(rows[0])]
    except ValueError:
        names, rows = [v.strip() for v in rows[0]], rows[1:]
    if not rows:
        raise UsageError(f"{path} has a header but no data rows")
    n_columns = len(names) if names is not None else len(rows[0])
    if n_columns < 2:
        raise UsageError(f"{path} has {n_columns} column; need features and a label column")
    for number, row in enumerate(rows, start=2 if names is not None else 1):
        if len(row) != n_columns:
            raise UsageError(f"{path} line {number} has {len(row)} fields, expected {n_columns}")
    label, weight, features = _columns(label_column, weight_column, names, n_columns)
    try:
        X = np.array([[float(row[j]) for j in features] for row in rows])
    except ValueError as error:
        raise UsageError(f"{path}: a feature column holds a non-number ({error})") from None
    y = _parse_labels([row[label].strip() for row in rows])
    w = None
    if weight is not None:
        try:
            w = np.array([float(row[weight]) for row in rows])
        except ValueError as error:
            raise UsageError(f"{path}: the weight column holds a non-number ({error})") from None
    return X, y, w


def load_data(path, label_column=None, x_key="X", y_key="y", delimiter=",",
              weight_column=None, w_key=None):
    """Read ``X``, ``y`` and the sample weights ``w`` from a ``.npy``, ``.npz`` or
    ``.csv`` file; ``w`` is None unless ``weight_column`` or ``w_key`` names it.

    * ``.npy``: one 2-D array; ``label_column`` (default: the last) is ``y``.
    * ``.npz``: arrays ``x_key`` and ``y_key`` (or, with only one 2-D array
      in the file, that array split as for ``.npy``). Read without pickle.
    * ``.csv``: numbers separated by ``delimiter``, with an optional header
      row; ``label_column`` is an index or a header name. Labels that are not
      numbers are kept as strings (class names).

    ``weight_column`` (an index or header name, like ``label_column``) takes
    the weights out of a ``.npy``, ``.csv`` or single-array ``.npz``;
    ``w_key`` names the weights array of an ``.npz``.
    """
    if not os.path.exists(path):
        raise UsageError(f"no such file: {path}")
    suffix = os.path.splitext(path)[1].lower()
    try:
        if suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                if x_key in archive.files and y_key in archive.files:
                    if w_key is None:
                        return archive[x_key], archive[y_key], None
                    if w_key not in archive.files:
                        raise UsageError(f"{path} has no array {w_key!r} (--w-key); it has "
                                         f"{', '.join(archive.files)}")
                    return archive[x_key], archive[y_key], archive[w_key]
                if len(archive.files) != 1:
                    raise UsageError(
                        f"{path} has arrays {', '.join(archive.files)}; name the feature "
                        f"and label arrays with --x-key and --y-key"
                    )
                data = archive[archive.files[0]]
        elif suffix in (".csv", ".txt"):
            return _load_csv(path, label_column, delimiter, weight_column)
        else:
            raise UsageError(f"{path}: unknown file type {suffix!r} (use .npy, .npz or .csv)")
    except (ValueError, OSError, EOFError) as error:
        raise UsageError(f"cannot read {path}: {error}") from None
    if data.ndim != 2 or data.shape[1] < 2:
        raise UsageError(
            f"{path} holds an array of shape {data.shape}; expected 2-D with features and a "
            "label column"
        )
    label, weight, features = _columns(label_column, weight_column, None, data.shape[1])
    y = data[:, label]
    X = data[:, features]
    if np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    return X, y, (None if weight is None else data[:, weight])


# ---------------------------------------------------------------------------
# Output helpers


def _median_seconds(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _table(rows, header, say):
    say("   | " + " | ".join(header) + " |")
    say("   |" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
    for row in rows:
        say("   | " + " | ".join(row) + " |")


def _needs_sklearn(what):
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise UsageError(
            f"{what} needs scikit-learn (its bundled data sets and estimators): "
            "pip install 'fusedgrad[demo]'"
        ) from None


# ---------------------------------------------------------------------------
# demo


def demo(n_samples=200_000, n_features=64, n_hidden=128, n_classes=10, epochs=5,
         dtype="float32", out=sys.stdout):
    """The README's main job; returns a dict of the headline numbers.

    1. MLPClassifier on scikit-learn's bundled 8x8 digits (held-out accuracy,
       beside scikit-learn's MLPClassifier with the same settings).
    2. LinearRegression on the bundled diabetes data (held-out R², beside
       scikit-learn's LinearRegression).
    3. A large-batch MLPClassifier run on generated class clusters with a
       progress bar.
    4. Time per epoch of the fused kernels against the NumPy reference
       (:mod:`fusedgrad.reference`) on the same generated data.
    """
    _needs_sklearn("fusedgrad demo")
    from sklearn.datasets import load_diabetes, load_digits
    from sklearn.linear_model import LinearRegression as SkLinearRegression
    from sklearn.neural_network import MLPClassifier as SkMLPClassifier

    from fusedgrad.models import LinearRegression, MLPClassifier

    def say(text=""):
        print(text, file=out, flush=True)

    results = {}
    say(f"fusedgrad {__version__} demo")

    # 1. Digits.
    digits = load_digits()
    X = (digits.data / 16.0).astype(dtype)
    train, test = _split(len(X), 0.25, seed=0)
    settings = dict(hidden_layer_sizes=(64,), activation="logistic", solver="adam",
                    learning_rate_init=0.01, batch_size=64, max_iter=60, random_state=0)
    say(f"\n1. MLPClassifier on the bundled handwritten digits ({len(train)} train, "
        f"{len(test)} held out, 64 features, 10 classes), {settings['solver']}, "
        f"{settings['max_iter']} epochs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the ConvergenceWarning at max_iter (both models)
        start = time.perf_counter()
        model = MLPClassifier(dtype=dtype, **settings).fit(X[train], digits.target[train])
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        sk = SkMLPClassifier(**settings).fit(X[train], digits.target[train])
        sk_s = time.perf_counter() - start
    accuracy = model.score(X[test], digits.target[test])
    sk_accuracy = sk.score(X[test], digits.target[test])
    _table([["fusedgrad", f"{accuracy:.3f}", f"{fit_s:.2f}"],
            ["scikit-learn", f"{sk_accuracy:.3f}", f"{sk_s:.2f}"]],
           ["MLPClassifier", "held-out accuracy", "fit s"], say)
    say("   (the first fit includes compiling the kernels or loading them from the cache)")
    results["digits_accuracy"] = accuracy

    # 2. Diabetes.
    diabetes = load_diabetes()
    Xd, yd = diabetes.data.astype(np.float64), diabetes.target.astype(np.float64)
    train, test = _split(len(Xd), 0.25, seed=0)
    say(f"\n2. LinearRegression on the bundled diabetes data ({len(train)} train, "
        f"{len(test)} held out, 10 features)")
    rows = []
    for solver in ("auto", "qr", "gd"):
        params = dict(solver=solver)
        if solver == "gd":
            params.update(max_iter=20_000, tol=1e-10)
        fitted = LinearRegression(**params).fit(Xd[train], yd[train])
        rows.append([f"fusedgrad, solver={solver!r}", f"{fitted.score(Xd[test], yd[test]):.4f}"])
        if solver == "auto":
            results["diabetes_r2"] = fitted.score(Xd[test], yd[test])
    sk = SkLinearRegression().fit(Xd[train], yd[train])
    results["diabetes_r2_sklearn"] = sk.score(Xd[test], yd[test])
    rows.append(["scikit-learn", f"{results['diabetes_r2_sklearn']:.4f}"])
    _table(rows, ["LinearRegression", "held-out R²"], say)

    # 3. Large batch, generated data.
    Xg, yg = make_blobs(n_samples + n_samples // 4, n_features, n_classes, dtype)
    Xtr, ytr, Xte, yte = Xg[:n_samples], yg[:n_samples], Xg[n_samples:], yg[n_samples:]
    say(f"\n3. Large batch: MLPClassifier {n_features}-{n_hidden}-{n_classes} on {n_samples} "
        f"generated samples, {dtype}, sgd with batch_size 4096, {epochs} epochs")
    model = MLPClassifier(hidden_layer_sizes=(n_hidden,), solver="sgd", batch_size=4096,
                          learning_rate_init=0.5, momentum=0.9, max_iter=epochs, tol=0.0,
                          dtype=dtype, random_state=0, verbose=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(Xtr, ytr)
    results["blobs_accuracy"] = model.score(Xte, yte)
    say(f"   held-out accuracy {results['blobs_accuracy']:.3f}")

    # 4. Fused kernels against the NumPy reference, one full-batch epoch.
    (W1, W2), (b1, b2) = model.coefs_, model.intercepts_
    params = [W1, b1, W2, b2]
    y_int = np.searchsorted(model.classes_, ytr)
    t = (Xtr @ np.linspace(-1.0, 1.0, n_features).astype(dtype)).astype(dtype)
    w = np.zeros(n_features, dtype)
    timings = [
        ("MLP loss and gradient (full batch)",
         lambda: reference.mlp_loss_grad(Xtr, y_int, *params),
         lambda: kernels.mlp_loss_grad(Xtr, y_int, *params)),
        ("OLS loss and gradient",
         lambda: reference.ols_loss_grad(Xtr, t, w),
         lambda: kernels.ols_loss_grad(Xtr, t, w)),
        ("OLS normal equations (XᵀX, yX)",
         lambda: reference.gram(Xtr, t),
         lambda: kernels.gram(Xtr, t)),
    ]
    say(f"\n4. One full-batch epoch on the {n_samples} x {n_features} generated data, "
        f"{dtype}, median of 5")
    rows = []
    for name, numpy_fn, fused_fn in timings:
        fused_fn()  # compile or load from the cache
        numpy_s = _median_seconds(numpy_fn, 5)
        fused_s = _median_seconds(fused_fn, 5)
        rows.append([name, f"{numpy_s * 1e3:.1f}", f"{fused_s * 1e3:.1f}",
                     f"{numpy_s / fused_s:.1f}×"])
        results[name] = numpy_s / fused_s
    _table(rows, ["computation", "NumPy ms", "fused ms", "speed-up"], say)
    return results


# ---------------------------------------------------------------------------
# train


def train(args, out=sys.stdout):
    """``fusedgrad train``: fit, evaluate on a held-out split, summarise, save."""
    from fusedgrad.models import LinearRegression, MLPClassifier

    def say(text=""):
        print(text, file=out, flush=True)

    X, y, w = load_data(args.data, args.label_column, args.x_key, args.y_key, args.delimiter,
                        args.weight_column, args.w_key)
    if X.ndim != 2 or X.shape[0] < 2:
        raise UsageError(f"{args.data} holds {X.shape[0]} sample(s); need at least 2")
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise UsageError(f"{args.data}: the features must be real numbers, got dtype {X.dtype}")
    X = X.astype(args.dtype, copy=False)
    if args.test_fraction > 0:
        tr, te = _split(len(X), args.test_fraction, args.random_state)
    else:
        tr, te = np.arange(len(X)), None
    if args.model == "mlp":
        model = MLPClassifier(
            hidden_layer_sizes=tuple(args.hidden), activation=args.activation,
            solver=args.solver, alpha=args.alpha, batch_size=args.batch_size,
            learning_rate_init=args.learning_rate, momentum=args.momentum,
            max_iter=args.max_iter, tol=args.tol, early_stopping=args.early_stopping,
            random_state=args.random_state, verbose=args.verbose, dtype=args.dtype,
        )
        metric = "accuracy"
    else:
        if not np.issubdtype(np.asarray(y).dtype, np.number):
            raise UsageError(f"{args.data}: the target column of ols must be numeric")
        model = LinearRegression(fit_intercept=not args.no_intercept, solver=args.solver,
                                 learning_rate=args.learning_rate, max_iter=args.max_iter,
                                 tol=args.tol)
        y = np.asarray(y, dtype=args.dtype)
        metric = "R²"
    w_tr = w_te = None
    if w is not None:
        w = np.asarray(w)
        if w.shape != (len(X),):
            raise UsageError(f"{args.data}: {len(w)} weights for {len(X)} samples")
        w_tr, w_te = w[tr], (None if te is None else w[te])
    start = time.perf_counter()
    try:
        model.fit(X[tr], y[tr], sample_weight=w_tr)
    except ValueError as error:
        if "sample_weight" not in str(error):
            raise
        raise UsageError(f"{args.data}: the weights: {error}") from None
    fit_s = time.perf_counter() - start
    say(f"fusedgrad train {args.model}: {args.data}")
    say(f"   samples {len(X)} ({len(tr)} train"
        + (f", {len(te)} held out)" if te is not None else ")")
        + f", features {X.shape[1]}, {args.dtype}"
        + (", weighted" if w is not None else ""))
    say(f"   model   {model!r}")
    say(f"   fit     {fit_s:.2f} s" + (f", {model.n_iter_} iterations"
                                       if getattr(model, "n_iter_", None) else ""))
    weighted = "weighted " if w is not None else ""
    say(f"   train {weighted}{metric} {model.score(X[tr], y[tr], w_tr):.4f}")
    if te is not None:
        say(f"   held-out {weighted}{metric} {model.score(X[te], y[te], w_te):.4f}")
    if args.save:
        model.save(args.save)
        say(f"   saved to {args.save} (load with fusedgrad.models.load)")
    return model


# ---------------------------------------------------------------------------
# Command line


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _fraction(text):
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _batch_size(text):
    return text if text == "auto" else _positive_int(text)


def build_parser():
    parser = argparse.ArgumentParser(prog="fusedgrad", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"fusedgrad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="train the models on built-in data and time the kernels")
    d.add_argument("--samples", type=_positive_int, default=200_000,
                   help="samples of the generated large-batch data (default 200000)")
    d.add_argument("--epochs", type=_positive_int, default=5,
                   help="epochs of the large-batch run (default 5)")
    d.add_argument("--dtype", choices=["float32", "float64"], default="float32")

    t = sub.add_parser("train", help="fit a model on a .npy, .npz or .csv file")
    t.add_argument("model", choices=["mlp", "ols"])
    t.add_argument("data", help="a .npy/.npz/.csv file")
    t.add_argument("--label-column", default=None,
                   help="index or header name of the label/target column (default: last)")
    t.add_argument("--x-key", default="X", help="feature array of an .npz (default X)")
    t.add_argument("--y-key", default="y", help="label array of an .npz (default y)")
    t.add_argument("--weight-column", default=None,
                   help="column of sample weights (index or csv header name), not a feature")
    t.add_argument("--w-key", default=None, help="sample-weight array of an .npz")
    t.add_argument("--delimiter", default=",", help="csv delimiter (default ,)")
    t.add_argument("--dtype", choices=["float32", "float64"], default=None,
                   help="default: float32 for mlp, float64 for ols")
    t.add_argument("--test-fraction", type=_fraction, default=0.2,
                   help="share of the samples held out for the score (default 0.2)")
    t.add_argument("--solver", default=None,
                   help="mlp: gd, sgd, adam, lbfgs (default adam); ols: auto, normal, qr, gd "
                        "(default auto)")
    t.add_argument("--hidden", type=_positive_int, nargs="+", default=[100],
                   help="mlp hidden layer sizes (default 100)")
    t.add_argument("--activation", choices=["logistic", "tanh", "relu"], default="logistic")
    t.add_argument("--alpha", type=float, default=1e-4, help="mlp L2 penalty")
    t.add_argument("--batch-size", type=_batch_size, default="auto")
    t.add_argument("--learning-rate", type=float, default=None,
                   help="mlp learning_rate_init (default 0.001) / ols gd step")
    t.add_argument("--momentum", type=float, default=0.9)
    t.add_argument("--max-iter", type=_positive_int, default=200)
    t.add_argument("--tol", type=float, default=1e-4)
    t.add_argument("--early-stopping", action="store_true")
    t.add_argument("--no-intercept", action="store_true", help="ols: fit_intercept=False")
    t.add_argument("--random-state", type=int, default=0)
    t.add_argument("--verbose", action="store_true", help="progress bar while training")
    t.add_argument("--save", metavar="PATH", help="save the fitted model (fusedgrad.models.load)")

    sub.add_parser("bench", help="peer comparison tables (see fusedgrad bench --help)",
                   add_help=False)
    return parser


def main(argv=None):
    """Entry point of the ``fusedgrad`` command; returns the exit status."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        from fusedgrad.bench import main as bench_main

        return bench_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "demo":
            if args.samples < 100:
                parser.error("--samples must be at least 100")
            demo(n_samples=args.samples, epochs=args.epochs, dtype=args.dtype)
        else:
            if args.dtype is None:
                args.dtype = "float32" if args.model == "mlp" else "float64"
            if args.solver is None:
                args.solver = "adam" if args.model == "mlp" else "auto"
            if args.learning_rate is None:
                args.learning_rate = 0.001 if args.model == "mlp" else "auto"
            train(args)
    except UsageError as error:
        print(f"fusedgrad: error: {error}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as error:
        # Invalid data or hyperparameters, reported by the models' validation.
        print(f"fusedgrad: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fusedgrad: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
