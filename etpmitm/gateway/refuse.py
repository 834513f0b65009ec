"""Refusing a connection the way a person can read: a block page, or an alert.

HTTP devices get a leaf that their browser trusts (or, for an untrusted
origin under ``untrusted = "untrusted"``, one it does not) and a page that
names the host and the reason; no byte of origin content is involved.
Devices that speak something else get a TLS alert before any handshake.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from etpmitm.blockpage import ALERT_ACCESS_DENIED, BlockPageH2, BlockPageHTTP1, BlockResponse, responder_for, tls_alert
from etpmitm.clienthello import ClientHello

Responder = BlockPageHTTP1 | BlockPageH2

ACCESS_DENIED = tls_alert(ALERT_ACCESS_DENIED)
"""A plaintext access_denied alert, sent instead of a handshake."""


def blockALPN(hello: ClientHello) -> tuple[bool, bytes | None]:
    """Whether a page can be served, and the ALPN protocol to select for it."""
    if not hello.alpn:
        return True, None
    for protocol in hello.alpn:  # the device's order of preference
        if protocol in (b"h2", b"http/1.1"):
            return True, protocol
    return False, None


@implementer(IHandshakeListener)
class BlockPageServer(Protocol):
    """Speaks the block page over the device's TLS connection, then closes."""

    def __init__(
        self, responder: Responder, alpn: bytes | None, finished: Callable[[], None], lost: Callable[[Failure], None]
    ) -> None:
        self._responder = responder
        self._finished = finished
        self._lost = lost
        self.alpn = alpn  # read by the device context's ALPN callback

    def handshakeCompleted(self) -> None:
        self._send(self._responder.initiate())

    def dataReceived(self, data: bytes) -> None:
        self._send(self._responder.receive(data))

    def _send(self, data: bytes) -> None:
        assert self.transport is not None
        if data:
            self.transport.write(data)
        if self._responder.done:
            self.transport.loseConnection()
            self._finished()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost(reason)


def blockPageServer(
    hello: ClientHello, response: BlockResponse, finished: Callable[[], None], lost: Callable[[Failure], None]
) -> BlockPageServer | None:
    """The protocol that serves ``response`` to this device, or None if it speaks no HTTP.

    It calls ``finished`` once the page is sent and it has begun to close,
    and ``lost`` when the device's connection is gone.
    """
    servable, alpn = blockALPN(hello)
    responder = responder_for(alpn, response) if servable else None
    if responder is None:
        return None
    return BlockPageServer(responder, alpn, finished, lost)
