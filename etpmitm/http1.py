"""Sans-IO HTTP/1.1 observer for one intercepted connection.

Feed it the device's bytes and the origin's bytes; it returns what to do
(a list of :data:`Action`).  Every request head is judged before the origin
sees a byte of it.  Messages are forwarded as the bytes received: h11 parses
a copy, one ``h11.Connection`` per direction, and each is told what the
other direction said (so HEAD, 1xx, 101, keep-alive and close are framed as
the two peers frame them); the observer cuts the original bytes where h11
found the boundaries.  Requests h11 would accept but an origin could read
another way are refused (:mod:`etpmitm.http1guard`).

Plain keep-alive exchanges (a bodiless request whose head comes in one
read, a response framed by Content-Length) take a fast path instead: llhttp
parses their heads (:mod:`etpmitm.http1fast`), and h11 is not involved until
an exchange needs it.  At that point the request is replayed into h11 and
everything goes on as if h11 had read it.

h11 handles one exchange at a time: a pipelined request waits, unparsed,
until the response before it has ended (:attr:`HTTP1Observer.holding` says
when the device should not be read).  A request refused in the read that
brought its head is withheld whole; one refused later in its body (a bad
chunk size) has had its earlier bytes forwarded, never the bad ones, and the
connection is closed.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Literal, Union
from urllib.parse import urlsplit

import attrs
import h11

from etpmitm.altsvc import strip_head
from etpmitm.blockpage import BlockResponse
from etpmitm.http import ALLOW, Judge, RequestAction, RequestHead, RequestVerdict, allow_all, authority
from etpmitm.http1fast import FastParser
from etpmitm.http1guard import MAX_HEAD, MAX_HEADERS, check_chunk, check_head, check_last_chunk

UNKNOWN = RequestHead(method="?", authority="", path="")
"""The head of a request refused before its head could be parsed."""

_CLOSED_EARLY = ("peer unexpectedly closed connection", "peer closed connection without sending complete message body")
_H11_REASONS = {"Receive buffer too long": f"header block over {MAX_HEAD // 1024} KiB"}


class HTTP1Error(Exception):
    """The observer's own failure (a bug: no input should cause it)."""


@attrs.define(eq=False)
class Exchange:
    """One request and its response, as far as they went."""

    number: int
    head: RequestHead
    action: RequestAction = "allow"
    reason: str = ""
    rule: str | None = None
    category: str | None = None
    status: int | None = None
    content_type: str | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    upgrade: str | None = None
    chunked: bool = False
    framing: bytes = b""
    """Chunked-body bytes since the last data (size lines, CRLFs, trailers), to check."""
    announced: bool = False
    """Whether :class:`Began` was returned for it."""
    request_done: bool = False
    response_done: bool = False


@attrs.frozen
class ToOrigin:
    data: bytes


@attrs.frozen
class ToDevice:
    data: bytes


@attrs.frozen
class EndOrigin:
    """End the direction towards the origin (the device's stream is over)."""


@attrs.frozen
class EndDevice:
    """End the direction towards the device."""


@attrs.frozen
class Began:
    """A request head was judged (``exchange.action`` says how)."""

    exchange: Exchange


@attrs.frozen
class Responded:
    """The final response head went to the device (the origin's or the gateway's)."""

    exchange: Exchange


@attrs.frozen
class Finished:
    """The exchange is over: request and response both complete, or refused."""

    exchange: Exchange


@attrs.frozen
class Upgraded:
    """101 Switching Protocols: from now on every byte passes unobserved."""

    exchange: Exchange


@attrs.frozen
class Close:
    """Close the connection once what was returned before is sent."""

    reason: str
    error: bool


Action = Union[ToOrigin, ToDevice, EndOrigin, EndDevice, Began, Responded, Finished, Upgraded, Close]
Mode = Literal["http", "opaque", "done"]


