"""LinearRegression on dask arrays (fusedgrad.models._dask).

References: ``numpy.linalg.lstsq`` in float64 on the same data held in memory,
and the in-memory fit of the same model (the solvers are the same; only the
summation into blocks differs). Structural checks: the array is never
converted whole, each block is read once per pass, and the result does not
depend on the scheduler.
"""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

from fusedgrad.kernels import _blas  # noqa: E402
from fusedgrad.models import IllConditionedWarning, LinearRegression, RankDeficientWarning  # noqa: E402
from fusedgrad.models import _dask  # noqa: E402

from test_models_linear import lstsq_fit, make_data, poly_data  # noqa: E402

DTYPES = [np.float32, np.float64]
# coefficient tolerance against float64 lstsq, relative to the largest coefficient
TOL = {np.float32: 2e-4, np.float64: 1e-10}

# one block; many uneven blocks (the last of 7 rows) with the columns split too;
# blocks of a single row (fewer rows than columns in every block)
CHUNKS = {"one": (-1, -1), "uneven": (997, 3), "rows-of-one": (1, 2)}


def as_dask(X, y, chunks):
    rows, cols = CHUNKS[chunks]
    return da.from_array(X, chunks=(rows, cols)), da.from_array(y, chunks=rows if rows > 1 else 3)


def quiet(model, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return model.fit(X, y)


@pytest.fixture(autouse=True)
def never_whole(monkeypatch):
    """Fail any conversion of a whole dask array to NumPy (np.asarray, np.array):
    the fit must reduce block by block. Blocks reach the reductions as NumPy arrays."""

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"a dask array of shape {self.shape} was converted whole")

    monkeypatch.setattr(da.Array, "__array__", refuse)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("solver", ["auto", "normal", "qr"])
def test_matches_lstsq_and_in_memory_fit(solver, fit_intercept, dtype):
    X, y = make_data(10007, 7, dtype, seed=1)
    coef, b = lstsq_fit(X, y, fit_intercept)
    memory = quiet(LinearRegression(solver=solver, fit_intercept=fit_intercept), X, y)
    for chunks in ("one", "uneven"):
        m = quiet(LinearRegression(solver=solver, fit_intercept=fit_intercept),
                  *as_dask(X, y, chunks))
        assert m.coef_.dtype == dtype and type(m.intercept_) is dtype
        assert m.solver_ == memory.solver_ and m.n_iter_ == memory.n_iter_
        assert m.rank_ == 7 and m.n_features_in_ == 7
        scale = np.abs(coef).max()
        assert_allclose(m.coef_, coef, rtol=0, atol=TOL[dtype] * scale)
        assert_allclose(m.intercept_, b, rtol=0, atol=TOL[dtype] * (abs(b) + scale))
        # the same solver on the same numbers: as close as the float summation allows
        assert_allclose(m.coef_, memory.coef_, rtol=0, atol=TOL[dtype] * scale)


@settings(max_examples=30, deadline=None)
@given(N=st.integers(1, 200), d=st.integers(1, 6), cuts=st.lists(st.integers(1, 199), max_size=6),
       solver=st.sampled_from(["normal", "qr"]), fit_intercept=st.booleans(),
       seed=st.integers(0, 2**16))
def test_any_row_blocks_give_the_in_memory_fit(N, d, cuts, solver, fit_intercept, seed):
    # blocks of any sizes, empty ones included, and fewer rows than columns
    X, y = make_data(N, d, seed=seed)
    bounds = sorted({0, N} | {c for c in cuts if c < N})
    chunks = tuple(b - a for a, b in zip(bounds, bounds[1:])) + ((0,) if cuts[:1] == [1] else ())
    Xd = da.from_array(X, chunks=(chunks, d))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rank deficiency at tiny N warns in both fits
        memory = LinearRegression(solver=solver, fit_intercept=fit_intercept).fit(X, y)
        m = LinearRegression(solver=solver, fit_intercept=fit_intercept).fit(Xd, y)
    assert m.rank_ == memory.rank_ and m.solver_ == memory.solver_
    # predictions are unique even where the coefficients are not (rank deficiency)
    scale = np.abs(y).max() + 1.0
    assert_allclose(m.predict(X), memory.predict(X), rtol=0, atol=1e-8 * scale)


