"""ICAP (RFC 3507) on the wire, sans-IO: requests out, responses in.

Out: :func:`encode_request` (REQMOD/RESPMOD head with its encapsulated HTTP
heads), :func:`encode_chunk` and :func:`last_chunk` (the chunked body, the
preview's ``ieof``), :func:`options_request`.

In: :class:`ResponseParser` takes bytes as they come and gives an
:class:`IcapResponse` once one is complete: 100 Continue (after a preview),
204 No Content, or 200 with the encapsulated heads and body; any other status
and every malformed input raise :class:`IcapError`, whose ``str()`` is one line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

import attrs

from etpmitm.icap.settings import ServiceURL
from etpmitm.scanning import Message

__all__ = [
    "IcapError",
    "IcapOptions",
    "IcapResponse",
    "ResponseParser",
    "encode_chunk",
    "encode_request",
    "last_chunk",
    "options_request",
    "parse_options",
]

MAX_HEAD = 65536
"""Bytes of an ICAP head plus its encapsulated HTTP heads, at most."""
MAX_BODY = 1 << 20
"""Bytes of a replacement body, at most (by default)."""
_MAX_CHUNK_LINE = 1024
_STATUS = re.compile(rb"ICAP/1\.0 ([0-9]{3})(?: ([\x20-\x7e\t]*))?")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(;[\x20-\x7e\t]*)?")
_ENCAPSULATED = re.compile(r"(req-hdr|res-hdr|req-body|res-body|null-body|opt-body)=([0-9]{1,9})")
_THREAT = re.compile(r"(?:^|;)\s*Threat=([^;]*)", re.IGNORECASE)
_BODY_NAMES = ("req-body", "res-body", "null-body", "opt-body")


class IcapError(Exception):
    """The ICAP server's answer cannot be used; ``str()`` is one line."""

    def __str__(self) -> str:
        return " ".join(str(self.args[0] if self.args else "ICAP error").split())


# -- requests -----------------------------------------------------------------


def _http_head(message: Message) -> bytes:
    lines = [message.start_line]
    lines.extend(name + b": " + value for name, value in message.headers)
    for line in lines:
        if b"\r" in line or b"\n" in line:
            raise IcapError("an HTTP head to scan holds CR or LF inside a line")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _icap_head(method: str, url: ServiceURL, fields: Iterable[tuple[str, str]]) -> bytes:
    host = f"[{url.host}]" if ":" in url.host else url.host
    lines = [f"{method} {url} ICAP/1.0", f"Host: {host}:{url.port}"]
    lines.extend(f"{name}: {value}" for name, value in fields)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def options_request(url: ServiceURL) -> bytes:
    """An OPTIONS request for the service at *url* (keeps the connection)."""
    return _icap_head("OPTIONS", url, [("Encapsulated", "null-body=0")])


def encode_request(
    kind: Literal["reqmod", "respmod"],
    url: ServiceURL,
    request: Message,
    response: Message | None,
    *,
    has_body: bool,
    preview: int | None,
) -> bytes:
    """The head of a REQMOD or RESPMOD request and its encapsulated HTTP heads.

    The body follows as :func:`encode_chunk` pieces and a :func:`last_chunk`.
    *preview*: the number of body bytes sent before the server answers 100
    (``Preview``), or None for no preview.
    """
    parts: list[tuple[str, bytes]] = [("req-hdr", _http_head(request))]
    if kind == "respmod":
        if response is None:
            raise IcapError("RESPMOD needs a response head")
        parts.append(("res-hdr", _http_head(response)))
    offset = 0
    entries = []
    for name, head in parts:
        entries.append(f"{name}={offset}")
        offset += len(head)
    body_name = ("req-body" if kind == "reqmod" else "res-body") if has_body else "null-body"
    entries.append(f"{body_name}={offset}")
    fields = [("Allow", "204")]
    if preview is not None and has_body:
        fields.append(("Preview", str(preview)))
    fields.append(("Encapsulated", ", ".join(entries)))
    return _icap_head(kind.upper(), url, fields) + b"".join(head for _, head in parts)


def encode_chunk(data: bytes) -> bytes:
    """One chunk of the encapsulated body (empty data gives nothing)."""
    if not data:
        return b""
    return b"%x\r\n" % len(data) + data + b"\r\n"


def last_chunk(ieof: bool = False) -> bytes:
    """The end of the body; *ieof*: the whole body fit in the preview."""
    return b"0; ieof\r\n\r\n" if ieof else b"0\r\n\r\n"


# -- responses ----------------------------------------------------------------


