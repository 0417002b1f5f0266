"""The optimizers' elementwise updates of :class:`fusedgrad.models.MLPClassifier`, compiled.

Each function updates one parameter in place with exactly the operations of
scikit-learn's NumPy code, in the same order and in the parameter's dtype
(NumPy rounds a Python float to a float32 array's dtype before using it; so
do these), so the same gradients give the same bits. One compiled loop per
parameter replaces a dozen NumPy calls of about a microsecond each, which at
a minibatch of 200 rows cost as much as a third of the gradient.
The arrays are 1-D views of C-contiguous arrays.
"""

import math

from numba import njit

from fusedgrad.kernels import _options as opt

__all__ = ["sgd_update", "adam_update", "sgd_step", "adam_step"]


@njit(**opt.EXACT)
def sgd_update(p, g, v, lr, momentum, nesterov):
    """``g *= lr``; then ``p -= g`` (no momentum), or ``v = momentum v - g`` and
    ``p += v`` or, with Nesterov's momentum, ``p += momentum v - g``. ``g`` is
    overwritten."""
    dt = p.dtype.type
    lr_, mu = dt(lr), dt(momentum)
    for i in range(p.shape[0]):
        gi = g[i] * lr_
        g[i] = gi
        if momentum == 0.0:
            p[i] = p[i] - gi
            continue
        vi = v[i] * mu
        vi = vi - gi
        v[i] = vi
        if nesterov:
            p[i] = p[i] + (vi * mu - gi)
        else:
            p[i] = p[i] + vi


@njit(**opt.EXACT)
def adam_update(p, g, m, v, beta_1, beta_2, epsilon, learning_rate):
    """Adam's step with the bias-corrected ``learning_rate``:
    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``p += -learning_rate m / (sqrt(v) + epsilon)``. ``g`` is overwritten."""
    dt = p.dtype.type
    b1, c1 = dt(beta_1), dt(1.0 - beta_1)
    b2, c2 = dt(beta_2), dt(1.0 - beta_2)
    eps, neg_lr = dt(epsilon), dt(-learning_rate)
    for i in range(p.shape[0]):
        gi = g[i]
        mi = m[i] * b1 + gi * c1
        m[i] = mi
        vi = v[i] * b2 + (gi * gi) * c2
        v[i] = vi
        step = (mi * neg_lr) / (math.sqrt(vi) + eps)
        g[i] = step
        p[i] = p[i] + step


@njit(**opt.EXACT)
def _add_l2(g, p, scale):
    """``g += scale * p``, NumPy's two operations in ``p``'s dtype (the L2 term's
    gradient, as :meth:`MLPClassifier._add_l2` adds it)."""
    s = p.dtype.type(scale)
    for i in range(p.shape[0]):
        g[i] = g[i] + s * p[i]


@njit(**opt.EXACT)
def sgd_step(params, grads, velocities, n_weights, l2_scale, lr, momentum, nesterov):
    """One optimizer step of a whole network: for each parameter ``k`` (tuples of
    1-D views), first ``g += l2_scale * p`` when ``k < n_weights`` and
    ``l2_scale`` is not 0, then :func:`sgd_update`. The same bits as those
    calls one by one, in one call instead of two per parameter."""
    for k in range(len(params)):
        if k < n_weights and l2_scale != 0.0:
            _add_l2(grads[k], params[k], l2_scale)
        sgd_update(params[k], grads[k], velocities[k], lr, momentum, nesterov)


@njit(**opt.EXACT)
def adam_step(params, grads, ms, vs, n_weights, l2_scale, beta_1, beta_2, epsilon,
              learning_rate):
    """:func:`sgd_step` for :func:`adam_update`."""
    for k in range(len(params)):
        if k < n_weights and l2_scale != 0.0:
            _add_l2(grads[k], params[k], l2_scale)
        adam_update(params[k], grads[k], ms[k], vs[k], beta_1, beta_2, epsilon, learning_rate)
