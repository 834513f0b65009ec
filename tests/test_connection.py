"""The connection core in memory: every path ends in DONE with one audit event.

No root and no network: see :mod:`tests.corelab`.
"""

from __future__ import annotations

import ipaddress

import attrs
from OpenSSL import SSL
from twisted.internet.protocol import Protocol

from etpmitm.gateway.connection import CLOSE_GRACE, TRANSITIONS, State
from etpmitm.gateway.origdst import Destination
from etpmitm.gateway.origin import RELAY_BUFFER
from etpmitm.policy import parse_policy
from tests.corelab import ORIGIN, CoreTestCase, Peer
from tests.hellos import python_client_hello


class TransitionTableTests(CoreTestCase):
    def test_everyStateReachesDone(self) -> None:
        """The table has no dead end: from every state, DONE is reachable."""
        for start in State:
            seen, frontier = {start}, [start]
            while frontier:
                for nxt in TRANSITIONS[frontier.pop()]:
                    if nxt not in seen:
                        seen.add(nxt)
                        frontier.append(nxt)
            self.assertIn(State.DONE, seen, start)

    def test_illegalMoveIsABug(self) -> None:
        self.connectDevice()
        with self.assertRaises(AssertionError):
            self.connection._go(State.RELAYING)


class InterceptTests(CoreTestCase):
    def relaying(self, alpn: tuple[bytes, ...] = (b"http/1.1",)) -> tuple[Peer, Peer]:
        device = self.connectDevice(alpn=alpn)
        origin = self.acceptTLS(alpn=alpn)
        self.assertTrue(device.handshook)
        self.assertIs(self.connection.state, State.RELAYING)
        return device, origin

    def test_socketTunedForRelaying(self) -> None:
        self.connectDevice()
        self.assertTrue(self.deviceSocket.noDelay)
        self.assertEqual(self.deviceSocket.bufferSize, RELAY_BUFFER)

    def test_relayBufferIsASetting(self) -> None:
        self.settings = attrs.evolve(self.settings, relayBuffer=65536)
        self.connectDevice()
        self.acceptTLS()
        self.assertEqual({end.bufferSize for end in self.net.ends if end.host.port in (8443, 40000)}, {65536})

    def test_originFirst(self) -> None:
        """The device gets no byte until the origin's certificate is judged."""
        device = self.connectDevice()
        self.assertIs(self.connection.state, State.CONNECTING_ORIGIN)
        self.assertEqual(self.deviceSocket.written, 0)
        self.assertFalse(device.handshook)
        self.acceptTLS()
        self.assertTrue(device.handshook)
        self.assertGreater(self.deviceSocket.written, 0)

    def test_alpnMirrorsTheOrigin(self) -> None:
        device, _ = self.relaying(alpn=(b"h2", b"http/1.1"))
        self.assertEqual(device.tls.negotiatedProtocol, b"h2")

    def test_relayAndCloseNotifyBothWays(self) -> None:
        """Half-close: each direction ends on its own, with close_notify, and the bytes are counted."""
        device, origin = self.relaying()
        device.tls.write(b"GET / HTTP/1.1\r\n\r\n")
        device.tls.loseWriteConnection()
        self.net.flush()
        self.assertEqual(origin.received, b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual((origin.readEnded, origin.cleanEnd), (True, True))
        self.assertIs(self.connection.state, State.RELAYING)  # the other direction is still open
        origin.tls.write(b"HTTP/1.1 200 OK\r\n\r\nhello")
        origin.tls.loseWriteConnection()
        self.net.flush()
        self.assertEqual(device.received, b"HTTP/1.1 200 OK\r\n\r\nhello")
        self.assertEqual((device.readEnded, device.cleanEnd), (True, True))
        event = self.assertDone("intercept", "ok")
        self.assertEqual((event["bytes_up"], event["bytes_down"]), (18, 24))
        self.assertEqual(event["alpn"], "http/1.1")

    def test_originHalfClosesFirst(self) -> None:
        device, origin = self.relaying()
        origin.tls.write(b"banner")
        origin.tls.loseWriteConnection()
        self.net.flush()
        self.assertEqual((device.received, device.readEnded, device.cleanEnd), (b"banner", True, True))
        device.tls.write(b"still talking")
        self.net.flush()
        self.assertEqual(origin.received, b"still talking")
        device.tls.loseWriteConnection()
        self.net.flush()
        self.assertDone("intercept", "ok")

    def test_originTruncates(self) -> None:
        """A bare FIN from the origin reaches the device as a bare FIN, and is an error."""
        device, origin = self.relaying()
        origin.tls.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
        self.net.flush()
        origin.tcp.loseConnection()  # TCP FIN without close_notify
        self.net.flush()
        self.assertEqual((device.readEnded, device.cleanEnd), (True, False))
        device.tls.loseWriteConnection()
        self.net.flush()
        self.assertDone("intercept", "error", "truncated: the origin closed without close_notify")

    def test_deviceEndsWithoutCloseNotify(self) -> None:
        """A bare FIN from the device is mirrored to the origin as a bare FIN."""
        device, origin = self.relaying()
        device.tls.write(b"ping")
        self.net.flush()
        device.tcp.loseWriteConnection()
        self.net.flush()
        self.assertEqual((origin.received, origin.readEnded, origin.cleanEnd), (b"ping", True, False))
        origin.tls.loseWriteConnection()
        self.net.flush()
        self.assertDone("intercept", "ok")

    def test_originResetsMidResponse(self) -> None:
        device, origin = self.relaying()
        origin.tls.write(b"HTTP/1.1 200 OK\r\n\r\npart")
        self.net.flush()
        origin.tcp.abortConnection()
        self.net.flush()
        self.assertEqual(device.received, b"HTTP/1.1 200 OK\r\n\r\npart")
        self.assertIsNotNone(device.lostReason)
        self.assertTrue(self.deviceSocket.aborted)  # the reset is passed on
        self.assertDone("intercept", "error", "origin connection lost")

    def test_deviceResetsMidUpload(self) -> None:
        device, origin = self.relaying()
        device.tls.write(b"POST / HTTP/1.1\r\nContent-Length: 99\r\n\r\nabc")
        self.net.flush()
        device.tcp.abortConnection()
        self.net.flush()
        self.assertIsNotNone(origin.lostReason)
        self.assertDone("intercept", "error", "device connection lost")

    def test_idleTimeout(self) -> None:
        """Both sockets close, and one audit event says idle timeout."""
        self.settings = attrs.evolve(self.settings, idleTimeout=2.0)
        device, origin = self.relaying()
        device.tls.write(b"hi")
        self.net.flush()
        self.advance(1.5)
        self.assertIs(self.connection.state, State.RELAYING)  # activity at 0 s; idle only from 2 s
        self.advance(1.0)
        self.assertIs(self.connection.state, State.CLOSING)
        self.assertEqual((device.readEnded, device.cleanEnd, origin.readEnded, origin.cleanEnd), (True, True, True, True))
        device.tls.loseWriteConnection()  # both peers answer the close_notify, as TLS peers do
        origin.tls.loseWriteConnection()
        self.net.flush()
        self.assertDone("intercept", "ok", "idle timeout: no bytes for 2s")
        self.assertFalse(self.deviceSocket.aborted)  # closed politely: close_notify and FIN

    def test_idleTimeoutWhilePausedByBackPressure(self) -> None:
        """A device that stops reading stalls the relay; the idle timer still ends it, with resets after the grace."""
        self.settings = attrs.evolve(self.settings, idleTimeout=2.0)
        device, origin = self.relaying()
        device.tcp.pauseProducing()  # the device stops reading
        origin.tls.write(b"x" * (4 * RELAY_BUFFER))
        self.net.flush()
        self.assertTrue(origin.tcp.producerPaused or origin.tcp.other.paused, "back-pressure did not reach the origin")
        self.advance(2.1)
        self.assertIs(self.connection.state, State.CLOSING)  # the close waits on data the device will not read
        self.advance(CLOSE_GRACE)
        event = self.assertDone("intercept", "ok", "idle timeout")
        self.assertTrue(self.deviceSocket.aborted)
        self.assertLess(event["bytes_down"], 4 * RELAY_BUFFER)

    def test_handshakeTimeoutWaitingForTheOrigin(self) -> None:
        """An origin that accepts TCP but never finishes TLS is cut at the handshake timeout."""
        self.connectDevice()
        self.acceptPlain(Peer())  # speaks no TLS: the gateway's ClientHello goes unanswered
        self.assertIs(self.connection.state, State.CONNECTING_ORIGIN)
        self.advance(9.9)
        self.assertIs(self.connection.state, State.CONNECTING_ORIGIN)
        self.advance(0.2)
        self.assertDone("intercept", "error", "handshake timeout: no complete handshakes within 10s")
        self.assertTrue(self.deviceSocket.aborted)

    def test_handshakeTimeoutWaitingForTheDevice(self) -> None:
        """A device that sends its ClientHello and nothing more."""
        self.connectDevice(device=_SendsOnly(python_client_hello("origin.test", ["http/1.1"])))
        self.acceptTLS()
        self.assertIs(self.connection.state, State.HANDSHAKING_DEVICE)
        self.advance(10.1)
        self.assertDone("intercept", "error", "handshake timeout")

    def test_originConnectTimeout(self) -> None:
        self.connectDevice()
        self.timeOutOrigin()
        self.assertDone("intercept", "error", "origin connection timed out")

    def test_originRefuses(self) -> None:
        self.connectDevice()
        self.refuseOrigin()
        self.assertDone("intercept", "error", "origin refused the connection")

    def test_originResetsDuringHandshake(self) -> None:
        self.connectDevice()
        origin = Peer()
        self.acceptPlain(_ResetsOnData(origin))
        self.assertDone("intercept", "error", "origin reset the connection during the TLS handshake")

    def test_deviceRejectsCertificateWithAlert(self) -> None:
        """A pinning device's alert is an error, and counts towards learning a bypass."""
        device = self.connectDevice(trusted=False)
        self.acceptTLS()
        self.assertFalse(device.handshook)
        event = self.assertDone("intercept", "error", "device TLS handshake failed")
        self.assertIn("unknown ca", event["reason"])
        self.assertEqual(self.policy.learned.pending, 1)

    def test_deviceHangsUpOnTheCertificate(self) -> None:
        """A device that closes once the gateway's certificate arrives."""
        self.connectDevice(device=_HangsUpOnReply(python_client_hello("origin.test", ["http/1.1"])))
        self.acceptTLS()
        self.assertDone("intercept", "error", "device TLS handshake failed")
        self.assertEqual(self.policy.learned.pending, 1)

    def test_originAsksForClientCertificate(self) -> None:
        """mTLS: learned at once, and this very connection is spliced to a fresh TCP connection."""
        hello = python_client_hello("origin.test", ["http/1.1"])
        self.connectDevice(device=_SendsOnly(hello))

        def wantClientCertificate(context: SSL.Context) -> None:
            context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *args: True)

        self.acceptTLS(configure=wantClientCertificate)
        self.assertIs(self.connection.state, State.SPLICING)
        plain = self.acceptPlain()
        self.assertEqual(plain.received, hello)  # the device's own ClientHello, replayed
        key = self.connection._learnedKey()
        self.assertTrue(self.policy.learned.is_bypassed(key, self.connection.client, 0.0))
        self.assertTrue(self.policy.learned.is_bypassed(key, ipaddress.ip_address("10.9.9.9"), 0.0))  # for every device
        plain.transport.loseConnection()  # type: ignore[union-attr]
        self.net.flush()
        self.deviceSocket.other.loseConnection()
        self.net.flush()
        self.assertDone("splice", "ok", "bypassed: origin requests a client certificate")