def _mirror(connection: h11.Connection, event: Any) -> None:
    """``connection.send(event)``; h11 0.16 raises KeyError/AttributeError instead of
    LocalProtocolError for some transitions it does not allow (found by fuzzing)."""
    if isinstance(event, h11.Response) and event.http_version != b"1.1":
        # h11 only sends HTTP/1.1: mirror an HTTP/1.0 response as the 1.1 one
        # that frames the same way (closing after it unless it keeps alive).
        headers = list(event.headers)
        if not any(name == b"connection" and b"keep-alive" in value.lower() for name, value in headers):
            headers.append((b"connection", b"close"))
        event = h11.Response(status_code=event.status_code, headers=headers, reason=event.reason)
    elif isinstance(event, h11.Request) and event.http_version != b"1.1":
        # Likewise an HTTP/1.0 request, towards the origin's parser: the device's
        # side ends after this exchange (h11 keeps no HTTP/1.0 connection alive),
        # so this one does too; HTTP/1.1 needs a Host, which HTTP/1.0 may lack.
        headers = [*event.headers, (b"connection", b"close")]
        if not any(name == b"host" for name, _ in event.headers):
            headers.append((b"host", b"http-1.0.invalid"))
        event = h11.Request(method=event.method, target=event.target, headers=headers)
    try:
        connection.send(event)
    except (KeyError, AttributeError) as e:
        raise h11.LocalProtocolError(f"{type(event).__name__} not allowed in state {connection.states}") from e


