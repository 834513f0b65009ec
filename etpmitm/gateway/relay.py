"""Relay bytes both ways between a device and an origin.

Each side's transport is registered as the streaming producer of the other,
so a slow reader pauses the fast writer and buffers stay bounded.  The end
of each direction is passed on separately (half-close); an abort on either
side aborts the other; after ``idleTimeout`` seconds without a byte in
either direction both sides are closed.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from etpmitm.gateway.writenow import writeNow
from etpmitm.interfaces import IFlowObserver

RELAY_BUFFER = 256 * 1024
"""Socket read size, and write backlog at which the other side is paused.

Twisted's default (64 KiB) makes bulk transfers pause and resume the
producer on almost every read; this bounds a relay to about 1 MiB per
connection while it moves data in larger steps."""


def tuneRelaySocket(tcpTransport: object) -> None:
    """:data:`RELAY_BUFFER`, and no Nagle delay: a relay forwards what it
    has at once (a small response held back for a delayed ACK costs tens
    of milliseconds)."""
    tcpTransport.bufferSize = RELAY_BUFFER  # type: ignore[attr-defined]
    tcpTransport.setTcpNoDelay(True)  # type: ignore[attr-defined]


@implementer(IHalfCloseableProtocol)
class RelayEnd(Protocol):
    """One side of a relay.  Holds what it reads until the relay starts."""

    def __init__(self, side: str) -> None:
        self.side = side
        self.relay: Relay | None = None
        self.pending: list[bytes] = []
        self.received = 0
        self.readEnded = False
        self.writeEnded = False

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.relay is None:
            self.pending.append(data)
        else:
            self.relay.forward(self, data)

    def readConnectionLost(self) -> None:
        self.readEnded = True
        if self.relay is not None:
            self.relay.endOfInput(self)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        if self.relay is not None:
            self.relay.endLost(self, reason)


class Relay:
    """Couples two connected :class:`RelayEnd` s."""

    def __init__(
        self,
        device: RelayEnd,
        origin: RelayEnd,
        clock: IReactorTime,
        idleTimeout: float,
        observers: tuple[IFlowObserver, ...] = (),
        onDone: Callable[[Relay], None] | None = None,
    ) -> None:
        self.device = device
        self.origin = origin
        self._clock = clock
        self._idleTimeout = idleTimeout
        self._observers = observers
        self._onDone = onDone
        self._lastActivity = clock.seconds()
        self._idleCall: IDelayedCall | None = None
        self._lost: set[str] = set()
        self.idled = False
        self.error: str | None = None
        self.note: str | None = None

    def start(self) -> None:
        """Wire the producers, then deliver anything that arrived early."""
        device, origin = self.device, self.origin
        device.relay = origin.relay = self
        assert device.transport is not None and origin.transport is not None
        device.transport.registerProducer(origin.transport, True)  # type: ignore[attr-defined]
        origin.transport.registerProducer(device.transport, True)  # type: ignore[attr-defined]
        self._idleCall = self._clock.callLater(self._idleTimeout, self._idleCheck)
        for end in (device, origin):
            pending, end.pending = end.pending, []
            for data in pending:
                self.forward(end, data)
            if end.readEnded:
                self.endOfInput(end)
            end.transport.resumeProducing()  # type: ignore[union-attr]

    def _peer(self, end: RelayEnd) -> RelayEnd:
        return self.origin if end is self.device else self.device

    def forward(self, end: RelayEnd, data: bytes) -> None:
        self._lastActivity = self._clock.seconds()
        for observer in self._observers:
            if end is self.device:
                observer.deviceData(data)
            else:
                observer.originData(data)
        writeNow(self._peer(end).transport, data)

    def endOfInput(self, end: RelayEnd) -> None:
        """``end``'s peer finished sending: finish the same direction onward.

        A plain TCP transport stays open after both of its directions have
        ended; the relay closes it then.  (The TLS transport closes itself.)
        """
        peer = self._peer(end)
        clean = getattr(end.transport, "closeNotifyReceived", True)
        if clean:
            peer.transport.loseWriteConnection()  # type: ignore[union-attr]
        else:
            peer.transport.loseWriteConnection(closeNotify=False)  # type: ignore[union-attr]
        peer.writeEnded = True
        for each in (end, peer):
            if each.readEnded and each.writeEnded and not getattr(each.transport, "closesWhenBothEnd", False):
                each.transport.loseConnection()  # type: ignore[union-attr]

    def endLost(self, end: RelayEnd, reason: Failure) -> None:
        self._lost.add(end.side)
        peer = self._peer(end).transport
        if peer is not None and self._peer(end).side not in self._lost:
            if isinstance(reason.value, ConnectionDone):
                peer.loseConnection()
            else:
                lost = f"{end.side} connection lost: {reason.getErrorMessage()}"
                if end.writeEnded:
                    # Everything bound for it was sent and ended: a client
                    # that closes with our close_notify unread resets, and
                    # nothing was lost.
                    self.note = self.note or f"{lost} (after its direction ended)"
                elif self.error is None:
                    self.error = lost
                peer.abortConnection()  # type: ignore[attr-defined]
        if len(self._lost) == 2:
            self._stopIdle()
            for observer in self._observers:
                observer.closed()
            if self._onDone is not None:
                self._onDone(self)

    def _idleCheck(self) -> None:
        self._idleCall = None
        remaining = self._lastActivity + self._idleTimeout - self._clock.seconds()
        if remaining > 0:
            self._idleCall = self._clock.callLater(remaining, self._idleCheck)
            return
        self.idled = True
        for end in (self.device, self.origin):
            if end.transport is not None:
                end.transport.loseConnection()

    def _stopIdle(self) -> None:
        if self._idleCall is not None and self._idleCall.active():
            self._idleCall.cancel()
        self._idleCall = None
