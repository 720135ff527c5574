"""Model weights apart from the C heap, so that the memory of a replaced version goes back to
the system.

glibc's malloc maps a large block (128 KiB and over, at first) on its own, and unmaps it when
it is freed; but each time it frees such a block it raises that threshold to the block's size
(up to 32 MiB). Once a reload has freed a model's weights, the next version's are carved
from the heap, among small long-lived objects, and when they are freed in turn the heap
cannot shrink past those: without this, 32 reloads of the shipped models take the server
from 322 to 591 MB, still growing.

`weights_apart()` sets the threshold back to 128 KiB while a model loads, so each weight tensor
is a mapping of its own that leaves with it, then sets 32 MiB for serving, with the trim
threshold at twice that: where glibc's own adjustment settles, so inference allocates as it
does without this (measured alike, `docs/hardening.md`). Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["LOADING_MMAP_THRESHOLD", "SERVING_MMAP_THRESHOLD", "weights_apart"]

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
LOADING_MMAP_THRESHOLD = 128 * 1024  # glibc's starting value
SERVING_MMAP_THRESHOLD = 32 * 1024 * 1024  # the most its adjustment reaches on 64-bit systems

_lock = threading.Lock()
_loading = 0


def _glibc_mallopt() -> Callable[[int, int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt: Callable[[int, int], int] = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 (present in glibc only)
    except (OSError, AttributeError):
        return None
    return mallopt


_mallopt = _glibc_mallopt()


@contextmanager
def weights_apart() -> Iterator[None]:
    """Within: blocks of 128 KiB and over are mapped on their own (loads may overlap)."""
    global _loading
    if _mallopt is None:
        yield
        return
    with _lock:
        if _loading == 0:
            _mallopt(M_MMAP_THRESHOLD, LOADING_MMAP_THRESHOLD)
        _loading += 1
    try:
        yield
    finally:
        with _lock:
            _loading -= 1
            if _loading == 0:
                _mallopt(M_MMAP_THRESHOLD, SERVING_MMAP_THRESHOLD)
                _mallopt(M_TRIM_THRESHOLD, 2 * SERVING_MMAP_THRESHOLD)