@pytest.mark.parametrize("solver", ["normal", "qr"])
def test_blocks_of_one_row(solver):
    # every block has fewer rows than columns (its own factor is rank 1)
    X, y = make_data(61, 5, seed=2)
    m = quiet(LinearRegression(solver=solver), *as_dask(X, y, "rows-of-one"))
    coef, b = lstsq_fit(X, y)
    assert_allclose(m.coef_, coef, rtol=1e-10)
    assert m.intercept_ == pytest.approx(b, rel=1e-10)


def test_auto_falls_back_to_qr_on_ill_conditioned_blocks():
    X, y = poly_data()
    Xd, yd = da.from_array(X, chunks=(333, -1)), da.from_array(y, chunks=333)
    m = quiet(LinearRegression(), Xd, yd)
    assert m.solver_ == "qr" and m.n_iter_ == 2 and m.cond_ > 1e8
    A = np.column_stack([np.ones(len(y)), X])
    w = np.linalg.lstsq(A, y, rcond=None)[0]
    pred = m.predict(Xd).compute()
    assert_allclose(pred, A @ w, rtol=0, atol=1e-8)
    with pytest.warns(IllConditionedWarning):
        assert LinearRegression(solver="normal").fit(Xd, yd).solver_ == "normal"


def test_qr_without_normal_pass_shifts_by_head_mean():
    # solver='qr' alone: the shift comes from the first rows; any shift is exact
    X, y = make_data(3000, 4, seed=3, offset=1e4)
    m = quiet(LinearRegression(solver="qr"), da.from_array(X, chunks=(256, 4)),
              da.from_array(y, chunks=256))
    coef, b = lstsq_fit(X, y)
    assert m.n_iter_ == 1
    assert_allclose(m.coef_, coef, rtol=1e-9)
    assert m.intercept_ == pytest.approx(b, rel=1e-9)


@pytest.mark.parametrize("solver", ["auto", "qr"])
def test_rank_deficient_gives_min_norm_with_warning(solver):
    X, y = make_data(300, 4, seed=9)
    X = np.column_stack([X, X[:, 1] - 2.0 * X[:, 2], X[:, 0]])  # rank 4 of 6
    with pytest.warns(RankDeficientWarning, match="rank 4 of 6"):
        m = LinearRegression(solver=solver).fit(da.from_array(X, chunks=(64, 6)), y)
    coef, b = lstsq_fit(X, y)
    assert m.rank_ == 4
    assert_allclose(X @ m.coef_ + m.intercept_, X @ coef + b, rtol=1e-10, atol=1e-10)


def test_each_block_is_read_once_per_pass():
    X, y = make_data(4000, 3, seed=4)
    reads = []

    def block(i):
        reads.append(i)
        return X[1000 * i:1000 * (i + 1)]

    parts = [da.from_delayed(dask.delayed(block)(i), (1000, 3), X.dtype) for i in range(4)]
    Xd = da.concatenate(parts)
    m = quiet(LinearRegression(solver="normal"), Xd, da.from_array(y, chunks=1000))
    assert sorted(reads) == [0, 1, 2, 3]
    reads.clear()
    quiet(LinearRegression(solver="qr"), Xd, da.from_array(y, chunks=1000))
    # the pass, and the blocks of the first 1024 rows for the shift (as in memory)
    assert sorted(reads) == [0, 0, 1, 1, 2, 3]
    coef, b = lstsq_fit(X, y)
    assert_allclose(m.coef_, coef, rtol=1e-10)


def test_same_bits_on_every_scheduler():
    # float64 results, where another merge order would show in the last bits
    X, y = make_data(20000, 6, seed=5)
    Xd, yd = da.from_array(X, chunks=(700, 6)), da.from_array(y, chunks=700)
    for solver in ("normal", "qr"):
        fits = set()
        for scheduler in ("sync", "threads", "threads"):
            with dask.config.set(scheduler=scheduler):
                m = quiet(LinearRegression(solver=solver), Xd, yd)
            fits.add((m.coef_.tobytes(), m.intercept_.tobytes()))
        assert len(fits) == 1, solver


def test_blocks_run_under_one_blas_limit(monkeypatch):
    # the kernels' BLAS limit is held around the whole graph, not entered and left per
    # block: switching OpenBLAS's thread count between concurrent blocks slowed LAPACK
    # 10-20x (benchmarks/NOTES.md)
    depths = []
    for name in ("centered_gram", "tsqr"):
        real = getattr(_dask, name)

        def spy(*args, _real=real, **kwargs):
            depths.append(_blas._depth)
            return _real(*args, **kwargs)

        monkeypatch.setattr(_dask, name, spy)
    X, y = make_data(4000, 3, seed=11)
    with dask.config.set(scheduler="threads"):
        for solver in ("normal", "qr"):
            LinearRegression(solver=solver).fit(da.from_array(X, chunks=(500, 3)), y)
    assert len(depths) == 16 and min(depths) >= 1
    assert _blas._depth == 0


