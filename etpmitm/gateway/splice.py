"""Splice: raw TCP to the original destination, replaying the buffered bytes."""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IProtocol
from twisted.python.failure import Failure

from etpmitm.gateway.intake import Intake
from etpmitm.gateway.origin import connectPlain
from etpmitm.gateway.relay import Relay, RelayEnd
from etpmitm.gateway.stagedone import relayFinished


class Splice:
    """Pass the connection through untouched (no decryption)."""

    def __init__(self, intake: Intake, reason: str | None = None) -> None:
        self._intake = intake
        self._reason = reason
        self._origin = RelayEnd("origin")
        self._connecting: Deferred[IProtocol] | None = None

    def start(self) -> None:
        intake = self._intake
        intake.record.action = "splice"
        if self._reason is not None:
            intake.record.reason = self._reason
        assert intake.destination is not None
        settings = intake.settings
        self._connecting = connectPlain(
            settings.reactor, intake.destination, self._origin, settings.connectTimeout
        )
        self._connecting.addCallbacks(self._connected, self._failed)

    def abort(self) -> None:
        if self._connecting is not None and not self._connecting.called:
            self._connecting.cancel()
        if self._origin.connected:
            self._origin.transport.abortConnection()  # type: ignore[union-attr]

    def _connected(self, _: object) -> None:
        intake = self._intake
        settings = intake.settings
        device = RelayEnd("device")
        intake.switchTo(device)
        intake.established()
        relay = Relay(
            device,
            self._origin,
            settings.clock,
            settings.idleTimeout,
            onDone=lambda relay: relayFinished(intake, relay),
        )
        relay.start()

    def _failed(self, failure: Failure) -> None:
        if not failure.check(CancelledError):
            self._intake.refuse(failure.getErrorMessage())
