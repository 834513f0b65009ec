"""Giving freed memory back after connections end."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from etpmitm.memory import Trimmer, mallocTrim


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
