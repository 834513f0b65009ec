"""The seam between the HTTP layers and a content scanner (ICAP, RFC 3507).

The HTTP/1.1 and HTTP/2 layers hold a message whose body must be scanned,
collect its decoded body (no chunked framing) in a :class:`Spool`, and ask the
:class:`IContentScanner` for a :class:`ScanResult`; meanwhile nothing of the
held message reaches its peer.  The result says whether the original passes,
is replaced by what the scanner sent, or is blocked with the gateway's own
page.  Sans-IO: the types here know nothing of sockets or reactors.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import IO, Literal

import attrs
from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

__all__ = [
    "IContentScanner",
    "Kind",
    "Message",
    "Replacement",
    "ScanJob",
    "ScanResult",
    "Spool",
    "Verdict",
]

Kind = Literal["reqmod", "respmod"]
"""reqmod: a request body before the origin gets it; respmod: a response before the device gets it."""

Verdict = Literal["pass", "replace", "block"]
"""pass: forward the original; replace: forward the scanner's message instead;
block: answer the device with the gateway's block page (``ScanResult.reason``)."""

Outcome = Literal["clean", "infected", "modified", "oversize", "error"]
"""What the scan found, for the audit: clean (ICAP 204 or unchanged), infected
(the scanner named a threat), modified (a 200 with a new message and no threat
named), oversize (not scanned: over ``max_size``), error (down, timeout, garbage)."""

SPOOL_MEMORY = 1 << 20
"""Bytes a :class:`Spool` keeps in memory before it moves to a temporary file."""


class Spool:
    """A body being collected: in memory while small, then in an unnamed
    temporary file (mode 0600, gone when closed or when the process dies)."""

    def __init__(self, memory: int = SPOOL_MEMORY, directory: str | None = None) -> None:
        self._memory = memory
        self._directory = directory
        self._buffer = bytearray()
        self._file: IO[bytes] | None = None
        self.size = 0

    @property
    def spooled(self) -> bool:
        """Whether the body has moved to a file."""
        return self._file is not None

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self._file is not None:
            self._file.write(data)
            return
        self._buffer += data
        if len(self._buffer) > self._memory:
            self._file = tempfile.TemporaryFile(dir=self._directory)  # O_TMPFILE or unlinked; 0600
            os.fchmod(self._file.fileno(), 0o600)
            self._file.write(self._buffer)
            self._buffer = bytearray()

    def chunks(self, size: int = 65536) -> Iterator[bytes]:
        """The body from the start, ``size`` bytes at a time."""
        if self._file is None:
            view = bytes(self._buffer)
            for start in range(0, len(view), size):
                yield view[start : start + size]
            return
        self._file.flush()
        offset = 0
        while True:
            chunk = os.pread(self._file.fileno(), size, offset)
            if not chunk:
                return
            offset += len(chunk)
            yield chunk

    def close(self) -> None:
        """Release the memory or the file."""
        self._buffer = bytearray()
        if self._file is not None:
            self._file.close()
            self._file = None


@attrs.frozen
class Message:
    """An HTTP message head as a scanner sees it."""

    start_line: bytes
    """``GET /path?q HTTP/1.1`` (origin-form) or ``HTTP/1.1 200 OK``; HTTP/2
    messages are given in their HTTP/1.1 form."""
    headers: tuple[tuple[bytes, bytes], ...]
    """Field names and values as received (HTTP/2: ``host`` from ``:authority``)."""


@attrs.frozen
class ScanJob:
    """One message to scan."""

    kind: Kind
    url: str
    """``https://authority/path?query`` of the request."""
    request: Message
    response: Message | None
    """The response head (respmod only)."""
    body: Spool | None
    """The decoded body, complete; None when the message has none."""


@attrs.frozen
class Replacement:
    """A message the scanner sent instead of the original (an ICAP 200)."""

    head: Message
    """For a response: ``HTTP/1.1 403 Forbidden`` and its fields; for a modified request, its head."""
    body: bytes
    """The new body, decoded (bounded by the scanner)."""
    is_response: bool = True
    """False only for a reqmod that gave back a modified request (forward it to the origin)."""


@attrs.frozen
class ScanResult:
    """The scanner's answer, with what the audit records of the scan."""

    verdict: Verdict
    outcome: Outcome
    service: str
    """The ICAP service URL (``icap://host:port/service``)."""
    istag: str | None = None
    threat: str | None = None
    """The virus or rule name (``X-Infection-Found`` / ``X-Violations-Found``)."""
    reason: str = ""
    """Why, in one line: the error, the oversize, the threat."""
    duration: float = 0.0
    """Seconds the scan took."""
    replacement: Replacement | None = None
    """Set when ``verdict == "replace"``."""


class IContentScanner(Interface):
    """Scans HTTP messages (the ICAP client is one; tests plug in others)."""

    max_size = Attribute("int: bodies larger than this are not scanned (``oversize`` applies).")
    oversize = Attribute("'allow' or 'block': what a body over max_size gets.")

    def scans(kind: Kind) -> bool:
        """Whether messages of this kind are scanned at all (a service is configured)."""

    def scan(job: ScanJob) -> Deferred[ScanResult]:
        """Scan one message.  Never errbacks: failures become a result with
        ``outcome="error"`` and the verdict of ``on_error``."""
