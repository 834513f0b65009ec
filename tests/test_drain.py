"""Stopping: the drain waits for open connections, within its grace."""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from etpmitm.drain import DrainService, HoldOpen, StopsLast


class DrainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.open = 0
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.service = DrainService(self.clock, lambda: self.open, grace=10.0)
        self.service.startService()

    def said(self, text: str) -> bool:
        return any(text in e.get("log_format", "") for e in self.events)

    def test_nothingOpenStopsAtOnce(self) -> None:
        self.assertIsNone(self.service.stopService())

    def test_waitsForTheLastConnection(self) -> None:
        self.open = 2
        stopped = self.service.stopService()
        assert stopped is not None
        self.clock.advance(3)
        self.open = 1
        self.clock.advance(3)
        self.assertNoResult(stopped)
        self.open = 0
        self.clock.advance(0.2)
        self.successResultOf(stopped)
        self.assertTrue(self.said("every connection ended"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_graceEnds(self) -> None:
        """Connections still open after the grace are left to the reactor's shutdown, with a warning."""
        self.open = 3
        stopped = self.service.stopService()
        assert stopped is not None
        self.clock.advance(9.9)
        self.assertNoResult(stopped)
        self.clock.pump([0.1] * 3)
        self.successResultOf(stopped)
        [warning] = [e for e in self.events if "still open after" in e.get("log_format", "")]
        self.assertEqual((warning["count"], warning["grace"]), (3, "10"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_zeroGraceDoesNotWait(self) -> None:
        self.open = 3
        service = DrainService(self.clock, lambda: self.open, grace=0)
        service.startService()
        self.assertIsNone(service.stopService())


class _Slow(MultiService):
    def __init__(self) -> None:
        super().__init__()
        self.stopping: Deferred[None] = Deferred()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.stopping


class _Recorder(Service):
    stops = 0

    def stopService(self) -> None:
        super().stopService()
        self.stops += 1


class StopsLastTests(SynchronousTestCase):
    def test_lastStopsAfterFirst(self) -> None:
        """The audit log's service stops only once the gateway (draining) has stopped."""
        first, last = _Slow(), _Recorder()
        both = StopsLast(first, last)
        both.startService()
        self.assertTrue(first.running and last.running)
        stopped = both.stopService()
        self.assertNoResult(stopped)
        self.assertEqual(last.stops, 0)
        self.assertTrue(last.running)
        first.stopping.callback(None)
        self.successResultOf(stopped)
        self.assertEqual(last.stops, 1)
        self.assertFalse(last.running)


class HoldOpenTests(SynchronousTestCase):
    """``--drain-delay``: the listeners (and the drain) stop ``delay`` seconds after SIGTERM."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.held = HoldOpen(self.clock, 3.0)
        self.listener, self.drain = _Recorder(), _Slow()
        self.listener.setServiceParent(self.held)
        self.drain.setServiceParent(self.held)
        self.held.startService()

    def test_childrenStopAfterTheDelay(self) -> None:
        stopped = self.held.stopService()
        self.assertEqual(self.listener.stops, 0)
        self.assertTrue(self.listener.running and self.drain.running)
        [said] = [e for e in self.events if "still accepting" in e.get("log_format", "")]
        self.assertEqual(said["delay"], "3")
        self.clock.advance(2.9)
        self.assertEqual(self.listener.stops, 0)
        self.clock.advance(0.1)
        self.assertEqual(self.listener.stops, 1)
        self.assertFalse(self.drain.running)
        # Stopped only once the drain is over.
        self.assertNoResult(stopped)
        self.drain.stopping.callback(None)
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_aSiblingStopsAtOnce(self) -> None:
        """The metrics service (its sibling) marks /healthz stopping at the start of the delay."""
        top = MultiService()
        sibling = _Recorder()
        sibling.setServiceParent(top)
        held = HoldOpen(self.clock, 3.0)
        listener = _Recorder()
        listener.setServiceParent(held)
        held.setServiceParent(top)
        top.startService()
        stopped = top.stopService()
        self.assertEqual((sibling.stops, listener.stops), (1, 0))
        self.assertNoResult(stopped)
        self.clock.advance(3)
        self.assertEqual(listener.stops, 1)
        self.successResultOf(stopped)
