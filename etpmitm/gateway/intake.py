"""The protocol for each accepted, redirected device connection.

Intake reads the original destination, buffers the ClientHello under the
handshake timeout, then hands the connection to a *stage* (interception or
splice).  Once the stage is ready it switches the socket over to the
stage's protocol and replays the buffered bytes into it.
"""

from __future__ import annotations

from typing import Callable, Protocol as TypingProtocol, cast

from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IProtocol,
    IPushProducer,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from etpmitm.audit import ConnectionRecord
from etpmitm.clienthello import ClientHello, ClientHelloParser, NeedMore, NotTLS
from etpmitm.gateway.origdst import Destination, unmap
from etpmitm.gateway.relay import tuneRelaySocket
from etpmitm.gateway.settings import GatewaySettings

log = Logger()
_SPENT = ClientHelloParser()


class Stage(TypingProtocol):
    """What a connection is handed to once its first bytes are judged."""

    def start(self) -> None:
        ...

    def abort(self) -> None:
        """The device went away or timed out: drop whatever was opened."""


StageMaker = Callable[["Intake", ClientHello | None], Stage]


@implementer(IHalfCloseableProtocol)
class Intake(Protocol):
    """Peek, decide, then become a pass-through to the chosen stage."""

    def __init__(self, settings: GatewaySettings, decide: StageMaker) -> None:
        self.settings = settings
        self._decide = decide
        self._parser = ClientHelloParser()
        self._late: list[bytes] = []  # bytes that came after the verdict
        self._next: IProtocol | None = None
        self._stage: Stage | None = None
        self._timer: IDelayedCall | None = None
        self._done = False
        self.destination: Destination | None = None
        self.record: ConnectionRecord

    # -- set-up ------------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.tcp
        tuneRelaySocket(transport)
        peer, host = transport.getPeer(), transport.getHost()
        clock = self.settings.clock
        self.record = ConnectionRecord(
            client=f"{peer.host}:{peer.port}",
            destination="?",
            started=clock.seconds(),
        )
        try:
            dst = self.settings.originalDestination(transport)
        except OSError as e:
            self.refuse(f"not redirected: no original destination ({e.strerror})")
            return
        self.record.destination = str(dst)
        if dst.port == host.port and dst.ip == unmap(host.host):
            self.refuse("not redirected: addressed to the gateway's own listening address")
            return
        self.destination = dst
        self._timer = clock.callLater(self.settings.handshakeTimeout, self._timedOut)

    @property
    def tcp(self) -> ITCPTransport:
        return cast(ITCPTransport, self.transport)

    def _reading(self, on: bool) -> None:
        producer = cast(IPushProducer, self.transport)
        producer.resumeProducing() if on else producer.pauseProducing()

    # -- peeking -----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._next is not None:
            self._next.dataReceived(data)
            return
        if self._done:
            return
        if self._stage is not None:
            self._late.append(data)  # judged already; kept for the replay
            return
        result = self._parser.feed(data)
        if isinstance(result, NeedMore):
            return
        self._reading(False)
        if isinstance(result, NotTLS) and result.malformed:
            # Broken TLS is refused, never passed through uninspected.
            self.refuse(f"malformed ClientHello: {result.reason}")
        elif isinstance(result, NotTLS):
            self.record.reason = f"not TLS: {result.reason}"
            self._startStage(None)
        else:
            self.record.sni = result.sni
            self.record.alpn_offered = tuple(p.decode("latin-1") for p in result.alpn)
            self.record.ech = result.has_ech
            self._startStage(result)

    def _startStage(self, hello: ClientHello | None) -> None:
        try:
            self._stage = self._decide(self, hello)
            self._stage.start()
        except Exception:
            log.failure("etpmitm bug while starting a connection's stage")
            self.refuse("internal error (logged)")

    # -- hand-over ---------------------------------------------------------

    def switchTo(self, protocol: IProtocol) -> None:
        """Give the socket to ``protocol``, replaying what was buffered."""
        self._next = protocol
        protocol.makeConnection(self.tcp)
        buffered = self._parser.buffered + b"".join(self._late)
        self._late = []
        self._parser = _SPENT  # its copy of the hello is not needed any more
        if buffered:
            protocol.dataReceived(buffered)
        self._reading(True)

    def established(self) -> None:
        """The stage is up (handshakes done): the handshake timer stops."""
        self._cancelTimer()

    # -- endings -----------------------------------------------------------

    def refuse(self, reason: str) -> None:
        """End this connection now, with a logged reason."""
        self.record.fail(reason)
        if self.record.action == "pending":
            self.record.action = "refuse"
        self._cancelTimer()
        if self._stage is not None:
            self._stage.abort()
        if self._next is not None:
            cast(ITCPTransport, self._next).abortConnection()
        self.tcp.abortConnection()

    def close(self) -> None:
        """End this connection politely (FIN after pending writes)."""
        self._cancelTimer()
        if self._stage is not None:
            self._stage.abort()
        self.tcp.loseConnection()

    def _timedOut(self) -> None:
        self._timer = None
        stage = "ClientHello" if self._stage is None else "handshakes"
        self.refuse(f"handshake timeout: no complete {stage} within {self.settings.handshakeTimeout:g}s")

    def readConnectionLost(self) -> None:
        if self._next is not None:
            halfCloseable = IHalfCloseableProtocol(self._next, None)
            if halfCloseable is not None:
                halfCloseable.readConnectionLost()
            else:
                self.tcp.loseConnection()
            return
        size = len(self._parser.buffered)
        if self._stage is None:
            self.refuse(f"client closed before a complete ClientHello ({size} bytes)")
        else:
            self.refuse("client closed while the gateway was connecting to the origin")

    def writeConnectionLost(self) -> None:
        if self._next is not None:
            halfCloseable = IHalfCloseableProtocol(self._next, None)
            if halfCloseable is not None:
                halfCloseable.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancelTimer()
        if self._next is not None:
            self._next.connectionLost(reason)
            return
        if self._stage is not None:
            self._stage.abort()
        if not hasattr(self, "record"):
            return
        if self.record.outcome == "open":
            self.record.fail(f"client went away: {reason.getErrorMessage()}")
        self.finish()

    def finish(self) -> None:
        """Log the connection's audit event (once)."""
        self._done = True
        self.record.emit(self.settings.clock.seconds())

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class IntakeFactory(Factory):
    """Builds an :class:`Intake` per accepted connection."""

    noisy = False

    def __init__(self, settings: GatewaySettings, decide: StageMaker) -> None:
        self.settings = settings
        self.decide = decide

    def buildProtocol(self, addr: object) -> Intake:
        intake = Intake(self.settings, self.decide)
        intake.factory = self
        return intake
