#!/usr/bin/env python
"""Time ``LinearRegression.fit``: fusedgrad's solvers against scikit-learn, NumPy, PyTorch, JAX.

For each shape, on the same seeded data (features with nonzero means, a
linear target plus noise, an intercept fitted everywhere):

* ``fg auto``, ``fg normal``, ``fg qr``: ``fusedgrad.models.LinearRegression``
  with that solver, the whole ``fit`` (input checks included);
* ``sklearn``: ``sklearn.linear_model.LinearRegression().fit`` (default
  options: it centres a copy of ``X`` and calls LAPACK's ``gelsd``);
* ``numpy normal``: the normal equations in plain NumPy with the intercept
  done algebraically, ``X.T @ X - n m m^T`` (the quickest NumPy answer, and
  the one that cancels badly on offset data);
* ``torch lstsq``: ``torch.linalg.lstsq`` on ``[1, X]`` (CPU driver ``gelsy``,
  a pivoted QR), where PyTorch is installed;
* ``jax lstsq``: ``jax.jit`` of ``jnp.linalg.lstsq`` on ``[1, X]`` (an SVD),
  where JAX is installed (with ``jax_enable_x64``, so float64 stays float64).

Each is called once to warm up (compilation happens there; the table gives
that first call too), then all are timed round-robin so that machine noise
hits them alike; the table shows the median. ``<peer> / fg auto`` above 1
means fusedgrad is faster. The last columns give, for fusedgrad 'auto' and
each peer, the largest coefficient difference to fusedgrad's
'qr' solver (a float64 Householder QR, as accurate as ``numpy.linalg.lstsq``)
relative to the largest coefficient: in float32, scikit-learn's centring of
many rows loses digits (scikit-learn#33032) and this shows it.

With ``--weighted``, every fit gets the same seeded sample weights (uniform
in [0, 2], one in ten 0): fusedgrad and scikit-learn take ``sample_weight``;
NumPy forms ``X^T W X`` (``X * w`` is one temporary copy of ``X``); PyTorch
and JAX solve the least squares of the rows scaled by ``sqrt(w)`` (a copy).

Run ``python benchmarks/linreg_fit.py`` for the full shapes (float64,
N = 4,000,000 x d = 16 and N = 1,000,000 x d = 128; about 2 GiB of memory),
``--quick`` for a smoke run of a few seconds, ``--help`` for the options.
"""

import argparse
import gc
import statistics
import sys
import time
import warnings

import numpy as np

FULL_SHAPES = [(4_000_000, 16), (1_000_000, 128)]
QUICK_SHAPES = [(200_000, 16), (50_000, 128)]


def make_data(n_samples, n_features, dtype, seed=0):
    """Seeded features with means in [-5, 5] and unequal scales; y = X w + 1 + noise."""
    rng = np.random.default_rng(seed)
    X = np.empty((n_samples, n_features), dtype)
    scale = rng.uniform(0.5, 2.0, n_features)
    offset = rng.uniform(-5.0, 5.0, n_features)
    block = 1 << 18
    for start in range(0, n_samples, block):
        stop = min(n_samples, start + block)
        X[start:stop] = rng.standard_normal((stop - start, n_features)) * scale + offset
    w = rng.standard_normal(n_features)
    y = (X @ w.astype(dtype) + dtype(1.0)
         + dtype(0.1) * rng.standard_normal(n_samples).astype(dtype))
    return X, y


