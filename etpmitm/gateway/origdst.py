"""Read a redirected connection's original destination from netfilter.

iptables/nftables REDIRECT rewrites the destination; conntrack remembers the
original one, and ``SO_ORIGINAL_DST`` (IPv4) or ``IP6T_SO_ORIGINAL_DST``
(IPv6) returns it as a ``sockaddr``.  The parsing is split from the
``getsockopt`` call so that it can be tested without a socket.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

import attrs

from etpmitm.addresses import IPAddress

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h
_SOCKADDR_IN_LEN = 16
_SOCKADDR_IN6_LEN = 28



@attrs.frozen
class Destination:
    """An IP address and TCP port."""

    ip: IPAddress
    port: int

    def __str__(self) -> str:
        if self.ip.version == 6:
            return f"[{self.ip}]:{self.port}"
        return f"{self.ip}:{self.port}"


def parse_sockaddr(raw: bytes) -> Destination:
    """Decode a ``sockaddr_in`` or ``sockaddr_in6`` as returned by the kernel."""
    if len(raw) < 2:
        raise ValueError("sockaddr too short")
    (family,) = struct.unpack_from("=H", raw)
    if family == socket.AF_INET and len(raw) >= 8:
        port, packed = struct.unpack_from("!H4s", raw, 2)
        return Destination(ipaddress.IPv4Address(packed), port)
    if family == socket.AF_INET6 and len(raw) >= 24:
        port, _flow, packed = struct.unpack_from("!HI16s", raw, 2)
        return Destination(ipaddress.IPv6Address(packed), port)
    raise ValueError(f"unexpected sockaddr family {family} ({len(raw)} bytes)")


def original_destination(sock: socket.socket) -> Destination:
    """Return where the client meant to connect before it was redirected.

    IPv4 clients of a dual-stack (``::``) listener arrive as v4-mapped
    addresses on an ``AF_INET6`` socket; conntrack holds an IPv4 entry for
    them, so they are asked with ``SOL_IP``.

    Raises ``OSError`` when netfilter knows no original destination.
    """
    peer = sock.getpeername()[0]
    if sock.family == socket.AF_INET6 and not _is_v4_mapped(peer):
        raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, _SOCKADDR_IN6_LEN)
    else:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN_LEN)
    return parse_sockaddr(raw)


def transportDestination(transport: object) -> Destination:
    """:func:`original_destination` of a Twisted TCP transport's socket."""
    return original_destination(transport.getHandle())  # type: ignore[attr-defined]


def _is_v4_mapped(address: str) -> bool:
    try:
        parsed = ipaddress.IPv6Address(address.split("%", 1)[0])
    except ValueError:
        return False
    return parsed.ipv4_mapped is not None
