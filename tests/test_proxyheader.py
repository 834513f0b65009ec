"""The PROXY header parser: v1 and v2, IPv4 and IPv6, split anywhere, and every way a header goes wrong."""

from __future__ import annotations

import ipaddress
import socket
import struct

from twisted.protocols.haproxy import _v1parser, _v2parser  # an independent reading of the same bytes
from twisted.trial.unittest import SynchronousTestCase

from etpmitm.gateway.origdst import Destination
from etpmitm.gateway.proxyheader import LOCAL, Local, V2_SIGNATURE, ProxyHeader, ProxyHeaderError, ProxyHeaderParser

HELLO = b"\x16\x03\x01\x00\x05hello"


def v1(protocol: str, src: str, dst: str, sport: int, dport: int) -> bytes:
    return f"PROXY {protocol} {src} {dst} {sport} {dport}\r\n".encode()


def v2(src: str, dst: str, sport: int, dport: int, command: int = 1, family: int | None = None,
       tlvs: bytes = b"", length: int | None = None) -> bytes:
    """A v2 header as HAProxy's send-proxy-v2 writes it (TLVs after the addresses)."""
    ip = ipaddress.ip_address(src)
    if ip.version == 4:
        body = socket.inet_pton(socket.AF_INET, src) + socket.inet_pton(socket.AF_INET, dst)
        fam = 0x11
    else:
        body = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
        fam = 0x21
    body += struct.pack("!HH", sport, dport) + tlvs
    size = len(body) if length is None else length
    return V2_SIGNATURE + bytes([0x20 | command, fam if family is None else family]) + struct.pack("!H", size) + body


def dest(ip: str, port: int) -> Destination:
    return Destination(ipaddress.ip_address(ip), port)