def test_dtype_and_conversions():
    X, y = make_data(2000, 3, seed=6)
    Xd = da.from_array(X, chunks=(500, 3))
    # dtype='float32' converts each block; y in memory is chunked like X
    m = quiet(LinearRegression(dtype="float32"), Xd, y)
    assert m.coef_.dtype == np.float32
    assert_allclose(m.coef_, lstsq_fit(X, y)[0], rtol=1e-4)
    # integer features become float64; a column-vector y is flattened with a warning
    Xi = da.from_array(np.arange(40).reshape(20, 2) % 7, chunks=(6, 2))
    yi = np.arange(20.0)[:, None]
    with pytest.warns(UserWarning, match="column-vector y"):
        mi = LinearRegression().fit(Xi, yi)
    assert mi.coef_.dtype == np.float64
    ref = lstsq_fit(np.arange(40).reshape(20, 2) % 7, np.arange(20.0))[0]
    assert_allclose(mi.coef_, ref, rtol=1e-10)


def test_predict_is_lazy_and_blockwise():
    X, y = make_data(3000, 4, seed=7)
    m = quiet(LinearRegression(), X, y)
    Xd = da.from_array(X, chunks=(700, 2))
    pred = m.predict(Xd)
    assert isinstance(pred, da.Array) and pred.shape == (3000,) and pred.dtype == np.float64
    assert_allclose(pred.compute(), m.predict(X), rtol=1e-12)
    with pytest.raises(ValueError, match="X has 3 features, but LinearRegression is expecting 4"):
        m.predict(Xd[:, :3])


def _bad(X, y):
    return LinearRegression().fit(X, y)


def test_bad_inputs():
    X, y = make_data(100, 3, seed=8)
    Xd, yd = da.from_array(X, chunks=(30, 3)), da.from_array(y, chunks=30)
    with pytest.raises(ValueError, match="y has 99 values but X has 100 samples"):
        _bad(Xd, yd[:99])
    with pytest.raises(ValueError, match="X must be 2-D"):
        _bad(Xd[:, 0], yd)
    with pytest.raises(ValueError, match="multi-output"):
        _bad(Xd, da.stack([yd, yd], axis=1))
    with pytest.raises(ValueError, match="y is None"):
        _bad(Xd, None)
    with pytest.raises(ValueError, match="X is empty"):
        _bad(Xd[:0], yd[:0])
    with pytest.raises(TypeError, match="X must hold real numbers"):
        _bad(Xd.astype(np.complex128), yd)
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        _bad(Xd[Xd[:, 0] > 0], yd[Xd[:, 0] > 0])
    with pytest.raises(TypeError, match="pass a dask array"):
        _bad(dask.delayed(X), yd)
    with pytest.raises(ValueError, match="solver='gd' would read a dask array"):
        LinearRegression(solver="gd").fit(Xd, yd)
    with pytest.raises(ValueError, match="device='cuda' does not take dask arrays"):
        LinearRegression(device="cuda").fit(Xd, yd)


@pytest.mark.parametrize("solver", ["normal", "qr"])
@pytest.mark.parametrize("where", ["X", "y"])
def test_nan_in_one_block_is_named(where, solver):
    X, y = make_data(100, 3, seed=9)
    (X if where == "X" else y)[77] = np.nan  # in the third block of 30 rows
    with pytest.raises(ValueError, match=f"{where} contains NaN or infinity"):
        LinearRegression(solver=solver).fit(da.from_array(X, chunks=(30, 3)),
                                            da.from_array(y, chunks=30))