@attrs.frozen
class IcapResponse:
    """One complete ICAP response."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    """Field names in lower case; folded lines are joined with ``\\n``."""
    request: Message | None = None
    """The encapsulated request head (a REQMOD 200 that changed the request)."""
    response: Message | None = None
    """The encapsulated response head (a RESPMOD 200, or a REQMOD block page)."""
    body: bytes | None = None
    """The decoded encapsulated body, or None (null-body)."""

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def istag(self) -> str | None:
        tag = self.header("istag")
        return None if tag is None else tag.strip().strip('"') or None

    @property
    def threat(self) -> str | None:
        """The threat the server named: ``X-Infection-Found``'s ``Threat=``,
        else the first of ``X-Violations-Found``, else ``X-Virus-ID``."""
        infection = self.header("x-infection-found")
        if infection is not None and (m := _THREAT.search(infection.replace("\n", " "))):
            if name := m.group(1).strip():
                return name
        violations = self.header("x-violations-found")
        if violations is not None:
            lines = [line.strip() for line in violations.split("\n")]
            # count, then per violation: filename, threat, resolution, threat id
            if len(lines) >= 3 and lines[2]:
                return lines[2]
        virus = self.header("x-virus-id")
        if virus is not None and virus.strip() and virus.strip() != "-":
            return virus.strip()
        return None


@attrs.frozen
class IcapOptions:
    """What an OPTIONS response says about a service."""

    istag: str | None
    methods: frozenset[str]
    preview: int | None
    """The server's ``Preview`` (bytes it wants first), or None: no preview."""
    allow_204: bool
    max_connections: int | None
    ttl: int | None
    """``Options-TTL`` seconds, or None: valid until the connection fails."""


def parse_options(response: IcapResponse) -> IcapOptions:
    """Read an OPTIONS response (a 200 from :class:`ResponseParser`)."""

    def number(name: str) -> int | None:
        value = response.header(name)
        if value is None:
            return None
        value = value.strip()
        if not value.isascii() or not value.isdigit() or len(value) > 12:
            raise IcapError(f"OPTIONS: bad {name} {value[:40]!r}")
        return int(value)

    methods = response.header("methods") or ""
    allow = response.header("allow") or ""
    return IcapOptions(
        istag=response.istag,
        methods=frozenset(m.strip().upper() for m in methods.replace("\n", ",").split(",") if m.strip()),
        preview=number("preview"),
        allow_204="204" in (a.strip() for a in allow.replace("\n", ",").split(",")),
        max_connections=number("max-connections"),
        ttl=number("options-ttl"),
    )


_State = Literal["head", "encapsulated", "chunk-size", "chunk-data", "chunk-end", "trailer", "done"]


