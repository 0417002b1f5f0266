"""Affine layers with any activation, and their backward pass, on the GPU.

The twins of :mod:`fusedgrad.kernels.layers`. The forward pass is one product
(tiled numba.cuda or cuBLAS, see ``CUDA_GEMM``) with the bias and the
activation applied as each tile is stored (``'softmax'``: the bias, then a
pass over the rows). The backward pass forms ``dZ`` from ``dA`` and the
layer's output ``A`` (the derivatives of :mod:`fusedgrad.kernels.layers`'
table) in the same pass that sums the bias gradient, then the two products.
"""

import functools

import numpy as np

from fusedgrad.kernels import _options as opt
from fusedgrad.kernels.cuda import _runtime as rt
from fusedgrad.kernels.cuda._runtime import cuda, jit
from fusedgrad.kernels.cuda.affine import backward, forward
from fusedgrad.kernels.layers import ACTIVATIONS, _activation_code

__all__ = ["ACTIVATIONS", "affine_activation", "affine_activation_backward"]


@functools.lru_cache(maxsize=None)
def _softmax_delta_kernel(dtype):
    dt = np.dtype(dtype).type

    @jit()
    def kernel(A, dA, dZ):
        # One thread per row. As on the CPU, the row sum s = sum(dA * A) and
        # the differences dA - s are formed in float64 (dA - s cancels where
        # dA is nearly constant along the row) and each dZ is rounded once.
        r = cuda.grid(1)
        step = cuda.gridsize(1)
        n = A.shape[1]
        while r < A.shape[0]:
            s = 0.0
            for j in range(n):
                s += np.float64(dA[r, j]) * np.float64(A[r, j])
            for j in range(n):
                dZ[r, j] = dt(np.float64(A[r, j]) * (np.float64(dA[r, j]) - s))
            r += step

    return kernel


def _softmax_delta(A, dA, dZ):
    tpb = opt.CUDA_TPB
    kernel = _softmax_delta_kernel(np.dtype(A.dtype))
    rt.launch(kernel, rt.grid_size(-(-A.shape[0] // tpb)), tpb, A, dA, dZ)


def affine_activation(X, W, b, out=None, *, activation, check_finite=True):
    r"""An affine layer and its activation on the GPU: :math:`A = f(X W + b)`.

    Same semantics as :func:`fusedgrad.kernels.affine_activation`;
    ``activation="logistic"`` is :func:`fusedgrad.kernels.cuda.affine_sigmoid`.

    Parameters
    ----------
    X : device or host array, shape (n_samples, n_in), float32 or float64
    W : device or host array, shape (n_in, n_out)
    b : device or host array, shape (n_out,)
    out : device or host array, shape (n_samples, n_out), optional
        C-contiguous array of X's dtype to write into; it must not overlap the
        inputs.
    activation : {'identity', 'logistic', 'tanh', 'relu', 'softmax'}
        ``f`` (keyword only); ``'softmax'`` acts on each row as a whole.
    check_finite : bool, default True
        Reject NaN/inf in the inputs.

    Returns
    -------
    A : array, shape (n_samples, n_out)
        ``out`` when given; else a device array, or a NumPy array when all
        inputs were host arrays.
    """
    _activation_code(activation)
    return forward(X, W, b, out, activation, check_finite)


def affine_activation_backward(X, A, dA, W=None, *, activation, check_finite=True):
    r"""Backward pass of :func:`affine_activation` on the GPU.

    .. math::
        dZ = dA \odot f'(Z), \quad dW = X^T dZ, \quad
        db = \textstyle\sum_{\text{rows}} dZ, \quad dX = dZ\, W^T

    with :math:`f'` expressed through the layer's output ``A``, as in
    :func:`fusedgrad.kernels.affine_activation_backward`.

    Parameters
    ----------
    X : device or host array, shape (n_samples, n_in), float32 or float64
        The layer's input.
    A : device or host array, shape (n_samples, n_out)
        The layer's output ``f(X W + b)`` (for ``'identity'`` it is not read,
        but its shape is checked).
    dA : device or host array, shape (n_samples, n_out)
    W : device or host array, shape (n_in, n_out), optional
        Needed only for ``dX``.
    activation : {'identity', 'logistic', 'tanh', 'relu', 'softmax'}
    check_finite : bool, default True

    Returns
    -------
    dW : array, shape (n_in, n_out)
    db : array, shape (n_out,)
    dX : array, shape (n_samples, n_in), or None when ``W`` is None
    """
    _activation_code(activation)
    delta = _softmax_delta if activation == "softmax" else None
    return backward(X, A, dA, W, activation, check_finite, delta)
