"""The fused kernels on CUDA GPUs (numba.cuda).

The same functions, with the same semantics, as :mod:`fusedgrad.kernels`,
on device arrays: numba device arrays or any object with
``__cuda_array_interface__`` (CuPy, PyTorch), used in place without copies.
Host NumPy arrays are accepted too (copied to the device and the results
back). See :mod:`fusedgrad.kernels.cuda._runtime` for the conventions.

This package imports on any machine. :func:`is_available` says whether the
kernels can run; without numba-cuda or a CUDA GPU every kernel raises a
:class:`RuntimeError` saying which is missing. Under numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``) the kernels run, slowly, on the CPU.
"""

from fusedgrad.kernels.cuda._runtime import is_available
from fusedgrad.kernels.cuda.affine import affine_sigmoid, affine_sigmoid_backward
from fusedgrad.kernels.cuda.layers import affine_activation, affine_activation_backward
from fusedgrad.kernels.cuda.mlp import mlp_loss_grad
from fusedgrad.kernels.cuda.network import network_loss_grad
from fusedgrad.kernels.cuda.ols import gram, ols_loss_grad
from fusedgrad.kernels.cuda.softmax import softmax_cross_entropy

__all__ = [
    "is_available",
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
