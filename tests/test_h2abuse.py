"""The sans-IO HTTP/2 flood limits (etpmitm/h2abuse.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from etpmitm.h2abuse import Bucket, Budget, FloodGuard, H2Limits


class BucketTests(SynchronousTestCase):
    def test_burstThenOver(self) -> None:
        bucket = Bucket(Budget(3, 1.0))
        self.assertEqual([bucket.add(0.0) for _ in range(4)], [False, False, False, True])

    def test_leaksAtItsRate(self) -> None:
        bucket = Bucket(Budget(3, 2.0))
        for _ in range(3):
            self.assertFalse(bucket.add(10.0))
        self.assertFalse(bucket.add(10.5), "half a second at 2/s leaks one")
        self.assertTrue(bucket.add(10.5))

    def test_neverBelowEmptyNorBackInTime(self) -> None:
        bucket = Bucket(Budget(2, 1.0))
        bucket.add(0.0)
        bucket.give(100.0, 50.0)
        self.assertEqual(bucket.level, 0.0)
        bucket.add(100.0)
        bucket.add(99.0)  # a clock that steps back leaks nothing, and adds nothing
        self.assertEqual(bucket.level, 2.0)
        self.assertTrue(bucket.add(99.0))

    def test_zeroBurstIsNoLimit(self) -> None:
        bucket = Bucket(Budget(0, 0.0))
        self.assertFalse(any(bucket.add(0.0) for _ in range(10_000)))


class FloodGuardTests(SynchronousTestCase):
    def test_eachPatternTripsPastItsBurstWithItsReason(self) -> None:
        limits = H2Limits()
        cases = [
            (FloodGuard.reset, limits.resets, "rapid reset (CVE-2023-44487)"),
            (FloodGuard.ping, limits.pings, "PING flood (CVE-2019-9512)"),
            (FloodGuard.settingsFrame, limits.settings, "SETTINGS flood (CVE-2019-9515)"),
            (FloodGuard.emptyFrame, limits.empty, "empty frame flood (CVE-2019-9518)"),
        ]
        for count, budget, name in cases:
            guard = FloodGuard(limits)
            self.assertEqual([count(guard, 1.0) for _ in range(budget.burst)], [None] * budget.burst)
            reason = count(guard, 1.0)
            assert reason is not None
            self.assertIn(name, reason)
            self.assertIn(f"more than {budget.burst} ", reason)

    def test_completedRequestsEarnResets(self) -> None:
        """A device that lets a request complete for each one it resets is never cut, however many."""
        guard = FloodGuard(H2Limits(resets=Budget(10, 0.0)))
        for _ in range(1000):
            self.assertIsNone(guard.reset(0.0))
            guard.completed(0.0)
        for _ in range(10):
            self.assertIsNone(guard.reset(0.0))
        self.assertIsNotNone(guard.reset(0.0))

    def test_patternsAreCountedApart(self) -> None:
        guard = FloodGuard(H2Limits(pings=Budget(5, 0.0), settings=Budget(5, 0.0)))
        for _ in range(5):
            self.assertIsNone(guard.ping(0.0))
            self.assertIsNone(guard.settingsFrame(0.0))
        self.assertIsNotNone(guard.ping(0.0))

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from(["reset", "ping", "settings", "empty", "completed"]),
                              st.floats(min_value=0.0, max_value=5.0)), max_size=2000))
    def test_wellBehavedDeviceNeverTrips(self, steps: list[tuple[str, float]]) -> None:
        """Events no faster than each budget's rate, after any gaps, never trip the default limits
        (the clock advances at least 1/rate of its kind before each event)."""
        limits = H2Limits()
        guard = FloodGuard(limits)
        rates = {"reset": limits.resets.rate, "ping": limits.pings.rate, "settings": limits.settings.rate,
                 "empty": limits.empty.rate}
        calls = {"reset": guard.reset, "ping": guard.ping, "settings": guard.settingsFrame, "empty": guard.emptyFrame}
        now = 0.0
        for kind, gap in steps:
            if kind == "completed":
                guard.completed(now)
                continue
            now += 1 / rates[kind] + gap
            self.assertIsNone(calls[kind](now), (kind, now))

    @settings(max_examples=100, deadline=None)
    @given(st.integers(min_value=0, max_value=199), st.integers(min_value=0, max_value=3000))
    def test_browserCancellingSomeOfAPageNeverTrips(self, cancelled: int, completed: int) -> None:
        """A page of any size, all at one instant, of which up to 199 requests are cancelled."""
        guard = FloodGuard()
        events = ["reset"] * cancelled + ["completed"] * completed
        for event in events:
            if event == "reset":
                self.assertIsNone(guard.reset(0.0))
            else:
                guard.completed(0.0)
