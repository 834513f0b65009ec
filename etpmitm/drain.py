"""Stopping gently: wait for open connections to end (``--drain-timeout``)."""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

log = Logger()

POLL = 0.1
"""Seconds between looks at the open count."""


def drain(clock: IReactorTime, openNow: Callable[[], int], timeout: float) -> Deferred[None]:
    """Fires once ``openNow()`` is 0, or after ``timeout`` seconds (what is still open is then cut)."""
    done: Deferred[None] = Deferred()
    if timeout <= 0 or openNow() <= 0:
        done.callback(None)
        return done
    log.info("stopping: waiting up to {timeout:g}s for {count} open connections", timeout=timeout, count=openNow())
    deadline = clock.seconds() + timeout

    def look() -> None:
        count = openNow()
        if count <= 0:
            log.info("stopping: every connection has ended")
            done.callback(None)
        elif clock.seconds() >= deadline:
            log.warn("stopping: {count} connections still open after {timeout:g}s; cutting them", count=count, timeout=timeout)
            done.callback(None)
        else:
            clock.callLater(POLL, look)

    clock.callLater(POLL, look)
    return done
