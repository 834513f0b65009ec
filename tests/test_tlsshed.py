"""A relayed TLS connection keeps its memory BIOs small (``HalfCloseableTLS``):
it swaps them for fresh ones once its handshake is done
(:func:`etpmitm.gateway._openssl.shed`), and feeds and drains them piece by
piece (``decryptFed``, ``encryptAll``) so that a large read or write does not
grow them.
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

from etpmitm.gateway import _openssl
from etpmitm.gateway._openssl import PIECE
from etpmitm.gateway._twisted import HalfCloseableTLS, halfCloseableTLS
from etpmitm.tlsconfig import hardened_context
from tests.memnet import MemoryTCP, Net
from tests.memorytls import self_signed_context
from tests.test_openssl_internals import CountingLib


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
        self.context = self_signed_context()

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

    def test_aLargeWriteAndReadInPieces(self) -> None:
        self.serverTCP.bufferSize = 2**20  # the whole burst in one read
        lib = CountingLib(_openssl._lib)
        self.patch(_openssl, "_lib", lib)
        body = bytes(range(256)) * (2**18 // 256 + 100)
        self.client.write(body)
        self.net.flush()
        self.assertEqual(b"".join(self.serverApp.received), body)
        self.assertEqual(len(self.serverApp.received), 1)  # one read, passed on at once
        self.assertTrue(0 < lib.mostWritten <= PIECE, lib.mostWritten)  # fed piece by piece
        # Both directions still work, and end cleanly.
        self.server.write(b"answer")
        self.client.loseWriteConnection()
        self.net.flush()
        self.assertEqual(b"".join(self.clientApp.received), b"answer")
        self.assertTrue(self.serverApp.ended)
        self.assertTrue(self.server.closeNotifyReceived)
