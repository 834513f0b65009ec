"""Interception: origin first, then a minted certificate, then the relay."""

from __future__ import annotations

from cryptography import x509
from OpenSSL import SSL
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.python.failure import Failure

from etpmitm.blockpage import BlockResponse
from etpmitm.clienthello import ClientHello
from etpmitm.gateway.asking import (
    LEARNED_BYPASS,
    announceLearned,
    learnedBypass,
    learnedKey,
    policyDecision,
    requestedNames,
)
from etpmitm.gateway.blockstage import PolicyBlock, serveBlockPage
from etpmitm.gateway.devicetls import serveDevice
from etpmitm.gateway.ends import TLSEnd
from etpmitm.gateway.intake import Intake, Stage
from etpmitm.gateway.origin import OriginError, OriginSession, connectTLS
from etpmitm.gateway.relay import Relay
from etpmitm.gateway.splice import Splice
from etpmitm.gateway.sslerrors import sslReason
from etpmitm.gateway.stagedone import relayFinished
from etpmitm.gateway.upstream import OriginCertificate, examine_origin
from etpmitm.mint import name_text, origin_names
from etpmitm.origintrust import OriginVerdict


# Alerts a device sends when it rejects the gateway's certificate (pinning).
_REJECTIONS = ("unknown ca", "bad certificate", "certificate unknown")


