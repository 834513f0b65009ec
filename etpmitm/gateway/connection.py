"""One device connection's life, from the first byte to its audit event.

A :class:`Connection` is made for every accepted socket.  The Twisted
protocols around it (the intake on the socket, a :class:`~.layers.Side` in
each TLS or TCP end, the block page server) only report events; every
decision and every change of state happens here, through :meth:`_go`, which
allows only the moves in :data:`TRANSITIONS`::

    READING_HELLO ──hello──> DECIDING ──intercept──> CONNECTING_ORIGIN ──trusted──> HANDSHAKING_DEVICE
          │                     │  │                  │    │    │                         │
          │                     │  └──bypass, non-TLS─┼──> SPLICING ──connected──┐        │ handshake done
          │                     └──block────────────┼──> REFUSING (page/alert)  │        v
          │                                         └─(names: block/bypass;     └───> RELAYING ──both ends gone──┐
          │                                            untrusted origin)                  │ idle timeout        │
          └──────────── any failure, timeout or refusal ──────────> CLOSING <─────────────┘                     │
                                                                      │ every socket gone (or grace expired)    │
                                                                      v                                         │
                                                                     DONE  <─────────────────────────────────────┘
                                                            (the one audit event)

The origin comes first: the device gets no byte before the origin's
certificate has been judged.  Once both handshakes are done a layer
(:class:`~etpmitm.interfaces.ILayer`, by default the opaque relay) sits
between the decrypted ends in a :class:`~.layers.Pipe`.

One timer serves every state: the handshake deadline until relaying, the
idle timeout while relaying, and the grace period while closing (after
which everything still open is reset, so no socket is left behind).
"""

from __future__ import annotations

import enum
from typing import Any, Literal, Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IProtocol, ITCPTransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from etpmitm import metrics
from etpmitm.addresses import unmap
from etpmitm.audit import Action, ConnectionRecord
from etpmitm.blockpage import BlockResponse
from etpmitm.clienthello import ClientHello, NotTLS
from etpmitm.gateway.device import deviceTLS
from etpmitm.gateway.layers import OpaqueRelay, Pipe, Side
from etpmitm.gateway.origdst import Destination
from etpmitm.gateway.proxyheader import ProxyHeader
from etpmitm.gateway.origin import (
    OriginCertificate,
    OriginError,
    OriginTLS,
    VerificationRecord,
    connectPlain,
    connectTLS,
    examine_origin,
    explain,
    sslReason,
)
from etpmitm.gateway.refuse import ACCESS_DENIED, blockPageServer
from etpmitm.http import RequestHead, RequestVerdict
from etpmitm.gateway.settings import GatewaySettings, LeafContexts
from etpmitm.learning import Key, Learned, bypass_key
from etpmitm.mint import LeafName, name_text, origin_names
from etpmitm.origintrust import OriginVerdict
from etpmitm.threat.judge import decide_connection, decide_request, needs_names

log = Logger()


class State(enum.Enum):
    READING_HELLO = "reading hello"
    DECIDING = "deciding"
    CONNECTING_ORIGIN = "connecting to the origin"
    SPLICING = "connecting the splice"
    HANDSHAKING_DEVICE = "handshaking with the device"
    REFUSING = "refusing"
    RELAYING = "relaying"
    CLOSING = "closing"
    DONE = "done"


S = State
TRANSITIONS: dict[State, frozenset[State]] = {
    S.READING_HELLO: frozenset({S.DECIDING, S.CLOSING}),
    S.DECIDING: frozenset({S.CONNECTING_ORIGIN, S.SPLICING, S.REFUSING, S.CLOSING}),
    S.CONNECTING_ORIGIN: frozenset({S.HANDSHAKING_DEVICE, S.SPLICING, S.REFUSING, S.CLOSING}),
    S.SPLICING: frozenset({S.RELAYING, S.CLOSING}),
    S.HANDSHAKING_DEVICE: frozenset({S.RELAYING, S.CLOSING}),
    S.REFUSING: frozenset({S.CLOSING}),
    S.RELAYING: frozenset({S.CLOSING}),
    S.CLOSING: frozenset({S.DONE}),
    S.DONE: frozenset(),
}
"""Every move a connection can make; anything else is a bug."""

CLOSE_GRACE = 5.0
"""Seconds a polite close may take before the sockets are reset."""

LEARNED_BYPASS = "learned bypass (interception failed here before)"

# Alerts a device sends when it rejects the gateway's certificate (pinning).
_REJECTIONS = ("unknown ca", "bad certificate", "certificate unknown")

