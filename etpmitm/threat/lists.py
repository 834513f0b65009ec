"""Reading a threat list file (sans-IO): bytes in, the names and URLs it lists out.

The format is detected per line::

    # a comment; blank lines are ignored
    evil.example                     a domain: it and every name below it
    *.evil.example                   the same as evil.example
    0.0.0.0 evil.example other.example   hosts-file lines (any address first)
    127.0.0.1 evil.example  # why    a comment after the entries
    http://evil.example/bad/path     a URL: that host, that path and below
    evil.example/bad/path            the same without a scheme
    192.0.2.7                        an address (the destination, or a request's host)

A URL's host is matched exactly (not its subdomains); its path is a prefix
at ``/`` boundaries (``/bad`` covers ``/bad`` and ``/bad/x``, not ``/badx``);
its scheme, port, query and fragment are ignored.  A URL without a path
(``http://evil.example/``) is a domain entry.

Hosts-file boilerplate names (``localhost``, ``broadcasthost``, ``0.0.0.0``
as a name, ...) are skipped wherever they appear, and counted.  Any other line that is not one of these
forms fails the whole file with :class:`ListError` (``FILE:LINE: problem``):
a list is a security control, and a line that cannot be read may be a
truncated or damaged download, so it is refused rather than partly applied
(the gateway keeps the list it had).
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import ip_address
from typing import Protocol

import attrs

from etpmitm.names import a_labels
from etpmitm.policy.urls import normalise_path

__all__ = ["ListError", "ParsedList", "Sink", "parse_list", "read_entries", "url_key"]

_NAME_BYTES = b"abcdefghijklmnopqrstuvwxyz0123456789-_."
_BLOCK_BYTES = _NAME_BYTES + b"\n"
_BOILERPLATE = frozenset({
    b"localhost", b"localhost.localdomain", b"local", b"broadcasthost", b"ip6-localhost",
    b"ip6-loopback", b"ip6-localnet", b"ip6-mcastprefix", b"ip6-allnodes", b"ip6-allrouters",
    b"ip6-allhosts", b"0.0.0.0",
})
_SCHEMES = (b"http://", b"https://")
_HOSTS_PREFIXES = (b"0.0.0.0 ", b"127.0.0.1 ")
MAX_NAME = 253


class ListError(Exception):
    """A list file that cannot be used.  ``str()`` is one line: ``FILE:LINE: problem``."""

    def __init__(self, source: str, line: int | None, problem: str) -> None:
        super().__init__(source, line, problem)
        self.source, self.line, self.problem = source, line, problem

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return " ".join(f"{where}: {self.problem}".splitlines())


class Sink(Protocol):
    """Where entries go: a list, or a hasher that keeps only their hashes."""

    def append(self, entry: bytes, /) -> None: ...

    def extend(self, entries: list[bytes], /) -> None: ...


@attrs.define
class ParsedList:
    """What one file lists: domain names and ``host/path`` URL keys, as bytes."""

    domains: list[bytes] = attrs.Factory(list)
    urls: list[bytes] = attrs.Factory(list)
    skipped: int = 0
    """Hosts-file boilerplate lines skipped."""


@attrs.define
class _Out:
    domains: Sink
    urls: Sink
    skipped: int = 0


class _Bad(Exception):
    """A bad entry; the caller adds the file and line."""


def parse_list(data: bytes, source: str) -> ParsedList:
    """Every entry in *data* (a list file); raises :class:`ListError` at the first bad line."""
    out = ParsedList()
    out.skipped = read_entries([data], source, out.domains, out.urls)
    return out


def read_entries(blocks: Iterable[bytes], source: str, domains: Sink, urls: Sink) -> int:
    """Send every entry of a list file, read in *blocks* of any size, to *domains* or *urls*.

    Returns how many hosts-file boilerplate names were skipped; raises
    :class:`ListError` at the first bad line.
    """
    out = _Out(domains, urls)
    number, rest = 0, b""
    for block in blocks:
        block = rest + block
        cut = block.rfind(b"\n") + 1
        rest = block[cut:]
        number = _block(block[:cut], number, source, out)
    if rest:
        _block(rest + b"\n", number, source, out)
    return out.skipped


def _block(block: bytes, number: int, source: str, out: _Out) -> int:
    """The whole lines in *block*, after *number* lines; returns the line count."""
    names = block
    if block.startswith(_HOSTS_PREFIXES):  # hosts-file lines: drop the usual addresses
        names = (b"\n" + block).replace(b"\n0.0.0.0 ", b"\n").replace(b"\n127.0.0.1 ", b"\n")[1:]
    lines = names.split(b"\n")
    lines.pop()  # after the last newline
    if (lines and not names.translate(None, _BLOCK_BYTES) and b".." not in names and b"\n." not in names
            and b".\n" not in names and not names.startswith(b".") and max(map(len, lines)) <= MAX_NAME):
        # The fast path: only plain lower-case names (and blank lines), as most of a big feed is.
        kept = [line for line in lines if line and line not in _BOILERPLATE]
        out.skipped += len(lines) - lines.count(b"") - len(kept)
        out.domains.extend(kept)
        return number + len(lines)
    lines = block.split(b"\n")
    lines.pop()
    domains = out.domains
    translate = bytes.translate
    for number, raw in enumerate(lines, number + 1):
        line = raw.strip()
        if not line or line[0] == 0x23:  # "#"
            continue
        # A plain lower-case domain, alone or after a hosts-file address.
        name = line
        if line.startswith(_HOSTS_PREFIXES):
            name = line.partition(b" ")[2].lstrip()
        if (name and not translate(name, None, _NAME_BYTES) and name[0] != 0x2E and b".." not in name
                and len(name) <= MAX_NAME and name not in _BOILERPLATE):
            domains.append(name[:-1] if name[-1] == 0x2E else name)
            continue
        try:
            _entry(line, out)
        except _Bad as e:
            raise ListError(source, number, str(e)) from None
    return number


def _entry(line: bytes, out: _Out) -> None:
    tokens = line.split()
    for i, token in enumerate(tokens):
        if token.startswith(b"#"):
            tokens = tokens[:i]
            break
    if not tokens:
        return
    if len(tokens) > 1:
        _hosts_line(tokens, out)
        return
    token = tokens[0]
    lower = token.lower()
    if b"/" in token or b"://" in lower:
        _url(token, out)
    elif token.lower() in _BOILERPLATE:
        out.skipped += 1
    else:
        out.domains.append(domain(token))


def _hosts_line(tokens: list[bytes], out: _Out) -> None:
    try:
        ip_address(tokens[0].decode("ascii").partition("%")[0])
    except (UnicodeDecodeError, ValueError):
        raise _Bad(f"{_show(tokens[0])} and more on one line: a hosts-file line starts with an address") from None
    for token in tokens[1:]:
        if token.lower() in _BOILERPLATE:
            out.skipped += 1
        else:
            out.domains.append(domain(token))


def domain(token: bytes) -> bytes:
    """A listed domain as lower-case A-labels without ``*.`` or a trailing dot."""
    name = token[2:] if token.startswith(b"*.") else token
    if b":" in name or name.startswith(b"["):  # an IPv6 address
        try:
            return str(ip_address(name.strip(b"[]").decode("ascii"))).encode()
        except (UnicodeDecodeError, ValueError):
            raise _Bad(f"{_show(token)} is not a domain, an address or a URL") from None
    if not name.isascii():
        try:
            name = a_labels(name.decode("utf-8")).encode("ascii")
        except (UnicodeDecodeError, ValueError):
            raise _Bad(f"{_show(token)} is not a valid internationalised domain") from None
    name = name.lower()
    if name.endswith(b"."):
        name = name[:-1]
    bad = name.translate(None, _NAME_BYTES)
    if bad:
        raise _Bad(f"invalid character {chr(bad[0])!r} in {_show(token)}")
    if not name or name.startswith(b".") or b".." in name:
        raise _Bad(f"empty label in {_show(token)}")
    if len(name) > MAX_NAME:
        raise _Bad(f"{_show(token)} is longer than {MAX_NAME} characters")
    return name


def _url(token: bytes, out: _Out) -> None:
    text = token
    lower = text.lower()
    if b"://" in lower:
        if not lower.startswith(_SCHEMES):
            raise _Bad(f"{_show(token)}: only http and https URLs can be listed")
        text = text[text.index(b"://") + 3:]
    host, slash, path = text.partition(b"/")
    host = host.rpartition(b"@")[2]
    if host.startswith(b"["):
        host = host[: host.find(b"]") + 1]
    else:
        head, colon, port = host.rpartition(b":")
        if colon and port.isdigit():
            host = head
    if not host:
        raise _Bad(f"{_show(token)}: a URL needs a host")
    name = domain(host)
    try:
        tail = path.decode("utf-8")
    except UnicodeDecodeError:
        raise _Bad(f"{_show(token)}: the path is not UTF-8") from None
    for c in "?#":
        tail = tail.partition(c)[0]
    key = url_key(name, "/" + tail)
    if key is None:
        out.domains.append(name)
    else:
        out.urls.append(key)


def url_key(host: bytes, path: str) -> bytes | None:
    """``host/path`` as URL entries are stored, or None for the root path."""
    path = normalise_path(path).rstrip("/")
    if not path:
        return None
    return host + path.encode("utf-8", "surrogateescape")


def _show(token: bytes) -> str:
    text = token.decode("utf-8", "replace")
    return repr(text if len(text) <= 80 else text[:77] + "...")
