"""Heap reuse while sampling: freed tensors stay with the allocator instead of going back to the system.

PyTorch's CPU tensors come from malloc. glibc serves a request above its mmap threshold (32 MiB at most)
with fresh pages from the kernel and unmaps them on free, so every large activation of a 3D UNet is faulted
in and zeroed by the kernel again: at batch 8 stage 2's activations are about 250 MB each. Measured on a
2-core AMD EPYC (fp32, batch 8): 4.5 s of system time per volume beside 8.5 s of user time; with the heap
kept (``M_MMAP_MAX`` 0, no trimming) the bundled cascade samples 1.56x faster (6.73 -> 4.32 s a volume) and
the cascade before issue 14 1.95x (3.81 -> 1.95 s; `benchmarks/bench_generator_speed.py --before`), the
samples bit for bit the same. The price is a higher resident peak (2.7 instead of 2.2 GB at batch 8), held
until the context ends and ``malloc_trim`` returns the free pages. The heap keeps its grown address range,
so after the context an allocation that fits in it still comes from it (faulted in once, then reused).

Only glibc (Linux) is tuned; elsewhere the context does nothing. Not for multi-threaded numpy work: there
large buffers of other threads' arenas are mapped anyway and the organ metrics ran slower with it.
"""
from __future__ import annotations

import contextlib
import ctypes
import sys
from typing import Iterator

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
GLIBC_DEFAULTS = {M_TRIM_THRESHOLD: 128 * 1024, M_MMAP_MAX: 65536}
KEPT = {M_TRIM_THRESHOLD: 2 ** 31 - 1, M_MMAP_MAX: 0}


def glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (has ``mallopt``, ``malloc_trim``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    needed = ("gnu_get_libc_version", "mallopt", "malloc_trim")
    return libc if all(hasattr(libc, name) for name in needed) else None


@contextlib.contextmanager
def heap_reuse(enabled: bool = True) -> Iterator[bool]:
    """Within the context, malloc keeps freed memory for reuse (glibc: no mmap'd chunks, no trimming); on exit
    glibc's mmap and trim settings come back and the free pages are returned (``malloc_trim``). Yields whether
    it applied."""
    libc = glibc() if enabled else None
    applied = libc is not None and all(libc.mallopt(p, v) == 1 for p, v in KEPT.items())
    try:
        yield applied
    finally:
        if libc is not None:
            for param, value in GLIBC_DEFAULTS.items():
                libc.mallopt(param, value)
            libc.malloc_trim(0)
