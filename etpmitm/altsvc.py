"""Alt-Svc without QUIC (sans-IO): keep devices on TCP, where the gateway inspects them.

A response that advertises ``h3`` (or another QUIC protocol) in an
``Alt-Svc`` header or an HTTP/2 ALTSVC frame (RFC 7838) invites the browser
to move to HTTP/3 over UDP, which the gateway does not inspect.
:func:`strip_quic` removes those alternatives and keeps the others.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

_QUIC_PREFIXES = (b"h3", b"hq")
"""ALPN ids of HTTP/3 and its drafts (``h3``, ``h3-29``, ``h3-Q050``) and of HTTP/0.9 over QUIC (``hq-*``)."""


def strip_quic(value: bytes) -> bytes | None:
    """``value`` (an Alt-Svc field value) without its QUIC alternatives; None if none is left."""
    kept = [alternative for alternative in _split(value) if alternative and not _is_quic(alternative)]
    return b", ".join(kept) if kept else None


def _is_quic(alternative: bytes) -> bool:
    """Whether ``protocol-id="authority"; params`` names a QUIC protocol (gQUIC's ``quic`` too)."""
    protocol, _, _ = alternative.partition(b"=")
    name = unquote_to_bytes(protocol.strip()).lower()
    return name == b"quic" or name.startswith(_QUIC_PREFIXES)


def _split(value: bytes) -> list[bytes]:
    """The comma-separated members of ``value``, commas inside quoted strings kept."""
    members: list[bytes] = []
    start, quoted, escaped = 0, False, False
    for i, byte in enumerate(value):
        if escaped:
            escaped = False
        elif quoted and byte == 0x5C:  # backslash
            escaped = True
        elif byte == 0x22:  # double quote
            quoted = not quoted
        elif byte == 0x2C and not quoted:  # comma
            members.append(value[start:i].strip())
            start = i + 1
    members.append(value[start:].strip())
    return members
