"""Fused, parallel CPU kernels (Numba).

Each public function validates its input (see :mod:`fusedgrad._validate`),
keeps its dtype (float32 or float64) and calls a private ``@njit(parallel=True)``
core of the same name with a leading underscore. Results are bit-identical
for any number of threads.
"""

from fusedgrad.kernels.affine import affine_sigmoid, affine_sigmoid_backward
from fusedgrad.kernels.layers import affine_activation, affine_activation_backward
from fusedgrad.kernels.mlp import mlp_loss_grad
from fusedgrad.kernels.network import network_loss_grad
from fusedgrad.kernels.ols import gram, ols_loss_grad
from fusedgrad.kernels.softmax import softmax_cross_entropy

__all__ = [
    "affine_sigmoid",
    "affine_sigmoid_backward",
    "softmax_cross_entropy",
    "mlp_loss_grad",
    "ols_loss_grad",
    "gram",
    "affine_activation",
    "affine_activation_backward",
    "network_loss_grad",
]
