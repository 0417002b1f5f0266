"""numba-cuda's simulator, faster, for the tests and ``gpu_check.py --smoke``.

The simulator runs each CUDA thread of a block as a Python thread, and its
block manager polls them in a loop that holds the GIL for a whole switch
interval (5 ms by default) each time it gets it: a kernel with barriers waits
that long at every hand-over. Under the simulator the interval is 10 µs here,
which made the simulated tests 5-7 times faster (an L-BFGS fit of a
two-hidden-layer network 81 s -> 10 s, the thin-product tests 76 s -> 11 s).
The threads of a block then interleave far more finely, which exposed a race
in the simulator itself (numba-cuda 0.30.4): ``cuda.shared.array`` looks up
the block's array for its source line and creates it when missing, without a
lock, so two threads could each create their own and the block's shared
memory split in two (four tests failed: wrong sums, garbage reads).
:func:`_shared_array` is that method with the lookup under a lock; with it
every test passes as with the default interval.
"""

import sys
import threading

_LOCK = threading.Lock()
_ORIGINAL = None  # the simulator's FakeCUDAShared.array
_API = None  # numba.cuda.simulator.kernelapi


def _shared_array(self, shape, dtype, alignment=None):
    """``FakeCUDAShared.array`` of numba-cuda's simulator, with its lookup
    and creation of the block's array for a source line under a lock."""
    if alignment is not None or shape == 0:  # these paths key on no line
        return _ORIGINAL(self, shape, dtype, alignment)
    if isinstance(dtype, _API.types.Type):
        dtype = _API.numpy_support.as_dtype(dtype)
    frame = sys._getframe(1)
    caller = (frame.f_code.co_filename, frame.f_lineno)
    with _LOCK:
        res = self._allocations.get(caller)
        if res is None:
            res = self._allocations[caller] = _API.np.empty(shape, dtype)
    return res


def speed_up(interval=1e-5):
    """Under the simulator (``NUMBA_ENABLE_CUDASIM=1`` before numba is
    imported): the shared-array lookup under a lock, then a switch interval of
    ``interval`` seconds. Does nothing where numba-cuda is not installed."""
    global _ORIGINAL, _API
    try:
        from numba.cuda.simulator import kernelapi
    except ImportError:  # numba-cuda not installed: the CUDA tests skip
        return
    if kernelapi.FakeCUDAShared.array is not _shared_array:
        _API, _ORIGINAL = kernelapi, kernelapi.FakeCUDAShared.array
        kernelapi.FakeCUDAShared.array = _shared_array
    sys.setswitchinterval(interval)
