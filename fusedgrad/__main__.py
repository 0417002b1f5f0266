"""``python -m fusedgrad``: the ``fusedgrad`` command."""

import sys

from fusedgrad.cli import main

sys.exit(main())
