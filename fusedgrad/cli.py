"""The ``fusedgrad`` command: ``fusedgrad demo`` and ``fusedgrad bench``."""

import argparse
import sys
import time

import numpy as np

from fusedgrad import __version__, reference
from fusedgrad import kernels


def make_blobs(n_samples, n_features, n_classes, dtype, seed=0):
    """Gaussian class clusters: the demo's built-in, generated data set.

    Returns ``X`` (n_samples, n_features) and integer labels ``y``; the class
    means are far enough apart that a small MLP separates them well.
    """
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 0.6, (n_classes, n_features))
    y = rng.integers(0, n_classes, n_samples)
    X = (centers[y] + rng.normal(0.0, 1.0, (n_samples, n_features))).astype(dtype)
    return X, y


def _median_seconds(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def demo(n_samples=200_000, n_features=16, n_hidden=32, n_classes=4, epochs=60,
         learning_rate=1.0, dtype="float32", out=sys.stdout):
    """Train the lecture's MLP and OLS model with the fused kernels and report.

    1. The 2-layer MLP, by full-batch gradient descent with
       :func:`fusedgrad.kernels.mlp_loss_grad`, on generated class clusters:
       loss curve, held-out accuracy, time per epoch fused vs the NumPy
       reference.
    2. OLS: the analytic solution from :func:`fusedgrad.kernels.gram`, and
       gradient descent with :func:`fusedgrad.kernels.ols_loss_grad`
       converging to it.
    """
    def say(text=""):
        print(text, file=out, flush=True)

    say(f"fusedgrad {__version__} demo: {n_samples} samples, {n_features} features, "
        f"{n_classes} classes, {dtype}")
    X, y = make_blobs(n_samples + n_samples // 4, n_features, n_classes, dtype)
    X_train, y_train = X[:n_samples], y[:n_samples]
    X_test, y_test = X[n_samples:], y[n_samples:]
    rng = np.random.default_rng(1)
    params = [
        (rng.standard_normal((n_features, n_hidden)) / np.sqrt(n_features)).astype(dtype),
        np.zeros(n_hidden, dtype),
        (rng.standard_normal((n_hidden, n_classes)) / np.sqrt(n_hidden)).astype(dtype),
        np.zeros(n_classes, dtype),
    ]
    lr = np.dtype(dtype).type(learning_rate)

    say(f"\n1. MLP {n_features}-{n_hidden}-{n_classes}, full-batch gradient descent, "
        f"learning rate {learning_rate}")
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        loss, *grads = kernels.mlp_loss_grad(X_train, y_train, *params)
        for p, g in zip(params, grads):
            p -= lr * g
        if epoch == 1 or epoch % 10 == 0:
            say(f"   epoch {epoch:3d}  loss {loss:.4f}")
    train_s = time.perf_counter() - start
    _, _, _, proba = reference.mlp_forward(X_test, *params)
    accuracy = float(np.mean(proba.argmax(axis=1) == y_test))
    say(f"   held-out accuracy {accuracy:.3f}  ({epochs} epochs in {train_s:.2f} s, "
        "first call includes compilation or cache load)")

    fused_s = _median_seconds(lambda: kernels.mlp_loss_grad(X_train, y_train, *params), 5)
    numpy_s = _median_seconds(lambda: reference.mlp_loss_grad(X_train, y_train, *params), 3)
    say("\n   time per epoch (median)")
    say("   | implementation | ms | speed-up |")
    say("   |---|---:|---:|")
    say(f"   | NumPy reference | {numpy_s * 1e3:.1f} | 1.0 |")
    say(f"   | fused kernel | {fused_s * 1e3:.1f} | {numpy_s / fused_s:.1f} |")

    say("\n2. OLS linear regression on the same features")
    w_true = np.linspace(-1.0, 1.0, n_features).astype(dtype)
    noise = np.random.default_rng(2).normal(0.0, 0.1, n_samples).astype(dtype)
    t = X_train @ w_true + noise
    XtX, Xty = kernels.gram(X_train, t)
    w_hat = np.linalg.solve(XtX, Xty)
    say(f"   analytic solution (gram + solve): max |w_hat - w_true| = "
        f"{np.abs(w_hat - w_true).max():.4f}")
    w = np.zeros(n_features, dtype)
    step = np.dtype(dtype).type(1.0 / np.linalg.eigvalsh(XtX / n_samples).max())
    for _ in range(200):
        loss, grad = kernels.ols_loss_grad(X_train, t, w)
        w -= step * grad
    say(f"   gradient descent, 200 steps: loss {loss:.5f}, max |w - w_hat| = "
        f"{np.abs(w - w_hat).max():.2e}")
    return accuracy


def main(argv=None):
    """Entry point of the ``fusedgrad`` command."""
    parser = argparse.ArgumentParser(prog="fusedgrad", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fusedgrad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="train the lecture's MLP and OLS on generated data")
    d.add_argument("--samples", type=int, default=200_000)
    d.add_argument("--epochs", type=int, default=60)
    d.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    sub.add_parser("bench", help="peer comparison table (see fusedgrad bench --help)",
                   add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        from fusedgrad.bench import main as bench_main

        return bench_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.samples < 10 or args.epochs < 1:
        parser.error("--samples must be at least 10 and --epochs at least 1")
    demo(n_samples=args.samples, epochs=args.epochs, dtype=args.dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
