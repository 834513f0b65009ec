# trial's assertion methods carry no annotations.
# mypy: disable-error-code="no-untyped-call"
"""Tests for etpmitm.learning: the bounded, expiring, per-client set of learned bypasses."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from etpmitm.learning import Key, Learned, LearnedBypass, bypass_key, printable
from etpmitm.policy import LearningScope, LearningSettings
from etpmitm.policy.decide import LEARNING_SCOPES

FUZZ = settings(max_examples=300, deadline=None, database=None)

PINNED: Key = ("pinned.example", "192.0.2.1:443")
MTLS: Key = ("mtls.example", "192.0.2.2:443")
OTHER: Key = (None, "[2001:db8::1]:443")

A, B, C, D = (IPv4Address(f"10.0.0.{n}") for n in (1, 2, 3, 4))
V6 = IPv6Address("2001:db8:1::5")


def key(n: int) -> Key:
    return (f"h{n}.example", f"192.0.2.{n % 250}:443")


def client(n: int) -> IPv4Address:
    return IPv4Address(f"10.1.{n // 250}.{n % 250}")


class KeyTests(SynchronousTestCase):
    def test_forms(self) -> None:
        self.assertEqual(bypass_key("a.example", ip_address("192.0.2.1"), 443), ("a.example", "192.0.2.1:443"))
        self.assertEqual(bypass_key(None, ip_address("2001:db8::1"), 8443), (None, "[2001:db8::1]:8443"))
        self.assertEqual(bypass_key(None, ip_address("::ffff:192.0.2.1"), 443), (None, "192.0.2.1:443"))


class ClientScopeTests(SynchronousTestCase):
    """scope = "client" (the default): a device's failures bypass the key for that device only."""

    def test_applies_only_to_the_client_that_taught_it(self) -> None:
        learned = LearnedBypass(failures=2)
        self.assertIsNone(learned.record_failure(PINNED, A, 0.0, "unknown ca"))
        event = learned.record_failure(PINNED, A, 1.0, "unknown ca")
        self.assertEqual(event, Learned(PINNED, "unknown ca", "client", ("10.0.0.1",), 3601.0))
        self.assertTrue(learned.is_bypassed(PINNED, A, 1.0))
        self.assertFalse(learned.is_bypassed(PINNED, B, 1.0))
        self.assertFalse(learned.is_bypassed(("pinned.example", "192.0.2.9:443"), A, 1.0))

    def test_failures_of_different_clients_do_not_add_up_below_min_clients(self) -> None:
        learned = LearnedBypass(failures=2, min_clients=3)
        self.assertIsNone(learned.record_failure(PINNED, A, 0.0, "x"))
        self.assertIsNone(learned.record_failure(PINNED, B, 1.0, "x"))
        for who in (A, B, C):
            self.assertFalse(learned.is_bypassed(PINNED, who, 1.0))

    def test_min_clients_distinct_clients_make_it_apply_to_all(self) -> None:
        learned = LearnedBypass(failures=2, min_clients=3)
        learned.record_failure(PINNED, A, 0.0, "x")
        learned.record_failure(PINNED, A, 1.0, "x")  # A alone
        learned.record_failure(PINNED, B, 2.0, "x")
        event = learned.record_failure(PINNED, C, 3.0, "y")
        self.assertEqual(event, Learned(PINNED, "y", "all", ("10.0.0.1", "10.0.0.2", "10.0.0.3"), 3603.0))
        self.assertTrue(learned.is_bypassed(PINNED, D, 3.0))
        self.assertEqual(learned.pending, 0)
        # Once it applies to all, failures no longer count or report.
        self.assertIsNone(learned.record_failure(PINNED, D, 4.0, "x"))
        self.assertIsNone(learned.record_failure(PINNED, D, 5.0, "x"))
        self.assertEqual(learned.pending, 0)

    def test_one_client_failing_many_times_is_still_one_client(self) -> None:
        learned = LearnedBypass(failures=2, min_clients=2)
        events = [learned.record_failure(PINNED, A, float(t), "x") for t in range(50)]
        self.assertEqual([e.scope for e in events if e is not None], ["client"])
        self.assertFalse(learned.is_bypassed(PINNED, B, 50.0))

    def test_clients_must_fail_within_the_window(self) -> None:
        learned = LearnedBypass(failures=1, window=100, min_clients=3)
        self.assertEqual(learned.record_failure(PINNED, A, 0.0, "x"), Learned(PINNED, "x", "client", ("10.0.0.1",), 3600.0))
        learned.record_failure(PINNED, B, 60.0, "x")
        # A's failure is 100 s old: only B and C count.
        event = learned.record_failure(PINNED, C, 100.0, "x")
        self.assertEqual(event, Learned(PINNED, "x", "client", ("10.0.0.3",), 3700.0))
        self.assertFalse(learned.is_bypassed(PINNED, D, 100.0))
        event = learned.record_failure(PINNED, D, 159.0, "x")
        self.assertEqual(event and (event.scope, event.clients), ("all", ("10.0.0.2", "10.0.0.3", "10.0.0.4")))

    def test_min_clients_also_needs_the_failures(self) -> None:
        """With min_clients below failures, the failures of all clients together must reach it."""
        learned = LearnedBypass(failures=3, min_clients=2)
        learned.record_failure(PINNED, A, 0.0, "x")
        self.assertIsNone(learned.record_failure(PINNED, B, 1.0, "x"))
        event = learned.record_failure(PINNED, B, 2.0, "x")
        self.assertEqual(event and event.scope, "all")

    def test_ipv4_mapped_client_is_the_ipv4_client(self) -> None:
        learned = LearnedBypass(failures=1)
        event = learned.record_failure(PINNED, IPv6Address("::ffff:10.0.0.1"), 0.0, "x")
        self.assertEqual(event and event.clients, ("10.0.0.1",))
        self.assertTrue(learned.is_bypassed(PINNED, A, 0.0))
        learned.record_failure(OTHER, V6, 0.0, "x")
        self.assertTrue(learned.is_bypassed(OTHER, V6, 0.0))
        self.assertFalse(learned.is_bypassed(OTHER, IPv6Address("2001:db8:1::6"), 0.0))

    def test_only_the_first_time_per_client(self) -> None:
        learned = LearnedBypass(failures=2, min_clients=5)
        learned.record_failure(PINNED, A, 0.0, "a")
        self.assertIsNotNone(learned.record_failure(PINNED, A, 1.0, "b"))
        self.assertIsNone(learned.record_failure(PINNED, A, 2.0, "c"))
        self.assertEqual(learned.entries(), [Learned(PINNED, "b", "client", ("10.0.0.1",), 3601.0)])


