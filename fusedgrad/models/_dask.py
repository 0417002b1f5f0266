"""Dask arrays in the models: least squares in one pass per solver, predictions per block.

What the ``'normal'`` and ``'qr'`` solvers of :class:`~fusedgrad.models.LinearRegression`
need of the data are sums over its rows, and both merge exactly across blocks
of rows:

* the column means and centred Gram matrix of ``[X, y]``
  (:func:`~fusedgrad.kernels.ols.centered_gram`), by the pairwise update of
  Chan, Golub and LeVeque;
* the R factor of a tall-skinny QR of ``[1, X - shift, y - shift]``
  (:func:`~fusedgrad.kernels.qr.tsqr`), by one more QR of the stacked factors.

So a dask array is fitted without ever being held in memory whole. Each block
is converted and checked where it is computed (by the model's own
:func:`~fusedgrad.models._base.check_array`), reduced there by the fused kernel
to a summary of ``(n_features + 2)**2`` numbers, and only the summaries are
merged, by a tree of fixed shape over the blocks in their order: the result
does not depend on the scheduler, its workers or the order in which blocks
finish. The graph runs on whatever scheduler the caller has configured.

``solver='gd'`` would read the data once per iteration and is refused; so is
``device='cuda'``. Predictions (:func:`map_rows`) are the models' own methods
mapped over the row blocks, lazily.
"""

import sys

import numpy as np
import scipy.linalg

from fusedgrad import _validate
from fusedgrad._warn import warn
from fusedgrad.kernels._blas import single_threaded_blas
from fusedgrad.kernels.ols import _merge_moments, centered_gram
from fusedgrad.kernels.qr import tsqr
from fusedgrad.models._base import (
    DataConversionWarning,
    _is_real,
    _sk,
    check_array,
    check_sample_weight,
    check_target,
)

__all__ = ["is_dask_collection", "prepare", "Passes", "map_rows"]

#: Summaries merged per node of the reduction tree.
SPLIT_EVERY = 8


def is_dask_collection(value):
    """Whether ``value`` is a dask collection (False when dask was never imported:
    a dask array cannot exist then, and this module never imports dask itself
    for a NumPy input)."""
    dask = sys.modules.get("dask")
    return dask is not None and bool(dask.is_dask_collection(value))


def _as_dask_array(name, value, da):
    if isinstance(value, da.Array):
        return value
    if is_dask_collection(value):
        hint = (f" ({name}.to_dask_array(lengths=True) converts it)"
                if hasattr(value, "to_dask_array") else "")
        raise TypeError(f"{name} is a {type(value).__name__}; pass a dask array{hint}")
    return da.asarray(value)


def _known(name, a, axis):
    size = a.shape[axis]
    if size != size:  # NaN: unknown chunk sizes
        raise ValueError(
            f"{name} has unknown chunk sizes along axis {axis} (e.g. after boolean "
            f"indexing): call {name}.compute_chunk_sizes() first"
        )
    return int(size)


