"""The estimators of :mod:`fusedgrad.models` against scikit-learn's.

scikit-learn's estimators (plain NumPy and SciPy) are the baseline, set up
to do the same work: the same network (one logistic hidden layer, softmax
output), the same number of epochs (no early stop: ``tol=0``), the same
minibatch size for ``'sgd'``; full-batch gradient descent (``'gd'``) is
scikit-learn's ``'sgd'`` with ``batch_size=n_samples``, no momentum and no
shuffling. ``implementation`` is ``'sklearn'`` or ``'fused'``.
"""

import functools
import threading
import warnings

import numpy as np

from . import common

try:
    # Preloaded for asv's forkserver, as in common.py.
    import fusedgrad.models  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.neural_network  # noqa: F401
except Exception:  # pragma: no cover - older commits, no scikit-learn
    pass

#: Sizes of the model benchmarks (same names as the kernels', smaller N: a
#: fit is several passes over the data).
SIZES = {
    "small": dict(N=1024, d=32, h=32, K=10),
    "large-batch": dict(N=16384, d=64, h=128, K=10),
    "thin": dict(N=65536, d=16, h=32, K=4),
}

#: Epochs (lbfgs: iterations) per MLP fit, per solver.
EPOCHS = {"sgd": 3, "gd": 10, "lbfgs": 10}

if common.PROFILE == "fast":
    for _size, _n in (("small", 512), ("large-batch", 2048), ("thin", 4096)):
        SIZES[_size]["N"] = _n
    EPOCHS = {"sgd": 1, "gd": 2, "lbfgs": 2}

#: Minibatch size of ``'sgd'`` (scikit-learn's ``'auto'``).
BATCH_SIZE = 200


@functools.lru_cache(maxsize=2)
def regression_data(size, dtype, seed=0):
    """``(X, y)``: a linear model with intercept plus noise, X (N, d)."""
    N, d = SIZES[size]["N"], SIZES[size]["d"]
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, d))
    y = X @ rng.standard_normal(d) + 1.0 + 0.1 * rng.standard_normal(N)
    return X.astype(dtype), y.astype(dtype)


@functools.lru_cache(maxsize=2)
def classification_data(size, dtype, seed=0):
    """``(X, y)``: K classes given by a noisy linear teacher, X (N, d), y in [0, K)."""
    N, d, K = (SIZES[size][s] for s in ("N", "d", "K"))
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, d))
    y = np.argmax(X @ rng.standard_normal((d, K)) + 0.5 * rng.standard_normal((N, K)), axis=1)
    return X.astype(dtype), y


def _require(module, name):
    cls = getattr(common.require_module(module), name, None)
    if cls is None:
        raise NotImplementedError(f"{module}.{name} does not exist")
    return cls


def linear_regression(impl, dtype, solver="auto"):
    """An unfitted least-squares estimator of implementation ``impl``."""
    if impl == "sklearn":
        return _require("sklearn.linear_model", "LinearRegression")()
    return _require("fusedgrad.models", "LinearRegression")(solver=solver, dtype=dtype)


def mlp_classifier(impl, solver, size, dtype, max_iter=None, activation="logistic",
                   hidden=None):
    """An unfitted MLP classifier of implementation ``impl`` doing ``EPOCHS[solver]`` epochs
    (``hidden``: the hidden layer sizes, default one layer of ``SIZES[size]["h"]``)."""
    N, h = SIZES[size]["N"], SIZES[size]["h"]
    epochs = EPOCHS[solver] if max_iter is None else max_iter
    common_kw = dict(
        hidden_layer_sizes=(h,) if hidden is None else hidden,
        activation=activation,
        learning_rate_init=0.1,
        max_iter=epochs,
        tol=0.0,
        n_iter_no_change=epochs + 1,
        random_state=0,
    )
    if impl == "sklearn":
        cls = _require("sklearn.neural_network", "MLPClassifier")
        if solver == "gd":
            return cls(solver="sgd", batch_size=N, momentum=0.0, shuffle=False, **common_kw)
        if solver == "lbfgs":
            return cls(solver="lbfgs", **common_kw)
        return cls(solver="sgd", batch_size=BATCH_SIZE, **common_kw)
    cls = _require("fusedgrad.models", "MLPClassifier")
    return cls(solver=solver, batch_size=BATCH_SIZE, dtype=dtype, **common_kw)


def _quiet():
    # Every fit stops at max_iter on purpose: no convergence warnings.
    warnings.simplefilter("ignore")


_once = {}


def once(key, build):
    """``build()``, computed on the first call per process and ``key``, then reused.

    asv re-runs ``setup`` before every timed call; warm-up fits and fitted
    models are made in the first one only.
    """
    if key not in _once:
        _once[key] = build()
    return _once[key]


def _warm_up(key, make, X, y):
    """Fit once on a few rows (once per process): compiles the kernels of the fit."""
    once(("warm-up",) + key, lambda: make().fit(X[:256], y[:256]))


