"""Stopping gently: wait for open connections to end (``--drain-timeout``)."""

from __future__ import annotations

from typing import Callable, Iterable

from twisted.application.service import IService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
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


def stopInOrder(children: Iterable[IService], last: Callable[[IService], bool],
                between: Callable[[], Deferred[None]]) -> Deferred[object]:
    """Stop ``children`` (in reverse, as a MultiService does) except those ``last``
    picks, then wait for ``between`` (the drain), then stop those: the audit log
    stays open for the connections that end while draining."""
    services = list(children)[::-1]
    later = [s for s in services if last(s)]

    def stop(group: list[IService]) -> Deferred[object]:
        return DeferredList([maybeDeferred(s.stopService) for s in group])  # type: ignore[return-value]

    done = stop([s for s in services if not last(s)])
    done.addCallback(lambda _: between())
    done.addCallback(lambda _: stop(later))
    return done