def prepare(X, y, sample_weight=None):
    """Check the shapes of dask ``X`` (2-D), ``y`` (1-D, or a column) and
    ``sample_weight`` (None, a number or 1-D) and align them.

    Returns ``(X, y, sample_weight)`` as dask arrays with all columns of ``X``
    in one chunk and ``y`` and ``sample_weight`` chunked as ``X``'s rows
    (``sample_weight`` None when not given, or a number: equal weights are
    the unweighted fit). Values are checked later, block by block, where
    they are computed.
    """
    import dask.array as da

    if y is None:
        raise ValueError("y is None: this estimator requires y to be passed, but the target y "
                         "is None")
    X = _as_dask_array("X", X, da)
    y = _as_dask_array("y", y, da)
    for name, a in (("X", X), ("y", y)):
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features), got {X.ndim}-D array of "
                         f"shape {X.shape}")
    if y.ndim == 2 and y.shape[1] == 1:
        warn(
            "A column-vector y was passed when a 1d array was expected. Please change the "
            "shape of y to (n_samples,), for example using ravel().",
            _sk(DataConversionWarning),
        )
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D of length n_samples, got shape {y.shape} "
                         "(multi-output targets are not supported)")
    n, d = _known("X", X, 0), _known("X", X, 1)
    if _known("y", y, 0) != n:
        raise ValueError(f"y has {y.shape[0]} values but X has {n} samples")
    if n == 0:
        raise ValueError(f"X is empty: found array with 0 sample(s) (shape={X.shape}) while a "
                         "minimum of 1 is required.")
    if d == 0:
        raise ValueError(f"X has no features: found array with 0 feature(s) (shape={X.shape}) "
                         "while a minimum of 1 is required.")
    X = X.rechunk({1: -1})
    y = y.rechunk((X.chunks[0],))
    if sample_weight is None:
        return X, y, None
    if _is_real(sample_weight) or np.ndim(sample_weight) == 0 and not is_dask_collection(
            sample_weight):
        check_sample_weight(sample_weight, 1, np.float64)  # finite, >= 0, nonzero
        return X, y, None
    sw = _as_dask_array("sample_weight", sample_weight, da)
    if sw.dtype.kind not in "biuf":
        raise TypeError(f"sample_weight must hold real numbers, got dtype {sw.dtype}")
    if sw.ndim != 1:
        raise ValueError(f"sample_weight must be 1-D, got {sw.ndim}-D array of shape "
                         f"{sw.shape}")
    if _known("sample_weight", sw, 0) != n:
        raise ValueError(f"sample_weight has {sw.shape[0]} values but X has {n} samples")
    return X, y, sw.rechunk((X.chunks[0],))


def _blocks(X, y, sw):
    """The delayed ``(X block, y block, weights block or None)`` triples, in row
    order (empty blocks left out)."""
    xs = X.to_delayed().ravel()
    ys = y.to_delayed().ravel()
    ws = [None] * len(xs) if sw is None else sw.to_delayed().ravel()
    return [(xb, yb, wb) for xb, yb, wb, rows in zip(xs, ys, ws, X.chunks[0]) if rows]


def _checked(Xb, yb, wb, dtype):
    """A block checked and converted: ``(X, y, weights or None, sum of the weights)``."""
    X = check_array("X", Xb, dtype=dtype)
    y = check_target(yb, X.shape[0], X.dtype)
    w, total, _ = check_sample_weight(wb, X.shape[0], X.dtype, positive_sum=False)
    return X, y, w, total


def _block_weights(wb, dtype):
    _, total, nonzero = check_sample_weight(wb, np.shape(wb)[0], dtype, positive_sum=False)
    return total, nonzero


def _merge_weights(parts):
    return (float(sum(t for t, _ in parts)), sum(n for _, n in parts))


def _block_moments(Xb, yb, wb, dtype):
    X, y, w, total = _checked(Xb, yb, wb, dtype)
    if total == 0:  # every weight 0: the block adds nothing
        p = X.shape[1] + 1
        return 0.0, np.zeros(p), np.zeros((p, p))
    mean, scatter = centered_gram(X, y, sample_weight=w, check_finite=False)
    return total, mean, scatter


def _merge_block_moments(parts):
    counts = np.array([n for n, _, _ in parts])
    mean, scatter = _merge_moments(counts, np.stack([m for _, m, _ in parts]),
                                   np.stack([s for _, _, s in parts]))
    return float(counts.sum()), mean, scatter


def _block_r(Xb, yb, wb, dtype, shift, intercept):
    X, y, w, total = _checked(Xb, yb, wb, dtype)
    if total == 0:  # every weight 0: zero rows, nothing to factor
        P = X.shape[1] + 1 + int(intercept)
        return np.zeros((P, P))
    return tsqr(X, y, shift, intercept=intercept, sample_weight=w, check_finite=False)


def _merge_r(parts):
    P = parts[0].shape[1]
    R = scipy.linalg.qr(np.concatenate(parts), mode="r", check_finite=False)[0]
    return np.triu(R[:P])


def _tree(parts, merge):
    """Merge delayed summaries by a tree of fixed shape: groups of :data:`SPLIT_EVERY`
    consecutive parts, level by level."""
    from dask import delayed

    while len(parts) > 1:
        parts = [delayed(merge)(parts[i:i + SPLIT_EVERY])
                 for i in range(0, len(parts), SPLIT_EVERY)]
    return parts[0]


