"""Admission control: whether to take a new connection, before any work is done for it.

Sans-IO: the caller passes the client address and *now* (seconds, monotonic),
calls :meth:`Admission.admit` when a connection arrives and
:meth:`Admission.release` when an admitted one ends.  Refused connections are
to be closed at once; :class:`RateLimitedLog` keeps the log of refusals short.

The defaults are for a gateway serving thousands of devices:

- ``max_connections = 10000`` open at once.  Each costs two descriptors
  (device and origin) and about 50 KiB, so 20,000 descriptors and some 500 MB:
  what one worker on a modest gateway can hold, far more than its CPU can
  keep busy.
- ``per_client = 2048`` open from one address.  A browser holds a few dozen
  connections, but a NAT, a terminal server or a guest network puts hundreds
  of devices behind one address.  2048 (a fifth of the total) keeps one
  address from taking the whole gateway without cutting off a site.
- ``per_client_rate = 200`` new connections per second from one address, with
  a ``burst`` of 400.  A page load opens a few dozen connections at once and
  a NAT'd office many more; a sustained 200/s is beyond any such use, but
  caps what one address can spend of a worker's handshakes (a few hundred a
  second, each with a signature), so the rest keep being served.

Limits are per address (IPv4-mapped IPv6 counts as IPv4), not per IPv6 /64,
since a whole LAN often shares one /64.  Each process has its own Admission:
with ``--workers N`` the limits hold per worker.  A limit of 0 means
unlimited.
"""

from __future__ import annotations

from collections import OrderedDict

import attrs

from etpmitm.addresses import IPAddress as Client, unmap

__all__ = [
    "DEFAULT_BURST",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_PER_CLIENT",
    "DEFAULT_PER_CLIENT_RATE",
    "Admission",
    "RateLimitedLog",
    "refusal_kind",
]

DEFAULT_MAX_CONNECTIONS = 10000
DEFAULT_PER_CLIENT = 2048
DEFAULT_PER_CLIENT_RATE = 200.0
DEFAULT_BURST = 400
MAX_IDLE_CLIENTS = 65536
"""Clients with no open connection whose rate state is kept at most; the oldest go first."""



@attrs.define
class _ClientState:
    open: int = 0
    tokens: float = 0.0
    stamp: float = 0.0
    """When ``tokens`` was last brought up to date."""


@attrs.define
class Admission:
    """Connection limits: overall, per client address, and new connections per second per client."""

    max_connections: int = attrs.field(default=DEFAULT_MAX_CONNECTIONS, validator=attrs.validators.ge(0))
    per_client: int = attrs.field(default=DEFAULT_PER_CLIENT, validator=attrs.validators.ge(0))
    per_client_rate: float = attrs.field(default=DEFAULT_PER_CLIENT_RATE, validator=attrs.validators.ge(0))
    """New connections per second a client's bucket refills with; 0: no rate limit."""
    burst: int = attrs.field(default=DEFAULT_BURST, validator=attrs.validators.ge(0))
    """How many new connections a client may open at once (the bucket's size)."""
    max_idle_clients: int = MAX_IDLE_CLIENTS
    open: int = attrs.field(default=0, init=False)
    """Admitted connections not yet released."""
    _clients: dict[Client, _ClientState] = attrs.field(factory=dict, init=False, repr=False)
    # Clients with nothing open, oldest stamp first: forgotten once their bucket is full again.
    _idle: OrderedDict[Client, None] = attrs.field(factory=OrderedDict, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.per_client_rate > 0 and self.burst < 1:
            raise ValueError("burst must be at least 1 with a per-client rate")

    def admit(self, client: Client, now: float) -> str | None:
        """None: admitted and counted (call :meth:`release` when it ends); else why it is refused."""
        if self.max_connections and self.open >= self.max_connections:
            return f"connection limit: {self.open} open"
        if not (self.per_client or self.per_client_rate):
            self.open += 1
            return None
        client = unmap(client)
        self._forget_idle(now)
        state = self._clients.get(client)
        if state is None:
            state = self._clients[client] = _ClientState(tokens=float(self.burst), stamp=now)
        if self.per_client and state.open >= self.per_client:
            return f"per-client limit: {state.open} open from {client}"
        if self.per_client_rate:
            state.tokens = min(float(self.burst), state.tokens + (now - state.stamp) * self.per_client_rate)
            state.stamp = now
            if state.tokens < 1:
                self._idle_if_unused(client, state)
                return f"per-client rate: over {self.per_client_rate:g}/s from {client}"
            state.tokens -= 1
        state.open += 1
        self._idle.pop(client, None)
        self.open += 1
        return None

    def release(self, client: Client) -> None:
        """An admitted connection from *client* ended.  Call it once per admitted connection."""
        self.open = max(0, self.open - 1)
        if not (self.per_client or self.per_client_rate):
            return
        client = unmap(client)
        state = self._clients.get(client)
        if state is None or state.open == 0:
            return
        state.open -= 1
        self._idle_if_unused(client, state)

    @property
    def clients(self) -> int:
        """Client addresses whose state is kept."""
        return len(self._clients)

    def _idle_if_unused(self, client: Client, state: _ClientState) -> None:
        if state.open == 0:
            self._idle.pop(client, None)
            self._idle[client] = None

    def _forget_idle(self, now: float) -> None:
        """Forget idle clients whose bucket is full again (they would start afresh anyway)."""
        refill = self.burst / self.per_client_rate if self.per_client_rate else 0.0
        while self._idle:
            client = next(iter(self._idle))
            if len(self._idle) <= self.max_idle_clients and now - self._clients[client].stamp < refill:
                break
            del self._idle[client]
            del self._clients[client]


@attrs.define
class RateLimitedLog:
    """Log a kind of line at most once per ``interval`` seconds, counting the ones left out.

    ``check(kind, now)`` returns ``(True, n)`` when the line is to be logged,
    *n* lines of that kind having been suppressed since the last one logged,
    and ``(False, n)`` when it is to be suppressed (*n* counting it).
    """

    interval: float = 10.0
    max_kinds: int = 64
    _last: OrderedDict[str, tuple[float, int]] = attrs.field(factory=OrderedDict, init=False, repr=False)

    def check(self, kind: str, now: float) -> tuple[bool, int]:
        last = self._last.pop(kind, None)
        if last is not None and now - last[0] < self.interval:
            self._last[kind] = (last[0], last[1] + 1)
            return False, last[1] + 1
        self._last[kind] = (now, 0)
        while len(self._last) > self.max_kinds:
            self._last.popitem(last=False)
        return True, 0 if last is None else last[1]


def refusal_kind(reason: str) -> str:
    """The kind of an :meth:`Admission.admit` refusal, for :class:`RateLimitedLog`:
    ``"per-client rate"`` for ``"per-client rate: over 50/s from 10.0.0.2"``."""
    return reason.partition(":")[0]
