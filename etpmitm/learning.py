"""Learned bypasses: connections that interception only breaks, remembered for a while.

Apps that pin their server's certificate reject every minted leaf; origins
that demand a client certificate (mTLS) cannot be served through the
gateway, which has none to present.  The gateway records such failures under
a key, the SNI (or None) and the original destination as ``"ip:port"`` (see
:func:`bypass_key`), and bypasses that key for a while once it failed often
enough within a window.

Any device can fail handshakes on purpose, so by default (``scope =
"client"``) a bypass learned from pinning failures applies only to the
device (client address) whose failures taught it; it applies to every device
once failures came from ``min_clients`` distinct devices within the window.
``scope = "all"`` lets one device's failures teach every device.  An origin
that asks for a client certificate is learned at once for every device
(:meth:`LearnedBypass.learn`): no device can fake that.  Check learned
bypasses only for connections the policy would intercept, so that they never
override a block rule.

Sans-IO: every call takes *now*, in seconds on a monotonic clock.  Memory is
bounded: failures are counted per (key, client) pair and learned bypasses
kept per (key, client) or per key, each table capped at ``max_entries``, the
least recently used entry going first.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable

import attrs

from etpmitm import metrics
from etpmitm.policy.decide import LEARNING_SCOPES, LearningScope, LearningSettings
from etpmitm.addresses import IPAddress, unmap

__all__ = ["Key", "Learned", "LearnedBypass", "bypass_key", "client_text", "printable"]

Key = tuple[str | None, str]
"""(SNI or None, original destination as ``ip:port``)."""

_Slot = tuple[Key, str | None]
"""A learned entry's place: (key, client address), or (key, None) for every client."""

_SHOWN_CLIENTS = 8


def bypass_key(sni: str | None, destination: IPAddress, port: int) -> Key:
    """The key for a connection: ``("a.example", "192.0.2.1:443")``, ``(None, "[2001:db8::1]:443")``.

    IPv4-mapped IPv6 destinations are written as IPv4.
    """
    destination = unmap(destination)
    if destination.version == 6:
        return sni, f"[{destination}]:{port}"
    return sni, f"{destination}:{port}"


def client_text(client: IPAddress) -> str:
    """A client address as learning stores it; IPv4-mapped IPv6 is written as IPv4."""
    return str(unmap(client))


def printable(text: str, most: int = 300) -> str:
    """*text* fit for one log line: control and format characters escaped, clipped to *most*."""
    safe = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    return safe if len(safe) <= most else safe[: most - 3] + "..."


@attrs.frozen
class Learned:
    """A bypass that now applies to more devices: what :class:`LearnedBypass` reports."""

    key: Key
    why: str
    """What failed, e.g. the alert the device sent; may hold peer data (see :meth:`describe`)."""
    scope: LearningScope = attrs.field(validator=attrs.validators.in_(LEARNING_SCOPES))
    """"client": for the devices in ``clients`` only; "all": for every device."""
    clients: tuple[str, ...] = ()
    """The client addresses whose failures caused it (none for an mTLS origin)."""
    expires: float = 0.0
    """When it ends, on the clock of the process that learned it."""

    def describe(self) -> str:
        """One log-safe line, e.g. ``learned bypass for ('a.example', '192.0.2.1:443'):
        certificate unknown (client 10.0.0.2 only)``; a bypass learned for
        every client at once (an mTLS origin) has no suffix."""
        shown = ", ".join(self.clients[:_SHOWN_CLIENTS])
        if len(self.clients) > _SHOWN_CLIENTS:
            shown += f" and {len(self.clients) - _SHOWN_CLIENTS} more"
        line = f"learned bypass for {self.key!r}: {printable(self.why)}"
        if self.scope == "client":
            return f"{line} ({'client' if len(self.clients) == 1 else 'clients'} {shown} only)"
        if self.clients:
            return f"{line} (every client; failures from {shown})"
        return line


