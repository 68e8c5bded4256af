"""What importing tinygrad_llm sets process-wide: glibc keeps freed memory for reuse (so a training
step does not page-fault its activations in again), unless the user tuned malloc."""
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")

# a 96 MB array while it lives and after it is freed: the bytes glibc serves from their own
# mappings (mallinfo2's hblkhd, returned to the OS on free) and the size of its heap (arena)
PROBE = """
import ctypes
import tinygrad_llm
import numpy as np

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks",
                "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
a = np.ones(24 << 20, dtype=np.float32)
mapped = libc.mallinfo2().hblkhd
del a
print(mapped, libc.mallinfo2().arena)
"""
MB = 1 << 20


def _probe(**env):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         env=env, check=True).stdout
    return [int(x) for x in out.split()]


def test_a_freed_large_array_stays_in_the_heap_for_reuse():
    mapped, heap = _probe()
    assert mapped < 96 * MB <= heap


def test_the_users_malloc_settings_are_left_alone():
    mapped, heap = _probe(MALLOC_MMAP_MAX_="65536")
    assert mapped >= 96 * MB > heap