class Interception:
    """Decrypt, inspect and re-encrypt one connection.

    1. TLS to the origin with the device's SNI and ALPN offer; judge its
       certificate.  An untrusted origin is blocked with a page, mimicked
       with the untrusted CA, or bypassed, as the policy says: its content
       never reaches the device under a certificate the device trusts.
    2. Serve the device a leaf for the origin's names (cached context),
       replaying its buffered ClientHello; select the origin's ALPN.
    3. Relay.

    Where interception cannot work (the origin wants a client certificate,
    the device rejects the gateway's certificate) the pair is learned and
    later connections are spliced.
    """

    def __init__(self, intake: Intake, hello: ClientHello, decided: bool = True) -> None:
        self._intake = intake
        self._hello = hello
        self._decided = decided
        self._connecting: Deferred[OriginSession] | None = None
        self._origin: OriginSession | None = None
        self._device: TLSEnd | None = None
        self._instead: Stage | None = None
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
            settings.originSessions,
        )
        self._connecting.addCallbacks(self._originReady, self._originFailed)

    def abort(self) -> None:
        self._aborted = True
        if self._connecting is not None and not self._connecting.called:
            self._connecting.cancel()
        self._dropOrigin()
        if self._instead is not None:
            self._instead.abort()

    def _dropOrigin(self) -> None:
        if self._origin is not None and self._origin.tls.connected:
            self._origin.tls.abortConnection()

    def _handOver(self, stage: Stage) -> None:
        """Give up interception for ``stage`` (a splice or a block)."""
        self._dropOrigin()
        self._instead = stage
        stage.start()

    # -- the origin ----------------------------------------------------------

    def _originFailed(self, failure: Failure) -> None:
        if failure.check(CancelledError) or self._aborted:
            return
        error = failure.value
        if isinstance(error, OriginError) and error.certificateRequested:
            self._learnClientCertificate()
            return
        if isinstance(error, OriginError) and error.kind == "old-protocol":
            self._untrusted(OriginVerdict(False, "old-protocol", str(error)), None)
            return
        self._intake.refuse(failure.getErrorMessage())

    def _originReady(self, origin: OriginSession) -> None:
        self._origin = origin
        if self._aborted:
            self._dropOrigin()
            return
        intake, hello = self._intake, self._hello
        if origin.record.certificateRequested:
            self._learnClientCertificate()
            return
        assert intake.destination is not None
        settings = intake.settings
        verdict, facts = examine_origin(
            origin.connection, origin.record, hello.sni, intake.destination.ip, settings.originCertificates
        )
        intake.record.origin_verdict = verdict.kind
        if facts is None:  # anonymous suites are not offered; be safe anyway
            intake.refuse(verdict.reason)
            return
        if not self._decided and not self._decide(facts.certificate):
            return
        if not verdict.trusted:
            self._untrusted(verdict, facts)
            return
        settings.originSessions.remember(origin)
        self._mimic(facts, trusted=True)

    def _decide(self, certificate: x509.Certificate) -> bool:
        """Decide now that the certificate's names are known; False if handed over."""
        intake, hello = self._intake, self._hello
        names = [name_text(n) for n in origin_names(certificate)]
        decision = policyDecision(intake, hello, names)
        if decision.action == "bypass":
            self._handOver(Splice(intake, "bypassed by policy"))
        elif decision.action == "block":
            self._handOver(PolicyBlock(intake, hello, f"blocked by policy: {decision.reason}"))
        elif learnedBypass(intake, hello):
            self._handOver(Splice(intake, LEARNED_BYPASS))
        else:
            return True
        return False

    def _learnClientCertificate(self) -> None:
        """The origin wants a client certificate, which only the device has."""
        intake = self._intake
        key = learnedKey(intake, self._hello)
        why = "origin requests a client certificate"
        if intake.settings.policy.learned.learn(key, intake.settings.clock.seconds(), why):
            announceLearned(intake, key, why)
        self._handOver(Splice(intake, f"bypassed: {why}"))

    def _untrusted(self, verdict: OriginVerdict, facts: OriginCertificate | None) -> None:
        """The origin failed verification: do what ``[origin] untrusted`` says."""
        intake, hello = self._intake, self._hello
        mode = intake.settings.policy.current.untrusted
        reason = f"origin certificate not trusted ({verdict.kind}): {verdict.reason}"
        intake.record.fail(reason)
        if mode == "bypass":
            self._handOver(Splice(intake, f"{reason}; bypassed by policy"))
            return
        if mode == "untrusted" and facts is not None and intake.settings.untrustedLeaves is not None:
            self._mimic(facts, trusted=False)
            return
        # Block: a page, under a certificate the device trusts, or under the
        # untrusted CA when the policy says the browser must warn.
        self._dropOrigin()
        intake.record.action = "block"
        host, names = requestedNames(intake, hello)
        leaves = intake.settings.leaves
        if mode == "untrusted" and intake.settings.untrustedLeaves is not None:
            leaves = intake.settings.untrustedLeaves
        context = leaves.contextFor(names, None)
        serveBlockPage(intake, hello, context, BlockResponse.render(host, reason, "untrusted-origin"))

    # -- the device ----------------------------------------------------------

    def _mimic(self, facts: OriginCertificate, trusted: bool) -> None:
        intake = self._intake
        origin = self._origin
        assert origin is not None
        alpn = origin.tls.negotiatedProtocol
        intake.record.alpn = alpn.decode("latin-1") if alpn else None
        intake.record.tls_version = origin.connection.get_protocol_version_name()
        leaves = intake.settings.leaves if trusted else intake.settings.untrustedLeaves
        assert leaves is not None
        if not facts.names:
            intake.refuse("cannot mint a certificate for this origin: it names nothing usable")
            return
        try:
            context = leaves.contextFor(facts.names, facts.certificate)
        except Exception as e:  # a certificate we cannot mimic must not crash the gateway
            intake.refuse(f"cannot mint a certificate for this origin: {e}")
            return
        self._serveDevice(context, alpn)

    def _serveDevice(self, context: SSL.Context, alpn: bytes | None) -> None:
        device = self._device = TLSEnd("device", alpn=alpn)
        serveDevice(self._intake, context, device)
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
        detail = sslReason(failure)
        if intake.record.outcome != "error":
            intake.record.fail(f"device TLS handshake failed: {detail}")
        if any(text in detail for text in _REJECTIONS):
            self._pinningFailure(f"device rejected the gateway's certificate ({detail})")
        elif failure.check(ConnectionDone, ConnectionLost):
            self._pinningFailure("device hung up on the gateway's certificate")
        self._dropOrigin()
        intake.finish()

    def _pinningFailure(self, why: str) -> None:
        """Count a failure towards bypassing this (SNI, destination); learned ones are logged."""
        intake = self._intake
        if intake.record.origin_verdict != "ok":
            return  # an untrusted origin's warning is meant to be refused
        settings = intake.settings
        key = learnedKey(intake, self._hello)
        if settings.policy.learned.record_failure(key, settings.clock.seconds(), why):
            announceLearned(intake, key, why)
