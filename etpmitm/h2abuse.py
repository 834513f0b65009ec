"""Sans-IO limits on the HTTP/2 abuse patterns a device may try on the gateway.

The HTTP/2 layer feeds a :class:`FloodGuard` what the device does (stream
resets, PINGs, SETTINGS, frames that carry nothing) with the time; each call
returns None, or the reason the connection must end (GOAWAY with
ENHANCE_YOUR_CALM).  Each pattern has a leaky bucket (:class:`Budget`): a
``burst`` of events at once, refilled at ``rate`` per second, so that only a
sustained flood trips it:

- **Rapid reset** (CVE-2023-44487): every RST_STREAM from the device costs
  one; every request that completes gives one back (``completedCredit``),
  so resets are judged against the work the device lets finish.  The default
  burst, 200, is twice the 100 streams a device may have open: a browser that
  cancels every request of a page, twice, is fine; h2load resets nothing.
  Rapid-reset tools send thousands a second.
- **PING flood** (CVE-2019-9512) and **SETTINGS flood** (CVE-2019-9515): h2
  answers each with an ACK by itself.  Browsers send a SETTINGS or two per
  connection and a PING now and then (gRPC keepalives every few seconds).
- **Empty frames** (CVE-2019-9518): DATA without data and without
  END_STREAM, and PRIORITY frames (h2 keeps no priority tree, but each costs
  an event) make no progress; a burst of 200 allows a client's priority tree
  set-up (Firefox opens with a handful) many times over.

The CONTINUATION flood and oversized header blocks are bounded in
:mod:`etpmitm.gateway._h2` (:class:`~etpmitm.gateway._h2.HeaderBlockFlood`),
before the frames become events.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Budget:
    """At most ``burst`` events at once, and ``rate`` per second after that; ``burst`` 0: no limit."""

    burst: int
    rate: float


@attrs.frozen
class H2Limits:
    """What a device may do on one HTTP/2 connection before it is cut (see the module docstring)."""

    resets: Budget = Budget(200, 20.0)
    completedCredit: float = 1.0
    """Resets given back by each request that completes."""
    pings: Budget = Budget(100, 10.0)
    settings: Budget = Budget(50, 5.0)
    empty: Budget = Budget(200, 50.0)
    continuationFrames: int = 32
    """CONTINUATION frames one header block may take (h2's own limit is 64)."""
    headerBlockBytes: int = 256 * 1024
    """Encoded bytes one header block (HEADERS and its CONTINUATIONs) may take (h2's own: 64 frames' worth)."""


@attrs.define
class Bucket:
    """A leaky bucket: :meth:`add` says whether the level went over the budget's burst."""

    budget: Budget
    level: float = 0.0
    last: float | None = None

    def _leak(self, now: float) -> None:
        if self.last is not None and now > self.last:
            self.level = max(0.0, self.level - (now - self.last) * self.budget.rate)
        self.last = now if self.last is None else max(now, self.last)

    def add(self, now: float, amount: float = 1.0) -> bool:
        """Count ``amount`` events at ``now``; True if over the budget."""
        self._leak(now)
        self.level += amount
        return bool(self.budget.burst) and self.level > self.budget.burst

    def give(self, now: float, amount: float) -> None:
        """Take ``amount`` back off the level (not below empty)."""
        self._leak(now)
        self.level = max(0.0, self.level - amount)


@attrs.define
class FloodGuard:
    """Counts one device's events on one connection; see the module docstring."""

    limits: H2Limits = attrs.Factory(H2Limits)
    resets: Bucket = attrs.field(init=False)
    pings: Bucket = attrs.field(init=False)
    settings: Bucket = attrs.field(init=False)
    empty: Bucket = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        limits = self.limits
        self.resets, self.pings = Bucket(limits.resets), Bucket(limits.pings)
        self.settings, self.empty = Bucket(limits.settings), Bucket(limits.empty)

    def reset(self, now: float) -> str | None:
        """The device reset a stream (RST_STREAM)."""
        if self.resets.add(now):
            return _reason("rapid reset (CVE-2023-44487)", "stream resets", self.limits.resets)
        return None

    def completed(self, now: float) -> None:
        """A request completed (its response was delivered whole)."""
        self.resets.give(now, self.limits.completedCredit)

    def ping(self, now: float) -> str | None:
        if self.pings.add(now):
            return _reason("PING flood (CVE-2019-9512)", "PINGs", self.limits.pings)
        return None

    def settingsFrame(self, now: float) -> str | None:
        if self.settings.add(now):
            return _reason("SETTINGS flood (CVE-2019-9515)", "SETTINGS frames", self.limits.settings)
        return None

    def emptyFrame(self, now: float) -> str | None:
        """An empty DATA frame that does not end its stream, or a PRIORITY frame."""
        if self.empty.add(now):
            return _reason("empty frame flood (CVE-2019-9518)", "empty DATA/PRIORITY frames", self.limits.empty)
        return None


def _reason(what: str, unit: str, budget: Budget) -> str:
    return f"HTTP/2 {what}: the device sent more than {budget.burst} {unit} at once or over {budget.rate:g}/s"
