"""Tests for etpmitm.blockpage: the page, the HTTP/1.1 and HTTP/2 responders, TLS alerts."""

from __future__ import annotations

import http.client
import io
from html.parser import HTMLParser

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
from twisted.trial.unittest import TestCase

from etpmitm.blockpage import (
    ALERT_ACCESS_DENIED,
    MAX_REQUEST_HEAD,
    TITLE,
    BlockPageH2,
    BlockPageHTTP1,
    BlockResponse,
    render_html,
    responder_for,
    tls_alert,
)
from tests.hellos import python_client_hello

EVIL_HOST = '<script>alert("host")</script>.example'
EVIL_REASON = "certificate has expired & 'self-signed' <img src=x onerror=alert(1)> \"quoted\""


class PageText(HTMLParser):
    """The page as a browser reads it: title, and each <dt> label with its <dd> text (entities decoded)."""

    def __init__(self, page: bytes) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.title = ""
        self.fields: dict[str, str] = {}
        self._open: list[str] = []
        self._label = ""
        self.feed(page.decode("utf-8"))
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag not in ("meta", "link", "img", "br", "hr", "input"):  # void elements never close
            self._open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        self._open.pop()

    def handle_data(self, data: str) -> None:
        where = self._open[-1] if self._open else ""
        if where == "title":
            self.title += data
        elif where == "dt":
            self._label = data
        elif where == "dd":
            self.fields[self._label] = self.fields.get(self._label, "") + data


class RenderTests(TestCase):
    def test_names_host_and_reason_escaped(self) -> None:
        page = render_html(EVIL_HOST, EVIL_REASON, "untrusted-origin")
        text = PageText(page)
        self.assertEqual(text.title, TITLE)
        self.assertEqual(text.fields["Site"], EVIL_HOST)
        self.assertEqual(text.fields["Reason"], EVIL_REASON)
        self.assertEqual(text.fields["Kind"], "untrusted-origin")
        self.assertNotIn("script", text.tags)
        self.assertNotIn("img", text.tags)
        self.assertNotIn(b"<script", page)
        self.assertNotIn(b"<img", page)
        self.assertIn(b"&lt;script&gt;alert(&quot;host&quot;)", page)
        self.assertIn(b"&#x27;self-signed&#x27;", page)

    def test_self_contained_utf8(self) -> None:
        page = render_html("bücher.example", "policy: shopping", "policy")
        self.assertEqual(PageText(page).fields["Site"], "bücher.example")
        self.assertIn("bücher".encode("utf-8"), page)
        self.assertIn(b'<meta charset="utf-8">', page)
        for external in (b"http:", b"https:", b"src=", b"href=", b"url(", b"@import", b"<link", b"<script"):
            self.assertNotIn(external, page)

    def test_kind_explains_in_plain_words(self) -> None:
        untrusted = render_html("x.example", "expired", "untrusted-origin").decode()
        policy = render_html("x.example", "gambling", "policy").decode()
        self.assertIn("certificate could not be verified", untrusted)
        self.assertIn("policy does not allow", policy)

    def test_control_characters_and_huge_input_stay_small(self) -> None:
        page = render_html("a\x00b\r\nc", "<" * 100_000, "k\x1b" * 1000)
        self.assertLess(len(page), 16 * 1024)
        text = PageText(page)
        self.assertEqual(text.fields["Site"], "a\ufffdb\ufffd\ufffdc")
        self.assertTrue(text.fields["Reason"].startswith("<<<"))
        self.assertTrue(text.fields["Reason"].endswith("\u2026"))
        self.assertNotIn(b"\x00", page)
        self.assertNotIn(b"\x1b", page)


# -- HTTP/1.1 -----------------------------------------------------------------------------


class _FakeSocket:
    def __init__(self, data: bytes) -> None:
        self._file = io.BytesIO(data)

    def makefile(self, mode: str) -> io.BytesIO:
        return self._file


def parse_response(data: bytes, method: str = "GET") -> tuple[http.client.HTTPResponse, bytes]:
    """Parse ``data`` with the standard library's HTTP client; also return what follows the body."""
    response = http.client.HTTPResponse(_FakeSocket(data), method=method)  # type: ignore[arg-type]
    response.begin()
    body = response.read()
    rest = response.fp.read() if response.fp is not None else b""
    return response, body + rest


