"""writeNow and holding, on real loopback TCP connections."""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.tcp import Connection
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from etpmitm.gateway._twisted import holding, writeNow


class Accepted(Protocol):
    def __init__(self, connected: Deferred[Accepted]) -> None:
        self._connected = connected

    def connectionMade(self) -> None:
        self._connected.callback(self)


class WriteNowTests(TestCase):
    @inlineCallbacks
    def connect(self) -> object:
        """A raw client socket and the Twisted transport of its server end."""
        connected: Deferred[Accepted] = Deferred()
        port = reactor.listenTCP(0, Factory.forProtocol(lambda: Accepted(connected)), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(client.close)
        accepted = yield connected
        transport = accepted.transport
        self.addCleanup(transport.abortConnection)
        assert isinstance(transport, Connection)
        return client, transport

    def recvNow(self, client: socket.socket) -> bytes:
        """What the client can read without waiting for the reactor."""
        client.settimeout(2)
        return client.recv(65536)

    @inlineCallbacks
    def test_sentBeforeTheReactorTurns(self) -> None:
        client, transport = yield self.connect()
        writeNow(transport, b"hello")
        self.assertEqual(self.recvNow(client), b"hello")
        self.assertEqual(transport._tempDataLen, 0)
        self.assertNotIn(transport, reactor.getWriters())  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_queuedBehindTwistedsBuffer(self) -> None:
        """With bytes already in Twisted's queue, writeNow goes behind them."""
        client, transport = yield self.connect()
        transport.write(b"first ")
        writeNow(transport, b"second")
        client.setblocking(False)
        with self.assertRaises(BlockingIOError):
            client.recv(100)
        received = b""
        while len(received) < 12:
            yield deferLater(0.01)
            try:
                received += client.recv(100)
            except BlockingIOError:
                pass
        self.assertEqual(received, b"first second")

    @inlineCallbacks
    def test_holdingSendsOnceAtTheEnd(self) -> None:
        client, transport = yield self.connect()
        client.setblocking(False)
        seen: list[bytes] = []

        def handle(parts: list[bytes]) -> None:
            for part in parts:
                writeNow(transport, part)
            try:
                seen.append(client.recv(100))
            except BlockingIOError:
                seen.append(b"")

        holding(handle, [b"response", b"+close_notify"])
        self.assertEqual(seen, [b""])
        self.assertEqual(self.recvNow(client), b"response+close_notify")

    @inlineCallbacks
    def test_partialSendQueuesTheRest(self) -> None:
        """More than the kernel takes: the rest waits in Twisted's queue, in order."""
        client, transport = yield self.connect()
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        data = bytes(range(256)) * (2 * 1024 * 4)  # 2 MiB
        writeNow(transport, data)
        self.assertGreater(transport._tempDataLen, 0)
        client.setblocking(False)
        received = bytearray()
        while len(received) < len(data):
            yield deferLater(0.001)
            try:
                while True:
                    chunk = client.recv(1 << 20)
                    if not chunk:
                        break
                    received += chunk
            except BlockingIOError:
                pass
        self.assertEqual(bytes(received), data)

    def test_otherTransportsWriteAsUsual(self) -> None:
        transport = StringTransport()
        writeNow(transport, b"x")
        holding(lambda data: writeNow(transport, data), b"y")
        self.assertEqual(transport.value(), b"xy")


def deferLater(seconds: float) -> Deferred[None]:
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds)  # type: ignore[arg-type]
