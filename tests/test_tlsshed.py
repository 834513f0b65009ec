"""A relayed TLS connection gives its memory BIOs' grown buffers back
(``HalfCloseableTLS`` with :func:`etpmitm.gateway._openssl.shed`): once its
handshake is done, and after a read or a write of ``SHED_AFTER`` bytes or
more, not after each small one.
"""

from __future__ import annotations

from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from etpmitm.gateway._openssl import SHED_AFTER
from etpmitm.gateway._twisted import HalfCloseableTLS, halfCloseableTLS
from etpmitm.tlsconfig import hardened_context
from tests.memnet import MemoryTCP, Net
from tests.test_openssl_internals import _serverContext


@implementer(IHalfCloseableProtocol)
class Collect(Protocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.ended = False

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def readConnectionLost(self) -> None:
        self.ended = True

    def writeConnectionLost(self) -> None:
        pass


@implementer(IOpenSSLServerConnectionCreator)
class ServerCreator:
    def __init__(self) -> None:
        self.context = _serverContext()

    def serverConnectionForTLS(self, tls: object) -> SSL.Connection:
        return SSL.Connection(self.context, None)


@implementer(IOpenSSLClientConnectionCreator)
class ClientCreator:
    def clientConnectionForTLS(self, tls: object) -> SSL.Connection:
        connection = SSL.Connection(hardened_context(), None)
        connection.set_connect_state()
        return connection


def bios(tls: HalfCloseableTLS) -> tuple[object, object]:
    return (tls._tlsConnection._into_ssl, tls._tlsConnection._from_ssl)


class ShedTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.net = Net()
        self.serverApp, self.clientApp = Collect(), Collect()
        self.server = halfCloseableTLS(ServerCreator(), False, self.serverApp)
        self.client = halfCloseableTLS(ClientCreator(), True, self.clientApp)
        self.serverTCP: MemoryTCP
        self.serverTCP, self.clientTCP = self.net.wire(
            self.server, self.client, IPv4Address("TCP", "10.0.0.1", 443), IPv4Address("TCP", "10.0.0.2", 50000))
        self.before = {"server": bios(self.server), "client": bios(self.client)}
        self.net.flush()
        self.assertTrue(self.server._handshakeDone and self.client._handshakeDone)

    def test_afterTheHandshake(self) -> None:
        for name, tls in (("server", self.server), ("client", self.client)):
            now = bios(tls)
            self.assertNotEqual(now[0], self.before[name][0], name)
            self.assertNotEqual(now[1], self.before[name][1], name)

    def test_notAfterASmallExchange(self) -> None:
        idle = {"server": bios(self.server), "client": bios(self.client)}
        self.client.write(b"GET / HTTP/1.1\r\n\r\n")
        self.net.flush()
        self.server.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.net.flush()
        self.assertEqual(b"".join(self.serverApp.received), b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(b"".join(self.clientApp.received), b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertEqual({"server": bios(self.server), "client": bios(self.client)}, idle)

    def test_afterALargeWriteAndRead(self) -> None:
        self.serverTCP.bufferSize = 2**20  # the whole burst in one read
        idle = {"server": bios(self.server), "client": bios(self.client)}
        body = bytes(range(256)) * (SHED_AFTER // 256 + 100)
        self.client.write(body)
        self.assertNotEqual(bios(self.client)[1], idle["client"][1])  # written, then shed
        self.net.flush()
        self.assertEqual(b"".join(self.serverApp.received), body)
        self.assertNotEqual(bios(self.server)[0], idle["server"][0])  # read, then shed
        # Both directions still work, and end cleanly, after shedding.
        self.server.write(b"answer")
        self.client.loseWriteConnection()
        self.net.flush()
        self.assertEqual(b"".join(self.clientApp.received), b"answer")
        self.assertTrue(self.serverApp.ended)
        self.assertTrue(self.server.closeNotifyReceived)
