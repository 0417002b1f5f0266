"""fusedgrad: Numba-compiled fused forward/backward kernels for gradient descent.

``fusedgrad.reference`` holds the lecture's formulas in plain NumPy;
``fusedgrad.kernels`` the fused, parallel CPU kernels with the same signatures.
Importing the package compiles nothing: kernels compile (or load from the
on-disk cache) on their first call.
"""

from fusedgrad._version import __version__

__all__ = ["__version__"]
