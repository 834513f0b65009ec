"""The HTTP/2 layer with a content scanner: streams are held one by one until scanned.

:class:`ScanningHTTP2Layer` holds a response (RESPMOD) before the device gets
its HEADERS, and an upload (REQMOD) before the origin gets its HEADERS,
while the body is spooled (:class:`~.scanhold.HeldBody`).  Other streams go
on.  A held body's flow-control window is handed back to its sender as it
is spooled (up to the scanner's ``max_size``), so a held stream never stalls
the connection.  A "pass" then sends the original HEADERS, DATA and trailers,
taken from the spool as the receiver's window allows; "replace" sends the
scanner's message; "block" the block page.  Over ``max_size`` the window is
no longer handed back early: with ``oversize = "allow"`` what was spooled is
sent first and the rest follows as it comes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Callable, cast

import h2.errors
import h2.events
from twisted.internet.interfaces import IReactorTime

from etpmitm.blockpage import BlockResponse
from etpmitm.gateway import scanhold
from etpmitm.gateway._h2 import GracefulH2Connection
from etpmitm.gateway.h2exchange import Exchange, Headers, Held, response_facts
from etpmitm.gateway.http2 import STREAM_WINDOW, HTTP2Layer, _flush, _withoutQuic
from etpmitm.gateway.scanhold import HeldBody
from etpmitm.h2abuse import H2Limits
from etpmitm.http import Judge, allow_all
from etpmitm.scanning import IContentScanner, Kind, ScanJob, ScanResult

if TYPE_CHECKING:
    from etpmitm.audit import ConnectionRecord
    from etpmitm.gateway.settings import GatewaySettings

E = h2.errors.ErrorCodes
_NO_BODY = frozenset({204, 304})


class _Hold:
    """One stream direction held for a scan."""

    def __init__(self, kind: Kind, exchange: Exchange, headers: Headers) -> None:
        self.kind: Kind = kind
        self.exchange = exchange
        self.headers = headers
        self.body = HeldBody()
        self.collecting = True
        self.ended = False
        self.trailers: Headers | None = None
        self.chunks: Iterator[bytes] | None = None
        """While releasing: the spool, from the start."""
        self.releasing = False
        """The spool is being sent (its window was handed back as it was spooled)."""
        self.tail = Held()
        """After an oversize: what the sender sent since (its window not handed back yet)."""
        self.cancelled = False

    def close(self) -> None:
        self.cancelled = True
        self.chunks = None
        self.body.close()


class ScanningHTTP2Layer(HTTP2Layer):
    """The HTTP/2 layer that holds streams for ``scanner``; see the module docstring."""

    def __init__(
        self, connection: str, clock: IReactorTime, judge: Judge = allow_all, stripQuic: Callable[[], bool] = lambda: True,
        keepQuery: Callable[[], bool] = lambda: False, *, scanner: IContentScanner, limits: H2Limits | None = None,
    ) -> None:
        super().__init__(connection, clock, judge, stripQuic, keepQuery, limits=limits)
        self._scanner = scanner
        self._respmod = bool(scanner.scans("respmod"))
        self._reqmod = bool(scanner.scans("reqmod"))
        self._downHolds: dict[int, _Hold] = {}
        """Held responses by device stream id."""
        self._upHolds: dict[int, _Hold] = {}
        self._requests: dict[int, Headers] = {}
        """Each forwarded request's header block, by device stream id, for its response's scan."""

    def holdsFor(self, side: str) -> bool:
        """Whether a response held for the device is still to be passed on (see :class:`ILayer`)."""
        return side == "device" and bool(self._downHolds) and not self._done

    # -- the device's events --------------------------------------------------------------

    def _request(self, event: h2.events.RequestReceived) -> None:
        super()._request(event)
        exchange = self._byDevice.get(event.stream_id)
        if not self._reqmod or exchange is None or exchange.up.ended or exchange.request is None:
            return
        length = exchange.record.head.content_length
        if length is not None and length > self._scanner.max_size:
            self._oversizeAtHead(exchange, "reqmod", length)
            return
        self._waiting.remove(exchange)
        hold = _Hold("reqmod", exchange, exchange.request)
        exchange.request = None
        self._upHolds[exchange.deviceId] = hold

    def _requestData(self, event: h2.events.DataReceived) -> None:
        hold = self._upHolds.get(event.stream_id)
        if hold is None:
            super()._requestData(event)
            return
        self._countEmpty(event)
        hold.exchange.record.bytes_up += len(event.data)
        self._take(hold, event, self._device)

    def _requestTrailers(self, event: h2.events.TrailersReceived) -> None:
        hold = self._upHolds.get(event.stream_id)
        if hold is None:
            super()._requestTrailers(event)
        else:
            hold.trailers = cast(Headers, event.headers)

    def _requestEnded(self, event: h2.events.StreamEnded) -> None:
        hold = self._upHolds.get(event.stream_id)
        if hold is None:
            super()._requestEnded(event)
            return
        hold.ended = True
        if hold.collecting:
            self._complete(hold)
        else:
            self._flushUp(hold.exchange)

    # -- the origin's events ----------------------------------------------------------------

    def _response(self, event: h2.events.ResponseReceived) -> None:
        exchange = self._byOrigin.get(event.stream_id)
        headers = cast(Headers, event.headers)
        if not self._respmod or exchange is None or event.stream_ended is not None or not self._hasBody(exchange, headers):
            super()._response(event)
            return
        length = next((v for n, v in headers if n == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > self._scanner.max_size:
            if self._oversizeAtHead(exchange, "respmod", int(length)):
                super()._response(event)  # it streams unscanned
            return
        record = exchange.record
        record.status, record.response_content_type = response_facts(headers)
        record.headers_after = self._clock.seconds() - record.started
        if self._stripQuic():
            headers = _withoutQuic(headers)
        self._downHolds[exchange.deviceId] = _Hold("respmod", exchange, headers)

    def _responseData(self, event: h2.events.DataReceived) -> None:
        exchange = self._byOrigin.get(event.stream_id)
        hold = self._downHolds.get(exchange.deviceId) if exchange is not None else None
        if hold is None:
            super()._responseData(event)
            return
        hold.exchange.record.bytes_down += len(event.data)
        if not self._take(hold, event, self._origin):
            self._flushDown(hold.exchange)

    def _responseTrailers(self, event: h2.events.TrailersReceived) -> None:
        exchange = self._byOrigin.get(event.stream_id)
        hold = self._downHolds.get(exchange.deviceId) if exchange is not None else None
        if hold is None:
            super()._responseTrailers(event)
        else:
            hold.trailers = cast(Headers, event.headers)

    def _responseEnded(self, event: h2.events.StreamEnded) -> None:
        exchange = self._byOrigin.get(event.stream_id)
        hold = self._downHolds.get(exchange.deviceId) if exchange is not None else None
        if hold is None:
            super()._responseEnded(event)
            return
        hold.ended = True
        if hold.collecting:
            self._complete(hold)
        else:
            self._flushDown(hold.exchange)

    def deviceEnded(self, clean: bool) -> None:
        """An upload complete but waiting for its verdict is not cancelled by the device's end."""
        complete = [h for h in self._upHolds.values() if h.ended and not h.exchange.up.ended]
        for hold in complete:
            hold.exchange.up.ended = True
        super().deviceEnded(clean)
        for hold in complete:
            hold.exchange.up.ended = False

    def originEnded(self, clean: bool) -> None:
        """A response complete but waiting for its verdict is not cut by the origin's end."""
        complete = [h for h in self._downHolds.values() if h.ended and not h.exchange.down.ended]
        for hold in complete:
            hold.exchange.down.ended = True
        super().originEnded(clean)
        for hold in complete:
            hold.exchange.down.ended = False

    # -- holding --------------------------------------------------------------------------

    @staticmethod
    def _hasBody(exchange: Exchange, headers: Headers) -> bool:
        if exchange.record.head.method == "HEAD":
            return False
        status, _ = response_facts(headers)
        if status is None or status < 200 or status in _NO_BODY:
            return False
        return next((v for n, v in headers if n == b"content-length"), None) != b"0"

    def _oversizeAtHead(self, exchange: Exchange, kind: Kind, size: int) -> bool:
        """A known length over ``max_size``: True if it goes on unscanned, else it is blocked."""
        self._audit(exchange, scanhold.oversize(kind, size, self._scanner.max_size))
        if self._scanner.oversize == "allow":
            return True
        self._blockOversize(exchange, kind, size)
        return False

    def _blockOversize(self, exchange: Exchange, kind: Kind, size: int) -> None:
        what = "response" if kind == "respmod" else "request body"
        why = f"the {what} is over the scanner's max_size ({size} > {self._scanner.max_size} bytes)"
        self._block(exchange, why)

    def _take(self, hold: _Hold, event: h2.events.DataReceived, sender: GracefulH2Connection) -> bool:
        """A held stream's DATA from ``sender``: spooled, its window handed back at once,
        while the body is collected (True); else kept, unacknowledged, for after the verdict."""
        if hold.collecting:
            sender.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            hold.body.write(event.data)
            self._checkSize(hold)
            return True
        padding = event.flow_controlled_length - len(event.data)
        if padding:
            sender.acknowledge_received_data(padding, event.stream_id)
        hold.tail.append(event.data)
        return False

    def _checkSize(self, hold: _Hold) -> None:
        size, limit = hold.body.size, self._scanner.max_size
        if size <= limit:
            return
        hold.collecting = False
        self._audit(hold.exchange, scanhold.oversize(hold.kind, size, limit))
        if self._scanner.oversize == "allow":
            self._release(hold)
        else:
            self._drop(hold)
            self._blockOversize(hold.exchange, hold.kind, size)

    def _complete(self, hold: _Hold) -> None:
        hold.collecting = False
        exchange = hold.exchange
        request = scanhold.h2_request_message(hold.headers if hold.kind == "reqmod" else self._requestOf(exchange))
        response = scanhold.h2_response_message(hold.headers) if hold.kind == "respmod" else None
        job = ScanJob(hold.kind, scanhold.url(exchange.record.head), request, response, hold.body.decoded)
        scanhold.scan(self._scanner, job, lambda result: self._scanned(result, hold), self._link)

    def _requestOf(self, exchange: Exchange) -> Headers:
        return self._requests.get(exchange.deviceId, ())

    def _openWaiting(self) -> None:
        if self._respmod:  # keep each request's header block for its response's scan
            for exchange in self._waiting:
                if exchange.request is not None:
                    self._requests[exchange.deviceId] = exchange.request
        super()._openWaiting()

    def _scanned(self, result: ScanResult, hold: _Hold) -> None:
        exchange = hold.exchange
        if hold.cancelled or self._done or self._byDevice.get(exchange.deviceId) is not exchange:
            hold.close()
            return
        self._audit(exchange, scanhold.audit(hold.kind, result))
        replacement = result.replacement
        if result.verdict == "pass":
            self._release(hold)
        elif result.verdict == "replace" and replacement is not None and not replacement.is_response:
            self._drop(hold)
            exchange.request = scanhold.h2_request_headers(replacement.head, hold.headers, len(replacement.body))
            exchange.record.reason = f"the request was modified by the content scanner ({result.service})"
            if replacement.body:
                exchange.up.append(replacement.body)
            exchange.up.ended = True
            self._waiting.append(exchange)
        elif result.verdict == "replace" and replacement is not None:
            self._drop(hold)
            if result.outcome == "infected":
                exchange.record.action, exchange.record.reason = "block", scanhold.block_reason(result)
            else:
                exchange.record.reason = f"the response was replaced by the content scanner ({result.service})"
            headers = scanhold.h2_response_headers(replacement.head, len(replacement.body))
            self._answerWith(exchange, headers, replacement.body)
        else:
            self._drop(hold)
            self._block(exchange, scanhold.block_reason(result))
        self._afterEvents()

    # -- releasing ----------------------------------------------------------------------------

    def _release(self, hold: _Hold) -> None:
        """Send the original: its HEADERS now, then the spool as the receiver's window allows."""
        exchange = hold.exchange
        hold.chunks = hold.body.decoded.chunks(16384)
        hold.releasing = True
        if hold.kind == "respmod":
            self._device.send_headers(exchange.deviceId, hold.headers, end_stream=False)
            self._flushDown(exchange)
        else:
            exchange.request = hold.headers
            self._waiting.append(exchange)

    def _flushDown(self, exchange: Exchange) -> None:
        hold = self._downHolds.get(exchange.deviceId)
        if hold is None:
            super()._flushDown(exchange)
        elif hold.releasing:
            self._feed(hold, exchange.down, self._device, exchange.deviceId)
            if self._downHolds.get(exchange.deviceId) is None:
                super()._flushDown(exchange)

    def _flushUp(self, exchange: Exchange) -> None:
        hold = self._upHolds.get(exchange.deviceId)
        if hold is None:
            super()._flushUp(exchange)
        elif exchange.originId is not None and hold.releasing:
            self._feed(hold, exchange.up, self._origin, exchange.originId)
            if self._upHolds.get(exchange.deviceId) is None:
                super()._flushUp(exchange)

    def _feed(self, hold: _Hold, held: Held, to: Any, toId: int) -> None:
        """Move the spool into ``held`` a window at a time (its window was handed back already);
        once it is all sent, what came after it goes on the ordinary way."""
        while True:
            chunks = hold.chunks
            while chunks is not None and held.size < STREAM_WINDOW:
                chunk = next(chunks, None)
                if chunk is None:
                    hold.chunks = chunks = None
                    break
                held.append(chunk)
            _flush(held, to, toId, to, None)
            if held.size or hold.chunks is None or held.endSent:
                break
        if hold.chunks is None and not held.size and not held.endSent:
            self._handOver(hold, held)

    def _handOver(self, hold: _Hold, held: Held) -> None:
        """The spool is out: the tail (window not yet handed back) and the end go on as usual."""
        holds = self._downHolds if hold.kind == "respmod" else self._upHolds
        holds.pop(hold.exchange.deviceId, None)
        tail = hold.tail
        while tail.size:
            held.append(tail.take(tail.size))
        held.ended, held.trailers = hold.ended, hold.trailers
        hold.close()

    # -- answers and the audit --------------------------------------------------------------

    def _block(self, exchange: Exchange, why: str) -> None:
        exchange.record.action, exchange.record.reason = "block", why
        if exchange.request is not None:  # it never goes to the origin
            self._waiting.remove(exchange)
            exchange.request = None
        if exchange.originId is not None:
            self._byOrigin.pop(exchange.originId, None)
            self._resetOrigin(exchange, E.CANCEL)
        self._answer(exchange, BlockResponse.render(exchange.record.head.url, why, "threat", status=403))

    def _answerWith(self, exchange: Exchange, headers: Headers, body: bytes) -> None:
        exchange.answered = exchange.sink = True
        exchange.record.status, exchange.record.response_content_type = response_facts(headers)
        headOnly = exchange.record.head.method == "HEAD"
        self._device.send_headers(exchange.deviceId, headers, end_stream=headOnly or not body)
        exchange.down.ended = True
        exchange.down.endSent = headOnly or not body
        if not exchange.down.endSent:
            exchange.down.append(body)
            exchange.record.bytes_down = len(body)
        self._flushDown(exchange)

    def _drop(self, hold: _Hold) -> None:
        holds = self._downHolds if hold.kind == "respmod" else self._upHolds
        holds.pop(hold.exchange.deviceId, None)
        hold.close()

    @staticmethod
    def _audit(exchange: Exchange, scan: dict[str, Any]) -> None:
        record = exchange.record
        record.scan = [*(record.scan or []), scan]

    def _finish(self, exchange: Exchange, reason: str = "") -> None:
        for holds in (self._downHolds, self._upHolds):
            hold = holds.pop(exchange.deviceId, None)
            if hold is None:
                continue
            held = exchange.down if hold.kind == "respmod" else exchange.up
            if hold.releasing:
                held.drop()  # spooled bytes: their window went back already
            tail = hold.tail.drop()
            if tail and hold.kind == "respmod" and exchange.originId is not None and not self._originGone:
                self._origin.acknowledge_received_data(tail, exchange.originId)
            elif tail and hold.kind == "reqmod":
                self._device.acknowledge_received_data(tail, exchange.deviceId)
            hold.close()
        if self._respmod:
            self._requests.pop(exchange.deviceId, None)
        super()._finish(exchange, reason)


def scanningHTTP2Layer(settings: GatewaySettings, record: ConnectionRecord, judge: Judge, scanner: IContentScanner) -> HTTP2Layer:
    """:func:`~.http2.http2Layer` with a content scanner."""
    return ScanningHTTP2Layer(
        record.id, settings.clock, judge, stripQuic=lambda: settings.policy.current.strip_quic,
        keepQuery=lambda: settings.policy.current.audit_query, scanner=scanner, limits=settings.h2Limits,
    )
