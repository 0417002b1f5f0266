"""The lecture's formulas in plain NumPy, written to be read.

This module is the oracle of the test suite and the baseline of the benchmarks.
Every function is a direct transcription of one formula, in the lecture's
row-vector convention: a sample is a row ``x`` of shape ``(d,)``, a batch is
``X`` of shape ``(n_samples, n_features)``, and a linear map is ``x A``.

Every function keeps the dtype of its floating-point input: float32 in,
float32 out (NumPy 2 does not promote for Python scalars). Nothing here
validates input; the kernels in :mod:`fusedgrad.kernels` do.
"""

import numpy as np

__all__ = [
    "affine",
    "affine_jacobians",
    "quadratic_form",
    "quadratic_form_grad_x",
    "quadratic_form_grad_A",
    "ols_loss",
    "ols_grad",
    "ols_loss_grad",
    "ols_solve",
    "gram",
    "sigmoid",
    "affine_sigmoid",
    "affine_sigmoid_backward",
    "softmax",
    "softmax_cross_entropy",
    "mlp_forward",
    "mlp_loss_grad",
    "network_loss_grad",
]


# ---------------------------------------------------------------------------
# 1. The calculus: affine map and quadratic form
# ---------------------------------------------------------------------------


def affine(x, A, b):
    r"""The affine map.

    .. math:: y = x A + b

    Parameters
    ----------
    x : ndarray, shape (n,) or (n_samples, n)
    A : ndarray, shape (n, m)
    b : ndarray, shape (m,)

    Returns
    -------
    y : ndarray, shape (m,) or (n_samples, m)
    """
    return x @ A + b


def affine_jacobians(A):
    r"""Jacobians of :math:`y = xA + b`, with :math:`J_{ij} = \partial y_i / \partial x_j`.

    .. math:: \frac{\partial y}{\partial x} = A^T, \qquad
              \frac{\partial y}{\partial b} = I_m

    Parameters
    ----------
    A : ndarray, shape (n, m)

    Returns
    -------
    dy_dx : ndarray, shape (m, n)
    dy_db : ndarray, shape (m, m)
    """
    A = np.asarray(A)
    return A.T.copy(), np.eye(A.shape[1], dtype=A.dtype)


def quadratic_form(x, A):
    r"""The quadratic form.

    .. math:: y = x A x^T

    Parameters
    ----------
    x : ndarray, shape (n,)
    A : ndarray, shape (n, n)

    Returns
    -------
    y : scalar
    """
    return x @ A @ x


def quadratic_form_grad_x(x, A):
    r"""Gradient of :math:`x A x^T` with respect to :math:`x`.

    .. math:: \frac{\partial y}{\partial x} = x (A + A^T)

    Returns
    -------
    ndarray, shape (n,)
    """
    return x @ (A + A.T)


def quadratic_form_grad_A(x):
    r"""Gradient of :math:`x A x^T` with respect to :math:`A`.

    .. math:: \frac{\partial y}{\partial A} = x^T x

    (the outer product of the row vector with itself).

    Returns
    -------
    ndarray, shape (n, n)
    """
    return np.outer(x, x)


# ---------------------------------------------------------------------------
# 2. OLS linear regression
# ---------------------------------------------------------------------------


def ols_loss(X, y, w):
    r"""Mean squared error loss of linear regression.

    .. math:: L(w) = \frac{1}{2n} \lVert y - w X^T \rVert^2

    Parameters
    ----------
    X : ndarray, shape (n_samples, n_features)
    y : ndarray, shape (n_samples,)
    w : ndarray, shape (n_features,)

    Returns
    -------
    loss : scalar of X's dtype
    """
    r = y - X @ w
    return (r @ r) / (2 * X.shape[0])


def ols_grad(X, y, w):
    r"""Gradient of the OLS loss.

    .. math:: \nabla L(w) = \frac{1}{n} \left(-y X + w X^T X\right)

    Returns
    -------
    grad : ndarray, shape (n_features,)
    """
    return (-(y @ X) + w @ (X.T @ X)) / X.shape[0]


def ols_loss_grad(X, y, w):
    r"""OLS loss and gradient together (the kernels' signature).

    Returns
    -------
    loss : scalar
    grad : ndarray, shape (n_features,)
    """
    return ols_loss(X, y, w), ols_grad(X, y, w)


def gram(X, y):
    r"""The inputs of the analytic solution.

    .. math:: X^T X, \qquad y X

    Returns
    -------
    XtX : ndarray, shape (n_features, n_features)
    Xty : ndarray, shape (n_features,)
    """
    return X.T @ X, y @ X


