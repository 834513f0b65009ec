"""Sans-IO parser for the TLS ClientHello at the start of a TCP stream.

Feed it the stream's bytes, in chunks of any size, until it returns a final
result::

    parser = ClientHelloParser()
    result = parser.feed(chunk)   # NeedMore | NotTLS | ClientHello

Contract:

- ``feed`` returns :class:`NeedMore` while the ClientHello is incomplete and
  nothing seen so far is wrong.
- It returns :class:`NotTLS` for *anything* that is not a well-formed
  ClientHello: other protocols (plain HTTP, SSLv2-style hellos, garbage),
  other TLS records first, and malformed TLS (bad record headers, lying
  length fields, duplicate extensions, a bad ``server_name``, a ClientHello
  larger than ``max_size``...).  ``NotTLS.reason`` is a specific one-line
  reason for the log.
- It returns :class:`ClientHello` once every record carrying the message is
  in.  Bytes after those records (ChangeCipherSpec, early data) are not
  looked at; ``ClientHello.length`` says where the hello ends.
- The result is final once it is not ``NeedMore``: calling ``feed`` again
  raises :class:`ClientHelloError`.  That is the only exception ``feed``
  raises; bad input never raises.
- The verdict does not depend on how the stream is chunked, and failures are
  reported as soon as the bytes that prove them have arrived (an oversized
  declared length fails at once, without waiting for the bytes).

Well-formed means: handshake records (version 0x0300-0x0304, length
1..2^14) carrying one ClientHello handshake message that ends on a record
boundary (RFC 8446 §5.1), at most ``max_size`` bytes with record headers;
every length field consistent; session id <= 32 bytes; cipher suites a
non-empty even length; compression methods including null; no duplicate
extension and ``pre_shared_key`` last; ``server_name`` exactly one
``host_name`` that is ASCII letters, digits, ``-`` and ``_`` in dot-separated
labels of 1-63 characters, at most 253 in all, without a trailing dot, and
whose last label is not all digits (no IPv4 literals; RFC 6066 §3); ALPN
and supported_versions lists non-empty.
Other extensions are walked but not looked into.

Each byte is looked at a constant number of times, so feeding byte by byte
costs O(n) overall.  The ClientHello body is parsed once, when complete.
"""

from __future__ import annotations

import re
import struct

import attrs

__all__ = [
    "MAX_SIZE",
    "ClientHello",
    "ClientHelloError",
    "ClientHelloParser",
    "NeedMore",
    "NotTLS",
]

MAX_SIZE = 65536
"""Hard cap on the bytes a ClientHello (all its records) may take."""

_MAX_RECORD = 1 << 14
_RECORD_HEADER = 5
_HANDSHAKE_HEADER = 4

_HANDSHAKE = 0x16
_CLIENT_HELLO = 1
_CONTENT_TYPES = {
    0x14: "change_cipher_spec",
    0x15: "alert",
    0x16: "handshake",
    0x17: "application_data",
    0x18: "heartbeat",
}

_EXT_SERVER_NAME = 0x0000
_EXT_ALPN = 0x0010
_EXT_SUPPORTED_VERSIONS = 0x002B
_EXT_PRE_SHARED_KEY = 0x0029
_EXT_ECH = 0xFE0D
_EXT_NAMES = {
    _EXT_SERVER_NAME: "server_name",
    _EXT_ALPN: "ALPN",
    _EXT_SUPPORTED_VERSIONS: "supported_versions",
    _EXT_PRE_SHARED_KEY: "pre_shared_key",
    _EXT_ECH: "encrypted_client_hello",
}

# Request-line prefixes that mark a plain HTTP client (PRI: h2 prior knowledge).
_HTTP_PREFIXES = tuple(
    m + b" "
    for m in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH")
) + (b"PRI * HTTP/2",)

_TWO_U16 = struct.Struct(">HH")
_HOST_LABEL = re.compile(r"[a-z0-9_-]{1,63}")


class ClientHelloError(Exception):
    """Misuse of a :class:`ClientHelloParser` (feeding after a final result).

    Bad input never raises; it gives :class:`NotTLS`.  ``str()`` is a
    one-line reason.
    """


@attrs.frozen
class NeedMore:
    """The ClientHello is not complete yet: feed more bytes."""


@attrs.frozen
class NotTLS:
    """The stream does not start with a well-formed TLS ClientHello."""

    reason: str
    malformed: bool = attrs.field(default=False, eq=False)
    """True when the stream did start as a TLS handshake record, so this is
    broken (or hostile) TLS rather than another protocol.  Derived from how
    the stream failed, so not part of equality: the reason identifies it."""