class LinearRegression:
    """Least squares: ``fit`` (fused: ``solver='auto'``) and ``predict``."""

    params = [["sklearn", "fused"], list(SIZES), common.DTYPES]
    param_names = ["implementation", "size", "dtype"]
    timeout = 120

    def setup(self, impl, size, dtype):
        _quiet()
        self.X, self.y = regression_data(size, dtype)
        self.make = functools.partial(linear_regression, impl, dtype)
        _warm_up((impl, size, dtype), self.make, self.X, self.y)
        self.fitted = once(("fitted", impl, size, dtype),
                           lambda: self.make().fit(self.X, self.y))

    def time_fit(self, impl, size, dtype):
        self.make().fit(self.X, self.y)

    def peakmem_fit(self, impl, size, dtype):
        self.make().fit(self.X, self.y)

    def time_predict(self, impl, size, dtype):
        self.fitted.predict(self.X)


class LinearRegressionSolver:
    """``fusedgrad.models.LinearRegression(solver=...).fit``, for each solver."""

    params = [["normal", "qr", "gd"], list(SIZES), common.DTYPES]
    param_names = ["solver", "size", "dtype"]
    timeout = 120

    def setup(self, solver, size, dtype):
        _quiet()
        self.X, self.y = regression_data(size, dtype)
        self.make = functools.partial(linear_regression, "fused", dtype, solver)
        _warm_up((solver, size, dtype), self.make, self.X, self.y)

    def time_fit(self, solver, size, dtype):
        self.make().fit(self.X, self.y)


