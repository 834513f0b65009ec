"""What the HTTP/2 layer reads from header blocks, and how a direction holds its body."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from etpmitm.gateway.h2exchange import Held, request_head, response_facts
from etpmitm.http import RequestHead


class RequestHeadTests(SynchronousTestCase):
    def test_fields(self) -> None:
        head = request_head([
            (b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"WWW.Example.COM:443"),
            (b":path", b"/api/upload?token=secret&x=1"), (b"user-agent", b"curl/8"),
            (b"content-type", b"application/json"), (b"content-length", b"12"),
        ])
        self.assertEqual(
            head,
            RequestHead("POST", "www.example.com", "/api/upload", 16, "curl/8", "application/json", 12, "token=secret&x=1"),
        )

    def test_hostWithoutAuthorityAndOtherPort(self) -> None:
        head = request_head([(b":method", b"GET"), (b":path", b"/"), (b"host", b"example.com:8443")])
        self.assertEqual((head.authority, head.path, head.query_length, head.content_length), ("example.com:8443", "/", 0, None))

    def test_emptyQueryAndBadLength(self) -> None:
        head = request_head([(b":method", b"GET"), (b":path", b"/a?"), (b"content-length", b"-1")])
        self.assertEqual((head.path, head.query_length, head.content_length), ("/a", 0, None))

    def test_response(self) -> None:
        self.assertEqual(response_facts([(b":status", b"204"), (b"content-type", b"text/html")]), (204, "text/html"))
        self.assertEqual(response_facts([(b":status", b"200")]), (200, None))


class HeldTests(SynchronousTestCase):
    def test_takeSplitsAndJoins(self) -> None:
        held = Held()
        for chunk in (b"abc", b"de", b"fghij"):
            held.append(chunk)
        self.assertEqual(held.size, 10)
        self.assertEqual(held.take(2), b"ab")
        self.assertEqual(held.take(6), b"cdefgh")
        self.assertEqual(held.size, 2)
        self.assertEqual(held.take(100), b"ij")
        self.assertEqual(held.size, 0)

    def test_drop(self) -> None:
        held = Held()
        held.append(b"12345")
        self.assertEqual(held.drop(), 5)
        self.assertEqual(held.size, 0)


class AuthorityTests(SynchronousTestCase):
    def test_sameNormalisationAsHTTP1(self) -> None:
        """HTTP/1.1 Host and HTTP/2 :authority are audited alike: lower case, no trailing dot, no :443."""
        from etpmitm.http import authority

        for raw, want in (("WWW.Example.COM.:443", "www.example.com"), ("a.example:8443", "a.example:8443"), (" b.example. ", "b.example")):
            self.assertEqual(authority(raw), want)
            self.assertEqual(request_head([(b":method", b"GET"), (b":authority", raw.encode()), (b":path", b"/")]).authority, want)
