"""Where the suite keeps what it builds: one cache root for datasets, pi_ref, tuned settings, compiles."""

from __future__ import annotations

import os


def cache_root() -> str:
    """$MPO_DISCOVER_CACHE, else ~/.cache/mpo-discover."""
    return os.environ.get("MPO_DISCOVER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mpo-discover")