class AllScopeTests(SynchronousTestCase):
    """scope = "all": any client's failures teach every client (the old behaviour)."""

    def test_one_client_teaches_all(self) -> None:
        learned = LearnedBypass(failures=2, scope="all", min_clients=3)
        learned.record_failure(PINNED, A, 0.0, "x")
        event = learned.record_failure(PINNED, A, 1.0, "x")
        self.assertEqual(event, Learned(PINNED, "x", "all", ("10.0.0.1",), 3601.0))
        self.assertTrue(learned.is_bypassed(PINNED, B, 1.0))

    def test_failures_of_clients_add_up(self) -> None:
        learned = LearnedBypass(failures=2, scope="all")
        self.assertIsNone(learned.record_failure(PINNED, A, 0.0, "x"))
        event = learned.record_failure(PINNED, B, 1.0, "x")
        self.assertEqual(event and (event.scope, event.clients), ("all", ("10.0.0.1", "10.0.0.2")))

    def test_spread_failures_do_not_learn(self) -> None:
        learned = LearnedBypass(failures=2, window=300, scope="all")
        for now in (0.0, 300.0, 600.0, 900.5):
            self.assertIsNone(learned.record_failure(PINNED, A, now, "x"))
        self.assertFalse(learned.is_bypassed(PINNED, A, 900.5))
        # ...but two inside one window do.
        self.assertIsNotNone(learned.record_failure(PINNED, A, 1200.4, "x"))

    def test_old_failures_drop_out_of_the_window(self) -> None:
        learned = LearnedBypass(failures=3, window=100, scope="all")
        learned.record_failure(PINNED, A, 0.0, "x")
        learned.record_failure(PINNED, B, 50.0, "x")
        self.assertIsNone(learned.record_failure(PINNED, B, 120.0, "x"))  # the one at 0 is too old
        self.assertIsNotNone(learned.record_failure(PINNED, A, 149.0, "x"))

    def test_keys_are_separate(self) -> None:
        learned = LearnedBypass(failures=2, scope="all")
        learned.record_failure(PINNED, A, 0.0, "x")
        self.assertIsNone(learned.record_failure(MTLS, A, 1.0, "x"))
        self.assertIsNone(learned.record_failure(("pinned.example", "192.0.2.9:443"), A, 1.0, "x"))
        self.assertIsNone(learned.record_failure((None, "192.0.2.1:443"), A, 1.0, "x"))
        self.assertEqual((len(learned), learned.pending), (0, 4))


