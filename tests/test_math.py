"""The vectorisable elementary functions of ``fusedgrad.kernels._math``.

Checked in units in the last place (ulp) of the dtype against NumPy's own
functions evaluated in extended precision (``np.longdouble``).
"""

import numpy as np
import pytest
from numba import njit

from fusedgrad.kernels import _options as opt
from fusedgrad.kernels._math import exp, log1p, sigmoid, tanh

_OPTIONS = dict(opt.JIT, cache=False)


@njit(**_OPTIONS)
def _apply_exp(x, out):
    for i in range(x.shape[0]):
        out[i] = exp(x[i])


@njit(**_OPTIONS)
def _apply_log1p(x, out):
    for i in range(x.shape[0]):
        out[i] = log1p(x[i])


@njit(**_OPTIONS)
def _apply_sigmoid(x, out):
    for i in range(x.shape[0]):
        out[i] = sigmoid(x[i])


@njit(**_OPTIONS)
def _apply_tanh(x, out):
    for i in range(x.shape[0]):
        out[i] = tanh(x[i])


def ulp_error(got, reference, dtype):
    """|got - reference| in ulp of the dtype at the reference value."""
    reference = np.asarray(reference, np.longdouble)
    spacing = np.spacing(np.abs(reference).astype(dtype)).astype(np.longdouble)
    return np.abs(got.astype(np.longdouble) - reference) / spacing


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log1p_within_3_ulp(dtype):
    rng = np.random.default_rng(0)
    lowest = -44 if dtype == np.float32 else -300
    t = np.concatenate([
        10.0 ** rng.uniform(lowest, 4, 200_000),  # tiny to large, log-uniform
        rng.uniform(0.0, 2.0, 200_000),           # around the sqrt(2) - 1 switch
        [0.0, 2.0**-24, 2.0**-53, np.sqrt(2.0) - 1.0, 1.0, 9.0],
    ]).astype(dtype)
    t = t[np.isfinite(t)]
    out = np.empty_like(t)
    _apply_log1p(t, out)
    assert out.dtype == dtype
    reference = np.log1p(t.astype(np.longdouble))
    nonzero = reference != 0
    assert np.all(out[~nonzero] == 0)
    assert ulp_error(out[nonzero], reference[nonzero], dtype).max() < 3.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log1p_keeps_tiny_arguments(dtype):
    # Below half an ulp of 1, log1p(t) = t - t^2/2 + ... rounds to t.
    t = np.array([1e-30, 1e-20, 2.0 ** -(np.finfo(dtype).nmant + 2)], dtype)
    out = np.empty_like(t)
    _apply_log1p(t, out)
    np.testing.assert_array_equal(out, t)
    # just above, the correction -t^2/2 matters and is kept
    t = np.array([1e-4, 1e-3], dtype)
    _apply_log1p(t, out[:2])
    assert ulp_error(out[:2], np.log1p(t.astype(np.longdouble)), dtype).max() < 3.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_accuracy_and_limits(dtype):
    info = np.finfo(dtype)
    rng = np.random.default_rng(1)
    hi = np.log(info.max)
    lo = np.log(info.tiny)  # results below the smallest normal number flush to 0
    x = rng.uniform(lo, hi, 200_000).astype(dtype)
    x = x[(x > lo) & (x < hi)]
    out = np.empty_like(x)
    _apply_exp(x, out)
    # the bound stated in fusedgrad/kernels/_math.py
    assert ulp_error(out, np.exp(x.astype(np.longdouble)), dtype).max() < 1.5
    edges = np.array([-np.inf, -1e4, 0.0, 1e4, np.inf], dtype)
    out = np.empty_like(edges)
    _apply_exp(edges, out)
    np.testing.assert_array_equal(out, [0.0, 0.0, 1.0, np.inf, np.inf])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_accuracy_and_saturation(dtype):
    info = np.finfo(dtype)
    lo = float(np.log(info.tiny))  # below it the true value is not a normal number
    z = np.concatenate([np.linspace(-30, 30, 10_001), np.linspace(1.2 * lo, 40, 20_001),
                        np.nextafter(dtype(lo), dtype(0)) + np.arange(-3, 4) * np.spacing(dtype(lo))])
    z = z.astype(dtype)
    out = np.empty_like(z)
    _apply_sigmoid(z, out)
    reference = 1 / (1 + np.exp(-z.astype(np.longdouble)))
    normal = reference >= info.tiny
    # the bound stated in fusedgrad/kernels/_math.py; flushed to 0 below it
    assert ulp_error(out[normal], reference[normal], dtype).max() < 3.5
    assert (out[~normal] == 0).all() and (~normal).any()
    far = np.array([-np.inf, -1e4, -1e3, 1e3, 1e4, np.inf], dtype)
    out = np.empty_like(far)
    with np.errstate(all="raise"):
        _apply_sigmoid(far, out)
    np.testing.assert_array_equal(out, [0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    nan = np.array([np.nan], dtype)
    _apply_sigmoid(nan, nan)
    assert np.isnan(nan[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tanh_accuracy_and_saturation(dtype):
    """Within 2 ulp of 1 (absolute) over the whole range, odd, exactly +-1 far out."""
    z = np.concatenate([np.linspace(-30, 30, 20_001), np.geomspace(1e-30, 30, 5_001),
                        -np.geomspace(1e-30, 30, 5_001), np.linspace(-800, 800, 1_001)])
    z = z.astype(dtype)
    out = np.empty_like(z)
    _apply_tanh(z, out)
    reference = np.tanh(z.astype(np.longdouble))
    error = np.abs(out.astype(np.longdouble) - reference) / np.longdouble(np.spacing(dtype(1)))
    assert error.max() < 2
    neg = np.empty_like(z)
    _apply_tanh(-z, neg)
    np.testing.assert_array_equal(neg, -out)  # odd, bit for bit
    far = np.array([-np.inf, -1e4, -50, 50, 1e4, np.inf], dtype)
    out = np.empty_like(far)
    with np.errstate(all="raise"):
        _apply_tanh(far, out)
    np.testing.assert_array_equal(out, [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    nan = np.array([np.nan], dtype)
    _apply_tanh(nan, nan)
    assert np.isnan(nan[0])
