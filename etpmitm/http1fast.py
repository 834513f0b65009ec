"""The HTTP/1.1 observer's fast path: heads of plain keep-alive exchanges, parsed by llhttp.

:class:`etpmitm.http1.HTTP1Observer` frames with h11, which costs tens of
microseconds per exchange in pure Python.  Most exchanges are plain: a
bodiless HTTP/1.1 request whose whole head arrives in one read, answered by
an HTTP/1.1 response framed by one Content-Length.  For those the observer
parses the heads with llhttp (``httptools``, C) and counts the body itself.

A head takes the fast path only if h11 would read it the same way: it must
match h11's own grammar (:mod:`h11._abnf`) with CRLF line ends and no
obs-fold, llhttp must parse it, and it must carry nothing that changes the
framing or the connection (no body, Expect, Upgrade, CONNECT, HEAD, HTTP/1.0,
``Connection`` other than keep-alive; on responses 1xx, 204, 304, chunked or
close-delimited bodies).  Anything else, and every refusal, is left to h11
(``tests.test_http1.FastPathTests`` checks both paths decide alike).
"""

from __future__ import annotations

import re

import attrs
import httptools
from h11._abnf import header_field, request_line, status_line

from etpmitm.http1guard import MAX_HEAD

REQUEST_HEAD = re.compile(f"{request_line}\r\n(?:{header_field}\r\n)*\r\n".encode("ascii"))
RESPONSE_HEAD = re.compile(f"{status_line}\r\n(?:{header_field}\r\n)*\r\n".encode("ascii"))

Headers = list[tuple[bytes, bytes]]

_NOT_PLAIN = frozenset({b"content-length", b"transfer-encoding", b"expect", b"upgrade"})
"""Request fields that h11 must see: a body, 100-continue, a protocol switch."""


@attrs.define(slots=True)
class Head:
    """A parsed head: header names in lower case, values without surrounding whitespace."""

    headers: Headers
    method: bytes = b""
    target: bytes = b""
    status: int = 0
    length: int = 0
    """The response's Content-Length."""


class _Collect:
    """httptools callbacks: the target and the header fields."""

    __slots__ = ("target", "headers")

    def __init__(self) -> None:
        self.target = b""
        self.headers: Headers = []

    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value.strip(b" \t")))


def _plainConnection(headers: Headers) -> bool:
    for name, value in headers:
        if name == b"connection" and value.lower() != b"keep-alive":
            return False
    return True


class FastParser:
    """Parses the heads of one connection's plain exchanges (one per direction at a time)."""

    __slots__ = ("_requests", "_responses", "_up", "_down")

    def __init__(self) -> None:
        self._up = _Collect()
        self._down = _Collect()
        self._requests: httptools.HttpRequestParser | None = None
        self._responses: httptools.HttpResponseParser | None = None

    def request(self, raw: bytes) -> Head | None:
        """``raw`` is exactly one request head (ending in CRLF CRLF): its facts if
        the fast path can take it, else None (h11 takes it)."""
        if len(raw) > MAX_HEAD or REQUEST_HEAD.fullmatch(raw) is None:
            return None
        collect = self._up
        collect.target, collect.headers = b"", []
        parser = self._requests
        if parser is None:
            parser = self._requests = httptools.HttpRequestParser(collect)
        try:
            parser.feed_data(raw)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self._requests = None
            return None
        method = parser.get_method()
        headers = collect.headers
        hosts = 0
        for name, _ in headers:
            if name == b"host":
                hosts += 1
            elif name in _NOT_PLAIN:
                hosts = -1
                break
        if (
            hosts != 1
            or parser.get_http_version() != "1.1"
            or method in (b"HEAD", b"CONNECT")
            or not _plainConnection(headers)
        ):
            self._requests = None  # it may wait for a body, or have seen an upgrade
            return None
        return Head(headers, method=method, target=collect.target)

    def response(self, raw: bytes) -> Head | None:
        """``raw`` is exactly one response head: its facts if its body is framed by
        one Content-Length and the connection stays open, else None."""
        if len(raw) > MAX_HEAD or RESPONSE_HEAD.fullmatch(raw) is None:
            return None
        collect = self._down
        collect.target, collect.headers = b"", []
        parser, self._responses = self._responses, None
        if parser is None:
            parser = httptools.HttpResponseParser(collect)
        try:
            parser.feed_data(raw)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            return None
        status = parser.get_status_code()
        headers = collect.headers
        if parser.get_http_version() != "1.1" or status < 200 or status in (204, 304) or not _plainConnection(headers):
            return None
        lengths = [value for name, value in headers if name == b"content-length"]
        if len(lengths) != 1 or not lengths[0].isdigit() or len(lengths[0]) > 18:
            return None
        if any(name == b"transfer-encoding" for name, _ in headers):
            return None
        self._responses = parser  # it reads the body too, and is then ready for the next head
        return Head(headers, status=status, length=int(lengths[0]))

    def body(self, data: bytes) -> None:
        """Body bytes of the response :meth:`response` took (exactly its Content-Length in all)."""
        if self._responses is not None:
            try:
                self._responses.feed_data(data)
            except (httptools.HttpParserError, httptools.HttpParserUpgrade):
                self._responses = None

    def forget(self) -> None:
        """The exchange left the fast path: the response parser may be mid-message."""
        self._responses = None
