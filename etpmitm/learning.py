"""Learned bypasses: connections that interception only breaks, remembered for a while.

Apps that pin their server's certificate reject every minted leaf; origins
that demand a client certificate (mTLS) cannot be served through the
gateway, which has none to present.  The gateway records such failures under
a key, the SNI (or None) and the original destination as ``"ip:port"`` (see
:func:`bypass_key`), and once a key fails often enough within a window, or
at once for an origin that asks for a client certificate, it bypasses that
key for a while.

Keys do not include the device: failures from any device count, and the
bypass then applies to every device.  A device that fails handshakes on
purpose can thus get a destination spliced, uninspected; operators who
cannot accept that set ``[learning] enabled = false``.  Check learned
bypasses only for connections the policy would intercept, so that they never
override a block rule.

Sans-IO: every call takes *now*, in seconds on a monotonic clock.  Both
tables are bounded: pending failures and learned entries are each capped at
``max_entries``, and the least recently used entry goes first.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from ipaddress import IPv4Address, IPv6Address
from typing import NamedTuple

import attrs

__all__ = ["Key", "Learned", "LearnedBypass", "bypass_key"]

Key = tuple[str | None, str]
"""(SNI or None, original destination as ``ip:port``)."""


def bypass_key(sni: str | None, destination: IPv4Address | IPv6Address, port: int) -> Key:
    """The key for a connection: ``("a.example", "192.0.2.1:443")``, ``(None, "[2001:db8::1]:443")``.

    IPv4-mapped IPv6 destinations are written as IPv4.
    """
    if isinstance(destination, IPv6Address):
        if destination.ipv4_mapped is None:
            return sni, f"[{destination}]:{port}"
        destination = destination.ipv4_mapped
    return sni, f"{destination}:{port}"


class Learned(NamedTuple):
    """One learned bypass."""

    key: Key
    expires: float
    why: str


def _at_least_one(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, not {value}")


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, not {value}")


@attrs.define
class LearnedBypass:
    """The keys to bypass, learned from failures.  Not thread-safe (one reactor thread)."""

    failures: int = attrs.field(default=2, validator=_at_least_one)
    """Failures within ``window`` that make a key learned."""
    window: float = attrs.field(default=300.0, validator=_positive)
    """A failure counts while it is less than ``window`` seconds old."""
    ttl: float = attrs.field(default=3600.0, validator=_positive)
    """A learned bypass lasts ``ttl`` seconds, then the key is tried again."""
    max_entries: int = attrs.field(default=10000, validator=_at_least_one)
    enabled: bool = True
    """False: never learn (``[learning] enabled = false``)."""
    evictions: int = attrs.field(default=0, init=False)
    """Learned entries dropped before they expired because the table was full."""
    _pending: OrderedDict[Key, deque[float]] = attrs.field(factory=OrderedDict, init=False, repr=False)
    _learned: OrderedDict[Key, tuple[float, str]] = attrs.field(
        factory=OrderedDict, init=False, repr=False
    )

    def record_failure(self, key: Key, now: float, why: str) -> bool:
        """Count a failed interception; True if it makes *key* learned (only that once)."""
        if not self.enabled or self._live(key, now):
            return False
        times = self._pending.pop(key, None)
        if times is None:
            times = deque(maxlen=self.failures)
        while times and now - times[0] >= self.window:
            times.popleft()
        times.append(now)
        if len(times) >= self.failures:
            self._add(key, now, why)
            return True
        self._pending[key] = times
        if len(self._pending) > self.max_entries:
            self._pending.popitem(last=False)
        return False

    def learn(self, key: Key, now: float, why: str) -> bool:
        """Bypass *key* from now on, e.g. for an origin that asks for a client
        certificate; True if it was not already bypassed."""
        if not self.enabled or self._live(key, now):
            return False
        self._pending.pop(key, None)
        self._add(key, now, why)
        return True

    def is_bypassed(self, key: Key, now: float) -> bool:
        """Whether to bypass *key*; an expired entry is dropped."""
        if not self._live(key, now):
            return False
        self._learned.move_to_end(key)
        return True

    def prune(self, now: float) -> int:
        """Drop expired entries and stale failures; return how many keys were dropped."""
        expired = [key for key, (expires, _) in self._learned.items() if expires <= now]
        stale = [key for key, times in self._pending.items() if now - times[-1] >= self.window]
        for key in expired:
            del self._learned[key]
        for key in stale:
            del self._pending[key]
        return len(expired) + len(stale)

    def entries(self) -> list[Learned]:
        """The learned entries, least recently used first (expired ones may remain until pruned)."""
        return [Learned(key, expires, why) for key, (expires, why) in self._learned.items()]

    @property
    def pending(self) -> int:
        """Keys with failures counted but not (yet) learned."""
        return len(self._pending)

    def __len__(self) -> int:
        return len(self._learned)

    def _live(self, key: Key, now: float) -> bool:
        entry = self._learned.get(key)
        if entry is None:
            return False
        if entry[0] <= now:
            del self._learned[key]
            return False
        return True

    def _add(self, key: Key, now: float, why: str) -> None:
        self._learned[key] = (now + self.ttl, why)
        if len(self._learned) > self.max_entries:
            _, (expires, _) = self._learned.popitem(last=False)
            if expires > now:
                self.evictions += 1
