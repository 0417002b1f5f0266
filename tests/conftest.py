"""Session setup: numba's CUDA simulator for the CUDA kernel tests.

``NUMBA_ENABLE_CUDASIM`` is read once, when numba is first imported, so it is
set here: pytest imports this file before any test module (and so before
numba). Under the simulator the kernels of :mod:`fusedgrad.kernels.cuda` run
on the CPU, which is how CI tests them; the CPU kernels are unaffected.
(``tests/test_cuda.py`` fails loudly if numba was imported earlier, by a
plugin say, and the simulator is therefore off on a machine without a GPU.)

Set ``FUSEDGRAD_TEST_GPU=1`` to test on a real GPU instead; the tests marked
``gpu`` run only then.

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

import os
import sys

if os.environ.get("FUSEDGRAD_TEST_GPU", "").strip().lower() not in ("1", "true", "yes"):
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")


def _shared_array(self, shape, dtype, alignment=None):
    """``FakeCUDAShared.array`` of numba-cuda's simulator, with its lookup
    and creation of the block's array for a source line under a lock."""
    if alignment is not None or shape == 0:  # these paths key on no line
        return _SHARED_ARRAY(self, shape, dtype, alignment)
    if isinstance(dtype, _kernelapi.types.Type):
        dtype = _kernelapi.numpy_support.as_dtype(dtype)
    frame = sys._getframe(1)
    caller = (frame.f_code.co_filename, frame.f_lineno)
    with _SHARED_LOCK:
        res = self._allocations.get(caller)
        if res is None:
            res = self._allocations[caller] = _kernelapi.np.empty(shape, dtype)
    return res


if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    import threading

    try:
        from numba.cuda.simulator import kernelapi as _kernelapi
    except ImportError:  # numba-cuda not installed: the CUDA tests skip
        _kernelapi = None
    if _kernelapi is not None:
        _SHARED_ARRAY = _kernelapi.FakeCUDAShared.array
        _SHARED_LOCK = threading.Lock()
        _kernelapi.FakeCUDAShared.array = _shared_array
        sys.setswitchinterval(1e-5)
