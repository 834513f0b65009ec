"""Giving memory back to the system after connections close.

glibc's malloc keeps freed memory for reuse: after a burst of connections
with large buffers (slow readers hold up to a relay buffer each), the
process's RSS stays at its peak.  ``malloc_trim(0)`` returns the free pages.
It is called at most once per interval, and only when connections have
ended since the last call; with ``settle``, also as soon as connections
have ended and then none has for that long (a burst has closed).  Where the
C library has no ``malloc_trim`` (musl, macOS) nothing is done.

What a closed connection leaves is mostly not free yet: its Twisted
protocols, factories and closures refer to each other, so its OpenSSL state
(about 70 KiB a relayed connection, see ``bench/crypto_bench.py --memory``)
goes only when Python's cycle collector runs, and that runs on allocations,
which stop when the gateway goes quiet.  So once a burst has closed (the
``settle`` check) the trimmer runs ``collect`` (a full ``gc.collect``)
before trimming.

:func:`tuneMalloc` keeps the relay's socket reads off ``mmap``: Twisted
reads into a fresh bytes object of the relay buffer's size (256 KiB) and
shrinks it to what came, and above glibc's default threshold (128 KiB)
every read was an ``mmap``, an ``mremap`` and a ``munmap``, with page
faults.  Served from the heap, and with the heap's top kept until the
trimmer gives it back, a read is one system call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from typing import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

TRIM_INTERVAL = 30.0
TRIM_SETTLE = 1.0
"""Seconds without a connection ending, after some ended, before the gateway trims."""
QUIET_SHARE = 0.1
"""... and with the process using less than this share of a core meanwhile."""

MMAP_THRESHOLD = 4 * 2**20
"""Allocations below this come from the heap (relay reads of up to 2 MiB, twice)."""
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
"""Free heap top glibc keeps by itself; the trimmer returns it after connections end."""

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tuneMalloc(mmapThreshold: int = MMAP_THRESHOLD, trimThreshold: int = TRIM_THRESHOLD) -> bool:
    """Set glibc's mmap and trim thresholds (``mallopt``); False where there is no ``mallopt``."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmapThreshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trimThreshold))


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
    """Calls ``trim`` every ``interval`` seconds if ``ended()`` has grown since the last call.

    With ``settle``, it also checks every ``settle`` seconds, and trims once
    ``ended()`` has grown since the last trim but not since the last check,
    and the process (``cpu()``, CPU seconds) was quiet meanwhile (a full
    collection is not free, and a busy gateway allocates, so collects, anyway):
    a burst of connections has closed, and its memory goes back within
    about two ``settle`` periods instead of up to ``interval``; ``collect``
    runs first there (under load, allocations run the cycle collector
    anyway).  Under a steady load connections end at every check, and only
    ``interval`` trims.
    """

    def __init__(self, clock: IReactorTime, ended: Callable[[], int], trim: Callable[[], int] | None,
                 interval: float = TRIM_INTERVAL, settle: float | None = None,
                 collect: Callable[[], object] | None = None, cpu: Callable[[], float] = time.process_time,
                 quiet: float = QUIET_SHARE) -> None:
        self._ended = ended
        self._trim = trim
        self._seen = ended()
        self._lastCheck = self._seen
        self.trims = 0
        self._loop = LoopingCall(self._check)
        self._loop.clock = clock
        self._interval = interval
        self._settle = settle
        self._collect = collect
        self._cpu = cpu
        self._quiet = quiet
        self._lastCpu = cpu()
        self._settleLoop = LoopingCall(self._checkSettled)
        self._settleLoop.clock = clock

    def start(self) -> None:
        if self._trim is not None:
            self._loop.start(self._interval, now=False)
            if self._settle is not None:
                self._settleLoop.start(self._settle, now=False)

    def stop(self) -> None:
        for loop in (self._loop, self._settleLoop):
            if loop.running:
                loop.stop()

    def _checkSettled(self) -> None:
        ended, last = self._ended(), self._lastCheck
        cpu, lastCpu = self._cpu(), self._lastCpu
        self._lastCheck, self._lastCpu = ended, cpu
        assert self._settle is not None
        quiet = cpu - lastCpu < self._quiet * self._settle
        if ended == last and ended != self._seen and quiet and self._trim is not None:
            self._seen = ended
            if self._collect is not None:
                self._collect()
            self._trim()
            self.trims += 1

    def _check(self) -> None:
        ended = self._ended()
        if ended != self._seen and self._trim is not None:
            self._seen = ended
            self._trim()
            self.trims += 1
