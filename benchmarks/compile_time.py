#!/usr/bin/env python
"""First-call time of every kernel: cold (empty Numba cache) and warm (from the cache).

Each measurement runs in a fresh process with its own ``NUMBA_CACHE_DIR``:
the first process compiles and writes the cache, the second loads it. Also
reports ``import fusedgrad`` time beside ``import numba`` (nothing compiles
at import). Prints a markdown table.
"""

import json
import subprocess
import sys
import tempfile

KERNELS = ["affine_sigmoid", "affine_sigmoid_backward", "softmax_cross_entropy",
           "mlp_loss_grad", "ols_loss_grad", "gram", "network_loss_grad"]

_PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import numba
t1 = time.perf_counter()
import numpy as np
import fusedgrad.kernels as k
t2 = time.perf_counter()
rng = np.random.default_rng(0)
dt = np.dtype(sys.argv[2])
X = rng.standard_normal((300, 5)).astype(dt)
W = rng.standard_normal((5, 3)).astype(dt)
b = np.zeros(3, dt)
A = rng.random((300, 3)).astype(dt)
y = rng.integers(0, 3, 300)
args = {
    "affine_sigmoid": (X, W, b),
    "affine_sigmoid_backward": (X, A, A, W),
    "softmax_cross_entropy": (A, y),
    "mlp_loss_grad": (X, y, W, b, rng.standard_normal((3, 3)).astype(dt), b),
    "ols_loss_grad": (X, X[:, 0].copy(), np.zeros(5, dt)),
    "gram": (X, X[:, 0].copy()),
    "network_loss_grad": (X, y, [W, rng.standard_normal((3, 4)).astype(dt),
                                 rng.standard_normal((4, 3)).astype(dt)],
                          [b, np.zeros(4, dt), b]),
}[sys.argv[1]]
options = {"activation": "relu"} if sys.argv[1] == "network_loss_grad" else {}
t3 = time.perf_counter()
getattr(k, sys.argv[1])(*args, **options)
t4 = time.perf_counter()
print(json.dumps({"numba_import": t1 - t0, "fusedgrad_import": t2 - t1, "first_call": t4 - t3}))
"""


def probe(kernel, dtype, cache_dir):
    env = {**__import__("os").environ, "NUMBA_CACHE_DIR": cache_dir}
    out = subprocess.run([sys.executable, "-c", _PROBE, kernel, dtype], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    rows = []
    for dtype in ("float32", "float64"):
        with tempfile.TemporaryDirectory() as cache:
            for kernel in KERNELS:
                cold = probe(kernel, dtype, cache)
                warm = probe(kernel, dtype, cache)
                rows.append((kernel, dtype, cold, warm))
    print("| kernel | dtype | first call, empty cache (s) | first call, from cache (s) |")
    print("|---|---|---:|---:|")
    for kernel, dtype, cold, warm in rows:
        print(f"| {kernel} | {dtype} | {cold['first_call']:.2f} | {warm['first_call']:.3f} |")
    imports = [r[3] for r in rows]
    numba_s = sorted(i["numba_import"] for i in imports)[len(imports) // 2]
    fused_s = sorted(i["fusedgrad_import"] for i in imports)[len(imports) // 2]
    print(f"\nimport numba: {numba_s:.2f} s; import fusedgrad.kernels after it: {fused_s:.2f} s "
          "(median over the warm processes)")


if __name__ == "__main__":
    main()
