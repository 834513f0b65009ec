"""Intake in memory: each way a connection can end before a stage takes it."""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from etpmitm.clienthello import ClientHello
from etpmitm.gateway.intake import Intake
from etpmitm.gateway.origdst import Destination
from etpmitm.gateway.settings import GatewaySettings
from tests.hellos import python_client_hello

ORIGIN = Destination(ipaddress.IPv4Address("192.0.2.10"), 443)


class FakeTCP(StringTransport):
    def __init__(self) -> None:
        super().__init__(
            hostAddress=IPv4Address("TCP", "10.0.0.1", 8443),
            peerAddress=IPv4Address("TCP", "10.0.0.2", 50000),
        )
        self.aborted = False
        self.noDelay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.noDelay = enabled

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class RecordingStage:
    def __init__(self, intake: Intake, hello: ClientHello | None) -> None:
        self.intake, self.hello = intake, hello
        self.started = self.aborted = False

    def start(self) -> None:
        self.started = True

    def abort(self) -> None:
        self.aborted = True


class IntakeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.stages: list[RecordingStage] = []
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def connect(self, destination: Any = ORIGIN) -> tuple[Intake, FakeTCP]:
        def originalDestination(transport: object) -> Destination:
            if isinstance(destination, Exception):
                raise destination
            return destination  # type: ignore[no-any-return]

        settings = GatewaySettings(
            reactor=None,  # type: ignore[arg-type]
            clock=self.clock,
            upstream=None,  # type: ignore[arg-type]
            leaves=None,  # type: ignore[arg-type]
            handshakeTimeout=5,
            originalDestination=originalDestination,
        )

        def decide(intake: Intake, hello: ClientHello | None) -> RecordingStage:
            stage = RecordingStage(intake, hello)
            self.stages.append(stage)
            return stage

        intake = Intake(settings, decide)
        transport = FakeTCP()
        intake.makeConnection(transport)
        return intake, transport

    def audit(self) -> dict[str, Any]:
        events = [e for e in self.events if e.get("log_namespace") == "etpmitm.audit"]
        self.assertEqual(len(events), 1, events)
        return events[0]

    def test_socketTunedForRelaying(self) -> None:
        """No Nagle delay, and reads and write backlog sized for relaying."""
        from etpmitm.gateway.relay import RELAY_BUFFER

        _, transport = self.connect()
        self.assertTrue(transport.noDelay)
        self.assertEqual(transport.bufferSize, RELAY_BUFFER)  # type: ignore[attr-defined]

    def test_notRedirected(self) -> None:
        """No conntrack entry: refused with the reason, nothing else happens."""
        intake, transport = self.connect(OSError(2, "No such file or directory"))
        self.assertTrue(transport.aborted)
        intake.connectionLost()  # what the reactor does after an abort
        event = self.audit()
        self.assertEqual(event["action"], "refuse")
        self.assertIn("not redirected", event["reason"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_loopToOwnAddress(self) -> None:
        """A connection addressed to the gateway's own listener is refused."""
        intake, transport = self.connect(Destination(ipaddress.IPv4Address("10.0.0.1"), 8443))
        self.assertTrue(transport.aborted)
        intake.connectionLost()
        self.assertIn("own listening address", self.audit()["reason"])

    def test_helloSplitAcrossReads(self) -> None:
        """A ClientHello that arrives byte by byte reaches the stage whole."""
        hello = python_client_hello("split.example", ["h2", "http/1.1"])
        intake, transport = self.connect()
        for i in range(len(hello) - 1):
            intake.dataReceived(hello[i : i + 1])
        self.assertEqual(self.stages, [])
        intake.dataReceived(hello[-1:])
        [stage] = self.stages
        self.assertTrue(stage.started)
        assert stage.hello is not None
        self.assertEqual(stage.hello.sni, "split.example")
        self.assertEqual(stage.hello.alpn, (b"h2", b"http/1.1"))
        self.assertEqual(transport.producerState, "paused")

    def test_replayKeepsEveryByte(self) -> None:
        """switchTo replays the hello and anything that came after it."""
        from twisted.internet.protocol import Protocol

        class Sink(Protocol):
            received = b""

            def dataReceived(self, data: bytes) -> None:
                self.received += data

        hello = python_client_hello()
        intake, transport = self.connect()
        intake.dataReceived(hello + b"\x14\x03\x03\x00\x01\x01")
        intake.dataReceived(b"late")
        sink = Sink()
        intake.switchTo(sink)
        self.assertEqual(sink.received, hello + b"\x14\x03\x03\x00\x01\x01late")
        intake.dataReceived(b"more")
        self.assertEqual(sink.received[-4:], b"more")
        self.assertEqual(transport.producerState, "producing")

    def test_notTLSGoesToTheStageWithoutHello(self) -> None:
        intake, _ = self.connect()
        intake.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        [stage] = self.stages
        self.assertIsNone(stage.hello)
        self.assertIn("not TLS", intake.record.reason)

    def test_garbage(self) -> None:
        intake, _ = self.connect()
        intake.dataReceived(b"\x00\xff\x13\x37garbage")
        [stage] = self.stages
        self.assertIsNone(stage.hello)

    def test_malformedHelloIsRefusedNotSpliced(self) -> None:
        """TLS that breaks its own framing is refused, never passed through."""
        hello = bytearray(python_client_hello())
        hello[3:5] = (len(hello) + 100).to_bytes(2, "big")  # a record longer than...
        hello[6:9] = (0xFFFFFF).to_bytes(3, "big")  # ...and a handshake length that lies
        intake, transport = self.connect()
        intake.dataReceived(bytes(hello))
        self.assertEqual(self.stages, [])
        self.assertTrue(transport.aborted)
        intake.connectionLost()
        self.assertIn("malformed ClientHello", self.audit()["reason"])

    def test_truncatedHelloThenFIN(self) -> None:
        """A client that closes mid-ClientHello is refused with the byte count."""
        hello = python_client_hello()
        intake, transport = self.connect()
        intake.dataReceived(hello[:100])
        intake.readConnectionLost()
        self.assertTrue(transport.aborted)
        self.assertEqual(self.stages, [])
        intake.connectionLost()
        self.assertIn("client closed before a complete ClientHello (100 bytes)", self.audit()["reason"])

    def test_slowClientTimesOut(self) -> None:
        """A client that never finishes its ClientHello is cut at the handshake timeout."""
        hello = python_client_hello()
        intake, transport = self.connect()
        intake.dataReceived(hello[:10])
        self.clock.advance(4.9)
        self.assertFalse(transport.aborted)
        self.clock.advance(0.2)
        self.assertTrue(transport.aborted)
        intake.connectionLost()
        self.assertIn("handshake timeout", self.audit()["reason"])

    def test_timeoutAbortsTheStage(self) -> None:
        """A stage still waiting on the origin at the timeout is aborted too."""
        intake, transport = self.connect()
        intake.dataReceived(python_client_hello())
        self.clock.advance(5.1)
        [stage] = self.stages
        self.assertTrue(stage.aborted)
        self.assertTrue(transport.aborted)

    def test_establishedStopsTheTimer(self) -> None:
        intake, transport = self.connect()
        intake.dataReceived(python_client_hello())
        intake.established()
        self.clock.advance(60)
        self.assertFalse(transport.aborted)

    def test_clientLeavesWhileConnecting(self) -> None:
        intake, _ = self.connect()
        intake.dataReceived(python_client_hello())
        intake.readConnectionLost()
        [stage] = self.stages
        self.assertTrue(stage.aborted)
        intake.connectionLost()
        self.assertIn("while the gateway was connecting", self.audit()["reason"])