class LearnTests(SynchronousTestCase):
    """An origin that asks for a client certificate: learned at once, for every client."""

    def test_learn_at_once_for_all(self) -> None:
        learned = LearnedBypass()
        event = learned.learn(MTLS, 5.0, "origin requests a client certificate", clients=[A])
        self.assertEqual(event, Learned(MTLS, "origin requests a client certificate", "all", ("10.0.0.1",), 3605.0))
        self.assertTrue(learned.is_bypassed(MTLS, B, 5.0))
        self.assertIsNone(learned.learn(MTLS, 6.0, "again"))
        self.assertEqual(learned.entries(), [event])

    def test_learn_clears_pending_failures(self) -> None:
        learned = LearnedBypass(failures=3)
        learned.record_failure(MTLS, A, 0.0, "x")
        learned.record_failure(MTLS, B, 0.0, "x")
        self.assertIsNotNone(learned.learn(MTLS, 1.0, "mtls"))
        self.assertEqual(learned.pending, 0)

    def test_learn_after_a_client_scoped_one(self) -> None:
        learned = LearnedBypass(failures=1)
        learned.record_failure(MTLS, A, 0.0, "x")
        event = learned.learn(MTLS, 1.0, "mtls")
        self.assertEqual(event and event.scope, "all")
        self.assertTrue(learned.is_bypassed(MTLS, B, 1.0))


class AdoptTests(SynchronousTestCase):
    """Bypasses another worker learned."""

    def test_client_scoped_stays_client_scoped(self) -> None:
        learned = LearnedBypass()
        event = learned.adopt(Learned(PINNED, "x", "client", ("10.0.0.1",), 99.0), 10.0)
        self.assertEqual(event, Learned(PINNED, "x", "client", ("10.0.0.1",), 3610.0))
        self.assertTrue(learned.is_bypassed(PINNED, A, 10.0))
        self.assertFalse(learned.is_bypassed(PINNED, B, 10.0))
        self.assertIsNone(learned.adopt(Learned(PINNED, "x", "client", ("10.0.0.1",)), 11.0))

    def test_all(self) -> None:
        learned = LearnedBypass()
        event = learned.adopt(Learned(MTLS, "mtls", "all"), 10.0)
        self.assertEqual(event, Learned(MTLS, "mtls", "all", (), 3610.0))
        self.assertTrue(learned.is_bypassed(MTLS, B, 10.0))
        self.assertIsNone(learned.adopt(Learned(MTLS, "mtls", "all"), 11.0))

    def test_clients_from_workers_add_up_to_min_clients(self) -> None:
        learned = LearnedBypass(failures=2, min_clients=3)
        learned.record_failure(PINNED, A, 0.0, "x")
        learned.record_failure(PINNED, A, 1.0, "x")
        event = learned.adopt(Learned(PINNED, "x", "client", ("10.0.0.2",)), 2.0)
        self.assertEqual(event and event.scope, "client")
        event = learned.adopt(Learned(PINNED, "x", "client", ("10.0.0.3",)), 3.0)
        self.assertEqual(event and (event.scope, event.clients), ("all", ("10.0.0.1", "10.0.0.2", "10.0.0.3")))
        self.assertTrue(learned.is_bypassed(PINNED, D, 3.0))

    def test_disabled(self) -> None:
        learned = LearnedBypass(enabled=False)
        self.assertIsNone(learned.adopt(Learned(MTLS, "mtls", "all"), 0.0))
        self.assertIsNone(learned.adopt(Learned(PINNED, "x", "client", ("10.0.0.1",)), 0.0))
        self.assertFalse(learned.is_bypassed(MTLS, A, 0.0))
        self.assertEqual((len(learned), learned.pending), (0, 0))


