"""MLPClassifier: scikit-learn's multi-layer perceptron classifier, trained by the fused kernels.

The estimator follows :class:`sklearn.neural_network.MLPClassifier`: the same
parameter names and defaults (except ``activation``, whose default is the
lecture's ``'logistic'``), the same weight initialisation, update rules,
stopping rules and fitted attributes, and the same use of the random state,
so that with the same ``random_state`` it starts from the same weights and
takes the same minibatches. The arithmetic is done by :mod:`fusedgrad.kernels`:

* each training step is one call of a fused kernel, the whole forward and
  backward pass of the batch: :func:`~fusedgrad.kernels.mlp_loss_grad` for
  one hidden layer with the logistic activation (the lecture's network),
  :func:`~fusedgrad.kernels.network_loss_grad` for any other depth and
  activation. The model checks the data and the parameters once per fit and
  calls the kernels' compiled cores directly
  (:class:`~fusedgrad.kernels.network.PreparedLossGrad`);
* prediction goes layer by layer through
  :func:`~fusedgrad.kernels.layers.affine_activation`.

The optimizers' elementwise updates are compiled loops too
(:mod:`fusedgrad.kernels._optim`, one call per parameter, scikit-learn's
operations in its order, so the same bits).

Large data: ``X`` is never copied or converted as a whole. A minibatch of
consecutive rows is a view; a shuffled minibatch is gathered by the fused
kernel a cache-sized chunk at a time (the kernels' ``rows=``); rows in another
dtype are converted a block of :data:`_BLOCK_ROWS` rows at a time.
``X`` may therefore be an ``np.memmap`` larger than memory: besides one block,
a fit keeps about 9 bytes per sample in memory (the shuffled row order, 2 x 4
bytes, and the class index of each label, 1 byte for fewer than 256 classes).

Every fit enters the kernels' single-threaded-BLAS limit once, around the
whole loop, so that the per-call entries of the kernels cost nothing.
"""

import math
import numbers
import sys
import time

import numpy as np

from fusedgrad._validate import all_finite
from fusedgrad._warn import warn
from fusedgrad.kernels._optim import adam_step, sgd_step
from fusedgrad.models import _dask, _persist
from fusedgrad.models._base import (
    BaseModel,
    ClassifierMixin,
    ConvergenceWarning,
    DataConversionWarning,
    _sk,
    check_array,
    check_sample_weight,
    feature_names,
)

__all__ = ["MLPClassifier"]

_ACTIVATIONS = ("identity", "logistic", "tanh", "relu")
_SOLVERS = ("gd", "sgd", "adam", "lbfgs")
_LEARNING_RATES = ("constant", "invscaling", "adaptive")
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

#: Rows per kernel call where a batch is cut into blocks: rows that must be
#: converted (another dtype, not C-contiguous) and prediction, which goes
#: layer by layer. Bounds the extra memory of a call independently of the
#: number of samples.
_BLOCK_ROWS = 16384


# ---------------------------------------------------------------------------
# The device: the one place where kernels are chosen
# ---------------------------------------------------------------------------


class _CpuKernels:
    """The kernels of ``device='cpu'`` (:mod:`fusedgrad.kernels`).

    A device provides ``loss_grad(coefs, intercepts, activation)``, which
    returns the fit's loss-and-gradient step
    (:class:`~fusedgrad.kernels.network.PreparedLossGrad`),
    ``affine_activation`` (prediction, layer by layer) and ``session()``, a
    context manager entered once around a whole fit or prediction.
    """

    name = "cpu"

    def __init__(self):
        from fusedgrad.kernels import layers, network
        from fusedgrad.kernels._blas import single_threaded_blas

        self.loss_grad = network.PreparedLossGrad
        self.affine_activation = layers.affine_activation
        # Every kernel limits BLAS to one thread while it runs; entering the
        # limit once around the whole loop makes the kernels' own entries free.
        self.session = single_threaded_blas


class _CudaKernels:
    """The device ``'cuda'``: any of the networks on the GPU.

    Training and prediction do not go through the interface of
    :class:`_CpuKernels`: the model runs its own loop
    (:meth:`MLPClassifier._fit_cuda`) on device arrays with
    :func:`fusedgrad.kernels.cuda.network.loss_grad_device` (the fused
    kernel of :func:`~fusedgrad.kernels.cuda.mlp_loss_grad` for the lecture's
    network) and the update kernels of :mod:`fusedgrad.kernels.cuda._train`.
    Creating it checks nothing; :meth:`require` raises when no GPU (nor the
    simulator) is usable.
    """

    name = "cuda"

    def __init__(self):
        import contextlib

        self.session = contextlib.nullcontext

    @staticmethod
    def require():
        from fusedgrad.kernels.cuda import _runtime

        _runtime.require()


def _device_kernels(device):
    """The kernels of ``device``: 'cpu' or 'cuda'."""
    if device == "cpu":
        return _CpuKernels()
    if device == "cuda":
        return _CudaKernels()
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


# ---------------------------------------------------------------------------
# Parameter checks
# ---------------------------------------------------------------------------


def _shuffled(sample_idx, rng):
    """The epoch's sample order: scikit-learn's ``sklearn.utils.shuffle``, the same draws."""
    order = np.arange(sample_idx.shape[0], dtype=sample_idx.dtype)
    rng.shuffle(order)
    return sample_idx[order]


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _check_choice(name, value, options):
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value


def _check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _check_int(name, value, low):
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def _check_real(name, value, low=None, high=None, low_open=False, high_open=False):
    if not _is_real(value):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    bad = not math.isfinite(value)
    if low is not None:
        bad |= value <= low if low_open else value < low
    if high is not None:
        bad |= value >= high if high_open else value > high
    if bad:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        where = f"in {lo}, {hi}" if low is not None and high is not None else (
            f"{'>' if low_open else '>='} {low:g}" if low is not None else f"<= {high:g}")
        raise ValueError(f"{name} must be {where}, got {value!r}")
    return value


def _check_random_state(seed):
    """scikit-learn's ``check_random_state``: None, an int or a RandomState."""
    if seed is None or seed is np.random:
        return np.random.mtrand._rand
    if _is_int(seed):
        if not 0 <= seed < 2**32:
            raise ValueError(f"random_state must be in [0, 2**32), got {seed}")
        return np.random.RandomState(seed)
    if isinstance(seed, np.random.RandomState):
        return seed
    raise TypeError(
        f"random_state must be None, an int or a numpy.random.RandomState, got {seed!r}"
    )


def _check_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in _DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return dt


# ---------------------------------------------------------------------------
# Data: rows served in the model's dtype, X never converted as a whole
# ---------------------------------------------------------------------------


def _feature_matrix(X, dtype):
    """``X`` as a 2-D real ndarray; an ndarray (or memmap) of numbers is kept as it is.

    Anything else goes through :func:`~fusedgrad.models._base.check_array`,
    which converts it or refuses it (a masked array too: its mask would be
    ignored) with an error naming ``X``.
    """
    if (isinstance(X, np.ndarray) and not isinstance(X, np.ma.MaskedArray)
            and X.dtype.kind in "biuf" and X.ndim == 2 and X.shape[0] > 0 and X.shape[1] > 0):
        return X
    return check_array("X", X, dtype=dtype, ensure_finite=False)


def _rows(X, rows, dtype):
    """``X[rows]`` (a slice or an index array) as a C-contiguous array of ``dtype``:
    a view for consecutive rows already in ``dtype``, else a copy of these rows only."""
    return np.ascontiguousarray(X[rows], dtype=dtype)


def _index_dtype(n):
    """Row indices in 4 bytes where they fit (the draws of a shuffle do not depend on it)."""
    return np.int32 if n < 2**31 else np.int64


def _is_native(X, dtype):
    return X.dtype == dtype and X.flags.c_contiguous


def _check_finite(X, dtype):
    """Reject NaN or infinity in ``X``, and values that overflow ``dtype``; one pass,
    a block of rows at a time where ``X`` must be converted."""
    if X.dtype.kind in "biu":
        return  # every integer is finite in float32 and float64
    if _is_native(X, dtype):
        if not all_finite(X):
            raise ValueError("X contains NaN or infinity")
        return
    for start in range(0, X.shape[0], _BLOCK_ROWS):
        block = X[start:start + _BLOCK_ROWS]
        with np.errstate(over="ignore"):  # overflow to inf is what is looked for
            converted = np.ascontiguousarray(block, dtype=dtype)
        if not all_finite(converted):
            if not all_finite(np.ascontiguousarray(block)):
                raise ValueError("X contains NaN or infinity")
            raise ValueError(f"X holds values too large for dtype={dtype.name!r}")


