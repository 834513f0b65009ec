# trial's assertion methods carry no annotations.
# mypy: disable-error-code="no-untyped-call"
"""Tests for etpmitm.learnedmessage: learned bypasses between workers, strictly checked."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv6Address

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from etpmitm.learnedmessage import MAX_CLIENTS, MAX_WHY, from_message, to_message
from etpmitm.learning import Learned, bypass_key

FUZZ = settings(max_examples=300, deadline=None, database=None)

GOOD: dict[str, object] = {
    "learned": ["pinned.example", "192.0.2.1:443"],
    "why": "unknown ca",
    "scope": "client",
    "clients": ["10.0.0.1"],
}


class RoundTripTests(SynchronousTestCase):
    def test_client_scoped(self) -> None:
        learned = Learned(("pinned.example", "192.0.2.1:443"), "unknown ca", "client", ("10.0.0.1",), 99.0)
        message = to_message(learned)
        self.assertEqual(message, GOOD)
        # Over the pipe as JSON; the expiry is the receiver's to set.
        self.assertEqual(from_message(json.loads(json.dumps(message))), Learned(learned.key, "unknown ca", "client", ("10.0.0.1",)))

    def test_all_without_clients(self) -> None:
        learned = Learned((None, "[2001:db8::1]:443"), "origin requests a client certificate", "all")
        self.assertEqual(from_message(json.loads(json.dumps(to_message(learned)))), learned)

    def test_many_clients_are_clipped(self) -> None:
        clients = tuple(f"10.0.{n // 250}.{n % 250}" for n in range(MAX_CLIENTS + 10))
        message = to_message(Learned(("a.example", "192.0.2.1:443"), "x", "all", clients))
        self.assertEqual(message["clients"], list(clients[:MAX_CLIENTS]))
        self.assertEqual(from_message(message).clients, clients[:MAX_CLIENTS])

    def test_largest_message_is_one_atomic_pipe_write(self) -> None:
        """Workers write a message to the master in one write of at most PIPE_BUF bytes."""
        sni = ".".join(["a" * 63] * 4)[:253]
        clients = tuple(f"ffff:ffff:ffff:ffff:ffff:ffff:ffff:{n + 0x1000:x}" for n in range(MAX_CLIENTS + 5))
        learned = Learned((sni, "[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:65535"), "\x00" * 5000, "all", clients)
        line = json.dumps(to_message(learned)).encode() + b"\n"
        self.assertLessEqual(len(line), 4096)
        self.assertEqual(from_message(json.loads(line)).why, "\x00" * MAX_WHY)

    @FUZZ
    @given(
        sni=st.none() | st.from_regex(r"[a-z0-9-]{1,20}(\.[a-z0-9-]{1,20}){0,3}", fullmatch=True),
        destination=st.ip_addresses(),
        port=st.integers(min_value=1, max_value=65535),
        why=st.text(max_size=100),
        scope=st.sampled_from(["client", "all"]),
        clients=st.lists(st.ip_addresses(), min_size=1, max_size=5),
    )
    def test_round_trip(
        self, sni: str | None, destination: IPv4Address | IPv6Address, port: int, why: str,
        scope: str, clients: list[IPv4Address | IPv6Address],
    ) -> None:
        key = bypass_key(sni, destination, port)
        texts = tuple(str(c.ipv4_mapped or c) if isinstance(c, IPv6Address) else str(c) for c in clients)
        learned = Learned(key, why, "client" if scope == "client" else "all", texts)
        self.assertEqual(from_message(json.loads(json.dumps(to_message(learned)))), learned)


class StrictTests(SynchronousTestCase):
    def assertRefused(self, problem: str, **changes: object) -> None:
        message = {**GOOD, **changes}
        with self.assertRaises(ValueError) as caught:
            from_message({k: v for k, v in message.items() if v is not DROP})
        self.assertIn(problem, str(caught.exception))

    def test_fields(self) -> None:
        # A message from an older worker has no scope: refused, never taken as "all".
        self.assertRefused("fields are ['learned', 'why']", scope=DROP, clients=DROP)
        self.assertRefused("fields are", extra=1)

    def test_key(self) -> None:
        self.assertRefused("learned is not [SNI, destination]", learned=["a.example"])
        self.assertRefused("learned is not [SNI, destination]", learned="a.example 192.0.2.1:443")
        for sni in ("", "A.example", "a.example\n", "a b", 7, "a" * 254, "a..b", ".a"):
            self.assertRefused("bad SNI", learned=[sni, "192.0.2.1:443"])
        for destination in (
            "192.0.2.1", "192.0.2.1:0", "192.0.2.1:65536", "192.0.2.1:0443", "192.0.2.300:443",
            "2001:db8::1:443", "[2001:DB8::1]:443", "[::ffff:192.0.2.1]:443", "[192.0.2.1]:443",
            " 192.0.2.1:443", 443, None,
        ):
            self.assertRefused("bad destination", learned=["a.example", destination])

    def test_why_and_scope(self) -> None:
        self.assertRefused("why is not a string", why=None)
        self.assertRefused("why is not a string", why="x" * (MAX_WHY + 1))
        for scope in ("everyone", "", None, ["all"], "ALL"):
            self.assertRefused("scope is not one of", scope=scope)

    def test_clients(self) -> None:
        self.assertRefused("names no client", clients=[])
        self.assertRefused("clients is not a list", clients="10.0.0.1")
        self.assertRefused("clients is not a list", clients=["10.0.0.1"] * (MAX_CLIENTS + 1))
        self.assertRefused("not an address", clients=["10.0.0.300"])
        self.assertRefused("other than an address", clients=[1])
        self.assertRefused("not written as '10.0.0.1'", clients=["::ffff:10.0.0.1"])
        self.assertRefused("not written as '2001:db8::1'", clients=["2001:DB8::1"])


DROP = object()