class DisabledTests(SynchronousTestCase):
    def test_never_learns(self) -> None:
        learned = LearnedBypass(failures=1, min_clients=1, enabled=False)
        self.assertIsNone(learned.record_failure(PINNED, A, 0.0, "x"))
        self.assertIsNone(learned.learn(MTLS, 0.0, "x"))
        self.assertFalse(learned.is_bypassed(PINNED, A, 0.0))
        self.assertFalse(learned.is_bypassed(MTLS, A, 0.0))
        self.assertEqual((len(learned), learned.pending), (0, 0))


class SettingsTests(SynchronousTestCase):
    def test_from_settings(self) -> None:
        learned = LearnedBypass.from_settings(LearningSettings(False, 4, 10.0, 20.0, 30, "all", 5))
        self.assertEqual(
            (learned.enabled, learned.failures, learned.window, learned.ttl, learned.max_entries),
            (False, 4, 10.0, 20.0, 30),
        )
        self.assertEqual((learned.scope, learned.min_clients), ("all", 5))

    def test_defaults_are_safe(self) -> None:
        learned = LearnedBypass.from_settings(LearningSettings())
        self.assertEqual((learned.scope, learned.min_clients), ("client", 3))

    def test_validation(self) -> None:
        bad: list[dict[str, object]] = [
            {"failures": 0},
            {"window": 0},
            {"ttl": -1.0},
            {"max_entries": 0},
            {"window": float("nan")},
            {"min_clients": 0},
            {"scope": "everyone"},
        ]
        for kwargs in bad:
            self.assertRaises(ValueError, LearnedBypass, **kwargs)


class DescribeTests(SynchronousTestCase):
    def test_forms(self) -> None:
        self.assertEqual(
            Learned(PINNED, "unknown ca", "client", ("10.0.0.1",)).describe(),
            "learned bypass for ('pinned.example', '192.0.2.1:443'): unknown ca (client 10.0.0.1 only)",
        )
        self.assertEqual(
            Learned(PINNED, "x", "all", ("10.0.0.1", "10.0.0.2", "10.0.0.3")).describe(),
            "learned bypass for ('pinned.example', '192.0.2.1:443'): x "
            "(every client; failures from 10.0.0.1, 10.0.0.2, 10.0.0.3)",
        )
        self.assertEqual(
            Learned(MTLS, "origin requests a client certificate", "all").describe(),
            "learned bypass for ('mtls.example', '192.0.2.2:443'): origin requests a client certificate",
        )

    def test_many_clients_are_counted_not_listed(self) -> None:
        clients = tuple(f"10.0.0.{n}" for n in range(20))
        line = Learned(PINNED, "x", "all", clients).describe()
        self.assertIn("10.0.0.7 and 12 more)", line)
        self.assertNotIn("10.0.0.8", line)

    def test_log_safe(self) -> None:
        """A reason carrying peer data cannot forge a second log line or escape sequence."""
        line = Learned(PINNED, "alert\nforged line\r\x1b[31m\u202e" + "x" * 1000, "all").describe()
        self.assertEqual(len(line.splitlines()), 1)
        self.assertTrue(line.isprintable())
        self.assertIn("alert\\nforged line\\r\\x1b[31m\\u202e", line)
        self.assertLess(len(line), 400)

    @FUZZ
    @given(st.text())
    def test_printable(self, text: str) -> None:
        safe = printable(text)
        self.assertTrue(safe.isprintable())
        self.assertLessEqual(len(safe), 300)


