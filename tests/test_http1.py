"""The sans-IO HTTP/1.1 observer, its smuggling checks and the Alt-Svc filter.

The in-memory gateway tests are in :mod:`tests.test_http1_layer`.
"""

from __future__ import annotations

from typing import Sequence

import attrs
from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from etpmitm.altsvc import strip_head, strip_value
from etpmitm.http import ALLOW, RequestHead, RequestVerdict
from etpmitm.http1 import (
    Action,
    Began,
    Close,
    EndDevice,
    EndOrigin,
    Finished,
    HTTP1Error,
    HTTP1Observer,
    Responded,
    ToDevice,
    ToOrigin,
    Upgraded,
)
from etpmitm.http1guard import check_chunk, check_head

GET = b"GET /a?secret=1 HTTP/1.1\r\nHost: Example.COM:443\r\nUser-Agent: t/1\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


def to_origin(actions: Sequence[Action]) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, ToOrigin))


def to_device(actions: Sequence[Action]) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, ToDevice))


def finished(actions: Sequence[Action]) -> list[Finished]:
    return [a for a in actions if isinstance(a, Finished)]


def block(path: str) -> RequestVerdict | None:
    return RequestVerdict("block", "not this one", rule="no-" + path.strip("/")) if path == "/blocked" else None


def judge(head: RequestHead) -> RequestVerdict:
    return block(head.path) or ALLOW


class ExchangeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.observer = HTTP1Observer(judge)

    def test_requestFactsAndBytesAsReceived(self) -> None:
        out = self.observer.device(GET)
        self.assertEqual(to_origin(out), GET)
        [began] = [a for a in out if isinstance(a, Began)]
        head = began.exchange.head
        self.assertEqual((head.method, head.authority, head.path, head.query_length, head.user_agent),
                         ("GET", "example.com", "/a", 8, "t/1"))
        out = self.observer.origin(OK)
        self.assertEqual(to_device(out), OK)
        [done] = finished(out)
        self.assertEqual((done.exchange.status, done.exchange.content_type), (200, "text/plain"))
        self.assertEqual((done.exchange.bytes_up, done.exchange.bytes_down), (len(GET), len(OK)))

    def test_keepAlive(self) -> None:
        for _ in range(3):
            self.assertEqual(to_origin(self.observer.device(GET)), GET)
            self.assertEqual(len(finished(self.observer.origin(OK))), 1)

    def test_pipelinedRequestsWaitForTheResponseBefore(self) -> None:
        second = GET.replace(b"/a", b"/b")
        out = self.observer.device(GET + second)
        self.assertEqual(to_origin(out), GET)
        self.assertTrue(self.observer.holding)
        out = self.observer.origin(OK)
        self.assertEqual(to_origin(out), second)
        self.assertFalse(self.observer.holding)

    def test_chunkedBothWaysWithTrailers(self) -> None:
        request = b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nDigest: z\r\n\r\n"
        response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nGrpc-Status: 0\r\n\r\n"
        sent = [self.observer.device(request[i:i + 1]) for i in range(len(request))]  # byte by byte
        self.assertEqual(b"".join(to_origin(out) for out in sent), request)
        out = self.observer.origin(response)
        self.assertEqual(to_device(out), response)
        self.assertEqual(len(finished(out)), 1)
        self.assertEqual(to_origin(self.observer.device(GET)), GET)  # and the connection goes on

    def test_expect100Continue(self) -> None:
        head = b"PUT /u HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
        self.assertEqual(to_origin(self.observer.device(head)), head)
        self.assertEqual(to_device(self.observer.origin(b"HTTP/1.1 100 Continue\r\n\r\n")), b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertEqual(to_origin(self.observer.device(b"abc")), b"abc")
        self.assertEqual(len(finished(self.observer.origin(OK))), 1)

    def test_headAnd204And304HaveNoBody(self) -> None:
        for request, response in [
            (b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
            (GET, b"HTTP/1.1 204 No Content\r\n\r\n"),
            (GET, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1000\r\n\r\n"),
        ]:
            self.observer.device(request)
            out = self.observer.origin(response)
            self.assertEqual(len(finished(out)), 1, response)
        self.assertEqual(to_origin(self.observer.device(GET)), GET)

    def test_closeDelimitedResponse(self) -> None:
        self.observer.device(GET)
        out = self.observer.origin(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
        self.assertEqual(finished(out), [])
        out = self.observer.origin_ended()
        self.assertEqual(len(finished(out)), 1)
        self.assertIn(EndDevice(), out)

    def test_upgradeThenOpaque(self) -> None:
        request = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        self.observer.device(request + b"\x81\x01a")
        out = self.observer.origin(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x01b")
        [up] = [a for a in out if isinstance(a, Upgraded)]
        self.assertEqual((up.exchange.upgrade, up.exchange.status), ("websocket", 101))
        self.assertEqual(to_origin(out), b"\x81\x01a")  # held until the switch
        self.assertTrue(to_device(out).endswith(b"\x81\x01b"))
        self.assertEqual(self.observer.device(b"GARBAGE \x00"), [ToOrigin(b"GARBAGE \x00")])

    def test_blockedRequestThenNext(self) -> None:
        blocked = b"POST /blocked HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody"
        out = self.observer.device(blocked + GET)
        self.assertEqual(to_origin(out), GET)
        page = to_device(out)
        self.assertTrue(page.startswith(b"HTTP/1.1 403 Forbidden\r\n"), page[:40])
        self.assertIn(b"a/blocked", page)
        self.assertIn(b"no-blocked", page)
        self.assertNotIn(b"connection: close", page)
        [done] = finished(out)
        self.assertEqual((done.exchange.action, done.exchange.rule, done.exchange.status), ("block", "no-blocked", 403))

    def test_blockedWhileWaitingFor100ContinueCloses(self) -> None:
        out = self.observer.device(b"POST /blocked HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n")
        self.assertIn(b"connection: close", to_device(out))
        self.assertEqual(to_origin(out), b"")
        self.assertIsInstance(out[-1], Close)

    def test_connectRefused(self) -> None:
        out = self.observer.device(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        self.assertEqual(to_origin(out), b"")
        self.assertTrue(to_device(out).startswith(b"HTTP/1.1 405 "))
        self.assertEqual(out[-1], Close("refused an HTTP/1.1 request: CONNECT inside TLS is not relayed", True))

    def test_altSvcQuicRemoved(self) -> None:
        self.observer.device(GET)
        out = self.observer.origin(b"HTTP/1.1 200 OK\r\nalt-svc: h3=\":443\"; ma=86400\r\nX: y\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(to_device(out), b"HTTP/1.1 200 OK\r\nX: y\r\nContent-Length: 0\r\n\r\n")

    def test_altSvcKeptWhenSwitchedOff(self) -> None:
        observer = HTTP1Observer(strip_alt_svc=False)
        observer.device(GET)
        response = b"HTTP/1.1 200 OK\r\nAlt-Svc: h3=\":443\"\r\nContent-Length: 0\r\n\r\n"
        self.assertEqual(to_device(observer.origin(response)), response)

    def test_malformedResponseGets502(self) -> None:
        self.observer.device(GET)
        out = self.observer.origin(b"HTTP/1.1 2xx Nope\r\n\r\n")
        self.assertTrue(to_device(out).startswith(b"HTTP/1.1 502 "))
        self.assertIsInstance(out[-1], Close)

    def test_originClosingMidResponse(self) -> None:
        self.observer.device(GET)
        self.observer.origin(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\npart")
        self.assertTrue(self.observer.awaiting_response)
        out = self.observer.origin_ended()
        self.assertEqual(out, [EndDevice()])
        self.assertTrue(self.observer.awaiting_response)

    def test_deviceEndAfterPipelinedRequestsWaits(self) -> None:
        self.observer.device(GET + GET)
        self.assertEqual(self.observer.device_ended(), [])  # the second request is still to go
        out = self.observer.origin(OK)
        self.assertEqual([a for a in out if isinstance(a, (ToOrigin, EndOrigin))], [ToOrigin(GET), EndOrigin()])


SMUGGLING = {
    "conflicting Content-Length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\nabc",
    "repeated Content-Length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "Content-Length list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
    "CL and TE": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: one\r\n two\r\n\r\n",
    "obs-fold hiding TE": b"POST / HTTP/1.1\r\nHost: a\r\nX: y\r\n\tTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
    "invalid chunk size": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "chunk size overflow": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000003\r\nabc\r\n0\r\n\r\n",
    "chunk size with space": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n",
    "TE not chunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "bare LF": b"GET / HTTP/1.1\nHost: a\n\n",
    "header block over 64 KiB": b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: " + b"y" * 70000 + b"\r\n\r\n",
    "too many headers": b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(101)) + b"\r\n",
    "space before colon": b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 3\r\n\r\nabc",
    "no Host": b"GET / HTTP/1.1\r\n\r\n",
}


class SmugglingTests(SynchronousTestCase):
    def test_eachCaseGets400AndNothingReachesTheOrigin(self) -> None:
        for name, request in SMUGGLING.items():
            for pieces in ([request], [request[:20], request[20:]]):
                observer = HTTP1Observer()
                out = [a for piece in pieces for a in observer.device(piece)]
                self.assertTrue(to_device(out).startswith(b"HTTP/1.1 400 Bad Request\r\n"), (name, to_device(out)[:40]))
                self.assertIsInstance(out[-1], Close, name)
                [done] = finished(out)
                self.assertEqual(done.exchange.action, "refuse", name)
                if pieces == [request]:
                    self.assertEqual(to_origin(out), b"", name)
                self.assertEqual(observer.device(GET), [], name)  # nothing more is read

    def test_smuggledRequestAfterAFineOne(self) -> None:
        observer = HTTP1Observer()
        out = observer.device(GET)
        self.assertEqual(to_origin(out), GET)
        observer.origin(OK)
        out = observer.device(SMUGGLING["CL and TE"])
        self.assertEqual(to_origin(out), b"")
        self.assertIn(b" 400 ", to_device(out)[:20])

    def test_guardAllowsOrdinaryHeads(self) -> None:
        self.assertIsNone(check_head(GET, [(b"host", b"a")]))
        self.assertIsNone(check_chunk(b"\r\n1aF;name=value\r\ndata"))
        self.assertIsNone(check_chunk(b"ffffffffffffffff\r\n"))
        self.assertIsNotNone(check_chunk(b"1ffffffffffffffff\r\n"))


class AltSvcTests(SynchronousTestCase):
    def test_values(self) -> None:
        self.assertIsNone(strip_value(b' h3=":443"; ma=86400, h3-29=":443"'))
        self.assertEqual(strip_value(b' h3=":443", h2="alt.example:443"; ma=60'), b' h2="alt.example:443"; ma=60')
        self.assertEqual(strip_value(b' clear'), b' clear')
        self.assertEqual(strip_value(b' h2="a,h3=b:443"'), b' h2="a,h3=b:443"')  # a comma inside quotes
        self.assertEqual(strip_value(b' h3%2D29=":443", h2=":443"'), b' h2=":443"')

    def test_onlyAltSvcLinesChange(self) -> None:
        head = b"HTTP/1.1 200 OK\r\nX-Alt-Svc: h3=\":1\"\r\nALT-SVC: h3=\":443\", h2=\":443\"\r\n\r\n"
        self.assertEqual(strip_head(head), b"HTTP/1.1 200 OK\r\nX-Alt-Svc: h3=\":1\"\r\nALT-SVC: h2=\":443\"\r\n\r\n")
        self.assertIs(strip_head(OK), OK)


# -- fuzzing ---------------------------------------------------------------------------------

CORPUS = [GET, OK, *SMUGGLING.values(),
          b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nT: 1\r\n\r\n",
          b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
          b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
          b"HEAD /blocked HTTP/1.0\r\n\r\n", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(b"".join(draw(st.lists(st.sampled_from(CORPUS), min_size=1, max_size=4))))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "insert", "delete"]))
        if kind == "insert":
            data[at:at] = draw(st.sampled_from([b"\r\n", b"\n", b" ", b"\t", b"0", b":", b";", b"\x00", b"\xff", b"chunked"]))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        elif at < len(data):
            data[at] ^= draw(st.integers(1, 255))
    return bytes(data)


steps = st.lists(
    st.tuples(st.sampled_from(["device", "origin", "device_ended", "origin_ended"]), st.one_of(mutated(), st.binary(max_size=200))),
    max_size=8,
)


def is_subsequence(part: bytes, whole: bytes) -> bool:
    it = iter(whole)
    return all(byte in it for byte in part)


class FuzzTests(SynchronousTestCase):
    @settings(max_examples=600, deadline=None)
    @given(steps)
    def test_anyInputGivesActionsOrHTTP1Error(self, plan: list[tuple[str, bytes]]) -> None:
        observer = HTTP1Observer(judge)
        sent_up = sent_down = b""
        forwarded_up = b""
        closed = False
        for what, data in plan:
            try:
                if what == "device":
                    out = observer.device(data)
                    sent_up += data
                elif what == "origin":
                    out = observer.origin(data)
                    sent_down += data
                else:
                    out = getattr(observer, what)()
            except HTTP1Error:
                return
            if closed:
                self.assertEqual([a for a in out if isinstance(a, (ToOrigin, ToDevice))], [])
            closed = closed or any(isinstance(a, Close) for a in out)
            forwarded_up += to_origin(out)
            for action in out:
                if isinstance(action, Responded):
                    self.assertIsNotNone(action.exchange.status)
        # The origin gets device bytes in order, some left out, nothing added.
        self.assertTrue(is_subsequence(forwarded_up, sent_up))


REQUEST_LINES = [b"GET / HTTP/1.1", b"GET /a?b=1 HTTP/1.1", b"POST /up HTTP/1.1", b"HEAD / HTTP/1.1",
                 b"GET http://x.test/p HTTP/1.1", b"GET /blocked HTTP/1.1", b"CONNECT a:443 HTTP/1.1",
                 b"GET / HTTP/1.0", b"OPTIONS * HTTP/1.1", b"GET /\xc3\xbc HTTP/1.1", b"GET /a b HTTP/1.1",
                 b"get / HTTP/1.1", b"GET / HTTP/2.0", b"GET  / HTTP/1.1", b"G@T / HTTP/1.1", b"GET / HTTP/1.1 "]
REQUEST_FIELDS = [b"Host: a.test", b"host:  A.Test:443  ", b"Host:", b"Host: b.test", b"User-Agent: x\ty/1",
                  b"Content-Length: 0", b"Content-Length: 2", b"Content-Length: 2, 2", b"Transfer-Encoding: chunked",
                  b"Connection: close", b"Connection: keep-alive", b"Connection: Keep-Alive, Upgrade",
                  b"Upgrade: websocket", b"Expect: 100-continue", b"X: a\x01b", b"X: \x80\xff", b"Bad Name: v",
                  b" folded", b"X:v", b"Content-Type: text/plain", b"X: a\x00b", b"X-Empty: ", b"X : v"]
STATUS_LINES = [b"HTTP/1.1 200 OK", b"HTTP/1.1 200", b"HTTP/1.0 200 OK", b"HTTP/1.1 204 No Content",
                b"HTTP/1.1 304 Not Modified", b"HTTP/1.1 100 Continue", b"HTTP/1.1 101 Switching Protocols",
                b"HTTP/1.1 404 Not \xc3\xa9", b"HTTP/1.1 999 X", b"HTTP/1.1 20 OK", b"HTTP/1.1 200 OK "]
RESPONSE_FIELDS = [b"Content-Length: 2", b"Content-Length: 0", b"Content-Length: 02", b"Content-Length:  2 ",
                   b"Content-Length: 2, 2", b"Content-Length: -1", b"Content-Length: 99999999999999999999",
                   b"Transfer-Encoding: chunked", b"Connection: close", b"Connection: keep-alive",
                   b"Content-Type: text/html", b"Alt-Svc: h3=\":443\", h2=\":443\"", b"Upgrade: x", b" folded",
                   b"X: \x01"]


@st.composite
def head(draw: st.DrawFn, lines: list[bytes], fields: list[bytes]) -> bytes:
    parts = [draw(st.sampled_from(lines)), *draw(st.lists(st.sampled_from(fields), max_size=5))]
    ends = [draw(st.sampled_from([b"\r\n"] * 8 + [b"\n", b"\r"])) for _ in parts]
    return b"".join(p + e for p, e in zip(parts, ends)) + b"\r\n" + draw(st.sampled_from([b"", b"ok", b"0\r\n\r\n"]))


@st.composite
def exchanges(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    """Keep-alive exchanges, mostly plain, cut anywhere; sometimes pipelined or ended."""
    plain_request = b"GET /%d HTTP/1.1\r\nHost: a.test\r\n\r\n"
    plain_response = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
    plan: list[tuple[str, bytes]] = []
    for n in range(draw(st.integers(1, 4))):
        request = draw(st.one_of(st.just(plain_request % n), head(REQUEST_LINES, REQUEST_FIELDS)))
        response = draw(st.one_of(st.just(plain_response), head(STATUS_LINES, RESPONSE_FIELDS)))
        if draw(st.booleans()):
            request += plain_request % (n + 10)  # pipelined
        for side, data in (("device", request), ("origin", response)):
            cut = draw(st.integers(0, len(data)))
            plan += [(side, data[:cut]), (side, data[cut:])] if draw(st.booleans()) else [(side, data)]
        if draw(st.integers(0, 5)) == 0:
            plan.append((draw(st.sampled_from(["device_ended", "origin_ended"])), b""))
    if draw(st.booleans()):
        plan.insert(draw(st.integers(0, len(plan))), (draw(st.sampled_from(["device_ended", "origin_ended"])), b""))
    return plan


def observed(observer: HTTP1Observer, what: str, data: bytes) -> list[object]:
    """One call's actions with the exchanges' state after it, data runs joined."""
    out = getattr(observer, what)(data) if what in ("device", "origin") else getattr(observer, what)()
    seen: list[object] = []
    for action in out:
        if isinstance(action, (ToOrigin, ToDevice)) and seen and type(seen[-1]) is type(action):
            seen[-1] = type(action)(seen[-1].data + action.data)  # type: ignore[union-attr]
        elif hasattr(action, "exchange"):
            state = {k: v for k, v in attrs.asdict(action.exchange).items() if k != "framing"}  # type: ignore[union-attr]
            seen.append((type(action).__name__, state))
        else:
            seen.append(action)
    seen.append((observer.mode, observer.holding, observer.awaiting_response))
    return seen


class FastPathTests(SynchronousTestCase):
    """The llhttp fast path (etpmitm.http1fast) decides as h11 alone does."""

    def test_plainExchangesTakeTheFastPath(self) -> None:
        observer = HTTP1Observer(judge)
        for _ in range(3):
            out = observer.device(GET)
            self.assertIsNotNone(observer._fastEx)
            self.assertEqual(to_origin(out), GET)
            out = observer.origin(OK)
            self.assertEqual((to_device(out), len(finished(out))), (OK, 1))
            self.assertFalse(observer._slow)

    def test_anythingElseGoesToH11AndBack(self) -> None:
        observer = HTTP1Observer(judge)
        chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        observer.device(GET)
        out = observer.origin(chunked)  # the response needs h11: the request is replayed into it
        self.assertEqual((to_device(out), len(finished(out))), (chunked, 1))
        self.assertFalse(observer._slow)
        out = observer.device(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
        self.assertTrue(observer._slow)
        out += observer.origin(OK)
        self.assertEqual(len(finished(out)), 1)
        self.assertFalse(observer._slow)
        observer.device(GET)
        self.assertIsNotNone(observer._fastEx)

    @settings(max_examples=1500, deadline=None)
    @given(exchanges())
    def test_sameDecisionsAsH11(self, plan: list[tuple[str, bytes]]) -> None:
        fast, reference = HTTP1Observer(judge), HTTP1Observer(judge, fast=False)
        for what, data in plan:
            try:
                expected = observed(reference, what, data)
            except HTTP1Error:
                with self.assertRaises(HTTP1Error):
                    observed(fast, what, data)
                return
            self.assertEqual(observed(fast, what, data), expected, (what, data))


class HTTP10DeviceTests(SynchronousTestCase):
    """HTTP/1.0 requests (ab, old clients, probes): forwarded as they came, one exchange a connection."""

    def exchange(self, request: bytes, response: bytes, originCloses: bool = False) -> list[Action]:
        observer = HTTP1Observer(judge)
        out = observer.device(request) + observer.origin(response)
        if originCloses:
            out += observer.origin_ended()
        self.assertFalse([a for a in out if isinstance(a, Close) and a.error], out)
        self.assertEqual(to_origin(out), request)
        self.assertEqual(to_device(out), response)
        self.assertEqual(len(finished(out)), 1)
        self.assertEqual(observer.mode, "done")
        return out

    def test_getEndsBothSidesAfterTheResponse(self) -> None:
        out = self.exchange(b"GET /a HTTP/1.0\r\nHost: a\r\n\r\n", OK)
        self.assertEqual([type(a) for a in out[-2:]], [EndOrigin, EndDevice])

    def test_keepAliveAskedIsAnsweredByAClose(self) -> None:
        """h11 keeps no HTTP/1.0 connection alive: the device gets the response, then the end."""
        out = self.exchange(b"GET /a HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
        self.assertIsInstance(out[-1], EndDevice)

    def test_noHostAndAnHTTP10Answer(self) -> None:
        [began] = [a for a in self.exchange(b"GET / HTTP/1.0\r\n\r\n", b"HTTP/1.0 200 OK\r\n\r\nok", originCloses=True)
                   if isinstance(a, Began)]
        self.assertEqual((began.exchange.head.authority, began.exchange.status), ("", 200))

    def test_postWithABodyAndHead(self) -> None:
        self.exchange(b"POST /u HTTP/1.0\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc", OK)
        self.exchange(b"HEAD /u HTTP/1.0\r\nHost: a\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")


class HTTP10OriginTests(SynchronousTestCase):
    def test_anHTTP10ResponseDelimitedByClose(self) -> None:
        """openssl s_server -www answers HTTP/1.0 and closes: passed on as received."""
        observer = HTTP1Observer(judge)
        request = b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n"
        response = b"HTTP/1.0 200 ok\r\nContent-type: text/html\r\n\r\n<pre>s_server -www</pre>"
        out = observer.device(request) + observer.origin(response) + observer.origin_ended()
        self.assertEqual(b"".join(a.data for a in out if isinstance(a, ToDevice)), response)
        self.assertEqual(b"".join(a.data for a in out if isinstance(a, ToOrigin)), request)
        self.assertFalse([a for a in out if isinstance(a, Close) and a.error], out)