GET = b"GET /path?q=1 HTTP/1.1\r\nHost: blocked.example\r\nUser-Agent: test/1.0\r\nAccept: */*\r\n\r\n"


class HTTP1Tests(TestCase):
    def setUp(self) -> None:
        self.response = BlockResponse.render("blocked.example", "certificate has expired", "untrusted-origin")

    def assertBlockResponse(
        self, data: bytes, status: int, reason: str, *, method: str = "GET", kind: str = "untrusted-origin"
    ) -> None:
        response, body = parse_response(data, method)
        self.assertEqual((response.version, response.status, response.reason), (11, status, reason))
        self.assertEqual(response.getheader("Content-Type"), "text/html; charset=utf-8")
        self.assertEqual(response.getheader("Content-Length"), str(len(self.response.body)))
        self.assertEqual(response.getheader("Cache-Control"), "no-store")
        self.assertEqual(response.getheader("Connection"), "close")
        self.assertEqual(response.headers.get_all("X-Etpmitm-Block"), [kind])
        self.assertEqual(body, b"" if method == "HEAD" else self.response.body)

    def test_request_in_one_go(self) -> None:
        responder = BlockPageHTTP1(self.response)
        self.assertEqual(responder.initiate(), b"")
        self.assertFalse(responder.done)
        out = responder.receive(GET)
        self.assertTrue(responder.done)
        self.assertBlockResponse(out, 502, "Bad Gateway")
        self.assertEqual(responder.receive(GET), b"", "answers once, then only waits to be closed")

    def test_request_byte_by_byte(self) -> None:
        responder = BlockPageHTTP1(self.response)
        for index in range(len(GET) - 1):
            self.assertEqual(responder.receive(GET[index : index + 1]), b"", f"answered early at byte {index}")
            self.assertFalse(responder.done)
        out = responder.receive(GET[-1:])
        self.assertTrue(responder.done)
        self.assertBlockResponse(out, 502, "Bad Gateway")

    def test_policy_status_403(self) -> None:
        self.response = BlockResponse.render("casino.example", "gambling", "policy", status=403)
        out = BlockPageHTTP1(self.response).receive(GET)
        self.assertBlockResponse(out, 403, "Forbidden", kind="policy")

    def test_answers_without_the_request_body(self) -> None:
        responder = BlockPageHTTP1(self.response)
        out = responder.receive(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nfirst part")
        self.assertTrue(responder.done)
        self.assertBlockResponse(out, 502, "Bad Gateway")

    def test_head_gets_no_body(self) -> None:
        out = BlockPageHTTP1(self.response).receive(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertBlockResponse(out, 502, "Bad Gateway", method="HEAD")

    def test_leading_empty_lines_and_bare_newlines(self) -> None:
        out = BlockPageHTTP1(self.response).receive(b"\r\n\r\nGET / HTTP/1.0\nHost: x\n\n")
        self.assertBlockResponse(out, 502, "Bad Gateway")

    def test_oversized_head_431(self) -> None:
        responder = BlockPageHTTP1(self.response)
        head = b"GET / HTTP/1.1\r\n" + b"".join(b"X-Filler-%05d: %s\r\n" % (i, b"a" * 80) for i in range(400))
        self.assertGreater(len(head), MAX_REQUEST_HEAD)
        outputs = []
        for start in range(0, len(head), 1000):
            outputs.append(responder.receive(head[start : start + 1000]))
            if responder.done:
                break
        self.assertTrue(responder.done)
        self.assertEqual(b"".join(outputs[:-1]), b"")
        self.assertBlockResponse(outputs[-1], 431, "Request Header Fields Too Large")

    def test_head_just_under_the_limit_is_answered(self) -> None:
        head = b"GET / HTTP/1.1\r\nX-Filler: " + b"a" * (MAX_REQUEST_HEAD - 100) + b"\r\n\r\n"
        self.assertLess(len(head), MAX_REQUEST_HEAD)
        self.assertBlockResponse(BlockPageHTTP1(self.response).receive(head), 502, "Bad Gateway")

    def test_one_long_line_431(self) -> None:
        responder = BlockPageHTTP1(self.response)
        self.assertEqual(responder.receive(b"GET /" + b"a" * (MAX_REQUEST_HEAD - 10)), b"")
        self.assertBlockResponse(responder.receive(b"a" * 20), 431, "Request Header Fields Too Large")

    def test_garbage_400(self) -> None:
        cases = [
            python_client_hello()[:1],  # the device speaks TLS again: refused at its first byte
            b"\x00\x01\x02\x03",
            b"GET /\r\n\r\n",  # HTTP/0.9
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
        ]
        for data in cases:
            responder = BlockPageHTTP1(self.response)
            out = responder.receive(data)
            self.assertTrue(responder.done, data)
            self.assertBlockResponse(out, 400, "Bad Request")

    def test_unknown_status_refused(self) -> None:
        self.assertRaises(ValueError, BlockResponse, b"page", "policy", 499)

    def test_kind_cannot_inject_headers(self) -> None:
        self.response = BlockResponse(b"page", "policy\r\nSet-Cookie: evil=1")
        response, body = parse_response(BlockPageHTTP1(self.response).receive(GET))
        self.assertEqual(response.getheader("X-Etpmitm-Block"), "policy--Set-Cookie--evil-1")
        self.assertIsNone(response.getheader("Set-Cookie"))
        self.assertEqual(body, b"page")


# -- HTTP/2 -------------------------------------------------------------------------------


def h2_client() -> h2.connection.H2Connection:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    client.initiate_connection()
    return client


def request_headers(method: str = "GET") -> list[tuple[str, str]]:
    return [(":method", method), (":scheme", "https"), (":authority", "blocked.example"), (":path", "/")]


def converse(client: h2.connection.H2Connection, server: BlockPageH2) -> list[h2.events.Event]:
    """Shuttle bytes between ``client`` and ``server`` until neither has more; the client's events."""
    received: list[h2.events.Event] = []
    to_client = server.initiate()
    for _ in range(1000):
        to_server = client.data_to_send()
        if not to_client and not to_server:
            return received
        if to_server:
            to_client += server.receive(to_server)
        if to_client:
            events = client.receive_data(to_client)
            to_client = b""
            received += events
            if not any(isinstance(e, h2.events.ConnectionTerminated) for e in events):
                for event in events:
                    if isinstance(event, h2.events.DataReceived):
                        client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
    raise AssertionError("the conversation did not settle")


class H2Tests(TestCase):
    def setUp(self) -> None:
        self.response = BlockResponse.render("blocked.example", "certificate has expired", "untrusted-origin")
        self.server = BlockPageH2(self.response)

    def responses(self, events: list[h2.events.Event]) -> dict[int, tuple[dict[str, str], bytes, bool]]:
        """Per stream: response headers, body, whether the stream ended."""
        streams: dict[int, tuple[dict[str, str], bytes, bool]] = {}
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                assert event.stream_id is not None
                streams[event.stream_id] = (dict(event.headers), b"", False)  # type: ignore[arg-type]
            elif isinstance(event, h2.events.DataReceived):
                assert event.stream_id is not None and event.data is not None
                headers, body, ended = streams[event.stream_id]
                streams[event.stream_id] = (headers, body + event.data, ended)
            elif isinstance(event, h2.events.StreamEnded):
                assert event.stream_id is not None
                headers, body, _ = streams[event.stream_id]
                streams[event.stream_id] = (headers, body, True)
        return streams

    def assertGoAway(self, events: list[h2.events.Event], last_stream_id: int) -> None:
        self.assertIsInstance(events[-1], h2.events.ConnectionTerminated)
        terminated = events[-1]
        assert isinstance(terminated, h2.events.ConnectionTerminated)
        self.assertEqual(terminated.error_code, h2.errors.ErrorCodes.NO_ERROR)
        self.assertEqual(terminated.last_stream_id, last_stream_id)
        self.assertTrue(self.server.done)

    def test_get(self) -> None:
        client = h2_client()
        client.send_headers(1, request_headers(), end_stream=True)
        events = converse(client, self.server)
        self.assertEqual(
            self.responses(events),
            {
                1: (
                    {
                        ":status": "502",
                        "content-type": "text/html; charset=utf-8",
                        "content-length": str(len(self.response.body)),
                        "cache-control": "no-store",
                        "x-etpmitm-block": "untrusted-origin",
                    },
                    self.response.body,
                    True,
                )
            },
        )
        kinds = [type(e) for e in events]
        self.assertLess(kinds.index(h2.events.StreamEnded), kinds.index(h2.events.ConnectionTerminated))
        self.assertGoAway(events, 1)
        self.assertEqual(self.server.receive(b"more"), b"")

    def test_not_done_before_a_request(self) -> None:
        client = h2_client()
        self.assertEqual(converse(client, self.server)[0].__class__, h2.events.RemoteSettingsChanged)
        self.assertFalse(self.server.done)

    def test_every_stream_then_goaway_status_403(self) -> None:
        self.server = BlockPageH2(BlockResponse.render("casino.example", "gambling", "policy", status=403))
        client = h2_client()
        for stream_id in (1, 3, 5):
            client.send_headers(stream_id, request_headers(), end_stream=True)
        events = converse(client, self.server)
        streams = self.responses(events)
        self.assertEqual(sorted(streams), [1, 3, 5])
        for headers, body, ended in streams.values():
            self.assertEqual((headers[":status"], headers["x-etpmitm-block"]), ("403", "policy"))
            self.assertEqual(body, self.server.response.body)
            self.assertTrue(ended)
        self.assertGoAway(events, 5)

    def test_small_client_window(self) -> None:
        """A client window smaller than the page: the rest follows its WINDOW_UPDATEs."""
        client = h2_client()
        client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 100})
        client.send_headers(1, request_headers(), end_stream=True)
        events = converse(client, self.server)
        data_frames = [e for e in events if isinstance(e, h2.events.DataReceived)]
        self.assertGreater(len(data_frames), len(self.response.body) // 100)
        self.assertTrue(all(e.flow_controlled_length <= 100 for e in data_frames))
        self.assertEqual(self.responses(events)[1][1], self.response.body)
        self.assertGoAway(events, 1)

    def test_head(self) -> None:
        client = h2_client()
        client.send_headers(1, request_headers("HEAD"), end_stream=True)
        events = converse(client, self.server)
        headers, body, ended = self.responses(events)[1]
        self.assertEqual((headers[":status"], headers["content-length"], body, ended), ("502", str(len(self.response.body)), b"", True))
        self.assertGoAway(events, 1)

    def test_post_body_not_awaited(self) -> None:
        """Answered at the request's headers; then RST_STREAM NO_ERROR stops the upload (RFC 9113 8.1)."""
        client = h2_client()
        client.send_headers(1, [(":method", "POST"), *request_headers()[1:]], end_stream=False)
        client.send_data(1, b"x" * 1000)
        events = converse(client, self.server)
        self.assertEqual(self.responses(events)[1][1], self.response.body)
        resets = [e for e in events if isinstance(e, h2.events.StreamReset)]
        self.assertEqual([(r.stream_id, r.error_code) for r in resets], [(1, h2.errors.ErrorCodes.NO_ERROR)])
        self.assertGoAway(events, 1)

    def test_garbage_ends_the_connection(self) -> None:
        self.server.initiate()
        self.server.receive(GET)
        self.assertTrue(self.server.done)

    def test_protocol_error_sends_goaway(self) -> None:
        client = h2_client()
        converse(client, self.server)
        frame = b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00"  # WINDOW_UPDATE of 0: PROTOCOL_ERROR
        events = client.receive_data(self.server.receive(frame))
        self.assertTrue(self.server.done)
        self.assertEqual([type(e) for e in events], [h2.events.ConnectionTerminated])
        terminated = events[0]
        assert isinstance(terminated, h2.events.ConnectionTerminated)
        self.assertEqual(terminated.error_code, h2.errors.ErrorCodes.PROTOCOL_ERROR)


# -- choosing, alerts ---------------------------------------------------------------------


class ResponderForTests(TestCase):
    def test_mapping(self) -> None:
        response = BlockResponse(b"page", "policy")
        self.assertIsInstance(responder_for(None, response), BlockPageHTTP1)
        self.assertIsInstance(responder_for(b"http/1.1", response), BlockPageHTTP1)
        self.assertIsInstance(responder_for(b"h2", response), BlockPageH2)
        for other in (b"h3", b"http/1.0", b"spdy/3.1", b"acme-tls/1", b""):
            self.assertIsNone(responder_for(other, response), other)


class AlertTests(TestCase):
    def test_access_denied(self) -> None:
        self.assertEqual(tls_alert(ALERT_ACCESS_DENIED), bytes.fromhex("15 03 03 00 02 02 31"))

    def test_not_a_byte(self) -> None:
        self.assertRaises(ValueError, tls_alert, 256)
        self.assertRaises(ValueError, tls_alert, -1)
