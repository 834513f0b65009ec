"""The sans-IO ICAP codec: requests out, responses in, and the [icap] settings."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from etpmitm.icap.codec import (
    IcapError,
    IcapResponse,
    ResponseParser,
    encode_chunk,
    encode_request,
    last_chunk,
    options_request,
    parse_options,
)
from etpmitm.icap.results import interpret
from etpmitm.icap.settings import IcapSettings, parse_service_url, parse_size
from etpmitm.policy.schema import PolicyError, parse_policy
from etpmitm.scanning import Message

URL = parse_service_url("icap://127.0.0.1:1344/virus_scan")
REQ = Message(b"GET /a HTTP/1.1", ((b"Host", b"example.test"),))
RES = Message(b"HTTP/1.1 200 OK", ((b"Content-Length", b"5"),))

BLOCK_HEAD = b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/html\r\n\r\n"
BLOCK = (
    b'ICAP/1.0 200 OK\r\nISTag: "T-1"\r\n'
    b"X-Infection-Found: Type=0; Resolution=2; Threat=Eicar-Test;\r\n"
    b"X-Violations-Found: 1\r\n\t-\r\n\tEicar-Test\r\n\t0\r\n\t0\r\n"
    b"Encapsulated: res-hdr=0, res-body=%d\r\n\r\n" % len(BLOCK_HEAD)
    + BLOCK_HEAD
    + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
)


def parse(data: bytes, **kwargs: object) -> IcapResponse:
    parser = ResponseParser(**kwargs)  # type: ignore[arg-type]
    response = parser.feed(data)
    assert response is not None, "incomplete"
    return response


class RequestTests(SynchronousTestCase):
    def test_respmod_offsets(self) -> None:
        wire = encode_request("respmod", URL, REQ, RES, has_body=True, preview=1024)
        head, _, heads = wire.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.assertEqual(lines[0], b"RESPMOD icap://127.0.0.1:1344/virus_scan ICAP/1.0")
        self.assertIn(b"Host: 127.0.0.1:1344", lines)
        self.assertIn(b"Allow: 204", lines)
        self.assertIn(b"Preview: 1024", lines)
        req_hdr = b"GET /a HTTP/1.1\r\nHost: example.test\r\n\r\n"
        res_hdr = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
        self.assertIn(b"Encapsulated: req-hdr=0, res-hdr=%d, res-body=%d" % (len(req_hdr), len(req_hdr) + len(res_hdr)), lines)
        self.assertEqual(heads, req_hdr + res_hdr)

    def test_reqmod_and_null_body(self) -> None:
        wire = encode_request("reqmod", URL, REQ, None, has_body=False, preview=1024)
        self.assertIn(b"Encapsulated: req-hdr=0, null-body=39\r\n", wire)
        self.assertNotIn(b"Preview", wire)  # no body, no preview
        self.assertTrue(wire.startswith(b"REQMOD "))

    def test_respmod_needs_a_response(self) -> None:
        self.assertRaises(IcapError, encode_request, "respmod", URL, REQ, None, has_body=False, preview=None)

    def test_header_injection_refused(self) -> None:
        bad = Message(b"GET / HTTP/1.1", ((b"X", b"a\r\nEncapsulated: null-body=0"),))
        self.assertRaises(IcapError, encode_request, "reqmod", URL, bad, None, has_body=False, preview=None)

    def test_chunks(self) -> None:
        self.assertEqual(encode_chunk(b"x" * 26), b"1a\r\n" + b"x" * 26 + b"\r\n")
        self.assertEqual(encode_chunk(b""), b"")
        self.assertEqual(last_chunk(), b"0\r\n\r\n")
        self.assertEqual(last_chunk(ieof=True), b"0; ieof\r\n\r\n")

    def test_options(self) -> None:
        self.assertEqual(
            options_request(URL),
            b"OPTIONS icap://127.0.0.1:1344/virus_scan ICAP/1.0\r\nHost: 127.0.0.1:1344\r\nEncapsulated: null-body=0\r\n\r\n",
        )


class ResponseTests(SynchronousTestCase):
    def test_options_response(self) -> None:
        response = parse(
            b'ICAP/1.0 200 OK\r\nMethods: RESPMOD, REQMOD\r\nISTag: "CI0001-x"\r\nPreview: 1024\r\n'
            b"Allow: 204\r\nMax-Connections: 50\r\nOptions-TTL: 3600\r\nEncapsulated: null-body=0\r\n\r\n",
            options=True,
        )
        options = parse_options(response)
        self.assertEqual(options.istag, "CI0001-x")
        self.assertEqual(options.methods, {"RESPMOD", "REQMOD"})
        self.assertEqual((options.preview, options.allow_204, options.max_connections, options.ttl), (1024, True, 50, 3600))

    def test_bad_options_number(self) -> None:
        response = parse(b"ICAP/1.0 200 OK\r\nPreview: lots\r\nEncapsulated: null-body=0\r\n\r\n", options=True)
        self.assertRaises(IcapError, parse_options, response)

    def test_100_and_204(self) -> None:
        parser = ResponseParser()
        self.assertEqual(parser.feed(b"ICAP/1.0 100 Continue\r\n\r\nICAP/1.0 2").status, 100)  # type: ignore[union-attr]
        self.assertEqual(parser.leftover, b"ICAP/1.0 2")
        response = parse(b'ICAP/1.0 204 No Content\r\nISTag: "W3E4R7U9"\r\nEncapsulated: null-body=0\r\n\r\n')
        self.assertEqual((response.status, response.istag), (204, "W3E4R7U9"))

    def test_200_block_page_byte_by_byte(self) -> None:
        parser = ResponseParser()
        results = [parser.feed(BLOCK[i : i + 1]) for i in range(len(BLOCK))]
        self.assertEqual(results[:-1], [None] * (len(BLOCK) - 1))
        response = results[-1]
        assert response is not None
        self.assertEqual(response.status, 200)
        self.assertEqual(response.threat, "Eicar-Test")
        self.assertEqual(response.istag, "T-1")
        self.assertEqual(response.response, Message(b"HTTP/1.1 403 Forbidden", ((b"Content-Type", b"text/html"),)))
        self.assertEqual(response.body, b"hello world")
        result = interpret("respmod", "icap://x/y", response, 0.5)
        self.assertEqual((result.verdict, result.outcome, result.threat, result.duration), ("replace", "infected", "Eicar-Test", 0.5))

    def test_violations_only(self) -> None:
        data = BLOCK.replace(b"X-Infection-Found: Type=0; Resolution=2; Threat=Eicar-Test;\r\n", b"")
        self.assertEqual(parse(data).threat, "Eicar-Test")

    def test_reqmod_modified_request(self) -> None:
        head = b"POST /cleaned HTTP/1.1\r\nHost: a\r\n\r\n"
        response = parse(b"ICAP/1.0 200 OK\r\nEncapsulated: req-hdr=0, req-body=%d\r\n\r\n" % len(head) + head + b"2\r\nok\r\n0\r\n\r\n")
        result = interpret("reqmod", "icap://x/y", response, 0.0)
        assert result.replacement is not None
        self.assertEqual((result.outcome, result.replacement.is_response, result.replacement.body), ("modified", False, b"ok"))

    def test_chunk_extensions_and_trailer(self) -> None:
        head = b"HTTP/1.1 200 OK\r\n\r\n"
        data = b"ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, res-body=%d\r\n\r\n" % len(head) + head
        data += b"3;name=val\r\nabc\r\n0; ieof\r\nX-Trailer: 1\r\n\r\n"
        self.assertEqual(parse(data).body, b"abc")

    def test_errors(self) -> None:
        head = b"HTTP/1.1 200 OK\r\n\r\n"
        cases = {
            b"HTTP/1.1 200 OK\r\n\r\n": "bad ICAP status line",
            b"SSH-2.0-OpenSSH\r\n": "not an ICAP response",
            b"ICAP/1.0 2000 OK\r\n\r\n": "bad ICAP status line",
            b"ICAP/1.0 500 Server Error\r\n\r\n": "answered 500 Server Error",
            b"ICAP/1.0 404 ICAP Service not found\r\n\r\n": "answered 404",
            b"ICAP/1.0 200 OK\r\nISTag: x\r\n\r\n": "without an Encapsulated",
            b"ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0\r\n\r\n": "must end with one body entry",
            b"ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=5, res-body=10\r\n\r\n": "must start at 0",
            b"ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, res-body=0\r\n\r\n": "must start at 0 and increase",
            b"ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, res-hdr=4, res-body=9\r\n\r\n": "twice",
            b"ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=zero\r\n\r\n": "bad Encapsulated",
            b"ICAP/1.0 200 OK\r\nEncapsulated: opt-body=0\r\n\r\n": "names opt-body",
            b"ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, res-body=%d\r\n\r\n" % (len(head) + 3) + head + b"abc": "does not end where",
            b"ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, res-body=%d\r\n\r\n" % len(head) + head + b"zz\r\n": "bad chunk size",
            b"ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, res-body=%d\r\n\r\n" % len(head) + head + b"1\r\nabc": "does not end with CRLF",
            b"ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, res-body=21\r\n\r\nGARBAGE GARBAGE!!\r\n\r\n": "bad HTTP status line",
            b"ICAP/1.0 204 No Content\r\nEncapsulated: res-hdr=0, null-body=5\r\n\r\n": "204 with a message",
            b"ICAP/1.0 200 OK\r\nBad Header\r\n\r\n": "bad ICAP header line",
            b"ICAP/1.0 200 OK\r\n continued\r\n\r\n": "continuation",
        }
        for data, problem in cases.items():
            with self.subTest(data=data):
                error = self.assertRaises(IcapError, ResponseParser().feed, data)
                self.assertIn(problem, str(error))
                self.assertNotIn("\n", str(error))

    def test_oversized_head(self) -> None:
        error = self.assertRaises(IcapError, ResponseParser(max_head=1000).feed, b"ICAP/1.0 200 OK\r\nX: " + b"a" * 2000)
        self.assertIn("over 1000 bytes", str(error))

    def test_oversized_body(self) -> None:
        head = b"HTTP/1.1 200 OK\r\n\r\n"
        data = b"ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, res-body=%d\r\n\r\n" % len(head) + head + b"800\r\n"
        self.assertIn("over 1000 bytes", str(self.assertRaises(IcapError, ResponseParser(max_body=1000).feed, data)))

    def test_truncated(self) -> None:
        parser = ResponseParser()
        self.assertIsNone(parser.feed(BLOCK[:-10]))
        self.assertIn("truncated", str(self.assertRaises(IcapError, parser.eof)))
        self.assertIn("without an answer", str(self.assertRaises(IcapError, ResponseParser().eof)))
        done = ResponseParser()
        done.feed(BLOCK)
        done.eof()  # a complete response then EOF is fine

    @settings(max_examples=400, deadline=2000)
    @given(st.binary(max_size=600), st.lists(st.integers(1, 50), max_size=20))
    def test_fuzz_never_raises_anything_else(self, data: bytes, cuts: list[int]) -> None:
        self._feed_pieces(data, cuts)

    @settings(max_examples=400, deadline=2000)
    @given(st.integers(0, len(BLOCK) - 1), st.binary(min_size=1, max_size=8), st.lists(st.integers(1, 50), max_size=20))
    def test_fuzz_mutated_block_page(self, at: int, junk: bytes, cuts: list[int]) -> None:
        self._feed_pieces(BLOCK[:at] + junk + BLOCK[at + len(junk) :], cuts)

    @settings(max_examples=200, deadline=2000)
    @given(st.lists(st.binary(min_size=1, max_size=300), max_size=8), st.lists(st.integers(1, 100), max_size=30))
    def test_chunked_body_round_trip(self, chunks: list[bytes], cuts: list[int]) -> None:
        head = b"HTTP/1.1 200 OK\r\n\r\n"
        data = b"ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, res-body=%d\r\n\r\n" % len(head) + head
        data += b"".join(encode_chunk(c) for c in chunks) + last_chunk() + b"ICAP/1.0 100"
        parser, response, rest = ResponseParser(), None, data
        for cut in [*cuts, len(data)]:
            piece, rest = rest[:cut], rest[cut:]
            response = parser.feed(piece)
            if response is not None:
                rest = parser.leftover + rest
                break
        assert response is not None
        self.assertEqual(response.body, b"".join(chunks))
        self.assertEqual(rest, b"ICAP/1.0 100")

    def _feed_pieces(self, data: bytes, cuts: list[int]) -> None:
        parser = ResponseParser(max_head=4096, max_body=4096)
        pieces, rest = [], data
        for cut in cuts:
            pieces.append(rest[:cut])
            rest = rest[cut:]
        pieces.append(rest)
        try:
            for piece in pieces:
                if parser.feed(piece) is not None:
                    return
            parser.eof()
        except IcapError as e:
            self.assertNotIn("\n", str(e))


class SettingsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        icap = parse_policy('[icap]\nrespmod = "icap://127.0.0.1:1344/avscan"\n').icap
        self.assertEqual(icap, IcapSettings(respmod=parse_service_url("icap://127.0.0.1:1344/avscan")))
        assert icap is not None
        self.assertEqual((icap.preview, icap.max_size, icap.oversize, icap.on_error, icap.timeout, icap.connections),
                         (4096, 32 << 20, "allow", "block", 10.0, 16))
        self.assertIsNone(parse_policy("").icap)

    def test_all_keys(self) -> None:
        icap = parse_policy(
            '[icap]\nreqmod = "icap://[fd00::1]/req?x=1"\nrespmod = "icap://scanner.lan:11344/resp"\n'
            'preview = 0\nmax_size = "5MB"\noversize = "block"\non_error = "allow"\ntimeout = 2.5\nconnections = 4\n'
        ).icap
        assert icap is not None and icap.reqmod is not None and icap.respmod is not None
        self.assertEqual(str(icap.reqmod), "icap://[fd00::1]:1344/req?x=1")
        self.assertEqual((icap.respmod.host, icap.respmod.port), ("scanner.lan", 11344))
        self.assertEqual((icap.preview, icap.max_size, icap.oversize, icap.on_error, icap.timeout, icap.connections),
                         (0, 5_000_000, "block", "allow", 2.5, 4))

    def test_sizes(self) -> None:
        self.assertEqual(parse_size("32MiB"), 32 << 20)
        self.assertEqual(parse_size("1 GiB"), 1 << 30)
        self.assertEqual(parse_size(100), 100)
        for bad in ("0", "-1", "1.5MiB", "lots", True, 0, "2TiB"):
            self.assertRaises(ValueError, parse_size, bad)

    def test_errors_have_line_numbers(self) -> None:
        good = 'respmod = "icap://127.0.0.1/avscan"\n'
        cases = [
            ("[icap]\npreview = 10\n", 1, "needs reqmod or respmod"),
            ('[icap]\nrespmod = "http://x/y"\n', 2, "must start with icap://"),
            ('[icap]\nrespmod = "icap://x"\n', 2, "no service path"),
            ('[icap]\nrespmod = "icap://x:99999/y"\n', 2, "bad port"),
            ("[icap]\nrespmod = 5\n", 2, "must be a string"),
            (f"[icap]\n{good}\npreview = -1\n", 4, "preview must be an integer from 0"),
            (f"[icap]\n{good}max_size = \"3 parsecs\"\n", 3, "max_size must be a size"),
            (f"[icap]\n{good}oversize = \"drop\"\n", 3, "oversize must be allow or block"),
            (f"[icap]\n{good}on_error = true\n", 3, "on_error must be allow or block"),
            (f"[icap]\n{good}timeout = 0\n", 3, "timeout must be a number"),
            (f"[icap]\n{good}timeout = nan\n", 3, "timeout must be a number"),
            (f"[icap]\n{good}connections = 0\n", 3, "connections must be an integer from 1"),
            (f"[icap]\n{good}conections = 4\n", 3, "did you mean 'connections'"),
            ("icap = 1\n", 1, "must be a table"),
        ]
        for text, line, problem in cases:
            with self.subTest(text=text):
                error = self.assertRaises(PolicyError, parse_policy, text, "p.toml")
                self.assertEqual(error.line, line)
                self.assertIn(problem, str(error))
                self.assertTrue(str(error).startswith(f"p.toml:{line}: [icap] ") or "table" in str(error))
