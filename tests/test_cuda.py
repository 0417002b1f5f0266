"""The CUDA kernels (:mod:`fusedgrad.kernels.cuda`) against the NumPy reference.

In CI these run under numba's CUDA simulator (switched on by
``tests/conftest.py``), with every block size shrunk (:func:`small_blocks`) so
that inputs of a dozen rows still span several blocks, several grid-stride
iterations, several row ranges of the split products and several row chunks
of the layered MLP path. Every output buffer is filled with NaN before the
kernels write it (``_runtime.POISON``), so an element a kernel forgets to
write fails the comparison.

Driven by the comparison table ``tests/cases.py``: each row's CUDA kernel is
compared with the reference evaluated in float64, within the row's tolerance.

Tests marked ``gpu`` need a real GPU (``FUSEDGRAD_TEST_GPU=1`` on a machine
with one): the warp-shuffle reductions, which the simulator does not
implement, and cuBLAS through CuPy.
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fusedgrad.kernels.cuda as kc
from cases import CASES, DTYPES, as_float64, compare, outputs
from fusedgrad import reference as ref
from fusedgrad.kernels import _options as opt
from fusedgrad.kernels.cuda import _runtime as rt
from fusedgrad.kernels.cuda.mlp import plan_fused

SIM = rt.simulator()
cuda = rt.cuda  # a global of that name: the simulator gives a kernel its own per thread
REAL_GPU = not SIM and kc.is_available()

if rt.cuda is not None and not SIM and not REAL_GPU:  # a set-up error, not a skip
    raise RuntimeError(
        "neither numba's CUDA simulator nor a GPU is available: tests/conftest.py sets "
        "NUMBA_ENABLE_CUDASIM=1 unless FUSEDGRAD_TEST_GPU=1; was numba imported before it?"
    )

#: Tests that need no numba-cuda at all; every other test is skipped without it.
WITHOUT_CUDA = {
    "test_table_covers_every_cuda_kernel",
    "test_clear_error_without_a_gpu",
    "test_imports_without_numba_cuda",
}

gpu = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(not REAL_GPU, reason="needs a real CUDA GPU (FUSEDGRAD_TEST_GPU=1)")

SMALL = dict(
    CUDA_TPB=8,
    CUDA_SOFTMAX_TPB=4,
    CUDA_MAX_BLOCKS=3,
    CUDA_GEMM_BM=4,
    CUDA_GEMM_BN=4,
    CUDA_GEMM_BK=2,
    CUDA_GEMM_TM=2,
    CUDA_GEMM_TN=2,
    CUDA_MAX_SPLITS=3,
    CUDA_FUSED_TPB=16,
    CUDA_FUSED_MAX_ROWS=8,
    CUDA_THIN_TPB=16,
    CUDA_THIN_MAX_ROWS=16,
    CUDA_OLS_MAX_ROWS=4,
    CUDA_CHUNK_BYTES=256,
)


@pytest.fixture(autouse=True)
def small_blocks(request, monkeypatch):
    """Tiny blocks and grids (on the simulator), NaN-poisoned outputs (always)."""
    if rt.cuda is None and request.node.originalname not in WITHOUT_CUDA:
        pytest.skip("numba-cuda is not installed (pip install 'fusedgrad[cuda]')")
    if SIM:
        for name, value in SMALL.items():
            monkeypatch.setattr(opt, name, value)
        monkeypatch.setattr(opt, "CUDA_WARP_SHUFFLE", False)
    monkeypatch.setattr(rt, "POISON", True)


def count_allocations(monkeypatch):
    """Record the shape of every device array numba allocates."""
    shapes = []
    original = rt.cuda.device_array
    monkeypatch.setattr(rt.cuda, "device_array",
                        lambda *args, **kwargs: shapes.append(args) or original(*args, **kwargs))
    return shapes


def to_device(args):
    """Float arrays and labels as numba device arrays."""
    return tuple(rt.cuda.to_device(a) if isinstance(a, np.ndarray) else a for a in args)


def host(result):
    """Device outputs copied to NumPy (None and scalars as they are)."""
    return tuple(
        o.copy_to_host() if getattr(o, "__cuda_ndarray__", False) else o for o in outputs(result)
    )


# (N, d, h, K): one sample; one feature, one hidden unit and two classes; and
# 13 rows, not a multiple of any block, over several blocks and row chunks.
SHAPES = [
    dict(N=1, d=1, h=1, K=2),
    dict(N=2, d=3, h=2, K=2),
    dict(N=13, d=5, h=6, K=3),
]


def _params():
    for case in CASES.values():
        if case.cuda_kernel is None:
            continue
        seen = set()
        for shape in SHAPES:
            key = case.project(shape)
            if key in seen:
                continue
            seen.add(key)
            for dtype in DTYPES:
                yield pytest.param(
                    case, shape, dtype,
                    id=f"{case.name}-{case.shape_id(shape)}-{np.dtype(dtype).name}",
                )


def test_table_covers_every_cuda_kernel():
    with_cuda = {case.function for case in CASES.values() if case.cuda_kernel is not None}
    assert with_cuda == set(kc.__all__) - {"is_available"}
    # every kernel of the list has its CUDA twin
    assert with_cuda >= {"affine_sigmoid", "affine_sigmoid_backward", "softmax_cross_entropy",
                         "mlp_loss_grad", "ols_loss_grad", "gram"}


def test_available_here():
    assert kc.is_available()
    kc.softmax_cross_entropy(np.zeros((1, 2)), [0])  # no error


@pytest.mark.parametrize("case, shape, dtype", list(_params()))
def test_against_reference_host_inputs(monkeypatch, case, shape, dtype):
    if case.function == "network_loss_grad":
        network_chunks(monkeypatch)
    args = case.make_args(shape, dtype, 0)
    got = case.cuda_kernel(*args)
    want = case.reference(*as_float64(args))
    for g, w in zip(outputs(got), outputs(want)):
        if w is not None:
            assert isinstance(g, (np.ndarray, np.generic)), "host inputs give host outputs"
            assert g.dtype == np.dtype(dtype)
            assert np.shape(g) == np.shape(w)
    compare(case, got, want, dtype)


@pytest.mark.parametrize("name", ["mlp_loss_grad", "softmax_cross_entropy", "gram",
                                  "ols_loss_grad", "affine_sigmoid_backward"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_device_inputs_give_device_outputs(name, dtype):
    case = CASES[name]
    args = case.make_args(dict(N=13, d=5, h=6, K=3), dtype, 1)
    got = case.cuda_kernel(*to_device(args))
    for o in outputs(got):
        if isinstance(o, (np.generic, float)):
            continue  # the loss comes back as a NumPy scalar
        assert getattr(o, "__cuda_ndarray__", False), f"{type(o)} is not a device array"
    compare(case, host(got), case.reference(*as_float64(args)), dtype)


def test_mixed_host_and_device_inputs():
    case = CASES["affine_sigmoid"]
    X, W, b = case.make_args(dict(N=13, d=5, h=6), np.float64, 2)
    A = kc.affine_sigmoid(rt.cuda.to_device(X), W, b)
    assert getattr(A, "__cuda_ndarray__", False)
    compare(case, A.copy_to_host(), ref.affine_sigmoid(X, W, b), np.float64)


@pytest.mark.parametrize("path", ["fused", "layered"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_mlp_paths(path, dtype):
    case = CASES["mlp_loss_grad"]
    shape = dict(N=13, d=5, h=6, K=3)
    if path == "fused":
        assert plan_fused(5, 6, 3, np.dtype(dtype).itemsize) is not None
    args = case.make_args(shape, dtype, 3)
    got = kc.mlp_loss_grad(*args, _path=path)
    compare(case, got, case.reference(*as_float64(args)), dtype)


def test_mlp_fused_path_spans_several_tiles_and_blocks():
    plan = plan_fused(5, 6, 3, 8)
    assert plan["T"] == SMALL["CUDA_FUSED_TPB"] or not SIM
    n_tiles = -(-13 // plan["R"])
    assert not SIM or n_tiles > 1, plan


def test_mlp_wide_layer_takes_layered_path(monkeypatch):
    monkeypatch.setattr(opt, "CUDA_FUSED_MAX_ACC", 1)
    assert plan_fused(5, 6, 3, 8) is None
    case = CASES["mlp_loss_grad"]
    args = case.make_args(dict(N=7, d=5, h=6, K=3), np.float64, 4)
    compare(case, kc.mlp_loss_grad(*args), case.reference(*as_float64(args)), np.float64)


@pytest.mark.parametrize("unroll", [1, 4, 8])
@pytest.mark.parametrize("seed", range(3))
def test_check_kernels_count_exactly(seed, unroll):
    """The input checks' kernels count exactly (the wrappers only ask
    whether a count is zero, so a lost count could let one NaN or one bad
    label through): NaN and inf, and labels outside ``[0, K)`` with the
    extremes that the error message names, in blocks of 8 threads, each
    thread visiting several elements (with ``unroll`` 4 or 8: in rounds of that many,
    then the rest one by one), against NumPy."""
    count_nonfinite, label_range = rt._check_kernels(8, unroll)
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(203)
    a[rng.choice(203, 9 + seed, replace=False)] = rng.choice([np.nan, np.inf, -np.inf], 9 + seed)
    y = rng.integers(0, 5, 203)
    bad = rng.choice(203, 7, replace=False)
    y[bad] = np.r_[-3, 8, rng.choice([-3, -1, 5, 8], 5)]  # the extremes: -3 and 8
    flags = cuda.to_device(np.array([3, 0, np.iinfo(np.int64).max, np.iinfo(np.int64).min]))
    count_nonfinite[4, 8](cuda.to_device(a), flags, 0)
    label_range[4, 8](cuda.to_device(y), np.int64(5), flags, 1)
    assert flags.copy_to_host().tolist() == [3 + np.count_nonzero(~np.isfinite(a)), 7, -3, 8]
    # every element visited exactly once: all non-finite, the count is the size
    for n in (203, 1, 32, 100, 128, 129, 600):
        flags = cuda.to_device(np.zeros(1, np.int64))
        count_nonfinite[4, 8](cuda.to_device(np.full(n, np.inf)), flags, 0)
        assert flags.copy_to_host()[0] == n
    # up to four arrays a launch (the unused arguments repeat the first):
    # each array's count into its own slot, whatever the sizes
    group = rt._check_group_kernel(8, unroll)
    sizes = (600, 1, 129, 32)
    arrays = [np.full(n, np.inf) for n in sizes]
    arrays[2][::3] = 0.0
    counts = [n if j != 2 else n - len(range(0, n, 3)) for j, n in enumerate(sizes)]
    for k in (1, 2, 3, 4):
        flags = cuda.to_device(np.full(6, 5, np.int64))
        dev = [cuda.to_device(a) for a in arrays[:k]]
        group[4, 8](*(dev + dev[:1] * (4 - k)), np.int64(k), flags, 1)
        assert flags.copy_to_host().tolist() == [5] + [5 + c for c in counts[:k]] + [5] * (5 - k)


def test_block_reductions_back_to_back():
    """The shared-memory block reductions called one after another on one
    buffer, as the row kernels call them: every thread gets every result. The
    barrier at each reduction's end keeps the next call's first store from
    overwriting ``buf[0]`` before a slower thread has read it."""
    from fusedgrad.kernels.cuda._device import helpers

    tpb, reps = 16, 48
    d = helpers(np.dtype(np.float64), tpb, False)
    block_sum, block_max, block_min = d._d_block_sum, d._d_block_max, d._d_block_min_int

    @cuda.jit
    def kernel(out):
        buf = cuda.shared.array(tpb, np.float64)
        ibuf = cuda.shared.array(tpb, np.int64)
        tid = cuda.threadIdx.x
        for r in range(reps):
            out[r, tid, 0] = block_sum(buf, tid + r)
            out[r, tid, 1] = block_max(buf, (tid * 7 + r) % tpb)  # thread 0 stores r % tpb
            out[r, tid, 2] = block_sum(buf, -r)
            out[r, tid, 3] = block_min(ibuf, (tid * 5 + r) % tpb + 1)
            out[r, tid, 4] = block_min(ibuf, tpb + r - tid)

    out = cuda.to_device(np.full((reps, tpb, 5), np.nan))
    kernel[1, tpb](out)
    r = np.arange(reps)[:, None]
    want = np.stack(np.broadcast_arrays(tpb * (tpb - 1) / 2 + tpb * r, tpb - 1, -tpb * r, 1,
                                        r + 1), axis=-1)
    np.testing.assert_array_equal(out.copy_to_host(), np.broadcast_to(want, (reps, tpb, 5)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_row_kernel(monkeypatch, dtype):
    """More classes than the staged kernel takes: a block per row."""
    monkeypatch.setattr(opt, "CUDA_SOFTMAX_STAGED_MAX_K", 2)
    case = CASES["softmax_cross_entropy"]
    args = case.make_args(dict(N=5, K=7), dtype, 5)
    compare(case, kc.softmax_cross_entropy(*args), case.reference(*as_float64(args)), dtype)


@pytest.mark.parametrize("prefetch", [True, False])
@pytest.mark.parametrize("N", [3, 4, 12, 13, 25, 40])
@pytest.mark.parametrize("K", [2, 3])
def test_softmax_staged_tiles(monkeypatch, prefetch, N, K):
    """Tiles of 4 rows over 3 blocks: only a partial tile (N=3), one full
    tile, full tiles only, a block whose next tile is partial (13, 25); in
    place (Z is dZ) with the column sums, as the MLP's layered path calls it,
    by one lane per column (K=3) or two (K=2); with and without the
    registers' prefetch of the next tile."""
    from fusedgrad.kernels.cuda.softmax import softmax_ce_device

    monkeypatch.setattr(opt, "CUDA_SOFTMAX_PREFETCH", prefetch)
    rng = np.random.default_rng(N)
    Z = (3 * rng.standard_normal((N, K))).astype(np.float32)
    y = rng.integers(0, K, N)
    want_loss, want_dZ = ref.softmax_cross_entropy(Z.astype(np.float64), y)
    Zd = rt.cuda.to_device(Z)
    loss_part, col_part = softmax_ce_device(Zd, rt.cuda.to_device(y), Zd, colsum=True)
    np.testing.assert_allclose(Zd.copy_to_host(), want_dZ, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(loss_part.copy_to_host().sum() / N, want_loss, rtol=2e-6)
    np.testing.assert_allclose(col_part.copy_to_host().sum(axis=0), want_dZ.sum(axis=0),
                               atol=1e-6)


def test_resident_grid_asks_the_occupancy_once(monkeypatch):
    """On a GPU the staged softmax grid is what the occupancy calculator says
    fits at once, asked once per kernel and argument types, capped by the
    work and ``CUDA_MAX_BLOCKS``; under the simulator, or with a per-SM count,
    the plain ``grid_size``."""
    import numba

    calls = []

    class Kernel:
        def compile(self, sig):
            calls.append(sig)
            return self

        def max_cooperative_grid_blocks(self, tpb):
            return 7 * 132 if tpb == 128 else 0

    kernel, f64 = Kernel(), numba.types.float64[::1]
    args = (np.zeros(3, np.float32), np.float32(1), f64)
    monkeypatch.setattr(opt, "CUDA_MAX_BLOCKS", None)
    monkeypatch.setattr(rt, "simulator", lambda: False)
    assert rt.resident_grid(kernel, args, 128, 10_000) == 7 * 132
    assert rt.resident_grid(kernel, args, 128, 50) == 50
    assert calls == [(numba.types.float32[::1], numba.types.float32, f64)]
    monkeypatch.setattr(opt, "CUDA_MAX_BLOCKS", 5)
    assert rt.resident_grid(kernel, args, 128, 10_000) == 5
    assert rt.resident_grid(kernel, args, 128, 10_000, per_sm=2) == min(5, rt.grid_size(10_000, 2))
    assert len(calls) == 1
    # other sizes and values: the same signature, not asked again (the cache
    # key is built without typing); another dtype, layout or scalar type is
    # another signature, asked once each
    rt.resident_grid(kernel, (np.zeros(9, np.float32), np.float32(2), f64), 128, 10)
    assert len(calls) == 1
    others = [(np.zeros(3, np.float64), np.float32(1), f64),
              (np.zeros(6, np.float32)[::2], np.float32(1), f64),
              (np.zeros((3, 1), np.float32), np.float32(1), f64),
              (np.zeros(3, np.float32), 1.0, f64),
              (np.zeros(3, np.float32), np.float32(1), numba.types.float64[:, ::1])]
    for other in others * 2:
        rt.resident_grid(kernel, other, 128, 10)
    assert calls[1:] == [tuple(numba.typeof(a) if not isinstance(a, numba.types.Type) else a
                               for a in other) for other in others]
    monkeypatch.setattr(rt, "simulator", lambda: True)
    monkeypatch.setattr(opt, "CUDA_MAX_BLOCKS", None)
    assert rt.resident_grid(kernel, args, 128, 10_000) == rt.grid_size(10_000)


def test_cached_plans_name_every_option_they_read():
    """A cached plan's key holds the options it reads: every ``opt.CUDA_*``
    in its source (and in the helpers it calls, which read none) is named in
    ``rt.cached_plan``, so that a changed option plans anew; and a plan is
    read-only (every call shares it)."""
    import inspect
    import re

    from fusedgrad.kernels.cuda import _gemm, mlp

    plans = {_gemm.plan_thin: (_gemm._thin_shared_bytes, _gemm._thin_strides),
             _gemm.plan_thin_sum: (_gemm._thin_sum_strides,),
             mlp.plan_fused: (mlp._fused_shared_bytes, mlp._strides)}
    for plan, helpers_called in plans.items():
        read = set(re.findall(r"opt\.(CUDA_\w+)", inspect.getsource(plan.__wrapped__)))
        assert read == set(plan.options), plan.__name__
        calling = inspect.getsource(plan.__wrapped__)
        for helper in helpers_called:  # in call order: each called by the plan or the one before
            assert helper.__name__ + "(" in calling
            calling = inspect.getsource(helper)
            assert "opt." not in calling
    p = _gemm.plan_thin(16, 32, 4)
    assert p is _gemm.plan_thin(16, 32, 4)
    with pytest.raises(TypeError):
        p["T"] = 1


@pytest.mark.parametrize("staged_max_k", [32, 2])
def test_softmax_confident_rows_keep_their_digits(monkeypatch, staged_max_k):
    """A label with a logit margin of 30: loss and gradient ~1e-13 must not
    cancel to zero in float32 (the loss is log1p of the other terms)."""
    monkeypatch.setattr(opt, "CUDA_SOFTMAX_STAGED_MAX_K", staged_max_k)
    Z = np.array([[30.0, 0.0, 0.0], [0.0, 0.0, 30.0]], np.float32)
    y = np.array([0, 2])
    loss, dZ = kc.softmax_cross_entropy(Z, y)
    # Analytic values (the reference's log(sum) itself loses digits here):
    # per row t = 2 e^-30, loss log1p(t), label gradient -t / (1 + t) / N.
    t = 2.0 * np.exp(-30.0)
    want_dZ = np.full((2, 3), np.exp(-30.0) / (1.0 + t) / 2)
    want_dZ[0, 0] = want_dZ[1, 2] = -t / (1.0 + t) / 2
    assert loss.dtype == np.float32
    np.testing.assert_allclose(loss, np.log1p(t), rtol=1e-6)
    np.testing.assert_allclose(dZ, want_dZ, rtol=1e-6)


def test_softmax_huge_logits():
    Z = np.array([[1e30, -1e30, 0.0], [-1e30, 3e38, 3e38]], np.float32)
    loss, dZ = kc.softmax_cross_entropy(Z, [1, 1])
    want_loss, want_dZ = ref.softmax_cross_entropy(Z.astype(np.float64), np.array([1, 1]))
    assert np.isfinite(loss) and np.all(np.isfinite(dZ))
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    np.testing.assert_allclose(dZ, want_dZ, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("prefetch", [True, False])
@pytest.mark.parametrize("N", [3, 4, 12, 13, 25, 40])
@pytest.mark.parametrize("d", [5, 3, 19])
def test_ols_tiles(monkeypatch, prefetch, N, d):
    """Tiles of 4 rows over 3 blocks, full and partial, with and without the
    registers' prefetch of the next tile: 5 features (20 values over 8
    threads: the last of a thread's 3 loads runs past the tile for some; one
    gradient lane per column), 3 (two lanes per column) or 19 (more columns
    than threads: each thread sums three of them, the last one past ``d`` for
    some)."""
    monkeypatch.setattr(opt, "CUDA_OLS_PREFETCH", prefetch)
    case = CASES["ols_loss_grad"]
    args = case.make_args(dict(N=N, d=d), np.float64, N)
    compare(case, kc.ols_loss_grad(*args), case.reference(*as_float64(args)), np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ols_two_pass_path_for_wide_rows(monkeypatch, dtype):
    """Rows too wide for shared memory: Xw, then X^T r."""
    monkeypatch.setattr(opt, "CUDA_SHARED_BYTES", 64)
    case = CASES["ols_loss_grad"]
    args = case.make_args(dict(N=13, d=5), dtype, 6)
    compare(case, kc.ols_loss_grad(*args), case.reference(*as_float64(args)), dtype)


@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("shape", [(50, 5, 7), (37, 3, 1), (21, 4, 10)])
def test_thin_products(monkeypatch, tb, shape):
    """``_gemm.matmul`` by the thin kernel (B in shared memory) and by the
    tiled kernel, against a float64 NumPy product with each epilogue, the
    derivative ones also in place (``aux`` is C): tiles of 16 rows on 3
    blocks (two tiles for the first block at 50 rows, partial tiles), thread grids
    with columns past Nc (7 columns on a grid of 8) and without (10, whose
    tile rows in shared memory are padded to 11), a
    single column, B transposed or not."""
    from fusedgrad.kernels.cuda import _gemm

    M, Kd, Nc = shape
    rng = np.random.default_rng(M)
    A = rng.standard_normal((M, Kd))
    B = rng.standard_normal((Nc, Kd) if tb else (Kd, Nc))
    bias = rng.standard_normal(Nc)
    aux = rng.uniform(-1.0, 1.0, (M, Nc))
    z = A @ (B.T if tb else B)
    want = {
        _gemm.EPI_NONE: z,
        _gemm.EPI_BIAS: z + bias,
        _gemm.EPI_BIAS_SIGMOID: 1.0 / (1.0 + np.exp(-(z + bias))),
        _gemm.EPI_BIAS_TANH: np.tanh(z + bias),
        _gemm.EPI_BIAS_RELU: np.maximum(z + bias, 0.0),
        _gemm.EPI_DSIGMOID: z * aux * (1.0 - aux),
        _gemm.EPI_DTANH: z * (1.0 - aux) * (1.0 + aux),
        _gemm.EPI_DRELU: np.where(aux > 0, z, 0.0),
    }
    for thin in (True, False):
        monkeypatch.setattr(opt, "CUDA_THIN", thin)
        assert (_gemm.plan_thin(Kd, Nc, 4) is not None) == thin
        for dtype in DTYPES:
            tol = 1e-5 if dtype == np.float32 else 1e-12
            dA, dB, dbias, daux = (rt.to_device(a.astype(dtype)) for a in (A, B, bias, aux))
            for epi, w in want.items():
                for in_place in (False, True) if epi in _gemm._NEEDS_AUX else (False,):
                    C = rt.to_device(aux.astype(dtype)) if in_place else rt.empty((M, Nc), dtype)
                    _gemm.matmul(dA, dB, C, tb=tb, epi=epi, bias=dbias,
                                 aux=C if in_place else daux)
                    np.testing.assert_allclose(C.copy_to_host(), w, rtol=tol, atol=tol,
                                               err_msg=f"thin={thin} {dtype} epilogue {epi}")


@pytest.mark.parametrize("shape", [(50, 5, 6), (37, 3, 1), (45, 6, 4)])
def test_thin_row_sums(monkeypatch, shape):
    """``_gemm.matmul(A, B, C, ta=True)`` (``A^T B`` summed over rows, as the
    weight gradients and the Gram matrix) by the thin row-sum kernel and by
    the tiled kernel, against float64 NumPy: tiles of 16 rows, 8 row lanes a
    block, 3 blocks (several tiles a block, partial tiles), with ``bvec`` as
    one more column of B (``gram``'s ``X^T [X | y]``, B being A itself), and
    added to C."""
    from fusedgrad.kernels.cuda import _gemm

    M, Ka, Nb = shape
    rng = np.random.default_rng(M)
    A = rng.standard_normal((M, Ka))
    B = rng.standard_normal((M, Nb))
    yv = rng.standard_normal(M)
    C0 = rng.standard_normal((Ka, Nb))
    for thin in (True, False):
        monkeypatch.setattr(opt, "CUDA_THIN", thin)
        assert (_gemm.plan_thin_sum(Ka, Nb, 4) is not None) == thin
        for dtype in DTYPES:
            tol = 1e-5 if dtype == np.float32 else 1e-12
            dA, dB, dy = (rt.to_device(a.astype(dtype)) for a in (A, B, yv))
            for accumulate in (False, True):
                C = rt.to_device(C0.astype(dtype)) if accumulate else rt.empty((Ka, Nb), dtype)
                _gemm.matmul(dA, dB, C, ta=True, accumulate=accumulate)
                np.testing.assert_allclose(C.copy_to_host(), A.T @ B + (C0 if accumulate else 0),
                                           rtol=tol, atol=tol, err_msg=f"thin={thin} {dtype}")
            C = rt.empty((Ka, Ka + 1), dtype)
            _gemm.matmul(dA, dA, C, ta=True, bvec=dy)
            np.testing.assert_allclose(C.copy_to_host(), A.T @ np.column_stack([A, yv]),
                                       rtol=tol, atol=tol, err_msg=f"thin={thin} {dtype} bvec")


@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu"])
def test_thin_backward(monkeypatch, activation):
    """A thin layer's backward pass in one kernel (dZ formed in shared memory,
    never stored) against the float64 reference, and the passes it replaced
    (a dZ pass and the thin kernels; products, with the thin kernels off):
    50 rows in tiles of 16 on 3 blocks (two tiles for the first, a partial
    one), 7 -> 4 units (the tiles of X and dZ of different widths, dX's thread
    grid one column wider than the layer), with and without dX, both dtypes."""
    from fusedgrad.kernels.cuda.affine import plan_backward

    for suffix in ("", "/no_W"):
        case = CASES[f"affine_activation_backward/{activation}{suffix}"]
        for dtype in DTYPES:
            args = case.make_args(dict(N=50, d=7, h=4), dtype, 21)
            want = case.reference(*as_float64(args))
            for thin, one_kernel in ((True, True), (True, False), (False, True)):
                monkeypatch.setattr(opt, "CUDA_THIN", thin)
                monkeypatch.setattr(opt, "CUDA_THIN_BACKWARD", one_kernel)
                assert (plan_backward(7, 4, 4, suffix == "") is not None) == thin
                compare(case, case.cuda_kernel(*args), want, dtype)


@pytest.fixture
def marked_fast_division(monkeypatch):
    """``_device.fast_division`` replaced by ``2 * a / b``, with the kernel
    factories' caches emptied before and after, so that every kernel built
    with the fast sigmoid in the test doubles its sigmoids (the simulator's
    own fast division is the IEEE one, which could not be told apart)."""
    from fusedgrad.kernels.cuda import _device, _gemm, mlp

    factories = (_device.helpers, _gemm._epilogue_fn, _gemm._gemm_kernel,
                 _gemm._epilogue_kernel, _gemm._thin_kernel, mlp._fused_kernel, mlp._flat_kernel)

    @rt.jit(device=True)
    def doubled(a, b):
        return 2 * a / b

    for f in factories:
        f.cache_clear()
    monkeypatch.setattr(_device, "fast_division", lambda: doubled)
    yield
    for f in factories:
        f.cache_clear()


@pytest.mark.parametrize("path", ["thin", "tiled", "fused", "fused first", "layered", "network"])
def test_fast_sigmoid_reaches_every_sigmoid(monkeypatch, marked_fast_division, path):
    """``CUDA_FAST_SIGMOID`` takes every float32 sigmoid, and no float64 one,
    to the fast division: with a marked division (``2 * a / b``) the float32
    ``affine_sigmoid`` of the thin and the tiled kernel is exactly twice the
    IEEE one, and the fused (flat and first kernel), layered and network
    gradients change; with the option off, and in float64, the results are
    those of the IEEE sigmoid bit for bit."""
    rng = np.random.default_rng(5)
    X, W, b = rng.standard_normal((13, 5)), rng.standard_normal((5, 6)), rng.standard_normal(6)
    y = rng.integers(0, 3, 13)
    W2, b2 = rng.standard_normal((6, 3)), rng.standard_normal(3)
    if path in ("thin", "tiled"):
        monkeypatch.setattr(opt, "CUDA_THIN", path == "thin")
        run = lambda dt: (kc.affine_sigmoid(X.astype(dt), W.astype(dt), b.astype(dt)),)  # noqa: E731
    elif path == "network":
        run = lambda dt: kc.network_loss_grad(  # noqa: E731
            X.astype(dt), y, [W.astype(dt), W2.astype(dt)], [b.astype(dt), b2.astype(dt)],
            activation="logistic")
    else:
        monkeypatch.setattr(opt, "CUDA_FUSED_FLAT", path != "fused first")
        run = lambda dt: kc.mlp_loss_grad(  # noqa: E731
            X.astype(dt), y, W.astype(dt), b.astype(dt), W2.astype(dt), b2.astype(dt),
            _path="layered" if path == "layered" else "fused")

    def flat(result):
        if isinstance(result, (tuple, list)):
            return np.concatenate([flat(o) for o in result if o is not None])
        return np.ravel(np.asarray(result, dtype=np.float64))

    results = {}
    for fast in (False, True):
        monkeypatch.setattr(opt, "CUDA_FAST_SIGMOID", fast)
        for dt in DTYPES:
            results[fast, np.dtype(dt).name] = flat(run(dt))
    np.testing.assert_array_equal(results[True, "float64"], results[False, "float64"])
    ieee, marked = results[False, "float32"], results[True, "float32"]
    if path in ("thin", "tiled"):
        np.testing.assert_array_equal(marked, 2 * ieee)
    else:
        assert np.abs(marked - ieee).max() > 1e-2


def test_results_are_reproducible():
    case = CASES["mlp_loss_grad"]
    args = case.make_args(dict(N=13, d=5, h=6, K=3), np.float32, 7)
    first = kc.mlp_loss_grad(*args)
    second = kc.mlp_loss_grad(*args)
    for a, b in zip(first, second):
        assert np.array_equal(a, b)


def test_host_input_with_a_stride_0_axis():
    """``z[:, None]`` (a length-1 axis of stride 0, contiguous to NumPy, a
    broadcast axis to numba's copy) as a host input."""
    rng = np.random.default_rng(9)
    z = rng.standard_normal(7)
    W, b = rng.standard_normal((1, 3)), rng.standard_normal(3)
    assert 0 in z[:, None].strides
    got = kc.affine_sigmoid(z[:, None], W, b)
    np.testing.assert_allclose(got, ref.affine_sigmoid(z[:, None].copy(), W, b), rtol=1e-12)


def test_non_contiguous_device_input():
    rng = np.random.default_rng(8)
    Z = rng.standard_normal((6, 8))
    y = rng.integers(0, 4, 6)
    dZ_view = rt.cuda.to_device(Z)[:, ::2]
    assert not dZ_view.is_c_contiguous()
    loss, dZ = kc.softmax_cross_entropy(dZ_view, rt.cuda.to_device(y))
    want_loss, want_dZ = ref.softmax_cross_entropy(Z[:, ::2], y)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
    np.testing.assert_allclose(dZ.copy_to_host(), want_dZ, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------
# out=
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("on_device", [False, True])
def test_affine_sigmoid_out(on_device):
    X, W, b = CASES["affine_sigmoid"].make_args(dict(N=5, d=3, h=2), np.float64, 9)
    out = np.full((5, 2), np.nan)
    target = rt.cuda.to_device(out) if on_device else out
    res = kc.affine_sigmoid(X, W, b, out=target)
    assert res is target
    got = target.copy_to_host() if on_device else target
    np.testing.assert_allclose(got, ref.affine_sigmoid(X, W, b), rtol=1e-12)


def test_affine_sigmoid_out_checks():
    X, W, b = CASES["affine_sigmoid"].make_args(dict(N=4, d=2, h=2), np.float64, 10)
    with pytest.raises(ValueError, match="out must have shape"):
        kc.affine_sigmoid(X, W, b, out=np.empty((4, 3)))
    with pytest.raises(TypeError, match="out must have dtype"):
        kc.affine_sigmoid(X, W, b, out=rt.cuda.device_array((4, 2), np.float32))
    Xd = rt.cuda.to_device(X)
    with pytest.raises(ValueError, match="out overlaps input X"):
        kc.affine_sigmoid(Xd, W, b, out=Xd)


# ---------------------------------------------------------------------------
# Bad input: the CPU kernels' errors, host and device alike
# ---------------------------------------------------------------------------


def _mlp_args(dtype=np.float64):
    return list(CASES["mlp_loss_grad"].make_args(dict(N=4, d=3, h=2, K=3), dtype, 11))


@pytest.mark.parametrize("on_device", [False, True])
def test_errors_name_the_argument(on_device):
    put = rt.cuda.to_device if on_device else (lambda a: a)
    X, y, W1, b1, W2, b2 = _mlp_args()
    with pytest.raises(TypeError, match="W2 has dtype float32 but X has dtype float64"):
        kc.mlp_loss_grad(put(X), y, W1, b1, put(W2.astype(np.float32)), b2)
    with pytest.raises(TypeError, match="X must be a float32 or float64 array, got dtype int64"):
        kc.mlp_loss_grad(put(X.astype(np.int64)), y, W1, b1, W2, b2)
    with pytest.raises(ValueError, match="W1 has shape .* axis 0 \\(n_features\\) is 2"):
        kc.mlp_loss_grad(put(X), y, put(W1[:2].copy()), b1, W2, b2)
    with pytest.raises(ValueError, match="b2 must be 1-D"):
        kc.mlp_loss_grad(X, y, W1, b1, W2, put(b2.reshape(1, 3).copy()))
    with pytest.raises(ValueError, match="y has 3 labels but there are 4 samples"):
        kc.mlp_loss_grad(put(X), put(y[:3].copy()), W1, b1, W2, b2)
    with pytest.raises(TypeError, match="y must hold integer class labels"):
        kc.mlp_loss_grad(put(X), put(y.astype(np.float64)), W1, b1, W2, b2)
    with pytest.raises(ValueError, match=r"y holds label 3, outside \[0, 3\)"):
        kc.mlp_loss_grad(X, put(np.array([0, 1, 3, 2])), W1, b1, W2, b2)
    with pytest.raises(ValueError, match=r"y holds label -1, outside \[0, 3\)"):
        kc.mlp_loss_grad(X, put(np.array([0, -1, 1, 2], np.int32)), W1, b1, W2, b2)
    with pytest.raises(ValueError, match="X is empty"):
        kc.ols_loss_grad(put(np.empty((0, 3))), put(np.empty(0)), np.zeros(3))
    with pytest.raises(TypeError, match="X must be an array, got str"):
        kc.gram("abc", np.zeros(3))


@pytest.mark.parametrize("on_device", [False, True])
def test_nonfinite_input(on_device):
    put = rt.cuda.to_device if on_device else (lambda a: a)
    X, y, W1, b1, W2, b2 = _mlp_args()
    W2 = W2.copy()
    W2[1, 2] = np.inf
    with pytest.raises(ValueError, match="W2 contains NaN or infinity"):
        kc.mlp_loss_grad(put(X), y, W1, b1, put(W2), b2)
    Z = np.array([[0.0, np.nan]])
    with pytest.raises(ValueError, match="Z contains NaN or infinity"):
        kc.softmax_cross_entropy(put(Z), [0])
    # check_finite=False: no check, NaN flows through as in the CPU kernel
    loss, dZ = kc.softmax_cross_entropy(put(Z), [0], check_finite=False)
    assert np.isnan(loss)


@pytest.mark.parametrize("group", [1, 2, 4])
def test_nonfinite_in_each_device_input(monkeypatch, group):
    """Every input on the device, their NaN/inf counts made ``group`` arrays a
    launch (``CUDA_CHECK_GROUP``): a NaN or inf in any one of them, at its
    first or last element, raises naming that one; clean inputs pass. With 4,
    mlp_loss_grad's five inputs take two launches, the first of them four
    arrays of different sizes."""
    monkeypatch.setattr(opt, "CUDA_CHECK_GROUP", group)
    args = dict(zip(("X", "y", "W1", "b1", "W2", "b2"), _mlp_args()))
    names = ["X", "W1", "b1", "W2", "b2"]
    want = kc.mlp_loss_grad(*(rt.cuda.to_device(v) for v in args.values()))[0]
    np.testing.assert_allclose(want, ref.mlp_loss_grad(*args.values())[0], rtol=1e-10)
    for name in names:
        for where, value in ((0, np.nan), (-1, np.inf)):
            bad = dict(args)
            bad[name] = args[name].copy()
            bad[name].reshape(-1)[where] = value
            with pytest.raises(ValueError, match=f"^{name} contains NaN or infinity"):
                kc.mlp_loss_grad(*(rt.cuda.to_device(v) for v in bad.values()))


LABEL_PATHS = ["softmax staged", "softmax per-row", "mlp fused", "mlp fused first",
               "mlp layered", "mlp weighted", "network", "network rows"]


def _label_call(path, monkeypatch, y, **kw):
    """One wrapper call on ``path`` with the device labels ``y`` (13 rows, 3 classes)."""
    rng = np.random.default_rng(4)
    X = rt.cuda.to_device(rng.standard_normal((13, 5)))
    W1, b1 = rng.standard_normal((5, 6)), rng.standard_normal(6)
    W2, b2 = rng.standard_normal((6, 3)), rng.standard_normal(3)
    yd = rt.cuda.to_device(y)
    if path.startswith("softmax"):
        if path == "softmax per-row":
            monkeypatch.setattr(opt, "CUDA_SOFTMAX_STAGED_MAX_K", 2)
        return kc.softmax_cross_entropy(rt.cuda.to_device(rng.standard_normal((13, 3))), yd,
                                        **kw)
    if path.startswith("network"):
        rows = rt.cuda.to_device(np.arange(13)[::-1].copy()) if path == "network rows" else None
        W1b, b1b = rng.standard_normal((6, 4)), rng.standard_normal(4)
        return kc.network_loss_grad(X, yd, [W1, W1b, W2[:4]], [b1, b1b, b2],
                                    activation="relu", rows=rows, **kw)
    monkeypatch.setattr(opt, "CUDA_FUSED_FLAT", path != "mlp fused first")
    sw = rt.cuda.to_device(rng.uniform(0.0, 2.0, 13)) if path == "mlp weighted" else None
    return kc.mlp_loss_grad(X, yd, W1, b1, W2, b2, sample_weight=sw,
                            _path="layered" if path == "mlp layered" else "fused", **kw)


@pytest.mark.parametrize("in_kernel", [True, False])
@pytest.mark.parametrize("path", LABEL_PATHS)
def test_device_labels_out_of_range(monkeypatch, in_kernel, path):
    """A device label outside [0, K) raises the ValueError naming it on every
    path, whether the range is checked before the kernels or by them
    (``CUDA_LABELS_IN_KERNEL``: the loss comes back NaN, then the check), with
    and without ``check_finite``; labels in range give the CPU reference's
    loss either way."""
    monkeypatch.setattr(opt, "CUDA_LABELS_IN_KERNEL", in_kernel)
    good = np.arange(13) % 3
    for bad_value, pos in ((3, 0), (-1, 12), (7, 5)):
        y = good.copy()
        y[pos] = bad_value
        for check_finite in (True, False):
            with pytest.raises(ValueError, match=rf"y holds label {bad_value}, outside \[0, 3\)"):
                _label_call(path, monkeypatch, y, check_finite=check_finite)
    loss = _label_call(path, monkeypatch, good)[0]
    monkeypatch.setattr(opt, "CUDA_LABELS_IN_KERNEL", not in_kernel)
    assert np.isfinite(loss) and loss == _label_call(path, monkeypatch, good)[0]


def test_nan_loss_with_labels_in_range_is_returned():
    """NaN logits with ``check_finite=False`` and device labels in range: the
    NaN loss comes back (the label check it triggers finds nothing)."""
    Z = rt.cuda.to_device(np.array([[0.0, np.nan], [1.0, 2.0]]))
    loss, _ = kc.softmax_cross_entropy(Z, rt.cuda.to_device(np.array([0, 1])),
                                       check_finite=False)
    assert np.isnan(loss)


@pytest.mark.parametrize("staged_max_k", [32, 2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_kernels_guard_their_labels(monkeypatch, staged_max_k, dtype):
    """The softmax-CE kernels themselves (no wrapper, no check) given labels
    outside [0, K): no access outside the row (the simulator raises on an
    index past an array), the loss NaN, and the other rows' gradient that of
    the reference."""
    from fusedgrad.kernels.cuda.softmax import softmax_ce_device

    monkeypatch.setattr(opt, "CUDA_SOFTMAX_STAGED_MAX_K", staged_max_k)
    rng = np.random.default_rng(6)
    Z = rng.standard_normal((13, 3)).astype(dtype)
    y = np.arange(13) % 3
    y[[0, 6, 12]] = [3, -1, 1000]
    dZ = rt.empty((13, 3), dtype)
    loss_part, _ = softmax_ce_device(rt.to_device(Z), rt.to_device(y), dZ)
    assert np.isnan(loss_part.copy_to_host().sum())
    ok = np.ones(13, bool)
    ok[[0, 6, 12]] = False
    _, want = ref.softmax_cross_entropy(Z[ok].astype(np.float64), y[ok])
    np.testing.assert_allclose(dZ.copy_to_host()[ok] * 13 / 10, want,
                               rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-7)


@pytest.mark.parametrize("flat", [True, False])
def test_fused_kernels_guard_their_labels(monkeypatch, flat):
    """The fused MLP kernels (no wrapper, no check) given labels outside
    [0, K): no access outside the row, and the loss NaN."""
    from fusedgrad.kernels.cuda import mlp

    monkeypatch.setattr(opt, "CUDA_FUSED_FLAT", flat)
    X, y, W1, b1, W2, b2 = CASES["mlp_loss_grad"].make_args(dict(N=13, d=5, h=6, K=3),
                                                           np.float32, 3)
    y = np.array(y)
    y[[2, 9]] = [3, -2]
    D, H, K = 5, 6, 3
    flat_out = rt.empty(D * H + H + H * K + K, np.float32)
    loss = rt.device_array(1, np.float64)
    mlp.loss_grad_device(*(rt.to_device(np.asarray(a)) for a in (X, y, W1, b1, W2, b2)),
                         flat_out, loss, _path="fused")
    assert np.isnan(loss.copy_to_host()[0])


# ---------------------------------------------------------------------------
# Without CUDA
# ---------------------------------------------------------------------------


def test_clear_error_without_a_gpu(monkeypatch):
    monkeypatch.setattr(rt, "_unavailable_reason", lambda: "no CUDA GPU or driver was found")
    assert not kc.is_available()
    X, y, W1, b1, W2, b2 = _mlp_args()
    calls = [
        lambda: kc.mlp_loss_grad(X, y, W1, b1, W2, b2),
        lambda: kc.softmax_cross_entropy(np.zeros((2, 2)), [0, 1]),
        lambda: kc.affine_sigmoid(X, W1, b1),
        lambda: kc.affine_sigmoid_backward(X, X, X),
        lambda: kc.ols_loss_grad(X, np.zeros(4), np.zeros(3)),
        lambda: kc.gram(X, np.zeros(4)),
    ]
    for call in calls:
        with pytest.raises(RuntimeError, match="no CUDA GPU or driver was found.*CPU kernels"):
            call()


def test_imports_without_numba_cuda():
    """With numba-cuda missing the package still imports; kernels say what is missing."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["numba_cuda"] = None
        import numpy as np
        import fusedgrad.kernels.cuda as kc
        assert not kc.is_available()
        try:
            kc.softmax_cross_entropy(np.zeros((2, 2)), [0, 1])
        except RuntimeError as exc:
            assert "numba-cuda is not installed" in str(exc), exc
            print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# ---------------------------------------------------------------------------
# Real GPU only
# ---------------------------------------------------------------------------


@gpu
@needs_gpu
@pytest.mark.parametrize("name", ["softmax_cross_entropy", "mlp_loss_grad", "ols_loss_grad"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_warp_shuffle_and_shared_memory_paths_agree(monkeypatch, name, dtype):
    case = CASES[name]
    args = case.make_args(dict(N=5000, d=7, h=9, K=5), dtype, 12)
    want = case.reference(*as_float64(args))
    for shuffle in (True, False):
        monkeypatch.setattr(opt, "CUDA_WARP_SHUFFLE", shuffle)
        compare(case, case.cuda_kernel(*args), want, dtype)
    monkeypatch.setattr(opt, "CUDA_SOFTMAX_STAGED_MAX_K", 2)
    monkeypatch.setattr(opt, "CUDA_WARP_SHUFFLE", True)
    compare(case, case.cuda_kernel(*args), want, dtype)


@gpu
@needs_gpu
@pytest.mark.parametrize("backend", ["numba", "cupy"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_backends(monkeypatch, backend, dtype):
    if backend == "cupy":
        pytest.importorskip("cupy")
    monkeypatch.setattr(opt, "CUDA_GEMM", backend)
    for name in ["affine_sigmoid", "affine_sigmoid_backward", "gram"]:
        case = CASES[name]
        args = case.make_args(dict(N=3000, d=70, h=90, K=10), dtype, 13)
        compare(case, case.cuda_kernel(*args), case.reference(*as_float64(args)), dtype)
    case = CASES["mlp_loss_grad"]
    args = case.make_args(dict(N=3000, d=300, h=200, K=10), dtype, 14)
    compare(case, kc.mlp_loss_grad(*args, _path="layered"), case.reference(*as_float64(args)),
            dtype)


@pytest.mark.parametrize("max_rows", [8, 16])
@pytest.mark.parametrize(
    "shape", [(5, 6, 3), (7, 9, 4), (2, 13, 3), (9, 3, 5), (3, 4, 2), (3, 2, 17)])
def test_fused_flat_kernel(monkeypatch, max_rows, shape):
    """The flat-offset fused kernel against the float64 reference, on layers
    whose thread grid overhangs the tiles (its dW1 loop reads padding
    columns: NI * MI > d or NJ * MJ > h) and layers it fits, with W1 in
    shared memory (16-row tiles) and read from global memory (8-row tiles;
    always at K = 17, 32 threads, where the tiles are too short for it), with
    a row of dZ2 held in registers (K <= 16) and read from shared memory
    (K = 17), weighted and not; and bit for bit what the first
    fused kernel gives (the same arithmetic in the same order)."""
    monkeypatch.setattr(opt, "CUDA_FUSED_MAX_ROWS", max_rows)
    d, h, K = shape
    if K > 16:
        monkeypatch.setattr(opt, "CUDA_FUSED_TPB", 32)
    plan = plan_fused(d, h, K, 4)
    assert plan is not None and plan["w1_shared"] == (max_rows == 16 and K <= 16)
    case = CASES["mlp_loss_grad"]
    args = case.make_args(dict(N=37, d=d, h=h, K=K), np.float32, d * h)
    counts = np.random.default_rng(h).integers(0, 4, 37)  # weights as repeated rows
    copies = np.repeat(np.arange(37), counts)
    for sw in (None, counts.astype(np.float32)):
        rows = slice(None) if sw is None else copies
        want = case.reference(*as_float64((args[0][rows], args[1][rows], *args[2:])))
        got = {}
        for flat in (True, False):
            monkeypatch.setattr(opt, "CUDA_FUSED_FLAT", flat)
            got[flat] = kc.mlp_loss_grad(*args, sample_weight=sw, _path="fused")
        compare(case, got[True], want, np.float32)
        for a, b in zip(outputs(got[True]), outputs(got[False])):
            np.testing.assert_array_equal(a, b)


@gpu
@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_path_at_benchmark_widths(dtype):
    for d, h, K in [(64, 128, 10), (16, 32, 4)]:
        case = CASES["mlp_loss_grad"]
        args = case.make_args(dict(N=20000, d=d, h=h, K=K), dtype, 15)
        assert plan_fused(d, h, K, np.dtype(dtype).itemsize) is not None
        compare(case, kc.mlp_loss_grad(*args, _path="fused"), case.reference(*as_float64(args)),
                dtype)


# ---------------------------------------------------------------------------
# network_loss_grad and the layer kernels
# ---------------------------------------------------------------------------


def network_chunks(monkeypatch, rows=5):
    """Chunks of ``rows`` rows in the layered network path: several chunks of
    13 rows without the one-row chunks that ``SMALL``'s byte budget gives
    (each chunk is some twenty kernel launches, slow on the simulator)."""
    from fusedgrad.kernels.cuda import network as kn

    monkeypatch.setattr(kn, "_chunk_rows", lambda units, itemsize: rows)


def _network(units, dtype, seed, n=13):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, units[0])).astype(dtype)
    y = rng.integers(0, units[-1], n)
    Ws = [(rng.standard_normal((a, b)) * 1.5 / np.sqrt(a)).astype(dtype)
          for a, b in zip(units[:-1], units[1:])]
    bs = [(rng.standard_normal(b) * 0.5).astype(dtype) for b in units[1:]]
    return X, y, Ws, bs


def _network_reference(X, y, Ws, bs, activation, rows=None):
    X64 = X.astype(np.float64)
    if rows is not None:
        X64 = X64[rows]
    return ref.network_loss_grad(X64, y, [W.astype(np.float64) for W in Ws],
                                 [b.astype(np.float64) for b in bs], activation)


def _compare_network(got, want, dtype, rtol=None):
    tol = rtol if rtol is not None else (2e-5 if np.dtype(dtype) == np.float32 else 1e-12)
    loss, dWs, dbs = got
    assert np.asarray(loss).dtype == np.dtype(dtype)
    np.testing.assert_allclose(loss, want[0], rtol=tol)
    for g, w in zip(dWs + dbs, want[1] + want[2]):
        g = g.copy_to_host() if getattr(g, "__cuda_ndarray__", False) else g
        assert g.dtype == np.dtype(dtype) and g.shape == w.shape
        # normwise: a gradient entry near zero has no relative accuracy to test
        assert np.linalg.norm(g - w) <= tol * max(np.linalg.norm(w), 1e-30) * 10


@pytest.mark.parametrize("units", [[5, 3], [5, 6, 3], [4, 7, 5, 6, 3]],
                         ids=["no-hidden", "one-hidden", "three-hidden"])
@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu"])
def test_network_depths_and_activations(monkeypatch, units, activation):
    """Depths the table's rows (two hidden layers, both dtypes) do not cover."""
    network_chunks(monkeypatch)
    dtype = np.float32 if len(units) == 2 else np.float64
    X, y, Ws, bs = _network(units, dtype, 10)
    got = kc.network_loss_grad(X, y, Ws, bs, activation=activation)
    _compare_network(got, _network_reference(X, y, Ws, bs, activation), dtype)


@pytest.mark.parametrize("activation", ["logistic", "relu"])
def test_network_lecture_path_and_layered_path_agree(monkeypatch, activation):
    """One logistic hidden layer runs mlp_loss_grad's kernels; the general
    layered path, forced, gives the same result within rounding."""
    from fusedgrad.kernels.cuda import network as kn

    network_chunks(monkeypatch)
    X, y, Ws, bs = _network([5, 6, 3], np.float64, 11)
    want = _network_reference(X, y, Ws, bs, activation)
    _compare_network(kc.network_loss_grad(X, y, Ws, bs, activation=activation), want,
                     np.float64)
    monkeypatch.setattr(kn, "_is_lecture", lambda Ws, activation: False)
    _compare_network(kc.network_loss_grad(X, y, Ws, bs, activation=activation), want,
                     np.float64)


@pytest.mark.parametrize("activation", ["logistic", "tanh", "relu"])
def test_network_raw_products_branch(monkeypatch, activation):
    """With cuBLAS the backward products are stored raw and the derivative is
    applied by the bias-sum pass; the simulator has no cuBLAS, so that branch
    runs here on the numba products."""
    from fusedgrad.kernels.cuda import network as kn

    network_chunks(monkeypatch)
    monkeypatch.setattr(kn, "_raw_products", lambda: True)
    X, y, Ws, bs = _network([4, 7, 5, 3], np.float64, 12)
    _compare_network(kc.network_loss_grad(X, y, Ws, bs, activation=activation),
                     _network_reference(X, y, Ws, bs, activation), np.float64)


@pytest.mark.parametrize("on_device", [False, True])
@pytest.mark.parametrize("units", [[5, 6, 3], [4, 7, 5, 3]], ids=["lecture", "two-hidden"])
def test_network_rows(monkeypatch, on_device, units):
    network_chunks(monkeypatch)
    activation = "logistic"
    X, y_all, Ws, bs = _network(units, np.float64, 13, n=9)
    rows = np.array([8, 0, 3, 3, 7, 1, 2, 5, 4, 6, 0, 8, 2])
    y = y_all[rows]
    args = (X, y, Ws, bs, rows)
    if on_device:
        X, y, rows = (rt.cuda.to_device(a) for a in (X, y, rows))
        Ws = [rt.cuda.to_device(W) for W in Ws]
        bs = [rt.cuda.to_device(b) for b in bs]
    got = kc.network_loss_grad(X, y, Ws, bs, activation=activation, rows=rows)
    X0, y0, Ws0, bs0, rows0 = args
    _compare_network(got, _network_reference(X0, y0, Ws0, bs0, activation, rows0), np.float64)
    # X[rows] itself gives the same numbers
    direct = kc.network_loss_grad(X0[rows0], y0, Ws0, bs0, activation=activation)
    _compare_network(got, (float(direct[0]), direct[1], direct[2]), np.float64, rtol=1e-13)


@pytest.mark.parametrize("on_device", [False, True])
def test_network_errors_name_the_argument(on_device):
    X, y, Ws, bs = _network([5, 6, 4, 3], np.float64, 14, n=6)
    dev = (lambda a: rt.cuda.to_device(a)) if on_device else (lambda a: a)
    Xd, yd = dev(X), dev(y)
    Wd, bd = [dev(W) for W in Ws], [dev(b) for b in bs]
    with pytest.raises(ValueError, match=r"coefs\[1\]"):
        kc.network_loss_grad(Xd, yd, [Wd[0], dev(np.zeros((5, 4))), Wd[2]], bd,
                             activation="relu")
    with pytest.raises(ValueError, match=r"intercepts\[2\]"):
        kc.network_loss_grad(Xd, yd, Wd, [bd[0], bd[1], dev(np.zeros(4))], activation="relu")
    with pytest.raises(ValueError, match="activation"):
        kc.network_loss_grad(Xd, yd, Wd, bd, activation="softmax")
    with pytest.raises(ValueError, match="rows holds index 6"):
        kc.network_loss_grad(Xd, dev(y[:2]), Wd, bd, activation="relu",
                             rows=dev(np.array([0, 6])))
    with pytest.raises(ValueError, match="rows holds index -1"):
        kc.network_loss_grad(Xd, dev(y[:2]), Wd, bd, activation="relu",
                             rows=dev(np.array([-1, 2])))
    with pytest.raises(TypeError, match="rows must hold integer"):
        kc.network_loss_grad(Xd, dev(y[:2]), Wd, bd, activation="relu",
                             rows=dev(np.array([0.0, 1.0])))
    with pytest.raises(ValueError, match="y"):
        kc.network_loss_grad(Xd, yd, Wd, bd, activation="relu", rows=dev(np.array([0, 1])))
    with pytest.raises(ValueError, match="y holds label 3"):
        kc.network_loss_grad(Xd, dev(np.array([0, 1, 2, 3, 0, 1])), Wd, bd, activation="relu")
    with pytest.raises(ValueError, match="coefs and intercepts"):
        kc.network_loss_grad(Xd, yd, Wd, bd[:2], activation="relu")


@pytest.mark.parametrize("name", ["network_loss_grad/relu", "affine_activation/tanh",
                                  "affine_activation_backward/softmax"])
def test_layer_and_network_device_outputs(monkeypatch, name):
    network_chunks(monkeypatch)
    case = CASES[name]
    args = case.make_args(dict(N=13, d=5, h=6, K=3), np.float32, 15)
    got = case.cuda_kernel(*to_device(args))
    for o in outputs(got):
        if o is None or isinstance(o, (np.generic, float)):
            continue
        assert getattr(o, "__cuda_ndarray__", False), f"{type(o)} is not a device array"
    compare(case, host(got), case.reference(*as_float64(args)), np.float32)


@pytest.mark.parametrize("activation", ["tanh", "relu", "softmax"])
def test_affine_activation_out(activation):
    X, W, b = CASES["affine_sigmoid"].make_args(dict(N=13, d=5, h=6), np.float64, 16)
    out = rt.cuda.device_array((13, 6), np.float64)
    got = kc.affine_activation(X, W, b, out, activation=activation)
    assert got is out
    from cases import affine_activation_reference

    np.testing.assert_allclose(out.copy_to_host(),
                               affine_activation_reference(X, W, b, activation=activation),
                               rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------
# Sample weights
# ---------------------------------------------------------------------------

#: Integer weights of 13 rows (0 drops a row, 3 is three copies of it).
COUNTS = np.array([0, 1, 3, 2, 0, 1, 1, 2, 3, 0, 1, 2, 1])


@pytest.mark.parametrize("path", ["fused", "layered"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_mlp_weights_are_repeated_rows(path, dtype):
    """Integer weights against the NumPy reference of the repeated rows."""
    case = CASES["mlp_loss_grad"]
    X, y, W1, b1, W2, b2 = case.make_args(dict(N=13, d=5, h=6, K=3), dtype, 6)
    copies = np.repeat(np.arange(13), COUNTS)
    want = case.reference(*as_float64((X[copies], y[copies], W1, b1, W2, b2)))
    got = kc.mlp_loss_grad(X, y, W1, b1, W2, b2, sample_weight=COUNTS.astype(dtype), _path=path)
    compare(case, got, want, dtype)


@pytest.mark.parametrize("on_device", [False, True])
def test_network_rows_with_weights(monkeypatch, on_device):
    """The layered path with ``rows`` and the weights of those rows."""
    network_chunks(monkeypatch)
    X, y_all, Ws, bs = _network([4, 7, 5, 3], np.float64, 15, n=9)
    rows = np.array([8, 0, 3, 3, 7, 1, 2, 5, 4, 6, 0, 8, 2])
    y = y_all[rows]
    want = _network_reference(X, y[COUNTS > 0].repeat(COUNTS[COUNTS > 0]), Ws, bs, "tanh",
                              rows[COUNTS > 0].repeat(COUNTS[COUNTS > 0]))
    w = COUNTS.astype(np.float64)
    if on_device:
        X, y, rows, w = (rt.cuda.to_device(a) for a in (X, y, rows, w))
        Ws = [rt.cuda.to_device(W) for W in Ws]
        bs = [rt.cuda.to_device(b) for b in bs]
    got = kc.network_loss_grad(X, y, Ws, bs, activation="tanh", rows=rows, sample_weight=w)
    _compare_network(got, want, np.float64)


@pytest.mark.parametrize("staged_max_k", [32, 2])  # staged tile; a block per row
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_weights_are_repeated_rows(monkeypatch, staged_max_k, dtype):
    monkeypatch.setattr(opt, "CUDA_SOFTMAX_STAGED_MAX_K", staged_max_k)
    case = CASES["softmax_cross_entropy"]
    Z, y = case.make_args(dict(N=13, K=5), dtype, 7)
    copies = np.repeat(np.arange(13), COUNTS)
    loss_want, dZ_copies = case.reference(*as_float64((Z[copies], y[copies])))
    loss, dZ = kc.softmax_cross_entropy(Z, y, sample_weight=COUNTS.astype(dtype))
    tol = 2e-6 if np.dtype(dtype) == np.float32 else 1e-13
    np.testing.assert_allclose(loss, loss_want, rtol=tol)
    # row i of dZ is the sum of its copies' rows
    want = np.zeros(dZ.shape)
    np.add.at(want, copies, dZ_copies)
    np.testing.assert_allclose(dZ, want, rtol=tol, atol=tol * np.abs(want).max())


def test_weights_are_checked():
    case = CASES["mlp_loss_grad"]
    args = case.make_args(dict(N=13, d=5, h=6, K=3), np.float64, 6)
    for w, error, match in ((np.ones(13, np.float32), TypeError, "sample_weight has dtype"),
                            (np.ones(12), ValueError, r"sample_weight must have shape \(13,\)"),
                            (-np.ones(13), ValueError, "sample_weight must be non-negative"),
                            (np.r_[np.ones(12), np.nan], ValueError, "sample_weight contains NaN"),
                            (np.r_[np.ones(12), np.inf], ValueError, "sample_weight contains NaN"),
                            (np.zeros(13), ValueError, "positive sum")):
        with pytest.raises(error, match=match):
            kc.mlp_loss_grad(*args, sample_weight=w)
        with pytest.raises(error, match=match):
            kc.softmax_cross_entropy(rt.cuda.to_device(np.ones((13, 3))), args[1],
                                     sample_weight=rt.cuda.to_device(w))


@pytest.mark.parametrize("dtype", DTYPES)
def test_device_weights_stay_on_the_device(monkeypatch, dtype):
    """Device weights are checked and summed by a kernel, not copied: the
    kernel gets the caller's array itself; the sum is the float64 sum, and
    a weight of -2.5 among them is named."""
    monkeypatch.setattr(opt, "CUDA_TPB", 32)  # several blocks of the reduction
    rng = np.random.default_rng(3)
    w = rng.random(1000).astype(dtype)
    wd = rt.cuda.to_device(w)
    got, total = rt.weights(wd, dtype, 1000)
    assert got is wd
    np.testing.assert_allclose(total, np.sum(w, dtype=np.float64), rtol=1e-13)
    w[[10, 700]] = [-1.0, -2.5]
    with pytest.raises(ValueError, match=r"non-negative: it holds -2\.5"):
        rt.weights(rt.cuda.to_device(w), dtype, 1000)
    # without check_finite: not checked, still summed
    _, total = rt.weights(rt.cuda.to_device(w), dtype, 1000, check_finite=False)
    np.testing.assert_allclose(total, np.sum(w, dtype=np.float64), rtol=1e-12)
    # a strided view is made contiguous on the device
    wide = rt.cuda.to_device(np.repeat(np.abs(w), 2))
    got, total = rt.weights(wide[::2], dtype, 1000)
    np.testing.assert_array_equal(got.copy_to_host(), np.abs(w))


def _no_scratch_allocated(monkeypatch, step):
    """Run ``step`` twice; the shapes of the device arrays it allocated, other
    than one-number sums."""
    made = []
    real = rt.cuda.device_array
    monkeypatch.setattr(rt.cuda, "device_array", lambda *a, **k: made.append(a) or real(*a, **k))
    try:
        step()
        step()
    finally:
        monkeypatch.setattr(rt.cuda, "device_array", real)
    return [a for a in made if np.prod(a[0]) > 1]


@pytest.mark.parametrize("path", ["fused", "layered", "network rows"])
def test_steps_with_a_workspace_allocate_nothing(monkeypatch, path):
    """A training loop's steps (``loss_grad_device`` with one ``work`` dict) give
    the results of steps without it and, after the first, allocate no scratch
    on the device (the blocks' partial sums, a chunk's activations; with
    ``rows``, the gathered rows)."""
    from fusedgrad.kernels.cuda import mlp as km
    from fusedgrad.kernels.cuda import network as kn

    X, y, Ws, bs = _network([5, 6, 3], np.float64, 21)
    rows = np.array([3, 0, 12, 7, 7, 1, 9, 2])
    # layered: chunks of 5 rows (13 rows: three chunks)
    monkeypatch.setattr(opt, "CUDA_CHUNK_BYTES", 5 * (6 + 3) * 8 if path == "layered" else 1 << 20)
    Xd, rd = rt.cuda.to_device(X), rt.cuda.to_device(rows)
    yd = rt.cuda.to_device(y[rows] if path == "network rows" else y)
    Wd = [rt.cuda.to_device(W) for W in Ws]
    bd = [rt.cuda.to_device(b) for b in bs]
    size = kn.flat_size([5, 6, 3])

    def step(flat, loss, work):
        if path == "network rows":
            kn.loss_grad_device(Xd, yd, Wd, bd, "logistic", flat, loss, rows=rd, work=work)
        else:
            km.loss_grad_device(Xd, yd, Wd[0], bd[0], Wd[1], bd[1], flat, loss, _path=path,
                                work=work)

    want_flat, want_loss = rt.cuda.device_array(size), rt.cuda.device_array(1)
    step(want_flat, want_loss, None)
    work = {}
    flat, loss = rt.cuda.device_array(size), rt.cuda.device_array(1)
    step(flat, loss, work)
    assert work
    assert not _no_scratch_allocated(monkeypatch, lambda: step(flat, loss, work))
    assert _no_scratch_allocated(monkeypatch, lambda: step(flat, loss, None))  # it would
    np.testing.assert_array_equal(flat.copy_to_host(), want_flat.copy_to_host())
    np.testing.assert_array_equal(loss.copy_to_host(), want_loss.copy_to_host())


@pytest.mark.parametrize("m", [1, 3, 8, 10, 37])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_partials_against_numpy(monkeypatch, m, dtype):
    """The fixed-order second pass over per-block partials, by both kernels (a
    block per group of columns, for losses and bias gradients; a thread per
    column, for wide outputs): ``out (+)= scale * P.sum(axis=0)``, with
    several column groups per block and lanes left idle when the block's
    threads do not divide evenly among the columns."""
    rng = np.random.default_rng(m)
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    for max_cols in (1024, 0):
        monkeypatch.setattr(opt, "CUDA_SUM_BLOCK_MAX_COLS", max_cols)
        for G in (1, 2, 13):
            P = rng.standard_normal((G, m)).astype(dtype)
            base = rng.standard_normal(m).astype(dtype)
            for accumulate in (False, True):
                out = rt.cuda.to_device(base.copy())
                rt.sum_partials(rt.cuda.to_device(P), out, 0.25, accumulate)
                want = 0.25 * P.astype(np.float64).sum(axis=0)
                if accumulate:
                    want += base
                np.testing.assert_allclose(out.copy_to_host(), want, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("pairs", [True, False])
def test_sum_partials_pairs_against_numpy(monkeypatch, pairs):
    """Two second passes in one launch (``also=``): each output is its own
    ``out (+)= scale * P.sum(axis=0)``, whatever the two kernels' modes (a
    block per column group or a thread per column), dtypes, block counts and
    accumulate flags; one launch with ``CUDA_SUM_PAIRS``, two without."""
    rng = np.random.default_rng(5)
    monkeypatch.setattr(opt, "CUDA_SUM_PAIRS", pairs)
    launches = []
    real = rt.launch
    monkeypatch.setattr(rt, "launch", lambda *a: launches.append(a[0]) or real(*a))
    cases = [  # (m, G, dtype) of the two sets
        ((37, 13, np.float32), (1, 13, np.float64)),  # a gradient and its loss
        ((3, 1, np.float64), (40, 6, np.float32)),  # a thread per column first
        ((9, 5, np.float64), (2, 1, np.float64)),  # ... second
        ((70, 4, np.float32), (33, 9, np.float32)),  # several column groups each
    ]
    for max_cols in (1024, 40):
        monkeypatch.setattr(opt, "CUDA_SUM_BLOCK_MAX_COLS", max_cols)
        for (ma, Ga, da), (mb, Gb, db) in cases:
            for acc_a, acc_b in ((False, False), (True, False), (False, True)):
                Pa, Pb = rng.standard_normal((Ga, ma)).astype(da), \
                    rng.standard_normal((Gb, mb)).astype(db)
                base_a, base_b = rng.standard_normal(ma).astype(da), \
                    rng.standard_normal(mb).astype(db)
                oa, ob = rt.cuda.to_device(base_a.copy()), rt.cuda.to_device(base_b.copy())
                del launches[:]
                rt.sum_partials(rt.cuda.to_device(Pa), oa, 0.25, acc_a,
                                also=(rt.cuda.to_device(Pb), ob, -3.0, acc_b))
                assert len(launches) == (1 if pairs else 2)
                for out, P, scale, acc, base, dt in ((oa, Pa, 0.25, acc_a, base_a, da),
                                                     (ob, Pb, -3.0, acc_b, base_b, db)):
                    want = scale * P.astype(np.float64).sum(axis=0) + (base if acc else 0)
                    tol = 1e-6 if dt == np.float32 else 1e-12
                    np.testing.assert_allclose(out.copy_to_host(), want, rtol=tol, atol=tol)


class FakePool:
    """CuPy's ``empty`` as the wrappers use it: an owner object exporting the
    CUDA array interface. Its memory is a simulator device array, which
    ``_wrap`` (patched below) hands back."""

    def __init__(self):
        self.owners = []

    def empty(self, shape, dtype):
        owner = type("Owner", (), {})()
        owner.array = rt.cuda.device_array(shape, dtype)
        owner.__cuda_array_interface__ = {"shape": tuple(np.atleast_1d(shape)), "stream": 1,
                                          "typestr": np.dtype(dtype).str, "version": 3}
        self.owners.append(owner)
        return owner


@pytest.mark.parametrize("name", ["softmax_cross_entropy", "mlp_loss_grad", "ols_loss_grad",
                                  "gram", "affine_sigmoid_backward"])
def test_outputs_and_scratch_come_from_the_pool(monkeypatch, name):
    """With a pool (CuPy's on a GPU) every array a wrapper allocates comes
    from it, none from numba's ``cuda.device_array``, the stream of CuPy's
    interface is dropped (ours is the same legacy stream), and the results
    are those of the reference."""
    case = CASES[name]
    host_args = case.make_args(dict(N=13, d=5, h=6, K=3), np.float32, 7)
    args = to_device(host_args)
    case.cuda_kernel(*args)  # build the kernels (and their cached dummies) first
    fake = FakePool()
    wrapped = []
    monkeypatch.setattr(rt, "pool", lambda: fake)
    monkeypatch.setattr(rt, "_wrap", lambda desc, owner: wrapped.append(desc) or owner.array)
    numba_allocs = count_allocations(monkeypatch)
    got = case.cuda_kernel(*args)
    compare(case, host(got), case.reference(*as_float64(host_args)), np.float32)
    assert len(numba_allocs) == len(fake.owners) > 0  # the fake's own memory only
    assert all("stream" not in desc for desc in wrapped) and len(wrapped) == len(fake.owners)


@pytest.mark.parametrize("choice, have_cupy, outcome", [
    ("numba", True, None), ("auto", True, "cupy"), ("auto", False, None), ("cupy", True, "cupy"),
    ("cupy", False, RuntimeError), ("malloc", True, ValueError)])
def test_pool_choice(monkeypatch, choice, have_cupy, outcome):
    """``CUDA_ALLOCATOR`` on a GPU: CuPy's pool when asked or, with "auto",
    when CuPy imports; a clear error when "cupy" cannot be had or the choice
    is unknown."""
    cupy = object()
    monkeypatch.setattr(rt, "simulator", lambda: False)
    monkeypatch.setattr(rt, "_cupy", lambda: cupy if have_cupy else None)
    monkeypatch.setattr(opt, "CUDA_ALLOCATOR", choice)
    if outcome in (ValueError, RuntimeError):
        with pytest.raises(outcome, match="CUDA_ALLOCATOR"):
            rt.pool()
    else:
        assert rt.pool() is (cupy if outcome == "cupy" else None)


def test_gpu_check_smoke(tmp_path):
    """``benchmarks/gpu_check.py --smoke``: the script a lent GPU runs once,
    here under the simulator with tiny shapes. Every check passes and every
    section ran without a row raising, so a device run is not spent on a
    broken script."""
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
    if not script.exists():
        pytest.skip("benchmarks/ is not here")
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, str(script), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["mode"] == "smoke" and not result.get("section_errors")
    assert not result.get("skipped")  # no section past the budget
    checks = result["checks"]
    assert len(checks) > 10 and all(r["status"] == "ok" for r in checks), \
        [r for r in checks if r["status"] != "ok"]
    timed = [r for rows in result["timings"].values() if isinstance(rows, list) for r in rows]
    timed += result["ablations"] + result["models"]
    assert len(timed) > 40 and not [r for r in timed if "error" in r]


def test_cuda_host_cost_runs():
    """``benchmarks/cuda_host_cost.py`` (the wrappers' host cost with launches
    faked, on the real numba.cuda without a GPU) runs, and each wrapper makes
    the launches and copies it should: a training step launches its kernel
    and its second passes (one launch) and copies nothing; ``affine_sigmoid``
    one launch. Its
    replay of those launches on numba's launch code finds every one packed by
    ``rt.launch`` (no argument type left to numba's launch)."""
    import os
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "cuda_host_cost.py"
    if not script.exists():
        pytest.skip("benchmarks/ is not here")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, str(script), "--reps", "5"], capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    wrappers, launch_code, slicing = proc.stdout.strip().split("\n\n")
    assert slicing.startswith("a row slice")
    rows = {line[:58].strip(): line[58:].split() for line in wrappers.splitlines()[1:]}
    assert len(rows) == 14
    # the five inputs' NaN/inf counts in two launches, the fused kernel, its sums
    assert rows["mlp_loss_grad 64, 128, 10, check_finite"][1:3] == ["4,", "3"]
    # the second table: the same calls' launches replayed on numba's launch
    # code and on rt.launch, which must pack every one of them itself
    replayed = {line[:58].strip(): [float(v) for v in line[58:].split()]
                for line in launch_code.splitlines()[1:]}
    assert set(replayed) == set(rows)
    for label, (launches, numba_us, fast_us, ratio, packed) in replayed.items():
        assert launches == float(rows[label][1].rstrip(",")) and packed == launches, label
        assert numba_us > 0 and fast_us > 0
    # the fused kernel, then its gradient's and loss's second passes in one launch
    assert rows["mlp.loss_grad_device 16, 32, 4 (a training step)"][1:3] == ["2,", "0"]
    # a minibatch step: gather, fused kernel, second passes, loss sum, update
    assert rows["MLPClassifier.fit sgd, batch 200, a step"][1].startswith("5.0")
    assert rows["affine_sigmoid 16 -> 32, out="][1:3] == ["1,", "0"]
    assert all(float(r[0]) > 0 for r in rows.values())
