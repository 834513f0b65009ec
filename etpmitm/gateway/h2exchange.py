"""One request through the HTTP/2 layer (sans-IO): its two streams, what each direction holds.

An :class:`Exchange` pairs the device's stream with the origin's.  Each
direction's body waits in a :class:`Held` until the receiver's flow-control
window takes it; the sender's window is handed back only then, so what is held
never exceeds the window the gateway advertised.  :func:`request_head` reads
the facts the policy and the audit need from the request's header block.
"""

from __future__ import annotations

from collections import deque
from typing import Sequence

import attrs

from etpmitm.http import RequestHead, RequestRecord, authority as normalised_authority

Headers = Sequence[tuple[bytes, bytes]]
"""A header block as h2 gives it with ``header_encoding=None``."""


class Held:
    """One direction's body bytes waiting for the receiver's window, then how the stream ends."""

    __slots__ = ("_chunks", "size", "ended", "trailers", "endSent")

    def __init__(self) -> None:
        self._chunks: deque[bytes] | None = None  # made on first use: an idle stream holds nothing
        self.size = 0
        self.ended = False
        """The sender ended its stream (after the bytes held, and ``trailers`` if any)."""
        self.trailers: Headers | None = None
        self.endSent = False
        """The end was passed on to the receiver."""

    def append(self, data: bytes) -> None:
        if self._chunks is None:
            self._chunks = deque()
        self._chunks.append(data)
        self.size += len(data)

    def take(self, limit: int) -> bytes:
        """``limit`` bytes from the front, or all that is held if less."""
        chunks = self._chunks
        assert chunks is not None
        first = chunks.popleft()
        if len(first) >= limit:
            if len(first) > limit:
                chunks.appendleft(first[limit:])
                first = first[:limit]
            self.size -= limit
            return first
        parts, size = [first], len(first)
        while chunks and size < limit:
            chunk = chunks.popleft()
            if size + len(chunk) > limit:
                chunks.appendleft(chunk[limit - size:])
                chunk = chunk[: limit - size]
            parts.append(chunk)
            size += len(chunk)
        self.size -= size
        return b"".join(parts)

    def drop(self) -> int:
        """Forget what is held; returns how many bytes that was."""
        size, self.size, self._chunks = self.size, 0, None
        return size


@attrs.define(eq=False)
class Exchange:
    """One device stream, the origin stream it became (if any), and what each direction holds."""

    deviceId: int
    record: RequestRecord
    request: Headers | None = None
    """The request's header block while it waits for an origin stream."""
    originId: int | None = None
    sink: bool = False
    """The request's body goes nowhere: the gateway answered, or the origin is gone."""
    answered: bool = False
    """The gateway answers this request itself (a block page)."""
    sunk: int = 0
    """Request body bytes dropped unacknowledged (the origin wanted no more of them); handed back
    to the device's connection when the stream ends."""
    up: Held = attrs.Factory(Held)
    """The request body, for the origin."""
    down: Held = attrs.Factory(Held)
    """The response body, for the device."""




def request_head(headers: Headers) -> RequestHead:
    """The policy's and the audit's view of a request header block (the query only as a length)."""
    method = authority = path = b""
    host = user_agent = content_type = content_length = None
    for name, value in headers:
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":authority":
                authority = value
            elif name == b":path":
                path = value
        elif name == b"host":
            host = value
        elif name == b"user-agent":
            user_agent = value
        elif name == b"content-type":
            content_type = value
        elif name == b"content-length":
            content_length = value
    target, question, query = path.partition(b"?")
    return RequestHead(
        method=method.decode("latin-1"),
        authority=normalised_authority((authority or host or b"").decode("latin-1")),
        path=target.decode("latin-1"),
        query_length=len(query) if question else 0,
        query=query.decode("latin-1") if question else None,
        user_agent=_text(user_agent),
        content_type=_text(content_type),
        content_length=int(content_length) if content_length is not None and content_length.isdigit() else None,
    )


def response_facts(headers: Headers) -> tuple[int | None, str | None]:
    """The status and Content-Type of a response header block."""
    status: int | None = None
    content_type = None
    for name, value in headers:
        if name == b":status":
            status = int(value) if value.isdigit() else None
        elif name == b"content-type":
            content_type = value.decode("latin-1")
    return status, content_type


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")