@attrs.frozen
class ClientHello:
    """What the gateway needs from a ClientHello."""

    sni: str | None
    """``host_name`` from ``server_name``: lower-cased ASCII, as sent (A-labels)."""
    alpn: tuple[bytes, ...]
    """Offered ALPN protocols in order; ``()`` if none."""
    supported_versions: tuple[int, ...]
    """From the ``supported_versions`` extension; ``()`` if absent."""
    legacy_version: int
    has_ech: bool
    """``encrypted_client_hello`` (0xfe0d) is present (SNI is then the public name)."""
    length: int
    """Bytes of the stream taken by the records that carry the ClientHello."""
    cipher_suites: tuple[int, ...]
    extensions: tuple[int, ...]
    """Extension types in the order sent."""
    record_version: int
    """Version field of the first record."""


Result = NeedMore | NotTLS | ClientHello

_NEED_MORE = NeedMore()


class _Malformed(Exception):
    """Internal: the input is not a well-formed ClientHello (becomes NotTLS)."""


class ClientHelloParser:
    """Incremental ClientHello parser for one connection."""

    def __init__(self, max_size: int = MAX_SIZE) -> None:
        """*max_size* caps :attr:`ClientHello.length`; at most :data:`MAX_SIZE`."""
        if not 0 < max_size <= MAX_SIZE:
            raise ValueError(f"max_size must be in 1..{MAX_SIZE}, not {max_size}")
        self._max_size = max_size
        self._buf = bytearray()  # everything fed
        self._pos = 0  # stream offset of the next unprocessed byte
        self._started = False  # the first byte said "handshake record"
        self._record_version: int | None = None
        self._record_left = 0  # payload bytes of the current record still to come
        self._hs = bytearray()  # handshake message reassembled from the records
        self._hs_total: int | None = None  # header + body size, once known
        self._result: NotTLS | ClientHello | None = None

    @property
    def buffered(self) -> bytes:
        """Every byte fed so far, including any after the ClientHello."""
        return bytes(self._buf)

    @property
    def result(self) -> NotTLS | ClientHello | None:
        """The final result, or ``None`` while more bytes are needed."""
        return self._result

    def feed(self, data: bytes) -> Result:
        """Add the next bytes of the stream; see the module docstring."""
        if self._result is not None:
            raise ClientHelloError(
                f"feed() called after the final result ({type(self._result).__name__})"
            )
        self._buf += data
        try:
            result = self._advance()
        except _Malformed as e:
            result = NotTLS(str(e), malformed=True)
        if not isinstance(result, NeedMore):
            self._result = result
        return result

    def _advance(self) -> Result:
        buf = self._buf
        end = len(buf)
        if not self._started:
            if end == 0:
                return _NEED_MORE
            verdict = _classify_start(buf)
            if verdict is not None:
                return verdict
            self._started = True
        pos = self._pos
        hs = self._hs
        while pos < end:
            if self._record_left == 0:
                if end - pos < _RECORD_HEADER:
                    break
                self._record_left = self._record_header(buf, pos)
                pos += _RECORD_HEADER
                self._check_fit()
                self._check_size(pos)
                continue
            take = min(self._record_left, end - pos)
            total = self._hs_total
            take = min(take, (_HANDSHAKE_HEADER if total is None else total) - len(hs))
            hs += buf[pos : pos + take]
            pos += take
            self._record_left -= take
            if total is None and len(hs) == _HANDSHAKE_HEADER:
                if hs[0] != _CLIENT_HELLO:
                    raise _Malformed(f"handshake message type {hs[0]} is not ClientHello")
                total = self._hs_total = _HANDSHAKE_HEADER + int.from_bytes(hs[1:4], "big")
                self._check_fit()
                self._check_size(pos)
            if total is not None and len(hs) == total:
                # _check_fit() guarantees that the last record ends here too.
                self._pos = pos
                return self._client_hello(pos)
        self._pos = pos
        return _NEED_MORE

    def _record_header(self, buf: bytearray, pos: int) -> int:
        """Check the record header at *pos*; return its payload length."""
        ctype = buf[pos]
        version = (buf[pos + 1] << 8) | buf[pos + 2]
        length = (buf[pos + 3] << 8) | buf[pos + 4]
        if ctype != _HANDSHAKE:
            name = _CONTENT_TYPES.get(ctype, "unknown")
            raise _Malformed(
                f"{name} record (type 0x{ctype:02x}) before the ClientHello is complete"
            )
        if not 0x0300 <= version <= 0x0304:
            raise _Malformed(f"record version 0x{version:04x} is not SSL 3.0/TLS")
        if length == 0:
            raise _Malformed("empty handshake record")
        if length > _MAX_RECORD:
            raise _Malformed(f"record length {length} exceeds {_MAX_RECORD}")
        if self._record_version is None:
            self._record_version = version
        return length

    def _check_fit(self) -> None:
        """Fail if the current record runs past the end of the ClientHello.

        RFC 8446 §5.1: a ClientHello must end at a record boundary.
        """
        if self._hs_total is not None and self._record_left > self._hs_total - len(self._hs):
            raise _Malformed("handshake record runs past the end of the ClientHello")

    def _check_size(self, pos: int) -> None:
        """Fail if what is declared so far cannot fit in ``max_size`` bytes.

        *pos* is the stream offset just after what has been read; the current
        record ends ``_record_left`` bytes later, and any handshake bytes it
        cannot hold need further records, each with a header.
        """
        least = pos + self._record_left
        if self._hs_total is not None:
            beyond = self._hs_total - len(self._hs) - self._record_left
            if beyond > 0:
                records = -(-beyond // _MAX_RECORD)
                least += beyond + records * _RECORD_HEADER
        if least > self._max_size:
            raise _Malformed(f"ClientHello exceeds {self._max_size} bytes")

    def _client_hello(self, length: int) -> ClientHello:
        assert self._record_version is not None
        body = memoryview(bytes(self._hs))[_HANDSHAKE_HEADER:]
        self._hs = bytearray()
        return _parse_body(body, length=length, record_version=self._record_version)


def _classify_start(buf: bytearray) -> NotTLS | NeedMore | None:
    """Look at the first bytes: ``None`` if they start a handshake record."""
    first = buf[0]
    if first == _HANDSHAKE:
        return None
    if first & 0x80:
        # SSLv2 record: 2-byte length with the high bit set, then msg type 1.
        if len(buf) < 3:
            return _NEED_MORE
        if buf[2] == _CLIENT_HELLO:
            return NotTLS("SSLv2-style hello")
        return NotTLS(f"unknown protocol (first byte 0x{first:02x})")
    if first in _CONTENT_TYPES:
        return NotTLS(f"first record is {_CONTENT_TYPES[first]} (0x{first:02x}), not handshake")
    head = bytes(buf[:16])
    pending = False
    for prefix in _HTTP_PREFIXES:
        if head.startswith(prefix):
            return NotTLS("looks like plain HTTP")
        pending = pending or prefix.startswith(head)
    if pending:
        return _NEED_MORE
    return NotTLS(f"unknown protocol (first byte 0x{first:02x})")


class _Reader:
    """Cursor over a memoryview; running past the end raises _Malformed."""

    __slots__ = ("_data", "_off", "_end")

    def __init__(self, data: memoryview) -> None:
        self._data = data
        self._off = 0
        self._end = len(data)

    @property
    def left(self) -> int:
        return self._end - self._off

    def take(self, n: int, what: str) -> memoryview:
        off = self._off
        if n > self._end - off:
            raise _Malformed(f"{what} overruns its container ({n} > {self._end - off} bytes)")
        self._off = off + n
        return self._data[off : off + n]

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        off = self._off
        if self._end - off < 2:
            raise _Malformed(f"{what} is truncated")
        self._off = off + 2
        return (self._data[off] << 8) | self._data[off + 1]

    def vector(self, width: int, what: str) -> memoryview:
        """A length-prefixed vector (*width* = 1 or 2 length bytes)."""
        off = self._off
        if self._end - off < width:
            raise _Malformed(f"{what} length is truncated")
        n = self._data[off] if width == 1 else (self._data[off] << 8) | self._data[off + 1]
        self._off = off + width
        return self.take(n, what)


def _ext_name(ext: int) -> str:
    name = _EXT_NAMES.get(ext)
    return f"extension 0x{ext:04x}" + (f" ({name})" if name else "")


def _parse_body(body: memoryview, *, length: int, record_version: int) -> ClientHello:
    """Parse a complete ClientHello body (after the 4-byte handshake header)."""
    r = _Reader(body)
    legacy_version = r.u16("legacy_version")
    if legacy_version >> 8 != 3:
        raise _Malformed(f"legacy_version 0x{legacy_version:04x} is not SSL 3.0/TLS")
    r.take(32, "random")
    session_id = r.vector(1, "legacy_session_id")
    if len(session_id) > 32:
        raise _Malformed(f"legacy_session_id is {len(session_id)} bytes, more than 32")
    suites = r.vector(2, "cipher_suites")
    if not suites or len(suites) % 2:
        raise _Malformed(f"cipher_suites length {len(suites)} is not a positive even number")
    cipher_suites = struct.unpack(f">{len(suites) // 2}H", suites)
    compression = r.vector(1, "compression_methods")
    if 0 not in compression:
        raise _Malformed("compression_methods lacks null (0)")

    sni: str | None = None
    alpn: tuple[bytes, ...] = ()
    versions: tuple[int, ...] = ()
    order: list[int] = []
    if r.left:  # extensions are optional before TLS 1.3
        block = r.vector(2, "extensions")
        if r.left:
            raise _Malformed(f"extensions do not fill the ClientHello ({r.left} left over)")
        seen: set[int] = set()
        off, end = 0, len(block)
        while off < end:
            if end - off < 4:
                raise _Malformed("truncated extension header")
            ext, size = _TWO_U16.unpack_from(block, off)
            off += 4
            if size > end - off:
                raise _Malformed(
                    f"{_ext_name(ext)} overruns the extensions ({size} > {end - off} bytes)"
                )
            data = block[off : off + size]
            off += size
            if ext in seen:
                raise _Malformed(f"duplicate {_ext_name(ext)}")
            if _EXT_PRE_SHARED_KEY in seen:
                raise _Malformed("pre_shared_key is not the last extension")
            seen.add(ext)
            order.append(ext)
            if ext == _EXT_SERVER_NAME:
                sni = _parse_server_name(data)
            elif ext == _EXT_ALPN:
                alpn = _parse_alpn(data)
            elif ext == _EXT_SUPPORTED_VERSIONS:
                versions = _parse_supported_versions(data)

    return ClientHello(
        sni=sni,
        alpn=alpn,
        supported_versions=versions,
        legacy_version=legacy_version,
        has_ech=_EXT_ECH in order,
        length=length,
        cipher_suites=cipher_suites,
        extensions=tuple(order),
        record_version=record_version,
    )


def _exactly(r: _Reader, width: int, what: str) -> _Reader:
    """The extension's one vector, which must fill the extension exactly."""
    inner = r.vector(width, what)
    if r.left:
        raise _Malformed(f"{what} does not fill its extension ({r.left} left over)")
    return _Reader(inner)


def _parse_server_name(data: memoryview) -> str:
    names = _exactly(_Reader(data), 2, "server_name list")
    if not names.left:
        raise _Malformed("server_name list is empty")
    name_type = names.u8("server_name type")
    if name_type != 0:
        raise _Malformed(f"server_name type {name_type} is not host_name")
    host = names.vector(2, "SNI host name")
    if names.left:
        raise _Malformed("server_name lists more than one name")
    return _host_name(bytes(host))


def _host_name(raw: bytes) -> str:
    """Validate an SNI host name (RFC 6066 §3); return it lower-cased."""
    if not raw:
        raise _Malformed("empty SNI host name")
    if not raw.isascii():
        raise _Malformed("SNI host name is not ASCII")
    host = raw.decode("ascii").lower()
    if len(host) > 253:
        raise _Malformed(f"SNI host name is {len(host)} characters, more than 253")
    if host.endswith("."):
        raise _Malformed("SNI host name ends with a dot")
    labels = host.split(".")
    for label in labels:
        if not _HOST_LABEL.fullmatch(label):
            if not label:
                raise _Malformed("SNI host name has an empty label")
            if len(label) > 63:
                raise _Malformed("SNI host name has a label longer than 63 characters")
            bad = next(c for c in label if not _HOST_LABEL.fullmatch(c))
            raise _Malformed(f"SNI host name contains invalid character {bad!r}")
    if labels[-1].isdigit():
        raise _Malformed("SNI host name is an IP address literal")
    return host


def _parse_alpn(data: memoryview) -> tuple[bytes, ...]:
    names = _exactly(_Reader(data), 2, "ALPN protocol list")
    if not names.left:
        raise _Malformed("ALPN protocol list is empty")
    protocols = []
    while names.left:
        name = names.vector(1, "ALPN protocol name")
        if not name:
            raise _Malformed("empty ALPN protocol name")
        protocols.append(bytes(name))
    return tuple(protocols)


def _parse_supported_versions(data: memoryview) -> tuple[int, ...]:
    versions = _exactly(_Reader(data), 1, "supported_versions list")
    n = versions.left
    if not n or n % 2:
        raise _Malformed(f"supported_versions length {n} is not a positive even number")
    return struct.unpack(f">{n // 2}H", versions.take(n, "supported_versions"))
