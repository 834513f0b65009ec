"""What a device sees when the gateway refuses an origin (sans-IO: no reactor).

:func:`render_html` makes the page; :class:`BlockPageHTTP1` and
:class:`BlockPageH2` answer every request on the device's decrypted connection
with it and then ask to be closed (``done``); :func:`responder_for` picks one
by the ALPN protocol agreed with the device. Before any handshake, or for a
protocol with no responder, the caller sends :func:`tls_alert` instead.
"""

from __future__ import annotations

import html
import http
import re

import attrs
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

ALERT_ACCESS_DENIED = 49

MAX_REQUEST_HEAD = 16 * 1024
"""Bytes of HTTP/1.1 request head read at most; more is answered with 431."""

TITLE = "Blocked by your organization's TLS inspection gateway"
_MAX_HOST, _MAX_REASON, _MAX_KIND = 255, 1000, 64
"""Input lengths kept, so that the page stays well below 16 KiB (one HTTP/2 frame)."""

_EXPLANATIONS = {
    "untrusted-origin": (
        "The site's security certificate could not be verified, so the gateway did not connect you "
        "to it: someone could be impersonating the site."
    ),
    "policy": "Your organization's policy does not allow connections to this site.",
}
_DEFAULT_EXPLANATION = "The gateway did not connect you to this site."

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 0; background: #f4f4f5; color: #18181b; }}
main {{ max-width: 40rem; margin: 4rem auto; padding: 2rem; background: #fff; border-top: 6px solid #b91c1c; }}
h1 {{ font-size: 1.4rem; margin-top: 0; }}
dt {{ font-weight: bold; margin-top: .8rem; }}
dd {{ margin: .2rem 0 0; overflow-wrap: anywhere; }}
p.help {{ color: #52525b; font-size: .9rem; margin-top: 2rem; }}
</style>
</head>
<body>
<main>
<h1>{title}</h1>
<p>{explanation}</p>
<dl>
<dt>Site</dt><dd>{host}</dd>
<dt>Reason</dt><dd>{reason}</dd>
<dt>Kind</dt><dd>{kind}</dd>{category}
</dl>
<p class="help">If you need this site for your work, contact your IT help desk and tell them what this page says.</p>
</main>
</body>
</html>
"""


def _text(value: str, limit: int) -> str:
    """``value`` cut to ``limit`` characters, control characters replaced, HTML-escaped."""
    if len(value) > limit:
        value = value[: limit - 1] + "\u2026"
    return html.escape("".join(c if c.isprintable() else "\ufffd" for c in value), quote=True)


def render_html(host: str, reason: str, kind: str, category: str | None = None) -> bytes:
    """A small self-contained UTF-8 page naming ``host`` and ``reason`` (all input escaped),
    and the threat list's ``category`` if there is one."""
    shown = "" if category is None else f"\n<dt>Category</dt><dd>{_text(category, _MAX_KIND)}</dd>"
    page = _TEMPLATE.format(
        category=shown,
        title=html.escape(TITLE),
        explanation=html.escape(_EXPLANATIONS.get(kind, _DEFAULT_EXPLANATION)),
        host=_text(host or "(unknown)", _MAX_HOST),
        reason=_text(reason, _MAX_REASON),
        kind=_text(kind, _MAX_KIND),
    )
    return page.encode("utf-8")


def header_token(kind: str) -> str:
    """``kind`` as a safe HTTP header value: token characters only, at most 64."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", kind)[:_MAX_KIND] or "blocked"


@attrs.frozen
class BlockResponse:
    """The answer to every request: a status, the block kind, the page."""

    body: bytes
    kind: str = attrs.field(converter=header_token)
    status: int = attrs.field(default=502, validator=attrs.validators.in_(frozenset(http.HTTPStatus)))

    @classmethod
    def render(
        cls, host: str, reason: str, kind: str, *, status: int = 502, category: str | None = None
    ) -> BlockResponse:
        """The response carrying :func:`render_html` of these arguments."""
        return cls(render_html(host, reason, kind, category), kind, status)

    def headers(self) -> list[tuple[str, str]]:
        """Header fields shared by HTTP/1.1 and HTTP/2 (no connection-specific ones)."""
        return [
            ("content-type", "text/html; charset=utf-8"),
            ("content-length", str(len(self.body))),
            ("cache-control", "no-store"),
            ("x-etpmitm-block", self.kind),
        ]


# -- HTTP/1.1 -----------------------------------------------------------------------------

_TCHAR = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]"
_REQUEST_LINE = re.compile(rb"(" + _TCHAR + rb"+) [\x21-\x7e]+ HTTP/[0-9]\.[0-9]")
_REQUEST_LINE_START = re.compile(_TCHAR + rb"*(?: [\x21-\x7e]*(?: [\x21-\x7e]*)?)?\r?")
_HEADER_LINE = re.compile(_TCHAR + rb"+:[\t\x20-\x7e\x80-\xff]*")
_EARLY_CHECK = 64
"""Bytes of an unfinished request line checked as they come, to refuse non-HTTP at once."""


@attrs.define
class BlockPageHTTP1:
    """Answers the first HTTP/1.1 request head with the block page, then is ``done``.

    The request body is never read. A malformed head gets 400, a head longer
    than :data:`MAX_REQUEST_HEAD` 431; both carry the page too.
    """

    response: BlockResponse
    done: bool = attrs.field(default=False, init=False)
    _buffer: bytearray = attrs.field(factory=bytearray, init=False)
    _line_start: int = attrs.field(default=0, init=False)
    _method: bytes | None = attrs.field(default=None, init=False)

    def initiate(self) -> bytes:
        """Nothing: in HTTP/1.1 the client speaks first."""
        return b""

    def receive(self, data: bytes) -> bytes:
        """Feed decrypted bytes from the device; returns the bytes to send back."""
        if self.done:
            return b""
        self._buffer += data
        while (end := self._buffer.find(b"\n", self._line_start, MAX_REQUEST_HEAD)) >= 0:
            line = bytes(self._buffer[self._line_start : end]).removesuffix(b"\r")
            self._line_start = end + 1
            status = self._judge_line(line)
            if status is not None:
                return self._answer(status)
        if self._method is None:
            start = bytes(self._buffer[self._line_start : self._line_start + _EARLY_CHECK])
            if not _REQUEST_LINE_START.fullmatch(start):
                return self._answer(400)
        if len(self._buffer) >= MAX_REQUEST_HEAD:
            return self._answer(431)
        return b""

    def _judge_line(self, line: bytes) -> int | None:
        """The status to answer with once ``line`` ends the head or is malformed, else None."""
        if self._method is None:
            if not line:
                return None  # RFC 9112 2.2: ignore empty lines before the request line
            match = _REQUEST_LINE.fullmatch(line)
            if match is None:
                return 400
            self._method = match.group(1)
            return None
        if not line:
            return self.response.status
        return None if _HEADER_LINE.fullmatch(line) else 400

    def _answer(self, status: int) -> bytes:
        self.done = True
        self._buffer.clear()
        lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}"]
        lines += [f"{_http1_name(name)}: {value}" for name, value in self.response.headers()]
        lines += ["Connection: close", "", ""]
        head = "\r\n".join(lines).encode("ascii")
        return head if self._method == b"HEAD" else head + self.response.body


def _http1_name(name: str) -> str:
    return "-".join(part.capitalize() for part in name.split("-"))


# -- HTTP/2 -------------------------------------------------------------------------------


class BlockPageH2:
    """Answers every HTTP/2 request stream with the block page, then sends GOAWAY and is ``done``.

    The page is sent as the flow-control windows allow; request bodies are
    acknowledged and dropped.
    """

    def __init__(self, response: BlockResponse) -> None:
        self.response = response
        self.done = False
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self._connection = h2.connection.H2Connection(config)
        self._initiated = False
        self._answered = False
        self._pending: dict[int, tuple[memoryview, bool]] = {}
        """stream id -> (body still to send, whether to reset the stream once it is sent)."""

    def initiate(self) -> bytes:
        """The server preface (SETTINGS); send it as soon as the device's TLS is up."""
        if self._initiated:
            return b""
        self._initiated = True
        self._connection.initiate_connection()
        return self._connection.data_to_send()

    def receive(self, data: bytes) -> bytes:
        """Feed decrypted bytes from the device; returns the bytes to send back."""
        if self.done:
            return b""
        preface = self.initiate()
        try:
            events = self._connection.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.done = True  # h2 has queued a GOAWAY with the error code
            return preface + self._connection.data_to_send()
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self._respond(event)
            elif isinstance(event, h2.events.DataReceived) and event.flow_controlled_length:
                self._connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self._pending.pop(event.stream_id, None)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.done = True
                return preface + self._connection.data_to_send()
        self._flush()
        return preface + self._connection.data_to_send()

    def _respond(self, request: h2.events.RequestReceived) -> None:
        self._answered = True
        stream_id = request.stream_id
        client_done = request.stream_ended is not None
        head_only = dict(request.headers).get(b":method") == b"HEAD" or not self.response.body
        fields = [(":status", str(self.response.status)), *self.response.headers()]
        self._connection.send_headers(stream_id, fields, end_stream=head_only)
        if not head_only:
            self._pending[stream_id] = (memoryview(self.response.body), not client_done)
        elif not client_done:
            self._connection.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)

    def _flush(self) -> None:
        """Send what the flow-control windows allow; GOAWAY once every answer is complete."""
        for stream_id, (body, reset) in list(self._pending.items()):
            while body:
                size = min(
                    len(body),
                    self._connection.local_flow_control_window(stream_id),
                    self._connection.max_outbound_frame_size,
                )
                if size <= 0:
                    break
                self._connection.send_data(stream_id, body[:size].tobytes(), end_stream=size == len(body))
                body = body[size:]
            if body:
                self._pending[stream_id] = (body, reset)
                continue
            del self._pending[stream_id]
            if reset:  # RFC 9113 8.1: the response is complete; the client may stop sending its body
                self._connection.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)
        if self._answered and not self._pending:
            self._connection.close_connection(h2.errors.ErrorCodes.NO_ERROR)
            self.done = True


def responder_for(alpn: bytes | None, response: BlockResponse) -> BlockPageHTTP1 | BlockPageH2 | None:
    """The responder for the device's ALPN: none or http/1.1 -> HTTP/1.1, h2 -> HTTP/2, else None."""
    if alpn is None or alpn == b"http/1.1":
        return BlockPageHTTP1(response)
    if alpn == b"h2":
        return BlockPageH2(response)
    return None


def tls_alert(description: int) -> bytes:
    """A plaintext fatal TLS alert record (TLS 1.2 record version), e.g. ``tls_alert(ALERT_ACCESS_DENIED)``."""
    if not 0 <= description <= 255:
        raise ValueError(f"alert description {description} is not a byte")
    return bytes((21, 3, 3, 0, 2, 2, description))