def _at_least_one(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, not {value}")


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, not {value}")


@attrs.define
class LearnedBypass:
    """The keys to bypass, and for whom, learned from failures.  Not thread-safe (one reactor thread)."""

    failures: int = attrs.field(default=2, validator=_at_least_one)
    """Failures within ``window`` that make a key learned."""
    window: float = attrs.field(default=300.0, validator=_positive)
    """A failure counts while it is less than ``window`` seconds old."""
    ttl: float = attrs.field(default=3600.0, validator=_positive)
    """A learned bypass lasts ``ttl`` seconds, then the key is tried again."""
    max_entries: int = attrs.field(default=10000, validator=_at_least_one)
    """Cap on (key, client) pairs with failures counted, and on learned entries."""
    enabled: bool = True
    """False: never learn (``[learning] enabled = false``)."""
    scope: LearningScope = attrs.field(default="client", validator=attrs.validators.in_(LEARNING_SCOPES))
    """"client": a device's ``failures`` bypass the key for that device, and failures from
    ``min_clients`` devices bypass it for all; "all": any ``failures`` bypass it for all."""
    min_clients: int = attrs.field(default=3, validator=_at_least_one)
    evictions: int = attrs.field(default=0, init=False)
    """Learned entries dropped before they expired because the table was full."""
    # key -> client -> its latest failure times; clients in order of their latest failure.
    _pending: OrderedDict[Key, OrderedDict[str, deque[float]]] = attrs.field(
        factory=OrderedDict, init=False, repr=False
    )
    _pending_pairs: int = attrs.field(default=0, init=False, repr=False)
    _learned: OrderedDict[_Slot, Learned] = attrs.field(factory=OrderedDict, init=False, repr=False)

    @classmethod
    def from_settings(cls, settings: LearningSettings) -> LearnedBypass:
        """The learned-bypass set that a policy's ``[learning]`` asks for."""
        return cls(
            failures=settings.failures,
            window=settings.window,
            ttl=settings.ttl,
            max_entries=settings.max_entries,
            enabled=settings.enabled,
            scope=settings.scope,
            min_clients=settings.min_clients,
        )

    def record_failure(
        self, key: Key, client: IPAddress, now: float, why: str
    ) -> Learned | None:
        """Count a failed interception of *key* by *client* (a pinning failure).

        Returns the event when this failure makes a bypass apply to more
        devices (newly to *client*, or newly to all), else None.
        """
        if not self.enabled or self._live((key, None), now):
            return None
        address = client_text(client)
        clients = self._note(key, address, now, 1)
        if self._reaches_all(clients, now):
            return self._learned_here(self._learn_all(key, now, why, tuple(clients)))
        if self.scope == "all" or len(clients[address]) < self.failures or self._live((key, address), now):
            return None
        return self._learned_here(self._add(Learned(key, why, "client", (address,), now + self.ttl), now))

    def learn(
        self, key: Key, now: float, why: str, *, clients: Iterable[IPAddress] = ()
    ) -> Learned | None:
        """Bypass *key* for every device from now on, e.g. for an origin that asks for a
        client certificate; None if it already was.  *clients*: who found it, for the log."""
        if not self.enabled or self._live((key, None), now):
            return None
        return self._learned_here(self._learn_all(key, now, why, tuple(client_text(c) for c in clients)))

    def adopt(self, learned: Learned, now: float) -> Learned | None:
        """Apply a bypass that another worker learned; None if nothing changes here.

        A client-scoped one stays client-scoped (unless ``scope`` is "all"
        here), but its clients count towards ``min_clients`` here too, so
        workers together reach it.
        """
        if not self.enabled or self._live((learned.key, None), now):
            return None
        try:
            return self._adopt(learned, now)
        finally:
            metrics.current.bypassesActive(len(self._learned))

    def _adopt(self, learned: Learned, now: float) -> Learned | None:
        if learned.scope == "all":
            return self._learn_all(learned.key, now, learned.why, learned.clients)
        clients: OrderedDict[str, deque[float]] = OrderedDict()
        for address in learned.clients:
            clients = self._note(learned.key, address, now, self.failures)
        if clients and self._reaches_all(clients, now):
            return self._learn_all(learned.key, now, learned.why, tuple(clients))
        new = tuple(c for c in learned.clients if not self._live((learned.key, c), now))
        if not new:
            return None
        return self._add(Learned(learned.key, learned.why, "client", new, now + self.ttl), now)

    def is_bypassed(self, key: Key, client: IPAddress, now: float) -> bool:
        """Whether to bypass *key* for *client*; an expired entry is dropped."""
        if not self._learned:
            return False
        for slot in ((key, None), (key, client_text(client))):
            if self._live(slot, now):
                self._learned.move_to_end(slot)
                return True
        return False

    def prune(self, now: float) -> int:
        """Drop expired entries and stale failures; return how many entries were dropped."""
        expired = [slot for slot, entry in self._learned.items() if entry.expires <= now]
        for slot in expired:
            del self._learned[slot]
        dropped = len(expired)
        if expired:
            metrics.current.bypassesActive(len(self._learned))
        for key in list(self._pending):
            dropped += self._forget_stale(key, now)
        return dropped

    def entries(self) -> list[Learned]:
        """The learned entries, least recently used first (expired ones may remain until pruned).

        A client-scoped bypass has one entry per client, each naming that client.
        """
        return list(self._learned.values())

    @property
    def pending(self) -> int:
        """(key, client) pairs with failures counted."""
        return self._pending_pairs

    def __len__(self) -> int:
        return len(self._learned)

    def _live(self, slot: _Slot, now: float) -> bool:
        entry = self._learned.get(slot)
        if entry is None:
            return False
        if entry.expires <= now:
            del self._learned[slot]
            return False
        return True

    def _note(self, key: Key, address: str, now: float, count: int) -> OrderedDict[str, deque[float]]:
        """Count *count* failures of *key* by *address* at *now*; return the key's clients
        that failed within the window."""
        clients = self._pending.pop(key, None)
        if clients is None:
            clients = OrderedDict()
        self._pending[key] = clients
        times = clients.pop(address, None)
        if times is None:
            times = deque(maxlen=self.failures)
            self._pending_pairs += 1
        clients[address] = times
        while times and now - times[0] >= self.window:
            times.popleft()
        times.extend([now] * min(count, self.failures))
        self._forget_stale(key, now)
        while self._pending_pairs > self.max_entries:
            oldest, table = next(iter(self._pending.items()))
            table.popitem(last=False)
            self._pending_pairs -= 1
            if not table:
                del self._pending[oldest]
        return clients

    def _forget_stale(self, key: Key, now: float) -> int:
        """Drop the clients of *key* whose latest failure is out of the window."""
        clients = self._pending[key]
        dropped = 0
        while clients:
            address, times = next(iter(clients.items()))
            if now - times[-1] < self.window:
                break
            del clients[address]
            dropped += 1
        self._pending_pairs -= dropped
        if not clients:
            del self._pending[key]
        return dropped

    def _reaches_all(self, clients: OrderedDict[str, deque[float]], now: float) -> bool:
        """Whether the failures within the window make the key apply to every device."""
        needed = self.min_clients if self.scope == "client" else 1
        if len(clients) < needed:
            return False
        total = 0
        for times in clients.values():
            total += sum(1 for t in times if now - t < self.window)
            if total >= self.failures:
                return True
        return False

    def _learned_here(self, learned: Learned) -> Learned:
        """Report a bypass learned by this process (not adopted from another worker)."""
        metrics.current.bypassLearned(len(self._learned))
        return learned

    def _learn_all(self, key: Key, now: float, why: str, clients: tuple[str, ...]) -> Learned:
        pending = self._pending.pop(key, None)
        if pending is not None:
            self._pending_pairs -= len(pending)
        return self._add(Learned(key, why, "all", clients, now + self.ttl), now)

    def _add(self, learned: Learned, now: float) -> Learned:
        entries: list[tuple[_Slot, Learned]] = [((learned.key, None), learned)]
        if learned.scope == "client":
            entries = [((learned.key, c), attrs.evolve(learned, clients=(c,))) for c in learned.clients]
        for slot, entry in entries:
            self._learned.pop(slot, None)
            self._learned[slot] = entry
        while len(self._learned) > self.max_entries:
            _, dropped = self._learned.popitem(last=False)
            if dropped.expires > now:
                self.evictions += 1
        return learned
