#!/usr/bin/env python
"""Time per epoch of MLPClassifier.fit: fusedgrad against scikit-learn, PyTorch and JAX loops.

The same network (``d``-``h``-``K``, logistic hidden layer, or ``--hidden`` and
``--activation``, softmax output,
mean cross-entropy), data and batch size for all three, float32:

* ``fusedgrad``: ``fusedgrad.models.MLPClassifier(solver='sgd')``;
* ``sklearn``: ``sklearn.neural_network.MLPClassifier(solver='sgd')`` with
  the same settings (both: momentum 0.9 with Nesterov's, alpha 1e-4,
  shuffled minibatches; scikit-learn computes in float32 when given float32);
* ``torch``: a plain training loop, ``torch.set_num_threads(2)`` (``--threads``),
  ``nn.Linear -> sigmoid -> nn.Linear``, ``F.cross_entropy``,
  ``torch.optim.SGD`` without momentum, minibatches gathered through a
  ``torch.randperm`` of the rows each epoch;
* ``jax``: the same loop with one ``jax.jit``-compiled step (the gather of the
  minibatch from the epoch's permutation, ``jax.value_and_grad`` of the mean
  cross-entropy, and the SGD update, without momentum), XLA's CPU backend.
  Its compilation for both minibatch shapes happens in a warm-up epoch on the
  same data before timing.

With ``--weighted``, every implementation gets the same seeded sample weights
(uniform in [0, 2], one in ten 0) and minimises each minibatch's weighted
mean cross-entropy (scikit-learn's weighting; PyTorch's and JAX's loops
weight their per-row losses).

Each measurement is one ``fit`` of ``--epochs`` epochs (``tol=0``, so all of
them run) on a fresh model, divided by the number of epochs; fusedgrad's
kernels are compiled (or loaded from numba's cache) before timing. The
implementations are timed round-robin, ``--repeat`` times, and the median is
reported.

Run from a checkout::

    python benchmarks/mlp_fit.py            # N=200,000, d=64, h=128, K=10
    python benchmarks/mlp_fit.py --quick    # small shapes, a few seconds
"""

import argparse
import statistics
import sys
import time
import warnings

import numpy as np

from fusedgrad.bench import format_machine, machine_info, markdown_table

IMPLEMENTATIONS = ("fusedgrad", "sklearn", "torch", "jax")

#: Threads of every implementation (numba's, BLAS's and PyTorch's): ``--threads``.
THREADS = 2


