"""Alt-Svc without QUIC (sans-IO): keep devices on TCP, where the gateway inspects them.

A response that advertises ``h3`` (or another QUIC protocol) in an
``Alt-Svc`` header or an HTTP/2 ALTSVC frame (RFC 7838) invites the browser
to move to HTTP/3 over UDP, which the gateway does not inspect.
:func:`strip_head` edits only the ``Alt-Svc`` lines of an HTTP/1.1 response
head, every other byte left as received; :func:`strip_quic` does the same for
one field value (HTTP/2 headers and ALTSVC frames).
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

_FIELD = re.compile(rb"^alt-svc[ \t]*:", re.IGNORECASE | re.MULTILINE)
_LINES = re.compile(rb"(\r?\n)")
_QUIC_PREFIXES = (b"h3", b"hq")
"""ALPN ids of HTTP/3 and its drafts (``h3``, ``h3-29``, ``h3-Q050``) and of HTTP/0.9 over QUIC (``hq-*``)."""


def strip_head(head: bytes) -> bytes:
    """``head`` (a response head) without QUIC alternatives in its Alt-Svc fields.

    A field left with no alternative is removed; ``clear`` and the other
    alternatives are kept as they were written.
    """
    if _FIELD.search(head) is None:
        return head
    parts = _LINES.split(head)
    out: list[bytes] = []
    for index in range(0, len(parts), 2):
        line = parts[index]
        separator = parts[index + 1] if index + 1 < len(parts) else b""
        if index > 0 and _FIELD.match(line):
            name, _, value = line.partition(b":")
            kept = strip_value(value)
            if kept is None:
                continue
            line = name + b":" + kept
        out.append(line + separator)
    return b"".join(out)


def strip_value(value: bytes) -> bytes | None:
    """An Alt-Svc field value without QUIC alternatives; None if none is left."""
    alternatives = _split(value)
    kept = [alt for alt in alternatives if not _is_quic(alt)]
    if len(kept) == len(alternatives):
        return value
    if not kept:
        return None
    return b",".join(kept)


def strip_quic(value: bytes) -> bytes | None:
    """An Alt-Svc value (an HTTP/2 header or ALTSVC frame) without its QUIC
    alternatives, trimmed; None if none is left."""
    kept = strip_value(value)
    return None if kept is None else kept.strip()


def _is_quic(alternative: bytes) -> bool:
    """Whether ``protocol-id="authority"; params`` names a QUIC protocol (gQUIC's ``quic`` too).

    The protocol id is percent-encoded (RFC 7838 section 3): ``h%33`` is ``h3``.
    """
    protocol = alternative.strip().partition(b"=")[0].strip()
    name = unquote_to_bytes(protocol).lower()
    return name == b"quic" or name.startswith(_QUIC_PREFIXES)


def _split(value: bytes) -> list[bytes]:
    """``value`` split at the commas that are not inside a quoted string."""
    pieces: list[bytes] = []
    start, quoted, escaped = 0, False, False
    for at, byte in enumerate(value):
        if escaped:
            escaped = False
        elif quoted and byte == 0x5C:  # backslash
            escaped = True
        elif byte == 0x22:  # double quote
            quoted = not quoted
        elif byte == 0x2C and not quoted:  # comma
            pieces.append(value[start:at])
            start = at + 1
    pieces.append(value[start:])
    return pieces
