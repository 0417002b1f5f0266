#!/usr/bin/env python
"""The peer comparison: fusedgrad's kernels against NumPy, PyTorch and JAX.

The code lives in :mod:`fusedgrad.bench` so that the installed package can run
it too (``fusedgrad bench``); this script is the same thing from a checkout.
Run ``python benchmarks/peers.py --help`` for the options.
"""

import sys

from fusedgrad.bench import main

if __name__ == "__main__":
    sys.exit(main())
