#!/usr/bin/env python
"""Time ``LinearRegression.fit``: fusedgrad's solvers against scikit-learn and NumPy.

For each shape, on the same seeded data (features with nonzero means, a
linear target plus noise, an intercept fitted everywhere):

* ``fg auto``, ``fg normal``, ``fg qr``: ``fusedgrad.models.LinearRegression``
  with that solver, the whole ``fit`` (input checks included);
* ``sklearn``: ``sklearn.linear_model.LinearRegression().fit`` (default
  options: it centres a copy of ``X`` and calls LAPACK's ``gelsd``);
* ``numpy normal``: the normal equations in plain NumPy with the intercept
  done algebraically, ``X.T @ X - n m m^T`` (the quickest NumPy answer, and
  the one that cancels badly on offset data).

Each is called once to warm up (compilation happens there; the table gives
that first call too), then all are timed round-robin so that machine noise
hits them alike; the table shows the median. ``sklearn / fg auto`` above 1
means fusedgrad is faster. The last columns give, for fusedgrad 'auto',
scikit-learn and NumPy, the largest coefficient difference to fusedgrad's
'qr' solver (a float64 Householder QR, as accurate as ``numpy.linalg.lstsq``)
relative to the largest coefficient: in float32, scikit-learn's centring of
many rows loses digits (scikit-learn#33032) and this shows it.

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


def numpy_normal(X, y):
    """Coefficients and intercept from the uncentred normal equations in NumPy."""
    n = X.shape[0]
    mx, my = X.mean(axis=0), y.mean()
    G = X.T @ X - n * np.outer(mx, mx)
    b = X.T @ y - n * mx * my
    coef = np.linalg.solve(G, b)
    return coef, my - mx @ coef


def implementations(include_sklearn):
    from fusedgrad.models import LinearRegression

    impls = {}
    for solver in ("auto", "normal", "qr"):
        def fit(X, y, solver=solver):
            m = LinearRegression(solver=solver).fit(X, y)
            return m.coef_, m.intercept_, m.solver_
        impls[f"fg {solver}"] = fit
    if include_sklearn:
        try:
            from sklearn.linear_model import LinearRegression as SkLinearRegression
        except ImportError:
            print("scikit-learn is not installed: its column is skipped", file=sys.stderr)
        else:
            def sk(X, y):
                m = SkLinearRegression().fit(X, y)
                return m.coef_, m.intercept_
            impls["sklearn"] = sk
    impls["numpy normal"] = numpy_normal
    return impls


def time_round_robin(impls, X, y, repeat):
    first, outputs = {}, {}
    for name, fn in impls.items():
        gc.collect()
        start = time.perf_counter()
        outputs[name] = fn(X, y)
        first[name] = time.perf_counter() - start
    times = {name: [] for name in impls}
    for _ in range(repeat):
        for name, fn in impls.items():
            gc.collect()
            start = time.perf_counter()
            fn(X, y)
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
    args = parser.parse_args(argv)

    from fusedgrad.bench import format_machine, machine_info

    if args.shape:
        shapes = [tuple(int(v) for v in s.split(",")) for s in args.shape]
    else:
        shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    dtype = np.dtype(args.dtype).type
    print(format_machine(machine_info()))
    print()
    print(f"LinearRegression.fit, {args.dtype}, with intercept: median of {args.repeat} "
          "calls, seconds (first call, which includes compilation, in brackets)")
    print()
    impls = implementations(not args.no_sklearn)
    names = list(impls)
    header = ["N, d"] + names
    if "sklearn" in impls:
        header += ["sklearn / fg auto", "sklearn / fg normal", "numpy / fg auto",
                   "fg auto solver", "|Δcoef| auto", "|Δcoef| sklearn", "|Δcoef| numpy"]
    print("| " + " | ".join(header) + " |")
    print("|:---|" + "---:|" * (len(header) - 1))
    for N, d in shapes:
        X, y = make_data(N, d, dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            median, first, outputs = time_round_robin(impls, X, y, args.repeat)
        row = [f"{N}, {d}"] + [f"{fmt_s(median[n])} ({fmt_s(first[n])})" for n in names]
        if "sklearn" in impls:
            ref = np.asarray(outputs["fg qr"][0], np.float64)

            def diff(name):
                got = np.asarray(outputs[name][0], np.float64)
                return f"{np.abs(got - ref).max() / np.abs(ref).max():.1e}"

            used = outputs["fg auto"][2]
            row += [f"{median['sklearn'] / median['fg auto']:.1f}",
                    f"{median['sklearn'] / median['fg normal']:.1f}",
                    f"{median['numpy normal'] / median['fg auto']:.2f}",
                    used, diff("fg auto"), diff("sklearn"), diff("numpy normal")]
        print("| " + " | ".join(row) + " |", flush=True)
        del X, y, outputs
        gc.collect()
    print()
    print("Command: python benchmarks/linreg_fit.py" + (" --quick" if args.quick else "")
          + (f" --dtype {args.dtype}" if args.dtype != "float64" else "")
          + (f" --repeat {args.repeat}" if args.repeat != 3 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