class ExpiryTests(SynchronousTestCase):
    def test_ttl(self) -> None:
        learned = LearnedBypass(ttl=100)
        learned.learn(MTLS, 0.0, "x")
        self.assertTrue(learned.is_bypassed(MTLS, A, 99.9))
        self.assertFalse(learned.is_bypassed(MTLS, A, 100.0))
        self.assertEqual(len(learned), 0)  # dropped when found expired

    def test_use_does_not_extend(self) -> None:
        learned = LearnedBypass(ttl=100, failures=1)
        learned.record_failure(PINNED, A, 0.0, "x")
        for now in range(0, 100, 10):
            self.assertTrue(learned.is_bypassed(PINNED, A, float(now)))
        self.assertFalse(learned.is_bypassed(PINNED, A, 100.0))

    def test_relearn_after_expiry(self) -> None:
        learned = LearnedBypass(failures=2, window=10, ttl=100)
        learned.record_failure(PINNED, A, 0.0, "x")
        self.assertIsNotNone(learned.record_failure(PINNED, A, 1.0, "x"))
        # Expired: the next failure counts afresh rather than being swallowed.
        self.assertIsNone(learned.record_failure(PINNED, A, 200.0, "y"))
        self.assertFalse(learned.is_bypassed(PINNED, A, 200.0))
        self.assertIsNotNone(learned.record_failure(PINNED, A, 201.0, "y"))
        self.assertTrue(learned.is_bypassed(PINNED, A, 201.0))
        self.assertIsNotNone(learned.learn(MTLS, 300.0, "x"))
        self.assertIsNotNone(learned.learn(MTLS, 400.0, "x"))  # expired at 400, so new again

    def test_prune(self) -> None:
        learned = LearnedBypass(failures=2, window=10, ttl=100)
        learned.learn(MTLS, 0.0, "x")
        learned.learn(PINNED, 50.0, "x")
        learned.record_failure(OTHER, A, 95.0, "x")
        learned.record_failure(OTHER, B, 96.0, "x")
        learned.record_failure(key(1), A, 99.0, "x")
        self.assertEqual(learned.prune(105.0), 2)  # MTLS expired, OTHER's failure from A is stale
        self.assertEqual([e.key for e in learned.entries()], [PINNED])
        self.assertEqual(learned.pending, 2)
        self.assertEqual(learned.prune(105.0), 0)
        self.assertEqual(learned.prune(106.0), 1)  # B's