class ResponseParser:
    """Incremental parser of one ICAP response.

    :meth:`feed` returns the :class:`IcapResponse` once it is complete (bytes
    after it stay in :attr:`leftover`), None while more is needed, or raises
    :class:`IcapError`.  *options*: the response to an OPTIONS request.
    """

    def __init__(self, *, options: bool = False, max_head: int = MAX_HEAD, max_body: int = MAX_BODY) -> None:
        self._options = options
        self._max_head = max_head
        self._max_body = max_body
        self._buffer = bytearray()
        self._scan = 0  # where to resume looking for a terminator
        self._state: _State = "head"
        self._status = 0
        self._reason = ""
        self._headers: tuple[tuple[str, str], ...] = ()
        self._sections: list[tuple[str, int]] = []
        self._heads: dict[str, Message] = {}
        self._body: bytearray | None = None
        self._keep_body = True
        self._remaining = 0
        self._head_bytes = 0
        self.leftover = b""

    @property
    def started(self) -> bool:
        """Whether any byte of a response has arrived."""
        return bool(self._buffer) or self._state != "head"

    def eof(self) -> None:
        """The connection closed: raise unless nothing had started."""
        if self._state == "done":
            return
        if not self.started:
            raise IcapError("the ICAP server closed the connection without an answer")
        raise IcapError(f"the ICAP response was truncated (in the {self._state})")

    def feed(self, data: bytes) -> IcapResponse | None:
        if self._state == "done":
            raise IcapError("ICAP response already complete")
        self._buffer += data
        while True:
            progressed = self._step()
            if self._complete():
                self.leftover = bytes(self._buffer)
                self._buffer = bytearray()
                return self._response()
            if not progressed:
                return None

    def _complete(self) -> bool:
        return self._state == "done"

    # each step consumes from the buffer and says whether it made progress
    def _step(self) -> bool:
        if self._state == "head":
            return self._read_head()
        if self._state == "encapsulated":
            return self._read_encapsulated()
        if self._state == "chunk-size":
            return self._read_chunk_size()
        if self._state == "chunk-data":
            return self._read_chunk_data()
        if self._state == "chunk-end":
            return self._read_crlf()
        if self._state == "trailer":
            return self._read_trailer()
        return False

    def _line_end(self, terminator: bytes, most: int, what: str) -> int | None:
        end = self._buffer.find(terminator, max(0, self._scan - len(terminator) + 1))
        if end < 0:
            self._scan = len(self._buffer)
            if len(self._buffer) > most:
                raise IcapError(f"{what} over {most} bytes")
            return None
        if end > most:
            raise IcapError(f"{what} over {most} bytes")
        self._scan = 0
        return end

    def _take(self, count: int) -> bytes:
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    def _read_head(self) -> bool:
        end = self._line_end(b"\r\n\r\n", self._max_head, "the ICAP response head is")
        if end is None:
            if len(self._buffer) >= 9 and not self._buffer.startswith(b"ICAP/1.0 "):
                raise IcapError(f"not an ICAP response: {_show(bytes(self._buffer[:40]))}")
            return False
        head = self._take(end + 4)
        self._head_bytes = len(head)
        status_line, _, rest = head[:-4].partition(b"\r\n")
        m = _STATUS.fullmatch(status_line)
        if m is None:
            raise IcapError(f"bad ICAP status line {_show(status_line)}")
        self._status = int(m.group(1))
        self._reason = (m.group(2) or b"").decode("latin-1").strip()
        self._headers = _fields(rest, "ICAP")
        if self._status == 100 or self._status == 204:
            self._check_bodyless()
            self._state = "done"
            return True
        if self._status != 200:
            raise IcapError(f"the ICAP server answered {self._status} {self._reason}".strip())
        self._sections = self._encapsulated()
        self._state = "encapsulated"
        return True

    def _check_bodyless(self) -> None:
        value = self._header("encapsulated")
        if value is None:
            return
        sections = _parse_encapsulated(value)
        if [name for name, _ in sections] != ["null-body"] or sections[0][1] != 0:
            raise IcapError(f"ICAP {self._status} with a message: Encapsulated {_show(value.encode('latin-1'))}")

    def _header(self, name: str) -> str | None:
        for key, value in self._headers:
            if key == name:
                return value
        return None

    def _encapsulated(self) -> list[tuple[str, int]]:
        value = self._header("encapsulated")
        if value is None:
            raise IcapError("ICAP 200 without an Encapsulated header")
        sections = _parse_encapsulated(value)
        names = [name for name, _ in sections]
        allowed = ("opt-body", "null-body") if self._options else ("req-hdr", "res-hdr", *_BODY_NAMES[:3])
        for name in names:
            if name not in allowed:
                raise IcapError(f"Encapsulated names {name} in this response: {value!r}")
        if names[-1] not in _BODY_NAMES or any(name in _BODY_NAMES for name in names[:-1]):
            raise IcapError(f"Encapsulated must end with one body entry: {value!r}")
        if len(set(names)) != len(names) or names[0:2] == ["res-hdr", "req-hdr"]:
            raise IcapError(f"Encapsulated lists a section twice or out of order: {value!r}")
        offsets = [offset for _, offset in sections]
        if offsets[0] != 0 or any(b <= a for a, b in zip(offsets[:-1], offsets[1:])):
            raise IcapError(f"Encapsulated offsets must start at 0 and increase: {value!r}")
        if self._head_bytes + offsets[-1] > self._max_head:
            raise IcapError(f"the encapsulated HTTP heads are over {self._max_head} bytes")
        return sections

    def _read_encapsulated(self) -> bool:
        total = self._sections[-1][1]
        if len(self._buffer) < total:
            return False
        heads = self._take(total)
        for (name, start), (_, end) in zip(self._sections[:-1], self._sections[1:]):
            self._heads[name] = _http_message(heads[start:end], name)
        body = self._sections[-1][0]
        if body == "null-body":
            self._state = "done"
            return True
        self._body = bytearray()
        self._keep_body = body != "opt-body"
        self._state = "chunk-size"
        return True

    def _read_chunk_size(self) -> bool:
        end = self._line_end(b"\r\n", _MAX_CHUNK_LINE, "a chunk-size line is")
        if end is None:
            return False
        line = self._take(end + 2)[:-2]
        m = _CHUNK_SIZE.fullmatch(line)
        if m is None:
            raise IcapError(f"bad chunk size {_show(line)}")
        size = int(m.group(1), 16)
        assert self._body is not None
        if self._keep_body and len(self._body) + size > self._max_body:
            raise IcapError(f"the ICAP server's body is over {self._max_body} bytes")
        if size == 0:
            self._state = "trailer"
        else:
            self._remaining = size
            self._state = "chunk-data"
        return True

    def _read_chunk_data(self) -> bool:
        if not self._buffer:
            return False
        data = self._take(min(self._remaining, len(self._buffer)))
        self._remaining -= len(data)
        if self._keep_body:
            assert self._body is not None
            self._body += data
        if self._remaining == 0:
            self._state = "chunk-end"
        return True

    def _read_crlf(self) -> bool:
        if len(self._buffer) < 2:
            return False
        if self._take(2) != b"\r\n":
            raise IcapError("a chunk does not end with CRLF where its size says")
        self._state = "chunk-size"
        return True

    def _read_trailer(self) -> bool:
        if self._buffer.startswith(b"\r\n"):
            self._take(2)
            self._state = "done"
            return True
        if len(self._buffer) < 2:
            return False
        end = self._line_end(b"\r\n\r\n", self._max_head, "the chunked trailer is")
        if end is None:
            return False
        _fields(self._take(end + 4)[:-4], "trailer")
        self._state = "done"
        return True

    def _response(self) -> IcapResponse:
        body = None if self._body is None or not self._keep_body else bytes(self._body)
        return IcapResponse(
            status=self._status,
            reason=self._reason,
            headers=self._headers,
            request=self._heads.get("req-hdr"),
            response=self._heads.get("res-hdr"),
            body=body,
        )


