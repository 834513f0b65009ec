"""The protocol on each accepted, redirected device socket.

It buffers the ClientHello and tells its :class:`~.connection.Connection`
what it read.  When the connection hands the socket to the next protocol
(device TLS, a splice's side, a block page), the intake replays the bytes it
buffered into it and from then on only passes events through.
"""

from __future__ import annotations

import socket
from typing import Callable, cast

from twisted.internet.interfaces import IHalfCloseableProtocol, IProtocol, IPushProducer, ISystemHandle, ITCPTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from etpmitm import metrics
from etpmitm.addresses import IPAddress, unmap
from etpmitm.admission import RateLimitedLog, refusal_kind
from etpmitm.clienthello import ClientHelloParser, NeedMore
from etpmitm.gateway.connection import Connection
from etpmitm.gateway.origin import tuneRelaySocket
from etpmitm.gateway.proxyheader import ProxyHeader
from etpmitm.gateway.settings import GatewaySettings

log = Logger()
_SPENT = ClientHelloParser()


@implementer(IHalfCloseableProtocol)
class Intake(Protocol):
    """Peek at the first bytes, then become a pass-through."""

    def __init__(self, settings: GatewaySettings, release: Callable[[], None] = lambda: None,
                 proxied: ProxyHeader | None = None) -> None:
        self.settings = settings
        self._release = release
        self.proxied = proxied
        """The balancer's PROXY header, on a ``haproxy:`` listener (see :mod:`.proxied`)."""
        self._parser = ClientHelloParser()
        self._judged = False
        self._late: list[bytes] = []  # bytes that came after the verdict, for the replay
        self._next: IProtocol | None = None
        self.connection: Connection | None = None

    @property
    def tcp(self) -> ITCPTransport:
        return cast(ITCPTransport, self.transport)

    @property
    def bufferedSize(self) -> int:
        return len(self._parser.buffered)

    def connectionMade(self) -> None:
        tuneRelaySocket(self.transport, self.settings.relayBuffer)
        self.connection = Connection(self.settings, self)
        self.connection.accepted()

    def dataReceived(self, data: bytes) -> None:
        if self._next is not None:
            self._next.dataReceived(data)
            return
        if self._judged:
            self._late.append(data)
            return
        result = self._parser.feed(data)
        if isinstance(result, NeedMore):
            return
        self._judged = True
        cast(IPushProducer, self.transport).pauseProducing()
        assert self.connection is not None
        self.connection.helloRead(result)

    def handOver(self, protocol: IProtocol) -> None:
        """Give the socket to ``protocol``, replaying what was buffered."""
        self._next = protocol
        protocol.makeConnection(self.tcp)
        buffered = self._parser.buffered + b"".join(self._late)
        self._late = []
        self._parser = _SPENT  # its copy of the hello is not needed any more
        if buffered:
            protocol.dataReceived(buffered)
        cast(IPushProducer, self.transport).resumeProducing()

    def hungUp(self) -> bool:
        """Whether the device's FIN or reset already waits, unread, on the socket.

        The intake stops reading once it has the ClientHello, so a device that
        leaves while the gateway deals with the origin is heard of only when
        reading resumes, after the handover: a peek tells before.
        """
        return peerHungUp(self.tcp)

    def readConnectionLost(self) -> None:
        if self._next is None:
            assert self.connection is not None
            self.connection.deviceReadEnded()
            return
        halfCloseable = IHalfCloseableProtocol(self._next, None)
        if halfCloseable is not None:
            halfCloseable.readConnectionLost()
        else:
            self.tcp.loseConnection()

    def writeConnectionLost(self) -> None:
        halfCloseable = IHalfCloseableProtocol(self._next, None)
        if halfCloseable is not None:
            halfCloseable.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._release()
        if self._next is not None:
            self._next.connectionLost(reason)
        elif self.connection is not None:
            self.connection.deviceLost(reason)


def peerHungUp(tcp: ITCPTransport) -> bool:
    """Whether the peer's FIN or reset waits first, unread, in ``tcp``'s socket
    (a non-blocking peek: nothing is consumed).  No socket, no verdict: False."""
    try:
        handle = cast(socket.socket, cast(ISystemHandle, tcp).getHandle())
    except (AttributeError, NotImplementedError):
        return False
    try:
        return handle.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False  # still open, nothing more sent
    except ConnectionError:
        return True  # reset
    except OSError:
        return False  # no verdict: go on as before


class Refused(Protocol):
    """A connection past an admission limit: reset at once, before any work."""

    def connectionMade(self) -> None:
        self.transport.abortConnection()  # type: ignore[union-attr]


class IntakeFactory(Factory):
    """Builds an :class:`Intake` per accepted connection, within the admission limits.

    A connection past a limit gets no audit event of its own (a flood would
    flood the log): refusals are logged at most once per interval and reason
    kind, with the count of those not logged.
    """

    noisy = False

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.refusals = RateLimitedLog()

    def buildProtocol(self, addr: object) -> Intake | Refused:
        return self.admit(lambda: unmap(addr.host))  # type: ignore[attr-defined]

    def admit(self, client: Callable[[], IPAddress], proxied: ProxyHeader | None = None) -> Intake | Refused:
        """An :class:`Intake` for a connection from ``client()``, or :class:`Refused` past a limit."""
        admission = self.settings.admission
        if admission is None:
            intake = Intake(self.settings, proxied=proxied)
        else:
            address = client()
            now = self.settings.clock.seconds()
            refusal = admission.admit(address, now)
            if refusal is not None:
                self._logRefusal(refusal, now)
                return Refused()
            intake = Intake(self.settings, lambda: admission.release(address), proxied)
        intake.factory = self
        return intake

    def _logRefusal(self, reason: str, now: float) -> None:
        kind = refusal_kind(reason)
        metrics.current.admissionRefused(kind)
        show, suppressed = self.refusals.check(kind, now)
        if show:
            more = f" ({suppressed} more refused for the same kind of limit since the last line)" if suppressed else ""
            log.warn("refused a connection: {reason}{more}", reason=reason, more=more)