class HTTP1Observer:
    """Frames both directions of one HTTP/1.1 connection; see the module docstring."""

    def __init__(
        self,
        judge: Judge = allow_all,
        *,
        max_headers: int = MAX_HEADERS,
        strip_alt_svc: bool = True,
        fast: bool = True,
    ) -> None:
        """``fast=False`` frames everything with h11 (the fast path's reference, in tests)."""
        self._judge = judge
        self._max_headers = max_headers
        self._strip = strip_alt_svc
        self._up = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self._down = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self._fromDevice = bytearray()
        """Device bytes not yet cut into messages (h11's own buffer is a suffix of it)."""
        self._fromOrigin = bytearray()
        self._current: Exchange | None = None
        self._count = 0
        self._out: list[Action] = []
        self.mode: Mode = "http"
        self._deviceEOF = False
        self._originEOF = False
        self._endedOrigin = False
        self._endedDevice = False
        self._cycled = False
        """An exchange ended and the next may start: held bytes can be parsed."""
        self._fast = FastParser() if fast else None
        self._slow = False
        """h11 frames the current exchange (else h11 is idle, with nothing buffered)."""
        self._fastEx: Exchange | None = None
        """The exchange on the fast path, if any."""
        self._fastHead = b""
        """Its request head, to replay into h11 if the response needs h11."""
        self._fastLeft: int | None = None
        """Response body bytes still to come (None: the head has not come yet)."""
        self._verdict: RequestVerdict | None = None
        """The judge's verdict on a head the fast path passed to h11."""

    # -- what the layer asks ------------------------------------------------------------

    @property
    def holding(self) -> bool:
        """Device bytes wait for the current exchange to end: stop reading the device."""
        if self._fastEx is not None:
            return self.mode == "http" and len(self._fromDevice) > 0
        state = self._up.their_state
        return self.mode == "http" and len(self._fromDevice) > 0 and state is not h11.IDLE and state is not h11.SEND_BODY

    @property
    def awaiting_response(self) -> bool:
        """A forwarded request has no complete response yet."""
        ex = self._current
        return ex is not None and ex.action == "allow" and not ex.response_done

    @property
    def current(self) -> Exchange | None:
        return self._current

    # -- input ---------------------------------------------------------------------------

    def device(self, data: bytes) -> list[Action]:
        """Bytes from the device."""
        if self.mode == "opaque":
            self._count_up(len(data))
            return [ToOrigin(data)]
        if self.mode == "done" or self._deviceEOF or not data:
            return []
        self._fromDevice += data
        if self._fastEx is not None:
            return []  # held until the exchange ends
        if not self._slow:
            if (out := self._fastRequest()) is not None:
                return out
            self._slow = True
            data = bytes(self._fromDevice)
        self._up.receive_data(data)
        return self._run(self._pumpDevice)

    def origin(self, data: bytes) -> list[Action]:
        """Bytes from the origin."""
        if self.mode == "opaque":
            self._count_down(len(data))
            return [ToDevice(data)]
        if self.mode == "done" or self._originEOF or not data:
            return []
        self._fromOrigin += data
        if self._fastEx is not None:
            return self._fastResponse()
        if not self._slow:
            self._slow = True
            data = bytes(self._fromOrigin)
        self._down.receive_data(data)
        return self._run(self._pumpOrigin)

    def device_ended(self) -> list[Action]:
        """The device's stream ended."""
        if self._deviceEOF:
            return []
        self._deviceEOF = True
        if self.mode == "opaque":
            return self._endOrigin([])
        if self.mode == "done":
            return []
        if self._fastEx is not None:
            # h11 would pass the end on at once behind a complete request, or wait behind held bytes
            return [] if self._fromDevice else self._endOrigin([])
        self._slow = True
        self._up.receive_data(b"")
        return self._run(self._pumpDevice)

    def origin_ended(self) -> list[Action]:
        """The origin's stream ended."""
        if self._originEOF:
            return []
        self._originEOF = True
        if self.mode == "opaque":
            return self._endDevice([])
        if self.mode == "done":
            return []
        if self._fastEx is not None:
            if self._fastLeft is None:
                return self._toSlow()
            if self._fast is not None:
                self._fast.forget()
            return self._endDevice([])  # cut mid-body: h11 ends the device's direction too
        self._slow = True
        self._down.receive_data(b"")
        return self._run(self._pumpOrigin)

    # -- the two parsers ---------------------------------------------------------------------

    def _run(self, first: Callable[[], bool]) -> list[Action]:
        """Parse what ``first`` can; then both sides while either makes progress,
        if anything waits (bytes held, or an end behind a finished exchange)."""
        self._out = []
        self._cycled = False
        try:
            first()
            if self._fromDevice or self._fromOrigin or (self._cycled and (self._deviceEOF or self._originEOF)):
                while self.mode == "http" and (self._pumpDevice() | self._pumpOrigin()):
                    pass
        except h11.LocalProtocolError as e:  # a mirrored event h11 will not take
            self._close(f"HTTP/1.1 framing failed: {e}", error=True)
        out, self._out = self._out, []
        if (
            self._fast is not None and self.mode == "http" and self._current is None
            and not (self._fromDevice or self._fromOrigin or self._deviceEOF or self._originEOF)
            and self._up.states == _IDLE and self._down.states == _IDLE
        ):
            self._slow = False  # between exchanges with nothing held: the next may be fast
        return out

    # -- the fast path (see etpmitm.http1fast) -------------------------------------------------

    def _fastRequest(self) -> list[Action] | None:
        """The device's bytes as one plain request, or None for h11."""
        buffer = self._fromDevice
        if self._fast is None or self._current is not None or not buffer.endswith(b"\r\n\r\n"):
            return None
        raw = bytes(buffer)
        if raw.find(b"\r\n\r\n") != len(raw) - 4:
            return None  # more than one head (pipelined)
        parsed = self._fast.request(raw)
        if parsed is None or len(parsed.headers) > self._max_headers:
            return None
        head = head_facts(parsed.method, parsed.target, parsed.headers)
        verdict = self._judge(head)
        if verdict.action != "allow":
            self._verdict = verdict  # h11 frames the gateway's answer
            return None
        buffer.clear()
        self._count += 1
        ex = self._current = self._fastEx = Exchange(self._count, head)
        ex.reason, ex.rule, ex.category = verdict.reason, verdict.rule, verdict.category
        ex.bytes_up = len(raw)
        ex.announced = ex.request_done = True
        self._fastHead, self._fastLeft = raw, None
        return [Began(ex), ToOrigin(raw)]

    def _fastResponse(self) -> list[Action]:
        """The origin's bytes for the exchange on the fast path."""
        ex = self._fastEx
        assert ex is not None and self._fast is not None
        buffer = self._fromOrigin
        out: list[Action] = []
        if self._fastLeft is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                # h11 also ends a head at a blank line after a bare LF
                return self._toSlow() if len(buffer) > MAX_HEAD or _BLANK_LINE.search(buffer) else []
            raw = bytes(buffer[: end + 4])
            parsed = self._fast.response(raw)
            if parsed is None:
                return self._toSlow()
            del buffer[: end + 4]
            ex.status, ex.content_type = parsed.status, _header(parsed.headers, b"content-type")
            data = strip_head(raw) if self._strip else raw
            ex.bytes_down += len(data)
            out += [ToDevice(data), Responded(ex)]
            self._fastLeft = parsed.length
        left = self._fastLeft
        if left and buffer:
            if left >= len(buffer):
                body = bytes(buffer)
                buffer.clear()
            else:
                body = bytes(buffer[:left])
                del buffer[:left]
            ex.bytes_down += len(body)
            self._fastLeft = left - len(body)
            self._fast.body(body)
            out.append(ToDevice(body))
        if self._fastLeft:
            return out
        ex.response_done = True
        out.append(Finished(ex))
        self._current = self._fastEx = None
        if self._deviceEOF and not self._fromDevice:
            self._out = out
            self._endBoth()  # the device ended behind its last request
            out, self._out = self._out, []
        elif self._fromDevice or self._fromOrigin or self._deviceEOF:
            out += self._feedH11(self._pumpOrigin)  # h11 would read on where the response ended
        return out

    def _toSlow(self) -> list[Action]:
        """The response needs h11: replay the request into it, then go on there."""
        assert self._fastEx is not None and self._fast is not None
        self._fastEx = None
        self._fast.forget()
        self._up.receive_data(self._fastHead)
        request, end = self._up.next_event(), self._up.next_event()
        if not isinstance(request, h11.Request) or not isinstance(end, h11.EndOfMessage):
            raise HTTP1Error(f"h11 read a fast-path request as {request!r}, {end!r}")
        _mirror(self._down, request)
        _mirror(self._down, end)
        # h11 reads what the device did meanwhile first (its end, as it would have at once)
        return self._feedH11(lambda: self._pumpDevice() | self._pumpOrigin())

    def _feedH11(self, first: Callable[[], bool]) -> list[Action]:
        """Hand what waits (bytes, ends) to h11 and run it."""
        self._slow = True
        if self._fromDevice:
            self._up.receive_data(bytes(self._fromDevice))
        if self._deviceEOF:
            self._up.receive_data(b"")
        if self._fromOrigin:
            self._down.receive_data(bytes(self._fromOrigin))
        if self._originEOF:
            self._down.receive_data(b"")
        return self._run(first)

    def _pumpDevice(self) -> bool:
        """Read requests; True if anything happened."""
        moved = False
        while self.mode == "http" and self._up.their_state is not h11.ERROR:
            try:
                event = self._up.next_event()
            except h11.RemoteProtocolError as e:
                self._deviceBroke(str(e))
                return True
            used = len(self._fromDevice) - _unread(self._up)
            if event is h11.NEED_DATA or event is h11.PAUSED:
                if used and self._up.their_state is h11.SEND_BODY:
                    raw = self._cut(self._fromDevice, used)
                    self._exchange().framing += raw
                    self._requestBytes(raw)
                return moved
            if isinstance(event, h11.ConnectionClosed):
                self._endOrigin(self._out)  # passing the end on once
                return moved
            moved = True
            raw = self._cut(self._fromDevice, used)
            if isinstance(event, h11.Request):
                self._request(event, raw)
            elif isinstance(event, h11.Data):
                self._requestData(event, raw)
            elif isinstance(event, h11.EndOfMessage):
                self._requestEnd(event, raw)
        return moved

    def _pumpOrigin(self) -> bool:
        """Read responses; True if anything happened."""
        moved = False
        while self.mode == "http" and self._down.their_state is not h11.ERROR:
            try:
                event = self._down.next_event()
            except h11.RemoteProtocolError as e:
                self._originBroke(str(e))
                return True
            used = len(self._fromOrigin) - _unread(self._down)
            if event is h11.NEED_DATA or event is h11.PAUSED:
                if used and self._down.their_state is h11.SEND_BODY:
                    self._responseBytes(self._cut(self._fromOrigin, used))
                return moved
            if isinstance(event, h11.ConnectionClosed):
                self._endDevice(self._out)
                return moved
            moved = True
            raw = self._cut(self._fromOrigin, used)
            if isinstance(event, h11.InformationalResponse):
                self._informational(event, raw)
            elif isinstance(event, h11.Response):
                self._response(event, raw)
            elif isinstance(event, h11.Data):
                self._up.send_with_data_passthrough(event)
                self._responseBytes(raw)
            elif isinstance(event, h11.EndOfMessage):
                _mirror(self._up, event)
                self._responseBytes(raw)
                self._exchange().response_done = True
                self._nextCycle()
        return moved

    # -- requests ------------------------------------------------------------------------

    def _request(self, event: h11.Request, raw: bytes) -> None:
        self._count += 1
        head = request_head(event)
        ex = self._current = Exchange(self._count, head)
        verdict, self._verdict = self._verdict, None
        ex.bytes_up = len(raw)
        ex.chunked = any(name == b"transfer-encoding" for name, _ in event.headers)
        if problem := check_head(raw, event.headers, max_headers=self._max_headers):
            self._refuse(ex, 400, problem)
            return
        if event.method == b"CONNECT":
            self._refuse(ex, 405, "CONNECT inside TLS is not relayed")
            return
        if verdict is None:
            verdict = self._judge(head)
        ex.reason, ex.rule, ex.category = verdict.reason, verdict.rule, verdict.category
        if verdict.action != "allow":
            ex.action = "block"
            self._began(ex)
            self._block(ex, verdict)
            return
        self._began(ex)
        _mirror(self._down, event)
        self._out.append(ToOrigin(raw))

    def _requestData(self, event: h11.Data, raw: bytes) -> None:
        ex = self._exchange()
        if ex.chunked:
            framing, ex.framing = ex.framing + raw[: len(raw) - len(event.data)], b""
            if framing.strip(b"\r\n") and (problem := check_chunk(framing)):
                self._refuse(ex, 400, problem)
                return
        if ex.action == "allow":
            self._down.send_with_data_passthrough(event)
        self._requestBytes(raw)

    def _requestEnd(self, event: h11.EndOfMessage, raw: bytes) -> None:
        ex = self._exchange()
        if ex.chunked and (problem := check_last_chunk(ex.framing + raw)):
            self._refuse(ex, 400, problem)
            return
        if ex.action == "allow":
            _mirror(self._down, event)
        self._requestBytes(raw)
        ex.request_done = True
        self._nextCycle()

    def _requestBytes(self, raw: bytes) -> None:
        ex = self._exchange()
        ex.bytes_up += len(raw)
        if ex.action == "allow" and raw:
            self._out.append(ToOrigin(raw))

    def _deviceBroke(self, reason: str) -> None:
        ex = self._current
        if self._deviceEOF and reason.startswith(_CLOSED_EARLY):
            self._endOrigin(self._out)  # the device ended mid-request: pass its end on
            return
        if ex is None or ex.request_done:
            self._count += 1
            ex = self._current = Exchange(self._count, UNKNOWN)
        self._refuse(ex, 400, _H11_REASONS.get(reason, f"malformed request: {reason}"))

    # -- responses -------------------------------------------------------------------------

    def _informational(self, event: h11.InformationalResponse, raw: bytes) -> None:
        ex = self._exchange()
        if event.status_code != 101:
            _mirror(self._up, event)
            self._responseBytes(raw)
            return
        ex.status = 101
        ex.upgrade = _header(event.headers, b"upgrade") or "unknown"
        self._responseBytes(raw)
        self._out.append(Responded(ex))
        self._out.append(Upgraded(ex))
        self.mode = "opaque"
        rest_up, rest_down = bytes(self._fromDevice), bytes(self._fromOrigin)
        self._fromDevice.clear()
        self._fromOrigin.clear()
        if rest_up:
            self._count_up(len(rest_up))
            self._out.append(ToOrigin(rest_up))
        if rest_down:
            self._count_down(len(rest_down))
            self._out.append(ToDevice(rest_down))
        if self._deviceEOF:
            self._endOrigin(self._out)
        if self._originEOF:
            self._endDevice(self._out)

    def _response(self, event: h11.Response, raw: bytes) -> None:
        ex = self._exchange()
        ex.status = event.status_code
        ex.content_type = _header(event.headers, b"content-type")
        _mirror(self._up, event)
        self._responseBytes(strip_head(raw) if self._strip else raw)
        self._out.append(Responded(ex))

    def _responseBytes(self, raw: bytes) -> None:
        ex = self._exchange()
        ex.bytes_down += len(raw)
        if raw:
            self._out.append(ToDevice(raw))

    def _originBroke(self, reason: str) -> None:
        ex = self._current
        if self._originEOF and reason.startswith(_CLOSED_EARLY):
            self._endDevice(self._out)  # the origin ended mid-response: the device sees it end so
            return
        why = f"the origin sent malformed HTTP/1.1: {reason}"
        if ex is not None and ex.action == "allow" and ex.bytes_down == 0:
            ex.reason = why
            self._answer(ex, 502, BlockResponse.render(ex.head.url, why, "bad-gateway", status=502), close=True)
        else:
            self._close(why, error=True)

    # -- the gateway's answers ---------------------------------------------------------------

    def _block(self, ex: Exchange, verdict: RequestVerdict) -> None:
        why = verdict.reason + (f" (rule {verdict.rule})" if verdict.rule else "")
        page = BlockResponse.render(ex.head.url, why, "policy", status=403, category=verdict.category)
        # A device waiting for 100-continue will not send its body: the framing is lost.
        close = self._up.they_are_waiting_for_100_continue
        self._answer(ex, 403, page, close=close)

    def _refuse(self, ex: Exchange, status: int, reason: str) -> None:
        """A request the origin must not see: answer (unless a response already started) and close."""
        ex.action, ex.reason = "refuse", reason
        self._began(ex)
        self._withhold(ex)
        if ex.bytes_down:
            ex.request_done = ex.response_done = True
            self._out.append(Finished(ex))
            self._close(f"refused an HTTP/1.1 request: {reason}", error=True)
            return
        page = BlockResponse.render(ex.head.url or "(request)", reason, "refused", status=status)
        self._answer(ex, status, page, close=True)

    def _answer(self, ex: Exchange, status: int, page: BlockResponse, *, close: bool) -> None:
        head_only = ex.head.method == "HEAD"
        data = render(page, head_only=head_only, close=close)
        ex.status, ex.content_type = status, "text/html; charset=utf-8"
        ex.bytes_down += len(data)
        ex.response_done = True
        self._out.append(ToDevice(data))
        self._out.append(Responded(ex))
        if close:
            ex.request_done = True
            self._out.append(Finished(ex))
            self._current = None
            reason = f"answered {status}: {ex.reason}"
            self._close(reason if ex.action != "refuse" else f"refused an HTTP/1.1 request: {ex.reason}",
                        error=ex.action == "refuse" or status == 502)
            return
        headers = page.headers()
        _mirror(self._up, h11.Response(status_code=status, headers=headers))
        if not head_only:
            _mirror(self._up, h11.Data(data=page.body))
        _mirror(self._up, h11.EndOfMessage())
        self._nextCycle()

    # -- between exchanges ------------------------------------------------------------------

    def _nextCycle(self) -> None:
        ex = self._current
        if ex is None or not (ex.request_done and ex.response_done):
            return
        self._out.append(Finished(ex))
        self._current = None
        up, down = self._up, self._down
        if up.states != {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE}:
            self._endBoth()  # no keep-alive: that was the last exchange
            return
        up.start_next_cycle()
        self._cycled = True
        if ex.action == "allow":
            if down.states != {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE}:
                self._endBoth()
                return
            down.start_next_cycle()

    def _endBoth(self) -> None:
        self.mode = "done"
        self._endOrigin(self._out)
        self._endDevice(self._out)

    def _endOrigin(self, out: list[Action]) -> list[Action]:
        if not self._endedOrigin:
            self._endedOrigin = True
            out.append(EndOrigin())
        return out

    def _endDevice(self, out: list[Action]) -> list[Action]:
        if not self._endedDevice:
            self._endedDevice = True
            out.append(EndDevice())
        return out

    def _close(self, reason: str, *, error: bool) -> None:
        self.mode = "done"
        self._fromDevice.clear()
        self._fromOrigin.clear()
        self._out.append(Close(reason, error))

    # -- helpers -------------------------------------------------------------------------------

    def _withhold(self, ex: Exchange) -> None:
        """Take back what of ``ex`` was not handed out yet: a request refused in
        the bytes that brought its head never reaches the origin at all."""
        out = self._out
        start = next((i for i, a in enumerate(out) if isinstance(a, Began) and a.exchange is ex), 0)
        self._out = out[:start] + [a for a in out[start:] if not isinstance(a, ToOrigin)]

    def _began(self, ex: Exchange) -> None:
        if not ex.announced:
            ex.announced = True
            self._out.append(Began(ex))

    def _exchange(self) -> Exchange:
        if self._current is None:
            raise HTTP1Error("a message part with no exchange")
        return self._current

    def _count_up(self, n: int) -> None:
        if self._current is not None:
            self._current.bytes_up += n

    def _count_down(self, n: int) -> None:
        if self._current is not None:
            self._current.bytes_down += n

    @staticmethod
    def _cut(buffer: bytearray, n: int) -> bytes:
        raw = bytes(buffer[:n])
        del buffer[:n]
        return raw


