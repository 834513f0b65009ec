"""Checks on raw HTTP/1.1 request bytes that h11 lets through (sans-IO).

h11 parses leniently where RFC 9112 allows it (it unfolds obs-fold, takes a
bare LF as a line end, follows Transfer-Encoding over Content-Length, folds
repeated Content-Length fields, reads chunk sizes of up to 20 hex digits).
Since the gateway forwards the bytes as received, an origin that parses
them another way could be smuggled a second request.  These checks refuse
such requests instead; each returns the reason, or None.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

MAX_HEAD = 64 * 1024
"""Bytes of a request head (request line and header fields) allowed."""

MAX_HEADERS = 100
"""Header fields allowed in one request, by default."""

_CHUNK_LINE = re.compile(rb"[0-9A-Fa-f]{1,16}(?:;[^\r\n]*)?")
"""A chunk-size line: at most 16 hex digits (no 64-bit overflow), no whitespace."""


def check_head(
    raw: bytes, headers: Sequence[tuple[bytes, bytes]], *, max_headers: int = MAX_HEADERS, max_head: int = MAX_HEAD
) -> str | None:
    """Why the request head ``raw`` (parsed by h11 into ``headers``) must be refused, or None."""
    if len(raw) > max_head:
        return f"header block over {max_head // 1024} KiB"
    if len(headers) > max_headers:
        return f"more than {max_headers} header fields"
    if problem := check_lines(raw):
        return problem
    names = [name for name, _ in headers]
    if b"transfer-encoding" in names and b"content-length" in names:
        return "both Content-Length and Transfer-Encoding"
    lengths = [line for line in raw.split(b"\r\n") if line[:15].lower() == b"content-length:"]
    if len(lengths) > 1 or any(b"," in line for line in lengths):
        return "repeated Content-Length"
    return None


def check_lines(raw: bytes) -> str | None:
    """Line endings and obs-fold in a head or a trailer block."""
    if raw.count(b"\n") != raw.count(b"\r\n"):
        return "bare LF in the header block"
    if raw.count(b"\r") != raw.count(b"\r\n"):
        return "bare CR in the header block"
    lines = raw.lstrip(b"\r\n").split(b"\r\n")
    if any(line[:1] in (b" ", b"\t") for line in lines[1:]):
        return "obs-fold (a header line continued on the next line)"
    return None


def check_chunk(raw: bytes) -> str | None:
    """The bytes h11 consumed for the start of a chunk (or the last chunk and its trailers)."""
    body = raw.lstrip(b"\r\n")
    line, found, rest = body.partition(b"\r\n")
    if not found or not _CHUNK_LINE.fullmatch(line):
        return f"invalid chunk size {line[:40]!r}"
    return None


def check_last_chunk(raw: bytes) -> str | None:
    """The last chunk (``0``) and its trailer fields."""
    if problem := check_chunk(raw):
        return problem
    return check_lines(raw.lstrip(b"\r\n"))
