"""A ``haproxy:`` listener in memory: the PROXY header names the device and the destination."""

from __future__ import annotations

import ipaddress
from typing import Any

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol

from etpmitm.admission import Admission
from etpmitm.gateway._twisted import halfCloseableTLS
from etpmitm.gateway.connection import State
from etpmitm.gateway.intake import Intake, Refused
from etpmitm.gateway.origdst import Destination
from etpmitm.policy import parse_policy
from etpmitm.gateway.proxied import HeaderIntake, ProxiedIntakeFactory, unwrapProxied
from tests.corelab import GATEWAY, GATEWAY_WAN, ORIGIN_IP, CoreTestCase, Peer, _Client
from tests.memnet import MemoryTCP
from etpmitm.gateway.proxyheader import V2_SIGNATURE
from tests.test_proxyheader import v1, v2

BALANCER = IPv4Address("TCP", "10.0.0.50", 33000)
DEVICE = "10.0.0.77"


class _Raw(Protocol):
    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class ProxiedTests(CoreTestCase):
    def setUp(self) -> None:
        super().setUp()

        def notAsked(transport: object) -> Destination:
            raise AssertionError("SO_ORIGINAL_DST was read on a haproxy: listener")

        self.settings = attrs.evolve(self.settings, originalDestination=notAsked)
        self.factory = ProxiedIntakeFactory(self.settings)
        self.front: HeaderIntake | None = None

    def connectProxied(self, chunks: list[bytes], withHello: bool = False, sni: str = "origin.test") -> Peer:
        """A TLS device behind a balancer: ``chunks`` (the header) reach the gateway
        first, each as its own read; with ``withHello`` the last one carries the
        ClientHello too."""
        peer = Peer()
        client = halfCloseableTLS(_Client(self.deviceContext(), sni, (b"http/1.1",)), True, peer)
        self.front = self.factory.buildProtocol(BALANCER)
        server, _ = self.net.wire(self.front, client, GATEWAY, BALANCER)
        queued = list(server.inbox)  # the ClientHello the device wrote
        server.inbox.clear()
        if withHello:
            chunks = chunks[:-1] + [chunks[-1] + b"".join(data for _, data in queued)]
            queued = []
        server.inbox.extend(("data", chunk) for chunk in chunks)
        server.inbox.extend(queued)
        self.net.flush()
        if isinstance(self.front._next, Intake):
            self.intake = self.front._next
        return peer

    def connectRaw(self) -> tuple[HeaderIntake, _Raw, MemoryTCP]:
        device = _Raw()
        front = self.factory.buildProtocol(BALANCER)
        server, _ = self.net.wire(front, device, GATEWAY, BALANCER)
        self.net.flush()
        return front, device, server

    def send(self, device: Protocol, data: bytes) -> None:
        assert device.transport is not None
        device.transport.write(data)
        self.net.flush()

    def auditEvents(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("log_namespace") == "etpmitm.audit"]

    def assertRefusedHeader(self, server: MemoryTCP, reason: str) -> None:
        """Reset, nothing else done, and one audit event: refuse/refused with the reason."""
        self.assertTrue(server.aborted or not server.connected)
        self.assertFalse(server.connected)
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        [event] = self.auditEvents()
        self.assertEqual((event["action"], event["outcome"]), ("refuse", "refused"))
        self.assertIn("bad PROXY header: " + reason, event["reason"])
        self.assertEqual(event["client"], f"{BALANCER.host}:{BALANCER.port}")

    # -- a device behind the balancer ---------------------------------------------------

    def test_interceptsWithTheHeadersAddresses(self) -> None:
        """v2, split across reads: the origin is the header's destination, the audit names the device."""
        header = v2(DEVICE, ORIGIN_IP, 41000, 443)
        peer = self.connectProxied([header[:5], header[5:20], header[20:]])
        origin = self.acceptTLS(Peer(reply=b"pong"))
        self.assertTrue(peer.handshook)
        self.send(peer, b"ping")
        self.assertEqual((origin.received, peer.received), (b"ping", b"pong"))
        self.assertEqual(self.connection.client, ipaddress.IPv4Address(DEVICE))
        peer.tls.loseConnection()
        self.net.flush()
        origin.tls.loseConnection()
        self.net.flush()
        event = self.assertDone("intercept", "ok")
        self.assertEqual((event["client"], event["destination"]), (f"{DEVICE}:41000", f"{ORIGIN_IP}:443"))

    def test_v1HeaderAndHelloInOneRead(self) -> None:
        """The bytes after the header in the same read are the ClientHello: none is lost."""
        self.connectProxied([v1("TCP4", DEVICE, ORIGIN_IP, 41000, 443)], withHello=True)
        self.assertIs(self.connection.state, State.CONNECTING_ORIGIN)
        self.assertEqual(self.connection.record.sni, "origin.test")
        self.acceptTLS()
        self.assertIs(self.connection.state, State.RELAYING)

    def test_IPv6Header(self) -> None:
        """An IPv6 device and destination come through as they are (here the destination refuses)."""
        self.connectProxied([v2("fd00::77", "2001:db8::10", 41000, 443)])
        host, port, _ = self.pendingOrigin()
        self.assertEqual((host, port), ("2001:db8::10", 443))
        self.assertEqual(self.connection.client, ipaddress.IPv6Address("fd00::77"))
        self.assertEqual(self.connection.record.client, "fd00::77:41000")

    def test_clientScopedPolicyUsesTheDevice(self) -> None:
        """Rules by client match the header's source, not the balancer."""
        self.policy.current = parse_policy(f'[[rule]]\naction = "bypass"\nmatch = ["0.0.0.0/0"]\nclients = ["{DEVICE}/32"]\n')
        self.connectProxied([v2(DEVICE, ORIGIN_IP, 41000, 443)])
        self.assertIs(self.connection.state, State.SPLICING)
        self.assertEqual(self.connection.record.action, "splice")
        self.connectProxied([v2("10.0.0.78", ORIGIN_IP, 41000, 443)])  # the same balancer, another device
        self.assertIs(self.connection.state, State.CONNECTING_ORIGIN)
        self.assertEqual(self.connection.record.action, "intercept")

    def test_loopGuardOnTheHeadersDestination(self) -> None:
        """A header naming the gateway's own address is refused like a redirected one."""
        self.connectProxied([v2(DEVICE, GATEWAY_WAN.host, 41000, 443)])
        self.assertDone("refuse", "error", f"addressed to the gateway itself ({GATEWAY_WAN.host}:443)")

    def test_refusedAtOnceWithTheHelloInTheSameRead(self) -> None:
        """A connection refused from its header alone gets no further: the ClientHello
        that came with the header in one read is not fed to it."""
        self.connectProxied([v1("TCP4", DEVICE, GATEWAY_WAN.host, 41000, 443)], withHello=True)
        self.assertDone("refuse", "error", f"addressed to the gateway itself ({GATEWAY_WAN.host}:443)")

    def test_loopGuardOnTheBalancersAddress(self) -> None:
        """A header naming the balancer itself (HAProxy 2.6 behind an IPv6 REDIRECT) would loop back to it: refused."""
        self.connectProxied([v2(DEVICE, BALANCER.host, 41000, 8443)])
        event = self.assertDone("refuse", "error", f"addressed to the balancer itself ({BALANCER.host}:8443)")
        self.assertEqual(event["client"], f"{DEVICE}:41000")

    def test_admissionCountsTheDeviceNotTheBalancer(self) -> None:
        """Per-client limits apply to the header's source: one device at its limit, another still served."""
        self.settings = attrs.evolve(self.settings, admission=Admission(max_connections=0, per_client=1, per_client_rate=0, burst=0))
        self.factory = ProxiedIntakeFactory(self.settings)
        self.connectProxied([v2(DEVICE, ORIGIN_IP, 41000, 443)])
        first = self.front
        self.connectProxied([v2(DEVICE, ORIGIN_IP, 41001, 443)])
        assert first is not None and self.front is not None
        self.assertIsInstance(first._next, Intake)
        self.assertIsInstance(self.front._next, Refused)
        self.connectProxied([v2("10.0.0.78", ORIGIN_IP, 41000, 443)])
        self.assertIsInstance(self.front._next, Intake)
        refused = [e for e in self.events if "refused a connection" in e.get("log_format", "")]
        self.assertEqual([e["reason"] for e in refused], [f"per-client limit: 1 open from {DEVICE}"])

    # -- no valid header ------------------------------------------------------------------

    def test_noHeader(self) -> None:
        """A device's ClientHello straight to the listener (no balancer) is refused."""
        self.connectProxied([])
        self.assertRefusedHeader(self.net.ends[0], "no PROXY header: the connection starts with a TLS handshake record")

    def test_garbage(self) -> None:
        _, device, server = self.connectRaw()
        self.send(device, b"hello there\r\n")
        self.assertRefusedHeader(server, "no PROXY header")

    def test_localIsAHealthCheck(self) -> None:
        """HAProxy's check of a send-proxy-v2 server (a LOCAL header): closed politely, not audited, not relayed."""
        _, device, server = self.connectRaw()
        self.send(device, V2_SIGNATURE + b"\x20\x00\x00\x00")
        self.assertFalse(server.connected)
        self.assertFalse(server.aborted)
        self.assertEqual(self.auditEvents(), [])
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_v1Unknown(self) -> None:
        _, device, server = self.connectRaw()
        self.send(device, b"PROXY UNKNOWN\r\n")
        self.assertRefusedHeader(server, "v1 UNKNOWN protocol")

    def test_unsupportedFamily(self) -> None:
        _, device, server = self.connectRaw()
        self.send(device, v2("10.0.0.2", "10.0.0.3", 5, 443, family=0x12))
        self.assertRefusedHeader(server, "v2 header for UDP over IPv4")

    def test_truncatedThenClosed(self) -> None:
        """Half a header, then FIN: refused with the count of bytes."""
        _, device, server = self.connectRaw()
        self.send(device, v2(DEVICE, ORIGIN_IP, 41000, 443)[:20])
        assert device.transport is not None
        device.transport.loseWriteConnection()  # type: ignore[attr-defined]
        self.net.flush()
        self.assertRefusedHeader(server, "closed before a complete PROXY header (20 bytes)")

    def test_slowHeaderTimesOut(self) -> None:
        """Half a header and silence: refused after the handshake timeout, not left hanging."""
        _, device, server = self.connectRaw()
        self.send(device, b"PROXY TCP4 10.0")
        self.reactor.advance(self.handshakeTimeout - 0.1)
        self.net.flush()
        self.assertTrue(server.connected)
        self.advance(0.2)
        self.assertRefusedHeader(server, "no complete PROXY header within 10s (15 bytes)")

    def test_silentConnectionTimesOut(self) -> None:
        _, _, server = self.connectRaw()
        self.advance(self.handshakeTimeout)
        self.assertRefusedHeader(server, "no complete PROXY header within 10s (0 bytes)")

    def test_healthCheckIsNotAudited(self) -> None:
        """A balancer's TCP check connects and closes without a byte: no audit event, no timer left."""
        _, device, server = self.connectRaw()
        assert device.transport is not None
        device.transport.loseConnection()
        self.net.flush()
        self.assertFalse(server.connected)
        self.assertEqual(self.auditEvents(), [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class DescriptionTests(CoreTestCase):
    def test_unwrap(self) -> None:
        self.assertEqual(unwrapProxied("haproxy:tcp:8443"), (True, "tcp:8443"))
        self.assertEqual(unwrapProxied("HAProxy:tcp6:port=8443:interface=\\:\\:"), (True, "tcp6:port=8443:interface=\\:\\:"))
        self.assertEqual(unwrapProxied("tcp:8443"), (False, "tcp:8443"))
