"""An affine layer with the sigmoid fused after the matmul, and its backward pass.

The lecture's hidden layer, by name: the logistic case of the layer kernels
of :mod:`fusedgrad.kernels.layers` (one jitted core for every activation).
"""

from fusedgrad.kernels.layers import affine_activation, affine_activation_backward

__all__ = ["affine_sigmoid", "affine_sigmoid_backward"]


def affine_sigmoid(X, W, b, out=None, *, check_finite=True):
    r"""An affine layer and the sigmoid, fused: :math:`A = \sigma(X W + b)`.

    Each thread computes a cache-sized chunk of rows of ``X W`` (BLAS) and
    applies the bias and the sigmoid while the chunk is still in cache.

    Parameters
    ----------
    X : array_like, shape (n_samples, n_in), float32 or float64
    W : array_like, shape (n_in, n_out)
    b : array_like, shape (n_out,)
    out : ndarray, shape (n_samples, n_out), optional
        C-contiguous array of X's dtype to write the result into; it must not
        overlap the inputs.
    check_finite : bool, default True
        Reject NaN/inf in the inputs.

    Returns
    -------
    A : ndarray, shape (n_samples, n_out)
        ``out`` when given.
    """
    return affine_activation(X, W, b, out, activation="logistic", check_finite=check_finite)


def affine_sigmoid_backward(X, A, dA, W=None, *, check_finite=True):
    r"""Backward pass of :func:`affine_sigmoid`, fused over row chunks.

    .. math::
        dZ = dA \odot A (1 - A), \quad dW = X^T dZ, \quad
        db = \textstyle\sum_{\text{rows}} dZ, \quad dX = dZ\, W^T

    ``dZ`` is never stored for the whole batch.

    Parameters
    ----------
    X : array_like, shape (n_samples, n_in), float32 or float64
        The layer's input.
    A : array_like, shape (n_samples, n_out)
        The layer's output ``sigmoid(X W + b)``.
    dA : array_like, shape (n_samples, n_out)
        Gradient of the loss with respect to ``A``.
    W : array_like, shape (n_in, n_out), optional
        The layer's weights; needed only for ``dX``.
    check_finite : bool, default True
        Reject NaN/inf in the inputs.

    Returns
    -------
    dW : ndarray, shape (n_in, n_out)
    db : ndarray, shape (n_out,)
    dX : ndarray, shape (n_samples, n_in), or None when ``W`` is None
    """
    return affine_activation_backward(X, A, dA, W, activation="logistic",
                                      check_finite=check_finite)
