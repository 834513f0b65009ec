"""The gateway core in memory: a device, the gateway's connection, and origins.

No root, no network, no reactor: the gateway's ``Intake`` runs over
:mod:`tests.memnet`, its origin connections go to a ``MemoryReactorClock``
and each test decides what the origin does (accept with TLS, accept plain,
refuse, time out).  Devices and origins speak real TLS (pyOpenSSL) through
memory, with the test PKI of :mod:`tests.pki`.
"""

from __future__ import annotations

import ipaddress
import tempfile
from pathlib import Path
from typing import Any, Sequence

import attrs
from OpenSSL import SSL, crypto
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError, TimeoutError
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IProtocol,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from etpmitm.ca.leafkeys import load_or_create_leaf_key
from etpmitm.ca.ownroot import init_own_root
from etpmitm.ca.untrusted import load_or_create_untrusted_ca
from etpmitm.gateway._twisted import halfCloseableTLS
from etpmitm.gateway.connection import Connection, State
from etpmitm.gateway.device import CachedLeafContexts
from etpmitm.gateway.intake import Intake, IntakeFactory
from etpmitm.gateway.origdst import Destination
from etpmitm.gateway.origin import upstream_context
from etpmitm.gateway.policyholder import PolicyHolder
from etpmitm.gateway.settings import GatewaySettings
from etpmitm.policy import parse_policy
from tests import pki
from tests.memnet import MemoryTCP, Net

CLIENT = IPv4Address("TCP", "10.0.0.2", 50000)
GATEWAY = IPv4Address("TCP", "10.0.0.1", 8443)
GATEWAY_WAN = IPv4Address("TCP", "192.0.2.1", 40000)
ORIGIN_IP = "192.0.2.10"
ORIGIN = Destination(ipaddress.IPv4Address(ORIGIN_IP), 443)


@attrs.define
class _PKI:
    public: pki.Authority
    trust: Path
    caDir: Path
    gatewayRoot: bytes
    leaves: CachedLeafContexts
    untrusted: CachedLeafContexts


_pki: _PKI | None = None


def shared_pki() -> _PKI:
    """One public test PKI and one gateway CA for the whole run (minting costs)."""
    global _pki
    if _pki is None:
        work = Path(tempfile.mkdtemp(prefix="etpmitm-corelab-"))
        public = pki.Authority("Core Public")
        trust = work / "trust.pem"
        trust.write_bytes(pki.pem(public.root))
        ca = init_own_root(work / "ca")
        key = load_or_create_leaf_key(work / "ca")
        untrusted = load_or_create_untrusted_ca(work / "ca")
        _pki = _PKI(
            public, trust, work / "ca", (work / "ca" / "root.pem").read_bytes(),
            CachedLeafContexts(ca, key, 64), CachedLeafContexts(untrusted, key, 64),
        )
    return _pki


def _context(chain: Sequence[Any], key: Any) -> SSL.Context:
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.use_certificate(crypto.X509.from_cryptography(chain[0]))
    for extra in chain[1:]:
        context.add_extra_chain_cert(crypto.X509.from_cryptography(extra))
    context.use_privatekey(crypto.PKey.from_cryptography_key(key))
    return context


@implementer(IOpenSSLServerConnectionCreator)
@attrs.frozen
class _Server:
    context: SSL.Context

    def serverConnectionForTLS(self, protocol: object) -> SSL.Connection:
        return SSL.Connection(self.context, None)


@implementer(IOpenSSLClientConnectionCreator)
@attrs.frozen
class _Client:
    context: SSL.Context
    sni: str | None
    alpn: tuple[bytes, ...]

    def clientConnectionForTLS(self, protocol: object) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        if self.sni:
            connection.set_tlsext_host_name(self.sni.encode())
        if self.alpn:
            connection.set_alpn_protos(list(self.alpn))
        return connection


@implementer(IHandshakeListener, IHalfCloseableProtocol)
class Peer(Protocol):
    """A test device or origin application: records what happens to it.

    ``reply`` is sent back for each chunk received; ``onData`` may act instead.
    """

    def __init__(self, reply: bytes | None = None) -> None:
        self.reply = reply
        self.received = b""
        self.handshook = False
        self.readEnded = False
        self.cleanEnd: bool | None = None
        self.lostReason: Failure | None = None

    def handshakeCompleted(self) -> None:
        self.handshook = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.reply is not None:
            assert self.transport is not None
            self.transport.write(self.reply)

    def readConnectionLost(self) -> None:
        self.readEnded = True
        self.cleanEnd = bool(getattr(self.transport, "closeNotifyReceived", True))

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lostReason = reason

    @property
    def tls(self) -> Any:
        return self.transport

    @property
    def tcp(self) -> MemoryTCP:
        transport = self.transport
        inner = getattr(transport, "transport", None)
        return inner if isinstance(inner, MemoryTCP) else transport  # type: ignore[return-value]


