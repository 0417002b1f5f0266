"""The models on ``device='cuda'`` against the same models on ``device='cpu'``.

In CI these run under numba's CUDA simulator (``tests/conftest.py``) with the
tiny blocks of ``tests/test_cuda.py`` (its ``small_blocks`` fixture), so that
a dozen rows span several blocks. The CPU models are the reference: with the
same ``random_state`` both devices start from the same weights and take the
same minibatches, so the weights, ``loss_curve_`` and the predictions must
agree to rounding (the GPU sums in another order).
"""

import warnings

import numpy as np
import pytest

from fusedgrad.kernels.cuda import _runtime as rt
from fusedgrad.models import LinearRegression, MLPClassifier
from test_cuda import count_allocations
from test_cuda import small_blocks  # noqa: F401  (autouse: tiny blocks, poisoned outputs)

pytestmark = pytest.mark.skipif(rt.cuda is None, reason="numba-cuda is not installed")

TOL = dict(float32=dict(rtol=2e-5, atol=2e-6), float64=dict(rtol=1e-10, atol=1e-12))


def blobs(n, d, k, seed):
    rng = np.random.RandomState(seed)
    centers = 2.0 * rng.randn(k, d)
    y = rng.randint(0, k, n)
    return (centers[y] + rng.randn(n, d)).astype(np.float32), y


