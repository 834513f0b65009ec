"""IP addresses as the gateway handles them: one alias, one way to unmap."""

from __future__ import annotations

import ipaddress
from typing import TypeAlias

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


def unmap(address: str | IPAddress) -> IPAddress:
    """Parse ``address`` (a zone suffix is dropped); an IPv4-mapped IPv6 address becomes IPv4."""
    if isinstance(address, str):
        address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
