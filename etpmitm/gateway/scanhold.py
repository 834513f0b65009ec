"""Holding an HTTP message while a content scanner looks at it (shared by the HTTP/1.1 and HTTP/2 layers).

A :class:`HeldBody` collects a body as it arrives: the decoded body in a
:class:`~etpmitm.scanning.Spool` for the scanner and, for a chunked HTTP/1.1
body, the bytes as received in a second spool (what a "pass" forwards).
:class:`Release` hands a spooled body on to one side a chunk at a time, paced
by that side's drain (:meth:`~etpmitm.interfaces.ILayerLink.whenDrained`), so
a large body never sits whole in a transport's buffer.  The rest are small
sans-IO helpers: parsing a head, framing a replacement, the audit fields.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from etpmitm.http import RequestHead
from etpmitm.interfaces import ILayerLink
from etpmitm.scanning import IContentScanner, Kind, Message, ScanJob, ScanResult, Spool

log = Logger()

RELEASE_BUDGET = 1 << 20
"""Bytes a :class:`Release` sends in one reactor turn at most (the drain signal
may only come after the turn: sends inside a TLS read are held to its end)."""
CHUNK = 65536


def parse_head(raw: bytes) -> Message:
    """An HTTP/1.1 head (already checked by h11) as a scanner sees it."""
    lines = raw.split(b"\r\n")
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        if not line:
            break
        name, _, value = line.partition(b":")
        if line[:1] in (b" ", b"\t") and headers:  # obsolete line folding
            last = headers.pop()
            headers.append((last[0], last[1] + b" " + line.strip()))
            continue
        headers.append((name.strip(), value.strip()))
    return Message(lines[0].rstrip(b"\r"), tuple(headers))


def field(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of ``name`` (case-insensitive), or None."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def tokens(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> set[bytes]:
    """The comma-separated tokens of every ``name`` field, lower case."""
    found: set[bytes] = set()
    for key, value in headers:
        if key.lower() == name:
            found.update(t.strip().lower() for t in value.split(b","))
    return found


def status_of(message: Message) -> int:
    parts = message.start_line.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def chunked(message: Message) -> bool:
    return b"chunked" in tokens(message.headers, b"transfer-encoding")


def keeps_alive(response: Message) -> bool:
    """Whether the connection goes on after this HTTP/1.1 response (it is framed
    by length, and neither Connection: close nor HTTP/1.0 without keep-alive)."""
    connection = tokens(response.headers, b"connection")
    if b"close" in connection:
        return False
    if response.start_line.startswith(b"HTTP/1.0") and b"keep-alive" not in connection:
        return False
    return chunked(response) or field(response.headers, b"content-length") is not None


def url(head: RequestHead) -> str:
    """The request's ``https://authority/path?query`` (the query whatever the audit keeps)."""
    query = f"?{head.query}" if head.query is not None else ""
    return f"https://{head.authority}{head.path}{query}"


def serialise(head: Message, body: bytes, *, close: bool, head_only: bool = False) -> bytes:
    """A replacement message in HTTP/1.1, framed by Content-Length."""
    skip = {b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"trailer"}
    lines = [head.start_line]
    lines += [name + b": " + value for name, value in head.headers if name.lower() not in skip]
    lines.append(b"content-length: %d" % len(body))
    if close:
        lines.append(b"connection: close")
    data = b"\r\n".join(lines) + b"\r\n\r\n"
    return data if head_only else data + body


def h2_request_message(headers: Sequence[tuple[bytes, bytes]]) -> Message:
    """An HTTP/2 request header block in its HTTP/1.1 form (``host`` from ``:authority``)."""
    pseudo = {name: value for name, value in headers if name[:1] == b":"}
    fields = [(b"host", pseudo.get(b":authority", b""))] if b":authority" in pseudo else []
    fields += [(name, value) for name, value in headers if name[:1] != b":" and not (name == b"host" and fields)]
    line = pseudo.get(b":method", b"GET") + b" " + pseudo.get(b":path", b"/") + b" HTTP/1.1"
    return Message(line, tuple(fields))


def h2_response_message(headers: Sequence[tuple[bytes, bytes]]) -> Message:
    status = next((value for name, value in headers if name == b":status"), b"200")
    return Message(b"HTTP/1.1 " + status + b" ", tuple((n, v) for n, v in headers if n[:1] != b":"))


_H2_DROP = {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"content-length", b"host"}


def h2_response_headers(message: Message, length: int) -> list[tuple[bytes, bytes]]:
    """A replacement response as an HTTP/2 header block."""
    fields = [(b":status", b"%d" % (status_of(message) or 200))]
    fields += [(name.lower(), value) for name, value in message.headers if name.lower() not in _H2_DROP]
    fields.append((b"content-length", b"%d" % length))
    return fields