_IDLE = {h11.CLIENT: h11.IDLE, h11.SERVER: h11.IDLE}
_BLANK_LINE = re.compile(rb"\n\r?\n")
"""Where h11 ends a head (h11._receivebuffer)."""


def _unread(connection: h11.Connection) -> int:
    """Bytes h11 has received but not turned into events yet."""
    buffer = getattr(connection, "_receive_buffer", None)  # cheap; trailing_data copies
    return len(buffer) if buffer is not None else len(connection.trailing_data[0])


def _header(headers: h11._headers.Headers | list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def request_head(event: h11.Request) -> RequestHead:
    """The facts the policy and the audit see of one request."""
    return head_facts(event.method, event.target, event.headers)


def head_facts(method: bytes, raw_target: bytes, headers: h11._headers.Headers | list[tuple[bytes, bytes]]) -> RequestHead:
    """:func:`request_head` from the parts (header names in lower case)."""
    target = raw_target.decode("latin-1")
    host = _header(headers, b"host") or ""
    query_length = len(target.partition("?")[2]) if "?" in target else 0
    if target.startswith(("http://", "https://")):
        parts = urlsplit(target)
        host, path = parts.netloc or host, parts.path or "/"
    else:
        path = target.partition("?")[0]
    length = _header(headers, b"content-length")
    return RequestHead(
        method=method.decode("latin-1"),
        authority=authority(host),
        path=path,
        query_length=query_length,
        query=target.partition("?")[2] if "?" in target else None,
        user_agent=_header(headers, b"user-agent"),
        content_type=_header(headers, b"content-type"),
        content_length=int(length) if length is not None and length.isdigit() else None,
    )


def render(page: BlockResponse, *, head_only: bool, close: bool) -> bytes:
    """The gateway's own HTTP/1.1 response carrying ``page``."""
    reason = _PHRASES.get(page.status, "")
    lines = [f"HTTP/1.1 {page.status} {reason}"]
    lines += [f"{name}: {value}" for name, value in page.headers()]
    if close:
        lines.append("connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head if head_only else head + page.body


_PHRASES = {400: "Bad Request", 403: "Forbidden", 405: "Method Not Allowed", 502: "Bad Gateway"}
