"""Everything origin-side: connecting, verifying, certificate facts, sessions.

The gateway is a TLS client of origins with one shared, hardened context and
the device's SNI and ALPN offer per connection.  Chain verification runs
inside the handshake but never aborts it: each error is recorded so that,
once the handshake is done, the connection can decide what the device may
see (see :mod:`etpmitm.origintrust`).  Nothing is relayed before that.

Origin connections go through the public endpoint API; TLS wraps the
connection in :class:`~etpmitm.gateway._twisted.HalfCloseableTLS`.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any, cast

import attrs
from cryptography import x509
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address
from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IProtocol, IReactorTCP, IStreamClientEndpoint
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from etpmitm.addresses import IPAddress
from etpmitm.gateway._twisted import HalfCloseableTLS, halfCloseableTLSFactory, onlyProtocol
from etpmitm.gateway.origdst import Destination
from etpmitm.lru import LRUCache
from etpmitm.mint import LeafName, leaf_names
from etpmitm.origintrust import ChainError, OriginVerdict, judge, weak_crypto
from etpmitm.tlsconfig import hardened_context

RELAY_BUFFER = 256 * 1024
"""The default ``--relay-buffer``: socket read size, and the write backlog at
which the other side is paused.

Twisted's default (64 KiB) makes bulk transfers pause and resume the
producer on almost every read; this moves data in larger steps, and bounds
what a connection whose reader stalls holds to about four times it (the
write backlog, one read, and the TLS records of each)."""


def tuneRelaySocket(tcpTransport: object, bufferSize: int = RELAY_BUFFER) -> None:
    """``bufferSize``, and no Nagle delay: a relay forwards what it has at
    once (a small response held back for a delayed ACK costs tens of
    milliseconds)."""
    tcpTransport.bufferSize = bufferSize  # type: ignore[attr-defined]
    tcpTransport.setTcpNoDelay(True)  # type: ignore[attr-defined]


# -- the trust store ----------------------------------------------------------

# Where Linux distributions keep the system bundle, in the order tried after
# SSL_CERT_FILE and Python's compiled-in default.
_SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/ca-bundle.pem",  # SUSE
    "/etc/ssl/cert.pem",
)


class TrustStoreError(Exception):
    """The upstream trust store could not be loaded."""


def system_bundle() -> Path:
    """The platform's CA bundle file."""
    candidates = [os.environ.get("SSL_CERT_FILE"), ssl.get_default_verify_paths().cafile]
    for candidate in [*candidates, *_SYSTEM_BUNDLES]:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise TrustStoreError("no system CA bundle found; pass --upstream-trust FILE")


def upstream_context(bundle: Path) -> SSL.Context:
    """The shared client context, trusting the CAs in ``bundle`` (read once)."""
    context = hardened_context()
    try:
        context.load_verify_locations(str(bundle))
    except SSL.Error as e:
        raise TrustStoreError(f"cannot load trust bundle {bundle}: {e}") from e
    context.set_verify(SSL.VERIFY_PEER)
    # Sessions are kept by OriginSessions, only for verified origins.
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    return context


# -- one handshake --------------------------------------------------------------


@attrs.define
class VerificationRecord:
    """Chain errors seen during one origin handshake, and whether it asked for a client certificate."""

    errors: list[ChainError] = attrs.Factory(list)
    certificateRequested: bool = False

    def infoCallback(self, conn: SSL.Connection, where: int, ret: int) -> None:
        if where & SSL.SSL_CB_LOOP and b"certificate request" in (conn.get_state_string() or b""):
            self.certificateRequested = True

    def callback(self, conn: SSL.Connection, cert: crypto.X509, code: int, depth: int, ok: int) -> bool:
        if not ok:
            self.errors.append(ChainError(depth=depth, code=code))
        return True  # decide after the handshake, with the whole picture


@implementer(IOpenSSLClientConnectionCreator)
@attrs.frozen
class OriginTLSCreator:
    """Makes the client ``Connection`` for one origin handshake."""

    context: SSL.Context
    sni: str | None
    alpn: tuple[bytes, ...]
    session: SSL.Session | None = None
    record: VerificationRecord = attrs.Factory(VerificationRecord)

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_verify(SSL.VERIFY_PEER, self.record.callback)
        connection.set_info_callback(self.record.infoCallback)
        if self.sni is not None:
            connection.set_tlsext_host_name(self.sni.encode("ascii"))
        if self.alpn:
            connection.set_alpn_protos(list(self.alpn))
        if self.session is not None:
            connection.set_session(self.session)
        return connection