class ConcurrentFits:
    """Two ``LinearRegression.fit`` calls in turn, or at once from two Python
    threads, after a fit on the main thread (as in an application that later
    fits in a thread pool). The kernels' one-thread BLAS limit must act from
    any thread: when it did not (threadpoolctl 3.8 ignores OpenBLAS thread
    counts set by any thread but the first that set one), LAPACK ran
    multi-threaded inside the kernels' threads, and ``'two threads'`` of the
    QR solver took 10 to 20 times as long as ``'in turn'``."""

    params = [["in turn", "two threads"], ["normal", "qr"], ["large-batch"], common.DTYPES]
    param_names = ["calls", "solver", "size", "dtype"]
    timeout = 120

    def setup(self, calls, solver, size, dtype):
        _quiet()
        self.X, self.y = regression_data(size, dtype)
        self.make = functools.partial(linear_regression, "fused", dtype, solver)
        _warm_up((solver, size, dtype), self.make, self.X, self.y)
        self.make().fit(self.X, self.y)  # the main thread sets the BLAS limit first

    def _fit(self):
        self.make().fit(self.X, self.y)

    def time_fit(self, calls, solver, size, dtype):
        if calls == "in turn":
            self._fit()
            self._fit()
            return
        threads = [threading.Thread(target=self._fit) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


class LinearRegressionDask:
    """``LinearRegression().fit`` on a dask array of four row blocks, against dask's own
    least squares (``dask.array.linalg.lstsq`` on ``[1, X]``, a tall-skinny QR)."""

    params = [["dask-lstsq", "fused"], list(SIZES), common.DTYPES]
    param_names = ["implementation", "size", "dtype"]
    timeout = 120

    def setup(self, impl, size, dtype):
        _quiet()
        da = common.require_module("dask.array")
        X, y = regression_data(size, dtype)
        rows = -(-X.shape[0] // 4)
        self.X = da.from_array(X, chunks=(rows, X.shape[1]))
        self.y = da.from_array(y, chunks=rows)
        if impl == "fused":
            make = functools.partial(linear_regression, "fused", dtype)
            self.fit = lambda: make().fit(self.X, self.y)
        else:
            ones = da.ones((X.shape[0], 1), X.dtype, chunks=(rows, 1))
            A = da.hstack([ones, self.X]).rechunk({1: -1})
            self.fit = lambda: da.linalg.lstsq(A, self.y)[0].compute()
        once(("dask-warm-up", impl, size, dtype), self.fit)

    def time_fit(self, impl, size, dtype):
        self.fit()


class MLPClassifierFit:
    """``MLPClassifier.fit``: ``EPOCHS[solver]`` epochs of minibatch (``sgd``) or full-batch GD,
    or iterations of L-BFGS (``lbfgs``, tolerance 0)."""

    params = [["sklearn", "fused"], ["sgd", "gd", "lbfgs"], list(SIZES), common.DTYPES]
    param_names = ["implementation", "solver", "size", "dtype"]
    timeout = 180

    def setup(self, impl, solver, size, dtype):
        _quiet()
        self.X, self.y = classification_data(size, dtype)
        self.make = functools.partial(mlp_classifier, impl, solver, size, dtype)
        _warm_up((impl, solver, size, dtype), self.make, self.X, self.y)

    def time_fit(self, impl, solver, size, dtype):
        self.make().fit(self.X, self.y)

    def peakmem_fit(self, impl, solver, size, dtype):
        self.make().fit(self.X, self.y)


class MLPClassifierFitNetworks:
    """``MLPClassifier.fit`` (``'sgd'``, minibatches of 200) of networks other than the
    lecture's: ReLU and tanh, one hidden layer of ``h`` units or two of ``h`` and
    ``h / 2``, each step through ``network_loss_grad`` (scikit-learn: its NumPy
    backpropagation)."""

    params = [["sklearn", "fused"], ["relu", "tanh"], ["1 hidden", "2 hidden"],
              ["small", "large-batch"], common.DTYPES]
    param_names = ["implementation", "activation", "layers", "size", "dtype"]
    timeout = 180

    def setup(self, impl, activation, layers, size, dtype):
        _quiet()
        self.X, self.y = classification_data(size, dtype)
        h = SIZES[size]["h"]
        hidden = (h,) if layers == "1 hidden" else (h, h // 2)
        self.make = functools.partial(mlp_classifier, impl, "sgd", size, dtype,
                                      activation=activation, hidden=hidden)
        _warm_up((impl, activation, layers, size, dtype), self.make, self.X, self.y)

    def time_fit(self, impl, activation, layers, size, dtype):
        self.make().fit(self.X, self.y)


class MLPClassifierPredict:
    """``MLPClassifier.predict`` on the training data, after one epoch of fit."""

    params = [["sklearn", "fused"], list(SIZES), common.DTYPES]
    param_names = ["implementation", "size", "dtype"]
    timeout = 120

    def setup(self, impl, size, dtype):
        _quiet()
        self.X, y = classification_data(size, dtype)

        def fit():
            model = mlp_classifier(impl, "sgd", size, dtype, max_iter=1).fit(self.X, y)
            model.predict(self.X)  # compiles the forward pass
            return model

        self.model = once(("fitted", impl, size, dtype), fit)

    def time_predict(self, impl, size, dtype):
        self.model.predict(self.X)


class FusedOverSklearn:
    """Fit time of a fused estimator divided by scikit-learn's (lower is better).

    Measured in one process, alternating, as ``bench_kernels.FusedOverNumpy``.
    """

    params = [["LinearRegression", "MLPClassifier-sgd", "MLPClassifier-gd"], list(SIZES),
              common.DTYPES]
    param_names = ["estimator", "size", "dtype"]
    unit = "ratio"
    timeout = 300

    def setup(self, estimator, size, dtype):
        _quiet()
        if estimator == "LinearRegression":
            self.X, self.y = regression_data(size, dtype)
            make = {impl: functools.partial(linear_regression, impl, dtype)
                    for impl in ("sklearn", "fused")}
        else:
            solver = estimator.split("-")[1]
            self.X, self.y = classification_data(size, dtype)
            make = {impl: functools.partial(mlp_classifier, impl, solver, size, dtype)
                    for impl in ("sklearn", "fused")}
        self.fit = {impl: (lambda m=m: m().fit(self.X, self.y)) for impl, m in make.items()}
        for impl in ("sklearn", "fused"):
            _warm_up((estimator, impl, size, dtype), make[impl], self.X, self.y)

    def track_fit_time_ratio(self, estimator, size, dtype):
        rounds = min(3, common.RATIO_ROUNDS)
        return common.ratio_of_times(self.fit["fused"], (), self.fit["sklearn"], (), rounds=rounds)


@functools.lru_cache(maxsize=2)
def sample_weights(size, dtype, seed=1):
    """Seeded weights of the samples: uniform in [0, 2], one in ten 0."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.0, 2.0, SIZES[size]["N"])
    w[rng.random(w.shape[0]) < 0.1] = 0.0
    return w.astype(dtype)


class WeightedFit:
    """``fit(X, y, sample_weight=w)`` of both estimators against scikit-learn's (which
    rescales a copy of X for least squares, and multiplies each batch's output
    deltas by the weights for the MLP); fusedgrad weights each row inside its
    fused passes."""

    params = [["sklearn", "fused"], ["LinearRegression", "MLPClassifier-sgd"], list(SIZES),
              common.DTYPES]
    param_names = ["implementation", "estimator", "size", "dtype"]
    timeout = 180

    def setup(self, impl, estimator, size, dtype):
        import inspect

        _quiet()
        if estimator == "LinearRegression":
            self.X, self.y = regression_data(size, dtype)
            self.make = functools.partial(linear_regression, impl, dtype)
        else:
            self.X, self.y = classification_data(size, dtype)
            self.make = functools.partial(mlp_classifier, impl, "sgd", size, dtype)
        if "sample_weight" not in inspect.signature(self.make().fit).parameters:
            raise NotImplementedError("fit takes no sample_weight in this version")
        self.w = sample_weights(size, dtype)
        once(("warm-up-weighted", impl, estimator, size, dtype),
             lambda: self.make().fit(self.X[:256], self.y[:256], sample_weight=self.w[:256]))

    def time_fit(self, impl, estimator, size, dtype):
        self.make().fit(self.X, self.y, sample_weight=self.w)

    def peakmem_fit(self, impl, estimator, size, dtype):
        self.make().fit(self.X, self.y, sample_weight=self.w)
