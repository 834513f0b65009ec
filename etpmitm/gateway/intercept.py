"""Interception: origin first, then a minted certificate, then the relay."""

from __future__ import annotations

from OpenSSL import SSL
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from etpmitm.clienthello import ClientHello
from etpmitm.gateway.devicetls import DeviceTLSCreator
from etpmitm.gateway.ends import TLSEnd, oneProtocol
from etpmitm.gateway.halfclosetls import halfCloseableTLSFactory
from etpmitm.gateway.intake import Intake
from etpmitm.gateway.origin import OriginSession, connectTLS
from etpmitm.gateway.relay import Relay
from etpmitm.gateway.sslerrors import sslReason
from etpmitm.gateway.stagedone import relayFinished
from etpmitm.gateway.upstream import verify_origin
from etpmitm.mint import leaf_names


class Interception:
    """Decrypt, inspect and re-encrypt one connection.

    1. TLS to the origin with the device's SNI and ALPN offer; judge its
       certificate.  An untrusted origin ends the device's connection:
       its content never reaches the device under a trusted certificate.
    2. Serve the device a leaf for the origin's names (cached context),
       replaying its buffered ClientHello; select the origin's ALPN.
    3. Relay.
    """

    def __init__(self, intake: Intake, hello: ClientHello) -> None:
        self._intake = intake
        self._hello = hello
        self._connecting: Deferred[OriginSession] | None = None
        self._origin: OriginSession | None = None
        self._device: TLSEnd | None = None
        self._aborted = False

    def start(self) -> None:
        intake, hello = self._intake, self._hello
        intake.record.action = "intercept"
        settings = intake.settings
        assert intake.destination is not None
        self._connecting = connectTLS(
            settings.reactor,
            intake.destination,
            settings.upstream,
            hello.sni,
            hello.alpn,
            settings.connectTimeout,
        )
        self._connecting.addCallbacks(self._originReady, self._originFailed)

    def abort(self) -> None:
        self._aborted = True
        if self._connecting is not None and not self._connecting.called:
            self._connecting.cancel()
        self._dropOrigin()

    def _dropOrigin(self) -> None:
        if self._origin is not None and self._origin.tls.connected:
            self._origin.tls.abortConnection()

    def _originFailed(self, failure: Failure) -> None:
        if not failure.check(CancelledError) and not self._aborted:
            self._intake.refuse(failure.getErrorMessage())

    def _originReady(self, origin: OriginSession) -> None:
        self._origin = origin
        if self._aborted:
            self._dropOrigin()
            return
        intake, hello = self._intake, self._hello
        record = intake.record
        assert intake.destination is not None
        connection = origin.connection
        verdict = verify_origin(connection, origin.record, hello.sni, intake.destination.ip)
        record.origin_verdict = verdict.kind
        if not verdict.trusted:
            intake.refuse(f"origin certificate not trusted ({verdict.kind}): {verdict.reason}")
            return
        alpn = origin.tls.negotiatedProtocol
        record.alpn = alpn.decode("latin-1") if alpn else None
        record.tls_version = connection.get_protocol_version_name()
        try:
            certificate = connection.get_peer_certificate(as_cryptography=True)
            names = leaf_names(certificate, hello.sni, intake.destination.ip)
            context = intake.settings.leaves.contextFor(names, certificate)
        except Exception as e:  # a certificate we cannot mimic must not crash the gateway
            intake.refuse(f"cannot mint a certificate for this origin: {e}")
            return
        self._serveDevice(context, alpn)

    def _serveDevice(self, context: SSL.Context, alpn: bytes | None) -> None:
        intake = self._intake
        device = self._device = TLSEnd("device", alpn=alpn)
        factory = halfCloseableTLSFactory(DeviceTLSCreator(context), False, oneProtocol(device))
        intake.switchTo(factory.buildProtocol(intake.tcp.getPeer()))
        device.handshake.addCallbacks(self._deviceReady, self._deviceFailed)

    def _deviceReady(self, _: object) -> None:
        intake = self._intake
        assert self._device is not None and self._origin is not None
        intake.established()
        settings = intake.settings
        Relay(
            self._device,
            self._origin.end,
            settings.clock,
            settings.idleTimeout,
            observers=settings.observers(),
            onDone=lambda relay: relayFinished(intake, relay),
        ).start()

    def _deviceFailed(self, failure: Failure) -> None:
        intake = self._intake
        if intake.record.outcome != "error":
            intake.record.fail(f"device TLS handshake failed: {sslReason(failure)}")
        self._dropOrigin()
        intake.finish()