SessionKey = tuple[str, int, str | None]


@attrs.frozen
class OriginTLS:
    """A TLS connection to an origin, connected over TCP, handshake under way."""

    tls: HalfCloseableTLS
    record: VerificationRecord
    connection: SSL.Connection
    """Kept here: the TLS protocol drops it when the connection closes."""
    key: SessionKey

    @property
    def alpn(self) -> bytes | None:
        chosen: bytes | None = self.tls.negotiatedProtocol
        return chosen


def _endpoint(reactor: IReactorTCP, dst: Destination, timeout: float) -> IStreamClientEndpoint:
    kind = TCP6ClientEndpoint if dst.ip.version == 6 else TCP4ClientEndpoint
    return kind(reactor, str(dst.ip), dst.port, timeout=timeout)


def connectPlain(
    reactor: IReactorTCP, dst: Destination, protocol: IProtocol, timeout: float, bufferSize: int = RELAY_BUFFER
) -> Deferred[IProtocol]:
    """Open a TCP connection to ``dst`` driving ``protocol``."""

    def connected(connected: IProtocol) -> IProtocol:
        tuneRelaySocket(connected.transport, bufferSize)  # type: ignore[attr-defined]
        return connected

    connecting: Deferred[IProtocol] = _endpoint(reactor, dst, timeout).connect(onlyProtocol(protocol))
    return connecting.addCallback(connected)


def connectTLS(
    reactor: IReactorTCP,
    dst: Destination,
    context: SSL.Context,
    sni: str | None,
    alpn: tuple[bytes, ...],
    timeout: float,
    protocol: IProtocol,
    sessions: OriginSessions | None = None,
    bufferSize: int = RELAY_BUFFER,
) -> Deferred[OriginTLS]:
    """TCP to ``dst``, then TLS with the device's SNI and ALPN offer, driving ``protocol``.

    Fires once TCP is connected; ``protocol`` hears of the handshake
    (``IHandshakeListener``) or of its failure (``connectionLost``).  A TCP
    failure fails the Deferred with an :class:`OriginError`.
    """
    key: SessionKey = (str(dst.ip), dst.port, sni)
    session = sessions.lookup(key) if sessions is not None else None
    creator = OriginTLSCreator(context, sni, alpn, session)

    def connected(tls: HalfCloseableTLS) -> OriginTLS:
        tuneRelaySocket(tls.transport, bufferSize)
        return OriginTLS(tls, creator.record, cast(SSL.Connection, tls.getHandle()), key)

    connecting: Deferred[Any] = _endpoint(reactor, dst, timeout).connect(halfCloseableTLSFactory(creator, True, protocol))
    done: Deferred[OriginTLS] = connecting.addCallback(connected)
    done.addErrback(lambda failure: Failure(explain(failure, creator.record)))
    return done


class OriginError(Exception):
    """The origin could not be reached or did not complete a TLS handshake.

    ``kind`` is ``"old-protocol"`` when the origin offered only what the
    gateway refuses (TLS 1.1 or older, or no acceptable suite): an origin
    weakness the device must be told of.  ``certificateRequested`` says the
    origin asked for a client certificate before failing.
    """

    def __init__(self, reason: str, kind: str = "unreachable", certificateRequested: bool = False) -> None:
        super().__init__(reason)
        self.kind = kind
        self.certificateRequested = certificateRequested


_OLD_PROTOCOL = ("unsupported protocol", "protocol version", "no protocols available", "no shared cipher", "no cipher")


def explain(failure: Failure, record: VerificationRecord) -> OriginError | CancelledError:
    """Why connecting or the handshake failed, as an :class:`OriginError`."""
    value = failure.value
    kind = "unreachable"
    if isinstance(value, (OriginError, CancelledError)):
        return value
    if isinstance(value, error.ConnectionRefusedError):
        reason = "origin refused the connection"
    elif isinstance(value, error.TimeoutError):
        reason = "origin connection timed out"
    elif isinstance(value, (error.NoRouteError, error.ConnectError)):
        reason = f"origin unreachable: {value}"
    elif isinstance(value, SSL.Error):
        detail = sslReason(failure)
        reason = f"origin TLS handshake failed: {detail}"
        kind = "old-protocol" if any(text in detail for text in _OLD_PROTOCOL) else "handshake-failed"
    elif isinstance(value, error.ConnectionDone):
        reason = "origin closed the connection during the TLS handshake"
    elif isinstance(value, error.ConnectionLost):
        reason = "origin reset the connection during the TLS handshake"
    else:
        reason = f"origin connection failed: {value}"
    return OriginError(reason, kind, record.certificateRequested)