def make_weights(n_samples, dtype, seed=1):
    """Seeded sample weights, uniform in [0, 2], one in ten 0."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.0, 2.0, n_samples)
    w[rng.random(n_samples) < 0.1] = 0.0
    return w.astype(dtype)


def numpy_normal(X, y, w=None):
    """Coefficients and intercept from the uncentred (weighted) normal equations in NumPy."""
    if w is None:
        n = X.shape[0]
        mx, my = X.mean(axis=0), y.mean()
        G = X.T @ X - n * np.outer(mx, mx)
        b = X.T @ y - n * mx * my
    else:
        n = w.sum()
        Xw = X * w[:, None]
        mx, my = Xw.sum(axis=0) / n, w @ y / n
        G = Xw.T @ X - n * np.outer(mx, mx)
        b = Xw.T @ y - n * mx * my
    coef = np.linalg.solve(G, b)
    return coef, my - mx @ coef


def implementations(include_sklearn):
    from fusedgrad.models import LinearRegression

    impls = {}
    for solver in ("auto", "normal", "qr"):
        def fit(X, y, w=None, solver=solver):
            m = LinearRegression(solver=solver).fit(X, y, sample_weight=w)
            return m.coef_, m.intercept_, m.solver_
        impls[f"fg {solver}"] = fit
    if include_sklearn:
        try:
            from sklearn.linear_model import LinearRegression as SkLinearRegression
        except ImportError:
            print("scikit-learn is not installed: its column is skipped", file=sys.stderr)
        else:
            def sk(X, y, w=None):
                m = SkLinearRegression().fit(X, y, sample_weight=w)
                return m.coef_, m.intercept_
            impls["sklearn"] = sk
    impls["numpy normal"] = numpy_normal
    impls.update(_lstsq_peers())
    return impls


def _lstsq_peers():
    """PyTorch's and JAX's least squares on ``[1, X]``, where they are installed."""
    peers = {}
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: its column is skipped", file=sys.stderr)
    else:
        def torch_lstsq(X, y, sw=None):
            Xt = torch.from_numpy(X)
            A = torch.cat([torch.ones((X.shape[0], 1), dtype=Xt.dtype), Xt], dim=1)
            b = torch.from_numpy(y)[:, None]
            if sw is not None:
                root = torch.from_numpy(np.sqrt(sw))[:, None]
                A, b = A * root, b * root
            w = torch.linalg.lstsq(A, b).solution[:, 0].numpy()
            return w[1:], w[0]
        peers["torch lstsq"] = torch_lstsq
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        print("JAX is not installed: its column is skipped", file=sys.stderr)
    else:
        jax.config.update("jax_enable_x64", True)  # float64 data stays float64

        @jax.jit
        def solve(X, y, root):
            A = jnp.concatenate([jnp.ones((X.shape[0], 1), X.dtype), X], axis=1)
            return jnp.linalg.lstsq(A * root[:, None], y * root)[0]

        def jax_lstsq(X, y, sw=None):
            root = np.ones_like(y) if sw is None else np.sqrt(sw)
            w = np.asarray(solve(X, y, root))
            return w[1:], w[0]
        peers["jax lstsq"] = jax_lstsq
    return peers


def time_round_robin(impls, X, y, repeat, w=None):
    first, outputs = {}, {}
    for name, fn in impls.items():
        gc.collect()
        start = time.perf_counter()
        outputs[name] = fn(X, y, w)
        first[name] = time.perf_counter() - start
    times = {name: [] for name in impls}
    for _ in range(repeat):
        for name, fn in impls.items():
            gc.collect()
            start = time.perf_counter()
            fn(X, y, w)
            times[name].append(time.perf_counter() - start)
    return {n: statistics.median(t) for n, t in times.items()}, first, outputs


def fmt_s(seconds):
    return f"{seconds:.3f}" if seconds < 10 else f"{seconds:.1f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes (a smoke run)")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls of each (median)")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--shape", action="append", metavar="N,d",
                        help="a shape to run instead of the defaults (repeatable)")
    parser.add_argument("--no-sklearn", action="store_true", help="skip scikit-learn")
    parser.add_argument("--weighted", action="store_true",
                        help="fit with seeded sample weights (see the module docstring)")
    args = parser.parse_args(argv)

    from fusedgrad.bench import format_machine, machine_info

    if args.shape:
        shapes = [tuple(int(v) for v in s.split(",")) for s in args.shape]
    else:
        shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    dtype = np.dtype(args.dtype).type
    print(format_machine(machine_info()))
    print()
    print(f"LinearRegression.fit, {args.dtype}, with intercept"
          + (", with sample weights" if args.weighted else "")
          + f": median of {args.repeat} calls, seconds (first call, which includes "
          "compilation, in brackets)")
    print()
    impls = implementations(not args.no_sklearn)
    names = list(impls)
    peers = [n for n in ("sklearn", "torch lstsq", "jax lstsq", "numpy normal") if n in impls]
    header = (["N, d"] + names + [f"{p} / fg auto" for p in peers] + ["fg auto solver"]
              + [f"|Δcoef| {n}" for n in ["fg auto"] + peers])
    print("| " + " | ".join(header) + " |")
    print("|:---|" + "---:|" * (len(header) - 1))
    for N, d in shapes:
        X, y = make_data(N, d, dtype)
        w = make_weights(N, dtype) if args.weighted else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            median, first, outputs = time_round_robin(impls, X, y, args.repeat, w)
        row = [f"{N}, {d}"] + [f"{fmt_s(median[n])} ({fmt_s(first[n])})" for n in names]
        ref = np.asarray(outputs["fg qr"][0], np.float64)

        def diff(name):
            got = np.asarray(outputs[name][0], np.float64)
            return f"{np.abs(got - ref).max() / np.abs(ref).max():.1e}"

        row += [f"{median[p] / median['fg auto']:.2f}" for p in peers]
        row += [outputs["fg auto"][2]] + [diff(n) for n in ["fg auto"] + peers]
        print("| " + " | ".join(row) + " |", flush=True)
        del X, y, outputs
        gc.collect()
    print()
    print("Command: python benchmarks/linreg_fit.py" + (" --quick" if args.quick else "")
          + (f" --dtype {args.dtype}" if args.dtype != "float64" else "")
          + (f" --repeat {args.repeat}" if args.repeat != 3 else "")
          + (" --weighted" if args.weighted else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
