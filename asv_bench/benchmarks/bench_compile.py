"""First-call (compile) time of the kernels and import time, each in a fresh process.

The other benchmarks compile in ``setup``, so their timings never include
compilation; these ones time only it. ``cache='cold'`` gives the fresh
process an empty Numba cache directory (``NUMBA_CACHE_DIR``), so the first
call compiles the kernel and every helper it uses: what a user sees once
after installing. ``cache='warm'`` uses the usual cache location, filled in
``setup`` by another process, so the first call loads the machine code from
disk: what a user sees from the second run of a program on.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import numpy as np

from . import common

# Run in the fresh process before the timed first call. NUMBA_CACHE_DIR must
# be set before numba is imported.
_SETUP = """
import os, tempfile
if {cold!r}:
    os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(dir={root!r})
import numpy as np
import fusedgrad.kernels
with np.load({data!r}) as data:
    args = tuple(data["arg%d" % i] for i in range(len(data.files)))
call = getattr(fusedgrad.kernels, {function!r})
"""


class CompileTime:
    """Time of the first call of a kernel (float32, small input) in a new process."""

    params = [common.KERNELS, ["cold", "warm"]]
    param_names = ["kernel", "cache"]
    # One process per sample; a cold compile takes seconds.
    number = 1
    repeat = (1, 3, 30.0)
    rounds = 1
    warmup_time = 0
    timeout = 300

    def setup(self, function, cache):
        if common.PROFILE == "fast" and function != "affine_sigmoid":
            raise NotImplementedError("fast profile: only affine_sigmoid is compiled")
        kernels = common.require_module("fusedgrad.kernels")
        if not hasattr(kernels, function):
            raise NotImplementedError(f"fusedgrad.kernels.{function} does not exist")
        self.root = tempfile.mkdtemp(prefix="fusedgrad-compile-")
        data = os.path.join(self.root, "args.npz")
        args = common.kernel_args(function, "small", "float32")
        np.savez(data, **{f"arg{i}": a for i, a in enumerate(args)})
        self.code = textwrap.dedent(_SETUP).format(
            cold=cache == "cold", root=self.root, data=data, function=function
        )
        if cache == "warm":
            # Fill the cache (or find it filled): a first call in another process.
            subprocess.run([sys.executable, "-c", self.code + "call(*args)\n"], check=True)

    def teardown(self, function, cache):
        # asv also calls teardown after setup raised NotImplementedError.
        if getattr(self, "root", None):
            shutil.rmtree(self.root, ignore_errors=True)

    def timeraw_first_call(self, function, cache):
        return "call(*args)", self.code


class ImportTime:
    """Time of ``import fusedgrad.kernels`` in a new process (numpy and numba included)."""

    number = 1
    repeat = (3, 10, 10.0)
    warmup_time = 0

    def setup(self):
        common.require_module("fusedgrad.kernels")

    def timeraw_import_kernels(self):
        return "import fusedgrad.kernels"
