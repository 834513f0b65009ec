"""The journal's native protocol, sans-IO: an audit event as one journal entry.

An entry is one datagram of fields (systemd.journal-fields(7), "Native
Journal Protocol" in systemd's docs).  A value without a newline is sent as
``KEY=value\\n``; any other as ``KEY\\n``, its length as a 64-bit little-endian
integer, the bytes, and ``\\n``.  Field names are upper-case ``[A-Z0-9_]``,
at most 64 characters, and do not start with ``_`` or a digit.

:func:`auditFields` maps an audit record (:func:`etpmitm.auditlog.auditRecord`)
to fields: ``MESSAGE`` (the event's text line), ``PRIORITY``,
``SYSLOG_IDENTIFIER=etpmitm`` and one ``ETPMITM_<KEY>`` per record key
(``head.method`` becomes ``ETPMITM_HEAD_METHOD``).  A null is left out; a
boolean is ``true``/``false``; a list is its JSON.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Mapping

__all__ = ["IDENTIFIER", "PREFIX", "JournalFieldError", "auditFields", "encodeEntry", "fieldName"]

IDENTIFIER = "etpmitm"
PREFIX = "ETPMITM_"
_MAX_NAME = 64
_VALID = re.compile(r"[A-Z][A-Z0-9_]{0,63}\Z")
_INVALID_CHARS = re.compile(r"[^A-Z0-9_]")


class JournalFieldError(ValueError):
    """A field name the journal would reject."""


def fieldName(key: str) -> str:
    """The journal field for a record key: ``ETPMITM_`` and the key, upper case,
    anything outside ``[A-Z0-9_]`` as ``_``, cut to 64 characters."""
    return (PREFIX + _INVALID_CHARS.sub("_", key.upper()))[:_MAX_NAME]


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return json.dumps(value)
    return json.dumps(value, default=str, separators=(",", ":"))


def _flatten(record: Mapping[str, object], prefix: str = "") -> Iterable[tuple[str, object]]:
    for key, value in record.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}_")
        else:
            yield f"{prefix}{key}", value


def auditFields(record: Mapping[str, object], message: str, severity: int) -> list[tuple[str, bytes]]:
    """The journal fields for one audit record (see the module's docstring)."""
    fields = [
        ("MESSAGE", _utf8(message)),
        ("PRIORITY", str(severity).encode()),
        ("SYSLOG_IDENTIFIER", IDENTIFIER.encode()),
    ]
    for key, value in _flatten(record):
        if value is not None:
            fields.append((fieldName(key), _utf8(_text(value))))
    return fields


def _utf8(text: str) -> bytes:
    # A lone surrogate cannot be UTF-8; write it as an escape rather than fail.
    return text.encode("utf-8", "backslashreplace")


def encodeEntry(fields: Iterable[tuple[str, bytes]]) -> bytes:
    """One native-protocol datagram for ``fields`` (raises :class:`JournalFieldError`)."""
    out = bytearray()
    for name, value in fields:
        if not _VALID.match(name):
            raise JournalFieldError(f"not a journal field name: {name!r}")
        if b"\n" in value:
            out += name.encode() + b"\n" + struct.pack("<Q", len(value)) + value + b"\n"
        else:
            out += name.encode() + b"=" + value + b"\n"
    return bytes(out)