class NoSNIBlockTests(CoreTestCase):
    policyText = '[[rule]]\nmatch = ["blocked.test"]\naction = "block"\n'

    def test_blockDecidedOnTheOriginsNames(self) -> None:
        """No SNI: the rule matches the certificate's names, read before the device sees anything."""
        device = self.connectDevice(sni=None)
        self.assertIs(self.connection.state, State.CONNECTING_ORIGIN)
        self.acceptTLS(names=("blocked.test",))
        self.assertIs(self.connection.state, State.REFUSING)
        self.assertTrue(device.handshook)
        device.tls.write(b"GET / HTTP/1.1\r\nHost: 192.0.2.10\r\n\r\n")
        self.net.flush()
        self.assertTrue(device.received.startswith(b"HTTP/1.1 403 "), device.received[:40])
        self.assertIn(b"blocked.test", device.received)
        self.assertIs(self.connection.state, State.CLOSING)  # page sent: close_notify, waiting for the device's
        device.tls.loseWriteConnection()
        self.net.flush()
        self.assertDone("block", "refused", "blocked by policy")

    def test_deviceThatNeverClosesAfterThePage(self) -> None:
        device = self.connectDevice(sni=None)
        self.acceptTLS(names=("blocked.test",))
        device.tls.write(b"GET / HTTP/1.1\r\nHost: 192.0.2.10\r\n\r\n")
        self.net.flush()
        self.advance(CLOSE_GRACE)
        self.assertDone("block", "refused", "blocked by policy")
        self.assertTrue(self.deviceSocket.aborted)


