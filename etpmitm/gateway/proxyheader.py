"""PROXY protocol headers (HAProxy's v1 text and v2 binary), sans-IO.

A gateway behind a load balancer (HAProxy ``send-proxy-v2``, IPVS, a cloud
network load balancer) learns the device's address and the original
destination from the header the balancer sends before the device's first
byte, instead of from ``SO_ORIGINAL_DST``.  :class:`ProxyHeaderParser` takes
the bytes as they arrive (a header may span TCP segments) and returns the
header once it is whole, with the bytes that followed it; anything that is
not a TCP-over-IP ``PROXY`` header raises :class:`ProxyHeaderError` with the
reason.  A v2 ``LOCAL`` header is the balancer's own connection, its health
check (HAProxy sends one on every check of a ``send-proxy-v2`` server):
:data:`LOCAL` says so.  A v1 ``UNKNOWN`` header names no device, so there is
nowhere to relay it: an error here.

Spec: https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress
import struct

import attrs

from etpmitm.addresses import unmap
from etpmitm.gateway.origdst import Destination

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107
"""The longest v1 line, CRLF included (spec, section 2.1)."""
_V2_FIXED = 16
_LOCAL, _PROXY = 0x0, 0x1
_TCP4, _TCP6 = 0x11, 0x21
_FAMILIES = {0x00: "an unspecified family (AF_UNSPEC)", 0x12: "UDP over IPv4", 0x22: "UDP over IPv6",
             0x31: "a unix stream socket", 0x32: "a unix datagram socket"}


class ProxyHeaderError(ValueError):
    """The bytes are not a usable PROXY header; the message says why."""


@attrs.frozen
class ProxyHeader:
    """What a balancer said of the connection it relays."""

    source: Destination
    """The device's address and port."""
    destination: Destination
    """Where the device was going (the original destination)."""
    version: int


class Local:
    """A v2 LOCAL header: the balancer's own connection (a health check), relaying no device."""


LOCAL = Local()


class ProxyHeaderParser:
    """Buffers the first bytes of a connection until its PROXY header is whole."""

    def __init__(self) -> None:
        self._buffer = b""

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> tuple[ProxyHeader | Local, bytes] | None:
        """The header and the bytes after it, or None while more is needed.

        Raises :class:`ProxyHeaderError` as soon as the bytes cannot be a
        usable header.
        """
        buffer = self._buffer = self._buffer + data
        if not buffer:
            return None
        if buffer[0] == V2_SIGNATURE[0]:
            return self._v2(buffer)
        if buffer[0] == V1_PREFIX[0]:
            return self._v1(buffer)
        raise ProxyHeaderError(f"no PROXY header: the connection starts with {_first(buffer)}")

    def _v1(self, buffer: bytes) -> tuple[ProxyHeader | Local, bytes] | None:
        if buffer[: len(V1_PREFIX)] != V1_PREFIX[: len(buffer)]:
            raise ProxyHeaderError(f"no PROXY header: the connection starts with {_first(buffer)}")
        end = buffer.find(b"\r\n", 0, V1_MAX)
        if end < 0:
            if len(buffer) >= V1_MAX:
                raise ProxyHeaderError(f"v1 header: no CRLF within {V1_MAX} bytes")
            return None
        self._buffer = b""
        return _parse_v1(buffer[:end]), buffer[end + 2:]

    def _v2(self, buffer: bytes) -> tuple[ProxyHeader | Local, bytes] | None:
        if buffer[: len(V2_SIGNATURE)] != V2_SIGNATURE[: len(buffer)]:
            raise ProxyHeaderError(f"no PROXY header: the connection starts with {_first(buffer)}")
        if len(buffer) < _V2_FIXED:
            return None
        version, command = buffer[12] >> 4, buffer[12] & 0x0F
        if version != 2:
            raise ProxyHeaderError(f"v2 signature with version {version}")
        (length,) = struct.unpack_from("!H", buffer, 14)
        if len(buffer) < _V2_FIXED + length:
            return None
        self._buffer = b""
        header, rest = buffer[_V2_FIXED:_V2_FIXED + length], buffer[_V2_FIXED + length:]
        if command == _LOCAL:
            return LOCAL, rest
        if command != _PROXY:
            raise ProxyHeaderError(f"v2 header with unknown command {command:#x}")
        family = buffer[13]
        if family == _TCP4:
            form, size, kind = "!4s4sHH", 12, ipaddress.IPv4Address
        elif family == _TCP6:
            form, size, kind = "!16s16sHH", 36, ipaddress.IPv6Address  # type: ignore[assignment]
        else:
            what = _FAMILIES.get(family, f"unknown family/protocol {family:#04x}")
            raise ProxyHeaderError(f"v2 header for {what}: only TCP over IPv4 or IPv6 is relayed")
        if length < size:
            raise ProxyHeaderError(f"v2 header truncated: {length} bytes of addresses, TCP needs {size}")
        src, dst, sport, dport = struct.unpack_from(form, header)
        return _header(kind(src), sport, kind(dst), dport, 2), rest


def _parse_v1(line: bytes) -> ProxyHeader:
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("v1 header is not ASCII") from None
    words = text.split(" ")
    if len(words) >= 2 and words[1] == "UNKNOWN":
        raise ProxyHeaderError("v1 UNKNOWN protocol: no device address to relay")
    if len(words) != 6:
        raise ProxyHeaderError(f"v1 header has {len(words)} fields, not 6: {text!r}")
    _, protocol, src, dst, sport, dport = words
    if protocol not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"v1 header with protocol {protocol!r}: only TCP4 and TCP6 are relayed")
    source: ipaddress.IPv4Address | ipaddress.IPv6Address
    destination: ipaddress.IPv4Address | ipaddress.IPv6Address
    try:
        if protocol == "TCP4":
            source, destination = ipaddress.IPv4Address(src), ipaddress.IPv4Address(dst)
        else:
            source, destination = ipaddress.IPv6Address(src), ipaddress.IPv6Address(dst)
    except ValueError:
        raise ProxyHeaderError(f"v1 header with an address that is not {protocol}: {text!r}") from None
    return _header(source, _port(sport), destination, _port(dport), 1)


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        raise ProxyHeaderError(f"v1 header with a bad port {text!r}")
    return int(text)


def _header(src: ipaddress.IPv4Address | ipaddress.IPv6Address, sport: int,
            dst: ipaddress.IPv4Address | ipaddress.IPv6Address, dport: int, version: int) -> ProxyHeader:
    for port in (sport, dport):
        if not 0 < port < 65536:
            raise ProxyHeaderError(f"v{version} header with port {port}")
    return ProxyHeader(Destination(unmap(src), sport), Destination(unmap(dst), dport), version)


def _first(buffer: bytes) -> str:
    """The first bytes, for a reason: a TLS record is named as such."""
    if buffer[0] == 0x16:
        return "a TLS handshake record (is the balancer sending PROXY headers? send-proxy-v2)"
    return f"{buffer[:8].hex()} (hex)"
