# trial's assertion methods carry no annotations.
# mypy: disable-error-code="no-untyped-call"
"""Tests for etpmitm.learning: the bounded, expiring set of learned bypasses."""

from __future__ import annotations

from ipaddress import ip_address

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from etpmitm.learning import Key, Learned, LearnedBypass, bypass_key

FUZZ = settings(max_examples=300, deadline=None, database=None)

PINNED: Key = ("pinned.example", "192.0.2.1:443")
MTLS: Key = ("mtls.example", "192.0.2.2:443")
OTHER: Key = (None, "[2001:db8::1]:443")


def key(n: int) -> Key:
    return (f"h{n}.example", f"192.0.2.{n % 250}:443")


class KeyTests(SynchronousTestCase):
    def test_forms(self) -> None:
        self.assertEqual(bypass_key("a.example", ip_address("192.0.2.1"), 443), ("a.example", "192.0.2.1:443"))
        self.assertEqual(bypass_key(None, ip_address("2001:db8::1"), 8443), (None, "[2001:db8::1]:8443"))
        self.assertEqual(bypass_key(None, ip_address("::ffff:192.0.2.1"), 443), (None, "192.0.2.1:443"))


class ThresholdTests(SynchronousTestCase):
    def test_failures_within_window_learn(self) -> None:
        learned = LearnedBypass(failures=3, window=60)
        self.assertFalse(learned.record_failure(PINNED, 0.0, "certificate unknown"))
        self.assertFalse(learned.record_failure(PINNED, 10.0, "certificate unknown"))
        self.assertFalse(learned.is_bypassed(PINNED, 10.0))
        self.assertEqual((len(learned), learned.pending), (0, 1))
        self.assertTrue(learned.record_failure(PINNED, 59.0, "certificate unknown"))
        self.assertTrue(learned.is_bypassed(PINNED, 59.0))
        self.assertEqual((len(learned), learned.pending), (1, 0))
        self.assertEqual(learned.entries(), [Learned(PINNED, 59.0 + 3600.0, "certificate unknown")])

    def test_only_the_first_time(self) -> None:
        """Failures of a key already bypassed do not count again."""
        learned = LearnedBypass(failures=2)
        learned.record_failure(PINNED, 0.0, "a")
        self.assertTrue(learned.record_failure(PINNED, 1.0, "b"))
        self.assertFalse(learned.record_failure(PINNED, 2.0, "c"))
        self.assertFalse(learned.record_failure(PINNED, 3.0, "d"))
        self.assertEqual(learned.entries(), [Learned(PINNED, 3601.0, "b")])
        self.assertEqual(learned.pending, 0)

    def test_spread_failures_do_not_learn(self) -> None:
        learned = LearnedBypass(failures=2, window=300)
        for now in (0.0, 300.0, 600.0, 900.5):
            self.assertFalse(learned.record_failure(PINNED, now, "x"))
        self.assertFalse(learned.is_bypassed(PINNED, 900.5))
        # ...but two inside one window do.
        self.assertTrue(learned.record_failure(PINNED, 1200.4, "x"))

    def test_old_failures_drop_out_of_the_window(self) -> None:
        learned = LearnedBypass(failures=3, window=100)
        learned.record_failure(PINNED, 0.0, "x")
        learned.record_failure(PINNED, 50.0, "x")
        self.assertFalse(learned.record_failure(PINNED, 120.0, "x"))  # the one at 0 is too old
        self.assertTrue(learned.record_failure(PINNED, 149.0, "x"))

    def test_keys_are_separate(self) -> None:
        learned = LearnedBypass(failures=2)
        learned.record_failure(PINNED, 0.0, "x")
        self.assertFalse(learned.record_failure(MTLS, 1.0, "x"))
        self.assertFalse(learned.record_failure(("pinned.example", "192.0.2.9:443"), 1.0, "x"))
        self.assertFalse(learned.record_failure((None, "192.0.2.1:443"), 1.0, "x"))
        self.assertEqual((len(learned), learned.pending), (0, 4))

    def test_one_failure_threshold(self) -> None:
        learned = LearnedBypass(failures=1)
        self.assertTrue(learned.record_failure(PINNED, 0.0, "x"))
        self.assertEqual(learned.pending, 0)


class LearnTests(SynchronousTestCase):
    def test_learn_at_once(self) -> None:
        learned = LearnedBypass()
        self.assertTrue(learned.learn(MTLS, 5.0, "origin asked for a client certificate"))
        self.assertTrue(learned.is_bypassed(MTLS, 5.0))
        self.assertFalse(learned.learn(MTLS, 6.0, "again"))
        self.assertEqual(learned.entries(), [Learned(MTLS, 3605.0, "origin asked for a client certificate")])

    def test_learn_clears_pending_failures(self) -> None:
        learned = LearnedBypass(failures=3)
        learned.record_failure(MTLS, 0.0, "x")
        self.assertTrue(learned.learn(MTLS, 1.0, "mtls"))
        self.assertEqual(learned.pending, 0)


class DisabledTests(SynchronousTestCase):
    def test_never_learns(self) -> None:
        learned = LearnedBypass(failures=1, enabled=False)
        self.assertFalse(learned.record_failure(PINNED, 0.0, "x"))
        self.assertFalse(learned.learn(MTLS, 0.0, "x"))
        self.assertFalse(learned.is_bypassed(PINNED, 0.0))
        self.assertFalse(learned.is_bypassed(MTLS, 0.0))
        self.assertEqual((len(learned), learned.pending), (0, 0))


