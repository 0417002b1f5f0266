"""Session setup: numba's CUDA simulator for the CUDA kernel tests.

``NUMBA_ENABLE_CUDASIM`` is read once, when numba is first imported, so it is
set here: pytest imports this file before any test module (and so before
numba). Under the simulator the kernels of :mod:`fusedgrad.kernels.cuda` run
on the CPU, which is how CI tests them; the CPU kernels are unaffected.
(``tests/test_cuda.py`` fails loudly if numba was imported earlier, by a
plugin say, and the simulator is therefore off on a machine without a GPU.)

Set ``FUSEDGRAD_TEST_GPU=1`` to test on a real GPU instead; the tests marked
``gpu`` run only then.

Under the simulator, :func:`_cudasim.speed_up` makes its threads hand over
the GIL every 10 µs (the simulated tests run 5-7 times faster) and mends a
race of the simulator that this exposes; see ``tests/_cudasim.py``.
"""

import os

if os.environ.get("FUSEDGRAD_TEST_GPU", "").strip().lower() not in ("1", "true", "yes"):
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    import _cudasim

    _cudasim.speed_up()