class SpliceTests(CoreTestCase):
    def test_notTLSIsSplicedAndIdles(self) -> None:
        """The idle timeout on a spliced connection is audited as an idle timeout."""
        self.settings = attrs.evolve(self.settings, idleTimeout=2.0)
        device = _SendsOnly(b"GET / HTTP/1.0\r\n\r\n")
        self.connectDevice(device=device)
        self.assertIs(self.connection.state, State.SPLICING)
        origin = self.acceptPlain(Peer(reply=b"HTTP/1.0 200 OK\r\n\r\n"))
        self.assertEqual(origin.received, b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(device.received, b"HTTP/1.0 200 OK\r\n\r\n")
        self.advance(2.1)
        event = self.assertDone("splice", "ok", "idle timeout")
        self.assertTrue(event["reason"].startswith("idle timeout"), event["reason"])
        self.assertIn("not TLS", event["reason"])

    def test_spliceFinBothWays(self) -> None:
        device = _SendsOnly(b"hello")
        self.connectDevice(device=device)
        origin = self.acceptPlain()
        device.transport.loseWriteConnection()  # type: ignore[union-attr]
        self.net.flush()
        self.assertTrue(origin.readEnded)
        origin.transport.write(b"bye")  # type: ignore[union-attr]
        origin.transport.loseWriteConnection()  # type: ignore[union-attr]
        self.net.flush()
        self.assertEqual(device.received, b"bye")
        self.assertDone("splice", "ok")

    def test_spliceOriginRefuses(self) -> None:
        self.connectDevice(device=_SendsOnly(b"hello"))
        self.refuseOrigin()
        self.assertDone("splice", "error", "origin refused the connection")


class IntakeEndingsTests(CoreTestCase):
    def test_truncatedHelloThenFIN(self) -> None:
        hello = python_client_hello()
        device = _SendsOnly(hello[:100])
        self.connectDevice(device=device)
        device.transport.loseWriteConnection()  # type: ignore[union-attr]
        self.net.flush()
        self.assertDone("refuse", "error", "client closed before a complete ClientHello (100 bytes)")

    def test_clientLeavesWhileConnecting(self) -> None:
        device = _SendsOnly(python_client_hello("origin.test"))
        self.connectDevice(device=device)
        device.transport.loseConnection()  # type: ignore[union-attr]
        self.net.flush()
        self.assertEqual(self.reactor.connectors[-1].stoppedConnecting, True)
        self.assertDone("intercept", "error", "client closed while the gateway was connecting to the origin")

    def test_slowClientTimesOut(self) -> None:
        self.connectDevice(device=_SendsOnly(python_client_hello()[:10]))
        self.advance(9.9)
        self.assertIs(self.connection.state, State.READING_HELLO)
        self.advance(0.2)
        self.assertDone("refuse", "error", "handshake timeout: no complete ClientHello within 10s")


class _SendsOnly(Protocol):
    """A raw device: sends ``data`` on connect and records what comes back."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.received = b""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class _HangsUpOnReply(_SendsOnly):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.loseConnection()


class _ResetsOnData(Protocol):
    """An origin that resets as soon as the gateway's ClientHello arrives."""

    def __init__(self, app: Peer) -> None:
        self.app = app

    def dataReceived(self, data: bytes) -> None:
        self.transport.abortConnection()  # type: ignore[union-attr]


class OwnAddressTests(CoreTestCase):
    def test_destinationIsTheGatewayItself(self) -> None:
        """A device that connects to the gateway's own address is refused, on any port."""
        self.settings = attrs.evolve(self.settings, originalDestination=lambda transport: Destination(ipaddress.ip_address("192.0.2.1"), 22))
        self.connectDevice()
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertDone("refuse", "error", "addressed to the gateway itself (192.0.2.1:22)")


class OriginEndsAfterTheDeviceTests(CoreTestCase):
    def test_bareFinAfterTheDeviceClosedIsNoError(self) -> None:
        """Many servers close without answering the device's close_notify: noted, not a truncation."""
        device = self.connectDevice()
        origin = self.acceptTLS()
        device.tls.write(b"GET / HTTP/1.1\r\n\r\n")
        self.net.flush()
        origin.tls.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        device.tls.loseWriteConnection()  # the device is done: close_notify and FIN
        self.net.flush()
        origin.tcp.loseConnection()  # and the origin just closes
        self.net.flush()
        self.assertEqual((device.readEnded, device.cleanEnd), (True, False))  # still mirrored as it came
        self.assertDone("intercept", "ok", "the origin closed without close_notify after the device had ended")


class LearnedNeverOverridesBlockTests(CoreTestCase):
    policyText = '[[rule]]\nmatch = ["origin.test"]\naction = "block"\n'

    def test_blockRuleWinsOverALearnedBypass(self) -> None:
        """A name a block rule matches is never spliced because a bypass was learned for it."""
        from etpmitm.learning import bypass_key

        key = bypass_key("origin.test", ORIGIN.ip, ORIGIN.port)
        self.assertIsNotNone(self.policy.learned.learn(key, self.reactor.seconds(), "origin requests a client certificate"))
        device = self.connectDevice()
        self.assertEqual(self.reactor.tcpClients, [])  # no origin connection, no splice
        self.assertIs(self.connection.state, State.REFUSING)
        self.assertTrue(device.handshook)
        device.tls.write(b"GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        self.net.flush()
        self.assertTrue(device.received.startswith(b"HTTP/1.1 403 "))

    def test_learnedBypassSplicesOnlyTheClientThatTaughtIt(self) -> None:
        """Per-client by default: another device's failures do not splice this one."""
        self.policy.current = parse_policy("")  # no block rule here
        key = bypass_key_for_origin()
        other = ipaddress.ip_address("10.0.0.99")
        for _ in range(3):
            self.policy.learned.record_failure(key, other, self.reactor.seconds(), "unknown ca")
        self.assertTrue(self.policy.learned.is_bypassed(key, other, self.reactor.seconds()))
        self.connectDevice()
        self.assertIs(self.connection.state, State.CONNECTING_ORIGIN)  # intercepted, not spliced


def bypass_key_for_origin() -> tuple[str | None, str]:
    from etpmitm.learning import bypass_key

    return bypass_key("origin.test", ORIGIN.ip, ORIGIN.port)
