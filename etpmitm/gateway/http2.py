"""The HTTP/2 layer: terminates HTTP/2 on both sides, one origin stream per device stream.

The device talks to an h2 server, the origin to an h2 client; requests and
responses pass between them as h2 events, never as frames, so each side keeps
its own HPACK state, settings and flow-control windows.

- **Flow control.**  A body waits in its :class:`~.h2exchange.Held` until the
  receiver's window takes it, and only then is the sender's window handed
  back.  So the gateway holds at most :data:`STREAM_WINDOW` per stream and
  :data:`CONNECTION_WINDOW` per connection in each direction, however slow
  the receiver (TCP back-pressure on top comes from the :class:`~.layers.Pipe`).
- **Streams.**  Each request is judged (``judge``) before the origin sees it: a
  blocked one gets the 403 block page on its own stream.  Requests beyond the
  origin's ``MAX_CONCURRENT_STREAMS`` wait for a free stream.  RST_STREAM passes
  through with its code; each stream logs one :class:`~etpmitm.http.RequestRecord`.
- **GOAWAY** from either side lets the streams in flight finish
  (:mod:`._h2`); streams the origin will not process are refused to the device
  with REFUSED_STREAM, so it retries them.  The connection closes once no
  stream is left.
- **An upload answered early** (a 413, a block page) is stopped with
  RST_STREAM(NO_ERROR) (RFC 9113 8.1) :data:`STOP_UPLOAD_DELAY` after the
  response's end, not in the same write: curl 7.88 (Debian 12) fails such a
  transfer with error 92 when it reads the response and the reset at once.
  Meanwhile the device may fill that stream's window, and no more.
- **No push**: the origin is told ``ENABLE_PUSH = 0`` (a PUSH_PROMISE is then a
  protocol error), and the device is never pushed to.
- **Abuse**: a device that floods resets, PINGs, SETTINGS, empty frames or
  CONTINUATIONs gets GOAWAY(ENHANCE_YOUR_CALM) and the connection ends, the
  flood in its audit (:mod:`etpmitm.h2abuse`, the limits of ``GatewaySettings.h2Limits``).
  While the device does not read what the gateway sends it, the gateway stops
  reading the device, so h2's automatic answers (ACKs) do not pile up.
- **No QUIC**: ``h3`` alternatives leave Alt-Svc headers and ALTSVC frames
  (:mod:`etpmitm.altsvc`) while ``stripQuic()`` says so.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Callable, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from etpmitm.altsvc import strip_quic
from etpmitm.blockpage import BlockResponse
from etpmitm.gateway._h2 import GracefulH2Connection, HeaderBlockFlood, goaway_frame
from etpmitm.gateway.h2exchange import Exchange, Headers, Held, request_head, response_facts
from etpmitm.h2abuse import FloodGuard, H2Limits
from etpmitm.http import Judge, RequestHead, RequestRecord, RequestVerdict, allow_all
from etpmitm.interfaces import ILayer, ILayerLink

if TYPE_CHECKING:
    from etpmitm.audit import ConnectionRecord
    from etpmitm.gateway.settings import GatewaySettings

log = Logger()

STREAM_WINDOW = 256 * 1024
"""Flow-control window the gateway gives each stream, both sides: the most it holds per stream and direction."""
CONNECTION_WINDOW = 1024 * 1024
"""Flow-control window of the whole connection, both sides: the most it holds per direction."""
MAX_CONCURRENT_STREAMS = 100
"""Streams a device may open at once (requests beyond the origin's own limit wait in the gateway)."""
MAX_HEADER_LIST_SIZE = 64 * 1024
STOP_UPLOAD_DELAY = 0.1
"""Seconds from the end of an early answer to the RST_STREAM(NO_ERROR) that stops the upload."""


def _config(client: bool) -> h2.config.H2Configuration:
    """Headers as bytes; what the layer sends was validated by h2 as it came in from the other
    side (or is the gateway's own page), so it is not checked again (about 7% of a request's time)."""
    return h2.config.H2Configuration(
        client_side=client, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False
    )


E = h2.errors.ErrorCodes
def http2Layer(settings: GatewaySettings, record: ConnectionRecord, judge: Judge = allow_all) -> ILayer:
    """The HTTP/2 layer for one connection (ALPN ``h2``); Alt-Svc follows the policy in force."""
    return HTTP2Layer(
        record.id, settings.clock, judge, stripQuic=lambda: settings.policy.current.strip_quic,
        keepQuery=lambda: settings.policy.current.audit_query, limits=settings.h2Limits,
    )


class _Calm(Exception):
    """The device flooded the connection: stop handling its events (the layer has ended it)."""


@implementer(ILayer)
class HTTP2Layer:
    """Terminates HTTP/2 from the device and speaks it anew to the origin."""

    name = "h2"
    paced = True
    """The link tells it when the device is not keeping up (:meth:`_deviceBackedUp`)."""

    def __init__(
        self, connection: str, clock: IReactorTime, judge: Judge = allow_all, stripQuic: Callable[[], bool] = lambda: True,
        keepQuery: Callable[[], bool] = lambda: False, *, limits: H2Limits | None = None,
    ) -> None:
        self._connectionId = connection
        self._keepQuery = keepQuery
        self._clock = clock
        self._judge = judge
        self._stripQuic = stripQuic
        self._device = GracefulH2Connection(_config(client=False))
        self._origin = GracefulH2Connection(_config(client=True))
        self._guard = FloodGuard(limits or H2Limits())
        self._device.capHeaderBlocks(self._guard.limits.continuationFrames, self._guard.limits.headerBlockBytes)
        self._headersPriority: object = None
        """The PriorityUpdated that came inside the last request's HEADERS (not a PRIORITY frame)."""
        self._devicePaused = False
        self._byDevice: dict[int, Exchange] = {}
        self._byOrigin: dict[int, Exchange] = {}
        self._waiting: deque[Exchange] = deque()
        """Requests waiting for the origin to allow another stream."""
        self._deviceLast: int | None = None
        """The last device stream the gateway takes, once it sent the device GOAWAY."""
        self._originLast: int | None = None
        """The last origin stream the origin processes, once it sent GOAWAY."""
        self._originSentGoaway = False
        self._originGone = False
        self._ending: str | None = None
        """Why the connection ends as soon as no stream is left."""
        self._done = False
        self._stopping: dict[int, tuple[IDelayedCall, list[int]]] = {}
        """Device streams answered before their uploads ended: the reset to come, and the bytes
        received since (their stream window is handed back only by the reset)."""
        self._deviceEvents: dict[type[h2.events.Event], Callable[[Any], None]] = {
            h2.events.RequestReceived: self._request,
            h2.events.DataReceived: self._requestData,
            h2.events.TrailersReceived: self._requestTrailers,
            h2.events.StreamEnded: self._requestEnded,
            h2.events.StreamReset: self._deviceReset,
            h2.events.WindowUpdated: self._deviceWindow,
            h2.events.RemoteSettingsChanged: self._deviceSettings,
            h2.events.ConnectionTerminated: self._deviceGoaway,
            h2.events.PingReceived: self._devicePing,
            h2.events.PriorityUpdated: self._devicePriority,
        }
        self._originEvents: dict[type[h2.events.Event], Callable[[Any], None]] = {
            h2.events.ResponseReceived: self._response,
            h2.events.InformationalResponseReceived: self._informational,
            h2.events.DataReceived: self._responseData,
            h2.events.TrailersReceived: self._responseTrailers,
            h2.events.StreamEnded: self._responseEnded,
            h2.events.StreamReset: self._originReset,
            h2.events.WindowUpdated: self._originWindow,
            h2.events.RemoteSettingsChanged: self._originSettings,
            h2.events.ConnectionTerminated: self._originGoaway,
            h2.events.AlternativeServiceAvailable: self._altsvc,
        }

    # -- ILayer ------------------------------------------------------------------------

    def start(self, link: ILayerLink) -> None:
        self._link = link
        S = h2.settings.SettingCodes
        self._device.local_settings = h2.settings.Settings(client=False, initial_values={
            S.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
            S.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            S.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
        })
        self._origin.local_settings = h2.settings.Settings(client=True, initial_values={
            S.ENABLE_PUSH: 0,
            S.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            S.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
        })
        for connection in (self._device, self._origin):
            connection.initiate_connection()
            connection.increment_flow_control_window(CONNECTION_WINDOW - 65535)
            connection.compact()
        self._send()

    def deviceData(self, data: bytes) -> None:
        if self._done:
            return
        try:
            events = self._device.receive_data(data)
        except HeaderBlockFlood as e:  # h2 has sent GOAWAY(ENHANCE_YOUR_CALM)
            self._abandon(f"HTTP/2 {e}", E.ENHANCE_YOUR_CALM, failed=True, resetDevice=False)
            return
        except h2.exceptions.ProtocolError as e:
            self._abandon(f"device broke HTTP/2: {e}", E.INTERNAL_ERROR, failed=True)
            return
        handlers = self._deviceEvents
        try:
            for event in events:
                handler = handlers.get(type(event))
                if handler is not None:
                    handler(event)
        except _Calm:
            return
        self._afterEvents()
        if not self._done and not self._devicePaused and self._link.whenDrained("device", self._deviceDrained):
            # The device is not reading: read no more of it (each PING, SETTINGS or frame on a
            # reset stream it sends is answered) until it catches up.
            self._devicePaused = True
            self._link.pauseReading("device")

    def originData(self, data: bytes) -> None:
        if self._done:
            return
        try:
            events = self._origin.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self._abandon(f"origin broke HTTP/2: {e}", E.INTERNAL_ERROR, failed=True)
            return
        handlers = self._originEvents
        for event in events:
            handler = handlers.get(type(event))
            if handler is not None:
                handler(event)
        self._afterEvents()

    def _deviceDrained(self) -> None:
        self._devicePaused = False
        if not self._done:
            self._link.resumeReading("device")

    def deviceEnded(self, clean: bool) -> None:
        """The device sends no more: requests it had not finished are cancelled, the rest go on."""
        if self._done:
            return
        for exchange in list(self._byDevice.values()):
            if not exchange.up.ended:
                self._resetOrigin(exchange, E.CANCEL)
                self._finish(exchange, "the device closed the connection")
        self._goingAway("the device closed the connection")
        self._afterEvents()

    def originEnded(self, clean: bool) -> None:
        """The origin sends no more: responses it had not finished fail, the rest are delivered."""
        if self._done:
            return
        self._originGone = True
        broken = 0
        for exchange in list(self._byDevice.values()):
            if exchange.answered:
                continue
            if exchange.down.ended:
                exchange.sink = True
                continue
            broken += exchange.originId is not None
            code = E.INTERNAL_ERROR if exchange.originId is not None else E.REFUSED_STREAM
            self._resetDevice(exchange, code)
            self._finish(exchange, "the origin closed the connection")
        if broken:
            self._link.fail(f"the origin closed the connection with {broken} response(s) unfinished")
        self._goingAway("the origin closed the connection")
        self._afterEvents()

    def closed(self) -> None:
        self._done = True
        for call, _ in self._stopping.values():
            if call.active():
                call.cancel()
        self._stopping.clear()
        for exchange in list(self._byDevice.values()):
            self._finish(exchange, "the connection closed")

    def buffered(self) -> int:
        """Body bytes held for either side, all streams."""
        return sum(e.up.size + e.down.size for e in self._byDevice.values())

    # -- the device's events --------------------------------------------------------------

    def _request(self, event: h2.events.RequestReceived) -> None:
        headers = cast(Headers, event.headers)
        sid = event.stream_id
        head = request_head(headers)
        record = RequestRecord(self._connectionId, sid, "h2", head, self._clock.seconds(), log_query=self._keepQuery())
        self._headersPriority = event.priority_updated
        exchange = Exchange(sid, record)
        exchange.up.ended = event.stream_ended is not None
        self._byDevice[sid] = exchange
        if (self._deviceLast is not None and sid > self._deviceLast) or self._originGone or self._originLast is not None:
            self._resetDevice(exchange, E.REFUSED_STREAM)
            self._finish(exchange, "refused: the connection is ending")
            return
        if head.method == "CONNECT":
            record.action, record.reason = "refuse", "CONNECT is not allowed through the gateway"
            self._answer(exchange, BlockResponse.render(head.authority, record.reason, "policy", status=405))
            return
        verdict = self._verdict(head)
        record.reason, record.rule, record.category = verdict.reason, verdict.rule, verdict.category
        if verdict.action == "block":
            record.action = "block"
            page = BlockResponse.render(head.url, verdict.reason, "policy", status=403, category=verdict.category)
            self._answer(exchange, page)
            return
        exchange.request = headers
        self._waiting.append(exchange)

    def _requestData(self, event: h2.events.DataReceived) -> None:
        sid, data = event.stream_id, event.data
        padding = event.flow_controlled_length - len(data)
        exchange = self._byDevice.get(sid)
        self._countEmpty(event)
        if exchange is None and sid in self._stopping:
            self._stopping[sid][1].append(event.flow_controlled_length)
            return
        if exchange is None or exchange.sink:
            self._device.acknowledge_received_data(event.flow_controlled_length, sid)
            if exchange is not None:
                exchange.record.bytes_up += len(data)
            return
        if padding:
            self._device.acknowledge_received_data(padding, sid)
        exchange.record.bytes_up += len(data)
        up = exchange.up
        up.append(data)
        if event.stream_ended is not None:  # END_STREAM on this frame: it goes on the last DATA sent
            up.ended = True
        self._flushUp(exchange)

    def _countEmpty(self, event: h2.events.DataReceived) -> None:
        """A DATA frame with no data that does not end its stream makes no progress: count it."""
        if not event.data and event.stream_ended is None:
            self._flood(self._guard.emptyFrame(self._clock.seconds()))

    def _requestTrailers(self, event: h2.events.TrailersReceived) -> None:
        exchange = self._byDevice.get(event.stream_id)
        if exchange is not None:
            exchange.up.trailers = cast(Headers, event.headers)

    def _requestEnded(self, event: h2.events.StreamEnded) -> None:
        exchange = self._byDevice.get(event.stream_id)
        if exchange is not None:
            exchange.up.ended = True
            self._flushUp(exchange)

    def _deviceReset(self, event: h2.events.StreamReset) -> None:
        self._flood(self._guard.reset(self._clock.seconds()))
        exchange = self._byDevice.get(event.stream_id)
        if exchange is not None:
            code = event.error_code if event.error_code is not None else E.CANCEL
            self._resetOrigin(exchange, code)
            self._finish(exchange, f"reset by the device ({_name(code)})")

    def _deviceWindow(self, event: h2.events.WindowUpdated) -> None:
        if event.stream_id:
            exchange = self._byDevice.get(event.stream_id)
            if exchange is not None:
                self._flushDown(exchange)
        else:
            self._flushAll(down=True)

    def _deviceSettings(self, event: h2.events.RemoteSettingsChanged) -> None:
        self._flood(self._guard.settingsFrame(self._clock.seconds()))
        self._flushAll(down=True)

    def _devicePing(self, event: h2.events.PingReceived) -> None:
        self._flood(self._guard.ping(self._clock.seconds()))

    def _devicePriority(self, event: h2.events.PriorityUpdated) -> None:
        if event is not self._headersPriority:  # a PRIORITY frame of its own
            self._flood(self._guard.emptyFrame(self._clock.seconds()))

    def _flood(self, reason: str | None) -> None:
        """End the connection if the guard says the device floods it (see :mod:`etpmitm.h2abuse`)."""
        if reason is not None:
            self._device.clear_outbound_data_buffer()  # h2's answers to the flood (ACKs) are not sent
            self._abandon(reason, E.ENHANCE_YOUR_CALM, failed=True, resetDevice=False)
            raise _Calm(reason)

    def _deviceGoaway(self, event: h2.events.ConnectionTerminated) -> None:
        """The device goes away: its streams in flight go on unless it says it failed."""
        code = event.error_code if event.error_code is not None else E.NO_ERROR
        if code != E.NO_ERROR:
            self._abandon(f"device sent GOAWAY ({_name(code)})", E.CANCEL, failed=False, resetDevice=False)
            return
        self._goingAway("the device sent GOAWAY")

    # -- the origin's events -----------------------------------------------------------------

    def _response(self, event: h2.events.ResponseReceived) -> None:
        exchange = self._byOrigin.get(event.stream_id)
        if exchange is None:
            return
        headers = cast(Headers, event.headers)
        record = exchange.record
        record.status, record.response_content_type = response_facts(headers)
        record.headers_after = self._clock.seconds() - record.started
        if self._stripQuic():
            headers = _withoutQuic(headers)
        ended = event.stream_ended is not None
        self._device.send_headers(exchange.deviceId, headers, end_stream=ended)
        exchange.down.ended = exchange.down.endSent = ended
        self._checkDone(exchange)

    def _informational(self, event: h2.events.InformationalResponseReceived) -> None:
        exchange = self._byOrigin.get(event.stream_id)
        if exchange is not None:
            self._device.send_headers(exchange.deviceId, cast(Headers, event.headers))

    def _responseData(self, event: h2.events.DataReceived) -> None:
        sid, data = event.stream_id, event.data
        exchange = self._byOrigin.get(sid)
        if exchange is None:
            self._origin.acknowledge_received_data(event.flow_controlled_length, sid)
            return
        padding = event.flow_controlled_length - len(data)
        if padding:
            self._origin.acknowledge_received_data(padding, sid)
        exchange.record.bytes_down += len(data)
        down = exchange.down
        down.append(data)
        if event.stream_ended is not None:  # END_STREAM on this frame: it goes on the last DATA sent
            down.ended = True
        self._flushDown(exchange)

    def _responseTrailers(self, event: h2.events.TrailersReceived) -> None:
        exchange = self._byOrigin.get(event.stream_id)
        if exchange is not None:
            exchange.down.trailers = cast(Headers, event.headers)

    def _responseEnded(self, event: h2.events.StreamEnded) -> None:
        exchange = self._byOrigin.get(event.stream_id)
        if exchange is not None:
            exchange.down.ended = True
            self._flushDown(exchange)

    def _originReset(self, event: h2.events.StreamReset) -> None:
        exchange = self._byOrigin.get(event.stream_id)
        if exchange is None:
            return
        code = event.error_code if event.error_code is not None else E.INTERNAL_ERROR
        if code == E.NO_ERROR and exchange.down.ended:
            # RFC 9113 8.1: the response is complete and the origin wants no more of the request.
            exchange.sink = True
            exchange.sunk += exchange.up.drop()
            self._flushDown(exchange)
            return
        self._resetDevice(exchange, code)
        self._finish(exchange, f"reset by the origin ({_name(code)})")

    def _originWindow(self, event: h2.events.WindowUpdated) -> None:
        if event.stream_id:
            exchange = self._byOrigin.get(event.stream_id)
            if exchange is not None:
                self._flushUp(exchange)
        else:
            self._flushAll(down=False)

    def _originSettings(self, event: h2.events.RemoteSettingsChanged) -> None:
        self._flushAll(down=False)

    def _originGoaway(self, event: h2.events.ConnectionTerminated) -> None:
        """The origin processes no stream above ``last_stream_id``: refuse those, finish the rest."""
        last = event.last_stream_id if event.last_stream_id is not None else 0
        self._originLast = last
        code = event.error_code if event.error_code is not None else E.NO_ERROR
        if code != E.NO_ERROR:
            self._link.note(f"the origin sent GOAWAY ({_name(code)})")
        for exchange in list(self._byDevice.values()):
            if exchange.answered:
                continue
            if exchange.originId is None or exchange.originId > last:
                self._resetOrigin(exchange, E.CANCEL)
                self._resetDevice(exchange, E.REFUSED_STREAM)
                self._finish(exchange, "refused: the origin sent GOAWAY")
        self._goingAway("the origin sent GOAWAY")

    def _altsvc(self, event: h2.events.AlternativeServiceAvailable) -> None:
        value, origin = event.field_value, event.origin
        if value is not None and self._stripQuic():
            value = strip_quic(value)
        if value is not None and origin is not None:
            self._device.advertise_alternative_service(value, origin=origin)

    # -- streams ------------------------------------------------------------------------------

    def _verdict(self, head: RequestHead) -> RequestVerdict:
        try:
            return self._judge(head)
        except Exception:
            log.failure("request policy failed on {url}; blocking it", url=head.url)
            return RequestVerdict("block", "the request policy failed")

    def _answer(self, exchange: Exchange, response: BlockResponse) -> None:
        """The gateway answers this request itself; its body is acknowledged and dropped."""
        exchange.answered = exchange.sink = True
        exchange.record.status = response.status
        exchange.record.response_content_type = "text/html; charset=utf-8"
        exchange.record.headers_after = 0.0
        headOnly = exchange.record.head.method == "HEAD"
        fields = [(":status", str(response.status)), *response.headers()]
        self._device.send_headers(exchange.deviceId, fields, end_stream=headOnly)
        exchange.down.ended = True
        exchange.down.endSent = headOnly
        if not headOnly:
            exchange.down.append(response.body)
            exchange.record.bytes_down = len(response.body)
        self._flushDown(exchange)

    def _openWaiting(self) -> None:
        """Give waiting requests origin streams, as many as the origin allows."""
        origin, waiting = self._origin, self._waiting
        if not waiting or self._originLast is not None or self._originGone:
            return
        free = origin.remote_settings.max_concurrent_streams - origin.open_outbound_streams  # (h2 counts them all)
        while waiting and free > 0:
            free -= 1
            exchange = waiting.popleft()
            headers = exchange.request
            assert headers is not None
            exchange.request = None
            sid = origin.get_next_available_stream_id()
            up = exchange.up
            now = up.ended and not up.size and up.trailers is None
            origin.send_headers(sid, headers, end_stream=now)
            up.endSent = now
            exchange.originId = sid
            self._byOrigin[sid] = exchange
            self._flushUp(exchange)

    def _flushDown(self, exchange: Exchange) -> None:
        source = None if exchange.answered or exchange.originId is None else exchange.originId
        _flush(exchange.down, self._device, exchange.deviceId, self._origin, source)
        self._checkDone(exchange)

    def _flushUp(self, exchange: Exchange) -> None:
        if exchange.originId is not None and not exchange.sink:
            _flush(exchange.up, self._origin, exchange.originId, self._device, exchange.deviceId)
            self._checkDone(exchange)

    def _flushAll(self, down: bool) -> None:
        for exchange in list(self._byDevice.values()):
            if down:
                self._flushDown(exchange)
            else:
                self._flushUp(exchange)

    def _checkDone(self, exchange: Exchange) -> None:
        """An exchange is over once both ends are passed on (or the request goes nowhere)."""
        if not exchange.down.endSent or exchange.deviceId not in self._byDevice:
            return
        if exchange.up.endSent:
            self._finish(exchange)
        elif exchange.sink:
            if not exchange.up.ended:  # RFC 9113 8.1: answered; the device may stop sending
                sid, sunk, exchange.sunk = exchange.deviceId, exchange.sunk, 0
                self._stopping[sid] = (self._clock.callLater(STOP_UPLOAD_DELAY, self._stopUpload, sid), [sunk])
            self._resetOrigin(exchange, E.CANCEL)
            self._finish(exchange)

    def _stopUpload(self, sid: int) -> None:
        """Reset the device's upload on a stream that was answered (unless it ended meanwhile),
        then hand back the connection's window for what it sent since."""
        _, received = self._stopping.pop(sid)
        if self._done:
            return
        stream = self._device.streams.get(sid)
        if stream is not None and not stream.closed:
            try:
                self._device.reset_stream(sid, E.NO_ERROR)
            except h2.exceptions.ProtocolError:
                pass  # the connection is closing
        if sum(received):  # the stream is closed: the connection's window only
            self._device.acknowledge_received_data(sum(received), sid)
        self._send()

    def _resetDevice(self, exchange: Exchange, code: int) -> None:
        try:
            self._device.reset_stream(exchange.deviceId, code)
        except h2.exceptions.ProtocolError:
            pass  # the stream (or the connection) is closed already

    def _resetOrigin(self, exchange: Exchange, code: int) -> None:
        sid = exchange.originId
        if sid is None or self._originGone:
            return
        try:
            self._origin.reset_stream(sid, code)
        except h2.exceptions.ProtocolError:
            pass  # the stream (or the connection) is closed already

    def _finish(self, exchange: Exchange, reason: str = "") -> None:
        """Log the exchange once, forget it, and hand back the windows of what it held."""
        if self._byDevice.pop(exchange.deviceId, None) is None:
            return
        record = exchange.record
        if reason:
            record.reason = f"{record.reason}; {reason}" if record.reason else reason
        else:
            self._guard.completed(self._clock.seconds())
        if exchange.originId is not None:
            self._byOrigin.pop(exchange.originId, None)
            held = exchange.down.drop()
            if held and not exchange.answered:
                self._origin.acknowledge_received_data(held, exchange.originId)
        elif exchange.request is not None:
            self._waiting.remove(exchange)
        held = exchange.up.drop() + exchange.sunk
        exchange.sunk = 0
        if held:
            self._device.acknowledge_received_data(held, exchange.deviceId)
        record.emit(self._clock.seconds())

    # -- the connection's end ----------------------------------------------------------------

    def _goingAway(self, why: str) -> None:
        """No new streams: tell both sides (GOAWAY), and end once the streams in flight are done."""
        if self._ending is None:
            self._ending = why
        self._send()
        if self._deviceLast is None:
            self._deviceLast = self._device.highest_inbound_stream_id
            self._link.toDevice(goaway_frame(self._deviceLast))
        if not self._originSentGoaway and not self._originGone:
            self._originSentGoaway = True
            self._link.toOrigin(goaway_frame(0))
        for exchange in list(self._waiting):
            self._resetDevice(exchange, E.REFUSED_STREAM)
            self._finish(exchange, f"refused: {why}")

    def _afterEvents(self) -> None:
        if self._done:
            return
        if self._waiting:
            self._openWaiting()
        self._send()
        if self._ending is not None and not self._byDevice:
            self._done = True
            self._link.close(self._ending)

    def _abandon(self, reason: str, code: int, failed: bool, resetDevice: bool = True) -> None:
        """End the connection now: every stream is reset (the device's only if ``resetDevice``: its
        GOAWAY says they are over), both sides get GOAWAY."""
        for exchange in list(self._byDevice.values()):
            if resetDevice:
                self._resetDevice(exchange, code)
            self._resetOrigin(exchange, E.CANCEL)
            self._finish(exchange, reason)
        for connection in (self._device, self._origin):
            if connection.state_machine.state is not h2.connection.ConnectionState.CLOSED:
                # (else h2 has sent its GOAWAY for a protocol error already)
                connection.close_connection(E.NO_ERROR if connection is self._origin else code)
        self._send()
        self._done = True
        if failed:
            self._link.fail(reason)
        self._link.close(reason)

    def _send(self) -> None:
        data = self._device.data_to_send()
        if data:
            self._link.toDevice(data)
        data = self._origin.data_to_send()
        if data:
            self._link.toOrigin(data)


def _flush(held: Held, to: GracefulH2Connection, toId: int, source: GracefulH2Connection, sourceId: int | None) -> None:
    """Send what ``to``'s windows take; hand the same amount back to ``source`` (unless None)."""
    try:
        while held.size:
            size = min(held.size, to.local_flow_control_window(toId), to.max_outbound_frame_size)
            if size <= 0:
                return
            data = held.take(size)
            last = held.ended and not held.size and held.trailers is None
            to.send_data(toId, data, end_stream=last)
            held.endSent = last
            if sourceId is not None:
                source.acknowledge_received_data(size, sourceId)
        if held.ended and not held.endSent:
            if held.trailers is not None:
                to.send_headers(toId, held.trailers, end_stream=True)
            else:
                to.end_stream(toId)
            held.endSent = True
    except h2.exceptions.StreamClosedError:  # the receiver's stream is gone: nothing more goes there
        dropped = held.drop()
        held.endSent = True
        if dropped and sourceId is not None:
            source.acknowledge_received_data(dropped, sourceId)


def _withoutQuic(headers: Headers) -> Headers:
    """``headers`` with QUIC alternatives cut from Alt-Svc (the fields left empty go)."""
    if not any(name == b"alt-svc" for name, _ in headers):
        return headers
    kept: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name == b"alt-svc":
            stripped = strip_quic(value)
            if stripped is not None:
                kept.append((name, stripped))
        else:
            kept.append((name, value))
    return kept


def _name(code: int) -> str:
    return code.name if isinstance(code, h2.errors.ErrorCodes) else str(code)
