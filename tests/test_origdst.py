"""Decoding the sockaddr that SO_ORIGINAL_DST returns."""

from __future__ import annotations

import ipaddress
import socket
import struct

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from etpmitm.gateway.origdst import Destination, parse_sockaddr, unmap


def sockaddr_in(ip: str, port: int) -> bytes:
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H4s", port, socket.inet_pton(socket.AF_INET, ip)) + bytes(8)


def sockaddr_in6(ip: str, port: int) -> bytes:
    packed = socket.inet_pton(socket.AF_INET6, ip)
    return struct.pack("=H", socket.AF_INET6) + struct.pack("!HI16sI", port, 0, packed, 0)


class ParseSockaddrTests(SynchronousTestCase):
    def test_ipv4(self) -> None:
        self.assertEqual(
            parse_sockaddr(sockaddr_in("10.231.2.2", 443)),
            Destination(ipaddress.IPv4Address("10.231.2.2"), 443),
        )

    def test_ipv6(self) -> None:
        dst = parse_sockaddr(sockaddr_in6("fd00:e7:2::2", 8443))
        self.assertEqual(dst, Destination(ipaddress.IPv6Address("fd00:e7:2::2"), 8443))
        self.assertEqual(str(dst), "[fd00:e7:2::2]:8443")

    def test_garbage(self) -> None:
        for raw in (b"", b"\x02", struct.pack("=H", 99) + bytes(14), struct.pack("=H", socket.AF_INET6) + bytes(10)):
            self.assertRaises(ValueError, parse_sockaddr, raw)

    @given(st.binary(max_size=40))
    def test_onlyValueError(self, raw: bytes) -> None:
        try:
            parse_sockaddr(raw)
        except ValueError:
            pass

    def test_unmap(self) -> None:
        self.assertEqual(unmap("::ffff:10.0.0.1"), ipaddress.IPv4Address("10.0.0.1"))
        self.assertEqual(unmap("fe80::1%eth0"), ipaddress.IPv6Address("fe80::1"))
        self.assertEqual(unmap("10.0.0.1"), ipaddress.IPv4Address("10.0.0.1"))
