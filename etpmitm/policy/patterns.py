"""Patterns in a rule's ``match`` list, and normalising what they are matched against.

A pattern is one of:

- a host name, matched exactly: case-insensitive, a trailing dot ignored,
  internationalised names accepted as U-labels and compared as A-labels;
- ``*.domain``: every name below *domain*, at any depth, but not *domain* itself;
- an IP address or network: ``192.0.2.7``, ``10.20.0.0/16``, ``2001:db8::/32``,
  ``[2001:db8::]/32``, ``[2001:db8::1]``.  Host bits must be zero.

IPv4-mapped IPv6 addresses (``::ffff:192.0.2.7``) stand for the IPv4 address
they carry, in patterns and in the addresses matched against them.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

import attrs
import idna

from etpmitm.addresses import IPAddress, unmap
from etpmitm.names import a_labels

__all__ = [
    "HostPattern",
    "IPAddress",
    "IPNetwork",
    "NetworkPattern",
    "Pattern",
    "PatternError",
    "WildcardPattern",
    "normalise_name",
    "parse_network",
    "parse_pattern",
    "unmap",
]

IPNetwork = IPv4Network | IPv6Network

# The labels the ClientHello parser accepts in an SNI (etpmitm.clienthello).
_LABEL = re.compile(r"[a-z0-9_-]{1,63}")
_NUMERIC = frozenset("0123456789./")
_MAPPED = IPv6Network("::ffff:0:0/96")


class PatternError(ValueError):
    """A pattern or address that cannot be used; ``str()`` says why."""


@attrs.frozen
class HostPattern:
    """Matches one host name exactly."""

    text: str
    """As written in the policy."""
    name: str
    """Lower-case A-labels, no trailing dot."""


@attrs.frozen
class WildcardPattern:
    """``*.domain``: matches names that end in ``.domain``."""

    text: str
    domain: str
    """Lower-case A-labels, no trailing dot."""


@attrs.frozen
class NetworkPattern:
    """Matches destination addresses in a network."""

    text: str
    network: IPNetwork


Pattern = HostPattern | WildcardPattern | NetworkPattern


def parse_pattern(text: str) -> Pattern:
    """Parse one ``match`` entry; raise :class:`PatternError` if it is not a pattern."""
    if not text:
        raise PatternError("empty pattern")
    if text.startswith("[") or ":" in text or "/" in text or set(text) <= _NUMERIC:
        return NetworkPattern(text, parse_network(text))
    wildcard = text.startswith("*.")
    name = text[2:] if wildcard else text
    if name.endswith("."):
        name = name[:-1]
    if wildcard and not name:
        raise PatternError("'*.' needs a domain after it, as in '*.example.com'")
    if name == "*" and not wildcard:
        raise PatternError("'*' alone is not a pattern (to match every destination use 0.0.0.0/0 and ::/0)")
    if "*" in name:
        raise PatternError("'*' may only be the whole first label, as in '*.example.com'")
    name = _host_name(name)
    return WildcardPattern(text, name) if wildcard else HostPattern(text, name)


def parse_network(text: str) -> IPNetwork:
    """Parse an address or CIDR network (IPv6 optionally in brackets)."""
    body = text
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise PatternError("'[' without a closing ']'")
        inner, rest = text[1:close], text[close + 1 :]
        if rest and not rest.startswith("/"):
            raise PatternError(f"unexpected {rest!r} after ']'")
        if not _is_address(inner) or ":" not in inner:
            raise PatternError(f"{inner!r} in brackets is not an IPv6 address")
        body = inner + rest
    if "%" in body:
        raise PatternError("scoped IPv6 addresses (with '%zone') are not supported")
    try:
        network = ip_network(body)
    except ValueError:
        raise PatternError(_network_problem(body)) from None
    if network.version == 6 and network.prefixlen >= 96 and network.network_address in _MAPPED:
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None
        return IPv4Network((mapped, network.prefixlen - 96))
    return network


def normalise_name(name: str) -> str | None:
    """An SNI or certificate name in the form patterns use, or None if it cannot match.

    Lower case, A-labels, no trailing dot (:func:`etpmitm.names.a_labels`).
    """
    try:
        return a_labels(name)
    except ValueError:
        return None


def _host_name(name: str) -> str:
    """Validate a host name; return it as lower-case A-labels."""
    if not name.isascii():
        name = _remap(name)
    labels = []
    for label in name.split("."):
        if not label:
            raise PatternError("empty label (two dots in a row, or a leading dot)")
        if label.isascii():
            label = label.lower()
            if not _LABEL.fullmatch(label):
                if len(label) > 63:
                    raise PatternError(f"label {label[:20]!r}... is longer than 63 characters")
                bad = next(c for c in label if not _LABEL.fullmatch(c))
                raise PatternError(f"invalid character {bad!r}")
        else:
            label = _alabel(label)
        labels.append(label)
    if labels[-1].isdigit():
        raise PatternError("the last label is all digits (write addresses as a.b.c.d)")
    result = ".".join(labels)
    if len(result) > 253:
        raise PatternError(f"name is {len(result)} characters long, more than 253")
    return result


def _remap(name: str) -> str:
    try:
        return str(idna.uts46_remap(name, std3_rules=False, transitional=False))
    except idna.IDNAError as e:
        raise PatternError(f"not a valid internationalised name ({e})") from None


def _alabel(label: str) -> str:
    if label.isascii():
        return label.lower()
    try:
        return idna.alabel(label).decode("ascii")
    except idna.IDNAError as e:
        raise PatternError(f"{label!r} is not a valid internationalised label ({e})") from None


def _is_address(text: str) -> bool:
    try:
        ip_address(text)
    except ValueError:
        return False
    return True


def _network_problem(body: str) -> str:
    """Why ``ip_network(body)`` failed, in words."""
    address, slash, prefix = body.partition("/")
    if not _is_address(address):
        return f"{address!r} is not an IP address"
    if slash:
        most = 32 if ":" not in address else 128
        if not (prefix.isascii() and prefix.isdigit()) or int(prefix) > most:
            return f"prefix length {prefix!r} is not in 0-{most}"
        try:
            loose = ip_network(body, strict=False)
        except ValueError:
            pass
        else:
            return f"host bits are set (the network is {loose})"
    return f"{body!r} is not an IP address or network"
