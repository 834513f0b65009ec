# trial's assertion methods carry no annotations.
# mypy: disable-error-code="no-untyped-call"
"""Tests for etpmitm.admission: connection limits, per-client rate, and the refusal log."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from etpmitm.admission import Admission, RateLimitedLog, refusal_kind

FUZZ = settings(max_examples=200, deadline=None, database=None)

A, B = IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2")


def client(n: int) -> IPv4Address:
    return IPv4Address(0x0A010000 + n)  # 10.1.x.x: never A or B


class LimitTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        admission = Admission()
        self.assertEqual(
            (admission.max_connections, admission.per_client, admission.per_client_rate, admission.burst),
            (10000, 2048, 200.0, 400),
        )

    def test_connection_limit(self) -> None:
        admission = Admission(max_connections=3, per_client=0, per_client_rate=0)
        for n in range(3):
            self.assertIsNone(admission.admit(client(n), 0.0))
        self.assertEqual(admission.open, 3)
        self.assertEqual(admission.admit(client(9), 0.0), "connection limit: 3 open")
        self.assertEqual(admission.open, 3)
        admission.release(client(1))
        self.assertEqual(admission.open, 2)
        self.assertIsNone(admission.admit(client(9), 0.0))

    def test_per_client_limit(self) -> None:
        admission = Admission(max_connections=100, per_client=2, per_client_rate=0)
        self.assertIsNone(admission.admit(A, 0.0))
        self.assertIsNone(admission.admit(A, 0.0))
        self.assertEqual(admission.admit(A, 0.0), "per-client limit: 2 open from 10.0.0.1")
        self.assertIsNone(admission.admit(B, 0.0))  # others are not affected
        admission.release(A)
        self.assertIsNone(admission.admit(A, 0.0))
        self.assertEqual(admission.open, 3)

    def test_ipv4_mapped_is_the_same_client(self) -> None:
        admission = Admission(per_client=1, per_client_rate=0)
        self.assertIsNone(admission.admit(IPv6Address("::ffff:10.0.0.1"), 0.0))
        self.assertEqual(admission.admit(A, 0.0), "per-client limit: 1 open from 10.0.0.1")
        admission.release(IPv6Address("::ffff:10.0.0.1"))
        self.assertIsNone(admission.admit(A, 0.0))

    def test_ipv6_addresses_are_separate_clients(self) -> None:
        admission = Admission(per_client=1, per_client_rate=0)
        self.assertIsNone(admission.admit(IPv6Address("2001:db8::1"), 0.0))
        self.assertIsNone(admission.admit(IPv6Address("2001:db8::2"), 0.0))
        self.assertEqual(admission.admit(IPv6Address("2001:db8::1"), 0.0), "per-client limit: 1 open from 2001:db8::1")

    def test_unlimited(self) -> None:
        admission = Admission(max_connections=0, per_client=0, per_client_rate=0)
        for _ in range(5000):
            self.assertIsNone(admission.admit(A, 0.0))
        self.assertEqual((admission.open, admission.clients), (5000, 0))

    def test_release_never_goes_below_zero(self) -> None:
        admission = Admission()
        admission.release(A)
        self.assertEqual(admission.open, 0)
        self.assertIsNone(admission.admit(A, 0.0))
        admission.release(A)
        admission.release(A)
        self.assertEqual(admission.open, 0)

    def test_validation(self) -> None:
        for kwargs in ({"max_connections": -1}, {"per_client": -1}, {"per_client_rate": -0.5},
                       {"per_client_rate": float("nan")}, {"burst": 0}):
            self.assertRaises(ValueError, Admission, **kwargs)
        Admission(per_client_rate=0, burst=0)  # no rate limit: no burst needed


class RateTests(SynchronousTestCase):
    def test_burst_then_refill(self) -> None:
        admission = Admission(per_client=0, per_client_rate=10, burst=20)
        for _ in range(20):
            self.assertIsNone(admission.admit(A, 0.0))
        self.assertEqual(admission.admit(A, 0.0), "per-client rate: over 10/s from 10.0.0.1")
        self.assertEqual(admission.admit(A, 0.05), "per-client rate: over 10/s from 10.0.0.1")
        self.assertIsNone(admission.admit(A, 0.1))  # 0.1 s at 10/s: one token
        self.assertIsNotNone(admission.admit(A, 0.1))
        self.assertIsNone(admission.admit(B, 0.1))  # B has its own bucket
        # Refills up to the burst, no further.
        for _ in range(20):
            self.assertIsNone(admission.admit(A, 100.0))
        self.assertIsNotNone(admission.admit(A, 100.0))

    def test_refused_connections_take_no_token(self) -> None:
        admission = Admission(per_client=0, per_client_rate=1, burst=1)
        self.assertIsNone(admission.admit(A, 0.0))
        for now in (0.1, 0.2, 0.5, 0.9):
            self.assertIsNotNone(admission.admit(A, now))
        self.assertIsNone(admission.admit(A, 1.0))

    def test_sustained_rate(self) -> None:
        """Over 10 s at 100 tries a second, a 5/s bucket of 10 admits 10 + 5 * 10."""
        admission = Admission(per_client=0, per_client_rate=5, burst=10)
        admitted = sum(admission.admit(A, step / 100) is None for step in range(1000))
        self.assertEqual(admitted, 10 + 5 * 10 - 1)  # the last refill lands at 10.0 s, just after

    def test_count_checked_before_rate(self) -> None:
        admission = Admission(per_client=1, per_client_rate=1, burst=1)
        self.assertIsNone(admission.admit(A, 0.0))
        self.assertEqual(admission.admit(A, 0.0), "per-client limit: 1 open from 10.0.0.1")


class MemoryTests(SynchronousTestCase):
    def test_idle_clients_are_forgotten_once_refilled(self) -> None:
        admission = Admission(per_client=10, per_client_rate=10, burst=20)  # refills in 2 s
        for n in range(1000):
            self.assertIsNone(admission.admit(client(n), 0.0))
            admission.release(client(n))
        self.assertEqual(admission.clients, 1000)
        admission.admit(B, 1.9)
        self.assertEqual(admission.clients, 1001)  # not yet refilled: remembered
        admission.admit(B, 2.0)
        self.assertEqual(admission.clients, 1)  # only B, which has a connection open

    def test_open_clients_are_kept(self) -> None:
        admission = Admission(per_client=2, per_client_rate=10, burst=20)
        admission.admit(A, 0.0)
        admission.admit(A, 0.0)
        admission.admit(B, 1000.0)
        self.assertEqual(admission.admit(A, 1000.0), "per-client limit: 2 open from 10.0.0.1")

    def test_a_forgotten_client_starts_with_a_full_bucket(self) -> None:
        admission = Admission(per_client=0, per_client_rate=1, burst=2)
        admission.admit(A, 0.0)
        admission.release(A)
        admission.admit(B, 5.0)  # A is forgotten
        self.assertIsNone(admission.admit(A, 5.0))
        self.assertIsNone(admission.admit(A, 5.0))
        self.assertIsNotNone(admission.admit(A, 5.0))

    def test_idle_clients_are_capped(self) -> None:
        admission = Admission(per_client=0, per_client_rate=1, burst=100, max_idle_clients=50)
        for n in range(1000):
            admission.admit(client(n), 0.0)
            admission.release(client(n))
        self.assertLessEqual(admission.clients, 51)

    def test_only_per_client_count_keeps_no_idle_clients(self) -> None:
        admission = Admission(per_client=5, per_client_rate=0)
        for n in range(100):
            admission.admit(client(n), 0.0)
            admission.release(client(n))
        admission.admit(A, 0.0)
        self.assertEqual(admission.clients, 1)

    @FUZZ
    @given(
        per_client=st.integers(min_value=0, max_value=3),
        max_connections=st.integers(min_value=0, max_value=6),
        steps=st.lists(
            st.tuples(st.booleans(), st.integers(min_value=0, max_value=8), st.floats(min_value=0, max_value=3)),
            max_size=80,
        ),
    )
    def test_counts_match_a_model(
        self, per_client: int, max_connections: int, steps: list[tuple[bool, int, float]]
    ) -> None:
        """Open counts follow admits and releases; limits hold; state is kept only for
        clients with connections open or a bucket still refilling."""
        admission = Admission(max_connections=max_connections, per_client=per_client,
                              per_client_rate=2, burst=3, max_idle_clients=4)
        open_by: dict[int, int] = {}
        now = 0.0
        for arrive, n, advance in steps:
            now += advance
            if arrive:
                refused = admission.admit(client(n), now)
                if refused is None:
                    open_by[n] = open_by.get(n, 0) + 1
                elif refused.startswith("connection limit"):
                    self.assertEqual(sum(open_by.values()), max_connections)
                elif refused.startswith("per-client limit"):
                    self.assertEqual(open_by.get(n), per_client)
                else:
                    self.assertTrue(refused.startswith("per-client rate: over 2/s from "))
            elif open_by.get(n):
                admission.release(client(n))
                open_by[n] -= 1
            self.assertEqual(admission.open, sum(open_by.values()))
            if max_connections:
                self.assertLessEqual(admission.open, max_connections)
            if per_client:
                self.assertTrue(all(count <= per_client for count in open_by.values()))
            self.assertLessEqual(admission.clients, sum(1 for c in open_by.values() if c) + 4 + 1)


class RateLimitedLogTests(SynchronousTestCase):
    def test_once_per_interval_with_the_count_left_out(self) -> None:
        log = RateLimitedLog(interval=10)
        self.assertEqual(log.check("per-client rate", 0.0), (True, 0))
        self.assertEqual(log.check("per-client rate", 1.0), (False, 1))
        self.assertEqual(log.check("per-client rate", 9.9), (False, 2))
        self.assertEqual(log.check("connection limit", 5.0), (True, 0))  # kinds are separate
        self.assertEqual(log.check("per-client rate", 10.0), (True, 2))
        self.assertEqual(log.check("per-client rate", 15.0), (False, 1))
        self.assertEqual(log.check("per-client rate", 100.0), (True, 1))
        self.assertEqual(log.check("per-client rate", 200.0), (True, 0))

    def test_kinds_are_bounded(self) -> None:
        log = RateLimitedLog(interval=10, max_kinds=3)
        for n in range(100):
            self.assertEqual(log.check(f"kind {n}", 0.0), (True, 0))
        self.assertEqual(log.check("kind 99", 1.0), (False, 1))
        self.assertEqual(log.check("kind 0", 1.0), (True, 0))  # forgotten

    def test_refusal_kind(self) -> None:
        admission = Admission(max_connections=1, per_client=1, per_client_rate=1, burst=1)
        admission.admit(A, 0.0)
        self.assertEqual(refusal_kind(admission.admit(B, 0.0) or ""), "connection limit")
        admission = Admission(per_client=1, per_client_rate=1, burst=1)
        admission.admit(A, 0.0)
        self.assertEqual(refusal_kind(admission.admit(A, 0.0) or ""), "per-client limit")
        admission.release(A)
        self.assertEqual(refusal_kind(admission.admit(A, 0.5) or ""), "per-client rate")