class Passes:
    """The passes of the exact solvers over the prepared dask ``X`` and ``y`` (see
    :func:`prepare`), each block converted to ``dtype`` and checked where it is
    computed; the same methods as :class:`fusedgrad.models.linear._Passes`."""

    def __init__(self, X, y, dtype, intercept, sample_weight=None):
        self.X, self.y, self.dtype, self.intercept = X, y, dtype, intercept
        self.sw = sample_weight

    def weight_stats(self):
        """``(sum of the weights, number of nonzero weights)``, the weights checked
        block by block (one pass over them alone); ``(n, n)`` without weights."""
        import dask
        from dask import delayed

        n = self.X.shape[0]
        if self.sw is None:
            return float(n), n
        parts = [delayed(_block_weights)(wb, self.dtype) for wb in self.sw.to_delayed().ravel()]
        (total, nonzero), = dask.compute(_tree(parts, _merge_weights))
        _validate.require_positive_sum("sample_weight", total)
        return total, nonzero

    def _reduce(self, block, merge, *args):
        """``block(X block, y block, weights block, dtype, *args)`` on every block, merged by
        :func:`_tree`; the graph runs under one BLAS limit (the local schedulers run
        blocks in threads of this process: a limit entered and left by each block
        would switch OpenBLAS's thread count between concurrent blocks)."""
        import dask
        from dask import delayed

        parts = [delayed(block)(xb, yb, wb, self.dtype, *args)
                 for xb, yb, wb in _blocks(self.X, self.y, self.sw)]
        with single_threaded_blas():
            result, = dask.compute(_tree(parts, merge))
        return result

    def moments(self):
        """``(mean, scatter)`` of :func:`~fusedgrad.kernels.ols.centered_gram` over all
        blocks (symmetric: every block's scatter is, and so is every merge)."""
        _, mean, scatter = self._reduce(_block_moments, _merge_block_moments)
        return mean, scatter

    def head_mean(self, rows):
        """The float64 column means of ``[X, y]`` over the first ``rows`` rows (checked;
        weighted unless their weights are all 0)."""
        import dask

        from fusedgrad.models.linear import _head_mean

        n = min(rows, self.X.shape[0])
        Xh, yh, wh = dask.compute(self.X[:n], self.y[:n],
                                  None if self.sw is None else self.sw[:n])
        Xh, yh, wh, _ = _checked(Xh, yh, wh, self.dtype)
        return _head_mean(Xh, yh, wh)

    def r_factor(self, shift):
        """:func:`~fusedgrad.kernels.qr.tsqr`'s R factor over all blocks: each block's
        factor, then a QR of the stacked factors."""
        return self._reduce(_block_r, _merge_r, np.asarray(shift, dtype=np.float64),
                            self.intercept)


def map_rows(X, n_features, owner, predict_block):
    """``predict_block`` mapped over the row blocks of dask ``X`` (lazy): a dask
    array of its results, 1-D or 2-D as ``predict_block`` returns them, in its dtype.
    ``n_features`` is the fitted model's, ``owner`` its name (for the message)."""
    import dask.array as da

    X = _as_dask_array("X", X, da)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features), got {X.ndim}-D array of "
                         f"shape {X.shape}")
    if _known("X", X, 1) != n_features:
        raise ValueError(f"X has {X.shape[1]} features, but {owner} is expecting "
                         f"{n_features} features as input")
    if X.dtype.kind not in "biuf":
        raise TypeError(f"X must hold real numbers, got dtype {X.dtype}")
    X = X.rechunk({1: -1})
    sample = predict_block(np.zeros((1, n_features), X.dtype))
    if sample.ndim == 1:
        return X.map_blocks(predict_block, drop_axis=1, dtype=sample.dtype,
                            meta=np.empty((0,), sample.dtype))
    return X.map_blocks(predict_block, chunks=(X.chunks[0], (sample.shape[1],)),
                        dtype=sample.dtype, meta=np.empty((0, 0), sample.dtype))