def h2_request_headers(message: Message, original: Sequence[tuple[bytes, bytes]], length: int) -> list[tuple[bytes, bytes]]:
    """A modified request as an HTTP/2 header block (scheme and authority as the original's)."""
    method, _, rest = message.start_line.partition(b" ")
    path = rest.rpartition(b" ")[0] or rest
    pseudo = {name: value for name, value in original if name[:1] == b":"}
    fields = [(b":method", method), (b":scheme", pseudo.get(b":scheme", b"https"))]
    fields.append((b":authority", field(message.headers, b"host") or pseudo.get(b":authority", b"")))
    fields.append((b":path", path))
    fields += [(name.lower(), value) for name, value in message.headers if name.lower() not in _H2_DROP]
    fields.append((b"content-length", b"%d" % length))
    return fields


def audit(kind: Kind, result: ScanResult) -> dict[str, Any]:
    """One scan as the request's audit event keeps it (JSON-ready)."""
    return {
        "kind": kind, "service": result.service, "istag": result.istag, "result": result.outcome,
        "threat": result.threat, "duration": round(result.duration, 6),
    }


def oversize(kind: Kind, size: int, limit: int) -> dict[str, Any]:
    return {"kind": kind, "service": None, "istag": None, "result": "oversize", "threat": None, "duration": 0.0,
            "size": size, "max_size": limit}


def scan(scanner: IContentScanner, job: ScanJob, carryOut: Callable[[ScanResult], None], link: ILayerLink) -> None:
    """Ask ``scanner`` about ``job`` and ``carryOut`` its result.  A scanner
    that fails (it must not) blocks; a verdict that cannot be carried out (a
    bug) resets the connection, since nothing half-sent may go on."""

    def scannerFailed(failure: Failure) -> ScanResult:
        log.failure("the content scanner failed (it must not); blocking", failure)
        return ScanResult("block", "error", "", reason="the content scanner failed")

    def verdictFailed(failure: Failure) -> None:
        log.failure("carrying out a content scan's verdict failed", failure)
        link.abort("the content scan's verdict could not be carried out")

    scanned = maybeDeferred(scanner.scan, job)
    scanned.addErrback(scannerFailed)
    scanned.addCallback(carryOut)
    scanned.addErrback(verdictFailed)


def block_reason(result: ScanResult) -> str:
    """The block page's and the audit's reason for a scan's block."""
    if result.threat:
        return f"the content scanner found {result.threat}"
    return f"the content scanner blocked it: {result.reason or result.outcome}"


class ChunkedDecoder:
    """The data of a chunked body (its framing already checked by h11), fed in pieces."""

    def __init__(self) -> None:
        self._line = bytearray()
        self._left = 0
        self._state = "size"  # size, data, crlf, trailers, done

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        i, n = 0, len(data)
        while i < n and self._state != "done":
            if self._state == "data":
                take = min(self._left, n - i)
                out += data[i : i + take]
                self._left -= take
                i += take
                if not self._left:
                    self._state = "crlf"
                continue
            end = data.find(b"\n", i)
            if end < 0:
                self._line += data[i:]
                break
            line, self._line = bytes(self._line + data[i:end]).rstrip(b"\r"), bytearray()
            i = end + 1
            if self._state == "size":
                self._left = int(line.split(b";", 1)[0].strip() or b"0", 16)
                self._state = "data" if self._left else "trailers"
            elif self._state == "crlf":
                self._state = "size"
            elif not line:  # the blank line after the trailers
                self._state = "done"
        return bytes(out)


class HeldBody:
    """A body collected for a scan: ``decoded`` for the scanner; ``raw``, as received, to pass on."""

    def __init__(self, chunked: bool = False) -> None:
        self.decoded = Spool()
        self.raw = Spool() if chunked else self.decoded
        self._decoder = ChunkedDecoder() if chunked else None
        self.received = 0
        """Bytes received (as framed)."""

    def write(self, data: bytes) -> None:
        self.received += len(data)
        if self._decoder is None:
            self.decoded.write(data)
            return
        self.raw.write(data)
        decoded = self._decoder.feed(data)
        if decoded:
            self.decoded.write(decoded)

    @property
    def size(self) -> int:
        """Decoded bytes so far (what ``max_size`` bounds)."""
        return self.decoded.size

    def close(self) -> None:
        self.decoded.close()
        if self.raw is not self.decoded:
            self.raw.close()


class Release:
    """Sends ``chunks`` with ``send``, paced by ``side``'s drain, then calls ``done``."""

    def __init__(
        self, clock: IReactorTime, link: ILayerLink, side: str, chunks: Iterator[bytes],
        send: Callable[[bytes], None], done: Callable[[], None], budget: int = RELEASE_BUDGET,
    ) -> None:
        self._clock, self._link, self._side = clock, link, side
        self._chunks, self._send, self._done, self._budget = chunks, send, done, budget
        self._call: IDelayedCall | None = None
        self._cancelled = False

    def start(self) -> None:
        self._step()

    def _step(self) -> None:
        self._call = None
        if self._cancelled:
            return
        sent = 0
        for chunk in self._chunks:
            self._send(chunk)
            sent += len(chunk)
            if self._cancelled:
                return
            if self._link.whenDrained(self._side, self._step):
                return
            if sent >= self._budget:
                self._call = self._clock.callLater(0, self._step)
                return
        self._done()

    def cancel(self) -> None:
        self._cancelled = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
