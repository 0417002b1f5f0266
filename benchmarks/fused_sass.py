"""Instructions of the fused MLP kernels' loops, from their SASS (no GPU needed).

Compiles the first fused kernel (``mlp._fused_kernel``, with the IEEE
sigmoid, as it ran on the first GPU run) and the flat one
(``mlp._flat_kernel``, with the IEEE and the fast sigmoid) for sm_90 at the
thin shapes of issue 5, float32, with the default plan, and prints for every
loop of the SASS (a backward branch) its instruction count and its mix:
global and shared loads and stores, float operations, special-function
(``MUFU``) operations and calls (the IEEE division's slow path). benchmarks/NOTES.md reads the per-row and per-FMA costs of
the tile loop's phases from this table. A count of instructions is not a
time; it says how much work the warps must issue.

Needs NVVM and NVRTC (as ``gpu_check.py --ptx``), ``ptxas`` and ``nvdisasm``::

    pip install --target /tmp/nv "nvidia-nvvm==13.5.*" "nvidia-cuda-nvrtc==13.5.*" \\
        "nvidia-cuda-nvcc==13.5.*" "nvidia-cuda-nvdisasm==13.5.*"
    export PYTHONPATH=/tmp/nv LD_LIBRARY_PATH=/tmp/nv/nvidia/cu13/lib \\
        PATH=/tmp/nv/nvidia/cu13/bin:$PATH
    unset NUMBA_ENABLE_CUDASIM
    python benchmarks/fused_sass.py
"""

import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

SHAPES = [(16, 32, 4), (64, 128, 10)]
CC = (9, 0)
KINDS = ("LDG", "STS", "LDS", "FFMA", "FADD", "FMUL", "MUFU", "CALL")


def loops(sass):
    """(first line, instruction count, Counter of opcodes) of every loop."""
    lines = sass.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines)
              if (m := re.match(r"^\.L_x_(\d+):", line))}
    found = []
    for i, line in enumerate(lines):
        m = re.search(r"BRA `\(\.L_x_(\d+)\)", line)
        if m and labels.get(m.group(1), i) < i:
            start = labels[m.group(1)]
            ops = collections.Counter(
                mm.group(1) for body in lines[start:i + 1]
                if (mm := re.search(r"\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9]*)", body)))
            found.append((start, sum(ops.values()), ops))
    return found


def main():
    from numba import cuda, types

    from fusedgrad.kernels.cuda import _runtime as rt

    if rt.simulator():
        raise SystemExit("needs the real numba.cuda: unset NUMBA_ENABLE_CUDASIM")
    import numba.cuda.dispatcher as cuda_dispatcher

    # device functions are compiled for the current device's compute capability
    cuda_dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=CC)
    from fusedgrad.kernels.cuda import mlp

    f32, f64, i64 = types.float32, types.float64, types.int64
    first = (f32[:, ::1], i64[::1], i64[::1], f32[:, ::1], f32[::1], f32[:, ::1], f32[::1], f32,
             f32[:, ::1], f64[::1])
    flat = (f32[::1], i64[::1], i64[::1], f32[::1]) + first[4:]  # X and W1 viewed flat
    tmp = Path(tempfile.mkdtemp())
    for D, H, K in SHAPES:
        plan = mlp.plan_fused(D, H, K, 4)
        for name, factory, sig, fast in (("first", mlp._fused_kernel, first, False),
                                         ("flat, IEEE sigmoid", mlp._flat_kernel, flat, False),
                                         ("flat", mlp._flat_kernel, flat, True)):
            kernel = factory(np.float32, D, H, K, plan["T"], plan["NI"], plan["NJ"], plan["MI"],
                             plan["MJ"], plan["MR"], plan["R"], plan["w1_shared"], True, None,
                             False, fast)
            ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=CC, fastmath=False)
            tag = name.replace(",", "").replace(" ", "_")
            src, cubin = tmp / f"{tag}.ptx", tmp / f"{tag}.cubin"
            src.write_text(ptx)
            report = subprocess.run(["ptxas", f"-arch=sm_{CC[0]}{CC[1]}", "-v", str(src), "-o",
                                     str(cubin)], capture_output=True, text=True, check=True)
            used = [line.split(":", 1)[1].strip() for line in report.stderr.splitlines()
                    if "Used" in line]
            sass = subprocess.run(["nvdisasm", "-c", str(cubin)], capture_output=True, text=True,
                                  check=True).stdout
            print(f"({D}, {H}, {K}) {name} kernel, plan {plan}: {'; '.join(used)}")
            print(f"  {'line':>6} {'instr':>6} " + " ".join(f"{k:>5}" for k in KINDS))
            for start, n, ops in loops(sass):
                if any(ops[k] for k in KINDS):
                    print(f"  {start:6d} {n:6d} " + " ".join(f"{ops[k]:5d}" for k in KINDS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
