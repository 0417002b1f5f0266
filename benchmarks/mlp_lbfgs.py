#!/usr/bin/env python
"""MLPClassifier.fit with L-BFGS: fusedgrad against scikit-learn, PyTorch and JAX (optax).

The lecture's network (``d``-``h``-``K``, logistic hidden layer, softmax
output, mean cross-entropy plus scikit-learn's L2 term ``alpha/(2N)·Σ‖W‖²``),
float32 data, full batch, started from the same weights (scikit-learn's
Glorot draw for ``random_state=0``), ``--iterations`` iterations with the
tolerances at zero, history 10 everywhere:

* ``fusedgrad``: ``MLPClassifier(solver='lbfgs')``: SciPy's L-BFGS-B, one
  fused kernel call per evaluation, in float32;
* ``sklearn``: ``sklearn.neural_network.MLPClassifier(solver='lbfgs')``: the
  same SciPy driver on its NumPy backpropagation (in float64 after the first
  evaluation: it unpacks SciPy's float64 vector into its weights);
* ``torch``: ``torch.optim.LBFGS(line_search_fn='strong_wolfe')``, one
  ``step`` of ``--iterations`` iterations on ``nn.Linear -> sigmoid ->
  nn.Linear`` with autograd, float32;
* ``jax``: ``optax.lbfgs()`` (zoom line search), one ``jax.jit``-compiled
  iteration, float32; compiled before timing.

The line searches differ, so the number of evaluations per iteration does
too: the table gives both the time per fit and per evaluation, and the final
loss (fusedgrad and scikit-learn take the same steps). The implementations
are timed round-robin, ``--repeat`` times; medians.

Run from a checkout::

    python benchmarks/mlp_lbfgs.py            # N=100,000, d=64, h=128, K=10
    python benchmarks/mlp_lbfgs.py --quick
"""

import argparse
import statistics
import sys
import time
import warnings

import numpy as np

from fusedgrad.bench import format_machine, machine_info, markdown_table
from mlp_fit import available, make_data, set_threads

IMPLEMENTATIONS = ("fusedgrad", "sklearn", "torch", "jax")
ALPHA = 1e-4
HISTORY = 10


def initial_weights(d, h, K, seed=0):
    """scikit-learn's (and fusedgrad's) Glorot draw for a logistic network."""
    rng = np.random.RandomState(seed)
    params = []
    for fan_in, fan_out in ((d, h), (h, K)):
        bound = np.sqrt(2.0 / (fan_in + fan_out))
        params.append((rng.uniform(-bound, bound, (fan_in, fan_out)),
                       rng.uniform(-bound, bound, fan_out)))
    return params


def _estimator(cls, h, iterations, **extra):
    return cls(hidden_layer_sizes=(h,), activation="logistic", solver="lbfgs", alpha=ALPHA,
               max_iter=iterations, max_fun=10**6, tol=0.0, random_state=0, **extra)


def _count_evaluations(model, name):
    """Wrap ``model``'s method ``name`` to count its calls; returns the counter."""
    calls = [0]
    method = getattr(model, name)

    def counted(*args, **kwargs):
        calls[0] += 1
        return method(*args, **kwargs)

    setattr(model, name, counted)
    return calls


def _fit(cls, evaluation, X, y, h, iterations):
    """Fit estimator class ``cls``, counting the calls of its method ``evaluation``."""
    model = _estimator(cls, h, iterations)
    calls = _count_evaluations(model, evaluation)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X, y)
    return model.loss_, calls[0], model.n_iter_


def fusedgrad_fit(X, y, h, iterations):
    from fusedgrad.models import MLPClassifier

    return _fit(MLPClassifier, "_loss_grad", X, y, h, iterations)


def sklearn_fit(X, y, h, iterations):
    from sklearn.neural_network import MLPClassifier

    return _fit(MLPClassifier, "_loss_grad_lbfgs", X, y, h, iterations)


def torch_fit(X, y, h, iterations):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(2)
    d, K = X.shape[1], int(y.max()) + 1
    (W1, b1), (W2, b2) = initial_weights(d, h, K)
    params = [torch.tensor(a, dtype=torch.float32, requires_grad=True)
              for a in (W1, b1, W2, b2)]
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    N = X.shape[0]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=iterations, max_eval=10**6,
                            history_size=HISTORY, tolerance_grad=0.0, tolerance_change=0.0,
                            line_search_fn="strong_wolfe")
    calls = [0]

    def loss_of():
        A = torch.sigmoid(Xt @ params[0] + params[1])
        loss = F.cross_entropy(A @ params[2] + params[3], yt)
        return loss + ALPHA / (2 * N) * ((params[0] ** 2).sum() + (params[2] ** 2).sum())

    def closure():
        calls[0] += 1
        opt.zero_grad()
        loss = loss_of()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        loss = float(loss_of())
    return loss, calls[0], opt.state[opt._params[0]]["n_iter"]


