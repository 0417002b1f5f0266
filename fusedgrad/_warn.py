"""Warnings that point at the user's code.

A fixed ``stacklevel`` is right for one call path only: the same warning
raised from ``fit`` and, one call deeper, from ``score`` or a dask helper
would point inside the package on the other path. :func:`warn` counts the
frames instead, up to the first one outside the package (what Python 3.12's
``skip_file_prefixes`` does).
"""

import os
import sys
import warnings

__all__ = ["warn"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message, category=UserWarning):
    """``warnings.warn(message, category)`` attributed to the innermost caller
    outside the ``fusedgrad`` package."""
    frame = sys._getframe(1)
    level = 2  # 1 is this function, 2 its caller
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