class ExpiryTests(SynchronousTestCase):
    def test_ttl(self) -> None:
        learned = LearnedBypass(ttl=100)
        learned.learn(MTLS, 0.0, "x")
        self.assertTrue(learned.is_bypassed(MTLS, 99.9))
        self.assertFalse(learned.is_bypassed(MTLS, 100.0))
        self.assertEqual(len(learned), 0)  # dropped when found expired

    def test_use_does_not_extend(self) -> None:
        learned = LearnedBypass(ttl=100)
        learned.learn(MTLS, 0.0, "x")
        for now in range(0, 100, 10):
            self.assertTrue(learned.is_bypassed(MTLS, float(now)))
        self.assertFalse(learned.is_bypassed(MTLS, 100.0))

    def test_relearn_after_expiry(self) -> None:
        learned = LearnedBypass(failures=2, window=10, ttl=100)
        learned.record_failure(PINNED, 0.0, "x")
        self.assertTrue(learned.record_failure(PINNED, 1.0, "x"))
        # Expired: the next failure counts afresh rather than being swallowed.
        self.assertFalse(learned.record_failure(PINNED, 200.0, "y"))
        self.assertFalse(learned.is_bypassed(PINNED, 200.0))
        self.assertTrue(learned.record_failure(PINNED, 201.0, "y"))
        self.assertTrue(learned.is_bypassed(PINNED, 201.0))
        self.assertTrue(learned.learn(MTLS, 300.0, "x"))
        self.assertTrue(learned.learn(MTLS, 400.0, "x"))  # expired at 400, so new again

    def test_prune(self) -> None:
        learned = LearnedBypass(failures=2, window=10, ttl=100)
        learned.learn(MTLS, 0.0, "x")
        learned.learn(PINNED, 50.0, "x")
        learned.record_failure(OTHER, 95.0, "x")
        learned.record_failure(key(1), 99.0, "x")
        self.assertEqual(learned.prune(105.0), 2)  # MTLS expired, OTHER's failure is stale
        self.assertEqual([e.key for e in learned.entries()], [PINNED])
        self.assertEqual(learned.pending, 1)
        self.assertEqual(learned.prune(105.0), 0)


class BoundTests(SynchronousTestCase):
    def test_learned_cap_evicts_least_recently_used(self) -> None:
        learned = LearnedBypass(max_entries=3)
        for n in range(3):
            learned.learn(key(n), float(n), "x")
        self.assertTrue(learned.is_bypassed(key(0), 3.0))  # key(1) is now the least recently used
        learned.learn(key(3), 4.0, "x")
        self.assertEqual([e.key for e in learned.entries()], [key(2), key(0), key(3)])
        self.assertFalse(learned.is_bypassed(key(1), 4.0))
        self.assertEqual(learned.evictions, 1)

    def test_expired_entries_evicted_are_not_counted(self) -> None:
        learned = LearnedBypass(max_entries=1, ttl=10)
        learned.learn(key(0), 0.0, "x")
        learned.learn(key(1), 20.0, "x")
        self.assertEqual(learned.evictions, 0)
        learned.learn(key(2), 21.0, "x")
        self.assertEqual(learned.evictions, 1)

    def test_pending_cap_evicts_least_recent_failure(self) -> None:
        learned = LearnedBypass(failures=2, max_entries=2)
        learned.record_failure(key(0), 0.0, "x")
        learned.record_failure(key(1), 1.0, "x")
        learned.record_failure(key(2), 2.0, "x")  # key(0) is dropped
        self.assertEqual(learned.pending, 2)
        self.assertFalse(learned.record_failure(key(0), 3.0, "x"))  # counts from one again
        self.assertTrue(learned.record_failure(key(2), 4.0, "x"))

    def test_validation(self) -> None:
        bad: list[dict[str, float]] = [
            {"failures": 0},
            {"window": 0},
            {"ttl": -1.0},
            {"max_entries": 0},
            {"window": float("nan")},
        ]
        for kwargs in bad:
            self.assertRaises(ValueError, LearnedBypass, **kwargs)

    @FUZZ
    @given(
        max_entries=st.integers(min_value=1, max_value=5),
        failures=st.integers(min_value=1, max_value=3),
        steps=st.lists(
            st.tuples(
                st.sampled_from(["fail", "learn", "check", "prune"]),
                st.integers(min_value=0, max_value=12),
                st.floats(min_value=0, max_value=50),
            ),
            max_size=60,
        ),
    )
    def test_bounded(self, max_entries: int, failures: int, steps: list[tuple[str, int, float]]) -> None:
        """Neither table ever holds more than max_entries keys; expired keys never apply."""
        learned = LearnedBypass(failures=failures, window=20, ttl=30, max_entries=max_entries)
        now = 0.0
        for op, n, advance in steps:
            now += advance
            if op == "fail":
                learned.record_failure(key(n), now, "x")
            elif op == "learn":
                self.assertTrue(learned.learn(key(n), now, "x") or learned.is_bypassed(key(n), now))
            elif op == "check":
                expires = {e.key: e.expires for e in learned.entries()}
                self.assertEqual(learned.is_bypassed(key(n), now), expires.get(key(n), now) > now)
            else:
                learned.prune(now)
                self.assertTrue(all(e.expires > now for e in learned.entries()))
            self.assertLessEqual(len(learned), max_entries)
            self.assertLessEqual(learned.pending, max_entries)