_JAX_STEP = {}


def _jax_step():
    import jax
    import jax.numpy as jnp
    import optax

    if "step" in _JAX_STEP:
        return _JAX_STEP["step"]
    opt = optax.lbfgs(memory_size=HISTORY)

    def loss_fn(params, X, y):
        W1, b1, W2, b2 = params
        Z = jax.nn.sigmoid(X @ W1 + b1) @ W2 + b2
        ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(Z), y[:, None], axis=1))
        return ce + ALPHA / (2 * X.shape[0]) * (jnp.sum(W1 ** 2) + jnp.sum(W2 ** 2))

    @jax.jit
    def step(params, state, X, y):
        def value_fn(p):
            return loss_fn(p, X, y)

        value, grad = optax.value_and_grad_from_state(value_fn)(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad,
                                    value_fn=value_fn)
        return optax.apply_updates(params, updates), state, value

    _JAX_STEP["step"] = (step, opt)
    return step, opt


def jax_fit(X, y, h, iterations):
    import jax.numpy as jnp
    import optax

    step, opt = _jax_step()
    d, K = X.shape[1], int(y.max()) + 1
    (W1, b1), (W2, b2) = initial_weights(d, h, K)
    params = tuple(jnp.asarray(a, dtype=jnp.float32) for a in (W1, b1, W2, b2))
    state = opt.init(params)
    Xj, yj = jnp.asarray(X), jnp.asarray(y.astype(np.int32))
    for _ in range(iterations):
        params, state, value = step(params, state, Xj, yj)
    value = float(optax.tree.get(state, "value"))
    return value, None, iterations  # optax keeps no count of the line search's evaluations


FITS = {"fusedgrad": fusedgrad_fit, "sklearn": sklearn_fit, "torch": torch_fit,
        "jax": jax_fit}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="N=5,000, d=16, h=32, 5 iterations")
    p.add_argument("--n-samples", type=int, default=100_000)
    p.add_argument("--n-features", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--only", nargs="+", choices=IMPLEMENTATIONS, default=list(IMPLEMENTATIONS))
    args = p.parse_args(argv)
    if args.quick:
        args.n_samples, args.n_features, args.hidden, args.iterations = 5000, 16, 32, 5
        args.repeat = 1
    set_threads(2)
    print(format_machine(machine_info()) + "\n", flush=True)
    names, skipped = available(args.only, {"sklearn": "sklearn", "torch": "torch",
                                           "jax": "optax"})
    X, y = make_data(args.n_samples, args.n_features, args.classes)
    h = args.hidden
    # compile fusedgrad's kernels (or load them), warm PyTorch up, and compile JAX's
    # step on the real shapes (its second iteration retraces: the state's types settle)
    fusedgrad_fit(X[:256], y[:256], h, 2)
    if "torch" in names:
        torch_fit(X[:256], y[:256], h, 2)
    if "jax" in names:
        jax_fit(X, y, h, 3)
    times = {n: [] for n in names}
    result = {}
    for _ in range(args.repeat):
        for name in names:
            start = time.perf_counter()
            result[name] = FITS[name](X, y, h, args.iterations)
            times[name].append(time.perf_counter() - start)
    print(f"MLPClassifier.fit, L-BFGS, N={args.n_samples:,}, d={args.n_features}, h={h}, "
          f"K={args.classes}, float32, {args.iterations} iterations, 2 threads; median of "
          f"{args.repeat} fits\n")
    rows = []
    for name in names:
        s = statistics.median(times[name])
        loss, evaluations, iterations = result[name]
        per_eval = "—" if evaluations is None else f"{1e3 * s / evaluations:.1f}"
        rows.append([name, f"{s:.3f}", str(iterations),
                     "—" if evaluations is None else str(evaluations), per_eval, f"{loss:.6f}",
                     f"{s / statistics.median(times['fusedgrad']):.2f}"
                     if "fusedgrad" in times else None])
    print(markdown_table(["implementation", "s per fit", "iterations", "evaluations",
                          "ms per evaluation", "final loss", "/ fusedgrad"], rows))
    for name, reason in skipped.items():
        print(f"- {name}: skipped ({reason})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
