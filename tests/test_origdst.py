"""Decoding the sockaddr that SO_ORIGINAL_DST returns."""

from __future__ import annotations

import ipaddress
import socket
import struct
from pathlib import Path
from unittest import SkipTest

from hypothesis import given, strategies as st
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from etpmitm.addresses import unmap
from etpmitm.gateway.origdst import Destination, LocalAddresses, parse_fib_trie, parse_if_inet6, parse_sockaddr


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


class LocalAddressesTests(SynchronousTestCase):
    FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
     +-- 10.231.1.0/24 2 0 2
           |-- 10.231.1.0
              /24 link UNICAST
           |-- 10.231.1.1
              /32 host LOCAL
        |-- 10.231.1.255
           /32 link BROADCAST
"""
    IF_INET6 = "00000000000000000000000000000001 01 80 10 80       lo\nfd0000e7000100000000000000000001 04 40 00 80  lan0\n"

    def test_parse(self) -> None:
        self.assertEqual(
            parse_fib_trie(self.FIB_TRIE),
            {ipaddress.IPv4Network("127.0.0.0/8"), ipaddress.IPv4Network("127.0.0.1/32"), ipaddress.IPv4Network("10.231.1.1/32")},
        )
        self.assertEqual(parse_if_inet6(self.IF_INET6), {ipaddress.IPv6Network("::1/128"), ipaddress.IPv6Network("fd00:e7:1::1/128")})

    def test_lookupAndRefresh(self) -> None:
        root = FilePath(self.mktemp())
        root.makedirs()
        root.child("fib_trie").setContent(self.FIB_TRIE.encode())
        root.child("if_inet6").setContent(self.IF_INET6.encode())
        now = [0.0]
        local = LocalAddresses(lambda: now[0], maxAge=5, root=Path(root.path))
        self.assertTrue(local(ipaddress.ip_address("10.231.1.1")))
        self.assertTrue(local(ipaddress.ip_address("fd00:e7:1::1")))
        self.assertTrue(local(ipaddress.ip_address("127.3.4.5")))
        self.assertFalse(local(ipaddress.ip_address("10.231.1.2")))
        root.child("fib_trie").setContent(self.FIB_TRIE.replace("10.231.1.1\n", "10.231.1.9\n").encode())
        now[0] = 4.9
        self.assertTrue(local(ipaddress.ip_address("10.231.1.1")))  # not re-read yet
        now[0] = 5.0
        self.assertFalse(local(ipaddress.ip_address("10.231.1.1")))
        self.assertTrue(local(ipaddress.ip_address("10.231.1.9")))

    def test_missingFilesLeaveLoopback(self) -> None:
        local = LocalAddresses(root=Path(self.mktemp()))
        self.assertTrue(local(ipaddress.ip_address("127.0.0.1")))
        self.assertTrue(local(ipaddress.ip_address("::1")))
        self.assertFalse(local(ipaddress.ip_address("192.0.2.1")))

    def test_thisMachine(self) -> None:
        """On Linux the real files parse, and 127.0.0.1 is ours."""
        if not Path("/proc/net/fib_trie").exists():
            raise SkipTest("no /proc/net/fib_trie: not Linux")
        self.assertTrue(LocalAddresses()(ipaddress.ip_address("127.0.0.1")))
        self.assertNotEqual(parse_fib_trie(Path("/proc/net/fib_trie").read_text()), set())