def _check_labels(y, n_samples):
    if y is None:
        raise ValueError("y is None: this estimator requires y to be passed, but the target y "
                         "is None")
    if type(y).__module__.startswith("scipy.sparse"):
        raise TypeError("y is a sparse matrix; pass a 1-D array of class labels")
    if isinstance(y, np.ma.MaskedArray):
        raise TypeError("y is a masked array; its mask would be ignored: pass y.filled(...) "
                        "or drop the masked samples")
    try:
        y = np.asarray(y)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"y cannot be converted to an array of labels: {exc}") from None
    if y.ndim == 2 and y.shape[1] == 1:
        warn(
            "A column-vector y was passed when a 1d array was expected. Please change the "
            "shape of y to (n_samples,), for example using ravel().",
            _sk(DataConversionWarning),
        )
        y = y.reshape(-1)
    if y.ndim != 1:
        raise ValueError(
            f"y must be a 1-D array of class labels (n_samples,), got shape {y.shape} "
            "(multi-label targets are not supported)"
        )
    if y.shape[0] != n_samples:
        raise ValueError(f"y has {y.shape[0]} labels but X has {n_samples} samples")
    if y.dtype.kind == "c":
        raise TypeError(f"y must hold class labels, got complex dtype {y.dtype}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)):
            raise ValueError("y contains NaN or infinity")
        if np.any(y != np.floor(y)):
            raise ValueError(
                "y must hold class labels, got continuous values (e.g. "
                f"{y[y != np.floor(y)][0]!r}); MLPClassifier is a classifier"
            )
    return y


#: Labels are encoded a block at a time: no temporary of the size of ``y``.
_LABEL_BLOCK = 1 << 20


#: Integer labels spanning fewer values than this are counted and looked up in
#: a table (linear time) instead of sorted and searched.
_TABLE_SPAN = 1 << 20


def _integer_span(y):
    """``(lo, hi)`` of integer labels whose span suits a table, else None."""
    if y.dtype.kind not in "iu" or y.shape[0] == 0:
        return None
    lo, hi = int(y.min()), int(y.max())
    return (lo, hi) if hi - lo < _TABLE_SPAN else None


def _offsets(labels, lo):
    """``labels - lo`` for integer labels ``>= lo``, without overflow."""
    if labels.dtype.kind == "u":
        return np.subtract(labels, np.uint64(lo), dtype=np.uint64)
    return np.subtract(labels, lo, dtype=np.int64)


def _unique_labels(name, y):
    """The sorted distinct labels of ``y``."""
    span = _integer_span(y)
    if span is not None:
        lo, hi = span
        present = np.zeros(hi - lo + 1, bool)
        for s in range(0, y.shape[0], _LABEL_BLOCK):
            present[_offsets(y[s:s + _LABEL_BLOCK], lo)] = True
        # lo + offset in y's dtype: exact, since every label lies between y's
        # extremes (for int8 the offsets may wrap around, and the sum wraps back)
        return np.flatnonzero(present).astype(y.dtype) + y.dtype.type(lo)
    try:
        if y.shape[0] <= _LABEL_BLOCK:
            return np.unique(y)
        parts = [np.unique(y[s:s + _LABEL_BLOCK]) for s in range(0, y.shape[0], _LABEL_BLOCK)]
        return np.unique(np.concatenate(parts))
    except TypeError:
        raise TypeError(f"{name} holds labels of mixed types that cannot be sorted") from None


def _label_codes(y, classes):
    """The index of each label of ``y`` in the sorted ``classes``, in the smallest
    unsigned integer type that holds them (the kernels take any integer labels)."""
    n_classes = classes.shape[0]
    codes = np.empty(y.shape[0], np.min_scalar_type(n_classes))
    span = _integer_span(y) if classes.dtype.kind in "iu" else None
    if span is not None:
        # a table from label to index; n_classes marks a label that is no class
        lo, hi = span
        table = np.full(hi - lo + 1, n_classes, codes.dtype)
        inside = (classes >= lo) & (classes <= hi)
        table[_offsets(classes[inside], lo)] = np.flatnonzero(inside)
    for s in range(0, y.shape[0], _LABEL_BLOCK):
        block = y[s:s + _LABEL_BLOCK]
        if span is not None:
            c = table[_offsets(block, lo)]
            known = c < n_classes
        else:
            try:
                c = np.searchsorted(classes, block)
                np.minimum(c, n_classes - 1, out=c)
                known = classes[c] == block
            except TypeError:
                raise TypeError(
                    f"y holds labels of another type than the classes {classes!r}") from None
        if not np.all(known):
            unknown = _unique_labels("y", block[~known])
            raise ValueError(f"y has classes not in classes_ {classes!r}: {unknown!r}")
        codes[s:s + _LABEL_BLOCK] = c
    return codes


# ---------------------------------------------------------------------------
# Optimizers: scikit-learn's update rules, in place
# ---------------------------------------------------------------------------


def _flat(a):
    """``a`` as a 1-D view, for the compiled updates, which write it in place (the
    model keeps parameters, gradients and optimizer state C-contiguous; a
    reshape of anything else would be a copy, and the update would be lost)."""
    if not a.flags.c_contiguous:
        raise ValueError("the optimizer's arrays must be C-contiguous")
    return a.reshape(-1)


class _FlatViews:
    """Tuples of 1-D views (:func:`_flat`) of the arrays of a list, for the
    compiled step, rebuilt only when another list object is passed (a fit
    passes the same parameter and gradient lists at every step)."""

    def __init__(self):
        self._source, self._views = None, None

    def __call__(self, arrays):
        if arrays is not self._source:
            self._source, self._views = arrays, tuple(_flat(a) for a in arrays)
        return self._views


class _SGDOptimizer:
    """Stochastic gradient descent with momentum, as scikit-learn's ``SGDOptimizer``.

    ``v <- momentum v - lr g``; the parameter moves by ``v``, or by
    ``momentum v - lr g`` with Nesterov's momentum. The operations are
    scikit-learn's, in the same order, so the same gradients give the same
    bits. ``grads`` are overwritten.
    """

    def __init__(self, params, learning_rate_init, lr_schedule, momentum, nesterov, power_t):
        self.learning_rate_init = learning_rate_init
        self.learning_rate = float(learning_rate_init)
        self.lr_schedule = lr_schedule
        self.momentum = momentum
        self.nesterov = nesterov
        self.power_t = power_t
        self.velocities = [np.zeros_like(p) for p in params]
        self._params, self._grads = _FlatViews(), _FlatViews()
        self._state = tuple(_flat(v) for v in self.velocities)

    def update_params(self, params, grads, n_weights=0, l2_scale=0.0):
        """One step, in one compiled call. With ``l2_scale``, the first
        ``n_weights`` gradients get ``l2_scale * p`` added first (scikit-learn's
        L2 term, as :meth:`MLPClassifier._add_l2` would add it)."""
        # per element: g *= lr; then p -= g (the velocity is -lr g: the same
        # step), or v = mu v - g and p += v, or p += mu v - g (Nesterov)
        sgd_step(self._params(params), self._grads(grads), self._state, n_weights,
                 float(l2_scale), self.learning_rate, self.momentum, self.nesterov)

    def iteration_ends(self, time_step):
        if self.lr_schedule == "invscaling":
            self.learning_rate = float(self.learning_rate_init) / (time_step + 1) ** self.power_t

    def trigger_stopping(self, msg, progress):
        if self.lr_schedule != "adaptive":
            progress.message(msg + " Stopping.")
            return True
        if self.learning_rate <= 1e-6:
            progress.message(msg + " Learning rate too small. Stopping.")
            return True
        self.learning_rate /= 5.0
        progress.message(msg + f" Setting learning rate to {self.learning_rate:f}")
        return False


class _AdamOptimizer:
    """Adam, as scikit-learn's ``AdamOptimizer`` (same operations, same order)."""

    def __init__(self, params, learning_rate_init, beta_1, beta_2, epsilon):
        self.learning_rate_init = learning_rate_init
        self.learning_rate = float(learning_rate_init)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.t = 0
        self.ms = [np.zeros_like(p) for p in params]
        self.vs = [np.zeros_like(p) for p in params]
        self._params, self._grads = _FlatViews(), _FlatViews()
        self._state = (tuple(_flat(m) for m in self.ms), tuple(_flat(v) for v in self.vs))

    def update_params(self, params, grads, n_weights=0, l2_scale=0.0):
        """One step, in one compiled call (``n_weights``, ``l2_scale``: as
        :meth:`_SGDOptimizer.update_params`)."""
        self.t += 1
        b1, b2 = self.beta_1, self.beta_2
        self.learning_rate = (self.learning_rate_init * math.sqrt(1 - b2**self.t)
                              / (1 - b1**self.t))
        adam_step(self._params(params), self._grads(grads), *self._state, n_weights,
                  float(l2_scale), b1, b2, self.epsilon, self.learning_rate)

    def iteration_ends(self, time_step):
        pass

    def trigger_stopping(self, msg, progress):
        progress.message(msg + " Stopping.")
        return True


# ---------------------------------------------------------------------------
# device='cuda': flat parameters on the GPU
# ---------------------------------------------------------------------------

#: Rows copied to the GPU (and predicted) per block: bounds the host-side
#: conversion buffer and the activations of a prediction.
_CUDA_BLOCK_ROWS = 1 << 18


def _pack(params, dtype):
    """``[W1, ..., WL, b1, ..., bL]`` (the order of ``coefs_ + intercepts_``) as
    one flat host vector ``[W1 | b1 | W2 | b2 | ...]`` of ``dtype`` (the
    layout of the CUDA gradients, :func:`fusedgrad.kernels.cuda.network.split_flat`)."""
    L = len(params) // 2
    pairs = [np.ravel(a) for W, b in zip(params[:L], params[L:]) for a in (W, b)]
    return np.concatenate(pairs).astype(dtype, copy=False)


def _unpack(flat, units):
    """The inverse of :func:`_pack`: new arrays ``[W1, ..., WL, b1, ..., bL]``."""
    from fusedgrad.kernels.cuda.network import split_flat

    Ws, bs = split_flat(flat, units)
    return [a.copy() for a in Ws + bs]


def _rows_to_device(X, dtype):
    """``X`` in ``dtype`` as a C-contiguous device array, converted and copied a
    block of rows at a time (no host copy of the whole of ``X``)."""
    from fusedgrad.kernels.cuda._runtime import cuda

    if _is_native(X, dtype):
        return cuda.to_device(X)
    out = cuda.device_array(X.shape, dtype)
    for s in range(0, X.shape[0], _CUDA_BLOCK_ROWS):
        block = np.ascontiguousarray(X[s:s + _CUDA_BLOCK_ROWS], dtype=dtype)
        out[s:s + block.shape[0]].copy_to_device(block)
    return out


class _CudaOptimizerState:
    """The state of a CPU optimizer (:class:`_SGDOptimizer` or
    :class:`_AdamOptimizer`) on the GPU while a fit runs.

    The CPU object keeps the schedule (learning rate, Adam's step count);
    its arrays are uploaded flat when a fit starts and written back by
    :meth:`download` when it ends, so ``partial_fit`` continues on either
    device and the model pickles without device arrays.
    """

    def __init__(self, optimizer, dtype):
        from fusedgrad.kernels.cuda._runtime import cuda

        self.opt = optimizer
        self.adam = isinstance(optimizer, _AdamOptimizer)
        lists = [optimizer.ms, optimizer.vs] if self.adam else [optimizer.velocities]
        self.host = lists
        self.arrays = [cuda.to_device(_pack(a, dtype)) for a in lists]

    def update(self, p, g, l2, biases, sq_part):
        """One optimizer step on the flat parameters ``p`` with gradients ``g``."""
        from fusedgrad.kernels.cuda import _train

        o = self.opt
        if self.adam:
            o.t += 1
            o.learning_rate = (o.learning_rate_init * math.sqrt(1 - o.beta_2**o.t)
                               / (1 - o.beta_1**o.t))
            m, v = self.arrays
            _train.adam_update(p, g, m, v, o.learning_rate, o.beta_1, o.beta_2, o.epsilon, l2,
                               biases, sq_part)
        else:
            _train.sgd_update(p, g, self.arrays[0], o.learning_rate, o.momentum, o.nesterov,
                              l2, biases, sq_part)

    def download(self):
        """Write the device state back into the CPU optimizer's arrays."""
        from fusedgrad.kernels.cuda.network import units_of

        for lst, dev in zip(self.host, self.arrays):  # [W1, ..., WL, b1, ..., bL]
            for dst, src in zip(lst, _unpack(dev.copy_to_host(), units_of(lst[:len(lst) // 2]))):
                dst[...] = src


# ---------------------------------------------------------------------------
# Progress output (verbose=True)
# ---------------------------------------------------------------------------


class _Progress:
    """Progress of a fit on stderr: a line per epoch (epoch, loss, validation
    score, samples/s) and, on a terminal, a bar that moves during the epoch.
    Silent when ``verbose`` is false."""

    _BAR = 24

    def __init__(self, verbose, max_iter, n_samples, unit="epoch"):
        self.on = bool(verbose)
        self.stream = sys.stderr
        self.max_iter = max_iter
        self.n_samples = n_samples
        self.live = self.on and getattr(self.stream, "isatty", lambda: False)()
        self._last = 0.0
        self._epoch = 0
        self.unit = unit  # what a line counts: "epoch", or "iteration" for 'lbfgs'
        self._start = time.perf_counter()

    def start_epoch(self, epoch):
        self._epoch = epoch
        self._start = time.perf_counter()

    def batch(self, done):
        if not self.live:
            return
        now = time.perf_counter()
        if now - self._last < 0.2:
            return
        self._last = now
        filled = int(self._BAR * done / self.n_samples)
        rate = done / max(now - self._start, 1e-9)
        self.stream.write(f"\r{self.unit} {self._epoch}/{self.max_iter} "
                          f"[{'#' * filled}{'.' * (self._BAR - filled)}] {rate:,.0f} samples/s")
        self.stream.flush()

    def end_epoch(self, loss, val_score=None):
        if not self.on:
            return
        seconds = time.perf_counter() - self._start
        rate = self.n_samples / max(seconds, 1e-9)
        val = "" if val_score is None else f", validation score {val_score:.6f}"
        clear = "\r\033[K" if self.live else ""
        self.stream.write(f"{clear}{self.unit} {self._epoch}/{self.max_iter}: loss {loss:.8f}{val}, "
                          f"{rate:,.0f} samples/s, {seconds:.3f} s\n")
        self.stream.flush()

    def message(self, text):
        if self.on:
            self.stream.write(text + "\n")
            self.stream.flush()


# ---------------------------------------------------------------------------
# The estimator
# ---------------------------------------------------------------------------


@_persist.register
class MLPClassifier(ClassifierMixin, BaseModel):
    r"""Multi-layer perceptron classifier trained by the fused kernels.

    scikit-learn's :class:`~sklearn.neural_network.MLPClassifier` with the
    lecture's network as the default: the parameters, defaults, fitted
    attributes and training loop are scikit-learn's (solvers ``'lbfgs'``,
    ``'sgd'`` and ``'adam'``), plus the full-batch solver
    ``'gd'`` and the ``dtype`` and ``device`` parameters. The loss is the
    mean cross-entropy of the softmax output plus the L2 penalty

    .. math::
        L = \frac1n \sum_i -\log \hat y_{i, y_i}
            + \frac{\alpha}{2 n} \sum_l \lVert W^l \rVert^2

    over the ``n`` samples of a minibatch, and the layers are
    :math:`a^{l} = f(a^{l-1} W^l + b^l)` (row vectors).

    Differences from scikit-learn:

    * ``activation`` defaults to ``'logistic'`` (scikit-learn: ``'relu'``).
    * Two classes use a softmax output of 2 units (scikit-learn: one logistic
      unit). The model is as expressive; the weights, the initial draw and so
      the path of training differ from scikit-learn's in this case, and
      ``n_outputs_`` is 2, not 1.
    * The validation split of ``early_stopping`` is never stratified
      (scikit-learn stratifies two-class problems only).
    * ``batch_size`` larger than the number of samples is clipped silently.
    * ``partial_fit`` is offered for every solver but ``'lbfgs'`` and ignores
      ``early_stopping`` (no validation split is taken from a partial batch)
      instead of raising.
    * ``'lbfgs'`` computes in ``dtype`` throughout (scikit-learn's turns
      float32 weights into float64 ones after its first evaluation), and
      records ``loss_curve_`` (the loss after each iteration) and
      ``best_loss_``.
    * No multi-label targets. ``sample_weight`` is weighted as in scikit-learn,
      but a batch whose weights are all 0 takes no step (scikit-learn divides by
      the batch's weight sum, 0, and gets NaN), an ``early_stopping`` split with
      all weights 0 on either side is refused.
    * ``predict_log_proba`` is computed from the logits as a log-softmax, so
      it is finite where ``log(predict_proba)`` would underflow to ``-inf``.

    Parameters
    ----------
    hidden_layer_sizes : int or tuple of int, default (100,)
        Units of each hidden layer.
    activation : {'logistic', 'tanh', 'relu', 'identity'}, default 'logistic'
        Activation of the hidden layers. One hidden layer with ``'logistic'``
        is the lecture's network and trains through the fused
        :func:`~fusedgrad.kernels.mlp_loss_grad`; every other network through
        the fused :func:`~fusedgrad.kernels.network_loss_grad` (one call per
        step either way).
    solver : {'adam', 'sgd', 'gd', 'lbfgs'}, default 'adam'
        ``'lbfgs'``: SciPy's L-BFGS-B on the full-batch loss, one fused
        kernel call per evaluation of the loss and its gradient; it stops
        after ``max_iter`` iterations, ``max_fun`` evaluations, or when no
        component of the gradient exceeds ``tol`` (the learning-rate,
        batch, shuffle, momentum, Adam and ``early_stopping`` parameters do
        not apply). ``'gd'``: full-batch gradient descent as in the lecture,
        :math:`W \leftarrow W - \eta \nabla L` once per epoch on all training
        samples (``batch_size``, ``momentum`` and ``shuffle`` do not apply;
        the ``learning_rate`` schedule does). ``'sgd'``: minibatch stochastic
        gradient descent with ``momentum`` and ``nesterovs_momentum``.
        ``'adam'``: Adam with ``beta_1``, ``beta_2``, ``epsilon``.
    alpha : float, default 1e-4
        Strength of the L2 penalty (see the loss above).
    batch_size : int or 'auto', default 'auto'
        Minibatch size of ``'sgd'`` and ``'adam'``; ``'auto'`` is
        ``min(200, n_samples)``.
    learning_rate : {'constant', 'invscaling', 'adaptive'}, default 'constant'
        Step size schedule (``'sgd'`` and ``'gd'``): constant; divided by
        ``(t + 1) ** power_t`` with ``t`` the samples seen, after each epoch;
        or divided by 5 each time the stopping criterion is met, until 1e-6.
    learning_rate_init : float, default 0.001
        Initial step size.
    power_t : float, default 0.5
        Exponent of ``'invscaling'``.
    max_iter : int, default 200
        Most epochs (passes over the training data) per ``fit``; for
        ``'lbfgs'``, most iterations.
    shuffle : bool, default True
        Shuffle the samples before each epoch (``'sgd'``, ``'adam'``).
    random_state : int, RandomState or None, default None
        Seeds the initial weights, the validation split and the shuffling,
        drawn in scikit-learn's order: the same seed gives the same model.
    tol : float, default 1e-4
        Improvement of the training loss (or of the validation score with
        ``early_stopping``) below which an epoch counts as no improvement.
    verbose : bool, default False
        Progress on stderr: a line per epoch with the loss, the validation
        score and the throughput, and a bar during each epoch on a terminal.
    warm_start : bool, default False
        ``fit`` continues from the current ``coefs_`` and ``intercepts_``.
    momentum : float, default 0.9
        Momentum of ``'sgd'``, in [0, 1].
    nesterovs_momentum : bool, default True
        Nesterov's momentum (``'sgd'`` with ``momentum > 0``).
    early_stopping : bool, default False
        Set aside ``validation_fraction`` of the training data and stop when
        its accuracy has not improved by ``tol`` for ``n_iter_no_change``
        epochs; the best weights are kept.
    validation_fraction : float, default 0.1
        Fraction of the samples set aside by ``early_stopping``, in (0, 1).
    beta_1, beta_2 : float, default 0.9, 0.999
        Decay rates of Adam's moment estimates, in [0, 1).
    epsilon : float, default 1e-8
        Adam's guard against division by zero.
    n_iter_no_change : int, default 10
        Epochs without improvement before stopping.
    max_fun : int, default 15000
        Most evaluations of the loss and gradient per ``fit`` (``'lbfgs'``).
    dtype : {'float32', 'float64'}, default 'float32'
        Precision of the weights and of all computation; ``X`` is converted a
        block of rows at a time.
    device : {'cpu', 'cuda'}, default 'cpu'
        Where the kernels run. ``'cuda'`` (numba-cuda and a CUDA GPU, see
        :mod:`fusedgrad.kernels.cuda`; ``fit`` raises a RuntimeError without
        one) trains the same networks (any ``hidden_layer_sizes`` and
        ``activation``) with every solver, schedule, ``alpha`` and
        ``early_stopping``; the lecture's network (one logistic hidden layer)
        takes one fused kernel per step on thin layers, any other one product
        per layer and direction. ``X`` (converted to ``dtype``) and the labels are
        copied to the GPU once per ``fit``/``partial_fit`` call, so ``X``
        must fit in GPU memory; the weights and the optimizer's state stay
        there for the call, minibatches are gathered there, and one copy of
        three numbers per epoch comes back (loss and checks), so a
        divergence is reported at the end of its epoch. ``coefs_`` and
        ``intercepts_`` are NumPy arrays after the call. ``predict``,
        ``predict_proba`` and ``score`` run the forward pass on the GPU.

    Attributes
    ----------
    classes_ : ndarray, shape (n_classes,)
        The class labels (any sortable type, strings too).
    coefs_ : list of ndarray
        ``coefs_[l]`` has shape ``(units[l], units[l + 1])``.
    intercepts_ : list of ndarray
        ``intercepts_[l]`` has shape ``(units[l + 1],)``.
    loss_ : float
        Loss (with the L2 term) of the last epoch, averaged over its batches.
    loss_curve_ : list of float
        ``loss_`` of every epoch (``'lbfgs'``: the loss after every
        iteration), continued by ``warm_start``/``partial_fit``.
    best_loss_ : float or None
        Smallest ``loss_`` so far; None with ``early_stopping``.
    validation_scores_ : list of float or None
        Validation accuracy after each epoch with ``early_stopping``, else None.
    best_validation_score_ : float or None
        Best of ``validation_scores_``.
    n_iter_ : int
        Epochs (``'lbfgs'``: iterations) run by the last ``fit`` (1 after
        ``partial_fit``).
    t_ : int
        Training samples seen, over all calls.
    n_features_in_ : int
    feature_names_in_ : ndarray of str objects, shape (n_features_in_,)
        The column names of a dataframe ``X`` given to ``fit``, where all are
        strings; absent otherwise. A later ``X`` with other names, or the
        same in another order, is refused (``ValueError``).
    n_layers_ : int
        Number of layers including input and output: ``len(hidden) + 2``.
    n_outputs_ : int
        Output units: the number of classes (2 for two classes).
    out_activation_ : str
        ``'softmax'``.

    Notes
    -----
    ``save(path)`` writes the fitted model to one file that
    :func:`fusedgrad.models.load` reads without running code (arrays and
    JSON metadata); pickling works as for any scikit-learn estimator. The
    optimizer's state (momentum, Adam's moments) is not saved: a
    ``partial_fit`` after loading starts it afresh, as ``fit`` always does.

    Examples
    --------
    >>> from fusedgrad.models import MLPClassifier
    >>> clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=50, random_state=0)
    >>> clf.fit(X_train, y_train).score(X_test, y_test)  # doctest: +SKIP
    """

    _fitted_attribute = "coefs_"

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        activation="logistic",
        *,
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        max_fun=15000,
        dtype="float32",
        device="cpu",
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.dtype = dtype
        self.device = device

    # --- parameters -----------------------------------------------------------

    def _hidden_sizes(self):
        sizes = self.hidden_layer_sizes
        if _is_int(sizes):
            sizes = (sizes,)
        try:
            sizes = tuple(sizes)
        except TypeError:
            raise TypeError(
                f"hidden_layer_sizes must be an int or a sequence of ints, got {sizes!r}"
            ) from None
        for h in sizes:
            if not _is_int(h):
                raise TypeError(f"hidden_layer_sizes must hold ints, got {sizes!r}")
            if h <= 0:
                raise ValueError(f"hidden_layer_sizes must hold positive ints, got {sizes!r}")
        return tuple(int(h) for h in sizes)

    def _check_params(self):
        """Check every parameter (errors name it); returns the checked hidden sizes and dtype."""
        hidden = self._hidden_sizes()
        _check_choice("activation", self.activation, _ACTIVATIONS)
        _check_choice("solver", self.solver, _SOLVERS)
        _check_real("alpha", self.alpha, low=0.0)
        if not (isinstance(self.batch_size, str) and self.batch_size == "auto"):
            if not _is_int(self.batch_size):
                raise TypeError(f"batch_size must be 'auto' or an int, got {self.batch_size!r}")
            _check_int("batch_size", self.batch_size, 1)
        _check_choice("learning_rate", self.learning_rate, _LEARNING_RATES)
        _check_real("learning_rate_init", self.learning_rate_init, low=0.0, low_open=True)
        _check_real("power_t", self.power_t)
        _check_int("max_iter", self.max_iter, 1)
        _check_bool("shuffle", self.shuffle)
        _check_real("tol", self.tol, low=0.0)
        if not (isinstance(self.verbose, (bool, np.bool_)) or _is_int(self.verbose)):
            raise TypeError(f"verbose must be a bool or an int, got {self.verbose!r}")
        _check_bool("warm_start", self.warm_start)
        _check_real("momentum", self.momentum, low=0.0, high=1.0)
        _check_bool("nesterovs_momentum", self.nesterovs_momentum)
        _check_bool("early_stopping", self.early_stopping)
        _check_real("validation_fraction", self.validation_fraction, low=0.0, high=1.0,
                    low_open=True, high_open=True)
        _check_real("beta_1", self.beta_1, low=0.0, high=1.0, high_open=True)
        _check_real("beta_2", self.beta_2, low=0.0, high=1.0, high_open=True)
        _check_real("epsilon", self.epsilon, low=0.0, low_open=True)
        _check_int("n_iter_no_change", self.n_iter_no_change, 1)
        _check_int("max_fun", self.max_fun, 1)
        dtype = _check_dtype(self.dtype)
        _check_random_state(self.random_state)
        kernels = _device_kernels(self.device)
        return hidden, dtype, kernels

    # --- the network ------------------------------------------------------------

    def _fused(self):
        """The lecture's network: one logistic hidden layer, one fused kernel call."""
        return len(self.coefs_) == 2 and self.activation == "logistic"

    def _init_coef(self, rng, fan_in, fan_out, dtype):
        # Glorot's uniform initialisation, drawn exactly as scikit-learn draws it.
        factor = 2.0 if self.activation == "logistic" else 6.0
        bound = np.sqrt(factor / (fan_in + fan_out))
        coef = rng.uniform(-bound, bound, (fan_in, fan_out))
        intercept = rng.uniform(-bound, bound, fan_out)
        return coef.astype(dtype, copy=False), intercept.astype(dtype, copy=False)

    def _initialize(self, layer_units, dtype, rng):
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = layer_units[-1]
        self.n_layers_ = len(layer_units)
        self.out_activation_ = "softmax"
        self.coefs_, self.intercepts_ = [], []
        for fan_in, fan_out in zip(layer_units[:-1], layer_units[1:]):
            coef, intercept = self._init_coef(rng, fan_in, fan_out, dtype)
            self.coefs_.append(coef)
            self.intercepts_.append(intercept)
        self._best_coefs = [c.copy() for c in self.coefs_]
        self._best_intercepts = [b.copy() for b in self.intercepts_]
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None

    def _loss_grad(self, step, X, codes, rows, n_rows, dtype, l2_grad=True, sw=None):
        """Loss and gradients (L2 term included) of the minibatch ``X[rows]``, and the
        sum of its weights.

        With ``sw`` (the weights of all samples) the batch's weights ``sw[rows]``
        weight its mean loss and divide the L2 term, as in scikit-learn; a
        batch whose weights are all 0 returns ``(0.0, None, 0.0)`` (no step).

        Without ``l2_grad`` the L2 term is in the loss only: the optimizer
        adds its gradient in its own step (``update_params(..., l2_scale=)``).

        ``step`` is the fit's :class:`~fusedgrad.kernels.network.PreparedLossGrad`
        and ``rows`` a slice or an index array. The whole batch goes through
        the fused kernel in one call, however many rows: a view of
        consecutive rows, or ``X`` itself with the batch's row indices, which
        the kernel gathers a cache-sized chunk at a time. Only where ``X``
        must be converted (another dtype, not C-contiguous) is the batch
        converted in blocks of at most :data:`_BLOCK_ROWS` rows, whose means
        are combined with weights ``n_block / n_rows``.
        """
        if sw is None:
            weights, total = None, float(n_rows)
        else:
            weights = sw[rows]
            total = float(np.sum(weights, dtype=np.float64))
            if total == 0.0:
                return 0.0, None, 0.0
        if _is_native(X, dtype):
            if isinstance(rows, slice):
                loss, grads = step(X[rows], codes[rows].astype(np.intp), None, weights, total)
            else:
                loss, grads = step(X, codes[rows].astype(np.intp), rows.astype(np.intp),
                                   weights, total)
            return (*self._add_l2(loss, grads, total, l2_grad), total)
        if isinstance(rows, slice):
            blocks = [slice(s, min(s + _BLOCK_ROWS, rows.stop))
                      for s in range(rows.start, rows.stop, _BLOCK_ROWS)]
        else:
            blocks = [rows[s:s + _BLOCK_ROWS] for s in range(0, n_rows, _BLOCK_ROWS)]
        loss, grads = 0.0, None
        for block in blocks:
            if sw is None:
                block_weights, block_total = None, float(len(codes[block]))
            else:
                block_weights = sw[block]
                block_total = float(np.sum(block_weights, dtype=np.float64))
                if block_total == 0.0:
                    continue
            Xb, yb = _rows(X, block, dtype), codes[block].astype(np.intp)
            block_loss, block_grads = step(Xb, yb, None, block_weights, block_total)
            if len(blocks) == 1:
                loss, grads = block_loss, block_grads
                break
            weight = block_total / total
            loss += weight * block_loss
            if grads is None:  # a copy: step reuses its gradient arrays
                grads = [g * dtype.type(weight) for g in block_grads]
            else:
                for g, gb in zip(grads, block_grads):
                    gb *= dtype.type(weight)
                    g += gb
        return (*self._add_l2(loss, grads, total, l2_grad), total)

    def _add_l2(self, loss, grads, n_rows, grad=True):
        """scikit-learn's L2 term: ``alpha / (2 n) sum ||W||^2``, gradient ``alpha W / n``
        (added to ``grads`` only with ``grad``); ``n`` is the sum of the weights
        with sample weights."""
        if self.alpha:
            squares = 0.0
            for W in self.coefs_:
                w = W.reshape(-1)
                squares += float(np.dot(w, w))
            loss += 0.5 * self.alpha * squares / n_rows
            if grad:
                scale = self.alpha / n_rows
                for g, W in zip(grads, self.coefs_):
                    g += scale * W
        return loss, grads

    def _forward(self, kernels, Xb, out_activation, out=None):
        """Output of the network on the rows ``Xb``: logits ('identity') or probabilities."""
        A = Xb
        W, b = self.coefs_, self.intercepts_
        for i in range(len(W) - 1):
            A = kernels.affine_activation(A, W[i], b[i], activation=self.activation,
                                          check_finite=False)
        return kernels.affine_activation(A, W[-1], b[-1], out, activation=out_activation,
                                         check_finite=False)

    def _accuracy(self, kernels, X, codes, rows, dtype, sw=None):
        """Fraction of ``X[rows]`` predicted right (``codes`` are label indices),
        weighted by ``sw[rows]`` with sample weights ``sw``."""
        correct = 0.0
        for s in range(0, len(rows), _BLOCK_ROWS):
            block = rows[s:s + _BLOCK_ROWS]
            logits = self._forward(kernels, _rows(X, block, dtype), "identity")
            right = np.argmax(logits, axis=1) == codes[block]
            if sw is None:
                correct += int(np.count_nonzero(right))
            else:
                correct += float(np.sum(sw[block], where=right, dtype=np.float64))
        if sw is None:
            return correct / len(rows)
        return correct / float(np.sum(sw[rows], dtype=np.float64))

    # --- labels -----------------------------------------------------------------

    def _encode(self, y, first_pass, incremental, classes):
        """Class indices of ``y`` and the ``classes_`` to fit with (not yet stored)."""
        if classes is not None:
            classes = _unique_labels("classes", np.asarray(classes).reshape(-1))
            if classes.shape[0] < 2:
                raise ValueError(f"classes must hold at least 2 classes, got {classes!r}")
        if first_pass:
            fit_classes = classes if classes is not None else _unique_labels("y", y)
            if fit_classes.shape[0] < 2:
                raise ValueError(
                    f"y has one class ({fit_classes[0]!r}); a classifier needs at "
                    "least 2 (pass classes= to partial_fit to declare the others)"
                )
        else:
            fit_classes = self.classes_
            if classes is not None and not np.array_equal(classes, fit_classes):
                raise ValueError(
                    f"classes={classes!r} differs from the classes of the first call, "
                    f"{fit_classes!r}"
                )
            if self.warm_start and not incremental:
                seen = _unique_labels("y", y)
                if not np.array_equal(seen, fit_classes):
                    raise ValueError(
                        "warm_start can only be used where y has the same classes as in "
                        f"the previous call to fit: previously {fit_classes!r}, y has {seen!r}"
                    )
        return _label_codes(y, fit_classes), fit_classes

    # --- fitting ----------------------------------------------------------------

    def fit(self, X, y, sample_weight=None):
        """Fit the model to ``X`` and the class labels ``y``.

        Parameters
        ----------
        X : array_like, shape (n_samples, n_features)
            Training data; an ndarray or ``np.memmap`` is read a batch at a
            time and never copied as a whole.
        y : array_like, shape (n_samples,)
            Class labels of any sortable type.
        sample_weight : float or array_like, shape (n_samples,), optional
            Non-negative weights of the samples (finite, with a positive sum),
            weighted as scikit-learn does: each batch's loss is the weighted
            mean of its samples' cross-entropies and its L2 term is divided by
            the sum of its weights (a batch whose weights are all 0 takes no
            step); the validation score of ``early_stopping`` is the weighted
            accuracy. The fused kernels (CPU and GPU) multiply each row's
            gradient by its weight in their one pass.

        Returns
        -------
        self
        """
        return self._fit(X, y, incremental=False, classes=None, sample_weight=sample_weight)

    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over ``X, y``, continuing from the current weights.

        Parameters
        ----------
        X : array_like, shape (n_samples, n_features)
        y : array_like, shape (n_samples,)
        sample_weight : float or array_like, shape (n_samples,), optional
            As in :meth:`fit` (scikit-learn's order of the arguments).
        classes : array_like, shape (n_classes,), optional
            All the classes; required on the first call (``y`` need not hold
            them all), optional and checked afterwards.

        Returns
        -------
        self
        """
        if self.solver == "lbfgs":
            raise ValueError("partial_fit is not available for solver='lbfgs' (it is not "
                             "stochastic): use fit, or solver='sgd', 'adam' or 'gd'")
        if classes is None and not hasattr(self, "classes_"):
            raise ValueError("classes must be passed on the first call to partial_fit")
        return self._fit(X, y, incremental=True, classes=classes, sample_weight=sample_weight)

    def _fit(self, X, y, incremental, classes, sample_weight=None):
        hidden, dtype, kernels = self._check_params()
        if kernels.name == "cuda":
            kernels.require()
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        names = feature_names(X)
        if not first_pass:
            self._check_feature_names(X)
        X = _feature_matrix(X, dtype)
        n_samples, n_features = X.shape
        y = _check_labels(y, n_samples)
        sw, _, _ = check_sample_weight(sample_weight, n_samples, dtype)
        if not first_pass and n_features != self.n_features_in_:
            raise ValueError(
                f"X has {n_features} features, but MLPClassifier is expecting "
                f"{self.n_features_in_} features as input"
            )
        codes, fit_classes = self._encode(y, first_pass, incremental, classes)
        layer_units = [n_features, *hidden, fit_classes.shape[0]]
        if not first_pass:
            shapes = [c.shape for c in self.coefs_]
            if shapes != list(zip(layer_units[:-1], layer_units[1:])):
                raise ValueError(
                    f"hidden_layer_sizes={hidden} does not match the fitted coefs_ "
                    f"{shapes}; set warm_start=False to start anew"
                )
        _check_finite(X, dtype)

        rng = _check_random_state(self.random_state)
        if first_pass:
            self.classes_ = fit_classes
            self.n_features_in_ = n_features
            self._fit_feature_names(names)
            self._initialize(layer_units, dtype, rng)
        elif self.coefs_[0].dtype != dtype:
            self.coefs_ = [c.astype(dtype) for c in self.coefs_]
            self.intercepts_ = [b.astype(dtype) for b in self.intercepts_]
            if hasattr(self, "_optimizer"):
                del self._optimizer
        # The training step and the optimizers update the parameters in place
        # as C-contiguous arrays (assigned ones may be transposed or read-only).
        self.coefs_ = [np.require(c, dtype, ("C", "W")) for c in self.coefs_]
        self.intercepts_ = [np.require(b, dtype, ("C", "W")) for b in self.intercepts_]
        # Overflow in the optimizer's NumPy steps means divergence, which the loss
        # check reports with its cause; no RuntimeWarning on the way.
        with kernels.session(), np.errstate(over="ignore", invalid="ignore"):
            if self.solver == "lbfgs":
                self._fit_lbfgs(kernels, X, codes, dtype, sw)
            elif kernels.name == "cuda":
                self._fit_cuda(X, codes, dtype, rng, incremental, sw)
            else:
                self._fit_stochastic(kernels, X, codes, dtype, rng, incremental, sw)
        return self

    def _epoch_stops(self, optimizer, progress, early_stopping, incremental):
        """scikit-learn's end-of-epoch stopping rules, shared by the CPU and GPU
        loops: whether to stop after this epoch (warns when ``max_iter`` is reached)."""
        if self._no_improvement_count > self.n_iter_no_change:
            if early_stopping:
                msg = (f"Validation score did not improve more than tol={self.tol:f} "
                       f"for {self.n_iter_no_change} consecutive epochs.")
            else:
                msg = (f"Training loss did not improve more than tol={self.tol:f} "
                       f"for {self.n_iter_no_change} consecutive epochs.")
            if optimizer.trigger_stopping(msg, progress):
                return True
            self._no_improvement_count = 0
        if incremental:
            return True
        if self.n_iter_ == self.max_iter:
            warn(
                f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached "
                "and the optimization hasn't converged yet.",
                _sk(ConvergenceWarning),
            )
        return False

    def _fit_stochastic(self, kernels, X, codes, dtype, rng, incremental, sw=None):
        """scikit-learn's ``_fit_stochastic``: epochs of minibatch steps, stopping rules
        (``sw``: the sample weights, or None)."""
        (optimizer, early_stopping, train_idx, val_idx, n_samples, batch_size,
         shuffle) = self._stochastic_setup(X.shape[0], rng, incremental)
        self._check_weighted_split(sw, early_stopping, train_idx, val_idx)
        params = self.coefs_ + self.intercepts_
        step = kernels.loss_grad(self.coefs_, self.intercepts_, self.activation)
        sample_idx = np.arange(n_samples, dtype=_index_dtype(n_samples))
        progress = _Progress(self.verbose, 1 if incremental else self.max_iter, n_samples)

        try:
            self.n_iter_ = 0
            for _ in range(self.max_iter):
                progress.start_epoch(self.n_iter_ + 1)
                if shuffle:
                    sample_idx = _shuffled(sample_idx, rng)
                accumulated_loss = 0.0
                for start in range(0, n_samples, batch_size):
                    stop = min(start + batch_size, n_samples)
                    if shuffle and (stop - start < n_samples or train_idx is not None):
                        rows = sample_idx[start:stop]
                        if train_idx is not None:
                            rows = train_idx[rows]
                    elif train_idx is not None:
                        rows = train_idx[start:stop]
                    else:
                        # consecutive rows: a view; also a whole shuffled epoch in one
                        # batch, whose gradient does not depend on the order
                        rows = slice(start, stop)
                    loss, grads, total = self._loss_grad(step, X, codes, rows, stop - start,
                                                         dtype, l2_grad=False, sw=sw)
                    if not math.isfinite(loss):
                        self._diverged(loss)
                    accumulated_loss += loss * (stop - start)
                    if grads is not None:  # None: every weight of the batch is 0
                        # the L2 term's gradient, alpha W / n, added in the optimizer's step
                        optimizer.update_params(params, grads, len(self.coefs_),
                                                self.alpha / total)
                    progress.batch(stop)

                self.n_iter_ += 1
                self.loss_ = accumulated_loss / n_samples
                self.t_ += n_samples
                self.loss_curve_.append(self.loss_)
                if not all(all_finite(p) for p in params):
                    self._diverged(float("nan"))

                val_score = None
                if early_stopping:
                    val_score = self._accuracy(kernels, X, codes, val_idx, dtype, sw)
                progress.end_epoch(self.loss_, val_score)
                self._update_no_improvement_count(early_stopping, val_score)
                optimizer.iteration_ends(self.t_)
                if self._epoch_stops(optimizer, progress, early_stopping, incremental):
                    break
        except KeyboardInterrupt:
            warn("Training interrupted by user.")

        if early_stopping:
            self.coefs_ = self._best_coefs
            self.intercepts_ = self._best_intercepts
            # the optimizer's state belongs to the last weights, not the best
            self._best_coefs = [c.copy() for c in self.coefs_]
            self._best_intercepts = [b.copy() for b in self.intercepts_]

    def _fit_lbfgs(self, kernels, X, codes, dtype, sw=None):
        """scikit-learn's ``_fit_lbfgs``: SciPy's L-BFGS-B on the full-batch loss
        (L2 term included), stopped by ``max_iter`` iterations, ``max_fun``
        evaluations or a largest gradient component below ``tol``.

        The optimizer's vector is scikit-learn's packing
        ``[W1, ..., WL, b1, ..., bL]`` in float64 (SciPy's precision); each
        evaluation writes it into the parameters in their dtype and runs the
        fused kernel once over all samples (on the CPU, or on the GPU, where
        ``X`` stays for the whole fit and only the parameters and gradients
        travel). ``loss_curve_`` gets the loss after each iteration.
        """
        import scipy.optimize

        params = self.coefs_ + self.intercepts_
        ends = np.cumsum([p.size for p in params])
        n = X.shape[0]
        if kernels.name == "cuda":
            evaluate = self._cuda_full_batch(X, codes, dtype, sw)
        else:
            step = kernels.loss_grad(self.coefs_, self.intercepts_, self.activation)

            def evaluate():
                return self._loss_grad(step, X, codes, slice(0, n), n, dtype, sw=sw)[:2]

        def write(x):
            for p, part in zip(params, np.split(x, ends[:-1])):
                p[...] = part.reshape(p.shape)  # in the parameters' dtype

        def loss_grad(x):
            write(x)
            loss, grads = evaluate()
            return loss, np.concatenate([np.ravel(g) for g in grads]).astype(np.float64)

        progress = _Progress(self.verbose, self.max_iter, n, unit="iteration")
        iterations = []

        def iteration_ends(intermediate_result):
            iterations.append(float(intermediate_result.fun))
            progress.end_epoch(iterations[-1])
            progress.start_epoch(len(iterations) + 1)

        progress.start_epoch(1)
        result = scipy.optimize.minimize(
            loss_grad, np.concatenate([np.ravel(p) for p in params]).astype(np.float64),
            method="L-BFGS-B", jac=True, callback=iteration_ends,
            options={"maxiter": self.max_iter, "maxfun": self.max_fun, "gtol": self.tol})
        write(result.x)  # the last evaluation may have been a rejected trial point
        self.n_iter_ = min(int(result.nit), self.max_iter)
        self.loss_ = float(result.fun)
        self.loss_curve_.extend(iterations)
        self.best_loss_ = min(self.loss_curve_, default=self.loss_)
        # early_stopping does not apply (as in scikit-learn): no validation split
        self.validation_scores_ = self.best_validation_score_ = None
        self._best_coefs = [c.copy() for c in self.coefs_]
        self._best_intercepts = [b.copy() for b in self.intercepts_]
        if not math.isfinite(self.loss_):
            raise ValueError(f"training diverged: the loss became {self.loss_} "
                             f"(solver='lbfgs'); scale the features")
        if result.status != 0:
            message = result.message
            if isinstance(message, bytes):
                message = message.decode()
            warn(
                f"lbfgs failed to converge after {result.nit} iteration(s) "
                f"(status={result.status}): {message}. Increase the number of iterations "
                f"(max_iter={self.max_iter}) or evaluations (max_fun={self.max_fun}), or "
                "scale the data.",
                _sk(ConvergenceWarning),
            )

    def _cuda_full_batch(self, X, codes, dtype, sw=None):
        """For :meth:`_fit_lbfgs` on the GPU: a function that returns the loss and
        gradients (L2 term included, host arrays in the order of
        ``coefs_ + intercepts_``) of all of ``X`` at the current parameters
        (weighted by ``sw``). ``X``, the labels and the weights are copied to
        the device once."""
        from fusedgrad.kernels.cuda import _runtime as rt
        from fusedgrad.kernels.cuda.network import (
            flat_size,
            loss_grad_device,
            split_flat,
            units_of,
        )

        cuda = rt.cuda
        units = units_of(self.coefs_)
        Xd = _rows_to_device(X, dtype)
        yd = cuda.to_device(codes)
        p = cuda.device_array(flat_size(units), dtype)
        Ws, bs = split_flat(p, units)
        grad = cuda.device_array(flat_size(units), dtype)
        loss = cuda.device_array(1, np.float64)
        work = {}  # the activation buffers, kept across the evaluations
        n = X.shape[0]
        swd = total = None
        if sw is not None:
            swd, total = cuda.to_device(sw), float(np.sum(sw, dtype=np.float64))

        def evaluate():
            p.copy_to_device(_pack(self.coefs_ + self.intercepts_, dtype))
            loss_grad_device(Xd, yd, Ws, bs, self.activation, grad, loss, work=work,
                             sample_weight=swd, total=total)
            grads = _unpack(grad.copy_to_host(), units)  # coefs_ + intercepts_ order
            return self._add_l2(float(loss.copy_to_host()[0]), grads,
                                n if total is None else total)

        return evaluate

    def _fit_cuda(self, X, codes, dtype, rng, incremental, sw=None):
        """The loop of :meth:`_fit_stochastic` on the GPU (``device='cuda'``).

        With sample weights ``sw`` (copied to the device once) each batch's
        weights are gathered beside its rows, and the sum of its weights (for
        the weighted mean and the L2 term) is taken on the host from ``sw``
        and the batch's row indices, which the host holds anyway.

        ``X`` (in the model's dtype), the class indices and the parameters are
        copied to the device once per call, the parameters as one flat vector
        ``[W1 | b1 | W2 | b2 | ...]`` with the optimizer's state beside it.
        Each step gathers its minibatch on the device (from the epoch's row
        order, uploaded once per epoch), runs
        :func:`~fusedgrad.kernels.cuda.network.loss_grad_device` (one fused
        kernel for the lecture's network on thin layers, else one product per
        layer and direction with the activations fused in) and updates the
        parameters in place by one elementwise kernel with the CPU
        optimizers' formulas; the batch losses are summed on the device. Per
        epoch one copy of three numbers comes back (the summed loss, a count
        of non-finite parameters, the validation hits); the parameters and
        the optimizer's state come back once, at the end. A divergence is
        therefore reported at the end of its epoch.
        """
        from fusedgrad.kernels.cuda import _runtime as rt
        from fusedgrad.kernels.cuda import _train
        from fusedgrad.kernels.cuda.network import (
            flat_size,
            loss_grad_device,
            split_flat,
            units_of,
        )

        cuda = rt.cuda
        (optimizer, early_stopping, train_idx, val_idx, n_samples, batch_size,
         shuffle) = self._stochastic_setup(X.shape[0], rng, incremental)
        self._check_weighted_split(sw, early_stopping, train_idx, val_idx)
        units = units_of(self.coefs_)
        D = units[0]
        n_params = flat_size(units)
        biases = _train.bias_ranges(units)
        activation = self.activation
        work = {}  # the activation buffers, kept across the steps

        Xd = _rows_to_device(X, dtype)
        yd = cuda.to_device(codes)
        p = cuda.to_device(_pack(self.coefs_ + self.intercepts_, dtype))
        Ws, bs = split_flat(p, units)
        grad = cuda.device_array(n_params, dtype)
        loss = cuda.device_array(1, np.float64)
        sq_part = cuda.device_array(_train.update_blocks(n_params), np.float64)
        state = _CudaOptimizerState(optimizer, dtype)
        gather = shuffle or train_idx is not None
        weighted = sw is not None
        if weighted:
            swd = cuda.to_device(sw.reshape(-1, 1))  # (n, 1): gathered as a column
        if gather:
            Xb = cuda.device_array((batch_size, D), dtype)
            yb = cuda.device_array(batch_size, codes.dtype)
            if weighted:
                wb = cuda.device_array((batch_size, 1), dtype)
        rows_d = None
        if train_idx is not None and not shuffle:
            rows_d = cuda.to_device(train_idx)
        best = None
        if early_stopping:
            n_val = val_idx.shape[0]
            Xv = cuda.device_array((n_val, D), dtype)
            yv = cuda.device_array(n_val, codes.dtype)
            _train.gather_rows(Xd, yd, cuda.to_device(val_idx), Xv, yv)
            Avs = [cuda.device_array((n_val, h), dtype) for h in units[1:-1]]
            Zv = cuda.device_array((n_val, units[-1]), dtype)
            best = cuda.device_array(n_params, dtype)
            if weighted:
                wv = cuda.device_array((n_val, 1), dtype)
                _train.gather_rows(swd, None, cuda.to_device(val_idx), wv, None)
                wv = wv.reshape(n_val)
                hits_v = cuda.device_array(n_val, np.float64)
                val_weight = float(np.sum(sw[val_idx], dtype=np.float64))

        sample_idx = np.arange(n_samples, dtype=_index_dtype(n_samples))
        progress = _Progress(self.verbose, 1 if incremental else self.max_iter, n_samples)
        rows = train_idx  # the host's copy of rows_d (None: consecutive rows)
        try:
            self.n_iter_ = 0
            for _ in range(self.max_iter):
                progress.start_epoch(self.n_iter_ + 1)
                if shuffle:
                    sample_idx = _shuffled(sample_idx, rng)
                    if batch_size < n_samples or train_idx is not None:
                        rows = sample_idx if train_idx is None else train_idx[sample_idx]
                        rows_d = cuda.to_device(rows)
                    else:
                        rows = rows_d = None  # one batch of the whole epoch: any order
                acc = rt.zeros(3, np.float64)
                for start in range(0, n_samples, batch_size):
                    stop = min(start + batch_size, n_samples)
                    m = stop - start
                    ws = total = None
                    if weighted:
                        batch = slice(start, stop) if rows_d is None else rows[start:stop]
                        total = float(np.sum(sw[batch], dtype=np.float64))
                        if total == 0.0:  # every weight 0: no step (as on the CPU)
                            progress.batch(stop)
                            continue
                    # rt.rows: a device array's rows without numba's slicing
                    # (about 13 us a slice on a 2-core VM, 5 by rt.rows; a full batch takes
                    # the buffers whole)
                    if rows_d is not None:
                        batch_rows = rt.rows(rows_d, start, stop)
                        full = m == batch_size
                        Xs, ys = (Xb, yb) if full else (rt.rows(Xb, 0, m), rt.rows(yb, 0, m))
                        _train.gather_rows(Xd, yd, batch_rows, Xs, ys)
                        if weighted:
                            wm = wb if full else rt.rows(wb, 0, m)
                            _train.gather_rows(swd, None, batch_rows, wm, None)
                            ws = wm.reshape(m)
                    else:
                        Xs, ys = rt.rows(Xd, start, stop), rt.rows(yd, start, stop)
                        if weighted:
                            ws = rt.rows(swd, start, stop).reshape(m)
                    loss_grad_device(Xs, ys, Ws, bs, activation, grad, loss, work=work,
                                     sample_weight=ws, total=total)
                    n_b = m if total is None else total  # L2 over the batch's weight
                    state.update(p, grad, self.alpha / n_b, biases, sq_part)
                    _train.accumulate_loss(acc, loss, sq_part, m, self.alpha * m / n_b)
                    progress.batch(stop)
                _train.count_nonfinite(p, acc, 1)
                if early_stopping:
                    _train.logits(Xv, Ws, bs, activation, Avs, Zv)
                    if weighted:
                        _train.sum_correct_weights(Zv, yv, wv, hits_v, acc, 2)
                    else:
                        _train.count_correct(Zv, yv, acc, 2)
                total, nonfinite, hits = (float(v) for v in acc.copy_to_host())
                if not math.isfinite(total):
                    self._diverged(total)

                self.n_iter_ += 1
                self.loss_ = total / n_samples
                self.t_ += n_samples
                self.loss_curve_.append(self.loss_)
                if nonfinite:
                    self._diverged(float("nan"))

                val_score = None
                if early_stopping:
                    val_score = hits / (val_weight if weighted else val_idx.shape[0])
                progress.end_epoch(self.loss_, val_score)
                self._update_no_improvement_count(
                    early_stopping, val_score,
                    save_best=(lambda: _train.copy(p, best)) if early_stopping else None)
                optimizer.iteration_ends(self.t_)
                if self._epoch_stops(optimizer, progress, early_stopping, incremental):
                    break
        except KeyboardInterrupt:
            warn("Training interrupted by user.")
        finally:
            # the parameters and the optimizer's state back to the host, once
            params = _unpack(p.copy_to_host(), units)
            L = len(units) - 1
            self.coefs_, self.intercepts_ = params[:L], params[L:]
            state.download()

        if early_stopping:
            params = _unpack(best.copy_to_host(), units)
            self.coefs_, self.intercepts_ = params[:L], params[L:]
            # the optimizer's state belongs to the last weights, not the best
            self._best_coefs = [c.copy() for c in self.coefs_]
            self._best_intercepts = [b.copy() for b in self.intercepts_]

    @staticmethod
    def _check_weighted_split(sw, early_stopping, train_idx, val_idx):
        """Refuse an ``early_stopping`` split with all weights 0 on either side."""
        if early_stopping and sw is not None:
            for part, idx, why in (("validation", val_idx, "its weighted accuracy is undefined"),
                                   ("training", train_idx, "no batch would take a step")):
                if not np.any(sw[idx]):
                    raise ValueError(f"sample_weight is 0 for every sample of the {part} "
                                     f"split of early_stopping: {why}")

    def _stochastic_setup(self, n_samples, rng, incremental):
        """The optimizer (kept for ``partial_fit``), the validation split drawn
        from ``rng`` and the batch size: what both devices' loops start from."""
        params = self.coefs_ + self.intercepts_
        if not incremental or not hasattr(self, "_optimizer"):
            if self.solver == "adam":
                self._optimizer = _AdamOptimizer(params, self.learning_rate_init, self.beta_1,
                                                 self.beta_2, self.epsilon)
            else:
                momentum = 0.0 if self.solver == "gd" else self.momentum
                self._optimizer = _SGDOptimizer(params, self.learning_rate_init,
                                                self.learning_rate, momentum,
                                                self.nesterovs_momentum, self.power_t)
        optimizer = self._optimizer

        early_stopping = self.early_stopping and not incremental
        train_idx = val_idx = None
        if early_stopping:
            n_val = math.ceil(self.validation_fraction * n_samples)
            if n_samples - n_val < 1:
                raise ValueError(
                    f"validation_fraction={self.validation_fraction} leaves no training "
                    f"samples out of {n_samples}"
                )
            if n_val < 2:
                raise ValueError(
                    f"The validation set is too small ({n_val} of {n_samples} samples): "
                    "increase validation_fraction or the number of samples"
                )
            permutation = np.arange(n_samples, dtype=_index_dtype(n_samples))
            rng.shuffle(permutation)  # rng.permutation(n_samples), in fewer bytes
            val_idx, train_idx = permutation[:n_val], permutation[n_val:]
            n_samples = train_idx.shape[0]
            if self.validation_scores_ is None:  # warm start after a fit without it
                self.validation_scores_ = []
                self.best_validation_score_ = -np.inf
        elif self.best_loss_ is None:
            self.best_loss_ = np.inf  # partial_fit after an early-stopping fit

        if self.solver == "gd":
            batch_size = n_samples
        elif self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            batch_size = min(self.batch_size, n_samples)
        shuffle = self.shuffle and self.solver != "gd"
        return optimizer, early_stopping, train_idx, val_idx, n_samples, batch_size, shuffle

    def _update_no_improvement_count(self, early_stopping, val_score, save_best=None):
        """scikit-learn's stopping counters; ``save_best()`` keeps the weights of a
        new best validation score (default: copies of ``coefs_``, ``intercepts_``)."""
        if early_stopping:
            self.validation_scores_.append(val_score)
            if val_score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if val_score > self.best_validation_score_:
                self.best_validation_score_ = val_score
                if save_best is not None:
                    save_best()
                else:
                    self._best_coefs = [c.copy() for c in self.coefs_]
                    self._best_intercepts = [b.copy() for b in self.intercepts_]
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    def _diverged(self, loss):
        raise ValueError(
            f"training diverged: the loss became {loss} at epoch {self.n_iter_ + 1}; "
            f"the step size is too large for this data, lower learning_rate_init "
            f"(now {self.learning_rate_init!r}) or scale the features"
        )

    # --- prediction ---------------------------------------------------------------

    def _prediction_input(self, X):
        """``X`` checked against the fitted model (fitted, see :meth:`_predict_any`);
        the fitted dtype and the kernels."""
        kernels = _device_kernels(self.device)
        if kernels.name == "cuda":
            kernels.require()
        dtype = self.coefs_[0].dtype
        X = _feature_matrix(X, dtype)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, but MLPClassifier is expecting "
                f"{self.n_features_in_} features as input"
            )
        _check_finite(X, dtype)
        return X, dtype, kernels

    def _cuda_predict(self, X, dtype, what):
        """``what`` of the rows of ``X`` on the GPU: 'proba', 'logits' or 'codes'
        (class indices), a block of :data:`_CUDA_BLOCK_ROWS` rows at a time;
        the weights are copied to the device once, the results back per block."""
        from fusedgrad.kernels.cuda import _runtime as rt
        from fusedgrad.kernels.cuda import _train

        cuda = rt.cuda
        N = X.shape[0]
        Ws, bs = ([cuda.to_device(np.ascontiguousarray(a, dtype=dtype)) for a in arrays]
                  for arrays in (self.coefs_, self.intercepts_))
        K = Ws[-1].shape[1]
        rows = min(N, _CUDA_BLOCK_ROWS)
        As = [cuda.device_array((rows, W.shape[1]), dtype) for W in Ws[:-1]]
        Z = cuda.device_array((rows, K), dtype)
        if what == "codes":
            out = np.empty(N, np.intp)
            codes = cuda.device_array(rows, np.intp)
        else:
            out = np.empty((N, K), dtype)
        for s in range(0, N, _CUDA_BLOCK_ROWS):
            e = min(N, s + _CUDA_BLOCK_ROWS)
            m = e - s
            Xd = _rows_to_device(X[s:e], dtype)
            _train.logits(Xd, Ws, bs, self.activation, [A[:m] for A in As], Z[:m])
            if what == "codes":
                _train.argmax_rows(Z[:m], codes[:m])
                out[s:e] = codes[:m].copy_to_host()
            else:
                if what == "proba":
                    _train.softmax_rows(Z[:m])
                out[s:e] = Z[:m].copy_to_host()
        return out

    def _blocks(self, n):
        return [slice(s, min(s + _BLOCK_ROWS, n)) for s in range(0, n, _BLOCK_ROWS)]

    def predict_proba(self, X):
        """Class probabilities, the softmax of the output layer.

        Parameters
        ----------
        X : array_like, shape (n_samples, n_features)

        Returns
        -------
        ndarray, shape (n_samples, n_classes)
            Columns in the order of ``classes_``, in the model's dtype. For a dask array ``X``, a dask array (lazy,
            computed block by block).
        """
        return self._predict_any(X, self._predict_proba)

    def _predict_proba(self, X):
        X, dtype, kernels = self._prediction_input(X)
        if kernels.name == "cuda":
            return self._cuda_predict(X, dtype, "proba")
        out = np.empty((X.shape[0], self.n_outputs_), dtype)
        with kernels.session():
            for block in self._blocks(X.shape[0]):
                self._forward(kernels, _rows(X, block, dtype), "softmax", out=out[block])
        return out

    def predict_log_proba(self, X):
        """Logarithm of the class probabilities, as a log-softmax of the logits.

        Parameters
        ----------
        X : array_like, shape (n_samples, n_features)

        Returns
        -------
        ndarray, shape (n_samples, n_classes)
            ``log(predict_proba(X))``, but finite where the probability
            underflows to 0. For a dask array ``X``, a dask array (lazy,
            computed block by block).
        """
        return self._predict_any(X, self._predict_log_proba)

    def _predict_log_proba(self, X):
        X, dtype, kernels = self._prediction_input(X)
        out = np.empty((X.shape[0], self.n_outputs_), dtype)
        with kernels.session():
            for block in self._blocks(X.shape[0]):
                if kernels.name == "cuda":  # logits on the GPU, log-softmax here
                    Z = self._cuda_predict(X[block], dtype, "logits")
                else:
                    Z = self._forward(kernels, _rows(X, block, dtype), "identity")
                Z -= Z.max(axis=1, keepdims=True)
                Z -= np.log(np.exp(Z).sum(axis=1, keepdims=True))
                out[block] = Z
        return out

    def predict(self, X):
        """Predicted class labels: the class of largest probability.

        Parameters
        ----------
        X : array_like, shape (n_samples, n_features)

        Returns
        -------
        ndarray, shape (n_samples,)
            Labels from ``classes_``. For a dask array ``X``, a dask array (lazy,
            computed block by block).
        """
        return self._predict_any(X, self._predict)

    def _predict(self, X):
        X, dtype, kernels = self._prediction_input(X)
        if kernels.name == "cuda":
            return self.classes_[self._cuda_predict(X, dtype, "codes")]
        codes = np.empty(X.shape[0], np.intp)
        with kernels.session():
            for block in self._blocks(X.shape[0]):
                logits = self._forward(kernels, _rows(X, block, dtype), "identity")
                codes[block] = np.argmax(logits, axis=1)
        return self.classes_[codes]

    # --- persistence ---------------------------------------------------------------

    def save(self, path):
        """Write the fitted model to ``path`` (read it with :func:`fusedgrad.models.load`).

        Parameters
        ----------
        path : str or os.PathLike
            The file to write: one uncompressed ``.npz`` archive of the
            weights with the parameters and fitted state as JSON.
        """
        self._check_is_fitted()
        _persist.save(self, path)

    def _persist_state(self):
        params = self.get_params(deep=False)
        params["hidden_layer_sizes"] = list(self._hidden_sizes())
        if isinstance(self.random_state, np.random.RandomState):
            params["random_state"] = None  # a generator's state is not a parameter to keep
        params["dtype"] = _check_dtype(self.dtype).name

        def number(value):
            return float(value) if value is not None and math.isfinite(value) else None

        state = {
            "n_features_in_": int(self.n_features_in_),
            "n_layers_": int(self.n_layers_),
            "n_outputs_": int(self.n_outputs_),
            "out_activation_": self.out_activation_,
            "n_iter_": int(self.n_iter_),
            "t_": int(self.t_),
            "loss_": number(getattr(self, "loss_", None)),
            "loss_curve_": [float(v) for v in self.loss_curve_],
            "best_loss_": number(self.best_loss_),
            "validation_scores_": None if self.validation_scores_ is None
            else [float(v) for v in self.validation_scores_],
            "best_validation_score_": number(self.best_validation_score_),
            "no_improvement_count": int(self._no_improvement_count),
        }
        self._persist_feature_names(state)
        arrays = {}
        classes = self.classes_
        if classes.dtype.kind in "biuf":
            arrays["classes_"] = classes
        elif all(isinstance(c, str) for c in classes.tolist()):
            state["classes_"] = [str(c) for c in classes.tolist()]
        else:
            raise TypeError(
                f"classes_ of dtype {classes.dtype} cannot be saved: only numbers and "
                "strings can (pickle the model instead)"
            )
        for i, (W, b) in enumerate(zip(self.coefs_, self.intercepts_)):
            arrays[f"coefs_{i}"] = W
            arrays[f"intercepts_{i}"] = b
        return params, state, arrays

    @classmethod
    def _from_persist_state(cls, params, state, arrays):
        params = dict(params)
        if isinstance(params.get("hidden_layer_sizes"), list):
            params["hidden_layer_sizes"] = tuple(params["hidden_layer_sizes"])
        model = cls(**params)
        hidden, dtype, _ = model._check_params()

        def integer(name, low):
            value = state.get(name)
            if not _is_int(value) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
            return value

        def number(name, value, allow_none=True):
            if value is None and allow_none:
                return None
            if not _is_real(value):
                raise ValueError(f"{name} must be a number, got {value!r}")
            return float(value)

        def numbers_list(name, allow_none):
            value = state.get(name)
            if value is None and allow_none:
                return None
            if not isinstance(value, list):
                raise ValueError(f"{name} must be a list of numbers, got {value!r}")
            return [number(name, v, allow_none=False) for v in value]

        d = integer("n_features_in_", 1)
        n_classes = integer("n_outputs_", 2)
        units = [d, *hidden, n_classes]
        if integer("n_layers_", 2) != len(units):
            raise ValueError(
                f"n_layers_ is {state['n_layers_']} but hidden_layer_sizes={hidden} "
                f"makes {len(units)} layers"
            )
        if state.get("out_activation_") != "softmax":
            raise ValueError(
                f"out_activation_ must be 'softmax', got {state.get('out_activation_')!r}")

        if "classes_" in arrays:
            classes = _persist.expect_array(arrays, "classes_", (n_classes,),
                                            arrays["classes_"].dtype)
            if classes.dtype.kind not in "biuf":
                raise ValueError(f"the array 'classes_' has dtype {classes.dtype}")
        else:
            labels = state.get("classes_")
            if not isinstance(labels, list) or not all(isinstance(c, str) for c in labels):
                raise ValueError("classes_ is missing (neither an array nor a list of strings)")
            classes = np.array(labels, dtype=str)
            if classes.shape != (n_classes,):
                raise ValueError(f"classes_ has {len(labels)} labels, expected {n_classes}")
        if not np.array_equal(np.unique(classes), classes):
            raise ValueError(f"classes_ must be sorted and distinct, got {classes!r}")

        coefs, intercepts = [], []
        for i, (fan_in, fan_out) in enumerate(zip(units[:-1], units[1:])):
            coefs.append(np.array(_persist.expect_array(arrays, f"coefs_{i}",
                                                        (fan_in, fan_out), dtype)))
            intercepts.append(np.array(_persist.expect_array(arrays, f"intercepts_{i}",
                                                             (fan_out,), dtype)))
        expected = {f"{kind}_{i}" for kind in ("coefs", "intercepts") for i in range(len(coefs))}
        extra = set(arrays) - expected - {"classes_"}
        if extra:
            raise ValueError(f"unexpected arrays {sorted(extra)}")
        if not all(np.all(np.isfinite(p)) for p in coefs + intercepts):
            raise ValueError("coefs_ or intercepts_ hold NaN or infinity")

        model.classes_ = classes
        model.n_features_in_ = d
        model._restore_feature_names(state)
        model.n_layers_ = len(units)
        model.n_outputs_ = n_classes
        model.out_activation_ = "softmax"
        model.coefs_, model.intercepts_ = coefs, intercepts
        model._best_coefs = [c.copy() for c in coefs]
        model._best_intercepts = [b.copy() for b in intercepts]
        model.n_iter_ = integer("n_iter_", 0)
        model.t_ = integer("t_", 0)
        model._no_improvement_count = integer("no_improvement_count", 0)
        loss = number("loss_", state.get("loss_"))
        if loss is not None:
            model.loss_ = loss
        model.loss_curve_ = numbers_list("loss_curve_", allow_none=False)
        model.validation_scores_ = numbers_list("validation_scores_", allow_none=True)
        best_loss = number("best_loss_", state.get("best_loss_"))
        best_score = number("best_validation_score_", state.get("best_validation_score_"))
        if model.validation_scores_ is None:
            model.best_loss_ = np.inf if best_loss is None else best_loss
            model.best_validation_score_ = None
        else:
            model.best_loss_ = best_loss
            model.best_validation_score_ = -np.inf if best_score is None else best_score
        return model
