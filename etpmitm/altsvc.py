"""Remove HTTP/3 (QUIC) alternatives from ``Alt-Svc`` response fields (sans-IO).

A browser that sees ``Alt-Svc: h3=":443"`` moves to QUIC over UDP, which the
gateway does not inspect.  :func:`strip_quic` edits only the ``Alt-Svc``
lines of a response head; every other byte is left as received.
"""

from __future__ import annotations

import re

_FIELD = re.compile(rb"^alt-svc[ \t]*:", re.IGNORECASE | re.MULTILINE)
_LINES = re.compile(rb"(\r?\n)")
_QUIC = (b"h3", b"hq", b"quic")
"""Protocol ids that run over QUIC: h3, h3-29, h3-Q050, hq-interop, quic."""


def strip_quic(head: bytes) -> bytes:
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


def _is_quic(alternative: bytes) -> bool:
    protocol = alternative.strip().partition(b"=")[0].strip().lower()
    protocol = protocol.replace(b"%2d", b"-")  # a percent-encoded protocol id (RFC 7838 3)
    return protocol.startswith(_QUIC)


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
