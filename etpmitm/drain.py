"""Stopping gracefully: the listeners close, the open connections finish.

On SIGTERM twistd stops the services, then the reactor closes every
connection still open.  :class:`DrainService` holds that second step back
until the connections open at the stop have ended by themselves, or for at
most ``grace`` seconds.  Its siblings, the listeners, stop at the same
moment, so a load balancer's health check on the listening port fails at
once (connection refused) and new connections go to the other nodes.

:class:`HoldOpen` (``--drain-delay``) puts the listeners and the drain off
for a few seconds: ``/healthz`` answers 503 at once while the node still
accepts, so a balancer that checks ``/healthz`` takes the node out before
its listener closes ("fail the health check first, then close").
"""

from __future__ import annotations

from typing import Callable

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

log = Logger()

DEFAULT_DRAIN = 10.0
DEFAULT_DELAY = 0.0
"""``--drain-delay``: by default the listeners close at once."""
POLL = 0.1
"""Seconds between looks at the count while draining."""


class DrainService(Service):
    """Waits, when stopped, for ``openCount()`` to reach 0 (at most ``grace`` seconds)."""

    def __init__(self, clock: IReactorTime, openCount: Callable[[], int], grace: float = DEFAULT_DRAIN) -> None:
        self._clock = clock
        self._openCount = openCount
        self._grace = grace

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        count = self._openCount()
        if count == 0 or self._grace <= 0:
            return None
        grace = f"{self._grace:g}"  # formatted here: a worker's event reaches the master as JSON
        log.info("stopping: no new connections; waiting up to {grace}s for {count} open to end", grace=grace, count=count)
        done: Deferred[None] = Deferred()
        deadline = self._clock.seconds() + self._grace

        def look() -> None:
            count = self._openCount()
            if count == 0:
                log.info("stopping: every connection ended")
                done.callback(None)
            elif self._clock.seconds() >= deadline:
                log.warn("stopping: {count} connections still open after {grace}s; closing them", count=count, grace=grace)
                done.callback(None)
            else:
                self._clock.callLater(POLL, look)

        look()
        return done


class HoldOpen(MultiService):
    """Stops its children (the listeners, the drain) ``delay`` seconds after it is told to stop."""

    def __init__(self, clock: IReactorTime, delay: float) -> None:
        MultiService.__init__(self)  # type: ignore[no-untyped-call]
        self._clock = clock
        self._delay = delay

    def stopService(self) -> Deferred[object]:
        delay = f"{self._delay:g}"
        log.info("stopping: still accepting for {delay}s (--drain-delay), then the listeners close", delay=delay)
        later: Deferred[None] = Deferred()
        self._clock.callLater(self._delay, later.callback, None)

        def stopChildren(_: None) -> Deferred[object]:
            # Each child may return a Deferred (the drain's): this one fires once all have.
            return MultiService.stopService(self)  # type: ignore[no-untyped-call, no-any-return]

        return later.addCallback(stopChildren)


class StopsLast(MultiService):
    """``first`` and ``last`` run together; ``last`` stops once ``first`` has.

    For an audit log: it must stay open for the events of the connections
    that end while the gateway drains (or while a master's workers drain).
    """

    def __init__(self, first: MultiService, last: Service) -> None:
        MultiService.__init__(self)  # type: ignore[no-untyped-call]
        self.first, self.last = first, last
        self.addService(first)  # type: ignore[no-untyped-call]
        self.addService(last)  # type: ignore[no-untyped-call]

    def stopService(self) -> Deferred[object]:
        Service.stopService(self)  # type: ignore[no-untyped-call]
        stopped: Deferred[object] = maybeDeferred(self.first.stopService)

        def thenLast(result: object) -> object:
            return self.last.stopService()  # type: ignore[no-untyped-call]

        return stopped.addBoth(thenLast)
