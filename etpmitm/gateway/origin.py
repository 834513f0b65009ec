"""Connect to the origin: plain TCP for splicing, TLS for interception."""

from __future__ import annotations

from typing import cast

import attrs
from OpenSSL import SSL
from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IProtocol, IReactorTCP, IStreamClientEndpoint
from twisted.python.failure import Failure

from etpmitm.gateway.ends import TLSEnd, oneProtocol
from etpmitm.gateway.halfclosetls import HalfCloseableTLS, halfCloseableTLSFactory
from etpmitm.gateway.origdst import Destination
from etpmitm.gateway.relay import RelayEnd, tuneRelaySocket
from etpmitm.gateway.sessions import Key as SessionKey, OriginSessions
from etpmitm.gateway.sslerrors import sslReason
from etpmitm.gateway.upstream import OriginTLSCreator, VerificationRecord


@attrs.frozen
class OriginSession:
    """A finished TLS handshake with the origin, not yet relaying."""

    end: TLSEnd
    tls: HalfCloseableTLS
    record: VerificationRecord
    connection: SSL.Connection
    """Kept here: the TLS protocol drops it when the connection closes."""
    key: SessionKey


def _endpoint(reactor: IReactorTCP, dst: Destination, timeout: float) -> IStreamClientEndpoint:
    kind = TCP6ClientEndpoint if dst.ip.version == 6 else TCP4ClientEndpoint
    return kind(reactor, str(dst.ip), dst.port, timeout=timeout)


def connectPlain(
    reactor: IReactorTCP, dst: Destination, end: RelayEnd, timeout: float
) -> Deferred[IProtocol]:
    """Open a TCP connection to ``dst`` driving ``end``."""

    def connected(protocol: IProtocol) -> IProtocol:
        tuneRelaySocket(end.transport)
        return protocol

    return _endpoint(reactor, dst, timeout).connect(oneProtocol(end)).addCallback(connected)


def connectTLS(
    reactor: IReactorTCP,
    dst: Destination,
    context: SSL.Context,
    sni: str | None,
    alpn: tuple[bytes, ...],
    timeout: float,
    sessions: OriginSessions | None = None,
) -> Deferred[OriginSession]:
    """TLS to ``dst`` with the device's SNI and ALPN offer.

    Fires once the handshake is done, whether or not the origin's
    certificate verified; the caller judges it.  Fails with a
    :class:`OriginError` that says why when there is no handshake.
    """
    end = TLSEnd("origin")
    key: SessionKey = (str(dst.ip), dst.port, sni)
    session = sessions.lookup(key) if sessions is not None else None
    creator = OriginTLSCreator(context, sni, alpn, session)
    factory = halfCloseableTLSFactory(creator, True, oneProtocol(end))
    connecting = _endpoint(reactor, dst, timeout).connect(factory)

    def connected(protocol: IProtocol) -> Deferred[OriginSession]:
        tls = cast(HalfCloseableTLS, protocol)
        tuneRelaySocket(tls.transport)
        connection = cast(SSL.Connection, tls.getHandle())
        return end.handshake.addCallback(lambda _: OriginSession(end, tls, creator.record, connection, key))

    d = connecting.addCallback(connected)
    d.addErrback(_explain, creator.record)
    return d


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


def _explain(failure: Failure, record: VerificationRecord) -> Failure:
    value = failure.value
    kind = "unreachable"
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
    elif isinstance(value, (OriginError, CancelledError)):
        return failure
    else:
        reason = f"origin connection failed: {value}"
    return Failure(OriginError(reason, kind, record.certificateRequested))