def _parse_encapsulated(value: str) -> list[tuple[str, int]]:
    sections = []
    for entry in value.replace("\n", " ").split(","):
        m = _ENCAPSULATED.fullmatch(entry.strip())
        if m is None:
            raise IcapError(f"bad Encapsulated header {value[:120]!r}")
        sections.append((m.group(1), int(m.group(2))))
    return sections


def _fields(block: bytes, what: str) -> tuple[tuple[str, str], ...]:
    """Header fields (CRLF-separated lines, obs-fold continuation lines)."""
    fields: list[tuple[str, str]] = []
    if not block:
        return ()
    for line in block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise IcapError(f"{what} head starts with a continuation line")
            previous, text = fields[-1]
            fields[-1] = (previous, text + "\n" + line.strip().decode("latin-1"))
            continue
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise IcapError(f"bad {what} header line {_show(line)}")
        if any(c < 0x20 and c != 0x09 or c == 0x7F for c in value):
            raise IcapError(f"control character in {what} header {_show(name)}")
        fields.append((name.decode("ascii").lower(), value.strip().decode("latin-1")))
    return tuple(fields)


def _http_message(block: bytes, name: str) -> Message:
    """An encapsulated HTTP head: start line and fields, ending with CRLF CRLF."""
    if not block.endswith(b"\r\n\r\n") or block.find(b"\r\n\r\n") != len(block) - 4:
        raise IcapError(f"the {name} section does not end where Encapsulated says")
    start_line, _, rest = block[:-4].partition(b"\r\n")
    if not start_line or any(c < 0x20 or c == 0x7F for c in start_line):
        raise IcapError(f"bad start line in {name}: {_show(start_line)}")
    if name == "res-hdr" and not re.fullmatch(rb"HTTP/1\.[01] [0-9]{3}(?: [\x20-\x7e\t]*)?", start_line):
        raise IcapError(f"bad HTTP status line in res-hdr: {_show(start_line)}")
    if name == "req-hdr" and not re.fullmatch(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+ [\x21-\x7e]+ HTTP/1\.[01]", start_line):
        raise IcapError(f"bad HTTP request line in req-hdr: {_show(start_line)}")
    fields = []
    if rest:
        for line in rest.split(b"\r\n"):
            field, colon, value = line.partition(b":")
            if not colon or not _TOKEN.fullmatch(field):
                raise IcapError(f"bad header line in {name}: {_show(line)}")
            if any(c < 0x20 and c != 0x09 or c == 0x7F for c in value):
                raise IcapError(f"control character in {name} header {_show(field)}")
            fields.append((field, value.strip(b" \t")))
    return Message(start_line=start_line, headers=tuple(fields))


def _show(data: bytes) -> str:
    text = repr(data[:60])
    return text + ("..." if len(data) > 60 else "")
