"""Give freed heap memory back to the OS: glibc's malloc_trim, a no-op where there is none.

Why: after many streams close, the small objects they freed lie scattered among long-lived ones,
and malloc keeps those pages (issue 13 §7). The node calls `trim()` after closing idle streams.
KV memory does not depend on it: it lives in mmap'd slabs (runtime/kvbuffer.py) unmapped on release.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_libc = None
_missing = False


def trim() -> bool:
    """Return free heap pages to the OS; False where malloc_trim is not available (not glibc)."""
    global _libc, _missing
    if _missing:
        return False
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim  # noqa: B018 (raises AttributeError outside glibc)
        except (OSError, AttributeError):
            _missing = True
            return False
    return bool(_libc.malloc_trim(0))
