#!/usr/bin/env python
"""Time ``LinearRegression.fit`` on a dask array against dask's own least squares.

The data are written once, block by block, to ``.npy`` files (features with
nonzero means, a linear target plus noise) and opened as memory maps: every
method reads them from the page cache, none from a copy made for it. With an
intercept fitted everywhere:

* ``fg dask auto``, ``fg dask qr``: ``fusedgrad.models.LinearRegression``
  with that solver on ``dask.array.from_array(memmap, chunks=(rows, d))``
  (the default threaded scheduler): one pass, a fused kernel per block, and
  only ``(d + 2)**2`` numbers per block merged;
* ``dask lstsq``: ``dask.array.linalg.lstsq`` on ``[1, X]`` (dask's
  tall-skinny QR, the exact out-of-core solver dask ships);
* ``fg memory``: ``LinearRegression().fit`` on the memory maps themselves;
* ``sklearn memory``: ``sklearn.linear_model.LinearRegression().fit`` on the
  memory maps (it centres a copy of ``X``).

Each is called once to warm up, then all are timed round-robin; the table
shows the median time and the peak of NumPy's allocations during one fit
(``tracemalloc``: the arrays a method makes, not the pages of the maps it
reads), and the largest coefficient difference to ``fg memory`` with
solver='qr' relative to the largest coefficient.

Run ``python benchmarks/linreg_dask.py`` (float32, N = 20,000,000 x d = 16,
blocks of 1,000,000 rows: 1.3 GB of files in ``--dir``, by default a
temporary folder), ``--quick`` for a smoke run.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
import warnings

import numpy as np


def write_data(folder, N, d, dtype, block, seed=0):
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.5, 3.0, d)
    w = rng.standard_normal(d)
    X = np.lib.format.open_memmap(os.path.join(folder, "X.npy"), "w+", dtype, (N, d))
    y = np.lib.format.open_memmap(os.path.join(folder, "y.npy"), "w+", dtype, (N,))
    for r0 in range(0, N, block):
        r1 = min(N, r0 + block)
        Xb = rng.standard_normal((r1 - r0, d)) * scale + 3.0
        X[r0:r1] = Xb
        y[r0:r1] = Xb @ w + 1.5 + 0.1 * rng.standard_normal(r1 - r0)
    X.flush()
    y.flush()
    del X, y
    return (np.load(os.path.join(folder, "X.npy"), mmap_mode="r"),
            np.load(os.path.join(folder, "y.npy"), mmap_mode="r"))


def methods(X, y, block):
    import dask.array as da

    from fusedgrad.models import LinearRegression

    d = X.shape[1]
    Xd = da.from_array(X, chunks=(block, d))
    yd = da.from_array(y, chunks=block)

    def fg(solver):
        def fit():
            m = LinearRegression(solver=solver).fit(Xd, yd)
            return m.coef_
        return fit

    def dask_lstsq():
        A = da.hstack([da.ones((X.shape[0], 1), X.dtype, chunks=(block, 1)), Xd]).rechunk({1: -1})
        sol, _, _, _ = da.linalg.lstsq(A, yd)
        return sol[1:].compute()

    def fg_memory():
        return LinearRegression().fit(X, y).coef_

    out = {"fg dask auto": fg("auto"), "fg dask qr": fg("qr"), "dask lstsq": dask_lstsq,
           "fg memory": fg_memory}
    try:
        from sklearn.linear_model import LinearRegression as SkLR

        out["sklearn memory"] = lambda: SkLR().fit(X, y).coef_
    except ImportError:
        pass
    return out


def peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 1,000,000, blocks of 100,000")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--block", type=int, default=None)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="folder for the data files")
    args = parser.parse_args(argv)
    N = args.rows or (1_000_000 if args.quick else 20_000_000)
    block = args.block or (100_000 if args.quick else 1_000_000)
    d = args.features
    import dask
    import numba

    from fusedgrad.models import LinearRegression

    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        X, y = write_data(folder, N, d, np.dtype(args.dtype), block)
        size = X.nbytes / 2**30
        print(f"# LinearRegression on dask arrays: N={N:,} d={d} {args.dtype} "
              f"({size:.2f} GiB of X), blocks of {block:,} rows; {os.cpu_count()} cpus, "
              f"numpy {np.__version__}, numba {numba.__version__}, dask {dask.__version__}")
        ref = LinearRegression(solver="qr").fit(X, y).coef_.astype(np.float64)
        fns = methods(X, y, block)
        coefs = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, fn in fns.items():
                coefs[name] = np.asarray(fn(), np.float64)  # warm-up (compilation)
            times = {name: [] for name in fns}
            for _ in range(args.repeat):
                for name, fn in fns.items():
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
            peaks = {name: peak_bytes(fn) for name, fn in fns.items()}
        base = statistics.median(times["fg dask auto"])
        print()
        print("| method | median s | / fg dask auto | peak NumPy allocations MiB "
              "| max coef diff to fg qr (relative) |")
        print("|:---|---:|---:|---:|---:|")
        for name in fns:
            t = statistics.median(times[name])
            diff = np.abs(coefs[name] - ref).max() / np.abs(ref).max()
            print(f"| {name} | {t:.3f} | {t / base:.2f} | {peaks[name] / 2**20:.1f} "
                  f"| {diff:.1e} |")
        del X, y
    return 0


if __name__ == "__main__":
    sys.exit(main())
