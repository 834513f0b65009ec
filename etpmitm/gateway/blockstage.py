"""Refusing a connection the way a person can read: a block page, or an alert.

HTTP devices get a leaf that their browser trusts (or, for an untrusted
origin under ``untrusted = "untrusted"``, one it does not) and a page that
names the host and the reason; no byte of origin content is involved.
Devices that speak something else get a TLS alert before any handshake.
"""

from __future__ import annotations

from OpenSSL import SSL
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from etpmitm.blockpage import ALERT_ACCESS_DENIED, BlockPageH2, BlockPageHTTP1, BlockResponse, responder_for, tls_alert
from etpmitm.clienthello import ClientHello
from etpmitm.gateway.asking import requestedNames
from etpmitm.gateway.devicetls import serveDevice
from etpmitm.gateway.intake import Intake

Responder = BlockPageHTTP1 | BlockPageH2


def blockALPN(hello: ClientHello) -> tuple[bool, bytes | None]:
    """Whether a page can be served, and the ALPN protocol to select for it."""
    if not hello.alpn:
        return True, None
    for protocol in hello.alpn:  # the device's order of preference
        if protocol in (b"h2", b"http/1.1"):
            return True, protocol
    return False, None


@implementer(IHandshakeListener)
class BlockPageEnd(Protocol):
    """Speaks the block page over the device's TLS connection, then closes."""

    def __init__(self, intake: Intake, responder: Responder, alpn: bytes | None) -> None:
        self._intake = intake
        self._responder = responder
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

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._intake.finish()


def serveBlockPage(
    intake: Intake, hello: ClientHello, context: SSL.Context, response: BlockResponse
) -> None:
    """Serve ``response`` on the device's connection, or an alert if it speaks no HTTP.

    The intake's handshake timer keeps running: a device that never asks for
    the page is cut off by it.
    """
    servable, alpn = blockALPN(hello)
    responder = responder_for(alpn, response) if servable else None
    if responder is None:
        refuseWithAlert(intake, f"{intake.record.reason}; device offered no HTTP protocol")
        return
    serveDevice(intake, context, BlockPageEnd(intake, responder, alpn))


def refuseWithAlert(intake: Intake, reason: str) -> None:
    """Send a plaintext access_denied alert (no handshake) and close."""
    record = intake.record
    if record.outcome == "open":
        record.refused(reason)
    record.reason = reason
    intake.tcp.write(tls_alert(ALERT_ACCESS_DENIED))
    intake.close()


class PolicyBlock:
    """A ``block`` rule: a trusted leaf for the name asked for, and a 403 page."""

    def __init__(self, intake: Intake, hello: ClientHello, reason: str) -> None:
        self._intake = intake
        self._hello = hello
        self._reason = reason

    def start(self) -> None:
        intake, hello = self._intake, self._hello
        intake.record.action = "block"
        intake.record.refused(self._reason)
        host, names = requestedNames(intake, hello)
        context = intake.settings.leaves.contextFor(names, None)
        response = BlockResponse.render(host, self._reason, "policy", status=403)
        serveBlockPage(intake, hello, context, response)

    def abort(self) -> None:
        pass


class Refusal:
    """Close the connection at once (FIN), with the reason in the audit log."""

    def __init__(self, intake: Intake, reason: str) -> None:
        self._intake = intake
        self._reason = reason

    def start(self) -> None:
        self._intake.record.action = "close"
        self._intake.record.refused(self._reason)
        self._intake.close()

    def abort(self) -> None:
        pass
