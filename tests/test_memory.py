"""Giving freed memory back after connections end."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from etpmitm.memory import Trimmer, mallocTrim, tuneMalloc


class TrimmerTests(SynchronousTestCase):
    def test_trimsOnlyAfterConnectionsEnded(self) -> None:
        clock, ended, calls = Clock(), [0], []
        trimmer = Trimmer(clock, lambda: ended[0], lambda: calls.append(1) or 1, interval=30)
        trimmer.start()
        clock.advance(30)
        self.assertEqual(calls, [])  # nothing ended: nothing to give back
        ended[0] = 5
        clock.advance(29)
        self.assertEqual(calls, [])
        clock.advance(1)
        self.assertEqual((calls, trimmer.trims), ([1], 1))
        clock.advance(30)
        self.assertEqual(calls, [1])  # no new endings
        trimmer.stop()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_withoutMallocTrimNothingRuns(self) -> None:
        clock = Clock()
        trimmer = Trimmer(clock, lambda: 1, None)
        trimmer.start()
        self.assertEqual(clock.getDelayedCalls(), [])
        trimmer.stop()

    def test_glibcHasIt(self) -> None:
        """On this (glibc) machine the real call works; elsewhere it is None, never an error."""
        import platform

        trim = mallocTrim()
        if platform.libc_ver()[0] != "glibc":
            self.assertIsNone(trim)
            return
        assert trim is not None
        self.assertIn(trim(), (0, 1))


class SettledTrimTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock, self.ended, self.calls = Clock(), [0], []
        self.trimmer = Trimmer(self.clock, lambda: self.ended[0], lambda: self.calls.append(self.clock.seconds()) or 1,
                               interval=30, settle=2)
        self.trimmer.start()
        self.addCleanup(self.trimmer.stop)

    def test_aClosedBurstIsTrimmedSoon(self) -> None:
        self.clock.advance(1)
        self.ended[0] = 1000  # a burst of connections closes
        self.clock.advance(1)  # t=2: they are still ending
        self.assertEqual(self.calls, [])
        self.clock.advance(2)  # t=4: none ended since the last check
        self.assertEqual(self.calls, [4.0])
        self.clock.advance(30)
        self.assertEqual(self.calls, [4.0])  # nothing new to give back

    def test_steadyLoadTrimsOnlyPerInterval(self) -> None:
        for _ in range(30):
            self.ended[0] += 10
            self.clock.advance(1)
        self.assertEqual(self.calls, [30.0])

    def test_collectsCyclesBeforeTheSettledTrim(self) -> None:
        """Closed connections' reference cycles are collected first, so the trim finds their memory free."""
        order: list[str] = []
        trimmer = Trimmer(self.clock, lambda: self.ended[0], lambda: order.append("trim") or 1,
                          interval=30, settle=2, collect=lambda: order.append("collect"))
        trimmer.start()
        self.addCleanup(trimmer.stop)
        self.ended[0] = 5
        self.clock.advance(2)
        self.clock.advance(2)
        self.assertEqual(order, ["collect", "trim"])
        for _ in range(13):  # steady load up to t=30: only the interval's trim, without a full collection
            self.ended[0] += 1
            self.clock.advance(2)
        self.assertEqual(order, ["collect", "trim", "trim"])

    def test_noSettledTrimWhileBusy(self) -> None:
        """Connections stopped ending but the process is busy (long ones relaying): no full collection."""
        spent, order = [0.0], []
        trimmer = Trimmer(self.clock, lambda: self.ended[0], lambda: order.append("trim") or 1,
                          interval=30, settle=2, collect=lambda: order.append("collect"), cpu=lambda: spent[0])
        trimmer.start()
        self.addCleanup(trimmer.stop)
        self.ended[0] = 5
        for _ in range(3):
            spent[0] += 1.0  # half a core
            self.clock.advance(2)
        self.assertEqual(order, [])
        self.clock.advance(2)  # quiet now
        self.assertEqual(order, ["collect", "trim"])

    def test_stopEndsBothLoops(self) -> None:
        self.trimmer.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class TuneMallocTests(SynchronousTestCase):
    def test_glibcTakesTheThresholds(self) -> None:
        import platform

        done = tuneMalloc()
        self.assertEqual(done, platform.libc_ver()[0] == "glibc")
