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
import time
from pathlib import Path
from typing import Any, Callable

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


# -- the gateway's own addresses --------------------------------------------------


def parse_fib_trie(text: str) -> set[ipaddress.IPv4Network]:
    """The IPv4 networks routed to this host (``host LOCAL``) in ``/proc/net/fib_trie``."""
    found: set[ipaddress.IPv4Network] = set()
    address = None
    for line in text.splitlines():
        entry = line.strip()
        if entry.startswith("|-- "):
            address = entry[4:]
        elif address is not None and entry.startswith("/") and entry.endswith(" host LOCAL"):
            found.add(ipaddress.IPv4Network(f"{address}{entry.split()[0]}", strict=False))
    return found


def parse_if_inet6(text: str) -> set[ipaddress.IPv6Network]:
    """The IPv6 addresses of this host in ``/proc/net/if_inet6``."""
    return {ipaddress.IPv6Network(int(line.split()[0], 16)) for line in text.splitlines() if line.strip()}


class LocalAddresses:
    """Whether an address belongs to this network namespace, re-read at most every ``maxAge`` seconds.

    A device that connects to one of the gateway's own addresses must not be
    relayed to a service on the gateway itself.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, maxAge: float = 5.0,
                 root: Path = Path("/proc/net")) -> None:
        self._clock = clock
        self._maxAge = maxAge
        self._root = root
        self._networks: set[Any] = set()
        self._read = -maxAge

    def __call__(self, address: IPAddress) -> bool:
        now = self._clock()
        if now - self._read >= self._maxAge:
            self._read = now
            self._networks = self._load()
        return any(address in network for network in self._networks)

    def _load(self) -> set[Any]:
        networks: set[Any] = {ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")}
        for name, parse in (("fib_trie", parse_fib_trie), ("if_inet6", parse_if_inet6)):
            try:
                networks |= parse((self._root / name).read_text())
            except (OSError, ValueError):
                pass  # no IPv6, or not Linux: loopback is still known
        return networks
