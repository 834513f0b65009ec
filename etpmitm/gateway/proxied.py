"""Listeners behind a load balancer: the PROXY header before the intake.

``--listen haproxy:tcp:8443`` (any ``tcp``/``tcp6`` description after
``haproxy:``) takes connections from a balancer that sends a PROXY protocol
header (v1 or v2) first.  :class:`HeaderIntake` reads it within the
handshake timeout, then admits the connection by the *device's* address
(the header's source) and hands the socket to an ordinary
:class:`~.intake.Intake`, which takes the original destination from the
header instead of ``SO_ORIGINAL_DST``.  A connection whose header is
missing, malformed, truncated, slow, or names no device (v1 UNKNOWN) is
reset, and audited as refused with the reason.  The balancer's health checks
are closed without an audit event: a v2 LOCAL header (what HAProxy sends on
each check of a ``send-proxy-v2`` server), or a connection that closes
without sending a byte (a plain TCP check).

Twisted's own ``haproxy:`` endpoint wrapper is not used: it closes a bad
connection silently, waits for a header for ever, and sees the balancer as
the client when the admission limits are checked.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, IProtocol, ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from etpmitm.audit import ConnectionRecord
from etpmitm.gateway.connection import State
from etpmitm.gateway.intake import Intake, IntakeFactory
from etpmitm.gateway.proxyheader import Local, ProxyHeaderError, ProxyHeaderParser

PREFIX = "haproxy:"


def unwrapProxied(description: str) -> tuple[bool, str]:
    """Whether a listen description takes PROXY headers, and the description under the prefix."""
    if description[: len(PREFIX)].lower() == PREFIX:
        return True, description[len(PREFIX):]
    return False, description


@implementer(IHalfCloseableProtocol)
class HeaderIntake(Protocol):
    """Reads the PROXY header, then passes every event to the intake it made."""

    def __init__(self, factory: ProxiedIntakeFactory) -> None:
        self._factory = factory
        self._parser = ProxyHeaderParser()
        self._next: IProtocol | None = None
        self._timer: IDelayedCall | None = None
        self._started = 0.0
        self._ended = False

    def connectionMade(self) -> None:
        settings = self._factory.settings
        self._started = settings.clock.seconds()
        self._timer = settings.clock.callLater(settings.handshakeTimeout, self._timedOut)

    def dataReceived(self, data: bytes) -> None:
        if self._next is not None:
            self._next.dataReceived(data)
            return
        if self._ended:
            return
        try:
            found = self._parser.feed(data)
        except ProxyHeaderError as e:
            self._refuse(str(e))
            return
        if found is None:
            return
        header, rest = found
        self._cancelTimer()
        if isinstance(header, Local):  # a health check: it connected, that is all it asks
            self._ended = True
            self._tcp.loseConnection()
            return
        intake = self._next = self._factory.admit(lambda: header.source.ip, header)
        intake.makeConnection(self.transport)
        # The bytes after the header, only for an intake still reading (not
        # refused past a limit, nor from its header alone, such as a loop).
        if rest and isinstance(intake, Intake) and intake.connection is not None \
                and intake.connection.state is State.READING_HELLO:
            intake.dataReceived(rest)

    def readConnectionLost(self) -> None:
        if self._next is not None:
            halfCloseable = IHalfCloseableProtocol(self._next, None)
            if halfCloseable is not None:
                halfCloseable.readConnectionLost()
            else:
                self._tcp.loseConnection()
            return
        if not self._ended:
            self._ended = True
            self._cancelTimer()
            if self._parser.buffered:
                self._audit(f"closed before a complete PROXY header ({self._parser.buffered} bytes)")
            self._tcp.loseConnection()

    def writeConnectionLost(self) -> None:
        halfCloseable = IHalfCloseableProtocol(self._next, None)
        if halfCloseable is not None:
            halfCloseable.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancelTimer()
        if self._next is not None:
            self._next.connectionLost(reason)
        elif not self._ended:
            self._ended = True
            if self._parser.buffered:
                self._audit(f"went away before a complete PROXY header: {reason.getErrorMessage()}")

    # -- refusing ------------------------------------------------------------------

    @property
    def _tcp(self) -> ITCPTransport:
        return cast(ITCPTransport, self.transport)

    def _timedOut(self) -> None:
        self._timer = None
        self._refuse(f"no complete PROXY header within {self._factory.settings.handshakeTimeout:g}s "
                     f"({self._parser.buffered} bytes)")

    def _refuse(self, reason: str) -> None:
        self._ended = True
        self._cancelTimer()
        self._audit(reason)
        self._tcp.abortConnection()

    def _audit(self, reason: str) -> None:
        """The one audit event of a connection that never reached an intake."""
        peer = self._tcp.getPeer()
        record = ConnectionRecord(client=f"{peer.host}:{peer.port}", destination="?", started=self._started)
        record.action = "refuse"
        record.refused(f"bad PROXY header: {reason}")
        record.emit(self._factory.settings.clock.seconds())

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class ProxiedIntakeFactory(IntakeFactory):
    """An :class:`~.intake.IntakeFactory` for a ``haproxy:`` listener:
    admission waits for the header, which names the device."""

    def buildProtocol(self, addr: object) -> HeaderIntake:  # type: ignore[override]
        protocol = HeaderIntake(self)
        protocol.factory = self
        return protocol
