"""Syslog for the audit events, sans-IO: RFC 5424 messages, RFC 6587 framing, addresses.

Over UDP and TCP a message is::

    <PRI>1 TIMESTAMP HOSTNAME etpmitm PROCID MSGID - JSON

- PRI: facility ``local0`` (16) times 8 plus the event's severity
  (6 informational, 4 warning);
- TIMESTAMP: the record's ``time`` (UTC, milliseconds);
- PROCID: the record's ``pid`` (the worker that handled it);
- MSGID: ``connection`` or ``request``;
- no structured data (``-``): the MSG is the record's JSON object, the same
  object ``--audit-log FILE`` writes.  JSON escapes everything outside
  printable ASCII, so the MSG is ASCII and needs no BOM.

A message is at most :data:`MAX_MESSAGE` bytes (rsyslog's default
``maxMessageSize``): when the JSON would be longer, long strings and long
lists are cut (with a ``...(N more)`` marker) and ``"truncated": true`` is
added.  Over TCP each message is framed by octet counting (RFC 6587 3.4.1):
its length in decimal, a space, the message.

On a unix socket (``/dev/log``) a message is in the local format of
syslog(3) instead, the one the daemons behind that socket parse (journald
keeps an RFC 5424 header as part of the message, and rsyslog's imuxsock
misreads it unless configured otherwise)::

    <PRI>Nov 30 04:43:58 etpmitm[PID]: JSON

with the event's time in local time, as syslog(3) writes it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Literal

import attrs

__all__ = ["APP_NAME", "FACILITY", "MAX_MESSAGE", "SyslogAddress", "SyslogAddressError", "fitted",
           "formatLocal", "formatMessage", "octetCounted", "parseAddress"]

APP_NAME = "etpmitm"
FACILITY = 16
"""local0."""
MAX_MESSAGE = 8192
_CUTS = ((2048, 64), (512, 16), (128, 8), (32, 4), (8, 1))
"""Longest string (characters) and list (items) kept, tried in turn."""
_USAGE = "syslog:unix:PATH, syslog:udp:HOST:PORT or syslog:tcp:HOST:PORT"


class SyslogAddressError(ValueError):
    """A bad ``--audit-log syslog:...``; ``str()`` is one line."""


@attrs.frozen
class SyslogAddress:
    transport: Literal["unix", "udp", "tcp"]
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.transport == "unix":
            return f"syslog:unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"syslog:{self.transport}:{host}:{self.port}"


def parseAddress(value: str) -> SyslogAddress:
    """``unix:PATH``, ``udp:HOST:PORT`` or ``tcp:HOST:PORT`` (an IPv6 HOST in brackets)."""
    transport, _, rest = value.partition(":")
    if not value:
        raise SyslogAddressError(f"--audit-log syslog needs an address; use {_USAGE}")
    if transport == "unix":
        if not rest:
            raise SyslogAddressError(f"--audit-log syslog:{value}: no socket path; use {_USAGE}")
        return SyslogAddress("unix", path=rest)
    if transport not in ("udp", "tcp"):
        raise SyslogAddressError(f"--audit-log syslog:{value}: unknown transport {transport!r}; use {_USAGE}")
    host, colon, port = rest.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SyslogAddressError(f"--audit-log syslog:{value}: needs HOST:PORT with a port from 1 to 65535; "
                                 f"use {_USAGE}")
    return SyslogAddress("udp" if transport == "udp" else "tcp", host=host, port=int(port))


def _cut(value: object, chars: int, items: int) -> tuple[object, bool]:
    if isinstance(value, str) and len(value) > chars:
        return f"{value[:chars]}...({len(value) - chars} more)", True
    if isinstance(value, list | tuple):
        cut = False
        kept: list[object] = []
        for item in value[:items]:
            item, shorter = _cut(item, chars, items)
            kept.append(item)
            cut = cut or shorter
        if len(value) > items:
            kept.append(f"...({len(value) - items} more)")
            cut = True
        return kept, cut
    if isinstance(value, Mapping):
        cut = False
        shortened: dict[str, object] = {}
        for key, item in value.items():
            shortened[key], shorter = _cut(item, chars, items)
            cut = cut or shorter
        return shortened, cut
    return value, False


def _json(record: Mapping[str, object]) -> str:
    return json.dumps(record, default=str, separators=(",", ":"))


def fitted(record: Mapping[str, object], limit: int) -> str:
    """The record's JSON in at most ``limit`` bytes (or as short as it gets): see the module's docstring."""
    text = _json(record)
    for chars, items in _CUTS:
        if len(text) <= limit:
            break
        shortened, _ = _cut(record, chars, items)
        assert isinstance(shortened, dict)
        text = _json({**shortened, "truncated": True})
    return text


def _token(value: object, limit: int) -> str:
    """A header field: printable ASCII without spaces, at most ``limit``; ``-`` when empty."""
    text = "".join(c for c in str(value) if "!" <= c <= "~")[:limit] if value is not None else ""
    return text or "-"


def formatMessage(record: Mapping[str, object], severity: int, hostname: str, pid: int,
                  limit: int = MAX_MESSAGE) -> bytes:
    """One RFC 5424 message for an audit record (see the module's docstring)."""
    procid = record.get("pid", pid)
    header = (f"<{FACILITY * 8 + min(max(severity, 0), 7)}>1 {_token(record.get('time'), 64)} "
              f"{_token(hostname, 255)} {APP_NAME} {_token(procid, 128)} {_token(record.get('event'), 32)} -")
    body = fitted(record, max(0, limit - len(header) - 1))
    return f"{header} {body}".encode("ascii")


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _localStamp(iso: object, now: float) -> str:
    """An ISO 8601 UTC time as syslog(3)'s ``Mmm dd hh:mm:ss`` in local time (``now`` if unreadable)."""
    try:
        when = datetime.fromisoformat(str(iso)).timestamp()
    except ValueError:
        when = now
    local = datetime.fromtimestamp(when)
    return f"{_MONTHS[local.month - 1]} {local.day:2d} {local:%H:%M:%S}"


def formatLocal(record: Mapping[str, object], severity: int, pid: int, now: float,
                limit: int = MAX_MESSAGE) -> bytes:
    """One message for a local syslog socket, in syslog(3)'s format (see the module's docstring)."""
    header = (f"<{FACILITY * 8 + min(max(severity, 0), 7)}>{_localStamp(record.get('time'), now)} "
              f"{APP_NAME}[{_token(record.get('pid', pid), 20)}]:")
    body = fitted(record, max(0, limit - len(header) - 1))
    return f"{header} {body}".encode("ascii")


def octetCounted(message: bytes) -> bytes:
    """``message`` framed for a stream (RFC 6587 octet counting)."""
    return b"%d %s" % (len(message), message)
