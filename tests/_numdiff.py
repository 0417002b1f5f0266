"""Numerical derivatives for the tests: central differences and the complex step.

Both helpers differentiate ``f`` at ``x`` one element of ``x`` at a time and
return an array of shape ``np.shape(f(x)) + x.shape``: the gradient of a scalar
function (shaped like ``x``) or the Jacobian ``J[i, j] = df_i / dx_j`` of a
vector function. They work in double precision and are independent of
:mod:`fusedgrad`, so they can serve as the oracle of the oracle.
"""

import numpy as np

__all__ = ["numerical_grad", "complex_step_grad"]


def numerical_grad(f, x, eps=1e-6):
    r"""Derivative of ``f`` at ``x`` by central differences, element by element.

    .. math:: \frac{\partial f}{\partial x_j} \approx
              \frac{f(x + \varepsilon e_j) - f(x - \varepsilon e_j)}{2 \varepsilon}

    The truncation error is :math:`O(\varepsilon^2)`; with float64 and
    ``eps`` near ``1e-6`` the result is good to roughly 1e-9 relative for
    well-scaled smooth functions.

    Parameters
    ----------
    f : callable
        Takes an array shaped like ``x`` and returns a scalar or an array.
        It receives a fresh float64 copy on every call.
    x : array_like
        The point; converted to float64.
    eps : float, optional
        The step.

    Returns
    -------
    ndarray, shape ``np.shape(f(x)) + x.shape``, float64
    """
    x = np.array(x, dtype=np.float64)
    out_shape = np.shape(f(x.copy()))
    grad = np.empty(x.shape + out_shape, dtype=np.float64)
    for idx in np.ndindex(*x.shape):
        orig = x[idx]
        x[idx] = orig + eps
        f_plus = np.asarray(f(x.copy()), dtype=np.float64)
        x[idx] = orig - eps
        f_minus = np.asarray(f(x.copy()), dtype=np.float64)
        x[idx] = orig
        grad[idx] = (f_plus - f_minus) / (2.0 * eps)
    # grad is indexed [x..., f...]; move f's axes to the front.
    return np.moveaxis(grad, tuple(range(x.ndim)), tuple(range(-x.ndim, 0)))


def complex_step_grad(f, x, h=1e-20):
    r"""Derivative of ``f`` at ``x`` by the complex step, element by element.

    .. math:: \frac{\partial f}{\partial x_j} \approx
              \frac{\operatorname{Im} f(x + i h e_j)}{h}

    Exact to rounding (no subtractive cancellation) for any ``f`` that is
    real-analytic and written with operations that extend analytically to
    complex input: ``+ - * /``, ``@``, ``exp``, ``tanh``. It is wrong for
    anything that conjugates (``np.vdot``, ``abs``) or compares (``max``,
    ``where``), so softmax is out of its reach.

    Parameters
    ----------
    f : callable
        Takes a complex array shaped like ``x``; receives a fresh copy.
    x : array_like
        The (real) point.
    h : float, optional
        The imaginary step.

    Returns
    -------
    ndarray, shape ``np.shape(f(x)) + x.shape``, float64
    """
    x = np.array(x, dtype=np.complex128)
    out_shape = np.shape(f(x.copy()))
    grad = np.empty(x.shape + out_shape, dtype=np.float64)
    for idx in np.ndindex(*x.shape):
        orig = x[idx]
        x[idx] = orig + 1j * h
        grad[idx] = np.imag(f(x.copy())) / h
        x[idx] = orig
    return np.moveaxis(grad, tuple(range(x.ndim)), tuple(range(-x.ndim, 0)))