def ols_solve(X, y):
    r"""The analytic least-squares solution (normal equations).

    .. math:: \hat w = y X (X^T X)^{-1}

    Computed as the solution of :math:`\hat w (X^T X) = y X`, without forming
    the inverse.

    Returns
    -------
    w : ndarray, shape (n_features,)
    """
    XtX, Xty = gram(X, y)
    # w XtX = Xty  <=>  XtX^T w^T = Xty^T, and XtX is symmetric
    return np.linalg.solve(XtX, Xty)


# ---------------------------------------------------------------------------
# 3. The 2-layer MLP classifier
# ---------------------------------------------------------------------------


def sigmoid(z):
    r"""The logistic function, without overflow for any finite input.

    .. math:: \sigma(z) = \frac{1}{1 + e^{-z}} = \tfrac12\left(1 + \tanh\tfrac z2\right)
    """
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def affine_sigmoid(X, W, b):
    r"""An affine layer followed by the sigmoid.

    .. math:: A = \sigma(X W + b)

    Parameters
    ----------
    X : ndarray, shape (n_samples, n_in)
    W : ndarray, shape (n_in, n_out)
    b : ndarray, shape (n_out,)

    Returns
    -------
    A : ndarray, shape (n_samples, n_out)
    """
    return sigmoid(X @ W + b)


def affine_sigmoid_backward(X, A, dA, W=None):
    r"""Backward pass of :func:`affine_sigmoid`.

    With :math:`\sigma'(z) = \sigma(z)(1 - \sigma(z)) = A(1-A)`:

    .. math::
        dZ = dA \odot A (1 - A), \quad
        dW = X^T dZ, \quad
        db = \textstyle\sum_{\text{rows}} dZ, \quad
        dX = dZ\, W^T

    Returns
    -------
    dW : ndarray, shape (n_in, n_out)
    db : ndarray, shape (n_out,)
    dX : ndarray, shape (n_samples, n_in), or None when ``W`` is None
    """
    dZ = dA * A * (1.0 - A)
    dX = None if W is None else dZ @ W.T
    return X.T @ dZ, dZ.sum(axis=0), dX


def softmax(Z):
    r"""Row-wise softmax, shifted by the row maximum so no exponent overflows.

    .. math:: \hat y_{ik} = \frac{e^{z_{ik} - m_i}}{\sum_j e^{z_{ij} - m_i}},
              \quad m_i = \max_j z_{ij}
    """
    E = np.exp(Z - Z.max(axis=1, keepdims=True))
    return E / E.sum(axis=1, keepdims=True)


def softmax_cross_entropy(Z, y):
    r"""Mean categorical cross-entropy of softmax(Z) and its gradient.

    With :math:`y` the integer labels (the lecture's one-hot :math:`Y` implied):

    .. math::
        L = \frac1N \sum_i \left(\log \textstyle\sum_j e^{z_{ij}} - z_{i y_i}\right),
        \qquad
        \frac{\partial L}{\partial Z} = \frac{\hat Y - Y}{N}

    Parameters
    ----------
    Z : ndarray, shape (n_samples, n_classes)
        Logits.
    y : ndarray of int, shape (n_samples,)
        Labels in ``[0, n_classes)``.

    Returns
    -------
    loss : scalar of Z's dtype
    dZ : ndarray, shape (n_samples, n_classes)
    """
    n = Z.shape[0]
    rows = np.arange(n)
    shifted = Z - Z.max(axis=1, keepdims=True)
    E = np.exp(shifted)
    norm = E.sum(axis=1, keepdims=True)
    loss = (np.log(norm[:, 0]) - shifted[rows, y]).sum() / n
    dZ = E / norm  # softmax(Z)
    dZ[rows, y] -= 1.0
    dZ /= n
    return loss, dZ


def mlp_forward(X, W1, b1, W2, b2):
    r"""Forward pass of the 2-layer MLP.

    .. math::
        z^1 = x W^1 + b^1, \quad a = \sigma(z^1), \quad
        z^2 = a W^2 + b^2, \quad \hat y = \operatorname{softmax}(z^2)

    Returns
    -------
    Z1 : ndarray, shape (n_samples, n_hidden)
    A : ndarray, shape (n_samples, n_hidden)
    Z2 : ndarray, shape (n_samples, n_classes)
    Yhat : ndarray, shape (n_samples, n_classes)
    """
    Z1 = X @ W1 + b1
    A = sigmoid(Z1)
    Z2 = A @ W2 + b2
    return Z1, A, Z2, softmax(Z2)