Choice = tuple[Literal["intercept", "splice", "block"], str]


class DeviceSocket(TypingProtocol):
    """The accepted socket, as the intake offers it."""

    @property
    def tcp(self) -> ITCPTransport: ...

    @property
    def bufferedSize(self) -> int: ...

    proxied: ProxyHeader | None
    """What a balancer's PROXY header said (device and destination), if the listener takes one."""

    def handOver(self, protocol: IProtocol) -> None:
        """Give the socket to ``protocol``, replaying the bytes buffered so far."""

    def hungUp(self) -> bool:
        """Whether the device's FIN or reset already waits, unread, on the socket."""


class Connection:
    """One device connection: its context, its state, and its audit record."""

    def __init__(self, settings: GatewaySettings, device: DeviceSocket) -> None:
        self.settings = settings
        self.state = State.READING_HELLO
        self._device = device
        peer = device.tcp.getPeer()
        self.record = ConnectionRecord(
            client=f"{peer.host}:{peer.port}",
            destination="?",
            started=settings.clock.seconds(),
        )
        self.client = unmap(peer.host)
        if device.proxied is not None:  # behind a balancer: the device is the header's source
            source = device.proxied.source
            self.record.client, self.client = f"{source.ip}:{source.port}", source.ip
        self.destination: Destination | None = None
        self.hello: ClientHello | None = None
        self._timer: IDelayedCall | None = None
        self._open: set[object] = {device}
        """The device socket and origin sides not yet lost: DONE waits for them."""
        self._connecting: Deferred[Any] | None = None
        self._decided = True
        self._origin: OriginTLS | None = None
        self._originSide: Side | None = None
        self._deviceSide: Side | None = None
        self._pipe: Pipe | None = None
        self._resumable: OriginTLS | None = None
        self._aborted = False
        self._phaseStarted = 0.0
        """When the origin's or the device's handshake began (for the metrics)."""

    # -- the one place where state changes ----------------------------------------

    def _go(self, state: State) -> None:
        if state not in TRANSITIONS[self.state]:
            raise AssertionError(f"connection cannot go from {self.state.name} to {state.name}")
        self.state = state
        if state is S.CLOSING:
            self._restartTimer(CLOSE_GRACE)
        elif state is S.DONE:
            self._cancelTimer()
            self._finish()

    # -- events from the intake ------------------------------------------------------

    def accepted(self) -> None:
        """The socket was accepted: where was it going?"""
        tcp = self._device.tcp
        if self._device.proxied is not None:
            dst = self._device.proxied.destination
            self.record.destination = str(dst)
            if dst.ip == unmap(tcp.getPeer().host):
                self._refuse(f"addressed to the balancer itself ({dst}): its PROXY header names no original destination")
                return
        else:
            try:
                dst = self.settings.originalDestination(tcp)
            except OSError as e:
                self._refuse(f"not redirected: no original destination ({e.strerror})")
                return
            self.record.destination = str(dst)
            host = tcp.getHost()
            if dst.port == host.port and dst.ip == unmap(host.host):
                self._refuse("not redirected: addressed to the gateway's own listening address")
                return
        if self.settings.isLocal(dst.ip):
            self._refuse(f"addressed to the gateway itself ({dst}): it relays to no local service")
            return
        self.destination = dst
        self._restartTimer(self.settings.handshakeTimeout)

    def helloRead(self, result: ClientHello | NotTLS) -> None:
        """The first bytes were judged: a whole ClientHello, or not TLS."""
        self._go(S.DECIDING)
        metrics.current.handshake("client_hello", self.settings.clock.seconds() - self.record.started)
        if isinstance(result, NotTLS) and result.malformed:
            # Broken TLS is refused, never passed through uninspected.
            self._refuse(f"malformed ClientHello: {result.reason}")
            return
        if isinstance(result, NotTLS):
            self.record.reason = f"not TLS: {result.reason}"
        else:
            self.hello = result
            self.record.sni = result.sni
            self.record.alpn_offered = tuple(p.decode("latin-1") for p in result.alpn)
            self.record.ech = result.has_ech
        try:
            self._decide()
        except Exception:
            log.failure("etpmitm bug while deciding a connection")
            if self.state is not S.CLOSING:
                self._refuse("internal error (logged)")

    def deviceReadEnded(self) -> None:
        """The device sent FIN before its socket was handed over."""
        if self.state is S.READING_HELLO:
            self._refuse(f"client closed before a complete ClientHello ({self._device.bufferedSize} bytes)")
        elif self.state is not S.CLOSING:
            self._refuse("client closed while the gateway was connecting to the origin")

    def deviceLost(self, reason: Failure) -> None:
        """The device's socket is gone (before a :class:`Side` took it, or after a block page)."""
        self._open.discard(self._device)
        if self.state not in (S.REFUSING, S.CLOSING):
            self._refuse(f"client went away: {reason.getErrorMessage()}")
        self._maybeDone()

    # -- events from the sides -----------------------------------------------------------

    def sideHandshakeDone(self, side: Side) -> None:
        if side is self._originSide and self.state is S.CONNECTING_ORIGIN:
            self._originReady()
        elif side is self._deviceSide and self.state is S.HANDSHAKING_DEVICE:
            metrics.current.handshake("device", self.settings.clock.seconds() - self._phaseStarted)
            self._relay()

    def sideData(self, side: Side, data: bytes) -> None:
        if self._pipe is not None:
            self._pipe.received(side, data)
        else:
            side.pending.append(data)

    def sideEnded(self, side: Side) -> None:
        if self._pipe is not None:
            self._pipe.ended(side)

    def sideLost(self, side: Side, reason: Failure) -> None:
        self._open.discard(side)
        if side is self._deviceSide:
            self._open.discard(self._device)
        if self._resumable is not None and side is self._originSide:
            self.settings.originSessions.store(self._resumable)
        if self._pipe is not None:
            self._pipe.lost(side, reason)
        elif side is self._originSide and self.state is S.CONNECTING_ORIGIN:
            self._originFailed(reason)
        elif side is self._originSide and self.state is S.HANDSHAKING_DEVICE:
            self._refuse("origin closed before the device's handshake finished")
        elif side is self._deviceSide and self.state is S.HANDSHAKING_DEVICE:
            self._deviceFailed(reason)
        self._maybeDone()

    # -- events from the layer ----------------------------------------------------------

    def layerClose(self, reason: str) -> None:
        if self.state is S.RELAYING:
            self.record.reason = reason
            self._go(S.CLOSING)
            self._closeAll()

    def layerAbort(self, reason: str) -> None:
        if self.state is not S.CLOSING and self.state is not S.DONE:
            self.record.fail(reason)
            self._go(S.CLOSING)
        self._abortAll()

    # -- deciding --------------------------------------------------------------------

    def _decide(self) -> None:
        policy = self.settings.policy.current
        hello, record = self.hello, self.record
        if hello is None:
            if policy.non_tls == "close":
                self._close("close", f"{record.reason}; closed by policy (traffic.non_tls = close)")
            else:
                self._splice(None)
            return
        if hello.has_ech:
            log.info("ech: {client} -> {dst} outer SNI {sni}", client=record.client, dst=record.destination, sni=hello.sni)
            if policy.ech == "close":
                self._close("close", "encrypted_client_hello; closed by policy (traffic.ech = close)")
                return
        dst = self._destination()
        lists = self.settings.policy.lists
        if needs_names(policy, lists, sni=hello.sni, destination=dst.ip, port=dst.port, client=self.client, ech=hello.has_ech):
            self._connectOrigin(decided=False)  # decide once the certificate's names are known
            return
        action, reason = self._choose()
        if action == "intercept":
            self._connectOrigin(decided=True)
        else:
            self._act((action, reason))

    def _choose(self, names: tuple[str, ...] = ()) -> Choice:
        """The one copy of the decision: policy rules, then learned bypasses."""
        hello, dst = self.hello, self._destination()
        assert hello is not None
        holder = self.settings.policy
        decision = decide_connection(
            holder.current, holder.lists,
            sni=hello.sni, destination=dst.ip, port=dst.port, client=self.client, names=names, ech=hello.has_ech,
        )
        self.record.policy = decision.reason
        self.record.category = decision.category
        if decision.action == "bypass":
            return "splice", "bypassed by policy"
        if decision.action == "block":
            return "block", f"blocked by policy: {decision.reason}"
        if decision.category is None and self.settings.policy.learned.is_bypassed(self._learnedKey(), self.client, self.settings.clock.seconds()):
            return "splice", LEARNED_BYPASS
        return "intercept", ""

    def _act(self, choice: Choice) -> None:
        """Splice or block instead of intercepting."""
        action, reason = choice
        self._dropOrigin()
        if action == "splice":
            self._splice(reason)
        else:
            self.record.action = "block"
            self.record.refused(reason)
            page = BlockResponse.render(self._requestedHost(), reason, "policy", status=403, category=self.record.category)
            self._serveBlockPage(self.settings.leaves, page)

    # -- splicing ------------------------------------------------------------------------

    def _splice(self, reason: str | None) -> None:
        self._go(S.SPLICING)
        self.record.action = "splice"
        if reason is not None:
            self.record.reason = reason
        side = Side("origin", self)
        settings = self.settings
        connecting = connectPlain(settings.reactor, self._destination(), side, settings.connectTimeout, settings.relayBuffer)
        self._connecting = connecting
        connecting.addCallbacks(lambda _: self._spliceConnected(side), self._originFailed)

    def _spliceConnected(self, origin: Side) -> None:
        self._connecting = None
        self._open.add(origin)
        self._originSide = origin
        if self.state is not S.SPLICING:
            origin.transport.abortConnection()  # type: ignore[union-attr]
            return
        device = self._deviceSide = Side("device", self)
        self._device.handOver(device)
        self._relay()

    # -- intercepting: the origin first ------------------------------------------------------

    def _connectOrigin(self, decided: bool) -> None:
        self._go(S.CONNECTING_ORIGIN)
        self.record.action = "intercept"
        self._decided = decided
        self._phaseStarted = self.settings.clock.seconds()
        hello, settings = self.hello, self.settings
        assert hello is not None
        side = self._originSide = Side("origin", self)
        connecting = connectTLS(
            settings.reactor, self._destination(), settings.upstream, hello.sni, hello.alpn,
            settings.connectTimeout, side, settings.originSessions, settings.relayBuffer,
        )
        self._connecting = connecting
        connecting.addCallbacks(self._originConnected, self._originFailed)

    def _originConnected(self, origin: OriginTLS) -> None:
        self._connecting = None
        self._open.add(self._originSide)
        self._origin = origin
        if self.state is not S.CONNECTING_ORIGIN:
            origin.tls.abortConnection()

    def _originFailed(self, failure: Failure) -> None:
        """TCP or TLS to the origin failed (for a splice: TCP)."""
        self._connecting = None
        if self.state not in (S.CONNECTING_ORIGIN, S.SPLICING):
            return  # cancelled on the way out
        error = explain(failure, self._origin.record if self._origin is not None else VerificationRecord())
        if not isinstance(error, OriginError):
            self._refuse(f"origin connection cancelled: {failure.getErrorMessage()}")
        elif error.certificateRequested and self.state is S.CONNECTING_ORIGIN:
            self._learnClientCertificate()
        elif error.kind == "old-protocol" and self.state is S.CONNECTING_ORIGIN:
            self._untrusted(OriginVerdict(False, "old-protocol", str(error)), None)
        else:
            self._refuse(str(error))

    def _originReady(self) -> None:
        """The origin's handshake is done: judge it before the device sees anything."""
        origin, side, hello = self._origin, self._originSide, self.hello
        assert origin is not None and side is not None and hello is not None
        origin.tls.pauseProducing()  # its bytes wait until relaying
        metrics.current.handshake("origin", self.settings.clock.seconds() - self._phaseStarted)
        if origin.record.certificateRequested:
            self._learnClientCertificate()
            return
        settings = self.settings
        verdict, facts = examine_origin(
            origin.connection, origin.record, hello.sni, self._destination().ip, settings.originCertificates
        )
        self.record.origin_verdict = verdict.kind
        if facts is None:  # anonymous suites are not offered; be safe anyway
            self._refuse(verdict.reason)
            return
        if not self._decided:
            names = tuple(name_text(n) for n in origin_names(facts.certificate))
            choice = self._choose(names)
            if choice[0] != "intercept":
                self._act(choice)
                return
        if not verdict.trusted:
            self._untrusted(verdict, facts)
            return
        self._resumable = origin
        self._mimic(facts, trusted=True)

    def _learnClientCertificate(self) -> None:
        """The origin wants a client certificate, which only the device has."""
        why = "origin requests a client certificate"
        learned = self.settings.policy.learned.learn(self._learnedKey(), self.settings.clock.seconds(), why)
        if learned is not None:
            self._announceLearned(learned)
        self._act(("splice", f"bypassed: {why}"))

    def _untrusted(self, verdict: OriginVerdict, facts: OriginCertificate | None) -> None:
        """The origin failed verification: do what ``[origin] untrusted`` says."""
        settings = self.settings
        mode = settings.policy.current.untrusted
        reason = f"origin certificate not trusted ({verdict.kind}): {verdict.reason}"
        self.record.fail(reason)
        if mode == "bypass":
            self._act(("splice", f"{reason}; bypassed by policy"))
            return
        untrusted = settings.untrustedLeaves if mode == "untrusted" else None
        if untrusted is not None and facts is not None:
            self._mimic(facts, trusted=False)
            return
        # Block: a page, under a certificate the device trusts, or under the
        # untrusted CA when the policy says the browser must warn.
        self._dropOrigin()
        self.record.action = "block"
        response = BlockResponse.render(self._requestedHost(), reason, "untrusted-origin")
        self._serveBlockPage(untrusted or settings.leaves, response)

    # -- intercepting: the device ------------------------------------------------------------

    def _mimic(self, facts: OriginCertificate, trusted: bool) -> None:
        """Serve the device a leaf for the origin's names, with the origin's ALPN."""
        origin = self._origin
        assert origin is not None
        alpn = origin.alpn
        self.record.alpn = alpn.decode("latin-1") if alpn else None
        self.record.tls_version = origin.connection.get_protocol_version_name()
        leaves = self.settings.leaves if trusted else self.settings.untrustedLeaves
        assert leaves is not None
        if not facts.names:
            self._refuse("cannot mint a certificate for this origin: it names nothing usable")
            return
        try:
            context = leaves.contextFor(facts.names, facts.certificate)
        except Exception as e:  # a certificate we cannot mimic must not crash the gateway
            self._refuse(f"cannot mint a certificate for this origin: {e}")
            return
        if self._device.hungUp():
            # It left while the gateway was busy with the origin (the intake
            # reads nothing meanwhile): it never sees the certificate, so its
            # leaving is no evidence of pinning.
            self._refuse("client closed while the gateway was connecting to the origin")
            return
        self._go(S.HANDSHAKING_DEVICE)
        self._phaseStarted = self.settings.clock.seconds()
        device = self._deviceSide = Side("device", self, alpn=alpn)
        self._device.handOver(deviceTLS(context, device))

    def _deviceFailed(self, reason: Failure) -> None:
        detail = sslReason(reason)
        self.record.fail(f"device TLS handshake failed: {detail}")
        if any(text in detail for text in _REJECTIONS):
            self._pinningFailure(f"device rejected the gateway's certificate ({detail})")
        elif reason.check(ConnectionDone, ConnectionLost):
            self._pinningFailure("device hung up on the gateway's certificate")
        self._go(S.CLOSING)
        self._abortAll()

    def _pinningFailure(self, why: str) -> None:
        """Count a failure towards bypassing this (SNI, destination)."""
        if self.record.origin_verdict != "ok":
            return  # an untrusted origin's warning is meant to be refused
        learned = self.settings.policy.learned.record_failure(
            self._learnedKey(), self.client, self.settings.clock.seconds(), why
        )
        if learned is not None:
            self._announceLearned(learned)

    # -- relaying -------------------------------------------------------------------------

    def _relay(self) -> None:
        device, origin = self._deviceSide, self._originSide
        assert device is not None and origin is not None
        self._go(S.RELAYING)
        layer = OpaqueRelay() if self.record.action == "splice" else self.settings.layerFor(self.record, self._judge)
        self._pipe = Pipe(self, device, origin, layer, self.settings.clock)
        self._pipe.start()
        if self.state is S.RELAYING:
            self._restartTimer(self.settings.idleTimeout)

    def _judge(self, head: RequestHead) -> RequestVerdict:
        """What the policy in force says of one request on this connection."""
        dst = self._destination()
        holder = self.settings.policy
        return decide_request(
            holder.current, holder.lists, head, sni=self.record.sni, destination=dst.ip, port=dst.port, client=self.client
        )

    def _idleCheck(self) -> None:
        assert self._pipe is not None
        idle = self.settings.clock.seconds() - self._pipe.lastActivity
        if idle < self.settings.idleTimeout:
            self._restartTimer(self.settings.idleTimeout - idle)
            return
        before = self.record.reason
        self.record.reason = f"idle timeout: no bytes for {self.settings.idleTimeout:g}s" + (f" ({before})" if before else "")
        self._go(S.CLOSING)
        self._closeAll()

    # -- refusing ------------------------------------------------------------------------

    def _serveBlockPage(self, leaves: LeafContexts, response: BlockResponse) -> None:
        """A page over the device's TLS, or an alert if it speaks no HTTP.

        The handshake timer keeps running: a device that never asks for the
        page is cut off by it.
        """
        hello = self.hello
        assert hello is not None
        self._go(S.REFUSING)
        server = blockPageServer(hello, response, self._pageSent, self.deviceLost)
        if server is None:
            reason = f"{self.record.reason}; device offered no HTTP protocol"
            self.record.refused(reason)
            self.record.reason = reason
            self._device.tcp.write(ACCESS_DENIED)
            self._go(S.CLOSING)
            self._device.tcp.loseConnection()
            return
        context = leaves.contextFor(self._requestedNames(), None)
        self._device.handOver(deviceTLS(context, server))

    def _pageSent(self) -> None:
        """The page is out and its TLS is closing: the device has the grace period to finish."""
        if self.state is S.REFUSING:
            self._go(S.CLOSING)

    def _close(self, action: Action, reason: str) -> None:
        """Refuse by policy: FIN, with the reason in the audit log."""
        self.record.action = action
        self.record.refused(reason)
        self._go(S.CLOSING)
        self._device.tcp.loseConnection()

    def _refuse(self, reason: str) -> None:
        """End this connection now (reset), as an error with ``reason``."""
        self.record.fail(reason)
        self.record.action = self.record.action or "refuse"
        if self.state is not S.CLOSING and self.state is not S.DONE:
            self._go(S.CLOSING)
        self._abortAll()

    # -- closing -------------------------------------------------------------------------

    def _closeAll(self) -> None:
        if self._pipe is not None:
            self._pipe.shutdown()
        else:
            self._device.tcp.loseConnection()

    def _abortAll(self) -> None:
        self._aborted = True
        if self._connecting is not None:
            self._connecting.cancel()
        if self._pipe is not None:
            self._pipe.abortBoth()
        self._dropOrigin()
        if self._device in self._open:
            self._device.tcp.abortConnection()
        self._maybeDone()

    def _dropOrigin(self) -> None:
        """Abandon the origin connection (for a splice, a block, or an ending)."""
        side = self._originSide
        if side is not None and side.connected:
            side.transport.abortConnection()  # type: ignore[union-attr]
        self._resumable = None

    def _maybeDone(self) -> None:
        if self._open or self._connecting is not None or self.state is S.DONE:
            return
        if self.state is not S.CLOSING:
            self._go(S.CLOSING)
        self._go(S.DONE)

    def _finish(self) -> None:
        """Close the books: byte counts, the relay's verdict, the one audit event."""
        record, pipe = self.record, self._pipe
        if pipe is not None:
            record.bytes_up, record.bytes_down = pipe.device.received, pipe.sentToDevice
            if pipe.error is not None:
                record.fail(pipe.error)
            elif pipe.remark is not None and not record.reason:
                record.reason = pipe.remark
        record.emit(self.settings.clock.seconds())

    # -- the timer -----------------------------------------------------------------------

    def _restartTimer(self, seconds: float) -> None:
        self._cancelTimer()
        self._timer = self.settings.clock.callLater(seconds, self._timerFired)

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timerFired(self) -> None:
        self._timer = None
        if self.state is S.RELAYING:
            self._idleCheck()
        elif self.state is S.CLOSING and not self._aborted:
            self._abortAll()
            if self._open:
                self._restartTimer(CLOSE_GRACE)
        elif self.state is S.CLOSING:
            log.warn("connection from {client}: sockets did not report closing; ending it", client=self.record.client)
            self._open.clear()
            self._go(S.DONE)
        else:
            what = "ClientHello" if self.state is S.READING_HELLO else "handshakes"
            self._refuse(f"handshake timeout: no complete {what} within {self.settings.handshakeTimeout:g}s")

    # -- facts ----------------------------------------------------------------------------

    def _destination(self) -> Destination:
        assert self.destination is not None
        return self.destination

    def _requestedHost(self) -> str:
        """The host the device asked for, for a page: the SNI, or the destination address."""
        return self.record.sni or str(self._destination().ip)

    def _requestedNames(self) -> tuple[LeafName, ...]:
        """The names for a page's leaf: the SNI, or the destination address."""
        sni = self.record.sni
        return (sni,) if sni else (self._destination().ip,)

    def _learnedKey(self) -> Key:
        dst = self._destination()
        return bypass_key(self.record.sni, dst.ip, dst.port)

    def _announceLearned(self, learned: Learned) -> None:
        """Log a bypass just learned, and share it with the other workers."""
        log.info("{learned}", learned=learned.describe())
        self.settings.shareLearned(learned)