class ParserTests(SynchronousTestCase):
    def feedAll(self, *chunks: bytes) -> tuple[ProxyHeader | Local, bytes]:
        """Feed ``chunks`` until the header is whole: the header, and every byte after it."""
        parser = ProxyHeaderParser()
        for i, chunk in enumerate(chunks):
            found = parser.feed(chunk)
            if found is not None:
                return found[0], found[1] + b"".join(chunks[i + 1:])
        raise AssertionError("no header")

    def assertRefused(self, data: bytes, reason: str) -> None:
        parser = ProxyHeaderParser()
        with self.assertRaises(ProxyHeaderError) as caught:
            parser.feed(data)
        self.assertIn(reason, str(caught.exception))

    def test_v1IPv4(self) -> None:
        header, rest = self.feedAll(v1("TCP4", "10.231.1.2", "10.231.2.2", 41000, 443) + HELLO)
        self.assertEqual(header, ProxyHeader(dest("10.231.1.2", 41000), dest("10.231.2.2", 443), 1))
        self.assertEqual(rest, HELLO)

    def test_v1IPv6(self) -> None:
        header, rest = self.feedAll(v1("TCP6", "fd00:e7:1::2", "fd00:e7:2::2", 41000, 443))
        self.assertEqual(header, ProxyHeader(dest("fd00:e7:1::2", 41000), dest("fd00:e7:2::2", 443), 1))
        self.assertEqual(rest, b"")

    def test_v2IPv4WithTLVs(self) -> None:
        """TLVs after the addresses (an NLB's, HAProxy's unique-id) are skipped, not taken for data."""
        tlv = b"\x05\x00\x04abcd"
        header, rest = self.feedAll(v2("10.231.1.2", "10.231.2.2", 41000, 443, tlvs=tlv) + HELLO)
        self.assertEqual(header, ProxyHeader(dest("10.231.1.2", 41000), dest("10.231.2.2", 443), 2))
        self.assertEqual(rest, HELLO)

    def test_v2IPv6(self) -> None:
        header, _ = self.feedAll(v2("fd00:e7:1::2", "fd00:e7:2::2", 41000, 8443))
        self.assertEqual(header, ProxyHeader(dest("fd00:e7:1::2", 41000), dest("fd00:e7:2::2", 8443), 2))

    def test_v4MappedAddressesAreIPv4(self) -> None:
        """A dual-stack balancer's v4-mapped addresses are the IPv4 addresses the policy names."""
        header, _ = self.feedAll(v2("::ffff:10.231.1.2", "::ffff:10.231.2.2", 41000, 443))
        self.assertEqual(header.source.ip, ipaddress.IPv4Address("10.231.1.2"))
        self.assertEqual(header.destination.ip, ipaddress.IPv4Address("10.231.2.2"))

    def test_splitAtEveryByte(self) -> None:
        """A header may arrive in pieces of any size: the result is the same for every split."""
        for data in (v1("TCP4", "10.0.0.2", "192.0.2.10", 5, 443) + HELLO,
                     v2("fd00::2", "2001:db8::10", 5, 443, tlvs=b"\x04\x00\x01x") + HELLO):
            whole = self.feedAll(data)
            for at in range(1, len(data)):
                self.assertEqual(self.feedAll(data[:at], data[at:]), whole, at)
            self.assertEqual(self.feedAll(*[data[i:i + 1] for i in range(len(data))]), whole)

    def test_agreesWithTwistedsParsers(self) -> None:
        """Twisted's own v1/v2 parsers read the same addresses from the same bytes."""
        for data, twisted in ((v1("TCP4", "10.0.0.2", "192.0.2.10", 5, 443), _v1parser.V1Parser.parse),
                              (v1("TCP6", "fd00::2", "2001:db8::10", 5, 443), _v1parser.V1Parser.parse),
                              (v2("10.0.0.2", "192.0.2.10", 5, 443), _v2parser.V2Parser.parse),
                              (v2("fd00::2", "2001:db8::10", 5, 443), _v2parser.V2Parser.parse)):
            header, _ = self.feedAll(data)
            assert isinstance(header, ProxyHeader)
            info = twisted(data.rstrip(b"\r\n"))
            assert info.source is not None and info.destination is not None
            self.assertEqual(
                (header.source, header.destination),
                (dest(info.source.host, info.source.port), dest(info.destination.host, info.destination.port)),  # type: ignore[attr-defined]
            )

    # -- refused -------------------------------------------------------------------

    def test_noHeaderButTLS(self) -> None:
        self.assertRefused(HELLO, "a TLS handshake record (is the balancer sending PROXY headers? send-proxy-v2)")

    def test_garbage(self) -> None:
        self.assertRefused(b"GET / HTTP/1.1\r\n", "no PROXY header: the connection starts with 474554202f204854")

    def test_almostV1(self) -> None:
        self.assertRefused(b"PROXZ TCP4", "no PROXY header")

    def test_almostV2Signature(self) -> None:
        self.assertRefused(V2_SIGNATURE[:5] + b"X", "no PROXY header")

    def test_v1WithoutCRLF(self) -> None:
        self.assertRefused(b"PROXY TCP4 " + b"1" * 100, "no CRLF within 107 bytes")

    def test_v1Unknown(self) -> None:
        self.assertRefused(b"PROXY UNKNOWN\r\n", "v1 UNKNOWN protocol: no device address")

    def test_v1BadFields(self) -> None:
        self.assertRefused(b"PROXY TCP4 10.0.0.2 10.0.0.3 5\r\n", "has 5 fields, not 6")
        self.assertRefused(v1("UDP4", "10.0.0.2", "10.0.0.3", 5, 443), "protocol 'UDP4'")
        self.assertRefused(v1("TCP4", "fd00::2", "10.0.0.3", 5, 443), "not TCP4")
        self.assertRefused(v1("TCP6", "10.0.0.2", "10.0.0.3", 5, 443), "not TCP6")
        self.assertRefused(b"PROXY TCP4 10.0.0.2 10.0.0.3 5 -443\r\n", "bad port '-443'")
        self.assertRefused(b"PROXY TCP4 10.0.0.2 10.0.0.3 5 65536\r\n", "port 65536")
        self.assertRefused(b"PROXY TCP4 10.0.0.2 10.0.0.3 5 0\r\n", "port 0")
        self.assertRefused(b"PROXY TCP4 10.0.0.2 10.0.0.\xff 5 443\r\n", "not ASCII")

    def test_v2Local(self) -> None:
        """LOCAL: the balancer's own connection (a health check), addresses ignored, as HAProxy sends it."""
        self.assertEqual(self.feedAll(V2_SIGNATURE + b"\x20\x00\x00\x00"), (LOCAL, b""))
        self.assertEqual(self.feedAll(v2("10.0.0.2", "10.0.0.3", 5, 443, command=0) + b"x"), (LOCAL, b"x"))

    def test_v2UnknownCommand(self) -> None:
        self.assertRefused(v2("10.0.0.2", "10.0.0.3", 5, 443, command=2), "unknown command 0x2")

    def test_v2WrongVersion(self) -> None:
        data = bytearray(v2("10.0.0.2", "10.0.0.3", 5, 443))
        data[12] = 0x11
        self.assertRefused(bytes(data), "version 1")

    def test_v2Families(self) -> None:
        for family, what in ((0x00, "unspecified family"), (0x12, "UDP over IPv4"), (0x22, "UDP over IPv6"),
                             (0x31, "unix stream socket"), (0x15, "unknown family/protocol 0x15")):
            self.assertRefused(v2("10.0.0.2", "10.0.0.3", 5, 443, family=family), what)

    def test_v2TruncatedAddresses(self) -> None:
        """A length too short for the family's addresses."""
        data = v2("fd00::2", "fd00::3", 5, 443, length=12)[:16 + 12]
        self.assertRefused(data, "truncated: 12 bytes of addresses, TCP needs 36")

    def test_v2WaitsForTheWholeLength(self) -> None:
        """A header shorter than its length field says is not judged early."""
        data = v2("10.0.0.2", "10.0.0.3", 5, 443, tlvs=b"\x04\x00\x10" + b"x" * 16)
        parser = ProxyHeaderParser()
        self.assertIsNone(parser.feed(data[:-1]))
        self.assertEqual(parser.buffered, len(data) - 1)
