"""``cuda._runtime.launch`` and ``rows``: the CUDA wrappers' own argument
packing against numba's launch, and their row slices against numba's
slicing, without a GPU.

The simulator replaces numba's launch machinery, so these tests need the real
numba.cuda: under the simulator (the test session's default) the module runs
itself again in a subprocess with ``NUMBA_ENABLE_CUDASIM=0``. There, without a
driver, a kernel "compiled" for a signature is a shell of numba's compiled
kernel (``_Kernel``) added to a real dispatcher, device arrays are numba
device arrays over made-up addresses, and cuda.core's ``launch``, the driver
call at the end of numba's launch and of ``launch``, is replaced by a recorder.
What numba would hand the driver is then compared with what ``launch`` hands
it, parameter by parameter.
"""

import ctypes
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
pytest.importorskip("numba_cuda")
# the shells' launches have small grids, about which numba warns
pytestmark = pytest.mark.filterwarnings("ignore:Grid size")

if SIMULATOR:

    def test_launch_without_the_simulator():
        """Run this module's tests on the real numba.cuda (no GPU needed)."""
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
        env.pop("PYTEST_XDIST_WORKER", None)
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
             "-p", "no:randomly", __file__],
            capture_output=True, text=True, timeout=600, env=env,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        out = proc.stdout[-4000:] + proc.stderr[-4000:]
        assert proc.returncode == 0, out
        assert " passed" in proc.stdout and "skipped" not in proc.stdout, out