class BoundTests(SynchronousTestCase):
    def test_learned_cap_evicts_least_recently_used(self) -> None:
        learned = LearnedBypass(max_entries=3)
        for n in range(3):
            learned.learn(key(n), float(n), "x")
        self.assertTrue(learned.is_bypassed(key(0), A, 3.0))  # key(1) is now the least recently used
        learned.learn(key(3), 4.0, "x")
        self.assertEqual([e.key for e in learned.entries()], [key(2), key(0), key(3)])
        self.assertFalse(learned.is_bypassed(key(1), A, 4.0))
        self.assertEqual(learned.evictions, 1)

    def test_client_entries_count_towards_the_cap(self) -> None:
        """Many clients of one key cannot grow the table past max_entries."""
        learned = LearnedBypass(failures=1, min_clients=1000, max_entries=5)
        for n in range(20):
            learned.record_failure(PINNED, client(n), float(n), "x")
        self.assertEqual(len(learned), 5)
        self.assertEqual(learned.pending, 5)
        self.assertEqual([e.clients for e in learned.entries()], [(str(client(n)),) for n in range(15, 20)])
        self.assertEqual(learned.evictions, 15)

    def test_expired_entries_evicted_are_not_counted(self) -> None:
        learned = LearnedBypass(max_entries=1, ttl=10)
        learned.learn(key(0), 0.0, "x")
        learned.learn(key(1), 20.0, "x")
        self.assertEqual(learned.evictions, 0)
        learned.learn(key(2), 21.0, "x")
        self.assertEqual(learned.evictions, 1)

    def test_pending_cap_evicts_least_recent_failure(self) -> None:
        learned = LearnedBypass(failures=2, max_entries=2)
        learned.record_failure(key(0), A, 0.0, "x")
        learned.record_failure(key(1), A, 1.0, "x")
        learned.record_failure(key(2), A, 2.0, "x")  # key(0) is dropped
        self.assertEqual(learned.pending, 2)
        self.assertIsNone(learned.record_failure(key(0), A, 3.0, "x"))  # counts from one again
        self.assertIsNotNone(learned.record_failure(key(2), A, 4.0, "x"))

    def test_pending_cap_counts_clients(self) -> None:
        learned = LearnedBypass(failures=2, min_clients=100, max_entries=3)
        for n in range(10):
            learned.record_failure(PINNED, client(n), float(n), "x")
        self.assertEqual(learned.pending, 3)
        # The oldest clients were forgotten: client 0 counts from one again, client 9 does not.
        self.assertIsNone(learned.record_failure(PINNED, client(0), 10.0, "x"))
        self.assertIsNotNone(learned.record_failure(PINNED, client(9), 11.0, "x"))

    @FUZZ
    @given(
        max_entries=st.integers(min_value=1, max_value=5),
        failures=st.integers(min_value=1, max_value=3),
        min_clients=st.integers(min_value=1, max_value=3),
        scope=st.sampled_from(LEARNING_SCOPES),
        steps=st.lists(
            st.tuples(
                st.sampled_from(["fail", "learn", "adopt", "check", "prune"]),
                st.integers(min_value=0, max_value=6),
                st.integers(min_value=0, max_value=6),
                st.floats(min_value=0, max_value=50),
            ),
            max_size=60,
        ),
    )
    def test_bounded_and_consistent(
        self, max_entries: int, failures: int, min_clients: int, scope: LearningScope,
        steps: list[tuple[str, int, int, float]],
    ) -> None:
        """Neither table ever holds more than max_entries entries; a bypass applies exactly to the
        clients its entries name (or to all), until it expires; events are what is_bypassed sees."""
        learned = LearnedBypass(
            failures=failures, window=20, ttl=30, max_entries=max_entries,
            scope=scope, min_clients=min_clients,
        )
        now = 0.0
        for op, k, c, advance in steps:
            now += advance
            who = client(c)
            event: Learned | None = None
            if op == "fail":
                event = learned.record_failure(key(k), who, now, "x")
            elif op == "learn":
                event = learned.learn(key(k), now, "x")
                self.assertTrue(event is not None or learned.is_bypassed(key(k), client(99), now))
            elif op == "adopt":
                event = learned.adopt(Learned(key(k), "x", "client", (str(who),)), now)
            elif op == "check":
                live = [e for e in learned.entries() if e.key == key(k) and e.expires > now]
                expected = any(e.scope == "all" or str(who) in e.clients for e in live)
                self.assertEqual(learned.is_bypassed(key(k), who, now), expected)
            else:
                learned.prune(now)
                self.assertTrue(all(e.expires > now for e in learned.entries()))
            if event is not None:
                self.assertEqual(event.expires, now + 30)
                if scope == "all":
                    self.assertEqual(event.scope, "all")
                if event.scope == "all":
                    self.assertTrue(learned.is_bypassed(key(k), client(99), now))
                    if op != "learn":
                        self.assertGreaterEqual(len(event.clients), 1 if scope == "all" else min_clients)
                else:
                    self.assertEqual(event.clients, (str(who),))
                    self.assertTrue(learned.is_bypassed(key(k), who, now))
                    self.assertFalse(learned.is_bypassed(key(k), client(99), now))
            self.assertLessEqual(len(learned), max_entries)
            self.assertLessEqual(learned.pending, max_entries)
