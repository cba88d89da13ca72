"""Thread-count defaults shared by the backends."""

from __future__ import annotations

import os


def default_threads() -> int:
    """Physical cores (hyper-threads slow matmul-bound decode down), at least 1."""
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except Exception:
        physical = None
    return max(1, physical or os.cpu_count() or 1)
