"""The process's memory allocator, tuned for model work at start-up.

Model work allocates and frees tensors of tens to hundreds of megabytes many times per
image. With glibc's defaults every block over its mmap threshold comes from the kernel
and goes back when freed, so the next one page-faults its memory in again: on a
2-core CPU that cost as much system CPU time as the networks' own arithmetic.

The programs call ``tune_allocator()`` at start, before torch is loaded: ``app.py``
and the ``maskadapter`` command through ``maskadapter.startup``, the batch command's
Ray workers when they start (``THP_MEM_ALLOC_ENABLE`` comes in their environment).
Importing ``maskadapter`` changes nothing in the process; a program of your own calls
``tune_allocator()`` first thing if it wants the same. Once per process:

- glibc's mmap threshold is raised to the most ``mallopt`` accepts (32 MiB) and its
  trim threshold to ``TRIM_THRESHOLD``: blocks up to 32 MiB are reused from the heap
  instead of being faulted in again, and up to ``TRIM_THRESHOLD`` of free heap is kept
  for reuse rather than handed back (memory stays bounded: the heap never holds more
  than the peak of live blocks plus that);
- PyTorch is asked to back large CPU tensors with transparent huge pages
  (``THP_MEM_ALLOC_ENABLE``, read by PyTorch at its first allocation, so this works
  when it runs before ``torch`` is loaded): a block that still comes from
  the kernel costs one fault per 2 MiB instead of one per 4 KiB, and is still
  returned to the system when freed.

Setting ``MASKADAPTER_ALLOCATOR=system`` before start leaves both alone (the
benchmark runs sam2's own generator so, as a user of sam2 would). Elsewhere than
Linux with glibc the call does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys

ENV = "MASKADAPTER_ALLOCATOR"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 * 2**20  # glibc refuses more (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = 512 * 2**20

_state: dict[str, object] = {}


def tune_allocator() -> dict[str, object]:
    """Tune the allocator for this process (once; see the module docstring). Returns
    what was done: ``{"mallopt": bool, "huge_pages": bool, "reason": str}``."""
    if _state:
        return _state
    if os.environ.get(ENV, "tuned").strip().lower() == "system":
        _state.update(mallopt=False, huge_pages=False, reason=f"{ENV}=system")
        return _state
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _state.update(mallopt=False, huge_pages=False, reason="not Linux with glibc")
        return _state
    # PyTorch reads this once, at its first CPU allocation: too late once torch is imported
    given = os.environ.get("THP_MEM_ALLOC_ENABLE")
    if given is None:
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
    huge = given == "1" or (given is None and "torch" not in sys.modules)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        done = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
    except (OSError, AttributeError):
        done = False
    _state.update(mallopt=done, huge_pages=huge, reason="tuned")
    return _state


def huge_page_env() -> dict[str, str]:
    """The environment a worker process needs for huge pages (empty where the allocator
    is left alone or was not tuned here)."""
    tuned = _state.get("reason") == "tuned" and os.environ.get("THP_MEM_ALLOC_ENABLE") == "1"
    return {"THP_MEM_ALLOC_ENABLE": "1"} if tuned else {}
