"""The HTTP/1.1 layer with a content scanner: responses and uploads are held until scanned.

:class:`ScanningHTTP1Layer` sits on the observer's actions (:mod:`etpmitm.http1`),
unchanged: a response head the device would get, and every action bound for
the device after it, wait while the response's body is spooled
(:class:`~.scanhold.HeldBody`) and scanned (RESPMOD); a request body, with its
head, waits before the origin the same way (REQMOD).  The verdict then
releases the original bytes as received (paced by the receiver's drain),
sends the scanner's message, or answers with the block page.  While a
complete response waits for its verdict the origin is not read (what it
sends next belongs to later requests); while one is spooled it is, up to the
scanner's ``max_size``.  The layer without a scanner is the plain
:class:`~.http1.HTTP1Layer`.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime

from etpmitm.audit import ConnectionRecord
from etpmitm.blockpage import BlockResponse
from etpmitm.gateway import scanhold
from etpmitm.gateway.http1 import HTTP1Layer
from etpmitm.gateway.scanhold import HeldBody, Release
from etpmitm.http import Judge, RequestRecord, allow_all
from etpmitm.http1 import (
    Action,
    Began,
    Close,
    EndDevice,
    EndOrigin,
    Exchange,
    Finished,
    Responded,
    ToDevice,
    ToOrigin,
    render,
)
from etpmitm.http1guard import MAX_HEADERS
from etpmitm.interfaces import ILayerLink
from etpmitm.scanning import IContentScanner, Kind, Message, ScanJob, ScanResult


_NO_BODY = frozenset({204, 304})
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Hold:
    """One message held for a scan."""

    def __init__(self, kind: Kind, exchange: Exchange, head: bytes | None, chunked: bool) -> None:
        self.kind: Kind = kind
        self.exchange = exchange
        self.head = head
        """The head as received (HTTP/1.1); for reqmod, set by the first bytes after ``Began``."""
        self.body = HeldBody(chunked)
        self.collecting = True
        self.release: Release | None = None
        self.cancelled = False

    def close(self) -> None:
        self.cancelled = True
        if self.release is not None:
            self.release.cancel()
        self.body.close()


class ScanningHTTP1Layer(HTTP1Layer):
    """The HTTP/1.1 layer that holds messages for ``scanner``; see the module docstring."""

    paced = True  # the Pipe tells it when a side drains

    def __init__(
        self,
        record: ConnectionRecord,
        clock: IReactorTime,
        judge: Judge = allow_all,
        *,
        scanner: IContentScanner,
        maxHeaders: int = MAX_HEADERS,
        stripAltSvc: bool = True,
        keepQuery: Callable[[], bool] = lambda: False,
    ) -> None:
        super().__init__(record, clock, judge, maxHeaders=maxHeaders, stripAltSvc=stripAltSvc, keepQuery=keepQuery)
        self._scanner = scanner
        self._respmod = bool(scanner.scans("respmod"))
        self._reqmod = bool(scanner.scans("reqmod"))
        self._down: _Hold | None = None
        """The response being held (collected, scanned, or released)."""
        self._up: _Hold | None = None
        self._deviceQueue: list[Action] | None = None
        """Actions for the device's side waiting behind a held response (None: none held)."""
        self._originQueue: list[Action] | None = None
        """Actions for the origin waiting behind a held request."""
        self._requests: dict[int, Message] = {}
        """Each forwarded request's head, by exchange number, for its response's scan."""
        self._expectHead: int | None = None
        """The exchange whose next bytes to the origin are its request head."""
        self._exchanges: dict[int, Exchange] = {}
        self._overrides: dict[int, dict[str, Any]] = {}
        self._scans: dict[int, list[dict[str, Any]]] = {}
        self._originPaused = False
        self._gone = False
        self._quiet = False
        """The connection ends once what waits for the device is out: the observer is not heard any more."""

    # -- ILayer ------------------------------------------------------------------------

    def closed(self) -> None:
        self._gone = True
        for hold in (self._down, self._up):
            if hold is not None:
                hold.close()
        self._down = self._up = None
        self._deviceQueue = self._originQueue = None
        current = self._observer.current
        for number in list(self._records):
            exchange = self._exchanges.get(number)
            if exchange is not None and (current is None or current.number != number):
                self._fill(self._records[number], exchange)
        super().closed()

    def holdsFor(self, side: str) -> bool:
        """Whether a response held for the device is still to be passed on (see :class:`ILayer`)."""
        return side == "device" and self._deviceQueue is not None and not self._gone

    # -- routing the observer's actions ------------------------------------------------------

    def deviceData(self, data: bytes) -> None:
        if not self._quiet:
            super().deviceData(data)

    def originData(self, data: bytes) -> None:
        if not self._quiet:
            super().originData(data)

    def deviceEnded(self, clean: bool) -> None:
        if not self._quiet:
            super().deviceEnded(clean)

    def originEnded(self, clean: bool) -> None:
        if not self._quiet:
            super().originEnded(clean)

    def _apply(self, actions: list[Action]) -> None:
        if self._gone:
            return
        for index, action in enumerate(actions):
            following = actions[index + 1] if index + 1 < len(actions) else None
            self._route(action, following)
            if self._gone:
                return
        self._settle()
        self._flowControl()

    def _do(self, action: Action) -> None:
        HTTP1Layer._apply(self, [action])

    def _route(self, action: Action, following: Action | None) -> None:
        if isinstance(action, (ToOrigin, EndOrigin)):
            self._routeUp(action)
        elif isinstance(action, Began):
            self._began_(action)
        else:
            self._routeDown(action, following)

    def _routeUp(self, action: ToOrigin | EndOrigin) -> None:
        up = self._up
        if isinstance(action, ToOrigin) and up is not None and up.collecting:
            if up.head is None:
                up.head = action.data
                self._requests[up.exchange.number] = scanhold.parse_head(action.data)
                self._startUp(up)
            else:
                up.body.write(action.data)
                self._checkSize(up)
            return
        if isinstance(action, EndOrigin) and up is not None and up.collecting:
            self._dropUp("the device ended before its request body did")
        if self._originQueue is not None:
            self._originQueue.append(action)
            return
        if isinstance(action, ToOrigin) and self._expectHead is not None:
            self._requests[self._expectHead] = scanhold.parse_head(action.data)
            self._expectHead = None
        self._do(action)

    def _began_(self, action: Began) -> None:
        self._endCollecting()
        ex = action.exchange
        self._do(action)
        self._exchanges[ex.number] = ex
        if ex.action != "allow":
            return
        head = ex.head
        if self._reqmod and (ex.chunked or (head.content_length or 0) > 0):
            self._up = _Hold("reqmod", ex, None, ex.chunked)
        elif self._respmod:
            self._expectHead = ex.number

    def _routeDown(self, action: Action, following: Action | None) -> None:
        down = self._down
        if down is not None and down.collecting:
            if isinstance(action, ToDevice):
                down.body.write(action.data)
                self._checkSize(down)
                return
            if isinstance(action, (EndDevice, Close)) or (isinstance(action, Finished) and action.exchange is down.exchange):
                self._endCollecting()
        if self._deviceQueue is not None:
            self._deviceQueue.append(action)
            return
        if (
            isinstance(action, ToDevice) and isinstance(following, Responded) and self._respmod
            and self._scansResponse(following.exchange, action.data)
        ):
            return
        self._do(action)

    def _settle(self) -> None:
        """At the end of a batch: a held message whose end came is complete."""
        down, up = self._down, self._up
        if down is not None and down.collecting and down.exchange.response_done:
            self._complete(down)
        if up is not None and up.collecting and up.head is not None and up.exchange.request_done:
            self._complete(up)

    def _endCollecting(self) -> None:
        down = self._down
        if down is None or not down.collecting:
            return
        if down.exchange.response_done:
            self._complete(down)
        else:
            self._dropDown("the response ended before its body did")

    # -- holding ----------------------------------------------------------------------------

    def _scansResponse(self, ex: Exchange, head: bytes) -> bool:
        """Hold the response whose head is ``head``, if it has a body to scan."""
        if ex.action != "allow" or ex.head.method == "HEAD" or ex.status is None:
            return False
        if ex.status < 200 or ex.status in _NO_BODY:
            return False
        response = scanhold.parse_head(head)
        length = scanhold.field(response.headers, b"content-length")
        chunked = scanhold.chunked(response)
        if not chunked and length is not None and length.strip() == b"0":
            return False
        limit = self._scanner.max_size
        if not chunked and length is not None and length.strip().isdigit() and int(length) > limit:
            if self._oversize(ex, "respmod", int(length)):
                return False  # allowed: it streams unscanned
            return True
        self._down = _Hold("respmod", ex, head, chunked)
        self._deviceQueue = []
        return True

    def _startUp(self, up: _Hold) -> None:
        """A request head was held: apply a known oversize; answer a device waiting for 100-continue."""
        ex = up.exchange
        length = ex.head.content_length
        if length is not None and length > self._scanner.max_size:
            up.collecting = False
            if self._oversize(ex, "reqmod", length):
                self._up = None
                up.close()
                self._do(ToOrigin(up.head or b""))
            return
        request = self._requests[ex.number]
        if b"100-continue" in scanhold.tokens(request.headers, b"expect"):
            self._toDevice(CONTINUE)

    def _checkSize(self, hold: _Hold) -> None:
        limit = self._scanner.max_size
        if hold.body.size <= limit:
            return
        hold.collecting = False
        if not self._oversize(hold.exchange, hold.kind, hold.body.size):
            return
        if hold.kind == "respmod":
            self._releaseDown(hold)  # the rest follows unscanned, behind it
        else:
            self._originQueue = []
            self._releaseUp(hold)

    def _oversize(self, ex: Exchange, kind: Kind, size: int) -> bool:
        """Apply ``oversize``; True if the message goes on unscanned."""
        limit = self._scanner.max_size
        self._scans.setdefault(ex.number, []).append(scanhold.oversize(kind, size, limit))
        if self._scanner.oversize == "allow":
            return True
        what = "response" if kind == "respmod" else "request body"
        self._blockAndClose(ex, f"the {what} is over the scanner's max_size ({size} > {limit} bytes)")
        return False

    def _complete(self, hold: _Hold) -> None:
        """The held message is whole: scan it."""
        hold.collecting = False
        ex = hold.exchange
        if hold.kind == "respmod":
            self._pauseOrigin()
        else:
            self._originQueue = []
        request = self._requests.get(ex.number) or Message(b"%s %s HTTP/1.1" % (
            ex.head.method.encode("latin-1"), ex.head.path.encode("latin-1")), ())
        response = scanhold.parse_head(hold.head or b"") if hold.kind == "respmod" else None
        body = hold.body.decoded if hold.body.received or hold.kind == "respmod" else None
        job = ScanJob(hold.kind, scanhold.url(ex.head), request, response, body)
        scanhold.scan(self._scanner, job, lambda result: self._scanned(result, hold), self._link)

    def _scanned(self, result: ScanResult, hold: _Hold) -> None:
        if hold.cancelled or self._gone:
            hold.close()
            return
        ex = hold.exchange
        self._scans.setdefault(ex.number, []).append(scanhold.audit(hold.kind, result))
        if result.verdict == "pass":
            if hold.kind == "respmod":
                self._releaseDown(hold)
            else:
                self._releaseUp(hold)
            return
        replacement = result.replacement
        if result.verdict == "replace" and replacement is not None and not replacement.is_response:
            hold.close()
            self._up = None
            self._do(ToOrigin(scanhold.serialise(replacement.head, replacement.body, close=False)))
            self._override(ex, reason=f"the request was modified by the content scanner ({result.service})")
            self._flushOriginQueue()
            return
        if hold.kind == "reqmod":  # the origin gets nothing more of this connection
            if replacement is not None and result.verdict == "replace":
                self._replaceAndClose(ex, result)
            else:
                self._blockAndClose(ex, scanhold.block_reason(result))
            return
        # a response: answer in its place, then go on with what waited behind it
        hold.close()
        self._down = None
        original = scanhold.parse_head(hold.head or b"")
        close = not scanhold.keeps_alive(original)
        if replacement is not None and result.verdict == "replace":
            data = scanhold.serialise(replacement.head, replacement.body, close=close)
            status = scanhold.status_of(replacement.head)
            self._override(ex, status=status, content_type=_text(scanhold.field(replacement.head.headers, b"content-type")),
                           bytes_down=len(data), **self._threat(result))
        else:
            why = scanhold.block_reason(result)
            page = BlockResponse.render(ex.head.url, why, "threat", status=403)
            data = render(page, head_only=False, close=close)
            self._override(ex, action="block", reason=why, status=403, content_type="text/html; charset=utf-8",
                           bytes_down=len(data))
        self._link.toDevice(data)
        self._resumeDevice()

    def _threat(self, result: ScanResult) -> dict[str, Any]:
        if result.outcome == "infected":
            return {"action": "block", "reason": scanhold.block_reason(result)}
        return {"reason": f"the response was replaced by the content scanner ({result.service})"}

    # -- releasing ------------------------------------------------------------------------

    def _releaseDown(self, hold: _Hold) -> None:
        self._pauseOrigin()  # what it sends meanwhile would wait in memory
        self._link.toDevice(hold.head or b"")
        hold.release = Release(self._clock, self._link, "device", hold.body.raw.chunks(), self._link.toDevice,
                               lambda: self._releasedDown(hold))
        hold.release.start()

    def _releasedDown(self, hold: _Hold) -> None:
        hold.close()
        if self._down is hold:
            self._down = None
        self._resumeDevice()

    def _releaseUp(self, hold: _Hold) -> None:
        self._link.toOrigin(hold.head or b"")
        hold.release = Release(self._clock, self._link, "origin", hold.body.raw.chunks(), self._link.toOrigin,
                               lambda: self._releasedUp(hold))
        hold.release.start()

    def _releasedUp(self, hold: _Hold) -> None:
        hold.close()
        if self._up is hold:
            self._up = None
        self._flushOriginQueue()

    def _flushOriginQueue(self) -> None:
        queue, self._originQueue = self._originQueue, None
        self._apply(queue or [])

    def _resumeDevice(self) -> None:
        """What waited behind a held response goes on (and may be held in turn)."""
        queue, self._deviceQueue = self._deviceQueue, None
        if self._originPaused and not self._gone:
            self._originPaused = False
            self._link.resumeReading("origin")
        self._apply(queue or [])

    def _flowControl(self) -> None:
        """Also keep the device unread while a request body is released to the origin."""
        holding = self._observer.holding or (self._up is not None and self._up.release is not None)
        if holding and not self._paused:
            self._paused = True
            self._link.pauseReading("device")
        elif self._paused and not holding:
            self._paused = False
            self._link.resumeReading("device")

    def _pauseOrigin(self) -> None:
        if not self._originPaused:
            self._originPaused = True
            self._link.pauseReading("origin")

    # -- answers and the audit -------------------------------------------------------------

    def _toDevice(self, data: bytes) -> None:
        if self._deviceQueue is not None:
            self._deviceQueue.append(ToDevice(data))
        else:
            self._link.toDevice(data)

    def _blockAndClose(self, ex: Exchange, why: str) -> None:
        page = BlockResponse.render(ex.head.url, why, "threat", status=403)
        data = render(page, head_only=ex.head.method == "HEAD", close=True)
        self._override(ex, action="block", reason=why, status=403, content_type="text/html; charset=utf-8",
                       bytes_down=len(data))
        self._answerAndClose(data, f"answered 403: {why}")

    def _replaceAndClose(self, ex: Exchange, result: ScanResult) -> None:
        replacement = result.replacement
        assert replacement is not None
        data = scanhold.serialise(replacement.head, replacement.body, close=True, head_only=ex.head.method == "HEAD")
        self._override(ex, status=scanhold.status_of(replacement.head), bytes_down=len(data),
                       content_type=_text(scanhold.field(replacement.head.headers, b"content-type")), **self._threat(result))
        self._answerAndClose(data, "answered with the content scanner's response")

    def _answerAndClose(self, data: bytes, reason: str) -> None:
        """The gateway's own last answer; the connection closes after it.  An upload's answer
        waits behind a response still held for the device (the device reads them in order)."""
        up, self._up, self._originQueue = self._up, None, None
        if up is not None:
            up.close()
        if self._deviceQueue is not None and self._down is not None and self._down.kind == "respmod" and up is not None:
            self._deviceQueue += [ToDevice(data), Close(reason, error=False)]
            self._quiet = True
            return
        if self._down is not None:
            self._down.close()
            self._down = None
        self._deviceQueue = None
        self._link.toDevice(data)
        self._gone = True
        self._link.close(reason)

    def _dropDown(self, why: str) -> None:
        down = self._down
        if down is not None:
            self._override(down.exchange, reason=f"not delivered: {why}")
            down.close()
        self._down = None
        self._resumeDevice()

    def _dropUp(self, why: str) -> None:
        up = self._up
        if up is not None:
            self._override(up.exchange, reason=f"not forwarded: {why}")
            up.close()
        self._up = None

    def _override(self, ex: Exchange, **fields: Any) -> None:
        self._overrides.setdefault(ex.number, {}).update(fields)

    def _finished(self, exchange: Exchange) -> None:
        super()._finished(exchange)
        self._exchanges.pop(exchange.number, None)
        self._requests.pop(exchange.number, None)

    def _fill(self, record: RequestRecord, exchange: Exchange) -> None:  # type: ignore[override]
        HTTP1Layer._fill(record, exchange)
        overrides = self._overrides.pop(exchange.number, {})
        record.action = overrides.get("action", record.action)
        if "reason" in overrides:
            record.reason = overrides["reason"]
        record.status = overrides.get("status", record.status)
        record.response_content_type = overrides.get("content_type", record.response_content_type)
        record.bytes_down = overrides.get("bytes_down", record.bytes_down)
        scans = self._scans.pop(exchange.number, None)
        if scans:
            record.scan = scans


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


__all__ = ["ScanningHTTP1Layer", "ILayerLink"]
