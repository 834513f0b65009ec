"""One structured audit event per connection.

The words are fixed (:data:`Action`, :data:`Outcome`) and documented in the
README.  Every field a device or an origin controls is escaped, so that no
peer can forge a line or write control characters into the log.
"""

from __future__ import annotations

import itertools
import os
from typing import Any, Literal

import attrs
from twisted.logger import Logger

from etpmitm import metrics

log = Logger(namespace="etpmitm.audit")
_ids = itertools.count(1)
_ended = 0
_started = 0


def ended() -> int:
    """How many connections this process has audited (ended) so far."""
    return _ended


def open_now() -> int:
    """Connections this process has begun (made a record for) and not yet audited."""
    return _started - _ended

Action = Literal["intercept", "splice", "block", "close", "refuse"]
"""intercept: decrypted and relayed; splice: passed through as raw TCP;
block: answered with a block page or alert; close: closed by policy
(non-TLS or ECH); refuse: ended before a decision (not redirected, malformed,
timed out, went away) or after a failure on the way to one."""

Outcome = Literal["ok", "refused", "error"]
"""ok: ended normally; refused: ended on purpose by policy; error: something failed."""

_FORMAT = (
    "{client} -> {destination} sni={sni_text} action={action} outcome={outcome} "
    "reason={reason!r} policy={policy!r} alpn={alpn_text} up={bytes_up} down={bytes_down} "
    "duration={duration_text}s category={category_text} id={id} pid={pid}"
)


def token(value: str | None) -> str:
    """``value`` as one log-safe word: anything but printable ASCII other than
    backslash, quotes and space is written as ``\\xNN`` (or ``\\uNNNN``)."""
    if value is None:
        return "None"
    if value.isascii() and value.isprintable() and not any(c in value for c in ' \\"\''):
        return value
    return "".join(c if c.isascii() and c.isprintable() and c not in ' \\"\'' else _escape(c) for c in value)


def _escape(c: str) -> str:
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


@attrs.define
class ConnectionRecord:
    """What happened to one device connection; logged once when it ends."""

    client: str
    destination: str
    started: float
    sni: str | None = None
    alpn_offered: tuple[str, ...] = ()
    ech: bool = False
    action: Action | None = None
    outcome: Outcome | None = None
    """None while nothing has gone wrong; ``ok`` when logged that way."""
    reason: str = ""
    alpn: str | None = None
    tls_version: str | None = None
    origin_verdict: str | None = None
    policy: str | None = None
    """Why the policy chose the action."""
    bytes_up: int = 0
    bytes_down: int = 0
    duration: float = 0.0
    category: str | None = None
    """The threat list that matched (:mod:`etpmitm.threat`), if any."""
    pid: int = attrs.field(factory=os.getpid)
    """The process (with ``--workers``, the worker) that handled it."""
    id: str = attrs.field(factory=lambda: f"{os.getpid():x}-{next(_ids):x}")
    """Unique per connection on this host: the per-request events carry it."""
    _emitted: bool = False

    def __attrs_post_init__(self) -> None:
        global _started
        _started += 1
        metrics.current.connectionOpened()

    def fail(self, reason: str) -> None:
        """Record the first failure; later ones are consequences."""
        if self.outcome != "error":
            self.outcome = "error"
            self.reason = reason

    def refused(self, reason: str) -> None:
        """The policy ended this connection on purpose."""
        if self.outcome != "error":
            self.outcome = "refused"
            self.reason = reason

    def fields(self) -> dict[str, Any]:
        return {a.name: getattr(self, a.name) for a in attrs.fields(ConnectionRecord) if not a.name.startswith("_")}

    def emit(self, now: float) -> None:
        """Log the event, once."""
        global _ended
        if self._emitted:
            return
        self._emitted = True
        _ended += 1
        self.action = self.action or "refuse"
        self.outcome = self.outcome or "ok"
        self.duration = max(0.0, now - self.started)
        fields = self.fields()
        # The fields stay as they are (--audit-log writes them as JSON); the
        # line gets log-safe words.
        fields["sni_text"], fields["alpn_text"] = token(self.sni), token(self.alpn)
        fields["category_text"] = token(self.category)
        # Formatted here: a format spec does not survive a worker's event
        # passing to the master as JSON (Twisted flattens it unformatted).
        fields["duration_text"] = f"{self.duration:.3f}"
        if self.outcome == "ok":
            log.info(_FORMAT, **fields)
        else:
            log.warn(_FORMAT, **fields)
        metrics.current.connectionEnded(self)