def make_data(n_samples, n_features, n_classes, seed=0):
    """Seeded float32 features and labels of a random teacher network (learnable)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, n_features)).astype(np.float32)
    teacher = rng.standard_normal((n_features, n_classes))
    y = np.argmax(X @ teacher + 0.5 * rng.standard_normal((n_samples, n_classes)), axis=1)
    return X, y.astype(np.int64)


#: Activation of the hidden layers (``--activation``).
ACTIVATION = "logistic"


def _settings(hidden, batch_size, epochs, learning_rate):
    return dict(hidden_layer_sizes=tuple(hidden), activation=ACTIVATION, solver="sgd",
                batch_size=batch_size, learning_rate_init=learning_rate, max_iter=epochs,
                tol=0.0, n_iter_no_change=10**9, random_state=0)


def fusedgrad_fit(X, y, hidden, batch_size, epochs, learning_rate, w=None):
    from fusedgrad.models.mlp import MLPClassifier

    model = MLPClassifier(dtype="float32", **_settings(hidden, batch_size, epochs, learning_rate))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter
        model.fit(X, y, sample_weight=w)
    return model.loss_curve_[-1]


def sklearn_fit(X, y, hidden, batch_size, epochs, learning_rate, w=None):
    from sklearn.neural_network import MLPClassifier

    model = MLPClassifier(**_settings(hidden, batch_size, epochs, learning_rate))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X, y, sample_weight=w)
    return model.loss_curve_[-1]


def torch_fit(X, y, hidden, batch_size, epochs, learning_rate, w=None):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    n, d = X.shape
    K = int(y.max()) + 1
    act = {"logistic": torch.nn.Sigmoid, "relu": torch.nn.ReLU, "tanh": torch.nn.Tanh,
           "identity": torch.nn.Identity}[ACTIVATION]
    layers, width = [], d
    for units in hidden:
        layers += [torch.nn.Linear(width, units), act()]
        width = units
    model = torch.nn.Sequential(*layers, torch.nn.Linear(width, K))
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    wt = None if w is None else torch.from_numpy(w)
    loss_sum = 0.0
    for _ in range(epochs):
        order = torch.randperm(n) if batch_size < n else None
        loss_sum = 0.0
        for start in range(0, n, batch_size):
            if order is None:
                xb, yb, wb = Xt, yt, wt
            else:
                rows = order[start:start + batch_size]
                xb, yb = Xt[rows], yt[rows]
                wb = None if wt is None else wt[rows]
            optimizer.zero_grad(set_to_none=True)
            if wb is None:
                loss = F.cross_entropy(model(xb), yb)
            else:  # the weighted mean, as scikit-learn's and fusedgrad's
                loss = (F.cross_entropy(model(xb), yb, reduction="none") * wb).sum() / wb.sum()
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * xb.shape[0]
    return loss_sum / n


def _jax_step(activation, learning_rate):
    """The jitted minibatch step of :func:`jax_fit` (one per activation and rate)."""
    key = (activation, learning_rate)
    if key not in _JAX_STEPS:
        import jax
        import jax.numpy as jnp

        act = {"logistic": jax.nn.sigmoid, "relu": jax.nn.relu, "tanh": jnp.tanh,
               "identity": lambda z: z}[activation]

        def loss_fn(params, xb, yb, wb):
            a = xb
            for W, b in params[:-1]:
                a = act(a @ W + b)
            W, b = params[-1]
            logp = jax.nn.log_softmax(a @ W + b, axis=1)
            losses = -jnp.take_along_axis(logp, yb[:, None], axis=1)[:, 0]
            return jnp.sum(wb * losses) / jnp.sum(wb)  # unit weights: the mean

        @jax.jit
        def step(params, X, y, w, rows):
            loss, grads = jax.value_and_grad(loss_fn)(params, X[rows], y[rows], w[rows])
            params = jax.tree_util.tree_map(lambda p, g: p - learning_rate * g, params, grads)
            return params, loss

        _JAX_STEPS[key] = step
    return _JAX_STEPS[key]


_JAX_STEPS = {}


def jax_fit(X, y, hidden, batch_size, epochs, learning_rate, w=None):
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    n, d = X.shape
    K = int(y.max()) + 1
    params, width = [], d
    for units in list(hidden) + [K]:  # PyTorch's default initialisation
        bound = 1.0 / np.sqrt(width)
        params.append((jnp.asarray(rng.uniform(-bound, bound, (width, units)), jnp.float32),
                       jnp.asarray(rng.uniform(-bound, bound, units), jnp.float32)))
        width = units
    step = _jax_step(ACTIVATION, float(learning_rate))
    Xj, yj = jnp.asarray(X), jnp.asarray(y.astype(np.int32))
    wj = jnp.ones(n, jnp.float32) if w is None else jnp.asarray(w)
    loss_sum = 0.0
    for _ in range(epochs):
        order = (rng.permutation(n) if batch_size < n else np.arange(n)).astype(np.int32)
        losses = []
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            params, loss = step(params, Xj, yj, wj, rows)
            losses.append(loss * rows.shape[0])
        loss_sum = float(sum(losses))
    return loss_sum / n


FITS = {"fusedgrad": fusedgrad_fit, "sklearn": sklearn_fit, "torch": torch_fit, "jax": jax_fit}


def available(names, modules=None):
    """The implementations whose packages import, and the reasons of the others.
    ``modules``: the package each implementation needs (default: its name)."""
    modules = modules or {"sklearn": "sklearn", "torch": "torch", "jax": "jax"}
    ok, skipped = [], {}
    for name in names:
        module = modules.get(name)
        if module is not None:
            try:
                __import__(module)
            except ImportError as exc:
                skipped[name] = str(exc)
                continue
        ok.append(name)
    return ok, skipped


def bench(X, y, hidden, batch_size, epochs, repeat, learning_rate, names, w=None):
    """Median ms per epoch of each implementation, timed round-robin (``w``: sample
    weights given to every implementation, or None)."""
    # compile fusedgrad's kernels (or load them from the cache) on a small copy
    head = None if w is None else w[:256]
    fusedgrad_fit(X[:256], y[:256], hidden, min(batch_size, 128), 1, learning_rate, head)
    if "torch" in names:
        torch_fit(X[:256], y[:256], hidden, min(batch_size, 128), 1, learning_rate, head)
    if "jax" in names:  # compiles the step for this batch size and the last, shorter batch
        jax_fit(X, y, hidden, batch_size, 1, learning_rate, w)
    times = {name: [] for name in names}
    losses = {}
    for _ in range(repeat):
        for name in names:
            start = time.perf_counter()
            losses[name] = FITS[name](X, y, hidden, batch_size, epochs, learning_rate, w)
            times[name].append(1e3 * (time.perf_counter() - start) / epochs)
    return {name: statistics.median(t) for name, t in times.items()}, losses


def _per_call_us(fn, calls):
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return 1e6 * best


def overhead(X, y, hidden, batch_size):
    """Per-call costs around the kernel: the BLAS thread limit, and one minibatch step."""
    from fusedgrad.kernels import mlp_loss_grad
    from fusedgrad.kernels._blas import single_threaded_blas

    def enter():
        with single_threaded_blas():
            pass

    outer = _per_call_us(enter, 200)
    with single_threaded_blas():
        nested = _per_call_us(enter, 200)
    rng = np.random.default_rng(1)
    d, K = X.shape[1], int(y.max()) + 1
    params = [(rng.standard_normal(s) * 0.1).astype(np.float32)
              for s in ((d, hidden), (hidden,), (hidden, K), (K,))]
    rows = rng.permutation(X.shape[0])[:batch_size]
    Xb, yb, ys = X[rows], y[rows], y[:batch_size]

    def view():
        mlp_loss_grad(X[:batch_size], ys, *params, check_finite=False)

    def gathered():
        mlp_loss_grad(X, yb, *params, rows=rows, check_finite=False)

    def numpy_gather():
        mlp_loss_grad(X[rows], yb, *params, check_finite=False)

    view()
    calls = 20
    alone = _per_call_us(view, calls)
    with single_threaded_blas():
        in_session = _per_call_us(view, calls)
        in_kernel = _per_call_us(gathered, calls)
        by_numpy = _per_call_us(numpy_gather, calls)
    del Xb
    return [
        f"- single_threaded_blas(): {outer:.1f} us to enter and leave, {nested:.1f} us "
        "nested inside another (a fit enters it once)",
        f"- mlp_loss_grad on {batch_size:,} consecutive rows: {alone / 1e3:.3f} ms alone, "
        f"{in_session / 1e3:.3f} ms inside a session",
        f"- on {batch_size:,} shuffled rows: {in_kernel / 1e3:.3f} ms gathered in the kernel "
        f"(rows=), {by_numpy / 1e3:.3f} ms with X[rows] gathered by NumPy first",
    ]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="small shapes (N=20,000, d=16, h=32, K=4), 2 epochs, 1 repeat")
    p.add_argument("--n-samples", type=int, default=200_000)
    p.add_argument("--n-features", type=int, default=64)
    p.add_argument("--hidden", type=int, nargs="+", default=[128],
                   help="units of each hidden layer")
    p.add_argument("--activation", default="logistic",
                   choices=["logistic", "relu", "tanh", "identity"])
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[4096, 0],
                   help="minibatch sizes; 0 is the full batch (default: 4096 0)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per timed fit")
    p.add_argument("--repeat", type=int, default=3, help="timed fits per implementation")
    p.add_argument("--learning-rate", type=float, default=0.1)
    p.add_argument("--only", nargs="+", choices=IMPLEMENTATIONS, default=list(IMPLEMENTATIONS))
    p.add_argument("--threads", type=int, default=2,
                   help="threads of numba, BLAS and PyTorch (default 2, the machine's cores)")
    p.add_argument("--weighted", action="store_true",
                   help="fit with seeded sample weights (see the module docstring)")
    args = p.parse_args(argv)
    if args.quick:
        args.n_samples, args.n_features, args.hidden, args.classes = 20_000, 16, [32], 4
        args.epochs, args.repeat = 2, 1
    return args


def set_threads(threads):
    """Give numba's kernels, every BLAS (scikit-learn's matmuls) and PyTorch ``threads``."""
    global THREADS
    import numba
    from threadpoolctl import threadpool_limits

    THREADS = threads
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    threadpool_limits(threads)


def main(argv=None):
    global ACTIVATION
    args = parse_args(argv)
    ACTIVATION = args.activation
    set_threads(args.threads)
    print(format_machine(machine_info()) + "\n", flush=True)
    names, skipped = available(args.only)
    X, y = make_data(args.n_samples, args.n_features, args.classes)
    w = None
    if args.weighted:
        rng = np.random.default_rng(1)
        w = rng.uniform(0.0, 2.0, args.n_samples).astype(np.float32)
        w[rng.random(args.n_samples) < 0.1] = 0.0
    N, d, h, K = args.n_samples, args.n_features, args.hidden, args.classes
    print(f"MLPClassifier.fit, solver='sgd', activation='{ACTIVATION}', float32, "
          + ("with sample weights, " if args.weighted else "")
          + 
          f"N={N:,}, d={d}, hidden={tuple(h)}, K={K}, {args.threads} threads: median ms per "
          "epoch "
          f"({args.epochs} epochs per fit, {args.repeat} fits)\n", flush=True)
    rows = []
    for batch in args.batch_sizes:
        batch_size = N if batch <= 0 else batch
        ms, losses = bench(X, y, h, batch_size, args.epochs, args.repeat, args.learning_rate,
                           names, w)
        label = f"full batch ({N:,})" if batch_size >= N else f"{batch_size:,}"

        def cell(name):
            return f"{ms[name]:.1f}" if name in ms else None

        def ratio(name):
            return f"{ms[name] / ms['fusedgrad']:.2f}" if name in ms and "fusedgrad" in ms \
                else None

        rows.append([label, cell("fusedgrad"), cell("sklearn"), cell("torch"), cell("jax"),
                     ratio("sklearn"), ratio("torch"), ratio("jax")])
        print(f"  batch {label}: " + ", ".join(f"{n} {ms[n]:.1f} ms (last loss "
                                                f"{losses[n]:.4f})" for n in names), flush=True)
    print()
    if ACTIVATION == "logistic" and len(h) == 1:  # the lecture's network: mlp_loss_grad
        batch = next((b for b in args.batch_sizes if 0 < b < N), min(4096, N))
        for line in overhead(X, y, h[0], batch):
            print(line)
        print()
    print(markdown_table(["batch size", "fusedgrad", "sklearn", "torch", "jax",
                          "sklearn/fusedgrad", "torch/fusedgrad", "jax/fusedgrad"], rows))
    for name, reason in skipped.items():
        print(f"- {name}: skipped ({reason})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
