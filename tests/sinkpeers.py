"""What the audit sinks' peers see: a journal entry and a syslog stream, decoded
independently of etpmitm's encoders (for the tests of both)."""

from __future__ import annotations

import re
import struct
from typing import Any

_HEADER = re.compile(
    rb"<(?P<pri>\d{1,3})>1 (?P<time>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+) (?P<msgid>\S+) (?P<sd>-|\[.*?\]) "
    rb"(?P<msg>.*)\Z", re.S)


def journal_entry(data: bytes) -> list[tuple[str, bytes]]:
    """The fields of one native-protocol datagram, in order (raises on a malformed one)."""
    fields: list[tuple[str, bytes]] = []
    at = 0
    while at < len(data):
        end = data.index(b"\n", at)
        line = data[at:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            at = end + 1
        else:
            name = line
            (size,) = struct.unpack("<Q", data[end + 1:end + 9])
            value = data[end + 9:end + 9 + size]
            if len(value) != size or data[end + 9 + size:end + 10 + size] != b"\n":
                raise ValueError(f"bad binary field {name!r}")
            at = end + 10 + size
        fields.append((name.decode("ascii"), value))
    return fields


def syslog_message(message: bytes) -> dict[str, Any]:
    """An RFC 5424 message's header fields and MSG (raises on anything else)."""
    match = _HEADER.match(message)
    if match is None:
        raise ValueError(f"not RFC 5424: {message[:200]!r}")
    parts: dict[str, Any] = {k: v.decode("ascii") for k, v in match.groupdict().items()}
    parts["pri"] = int(parts["pri"])
    return parts


def octet_frames(stream: bytes) -> tuple[list[bytes], bytes]:
    """RFC 6587 octet-counted frames in ``stream``, and what is left of an incomplete one."""
    frames = []
    while stream:
        length, space, rest = stream.partition(b" ")
        if not space:
            break
        if not length.isdigit() or length.startswith(b"0"):
            raise ValueError(f"bad frame length {length[:20]!r}")
        if len(rest) < int(length):
            break
        frames.append(rest[:int(length)])
        stream = rest[int(length):]
    return frames, stream


_LOCAL = re.compile(rb"<(?P<pri>\d{1,3})>(?P<time>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) (?P<tag>[^\[\]: ]+)\[(?P<pid>\d+)\]: "
                    rb"(?P<msg>.*)\Z", re.S)


def local_message(message: bytes) -> dict[str, Any]:
    """A message in syslog(3)'s local format (``<PRI>Mmm dd hh:mm:ss TAG[PID]: MSG``)."""
    match = _LOCAL.match(message)
    if match is None:
        raise ValueError(f"not syslog(3)'s format: {message[:200]!r}")
    parts: dict[str, Any] = {k: v.decode("ascii") for k, v in match.groupdict().items()}
    parts["pri"] = int(parts["pri"])
    return parts
