"""Keep freed host memory for reuse (glibc's allocator, Linux).

XLA on the CPU allocates each execution's scratch and gradient buffers afresh: about
2 GB per FCN-8s training step.  With glibc's defaults those come from ``mmap`` (they
are larger than its 32 MB mmap threshold, and XLA's worker threads allocate from their
own arenas, which cannot grow that far) and go back with ``munmap``, so every step
page-faults 2 GB of new pages in: half a million faults, 0.5-1 s of a 7 s step on the
2-core machine this was measured on (BENCHMARKS.md).  What JAX's documentation suggests
for CPU training, preloading TCMalloc, does the same job; this does it in-process with
``mallopt``: one arena, no mmap for large blocks, no trimming, so that a step reuses
the pages the previous step freed (the process keeps its peak memory, as Caffe does).

Applied once at ``import netspec`` (before JAX starts its thread pools); set
``NETSPEC_KEEP_FREED_MEMORY=0`` to leave the allocator alone.  Elsewhere than glibc it
does nothing.
"""
import ctypes
import os
import sys

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8


def keep_freed_memory():
    """Tune glibc's malloc as described above; True if it was applied."""
    if not sys.platform.startswith("linux") or os.environ.get("NETSPEC_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # -1 as the trim threshold is SIZE_MAX to glibc: never give the heap's top back
    return all(mallopt(param, value) == 1 for param, value in
               ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1)))
