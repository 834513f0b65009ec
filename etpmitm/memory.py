"""Giving memory back to the system after connections close.

glibc's malloc keeps freed memory for reuse: after a burst of connections
with large buffers (slow readers hold up to a relay buffer each), the
process's RSS stays at its peak.  ``malloc_trim(0)`` returns the free pages.
It is called at most once per interval, and only when connections have
ended since the last call.  Where the C library has no ``malloc_trim``
(musl, macOS) nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

TRIM_INTERVAL = 30.0


def mallocTrim() -> Callable[[], int] | None:
    """The C library's ``malloc_trim(0)``, or None where there is none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: int(trim(0))


class Trimmer:
    """Calls ``trim`` every ``interval`` seconds if ``ended()`` has grown since the last call."""

    def __init__(self, clock: IReactorTime, ended: Callable[[], int], trim: Callable[[], int] | None,
                 interval: float = TRIM_INTERVAL) -> None:
        self._ended = ended
        self._trim = trim
        self._seen = ended()
        self.trims = 0
        self._loop = LoopingCall(self._check)
        self._loop.clock = clock
        self._interval = interval

    def start(self) -> None:
        if self._trim is not None:
            self._loop.start(self._interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _check(self) -> None:
        ended = self._ended()
        if ended != self._seen and self._trim is not None:
            self._seen = ended
            self._trim()
            self.trims += 1
