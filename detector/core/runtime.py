"""Process-level settings: the allocator tuning for CPU inference and training, the core count.

glibc serves every allocation above its mmap threshold (128 KiB, raised dynamically up to
32 MiB) with a fresh ``mmap`` and returns it with ``munmap``; GoogLeNet's activations at
batch 64-128 are larger, so each forward pass maps, page-faults and unmaps them again (up
to 2x slower, docs/DECISIONS.md, "Speed paths"). ``GLIBC_TUNABLES`` must be set before the process
starts; ``mallopt`` does the same from inside it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc malloc.h
M_MMAP_MAX = -4


def tune_allocator() -> bool:
    """Keep freed memory in the heap (no mmap for large blocks, no trimming). Returns
    whether glibc accepted it; a no-op elsewhere or when ``INCEPTION_RCNN_MALLOC=default``."""
    if os.environ.get("INCEPTION_RCNN_MALLOC") == "default":
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, macOS, Windows
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(M_MMAP_MAX, 0) == 1
    return ok and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1


def available_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def tolerant_console() -> None:
    """Print any text: a file name that is not valid UTF-8 (kept by Python as surrogate
    escapes) is shown with backslash escapes instead of crashing the print."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
