"""One persistent connection to an ICAP server, and a bounded pool of them."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import cast

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IConsumer, IPushProducer, IStreamClientEndpoint, ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from etpmitm.icap.codec import IcapError, IcapResponse, ResponseParser

__all__ = ["IcapConnection", "Pool"]


@implementer(IPushProducer)
class IcapConnection(Protocol):
    """Writes requests with back-pressure and parses one answer at a time."""

    def __init__(self) -> None:
        self.connected = False
        self.broken: str | None = None
        """Why the connection can no longer be used, once it cannot."""
        self._parser: ResponseParser | None = None
        self._answer: Deferred[IcapResponse] | None = None
        self._writable: Deferred[None] | None = None
        self._paused = False
        self.on_lost: Callable[[IcapConnection], None] | None = None
        self.leftover = b""

    def connectionMade(self) -> None:
        self.connected = True
        cast(IConsumer, self.transport).registerProducer(self, True)

    def _tcp(self) -> ITCPTransport:
        assert self.transport is not None
        return cast(ITCPTransport, self.transport)

    # -- sending ------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.broken is not None:
            raise IcapError(self.broken)
        assert self.transport is not None
        self.transport.write(data)

    def drained(self) -> Deferred[None]:
        """Fires once the transport takes more (at once when it does)."""
        if self.broken is not None:
            raise IcapError(self.broken)
        if not self._paused or self.answered:
            return succeed(None)
        self._writable = Deferred()
        return self._writable

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._wake()

    def stopProducing(self) -> None:
        self._paused = False

    def _wake(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None:
            writable.callback(None)

    # -- receiving ----------------------------------------------------------------

    @property
    def answered(self) -> bool:
        """Whether the awaited answer has come (or failed)."""
        return self._answer is not None and self._answer.called

    def expect(self, parser: ResponseParser) -> Deferred[IcapResponse]:
        """The next response, parsed by *parser*."""
        if self.broken is not None:
            raise IcapError(self.broken)
        self._parser = parser
        self._answer = Deferred()
        answer = self._answer
        if self.leftover:
            data, self.leftover = self.leftover, b""
            self.dataReceived(data)
        return answer

    def dataReceived(self, data: bytes) -> None:
        parser, answer = self._parser, self._answer
        if parser is None or answer is None or answer.called:
            self.leftover += data  # pipelined or unsolicited: checked by the next expect()
            if len(self.leftover) > 65536:
                self.abort("the ICAP server sent data nobody asked for")
            return
        try:
            response = parser.feed(data)
        except IcapError as e:
            self.abort(str(e))
            return
        if response is not None:
            self.leftover = parser.leftover
            self._parser = None
            answer.callback(response)
            self._wake()

    def abort(self, why: str) -> None:
        """Stop using the connection: fail what waits with *why*, reset it."""
        if self.broken is None:
            self.broken = why
        self._fail(IcapError(why))
        if self.transport is not None and self.connected:
            self._tcp().abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        why = None
        if self._parser is not None and self._answer is not None and not self._answer.called:
            try:
                self._parser.eof()
            except IcapError as e:
                why = str(e)
        if self.broken is None:
            self.broken = why or f"the ICAP connection was lost: {reason.getErrorMessage()}"
        self._fail(IcapError(self.broken))
        if self.on_lost is not None:
            self.on_lost(self)

    def _fail(self, error: IcapError) -> None:
        answer, self._answer = self._answer, None
        self._parser = None
        if answer is not None and not answer.called:
            answer.errback(Failure(error))
        writable, self._writable = self._writable, None
        if writable is not None and not writable.called:
            writable.errback(Failure(error))


class Pool:
    """At most *size* connections to one endpoint; idle ones are reused."""

    def __init__(self, endpoint: IStreamClientEndpoint, size: int) -> None:
        self._endpoint = endpoint
        self._configured = size
        self._size = size
        self._idle: list[IcapConnection] = []
        self._waiters: deque[Deferred[None]] = deque()
        self.count = 0
        """Connections open or being opened."""
        self.opened = 0
        """Connections opened so far (for tests and stats)."""

    def limit(self, most: int | None) -> None:
        """Open at most *most* connections (the server's ``Max-Connections``),
        never more than configured; None: as configured.  Open ones stay."""
        self._size = self._configured if most is None else max(1, min(self._configured, most))

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def acquire(self) -> IcapConnection:
        while True:
            while self._idle:
                conn = self._idle.pop()
                if conn.broken is None and conn.connected and not conn.leftover:
                    return conn
                conn.abort(conn.broken or "the ICAP server sent data while the connection was idle")
            if self.count < self._size:
                return await self._connect()
            waiter: Deferred[None] = Deferred(lambda d: self._waiters.remove(d))
            self._waiters.append(waiter)
            await waiter

    async def _connect(self) -> IcapConnection:
        self.count += 1
        try:
            conn: IcapConnection = await connectProtocol(self._endpoint, IcapConnection())
        except BaseException:
            self.count -= 1
            self._wake()
            raise
        self.opened += 1
        conn.on_lost = self._lost
        return conn

    def release(self, conn: IcapConnection, reusable: bool) -> None:
        """Give *conn* back: kept idle if *reusable*, else reset and forgotten."""
        if reusable and conn.broken is None and conn.connected and not conn.leftover:
            self._idle.append(conn)
            self._wake()
            return
        if conn.connected:
            conn.abort(conn.broken or "not reusable")  # _lost follows
        elif conn.on_lost is not None:
            self._lost(conn)

    def _lost(self, conn: IcapConnection) -> None:
        if conn.on_lost is None:
            return
        conn.on_lost = None
        self.count -= 1
        if conn in self._idle:
            self._idle.remove(conn)
        self._wake()

    def _wake(self) -> None:
        if self._waiters:
            self._waiters.popleft().callback(None)

    def close(self) -> None:
        """Reset every idle connection (the busy ones end with their scan)."""
        for conn in list(self._idle):
            conn.abort("the ICAP client is closing")
        self._idle.clear()
        while self._waiters:
            self._waiters.popleft().errback(Failure(CancelledError()))
