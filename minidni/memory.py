"""The CPU engine's memory policy: keep freed large blocks in the heap for the next training step (glibc malloc).

A training step allocates the same large temporaries every step: an LSTM window's gates (T, B, 4H) and states, the
activations of a layer and their gradients. glibc's malloc serves a block above its mmap threshold (128 KB at first,
adapting up to 32 MB) with a fresh mmap, and gives the free memory at the top of its heap back to the OS beyond its
trim threshold; the next step's arrays then land on fresh pages, and the kernel zero-fills each 4 KB page on first
touch: one page fault each, thousands per step on an LSTM window (measured in docs/engine-speed.md, "Page faults").

    keep_freed_memory()      mallopt(M_MMAP_THRESHOLD, 1 GiB) and mallopt(M_TRIM_THRESHOLD, 2 GiB - 1): blocks below
                             1 GiB come from the heap, and freed memory stays there for reuse
    policy()                 what is in force in this process, as a dict
    malloc_env()             the same policy as environment variables (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_)
                             for another process, e.g. a PyTorch process that a benchmark compares with minidni

`import minidni` applies it once, unless MINIDNI_KEEP_FREED_MEMORY=0 is set. The cost: the process keeps its
high-water mark of heap memory instead of returning it to the OS. On a C library other than glibc it does nothing.
"""
from __future__ import annotations

import ctypes
import os

MMAP_THRESHOLD = 1 << 30          # bytes: blocks below this come from the heap, not from a fresh mmap
TRIM_THRESHOLD = (1 << 31) - 1    # bytes of free memory at the heap's top kept before any is returned to the OS
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # glibc's mallopt parameter numbers (malloc.h)

_state = {"applied": False, "why": "not applied yet (minidni.memory.keep_freed_memory())"}


def _glibc():
    """The process's C library if it is glibc (it has gnu_get_libc_version), else None. CDLL(None) is the symbols
    already loaded into the process: no search for the library (ctypes.util.find_library runs ldconfig), since this
    runs at every `import minidni`."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        return libc
    except (OSError, AttributeError, TypeError):
        return None


def keep_freed_memory():
    """Raise glibc's mmap and trim thresholds for this process (see the module docstring). Returns policy()."""
    libc = _glibc()
    if libc is None:
        _state.update(applied=False, why="the C library is not glibc: malloc is left as it is")
        return policy()
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _state.update(applied=ok, why="mallopt: M_MMAP_THRESHOLD 1 GiB, M_TRIM_THRESHOLD 2 GiB" if ok else
                  "glibc's mallopt refused the thresholds: malloc is left as it is")
    return policy()


def policy():
    """{"applied": True when freed blocks are kept for reuse, "why": what was done or why not}."""
    return dict(_state)


def malloc_env():
    """The same policy for another process, as glibc's environment variables."""
    return {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}


def _apply_at_import():
    if os.environ.get("MINIDNI_KEEP_FREED_MEMORY", "1").strip() in ("0", "false", "no", "off"):
        _state.update(applied=False, why="MINIDNI_KEEP_FREED_MEMORY=0: malloc is left as it is")
        return
    keep_freed_memory()