def mlp_loss_grad(X, y, W1, b1, W2, b2):
    r"""Loss and full backward pass of the 2-layer MLP, as the lecture derives it.

    .. math::
        \frac{\partial L}{\partial z^2} = \frac{\hat Y - Y}{N}, \quad
        \frac{\partial L}{\partial W^2} = a^T \frac{\partial L}{\partial z^2}, \quad
        \frac{\partial L}{\partial b^2} = \textstyle\sum_i \frac{\partial L}{\partial z^2_i},

        \frac{\partial L}{\partial a} = \frac{\partial L}{\partial z^2} W^{2T}, \quad
        \frac{\partial L}{\partial z^1} = \frac{\partial L}{\partial a} \odot a(1-a), \quad
        \frac{\partial L}{\partial W^1} = x^T \frac{\partial L}{\partial z^1}, \quad
        \frac{\partial L}{\partial b^1} = \textstyle\sum_i \frac{\partial L}{\partial z^1_i}

    Parameters
    ----------
    X : ndarray, shape (n_samples, n_features)
    y : ndarray of int, shape (n_samples,)
    W1 : ndarray, shape (n_features, n_hidden)
    b1 : ndarray, shape (n_hidden,)
    W2 : ndarray, shape (n_hidden, n_classes)
    b2 : ndarray, shape (n_classes,)

    Returns
    -------
    loss : scalar
    dW1, db1, dW2, db2 : ndarrays shaped like W1, b1, W2, b2
    """
    A = sigmoid(X @ W1 + b1)
    Z2 = A @ W2 + b2
    loss, dZ2 = softmax_cross_entropy(Z2, y)
    dW2 = A.T @ dZ2
    db2 = dZ2.sum(axis=0)
    dA = dZ2 @ W2.T
    dZ1 = dA * A * (1.0 - A)
    dW1 = X.T @ dZ1
    db1 = dZ1.sum(axis=0)
    return loss, dW1, db1, dW2, db2


def network_loss_grad(X, y, coefs, intercepts, activation):
    r"""Loss and backward pass of an MLP of any depth: the lecture's recursion, layer by layer.

    :math:`A_0 = X`, :math:`A_l = f(A_{l-1} W_l + b_l)` for the hidden layers,
    :math:`\hat Y = \operatorname{softmax}(A_{L-1} W_L + b_L)`, mean
    cross-entropy; then from the top down

    .. math::
        \delta_L = \frac{\hat Y - Y}{N}, \quad
        \frac{\partial L}{\partial W_l} = A_{l-1}^T \delta_l, \quad
        \frac{\partial L}{\partial b_l} = \textstyle\sum_i \delta_{l,i}, \quad
        \delta_{l-1} = \delta_l W_l^T \odot f'(A_{l-1})

    with :math:`f'` in terms of the activations: 1 (identity), :math:`a(1-a)`
    (logistic), :math:`1-a^2` (tanh), :math:`[a > 0]` (relu).
    :func:`mlp_loss_grad` is the case of one logistic hidden layer.

    Parameters
    ----------
    X : ndarray, shape (n_samples, n_features)
    y : ndarray of int, shape (n_samples,)
    coefs : list of ndarray
        ``W_1 ... W_L``, shapes ``(n_features, n_1), ..., (n_{L-1}, n_classes)``.
    intercepts : list of ndarray
        ``b_1 ... b_L``.
    activation : {'identity', 'logistic', 'tanh', 'relu'}

    Returns
    -------
    loss : scalar
    coef_grads, intercept_grads : lists of ndarrays shaped like ``coefs``, ``intercepts``
    """
    f, f_prime = {
        "identity": (lambda z: z, lambda a: np.ones_like(a)),
        "logistic": (sigmoid, lambda a: a * (1.0 - a)),
        "tanh": (np.tanh, lambda a: 1.0 - a * a),
        "relu": (lambda z: np.maximum(z, 0.0), lambda a: (a > 0).astype(a.dtype)),
    }[activation]
    acts = [X]
    for W, b in zip(coefs[:-1], intercepts[:-1]):
        acts.append(f(acts[-1] @ W + b))
    loss, delta = softmax_cross_entropy(acts[-1] @ coefs[-1] + intercepts[-1], y)
    L = len(coefs)
    coef_grads, intercept_grads = [None] * L, [None] * L
    for layer in range(L - 1, -1, -1):
        coef_grads[layer] = acts[layer].T @ delta
        intercept_grads[layer] = delta.sum(axis=0)
        if layer > 0:
            delta = (delta @ coefs[layer].T) * f_prime(acts[layer])
    return loss, coef_grads, intercept_grads