def sslReason(failure: Failure) -> str:
    """The last OpenSSL reason string of a failure, else its message."""
    value = failure.value
    if isinstance(value, SSL.Error) and value.args and isinstance(value.args[0], list):
        queue = value.args[0]
        if queue and isinstance(queue[-1], tuple):
            return str(queue[-1][-1])
    return failure.getErrorMessage()


# -- what the certificate says ------------------------------------------------


@attrs.frozen
class OriginCertificate:
    """What an origin's certificate says, worked out once per certificate and name."""

    certificate: x509.Certificate
    name_error: str | None
    """Why the certificate does not cover the name asked for, if it does not."""
    weak: OriginVerdict | None
    """A verdict against weak signatures or keys in the presented chain."""
    names: tuple[LeafName, ...]
    """The names for the device's leaf (see :func:`etpmitm.mint.leaf_names`)."""


OriginCertificates = LRUCache[tuple[bytes, str | None, str], OriginCertificate]


def examine_origin(
    connection: SSL.Connection,
    record: VerificationRecord,
    sni: str | None,
    address: IPAddress,
    cache: OriginCertificates,
) -> tuple[OriginVerdict, OriginCertificate | None]:
    """The verdict for a finished handshake, and the certificate's facts.

    The name checked is the client's SNI, or the destination IP when it
    sent none.  Chain errors come from this handshake; the rest is cached
    per (certificate, name), so a returning origin costs a digest and a
    dictionary lookup.
    """
    leaf = connection.get_peer_certificate()
    if leaf is None:
        return OriginVerdict(False, "no-certificate", "origin presented no certificate"), None
    key = (leaf.digest("sha256"), sni, str(address))
    facts = cache.get(key)
    if facts is None:
        facts = _facts(connection, leaf.to_cryptography(), sni, address)
        cache.put(key, facts)
    return judge(record.errors, facts.name_error, facts.weak), facts


def _facts(connection: SSL.Connection, certificate: x509.Certificate, sni: str | None, address: IPAddress) -> OriginCertificate:
    name_error: str | None = None
    try:
        if sni is not None:
            verify_certificate_hostname(certificate, sni)
        else:
            verify_certificate_ip_address(certificate, str(address))
    except VerificationError as e:
        wanted = sni if sni is not None else str(address)
        name_error = f"certificate does not match {wanted}: {e.errors[0]}" if e.errors else str(e)
    except Exception as e:  # service_identity rejects certificates it cannot read
        name_error = f"cannot check the certificate's names: {e}"
    chain = connection.get_peer_cert_chain(as_cryptography=True) or [certificate]
    try:
        names = leaf_names(certificate, sni, address)
    except Exception:  # nothing to mimic; the caller refuses if it needs names
        names = ()
    return OriginCertificate(certificate, name_error, weak_crypto(chain), names)


# -- resuming sessions ------------------------------------------------------------


class OriginSessions:
    """The newest resumable session per (origin address, port, SNI).

    A resumed handshake skips the origin's signature and the gateway's chain
    verification.  Only sessions whose full handshake earned a trusted
    verdict are kept, in a bounded LRU; OpenSSL's own client cache is off,
    since it stores every session and never hands one back.
    """

    def __init__(self, maxsize: int = 4096) -> None:
        self._sessions: LRUCache[SessionKey, SSL.Session] = LRUCache(maxsize)

    def lookup(self, key: SessionKey) -> SSL.Session | None:
        return self._sessions.get(key)

    def store(self, origin: OriginTLS) -> None:
        """Keep the session of a verified origin whose connection has ended.

        TLS 1.3 tickets arrive after the handshake, so the session is taken
        when the connection closes, from the ``SSL.Connection`` kept for it.
        """
        # OpenSSL marks the session of a connection freed without a sent
        # close_notify as not resumable (a TLS 1.0 rule; since TLS 1.1 a
        # premature close need not end the session).  The relay mirrors the
        # peers' closes, so say the connection was shut down.
        origin.connection.set_shutdown(SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN)
        session = origin.connection.get_session()
        if session is not None:
            self._sessions.put(origin.key, session)
