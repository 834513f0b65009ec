"""A learned bypass as a message between workers, and strict checking of one.

The message is a JSON object::

    {"learned": ["a.example", "192.0.2.1:443"], "why": "...",
     "scope": "client", "clients": ["10.0.0.2"]}

``learned`` is the key (SNI or null, destination as :func:`bypass_key`
writes it), ``scope`` is "client" or "all", and ``clients`` the addresses
whose failures caused it: at least one for "client".  Anything else, such as
a message without ``scope`` from an older worker, is refused, so that a
message never widens a bypass.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from ipaddress import ip_address

from etpmitm.learning import Learned, bypass_key, client_text
from etpmitm.policy.decide import LEARNING_SCOPES

__all__ = ["MAX_CLIENTS", "MAX_WHY", "from_message", "to_message"]

MAX_CLIENTS = 32
"""Clients a message carries at most; a bypass for everyone names only the first ones."""
MAX_WHY = 300
"""Characters of ``why`` a message carries at most.  With MAX_CLIENTS, this keeps
every message within PIPE_BUF (4096 bytes), one atomic write to the master."""
_FIELDS = frozenset({"learned", "why", "scope", "clients"})
_SNI = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_DESTINATION = re.compile(r"\[([0-9a-f:.]+)\]:([0-9]{1,5})|([0-9.]+):([0-9]{1,5})")


def to_message(learned: Learned) -> dict[str, object]:
    """The message telling the other workers of *learned*."""
    return {
        "learned": list(learned.key),
        "why": learned.why[:MAX_WHY],
        "scope": learned.scope,
        "clients": list(learned.clients[:MAX_CLIENTS]),
    }


def from_message(message: Mapping[str, object]) -> Learned:
    """The bypass a message tells of; :class:`ValueError` with the reason if it is not one."""
    if set(message) != _FIELDS:
        raise ValueError(f"fields are {sorted(message)}, not {sorted(_FIELDS)}")
    key, why, scope, clients = message["learned"], message["why"], message["scope"], message["clients"]
    if not (isinstance(key, list) and len(key) == 2):
        raise ValueError("learned is not [SNI, destination]")
    sni, destination = key
    if sni is not None and not (isinstance(sni, str) and len(sni) <= 253 and _SNI.fullmatch(sni)):
        raise ValueError("learned holds a bad SNI")
    if not (isinstance(destination, str) and _is_destination(destination)):
        raise ValueError("learned holds a bad destination")
    if not (isinstance(why, str) and len(why) <= MAX_WHY):
        raise ValueError(f"why is not a string of at most {MAX_WHY} characters")
    if not isinstance(scope, str) or scope not in LEARNING_SCOPES:
        raise ValueError(f"scope is not one of {LEARNING_SCOPES}")
    if not (isinstance(clients, list) and len(clients) <= MAX_CLIENTS):
        raise ValueError(f"clients is not a list of at most {MAX_CLIENTS} addresses")
    if scope == "client" and not clients:
        raise ValueError("a client-scoped bypass names no client")
    addresses = tuple(_client(c) for c in clients)
    return Learned((sni, destination), why, "client" if scope == "client" else "all", addresses)


def _is_destination(text: str) -> bool:
    """Whether *text* is a destination written exactly as :func:`bypass_key` writes it."""
    m = _DESTINATION.fullmatch(text)
    if m is None:
        return False
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    try:
        address = ip_address(host)
    except ValueError:
        return False
    return 0 < int(port) < 65536 and bypass_key(None, address, int(port))[1] == text


def _client(value: object) -> str:
    if not isinstance(value, str) or len(value) > 45:
        raise ValueError("clients holds something other than an address")
    try:
        address = client_text(ip_address(value))
    except ValueError:
        raise ValueError(f"clients holds {value[:45]!r}, not an address") from None
    if address != value:
        raise ValueError(f"clients holds {value!r}, not written as {address!r}")
    return address