@pytest.mark.parametrize("labels", ["ints", "strings"])
def test_mlp_predictions_are_lazy_and_blockwise(labels):
    from fusedgrad.models import MLPClassifier

    rng = np.random.default_rng(12)
    X = rng.standard_normal((900, 5)).astype(np.float32)
    y = np.argmax(X @ rng.standard_normal((5, 3)), axis=1)
    if labels == "strings":
        y = np.array(["a", "bb", "c"])[y]
    m = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stops at max_iter
        m.fit(X, y)
    Xd = da.from_array(X, chunks=(250, 2))
    for method in ("predict", "predict_proba", "predict_log_proba"):
        lazy = getattr(m, method)(Xd)
        ref = getattr(m, method)(X)
        assert isinstance(lazy, da.Array) and lazy.shape == ref.shape
        assert lazy.dtype == ref.dtype
        got = lazy.compute()
        if method == "predict":
            assert np.array_equal(got, ref)
        else:
            assert_allclose(got, ref, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="X has 4 features, but MLPClassifier is expecting 5"):
        m.predict(Xd[:, :4])
    X[7, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        m.predict(da.from_array(X, chunks=(250, 5))).compute()


# ---------------------------------------------------------------------------
# Sample weights
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("solver", ["auto", "normal", "qr"])
def test_weighted_matches_in_memory_fit(solver, fit_intercept):
    X, y = make_data(10007, 7, seed=21, noise=1.0)
    w = np.random.default_rng(22).uniform(0, 3, len(y))
    w[:2500] = 0.0  # whole blocks of weight 0 (the first, where QR's shift comes from)
    w[5000:5100] = 0.0
    memory = LinearRegression(solver=solver, fit_intercept=fit_intercept).fit(
        X, y, sample_weight=w)
    Xd, yd = as_dask(X, y, "uneven")
    for sw in (da.from_array(w, chunks=1000), w):  # other chunks than X's; in memory
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            m = LinearRegression(solver=solver, fit_intercept=fit_intercept).fit(
                Xd, yd, sample_weight=sw)
        assert m.solver_ == memory.solver_ and m.rank_ == 7
        scale = np.abs(memory.coef_).max()
        assert_allclose(m.coef_, memory.coef_, rtol=0, atol=1e-10 * scale)
        assert_allclose(m.intercept_, memory.intercept_, rtol=0,
                        atol=1e-10 * (abs(memory.intercept_) + scale))


def test_integer_weights_equal_repeated_rows():
    X, y = make_data(2000, 4, seed=23, noise=1.0)
    counts = np.random.default_rng(24).integers(0, 4, len(y))
    rows = np.repeat(np.arange(len(y)), counts)
    coef, b = lstsq_fit(X[rows], y[rows])
    Xd, yd = as_dask(X, y, "uneven")
    for solver in ("normal", "qr"):
        m = LinearRegression(solver=solver).fit(Xd, yd, sample_weight=da.from_array(counts, 300))
        assert_allclose(m.coef_, coef, rtol=1e-10)
        assert m.intercept_ == pytest.approx(b, rel=1e-10)


def test_scalar_weight_is_the_unweighted_fit():
    X, y = make_data(500, 3, seed=25)
    Xd, yd = as_dask(X, y, "uneven")
    plain = LinearRegression().fit(Xd, yd)
    m = LinearRegression().fit(Xd, yd, sample_weight=4.0)
    assert np.array_equal(m.coef_, plain.coef_) and m.intercept_ == plain.intercept_


def test_bad_weights():
    X, y = make_data(100, 3, seed=26)
    Xd, yd = da.from_array(X, chunks=(30, 3)), da.from_array(y, chunks=30)
    w = np.ones(100)
    with pytest.raises(ValueError, match="sample_weight has 99 values but X has 100 samples"):
        LinearRegression().fit(Xd, yd, sample_weight=da.from_array(w[:99], chunks=30))
    with pytest.raises(ValueError, match="sample_weight must be 1-D"):
        LinearRegression().fit(Xd, yd, sample_weight=da.ones((100, 2), chunks=30))
    with pytest.raises(ValueError, match="sample_weight must have a positive sum"):
        LinearRegression().fit(Xd, yd, sample_weight=da.zeros(100, chunks=30))
    with pytest.raises(ValueError, match="sample_weight must have a positive sum"):
        LinearRegression().fit(Xd, yd, sample_weight=0.0)
    with pytest.raises(TypeError, match="sample_weight must hold real numbers"):
        LinearRegression().fit(Xd, yd, sample_weight=da.from_array(w.astype(complex), 30))
    for solver in ("normal", "qr"):
        bad = w.copy()
        bad[77] = -1.0  # in the third block
        with pytest.raises(ValueError, match="sample_weight must be non-negative"):
            LinearRegression(solver=solver).fit(Xd, yd, sample_weight=da.from_array(bad, 30))
        bad[77] = np.nan
        with pytest.raises(ValueError, match="sample_weight contains NaN"):
            LinearRegression(solver=solver).fit(Xd, yd, sample_weight=da.from_array(bad, 30))
