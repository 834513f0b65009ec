"""The ``[icap]`` table of the policy: checked settings for the ICAP client.

:func:`parse_icap` takes the table as tomllib gave it and a ``fail(key,
problem)`` callback that raises the policy's line-numbered error.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Literal, NoReturn
from urllib.parse import urlsplit

import attrs

__all__ = ["ICAP_KEYS", "IcapSettings", "ServiceURL", "parse_icap", "parse_service_url", "parse_size"]

Choice = Literal["allow", "block"]

ICAP_KEYS = ("reqmod", "respmod", "preview", "max_size", "oversize", "on_error", "timeout", "connections")
_SIZE = re.compile(r"\s*([0-9]+)\s*(|B|KiB|MiB|GiB|KB|MB|GB|K|M|G)\s*")
_UNITS = {
    "": 1, "B": 1, "K": 1 << 10, "KiB": 1 << 10, "M": 1 << 20, "MiB": 1 << 20, "G": 1 << 30, "GiB": 1 << 30,
    "KB": 1000, "MB": 1000**2, "GB": 1000**3,
}
_MAX_SIZE = 1 << 40
_MAX_PREVIEW = 1 << 20
_MAX_CONNECTIONS = 1024


@attrs.frozen
class ServiceURL:
    """``icap://host[:port]/service[?args]``."""

    host: str
    port: int
    path: str
    """The path and query after the authority, e.g. ``/virus_scan``."""

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"icap://{host}:{self.port}{self.path}"


def parse_service_url(text: str) -> ServiceURL:
    """Parse an ICAP service URL; ValueError with a one-line reason otherwise."""
    if any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in text):
        raise ValueError("has spaces or control or non-ASCII characters")
    parts = urlsplit(text)
    if parts.scheme != "icap":
        raise ValueError("must start with icap://")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise ValueError("must not carry a user, password or #fragment")
    try:
        port = parts.port or 1344
    except ValueError:
        raise ValueError("has a bad port") from None
    host = parts.hostname
    if not host:
        raise ValueError("has no host")
    if not parts.path or parts.path == "/":
        raise ValueError("has no service path (e.g. /virus_scan)")
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return ServiceURL(host=host, port=port, path=path)


def parse_size(value: object) -> int:
    """``"32MiB"``, ``"5M"``, ``1048576`` -> bytes; ValueError otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (m := _SIZE.fullmatch(value)):
        size = int(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError("not a size")
    if not 0 < size <= _MAX_SIZE:
        raise ValueError("out of range")
    return size


@attrs.frozen
class IcapSettings:
    """How the gateway talks to its ICAP server."""

    reqmod: ServiceURL | None = None
    """The REQMOD service (request bodies, uploads), or None: requests are not scanned."""
    respmod: ServiceURL | None = None
    """The RESPMOD service (responses, downloads), or None."""
    preview: int = 4096
    """Preview bytes we offer (the server's own ``Preview`` caps it); 0: no preview."""
    max_size: int = 32 << 20
    """Bodies above this are not sent to the server; ``oversize`` decides."""
    oversize: Choice = "allow"
    on_error: Choice = "block"
    """When the server is down, times out or answers garbage: block (fail closed) or allow."""
    timeout: float = 10.0
    """Seconds one scan may take: connect, preview, body and answer."""
    connections: int = 16
    """Persistent connections per ICAP server, at most."""


def parse_icap(table: Mapping[str, object], fail: Callable[[str, str], NoReturn]) -> IcapSettings:
    """The settings of an ``[icap]`` table; *fail(key, problem)* raises the
    caller's error for that key's line."""
    default = IcapSettings()

    def url(key: str) -> ServiceURL | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            fail(key, f"{key} must be a string like \"icap://127.0.0.1:1344/virus_scan\", not {_show(value)}")
        try:
            return parse_service_url(value)
        except ValueError as e:
            fail(key, f"{key} {_show(value)} {e}")

    def choice(key: str, default_: Choice) -> Choice:
        value = table.get(key, default_)
        if value == "allow" or value == "block":
            return "allow" if value == "allow" else "block"
        fail(key, f"{key} must be allow or block, not {_show(value)}")

    def integer(key: str, least: int, most: int, default_: int) -> int:
        value = table.get(key, default_)
        if isinstance(value, int) and not isinstance(value, bool) and least <= value <= most:
            return value
        fail(key, f"{key} must be an integer from {least} to {most}, not {_show(value)}")

    reqmod, respmod = url("reqmod"), url("respmod")
    if reqmod is None and respmod is None:
        fail("reqmod", "needs reqmod or respmod (an icap:// service URL), or leave the table out")
    max_size = table.get("max_size", default.max_size)
    try:
        size = parse_size(max_size)
    except ValueError:
        fail("max_size", f"max_size must be a size such as \"32MiB\" (1 byte to 1TiB), not {_show(max_size)}")
    timeout = table.get("timeout", default.timeout)
    if not (isinstance(timeout, int | float) and not isinstance(timeout, bool)
            and 0 < float(timeout) <= 3600 and not math.isnan(timeout)):
        fail("timeout", f"timeout must be a number of seconds from 0 to 3600, not {_show(timeout)}")
    return IcapSettings(
        reqmod=reqmod,
        respmod=respmod,
        preview=integer("preview", 0, _MAX_PREVIEW, default.preview),
        max_size=size,
        oversize=choice("oversize", default.oversize),
        on_error=choice("on_error", default.on_error),
        timeout=float(timeout),
        connections=integer("connections", 1, _MAX_CONNECTIONS, default.connections),
    )


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + "..."
    return "an array" if isinstance(value, list) else "a table" if isinstance(value, dict) else "a value"