class CoreTestCase(SynchronousTestCase):
    """Builds a gateway in memory per test; collects its audit events."""

    policyText = ""
    idleTimeout = 300.0
    handshakeTimeout = 10.0

    def setUp(self) -> None:
        self.pki = shared_pki()
        self.reactor = MemoryReactorClock()
        self.net = Net()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.policy = PolicyHolder(current=parse_policy(self.policyText))
        self.settings = GatewaySettings(
            reactor=self.reactor,
            clock=self.reactor,
            upstream=upstream_context(self.pki.trust),
            leaves=self.pki.leaves,
            untrustedLeaves=self.pki.untrusted,
            policy=self.policy,
            handshakeTimeout=self.handshakeTimeout,
            idleTimeout=self.idleTimeout,
            originalDestination=lambda transport: ORIGIN,
            isLocal=lambda address: str(address) in (GATEWAY.host, GATEWAY_WAN.host),
        )
        self.intake: Intake | None = None

    # -- the device ------------------------------------------------------------------

    def deviceContext(self, trusted: bool = True) -> SSL.Context:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        store = context.get_cert_store()
        assert store is not None
        root = self.pki.gatewayRoot if trusted else pki.pem(pki.Authority("Someone Else").root)
        store.add_cert(crypto.X509.from_cryptography(crypto.load_certificate(crypto.FILETYPE_PEM, root).to_cryptography()))
        context.set_verify(SSL.VERIFY_PEER, lambda *args: bool(args[-1]))
        return context

    def connectDevice(
        self, sni: str | None = "origin.test", alpn: Sequence[bytes] = (b"http/1.1",), trusted: bool = True,
        device: IProtocol | None = None,
    ) -> Peer:
        """A TLS device (or ``device``, a raw protocol) connects; returns its application end."""
        peer = Peer()
        client: IProtocol = device or halfCloseableTLS(_Client(self.deviceContext(trusted), sni, tuple(alpn)), True, peer)
        self.intake = IntakeFactory(self.settings).buildProtocol(CLIENT)
        self.net.wire(self.intake, client, GATEWAY, CLIENT)
        self.net.flush()
        return peer

    @property
    def connection(self) -> Connection:
        assert self.intake is not None and self.intake.connection is not None
        return self.intake.connection

    @property
    def deviceSocket(self) -> MemoryTCP:
        """The gateway's end of the device's TCP connection."""
        assert self.intake is not None
        return self.intake.transport  # type: ignore[return-value]

    # -- origins -----------------------------------------------------------------

    def pendingOrigin(self) -> tuple[str, int, Any]:
        self.assertTrue(self.reactor.tcpClients, "the gateway did not connect to an origin")
        host, port, factory, _timeout, _bind = self.reactor.tcpClients.pop(0)
        return host, port, factory

    def acceptTLS(
        self, app: Peer | None = None, names: Sequence[str] = ("origin.test",), alpn: Sequence[bytes] = (b"http/1.1",),
        chain: Sequence[Any] | None = None, key: Any = None, configure: Any = None,
    ) -> Peer:
        """The origin accepts the gateway's connection and speaks TLS; returns its application."""
        host, port, factory = self.pendingOrigin()
        self.assertEqual((host, port), (ORIGIN_IP, 443))
        if chain is None:
            leaf, key = self.pki.public.issue(names)
            chain = [leaf, self.pki.public.intermediate]
        context = _context(chain, key)
        offered = list(alpn)
        context.set_alpn_select_callback(lambda conn, protos: next((p for p in protos if p in offered), SSL.NO_OVERLAPPING_PROTOCOLS))
        if configure is not None:
            configure(context)
        app = app or Peer()
        server = halfCloseableTLS(_Server(context), False, app)
        self.net.wire(server, factory.buildProtocol(None), IPv4Address("TCP", host, port), GATEWAY_WAN)
        self.net.flush()
        return app

    def acceptPlain(self, app: Peer | None = None) -> Peer:
        host, port, factory = self.pendingOrigin()
        app = app or Peer()
        self.net.wire(app, factory.buildProtocol(None), IPv4Address("TCP", host, port), GATEWAY_WAN)
        self.net.flush()
        return app

    def failOrigin(self, error: Exception) -> None:
        _host, _port, factory = self.pendingOrigin()
        factory.clientConnectionFailed(self.reactor.connectors[-1], Failure(error))
        self.net.flush()

    def refuseOrigin(self) -> None:
        self.failOrigin(ConnectionRefusedError())

    def timeOutOrigin(self) -> None:
        self.failOrigin(TimeoutError())

    # -- checks -------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        self.reactor.advance(seconds)
        self.net.flush()

    def audit(self) -> dict[str, Any]:
        """The connection's single audit event (fails if there is not exactly one)."""
        events = [e for e in self.events if e.get("log_namespace") == "etpmitm.audit"]
        self.assertEqual(len(events), 1, events)
        return events[0]

    def assertDone(self, action: str, outcome: str, reason: str = "") -> dict[str, Any]:
        """The connection is over, the gateway's sockets are closed, and it was audited once like this."""
        self.assertIs(self.connection.state, State.DONE)
        for end in self.net.ends:
            if end.host in (GATEWAY, GATEWAY_WAN):
                self.assertFalse(end.connected, f"the gateway's socket {end.host} <-> {end.peer} is still open")
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        event = self.audit()
        self.assertEqual((event["action"], event["outcome"]), (action, outcome), event["reason"])
        self.assertIn(reason, event["reason"])
        return event
