"""One structured audit event per connection."""

from __future__ import annotations

import os
from typing import Any

import attrs
from twisted.logger import Logger

log = Logger(namespace="etpmitm.audit")

_FORMAT = (
    "{client} -> {destination} sni={sni} action={action} outcome={outcome} "
    "reason={reason!r} policy={policy!r} alpn={alpn} up={bytes_up} down={bytes_down} "
    "duration={duration:.3f}s pid={pid}"
)


@attrs.define
class ConnectionRecord:
    """What happened to one device connection; logged once when it ends."""

    client: str
    destination: str
    started: float
    sni: str | None = None
    alpn_offered: tuple[str, ...] = ()
    ech: bool = False
    action: str = "pending"  # intercept | splice | refuse
    outcome: str = "open"  # ok | refused (by policy) | error
    reason: str = ""
    alpn: str | None = None
    tls_version: str | None = None
    origin_verdict: str | None = None
    policy: str | None = None  # why the policy chose the action
    bytes_up: int = 0
    bytes_down: int = 0
    duration: float = 0.0
    pid: int = attrs.field(factory=os.getpid)
    """The process (with ``--workers``, the worker) that handled it."""
    _emitted: bool = False

    def fail(self, reason: str) -> None:
        """Record the first failure; later ones are consequences."""
        if self.outcome != "error":
            self.outcome = "error"
            self.reason = reason

    def refused(self, reason: str) -> None:
        """The policy ended this connection on purpose."""
        self.outcome = "refused"
        self.reason = reason

    def fields(self) -> dict[str, Any]:
        return {
            a.name: getattr(self, a.name)
            for a in attrs.fields(ConnectionRecord)
            if not a.name.startswith("_")
        }

    def emit(self, now: float) -> None:
        """Log the event, once."""
        if self._emitted:
            return
        self._emitted = True
        if self.outcome == "open":
            self.outcome = "ok"
        self.duration = max(0.0, now - self.started)
        fields = self.fields()
        if self.outcome == "ok":
            log.info(_FORMAT, **fields)
        else:
            log.warn(_FORMAT, **fields)