def fit_both(make, *args, method="fit", **kwargs):
    models = []
    for device in ("cpu", "cuda"):
        model = make(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            getattr(model, method)(*args, **kwargs)
        models.append(model)
    return models


def assert_same_mlp(cpu, gpu, dtype="float32"):
    tol = TOL[dtype]
    for a, b in zip(cpu.coefs_ + cpu.intercepts_, gpu.coefs_ + gpu.intercepts_):
        assert isinstance(b, np.ndarray) and b.dtype == a.dtype
        np.testing.assert_allclose(b, a, **tol)
    np.testing.assert_allclose(gpu.loss_curve_, cpu.loss_curve_, **tol)
    assert gpu.n_iter_ == cpu.n_iter_ and gpu.t_ == cpu.t_


X_MLP, Y_MLP = blobs(20, 3, 3, seed=0)

MLP_CONFIGS = {
    "sgd-nesterov-l2": dict(solver="sgd", alpha=0.05, learning_rate_init=0.2),
    "sgd-momentum-invscaling": dict(solver="sgd", nesterovs_momentum=False,
                                    learning_rate="invscaling", learning_rate_init=0.5),
    "sgd-no-momentum": dict(solver="sgd", momentum=0.0, learning_rate_init=0.3),
    "adam-l2": dict(solver="adam", alpha=0.1, learning_rate_init=0.05),
    "gd": dict(solver="gd", learning_rate_init=0.5, alpha=0.01),
    "adam-early-stopping": dict(solver="adam", early_stopping=True, validation_fraction=0.3,
                                learning_rate_init=0.05),
    "sgd-float64": dict(solver="sgd", dtype="float64", learning_rate_init=0.2),
    "lbfgs-l2": dict(solver="lbfgs", alpha=0.05),
}


@pytest.mark.parametrize("name", list(MLP_CONFIGS))
def test_mlp_fit_matches_cpu(name):
    config = MLP_CONFIGS[name]
    cpu, gpu = fit_both(
        lambda device: MLPClassifier(hidden_layer_sizes=(3,), max_iter=2, batch_size=8,
                                     random_state=1, device=device, **config),
        X_MLP, Y_MLP)
    assert_same_mlp(cpu, gpu, config.get("dtype", "float32"))
    if config.get("early_stopping"):
        assert gpu.validation_scores_ == cpu.validation_scores_
        assert gpu.best_validation_score_ == cpu.best_validation_score_


WEIGHTED_CONFIGS = {
    "sgd-shuffled-l2": dict(solver="sgd", alpha=0.05, learning_rate_init=0.2),
    "gd": dict(solver="gd", learning_rate_init=0.5, alpha=0.01),
    "adam-early-stopping": dict(solver="adam", early_stopping=True, validation_fraction=0.3,
                                learning_rate_init=0.05),
    "lbfgs-l2-float64": dict(solver="lbfgs", alpha=0.05, dtype="float64"),
    "two-hidden-relu-adam": dict(activation="relu", hidden_layer_sizes=(5, 3), solver="adam",
                                 learning_rate_init=0.05, alpha=0.01),
    "two-hidden-tanh-unshuffled-early-stopping": dict(
        activation="tanh", hidden_layer_sizes=(4, 3), solver="sgd", shuffle=False,
        early_stopping=True, validation_fraction=0.3, learning_rate_init=0.2),
}


@pytest.mark.parametrize("name", list(WEIGHTED_CONFIGS))
def test_weighted_mlp_fit_matches_cpu(name):
    """Sample weights on the GPU (gathered with each batch; the fused kernel and
    the layered path weight the softmax-CE rows) as on the CPU, a batch of weight
    0 included (no step on either device)."""
    config = dict(WEIGHTED_CONFIGS[name])
    config.setdefault("hidden_layer_sizes", (3,))
    w = np.random.RandomState(9).uniform(0.0, 2.0, len(Y_MLP)).astype(np.float32)
    w[:8] = 0.0  # the first batch of 8 when not shuffled
    cpu, gpu = fit_both(
        lambda device: MLPClassifier(max_iter=2, batch_size=8, random_state=1, device=device,
                                     **config),
        X_MLP, Y_MLP, sample_weight=w)
    unweighted = fit_both(
        lambda device: MLPClassifier(max_iter=2, batch_size=8, random_state=1, device=device,
                                     **config),
        X_MLP, Y_MLP)[1]
    assert_same_mlp(cpu, gpu, config.get("dtype", "float32"))
    if config.get("early_stopping"):
        np.testing.assert_allclose(gpu.validation_scores_, cpu.validation_scores_, rtol=1e-6)
    assert max(np.abs(a - b).max() for a, b in zip(unweighted.coefs_, gpu.coefs_)) > 1e-4


def test_mlp_partial_fit_and_prediction_match_cpu():
    labels = np.array(["a", "b", "c"])
    y = labels[Y_MLP]

    def make(device):
        return MLPClassifier(hidden_layer_sizes=(4,), solver="adam", batch_size=10,
                             learning_rate_init=0.1, random_state=3, device=device)

    cpu, gpu = fit_both(make, X_MLP[:10], y[:10], method="partial_fit", classes=labels)
    for model in (cpu, gpu):
        model.partial_fit(X_MLP[10:], y[10:])  # the optimizer's state carries over
    assert_same_mlp(cpu, gpu)
    X_new = X_MLP[::-1] + 0.5
    np.testing.assert_allclose(gpu.predict_proba(X_new), cpu.predict_proba(X_new), **TOL["float32"])
    np.testing.assert_allclose(gpu.predict_log_proba(X_new), cpu.predict_log_proba(X_new),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(gpu.predict(X_new), cpu.predict(X_new))
    assert gpu.score(X_MLP, y) == cpu.score(X_MLP, y)
    assert gpu.predict_proba(X_new).dtype == np.float32


NETWORK_CONFIGS = {
    "relu-adam": dict(activation="relu", hidden_layer_sizes=(4,), solver="adam",
                      learning_rate_init=0.05, alpha=0.01),
    "tanh-sgd": dict(activation="tanh", hidden_layer_sizes=(4,), solver="sgd",
                     learning_rate_init=0.2),
    "identity-sgd": dict(activation="identity", hidden_layer_sizes=(3,), solver="sgd",
                         learning_rate_init=0.1),
    "two-hidden-relu-early-stopping": dict(activation="relu", hidden_layer_sizes=(5, 3),
                                           solver="adam", learning_rate_init=0.05,
                                           early_stopping=True, validation_fraction=0.3),
    "three-hidden-logistic-l2": dict(activation="logistic", hidden_layer_sizes=(4, 3, 5),
                                     solver="sgd", learning_rate_init=0.5, alpha=0.05),
    "no-hidden-float64": dict(hidden_layer_sizes=(), solver="sgd", learning_rate_init=0.2,
                              dtype="float64"),
    "two-hidden-relu-lbfgs-float64": dict(activation="relu", hidden_layer_sizes=(4, 3),
                                          solver="lbfgs", alpha=0.01, dtype="float64"),
}


@pytest.mark.parametrize("name", list(NETWORK_CONFIGS))
def test_other_networks_match_cpu(name):
    """Any depth and hidden activation trains on the GPU (the layered path)
    as on the CPU; prediction runs the same network's forward pass."""
    config = NETWORK_CONFIGS[name]
    cpu, gpu = fit_both(
        lambda device: MLPClassifier(max_iter=2, batch_size=8, random_state=2, device=device,
                                     **config),
        X_MLP, Y_MLP)
    assert len(gpu.coefs_) == len(config["hidden_layer_sizes"]) + 1
    assert_same_mlp(cpu, gpu, config.get("dtype", "float32"))
    if config.get("early_stopping"):
        assert gpu.validation_scores_ == cpu.validation_scores_
    tol = TOL[config.get("dtype", "float32")]
    np.testing.assert_allclose(gpu.predict_proba(X_MLP), cpu.predict_proba(X_MLP), **tol)
    np.testing.assert_array_equal(gpu.predict(X_MLP), cpu.predict(X_MLP))


def test_network_fitted_on_cpu_predicts_on_gpu():
    cpu = MLPClassifier(hidden_layer_sizes=(5, 4), activation="tanh", max_iter=3,
                        random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cpu.fit(X_MLP, Y_MLP)
    want = cpu.predict_proba(X_MLP)
    got = cpu.set_params(device="cuda").predict_proba(X_MLP)
    np.testing.assert_allclose(got, want, **TOL["float32"])


def test_linear_qr_on_cuda_raises():
    X, y = X_MLP, X_MLP @ np.array([1.0, -1.0, 2.0], np.float32)
    with pytest.raises(ValueError, match="solver='qr'.*device='cuda'"):
        LinearRegression(solver="qr", device="cuda").fit(X, y)


def test_without_a_gpu_fit_raises(monkeypatch):
    monkeypatch.setattr(rt, "_unavailable_reason", lambda: "no CUDA GPU or driver was found")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        MLPClassifier(device="cuda", max_iter=1).fit(X_MLP, Y_MLP)
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        LinearRegression(device="cuda").fit(X_MLP, X_MLP[:, 0])


def count_copies(monkeypatch):
    """Record the size of every device-to-host copy."""
    sizes = []
    cls = type(rt.cuda.device_array(1, np.float32))
    original = cls.copy_to_host

    def counting(self, *args, **kwargs):
        sizes.append(int(np.prod(self.shape)))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "copy_to_host", counting)
    return sizes


def test_mlp_fit_copies_no_parameters_per_step(monkeypatch):
    sizes = count_copies(monkeypatch)
    counts = []
    for batch_size in (20, 5):  # 1 and 4 steps per epoch
        del sizes[:]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            MLPClassifier(hidden_layer_sizes=(3,), solver="sgd", batch_size=batch_size,
                          max_iter=2, random_state=0, device="cuda").fit(X_MLP, Y_MLP)
        n_params = 3 * 3 + 3 + 3 * 3 + 3
        # per epoch: the 3 numbers of the loss and checks; once: parameters and velocity
        assert sorted(sizes) == [3, 3, n_params, n_params], sizes
        counts.append(len(sizes))
    assert counts[0] == counts[1]


X_LIN = (np.random.RandomState(5).randn(24, 3) + 4.0).astype(np.float32)
Y_LIN = (X_LIN @ np.array([1.0, -2.0, 0.5]) + 3.0
         + 0.1 * np.random.RandomState(6).randn(24)).astype(np.float32)

LINEAR_CONFIGS = {
    "normal": dict(solver="normal"),
    "auto": dict(solver="auto"),
    "normal-no-intercept": dict(solver="normal", fit_intercept=False),
    "gd-auto-step": dict(solver="gd", max_iter=3),
    "gd-fixed-step-no-intercept": dict(solver="gd", max_iter=3, learning_rate=0.01,
                                       fit_intercept=False),
}


@pytest.mark.parametrize("name", list(LINEAR_CONFIGS))
def test_linear_fit_matches_cpu(name):
    config = LINEAR_CONFIGS[name]
    cpu, gpu = fit_both(lambda device: LinearRegression(device=device, **config), X_LIN, Y_LIN)
    assert gpu.coef_.dtype == np.float32 and isinstance(gpu.coef_, np.ndarray)
    np.testing.assert_allclose(gpu.coef_, cpu.coef_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gpu.intercept_, cpu.intercept_, rtol=1e-4, atol=1e-4)
    assert (gpu.solver_, gpu.n_iter_, gpu.rank_) == (cpu.solver_, cpu.n_iter_, cpu.rank_)
    if config["solver"] == "gd":
        np.testing.assert_allclose(gpu.loss_curve_, cpu.loss_curve_, rtol=1e-5)
    else:
        np.testing.assert_allclose(gpu.cond_, cpu.cond_, rtol=1e-3)
    np.testing.assert_allclose(gpu.predict(X_LIN), cpu.predict(X_LIN), rtol=1e-4, atol=1e-4)


W_LIN = np.r_[np.zeros(5), np.random.RandomState(7).uniform(0.0, 3.0, 19)].astype(np.float32)


@pytest.mark.parametrize("name", list(LINEAR_CONFIGS))
def test_weighted_linear_fit_matches_cpu(name):
    """The device copies centred by the weighted means and scaled by sqrt(n s_i / sum s)
    give the CPU's weighted fit (the first 5 rows, weight 0, do not count)."""
    config = LINEAR_CONFIGS[name]
    cpu, gpu = fit_both(lambda device: LinearRegression(device=device, **config), X_LIN, Y_LIN,
                        sample_weight=W_LIN)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gd stops at max_iter=3
        unweighted = LinearRegression(**config).fit(X_LIN, Y_LIN)
    assert gpu.coef_.dtype == np.float32
    np.testing.assert_allclose(gpu.coef_, cpu.coef_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gpu.intercept_, cpu.intercept_, rtol=1e-4, atol=1e-4)
    assert np.abs(unweighted.coef_ - cpu.coef_).max() > 1e-3  # the weights matter
    if config["solver"] == "gd":
        np.testing.assert_allclose(gpu.loss_curve_, cpu.loss_curve_, rtol=1e-5)
    else:
        np.testing.assert_allclose(gpu.cond_, cpu.cond_, rtol=1e-3)


def test_linear_gd_copies_two_numbers_per_iteration(monkeypatch):
    sizes = count_copies(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LinearRegression(solver="gd", max_iter=3, device="cuda").fit(X_LIN, Y_LIN)
    # means (d + 1), Gram matrix and X^T y for the step size, 2 per iteration, w at the end
    d = X_LIN.shape[1]
    assert sorted(sizes) == sorted([d + 1, d * d, d] + [2] * model.n_iter_ + [d]), sizes


@pytest.mark.parametrize("two_pass", [False, True])
def test_linear_gd_allocates_nothing_per_iteration(monkeypatch, two_pass):
    """The gradient's scratch (the blocks' partial sums; on the two-pass path
    ``X w`` and the residuals) is kept across the iterations of
    ``solver='gd'``: a fit of 6 iterations allocates what one of 2 does."""
    from fusedgrad.kernels import _options as opt
    from fusedgrad.kernels.cuda import ols

    if two_pass:  # no tile of rows fits: X w by a product, then the residual pass
        monkeypatch.setattr(opt, "CUDA_SHARED_BYTES", 64)
    assert bool(ols._plan(X_LIN.shape[1], 4, opt.CUDA_TPB)) is not two_pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the first fit makes the module's cached placeholders
        LinearRegression(solver="gd", max_iter=1, device="cuda").fit(X_LIN, Y_LIN)
    made = count_allocations(monkeypatch)
    counts, curves = [], []
    for max_iter in (2, 6):
        del made[:]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = LinearRegression(solver="gd", max_iter=max_iter, tol=0.0,
                                     device="cuda").fit(X_LIN, Y_LIN)
        assert model.n_iter_ == max_iter
        counts.append(len(made))
        curves.append(model.loss_curve_)
    assert counts[0] == counts[1], counts
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not converged: tol=0
        cpu = LinearRegression(solver="gd", max_iter=6, tol=0.0).fit(X_LIN, Y_LIN)
    np.testing.assert_allclose(curves[1], cpu.loss_curve_, rtol=1e-5)


def test_deeper_network_partial_fit_matches_cpu():
    """partial_fit carries the optimizer's state of every layer between calls
    (uploaded flat, written back at the end of each call) on both devices."""
    def make(device):
        return MLPClassifier(hidden_layer_sizes=(5, 3), activation="relu", solver="sgd",
                             batch_size=6, learning_rate_init=0.1, random_state=4,
                             device=device)

    cpu, gpu = fit_both(make, X_MLP[:10], Y_MLP[:10], method="partial_fit",
                        classes=np.arange(3))
    for model in (cpu, gpu):
        model.partial_fit(X_MLP[10:], Y_MLP[10:])
    assert_same_mlp(cpu, gpu)
    for a, b in zip(cpu._optimizer.velocities, gpu._optimizer.velocities):
        np.testing.assert_allclose(b, a, **TOL["float32"])
