"""Closing the books on a relayed connection."""

from __future__ import annotations

from etpmitm.gateway.intake import Intake
from etpmitm.gateway.relay import Relay


def relayFinished(intake: Intake, relay: Relay) -> None:
    """Both sides are closed: record the byte counts and log the event."""
    record = intake.record
    record.bytes_up = relay.device.received
    record.bytes_down = relay.origin.received
    if relay.idled:
        record.reason = record.reason or "idle timeout"
    elif relay.error is not None:
        record.fail(relay.error)
    elif relay.note is not None:
        record.reason = record.reason or relay.note
    intake.finish()
