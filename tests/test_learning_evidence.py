"""A bypass is learned only from a device that could have seen the gateway's certificate.

The intake stops reading once it has the ClientHello, so (as with Twisted's
sockets) the device's FIN or reset waits unread while the gateway deals with
the origin: the gateway's end here ``holdsEndsWhilePaused``.  A device that
left before the certificate was sent teaches nothing; one that rejects it
(an alert) or hangs up once it arrives still counts.
"""

from __future__ import annotations

import select
import socket
import struct
from typing import Any

from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SynchronousTestCase

from etpmitm.gateway.intake import peerHungUp
from tests.corelab import CoreTestCase, Peer
from tests.hellos import python_client_hello


class _HelloThenHangUpOnReply(Protocol):
    """A raw device: sends a ClientHello, and closes once anything comes back."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(python_client_hello("origin.test", ["http/1.1"]))

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.loseConnection()


class LeftBeforeTheCertificateTests(CoreTestCase):
    def connectHeldDevice(self, **kwargs: Any) -> Peer:
        device = self.connectDevice(**kwargs)
        self.deviceSocket.holdsEndsWhilePaused = True
        return device

    def assertNothingLearned(self) -> None:
        self.assertEqual(self.policy.learned.pending, 0)
        self.assertEqual([e for e in self.events if "learned bypass" in str(e.get("log_format", ""))], [])

    def test_closedWhileTheGatewayConnected(self) -> None:
        device = self.connectHeldDevice()
        device.tcp.loseConnection()
        self.net.flush()
        self.acceptTLS()
        self.assertDone("intercept", "error", "client closed while the gateway was connecting to the origin")
        self.assertEqual(self.deviceSocket.written, 0, "no certificate for a device that has left")
        self.assertNothingLearned()

    def test_resetWhileTheGatewayConnected(self) -> None:
        device = self.connectHeldDevice()
        device.tcp.abortConnection()
        self.net.flush()
        self.acceptTLS()
        self.assertDone("intercept", "error", "client closed while the gateway was connecting to the origin")
        self.assertEqual(self.deviceSocket.written, 0)
        self.assertNothingLearned()


class CertificateRejectedTests(CoreTestCase):
    """The genuine cases, with the ends held as Twisted holds them."""

    def test_alertStillCounts(self) -> None:
        device = self.connectDevice(trusted=False)
        self.deviceSocket.holdsEndsWhilePaused = True
        self.acceptTLS()
        self.assertFalse(device.handshook)
        event = self.assertDone("intercept", "error", "device TLS handshake failed")
        self.assertIn("unknown ca", event["reason"])
        self.assertEqual(self.policy.learned.pending, 1)

    def test_hangUpOnTheCertificateStillCounts(self) -> None:
        self.connectDevice(device=_HelloThenHangUpOnReply())
        self.deviceSocket.holdsEndsWhilePaused = True
        self.acceptTLS()
        self.assertGreater(self.deviceSocket.written, 0)
        self.assertDone("intercept", "error", "device TLS handshake failed")
        self.assertEqual(self.policy.learned.pending, 1)


class _Socket:
    """An ITCPTransport as far as :func:`peerHungUp` uses one."""

    def __init__(self, skt: socket.socket) -> None:
        self._skt = skt

    def getHandle(self) -> socket.socket:
        return self._skt


class PeerHungUpTests(SynchronousTestCase):
    """The peek, on real loopback sockets."""

    def setUp(self) -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        self.client = socket.create_connection(listener.getsockname(), timeout=5)
        self.addCleanup(self.client.close)
        server, _ = listener.accept()
        self.addCleanup(server.close)
        server.settimeout(5)
        self.server = server
        self.transport: Any = _Socket(server)

    def waitForInput(self) -> None:
        """Until data, a FIN or a reset waits on the server's socket (nothing consumed)."""
        poller = select.poll()
        poller.register(self.server, select.POLLIN | select.POLLERR | select.POLLHUP)
        self.assertNotEqual(poller.poll(5000), [], "nothing arrived")

    def test_openAndSilent(self) -> None:
        self.assertFalse(peerHungUp(self.transport))

    def test_sentMoreAndStillOpen(self) -> None:
        self.client.sendall(b"x")
        self.waitForInput()
        self.assertFalse(peerHungUp(self.transport))
        self.assertEqual(self.server.recv(1), b"x", "the peek consumed nothing")

    def test_closed(self) -> None:
        self.client.close()
        self.waitForInput()
        self.assertTrue(peerHungUp(self.transport))

    def test_reset(self) -> None:
        self.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.client.close()
        self.waitForInput()
        self.assertTrue(peerHungUp(self.transport))
