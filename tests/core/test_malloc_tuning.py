"""core/malloc_tuning.py: a fixed glibc mmap threshold gives big freed buffers back to the kernel."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from minipacs.config import ConfigError, load_settings
from minipacs.core.malloc_tuning import MAX_THRESHOLD_BYTES, set_mmap_threshold

# In a fresh process: malloc and free 1 MiB (glibc's dynamic threshold then rises above it), malloc
# 1 MiB again and print how many more bytes glibc then holds in mmap'd blocks (mallinfo2().hblkhd).
PROBE = textwrap.dedent(
    """
    import ctypes, sys
    from minipacs.core.malloc_tuning import set_mmap_threshold

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallinfo2.restype = MallInfo2
    if sys.argv[1] == "fixed":
        assert set_mmap_threshold(256 * 1024)
    libc.free(libc.malloc(1 << 20))
    before = libc.mallinfo2().hblkhd  # other blocks the interpreter holds by mmap
    block = libc.malloc(1 << 20)
    print(libc.mallinfo2().hblkhd - before)
    libc.free(block)
    """
)


def mmapped_after_reuse(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux only")
def test_a_fixed_threshold_keeps_serving_big_blocks_by_mmap() -> None:
    # glibc's default: the second 1 MiB block comes from the heap (the threshold rose at the free)
    assert mmapped_after_reuse("default") < 1 << 20
    # fixed at 256 KiB: it is mmap'd again, so its free gives the pages back to the kernel
    assert mmapped_after_reuse("fixed") >= 1 << 20


def test_the_threshold_is_refused_outside_glibcs_range() -> None:
    for bad in (0, -1, MAX_THRESHOLD_BYTES + 1):
        with pytest.raises(ValueError, match="mmap threshold"):
            set_mmap_threshold(bad)


def test_the_setting_is_checked_at_its_limits() -> None:
    assert load_settings(env={"MINIPACS_MALLOC_MMAP_THRESHOLD_KIB": "0"}).malloc_mmap_threshold_kib == 0
    assert load_settings(env={"MINIPACS_MALLOC_MMAP_THRESHOLD_KIB": "32768"}).malloc_mmap_threshold_kib == 32768
    with pytest.raises(ConfigError, match="malloc_mmap_threshold_kib"):
        load_settings(env={"MINIPACS_MALLOC_MMAP_THRESHOLD_KIB": "32769"})
