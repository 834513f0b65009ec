"""The intake in memory: the original destination, the ClientHello buffer and the replay."""

from __future__ import annotations

import ipaddress
from typing import Any

import attrs
from twisted.internet.protocol import Protocol

from etpmitm.admission import Admission
from etpmitm.gateway.connection import State
from etpmitm.gateway.intake import Intake, IntakeFactory, Refused
from etpmitm.gateway.origdst import Destination
from tests.corelab import CLIENT, GATEWAY, CoreTestCase
from tests.hellos import python_client_hello


class _Raw(Protocol):
    """A device that writes what the test tells it to."""

    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class IntakeTests(CoreTestCase):
    def raw(self, destination: Any = None) -> _Raw:
        if destination is not None:
            def originalDestination(transport: object) -> Destination:
                if isinstance(destination, Exception):
                    raise destination
                return destination  # type: ignore[no-any-return]

            self.settings = attrs.evolve(self.settings, originalDestination=originalDestination)
        device = _Raw()
        self.connectDevice(device=device)
        return device

    def send(self, device: _Raw, data: bytes) -> None:
        assert device.transport is not None
        device.transport.write(data)
        self.net.flush()

    def test_notRedirected(self) -> None:
        """No conntrack entry: refused with the reason, nothing else happens."""
        self.raw(OSError(2, "No such file or directory"))
        self.assertTrue(self.deviceSocket.aborted)
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertDone("refuse", "error", "not redirected: no original destination (No such file or directory)")

    def test_loopToOwnAddress(self) -> None:
        """A connection addressed to the gateway's own listener is refused."""
        self.raw(Destination(ipaddress.IPv4Address("10.0.0.1"), 8443))
        self.assertDone("refuse", "error", "own listening address")

    def test_helloSplitAcrossReads(self) -> None:
        """A ClientHello that arrives byte by byte is judged once, whole."""
        hello = python_client_hello("split.example", ["h2", "http/1.1"])
        device = self.raw()
        for i in range(len(hello) - 1):
            self.send(device, hello[i : i + 1])
        self.assertIs(self.connection.state, State.READING_HELLO)
        self.send(device, hello[-1:])
        self.assertIs(self.connection.state, State.CONNECTING_ORIGIN)
        assert self.connection.hello is not None
        self.assertEqual(self.connection.hello.sni, "split.example")
        self.assertEqual(self.connection.hello.alpn, (b"h2", b"http/1.1"))
        self.assertTrue(self.deviceSocket.paused)  # nothing more is read until the origin is judged

    def test_replayKeepsEveryByte(self) -> None:
        """The splice replays the first bytes and everything that came after them, in order."""
        device = self.raw()
        self.send(device, b"GET / HTTP/1.1\r\n")
        self.assertIs(self.connection.state, State.SPLICING)
        self.send(device, b"Host: late\r\n\r\n")
        origin = self.acceptPlain()
        self.assertEqual(origin.received, b"GET / HTTP/1.1\r\nHost: late\r\n\r\n")
        self.send(device, b"more")
        self.assertEqual(origin.received[-4:], b"more")
        self.assertFalse(self.deviceSocket.paused)

    def test_notTLSIsRecordedAndSpliced(self) -> None:
        device = self.raw()
        self.send(device, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIsNone(self.connection.hello)
        self.assertIn("not TLS", self.connection.record.reason)
        self.assertEqual(self.connection.record.action, "splice")

    def test_garbageIsNotTLS(self) -> None:
        device = self.raw()
        self.send(device, b"\x00\xff\x13\x37garbage")
        self.assertIsNone(self.connection.hello)
        self.assertIs(self.connection.state, State.SPLICING)

    def test_malformedHelloIsRefusedNotSpliced(self) -> None:
        """TLS that breaks its own framing is refused, never passed through."""
        hello = bytearray(python_client_hello())
        hello[3:5] = (len(hello) + 100).to_bytes(2, "big")  # a record longer than...
        hello[6:9] = (0xFFFFFF).to_bytes(3, "big")  # ...and a handshake length that lies
        device = self.raw()
        self.send(device, bytes(hello))
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertTrue(self.deviceSocket.aborted)
        self.assertDone("refuse", "error", "malformed ClientHello")

    def test_nonTLSClosedByPolicy(self) -> None:
        self.policy.current = attrs.evolve(self.policy.current, non_tls="close")
        device = self.raw()
        self.send(device, b"SSH-2.0-OpenSSH_9.6\r\n")
        self.assertFalse(self.deviceSocket.aborted)  # a FIN, not a reset
        self.assertDone("close", "refused", "closed by policy (traffic.non_tls = close)")


class AdmissionTests(CoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.settings = attrs.evolve(self.settings, admission=Admission(max_connections=1, per_client=0, per_client_rate=0, burst=0))
        self.factory = IntakeFactory(self.settings)

    def connect(self) -> tuple[Any, _Raw]:
        device = _Raw()
        protocol = self.factory.buildProtocol(CLIENT)
        self.net.wire(protocol, device, GATEWAY, CLIENT)
        self.net.flush()
        return protocol, device

    def test_pastTheLimitIsResetAtOnceAndTheRestIsServed(self) -> None:
        first, firstDevice = self.connect()
        self.assertIsInstance(first, Intake)
        second, _ = self.connect()
        self.assertIsInstance(second, Refused)
        self.assertTrue(second.transport is None or not second.transport.connected)
        refused = [e for e in self.events if "refused a connection" in e.get("log_format", "")]
        self.assertEqual([e["reason"] for e in refused], ["connection limit: 1 open"])
        self.assertEqual([e for e in self.events if e.get("log_namespace") == "etpmitm.audit"], [])
        self.assertIs(first.connection.state, State.READING_HELLO)  # the admitted one is untouched
        firstDevice.transport.write(b"GET / HTTP/1.0\r\n\r\n")
        self.net.flush()
        self.assertIs(first.connection.state, State.SPLICING)

    def test_aClosedConnectionFreesItsPlace(self) -> None:
        first, firstDevice = self.connect()
        firstDevice.transport.loseConnection()
        self.net.flush()
        self.assertIs(first.connection.state, State.DONE)
        again, _ = self.connect()
        self.assertIsInstance(again, Intake)

    def test_refusalsAreLoggedRateLimited(self) -> None:
        self.connect()
        for _ in range(5):
            self.connect()
        self.reactor.advance(11)
        self.connect()
        refused = [e for e in self.events if "refused a connection" in e.get("log_format", "")]
        self.assertEqual(len(refused), 2)
        self.assertEqual(refused[1]["more"], " (4 more refused for the same kind of limit since the last line)")

    def test_everyRefusalIsCounted(self) -> None:
        """The log is rate-limited; the metric counts every refusal, by its limit."""
        from prometheus_client import CollectorRegistry

        from etpmitm import metrics

        registry = CollectorRegistry()
        self.addCleanup(metrics.install, metrics.install(metrics.PrometheusMetrics(registry)))
        self.connect()
        for _ in range(5):
            self.connect()
        self.assertEqual(registry.get_sample_value("etpmitm_admission_refusals_total", {"limit": "connection_limit"}), 5)
        self.assertEqual(registry.get_sample_value("etpmitm_connections_open"), 1)
