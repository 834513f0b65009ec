"""Real HTTP/2 devices and origins (the h2 library) for the in-memory gateway of :mod:`tests.corelab`.

:class:`H2Peer` is a :class:`~tests.corelab.Peer` that speaks HTTP/2 over
its TLS transport and logs each stream (:class:`StreamLog`).  It sends
bodies as the peer's windows allow, and acknowledges what it receives only
while ``autoAck`` is on (a device that stops reading a stream).  It keeps
its streams after a GOAWAY, as curl and nginx do (:mod:`etpmitm.gateway._h2`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import attrs
import h2.config
import h2.events
import h2.settings

from etpmitm.gateway._h2 import GracefulH2Connection, goaway_frame
from tests.corelab import Peer

Fields = Sequence[tuple[str | bytes, str | bytes]]


@attrs.define
class StreamLog:
    """What one stream brought a peer."""

    headers: list[tuple[bytes, bytes]] | None = None
    informational: list[list[tuple[bytes, bytes]]] = attrs.Factory(list)
    body: bytearray = attrs.Factory(bytearray)
    chunks: list[int] = attrs.Factory(list)
    """The size of each DATA frame received."""
    trailers: list[tuple[bytes, bytes]] | None = None
    ended: bool = False
    reset: int | None = None
    unacked: int = 0

    def header(self, name: bytes) -> bytes | None:
        return dict(self.headers or []).get(name)

    def all(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers or [] if n == name]


class H2Peer(Peer):
    """A device (``client=True``) or an origin speaking HTTP/2 with the h2 library."""

    def __init__(self, client: bool, settings: dict[int, int] | None = None, autoAck: bool = True) -> None:
        super().__init__()
        self.conn = GracefulH2Connection(h2.config.H2Configuration(client_side=client, header_encoding=None))
        if settings:
            self.conn.local_settings = h2.settings.Settings(client=client, initial_values=settings)  # type: ignore[arg-type]
        self.autoAck = autoAck
        self.streams: dict[int, StreamLog] = {}
        self.events: list[h2.events.Event] = []
        self.onRequest: Callable[[int, StreamLog], None] | None = None
        """Origin: called once a request has ended (headers, body, trailers in)."""
        self.onHeaders: Callable[[int, StreamLog], None] | None = None
        """Origin: called as soon as a request's headers are in."""
        self._outgoing: dict[int, tuple[bytes, bool, Fields | None]] = {}

    def connectionMade(self) -> None:
        self.conn.initiate_connection()
        self.flush()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        for event in self.conn.receive_data(data):
            self.events.append(event)
            self._handle(event)
        self._pump()
        self.flush()

    def readConnectionLost(self) -> None:
        """The other side is done: close too, as servers and clients do."""
        super().readConnectionLost()
        assert self.transport is not None
        self.transport.loseConnection()

    def _handle(self, event: h2.events.Event) -> None:
        sid = getattr(event, "stream_id", None)
        log = self.streams.setdefault(sid, StreamLog()) if sid else None
        if isinstance(event, (h2.events.RequestReceived, h2.events.ResponseReceived)):
            assert log is not None and sid is not None
            log.headers = list(event.headers)  # type: ignore[arg-type]
            if isinstance(event, h2.events.RequestReceived) and self.onHeaders is not None:
                self.onHeaders(sid, log)
        elif isinstance(event, h2.events.InformationalResponseReceived):
            assert log is not None
            log.informational.append(list(event.headers))  # type: ignore[arg-type]
        elif isinstance(event, h2.events.DataReceived):
            assert log is not None and sid is not None
            log.body += event.data or b""
            log.chunks.append(len(event.data or b""))
            if self.autoAck:
                self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
            else:
                log.unacked += event.flow_controlled_length
        elif isinstance(event, h2.events.TrailersReceived):
            assert log is not None
            log.trailers = list(event.headers)  # type: ignore[arg-type]
        elif isinstance(event, h2.events.StreamEnded):
            assert log is not None and sid is not None
            log.ended = True
            if self.onRequest is not None:
                self.onRequest(sid, log)
        elif isinstance(event, h2.events.StreamReset):
            assert log is not None
            log.reset = int(event.error_code) if event.error_code is not None else None

    # -- acting -----------------------------------------------------------------------

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def request(self, path: str, method: str = "GET", body: bytes | None = None, extra: Fields = (),
                trailers: Fields | None = None, authority: str = "origin.test", end: bool = True) -> int:
        """Open a stream with a request (``end=False``: its body follows through :meth:`send`); returns its id."""
        sid = self.conn.get_next_available_stream_id()
        fields: list[tuple[str | bytes, str | bytes]] = [
            (":method", method), (":scheme", "https"), (":authority", authority), (":path", path), *extra,
        ]
        self.streams[sid] = StreamLog()
        self.conn.send_headers(sid, fields, end_stream=end and body is None and trailers is None)
        if body is not None or trailers is not None:
            self.send(sid, body or b"", end=end, trailers=trailers)
        self.flush()
        return sid

    def respond(self, sid: int, status: int = 200, body: bytes = b"", extra: Fields = (),
                trailers: Fields | None = None, end: bool = True) -> None:
        """Send a response's headers, then its body as the windows allow."""
        fields: list[tuple[str | bytes, str | bytes]] = [(":status", str(status)), *extra]
        self.conn.send_headers(sid, fields, end_stream=end and not body and trailers is None)
        if body or trailers is not None or not end:
            self.send(sid, body, end=end, trailers=trailers)
        self.flush()

    def send(self, sid: int, data: bytes, end: bool = True, trailers: Fields | None = None) -> None:
        """Queue ``data`` (then ``trailers`` or END_STREAM) on ``sid``; sent as the windows open."""
        queued, _, _ = self._outgoing.get(sid, (b"", False, None))
        self._outgoing[sid] = (queued + data, end, trailers)
        self._pump()
        self.flush()

    def _pump(self) -> None:
        for sid, (data, end, trailers) in list(self._outgoing.items()):
            try:
                while data:
                    size = min(len(data), self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
                    if size <= 0:
                        break
                    self.conn.send_data(sid, data[:size])
                    data = data[size:]
            except h2.exceptions.StreamClosedError:
                del self._outgoing[sid]
                continue
            if data:
                self._outgoing[sid] = (data, end, trailers)
                continue
            del self._outgoing[sid]
            if trailers is not None:
                self.conn.send_headers(sid, trailers, end_stream=True)
            elif end:
                self.conn.end_stream(sid)

    def pending(self, sid: int) -> int:
        """Bytes still queued on ``sid`` for want of window."""
        return len(self._outgoing.get(sid, (b"",))[0])

    def ackAll(self) -> None:
        """Acknowledge everything received and not yet acknowledged; acknowledge from now on."""
        self.autoAck = True
        for sid, log in self.streams.items():
            if log.unacked:
                self.conn.acknowledge_received_data(log.unacked, sid)
                log.unacked = 0
        self.flush()

    def reset(self, sid: int, code: int) -> None:
        self.conn.reset_stream(sid, code)
        self.flush()

    def goaway(self, last: int, code: int = 0) -> None:
        """Send GOAWAY as bytes: this peer's own streams stay usable."""
        self.flush()
        assert self.transport is not None
        self.transport.write(goaway_frame(last, code))

    def eventsOf(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]
