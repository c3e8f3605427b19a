"""Keep the server's resident memory flat after big transfers: a fixed glibc mmap threshold.

glibc's malloc serves a block of at least ``M_MMAP_THRESHOLD`` (128 KiB at start) with its own
``mmap`` and gives it back to the kernel at ``free``. But the threshold is dynamic: each time
such a block is freed, glibc raises the threshold to its size (up to 32 MiB on 64-bit). After
the first 1 MiB read of a STOW-RS body or a WADO-RS answer, every later 1 MiB buffer comes from
a heap arena instead, and the worker threads' arenas keep those pages after ``free``: the
server's RSS steps up by 10-20 MiB after a big transfer and stays there (measured:
tests/web/test_stream_memory.py, bench/RESULTS.md "Resting memory"). Setting the threshold
explicitly (``mallopt(M_MMAP_THRESHOLD, n)``, glibc mallopt(3)) turns the dynamic adjustment
off, so big buffers always go back to the kernel. Not too low: each buffer at or above it is a fresh
mmap, page faults and all (2 MiB: above a socket read, 256 KiB, and an instance received into memory,
at most 1 MiB; at 512 KiB a 0.5 MB CT slice paid that, at 256 KiB every socket read).

Setting ``malloc_mmap_threshold_kib``; 0 leaves glibc's dynamic default. Elsewhere than glibc
(musl, macOS) nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Final

log = logging.getLogger(__name__)

#: mallopt(3) parameter number of M_MMAP_THRESHOLD in glibc's <malloc.h>.
M_MMAP_THRESHOLD: Final = -3
#: glibc refuses thresholds above HEAP_MAX/2: 32 MiB on 64-bit.
MAX_THRESHOLD_BYTES: Final = 32 * 1024 * 1024


def set_mmap_threshold(threshold_bytes: int) -> bool:
    """Fix glibc's mmap threshold at ``threshold_bytes``; whether it was set (False: not glibc)."""
    if not 0 < threshold_bytes <= MAX_THRESHOLD_BYTES:
        raise ValueError(f"mmap threshold must be 1 to {MAX_THRESHOLD_BYTES} bytes, not {threshold_bytes}")
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    try:
        libc = ctypes.CDLL(libc_name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it: musl's mallopt is a no-op
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, threshold_bytes) != 1:  # 1 on success (mallopt(3))
        log.warning("glibc refused mallopt(M_MMAP_THRESHOLD, %d)", threshold_bytes)
        return False
    return True


__all__ = ["MAX_THRESHOLD_BYTES", "M_MMAP_THRESHOLD", "set_mmap_threshold"]
