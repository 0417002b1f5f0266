"""fusedgrad: Numba-compiled fused forward/backward kernels for gradient descent.

``fusedgrad.reference`` holds the lecture's formulas in plain NumPy;
``fusedgrad.kernels`` the fused, parallel CPU kernels with the same signatures;
``fusedgrad.models`` the estimators built on them (``LinearRegression``,
``MLPClassifier``, ``load``), also reachable from here.
Importing the package compiles nothing: kernels compile (or load from the
on-disk cache) on their first call.
"""

from fusedgrad._version import __version__

__all__ = ["__version__", "LinearRegression", "MLPClassifier", "load"]

_MODEL_NAMES = ("LinearRegression", "MLPClassifier", "load")


def __getattr__(name):
    # The models are imported on first use, so that ``import fusedgrad``
    # (e.g. for ``fusedgrad.kernels``) stays light.
    if name in _MODEL_NAMES:
        from fusedgrad import models

        return getattr(models, name)
    raise AttributeError(f"module 'fusedgrad' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_MODEL_NAMES))
