"""URL patterns of request rules, and the request host and path they are matched against.

A URL pattern is a host pattern, then optionally a path glob::

    good.example/private/*     that host, paths under /private/
    *.example.com/api/upload   any name below example.com, that one path
    */upload/*                 any host
    192.0.2.7/admin*           an IP literal in the request's Host
    good.example               every path on that host

The host is as in a rule's ``match`` (:mod:`etpmitm.policy.patterns`): an
exact name or ``*.domain``, compared as lower-case A-labels, or an IP address
(IPv6 in brackets), or ``*`` for any host.  There is no scheme and no port
(use the rule's ``ports``).

The path glob starts with ``/``.  ``*`` matches any run of characters,
``/`` included, so ``/a/*`` matches ``/a/``, ``/a/b`` and ``/a/b/c`` but not
``/a``.  Every other character is literal and case matters.  The query is
never matched.  Request paths and patterns are compared after the same
normalisation (:func:`normalise_path`), so that ``/%70rivate/../private/x``
cannot slip past ``/private/*``.
"""

from __future__ import annotations

import re
from ipaddress import ip_address

import attrs

from etpmitm.addresses import IPAddress, unmap
from etpmitm.names import a_labels
from etpmitm.policy.patterns import HostPattern, NetworkPattern, PatternError, WildcardPattern, parse_pattern

__all__ = ["AnyHost", "UrlHost", "UrlPattern", "normalise_path", "parse_url_pattern", "request_host"]

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/")


@attrs.frozen
class AnyHost:
    """``*`` as the host of a URL pattern: any host, or none."""

    text: str = "*"


UrlHost = HostPattern | WildcardPattern | NetworkPattern | AnyHost
"""A :class:`NetworkPattern` here is always a single address."""


@attrs.frozen
class UrlPattern:
    """One entry of a rule's ``urls``."""

    text: str
    """As written in the policy."""
    host: UrlHost
    path: re.Pattern[str] | None
    """The compiled path glob; None for every path."""

    def matches(self, host: str | IPAddress | None, path: str) -> bool:
        """Whether the request's normalised host (:func:`request_host`) and path match."""
        return self.host_matches(host) and (self.path is None or self.path.fullmatch(path) is not None)

    def host_matches(self, host: str | IPAddress | None) -> bool:
        return host_matches(self.host, host)


def host_matches(pattern: UrlHost | HostPattern | WildcardPattern, host: str | IPAddress | None) -> bool:
    """Whether a host pattern matches a request host from :func:`request_host`."""
    if isinstance(pattern, AnyHost):
        return True
    if isinstance(host, str):
        if isinstance(pattern, HostPattern):
            return host == pattern.name
        if isinstance(pattern, WildcardPattern):
            return host.endswith("." + pattern.domain)
        return False
    if host is not None and isinstance(pattern, NetworkPattern):
        return host in pattern.network
    return False


def parse_url_pattern(text: str) -> UrlPattern:
    """Parse one ``urls`` entry; raise :class:`PatternError` if it is not a URL pattern."""
    if not text:
        raise PatternError("empty URL pattern")
    if _SCHEME.match(text):
        raise PatternError("write URL patterns without a scheme, as in 'good.example/path/*'")
    for c in "?#":
        if c in text:
            raise PatternError(f"{c!r} is not allowed: the query and fragment are never matched")
    if any(c.isspace() for c in text):
        raise PatternError("whitespace is not allowed")
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise PatternError("'[' without a closing ']'")
        host_text, rest = text[: close + 1], text[close + 1 :]
    else:
        host_text, slash, tail = text.partition("/")
        rest = slash + tail
    if rest and not rest.startswith("/"):
        raise PatternError(f"unexpected {rest!r} after the host (no port: use the rule's ports)")
    if ":" in host_text and not host_text.startswith("["):
        raise PatternError("a port is not allowed (use the rule's ports); write IPv6 addresses in brackets")
    host = _url_host(host_text)
    if isinstance(host, NetworkPattern) and rest[1:].isdigit():
        raise PatternError(f"{text!r} looks like a network: networks go in match, URLs here")
    return UrlPattern(text, host, _glob(rest) if rest else None)


def _url_host(text: str) -> UrlHost:
    if text == "*":
        return AnyHost()
    if not text:
        raise PatternError("the host is missing (use '*' for any host)")
    pattern = parse_pattern(text)
    if isinstance(pattern, NetworkPattern) and pattern.network.num_addresses != 1:
        raise PatternError(f"{text!r} is not a host name or address")
    return pattern


def _glob(path: str) -> re.Pattern[str]:
    pieces = normalise_path(path).split("*")
    return re.compile(".*".join(re.escape(piece) for piece in pieces), re.DOTALL)


def request_host(authority: str, sni: str | None) -> str | IPAddress | None:
    """The host a request names: its authority without the port (else the SNI), normalised.

    Names become lower-case A-labels, IP literals addresses; None when there
    is no usable host.  Never raises.
    """
    host = authority
    if host.startswith("["):
        close = host.find("]")
        host = host[1:close] if close > 0 else ""
    else:
        head, colon, port = host.rpartition(":")
        if colon and (port.isdigit() or not port):
            host = head
    if not host:
        if not sni:
            return None
        host = sni
    if host[-1:].isdigit() or ":" in host:
        try:
            return unmap(ip_address(host))
        except ValueError:
            pass
    try:
        name = a_labels(host)
    except (ValueError, UnicodeError):
        return None
    return name or None


def normalise_path(path: str) -> str:
    """A path as URL rules compare it: ``%XX`` of unreserved characters decoded, other
    ``%XX`` in upper case, dot segments removed (RFC 3986, 6.2.2)."""
    if "%" in path:
        path = _percent(path)
    if "." in path:
        path = _remove_dot_segments(path)
    return path


def _percent(path: str) -> str:
    out = []
    i = 0
    while i < len(path):
        c = path[i]
        if c == "%" and path[i + 1 : i + 2] in _HEX and path[i + 2 : i + 3] in _HEX:
            code = path[i + 1 : i + 3]
            char = chr(int(code, 16))
            out.append(char if char in _UNRESERVED else "%" + code.upper())
            i += 3
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986, 5.2.4, on a path that starts with ``/`` (others are returned as they are)."""
    if not path.startswith("/"):
        return path
    segments = path.split("/")[1:]
    out: list[str] = []
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        elif segment == ".":
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)
