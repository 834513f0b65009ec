"""Relay ends that first complete a TLS handshake."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener, IProtocol, IProtocolFactory
from twisted.internet.protocol import Factory, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from etpmitm.gateway.relay import RelayEnd


@implementer(IHandshakeListener)
class TLSEnd(RelayEnd):
    """A relay end inside a TLS transport; ``handshake`` fires with itself.

    Once the handshake is done it stops reading until the relay starts, so
    nothing piles up in memory meanwhile.
    """

    def __init__(self, side: str, alpn: bytes | None = None) -> None:
        super().__init__(side)
        self.alpn = alpn  # device side: the protocol to select (the origin's choice)
        self.handshake: Deferred[TLSEnd] = Deferred(self._cancelHandshake)
        self.closed: Deferred[None] = Deferred()

    def _cancelHandshake(self, _: Deferred[TLSEnd]) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def handshakeCompleted(self) -> None:
        if self.relay is None:
            self.transport.pauseProducing()  # type: ignore[union-attr]
        self.handshake.callback(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.handshake.called:
            self.handshake.errback(reason)
        self.closed.callback(None)
        super().connectionLost(reason)


class OneProtocol(Factory):
    """A factory for exactly one, already built, protocol."""

    noisy = False

    def __init__(self, protocol: IProtocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: object) -> IProtocol:  # type: ignore[override]
        return self._protocol


def oneProtocol(protocol: IProtocol) -> IProtocolFactory:
    return OneProtocol(protocol)