else:
    from numba import cuda, types
    from numba.cuda import dispatcher as nb_dispatcher
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    from numba.cuda.cudadrv.driver import MemoryPointer
    from numba.cuda.typing import signature

    from fusedgrad.kernels import _options as opt
    from fusedgrad.kernels.cuda import _runtime as rt

    ADDRESS = [0x7F0000000000]

    def device(shape, dtype=np.float32, order="C", strides=None, stream=0):
        """A numba device array over numba's memory pointer to a made-up
        address (no driver needed; nothing is allocated)."""
        host = np.empty(shape, dtype, order=order)
        memory = MemoryPointer(None, ctypes.c_void_p(ADDRESS[0]), host.nbytes)
        ADDRESS[0] += host.nbytes + 256
        return DeviceNDArray(host.shape, strides or host.strides, host.dtype, stream=stream,
                             gpu_data=memory)

    @pytest.fixture
    def driver(monkeypatch):
        """cuda.core's ``launch`` replaced by a recorder, as numba's launch
        and :func:`rt.launch` call it; returns the list of launches."""
        calls = []

        def record(stream, config, kernel, *params):
            calls.append(dict(stream=stream, grid=config.grid, block=config.block,
                              shmem=config.shmem_size, cooperative=config.is_cooperative,
                              kernel=kernel, params=params))

        monkeypatch.setattr(nb_dispatcher, "launch", record)
        monkeypatch.setattr(opt, "CUDA_FAST_LAUNCH", True)
        monkeypatch.setattr(rt, "_LAUNCHERS", {})
        return calls

    def compiled(dispatcher, *argtypes):
        """Register a shell of a kernel compiled for ``argtypes``: numba's
        launch finds it as it would a compiled overload."""
        lib = SimpleNamespace(get_cufunc=lambda: SimpleNamespace(kernel=("cufunc", argtypes)))
        kernel = nb_dispatcher._Kernel._rebuild(
            cooperative=False, name="k", signature=signature(types.none, *argtypes),
            codelibrary=lib, debug=False, lineinfo=False, call_helper=None, extensions=[])
        dispatcher.add_overload(kernel, tuple(argtypes))
        return kernel

    def same(a, b):
        """Two recorded launches hand the driver the same thing: the same
        configuration, and parameters of the same types and values."""
        def canonical(call):
            params = [(type(x), x.value if isinstance(x, ctypes._SimpleCData) else x)
                      for x in call["params"]]
            return {k: v for k, v in call.items() if k != "params"}, params

        return canonical(a) == canonical(b)

    def numba_launch(kernel, grid, block, *args):
        with pytest.MonkeyPatch.context() as m:
            m.setattr(opt, "CUDA_FAST_LAUNCH", False)
            rt.launch(kernel, grid, block, *args)

    def every_type():
        """Arguments of every kind the wrappers pass, and then some: 1-3-D
        arrays in C, F and A layouts (a slice, a broadcast axis), integer
        arrays, Python and NumPy scalars."""
        return (
            device(100, np.float32),
            device((7, 5), np.float64),
            device((6, 5), np.float32, order="F"),
            device((20, 8), np.float64, strides=(192, 8)),  # every other row
            device((3, 4, 5), np.float32),
            device((9, 1), np.float32, strides=(4, 0)),
            device(50, np.uint8),
            device(50, np.int32),
            device(50, np.int64),
            123456789,
            0.125,
            True,
            np.float32(2.5),
            np.float64(-3.25),
            np.int64(-7),
            np.int32(11),
            np.uint64(1 << 40),
            np.bool_(False),
        )

    def typed(args):
        return tuple(cuda.jit(lambda: None).typeof_pyval(a) for a in args)

    def test_the_argument_types_are_numbas():
        """The test's arrays have the layouts they are meant to have."""
        layouts = [t.layout for t in typed(every_type()[:6])]
        assert layouts == ["C", "C", "F", "A", "C", "A"]

    def test_launch_hands_the_driver_what_numba_does(driver):
        """Every kind of argument: the first launch is numba's, the next ones
        are packed by rt.launch, on other arrays of the same types, and each
        gives the driver exactly what numba's launch gives it."""

        @cuda.jit
        def kernel(*args):
            pass

        args = every_type()
        compiled(kernel, *typed(args))
        numba_launch(kernel, 7, 128, *args)
        rt.launch(kernel, 7, 128, *args)  # numba's launch, then the self-check
        key = next(iter(rt._LAUNCHERS))
        assert rt._LAUNCHERS[key] is not None  # the fast path is set up
        assert len(driver) == 2 and same(driver[0], driver[1])

        for grid, block in ((7, 128), ((3, 2), (16, 8)), (1, 1)):
            other = every_type()  # new addresses, the same types
            numba_launch(kernel, grid, block, *other)
            prepared = []
            with pytest.MonkeyPatch.context() as m:
                real = nb_dispatcher._Kernel._prepare_args
                m.setattr(nb_dispatcher._Kernel, "_prepare_args",
                          lambda self, *a: prepared.append(1) or real(self, *a))
                rt.launch(kernel, grid, block, *other)
            assert not prepared  # packed by rt.launch, not numba
            assert same(driver[-2], driver[-1]), (driver[-2], driver[-1])
            assert driver[-1]["params"] != driver[0]["params"]  # the new addresses
        assert len(rt._LAUNCHERS) == 1

    def test_launch_takes_the_overload_of_each_layout(driver):
        """A C-, an F- and an A-layout array of one dtype and dimension are
        three numba types, three compiled kernels, three keys."""

        @cuda.jit
        def kernel(a, n):
            pass

        arrays = [device((6, 5)), device((6, 5), order="F"), device((6, 5), strides=(40, 4)),
                  device((6, 1), strides=(4, 0))]  # numba types a broadcast axis "A"
        for a in arrays:
            compiled(kernel, *typed((a, 3)))
        for _ in range(3):
            for a in arrays:
                rt.launch(kernel, 2, 32, a, 3)
        kernels = [call["kernel"][1][0].layout for call in driver]
        assert kernels == ["C", "F", "A", "A"] * 3
        assert len(rt._LAUNCHERS) == 3 and all(rt._LAUNCHERS.values())  # two "A"

    def test_a_packing_numba_does_not_match_is_left_to_numba(driver, monkeypatch):
        """The self-check: a packing that differs from numba's (strides before
        the shape here) is never used; numba launches that key for good."""

        @cuda.jit
        def kernel(a, b):
            pass

        def wrong(packers, args):
            params = []
            for a in args:
                params += (0, 0, a.size, a.dtype.itemsize, a.device_ctypes_pointer.value)
                params += a.strides
                params += a.shape
            return params

        monkeypatch.setattr(rt, "_pack", wrong)
        a, b = device((6, 5)), device((6, 5))
        compiled(kernel, *typed((a, b)))
        for _ in range(3):
            numba_launch(kernel, 2, 32, a, b)
            rt.launch(kernel, 2, 32, a, b)
        assert list(rt._LAUNCHERS.values()) == [None]
        assert all(same(driver[i], driver[i + 1]) for i in range(0, 6, 2))
        assert driver[0]["params"][5:7] == (6, 5)  # numba's: the shape first

    def test_the_self_check_compares_types_and_values():
        """Parameters agree only when each has numba's type and value (NaN
        agreeing with NaN)."""
        c = ctypes
        assert rt._same_params([1, c.c_float(np.nan), True], [1, c.c_float(np.nan), True])
        for ours, numbas in (([c.c_int64(3)], [c.c_int32(3)]), ([1], [True]), ([1], [1.0]),
                             ([c.c_double(0.5)], [c.c_double(0.25)]), ([2], [3]),
                             ([1, 2], [1])):
            assert not rt._same_params(ours, numbas), (ours, numbas)

    def test_arguments_it_does_not_pack_go_to_numba():
        """A CuPy or PyTorch array, a host array, a 0-d device array, an
        integer beyond int64, anything else: no key, numba's launch."""

        class CudaArray:
            __cuda_array_interface__ = {"shape": (3,), "typestr": "<f4", "data": (1, False),
                                        "version": 3}

        _, device_array, _ = rt._fast_types()
        for arg in (CudaArray(), np.zeros(3, np.float32), device(()), 1 << 64, "x", None,
                    1 + 2j):
            assert rt._launch_arg_key(arg, device_array) is None
        assert rt._launch_arg_key(device(3), device_array) == (np.dtype(np.float32), 1, "C")
        assert rt._launch_arg_key(np.float32(1), device_array) == np.dtype(np.float32)
        assert rt._launch_arg_key(3, device_array) is int

    def test_stand_ins_and_the_option_go_to_numba(driver, monkeypatch):
        """A kernel that is not numba's dispatcher (the benchmarks' stand-ins)
        is launched by indexing it, and ``CUDA_FAST_LAUNCH = False`` keeps
        numba's launch."""
        launched = []

        class StandIn:
            def __getitem__(self, config):
                return lambda *args: launched.append((config, args))

        a = device(4)
        rt.launch(StandIn(), 3, 64, a, 2)
        assert launched == [((3, 64), (a, 2))]

        @cuda.jit
        def kernel(a):
            pass

        compiled(kernel, *typed((a,)))
        monkeypatch.setattr(opt, "CUDA_FAST_LAUNCH", False)
        for _ in range(2):
            rt.launch(kernel, 1, 32, a)
        assert len(driver) == 2 and not rt._LAUNCHERS

    def test_rows_is_numbas_slice():
        """``rt.rows(a, i, j)`` builds what numba's ``a[i:j]`` builds: the same
        shape, strides, dtype, stream, numba type and device memory (a view of
        ``a``'s, of the rows' bytes)."""
        for a in (device((50, 7)), device(30, np.int32), device((9, 4, 3), np.float64),
                  device((12, 1), np.uint8, stream="a stream")):
            n = a.shape[0]
            for start, stop in ((0, n), (0, 1), (3, n - 2), (n - 1, n), (2, 5)):
                # numba's a[start:stop] without its check for a current context
                ours, numbas = rt.rows(a, start, stop), a._do_getitem(slice(start, stop))
                assert type(ours) is type(numbas)
                for attr in ("shape", "strides", "dtype", "stream", "_numba_type_"):
                    assert getattr(ours, attr) == getattr(numbas, attr), (attr, start, stop)
                assert ours.device_ctypes_pointer.value == numbas.device_ctypes_pointer.value
                assert (ours.device_ctypes_pointer.value - a.device_ctypes_pointer.value
                        == start * a.strides[0])
                assert type(ours.gpu_data) is type(numbas.gpu_data)
                assert ours.gpu_data.size == numbas.gpu_data.size == (stop - start) * a.strides[0]

    def test_rows_leaves_the_rest_to_numba(monkeypatch):
        """Rows of an array that is not C-contiguous, an empty or out-of-range
        range, anything but a numba device array: numba's (or NumPy's) slice."""
        sliced = []
        real = DeviceNDArray._do_getitem  # numba's slicing without a context check
        monkeypatch.setattr(DeviceNDArray, "__getitem__",
                            lambda self, item: sliced.append(item) or real(self, item))
        F = device((6, 5), order="F")
        for a, start, stop in ((F, 1, 3), (device((6, 5)), 0, 7), (device(6), -3, 6)):
            ours = rt.rows(a, start, stop)
            assert sliced[-1] == slice(start, stop)
            assert ours.shape == real(a, slice(start, stop)).shape
        host = np.arange(10)
        assert np.array_equal(rt.rows(host, 2, 4), host[2:4])
        n = len(sliced)
        rt.rows(device((6, 5)), 1, 4)
        assert len(sliced) == n  # the fast path indexes nothing

    def test_launch_configures_as_numba_before_cuda_core_1(driver, monkeypatch):
        """Before cuda.core 1.0 the cooperative flag had another name; the
        launch configuration is built as numba builds it either way."""

        class OldLaunchConfig:
            def __init__(self, grid, block, shmem_size, cooperative_launch):
                self.grid, self.block, self.shmem_size = grid, block, shmem_size
                self.is_cooperative = ("old name", cooperative_launch)

        monkeypatch.setattr(nb_dispatcher, "CUDA_CORE_GE_1_0", False)
        monkeypatch.setattr(nb_dispatcher, "LaunchConfig", OldLaunchConfig)

        @cuda.jit
        def kernel(a, x):
            pass

        a = device((8, 3))
        compiled(kernel, *typed((a, 1.5)))
        for _ in range(2):
            numba_launch(kernel, 4, 64, a, 1.5)
            rt.launch(kernel, 4, 64, a, 1.5)
        assert all(rt._LAUNCHERS.values())
        assert driver[-1]["cooperative"] == ("old name", False)
        assert same(driver[-2], driver[-1])

    def test_small_grids_do_not_warn(driver):
        """numba warns about a grid of fewer than 128 blocks when it is
        configured; the wrappers' launches (second passes, small calls) use
        such grids on purpose and do not pass the warning on. The user's own
        ``kernel[grid, block]`` keeps it."""
        import warnings

        @cuda.jit
        def kernel(a):
            pass

        a = device(4)
        compiled(kernel, *typed((a,)))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for grid in (1, 2, 1, (3, 1)):
                rt.launch(kernel, grid, 32, a)
            assert not [w for w in caught if "under-utilization" in str(w.message)]
            kernel[5, 32](a)
            assert [w for w in caught if "under-utilization" in str(w.message)]
        assert len(driver) == 5
