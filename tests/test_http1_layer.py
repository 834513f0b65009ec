"""The HTTP/1.1 layer in a whole gateway in memory, with real TLS both sides (:mod:`tests.corelab`)."""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.task import Clock
from twisted.logger import formatEvent

from etpmitm.audit import ConnectionRecord
from etpmitm.gateway.connection import State
from etpmitm.gateway.http1 import HTTP1Layer
from etpmitm.policy import parse_policy
from etpmitm.gateway.inspect import inspectingLayer, looks_like_http1
from etpmitm.http import ALLOW, RequestHead, RequestVerdict
from tests.corelab import CoreTestCase, Peer
from twisted.trial.unittest import SynchronousTestCase

from tests.test_http1 import GET, OK, SMUGGLING


class HTTP1LayerTests(CoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.judged: list[RequestHead] = []
        self.settings = attrs.evolve(self.settings, layerFor=inspectingLayer(self.settings, self.judge))

    def judge(self, head: RequestHead) -> RequestVerdict:
        self.judged.append(head)
        if head.path == "/blocked":
            return RequestVerdict("block", "test rule", rule="no-blocked")
        return ALLOW

    def relaying(self, alpn: tuple[bytes, ...] = (b"http/1.1",)) -> tuple[Peer, Peer]:
        device = self.connectDevice(alpn=alpn)
        origin = self.acceptTLS(alpn=alpn)
        self.assertIs(self.connection.state, State.RELAYING)
        return device, origin

    def send(self, peer: Peer, data: bytes) -> None:
        peer.tls.write(data)
        self.net.flush()

    def take(self, peer: Peer) -> bytes:
        data, peer.received = peer.received, b""
        return data

    def endBoth(self, device: Peer, origin: Peer) -> None:
        device.tls.loseWriteConnection()
        self.net.flush()
        origin.tls.loseWriteConnection()
        self.net.flush()

    def peersClose(self, device: Peer, origin: Peer) -> None:
        """The gateway closed both: each peer got the end, and closes too."""
        self.assertTrue(device.readEnded and origin.readEnded)
        device.tls.loseConnection()
        origin.tls.loseConnection()
        self.net.flush()

    def requests(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("log_namespace") == "etpmitm.audit.request"]

    # -- exchanges -----------------------------------------------------------------------

    def test_keepAliveAndTheAuditEvents(self) -> None:
        device, origin = self.relaying()
        for _ in range(2):
            self.send(device, GET)
            self.assertEqual(self.take(origin), GET)
            self.advance(0.25)
            self.send(origin, OK)
            self.assertEqual(self.take(device), OK)
        self.endBoth(device, origin)
        event = self.assertDone("intercept", "ok")
        first, second = self.requests()
        self.assertEqual([first["stream"], second["stream"]], [1, 2])
        self.assertEqual(first["connection"], event["id"])
        self.assertEqual(first["head"], {"method": "GET", "authority": "example.com", "path": "/a", "query_length": 8,
                                         "user_agent": "t/1", "content_type": None, "content_length": None})
        self.assertNotIn("secret", str(first))
        self.assertEqual((first["action"], first["status"], first["response_content_type"]), ("allow", 200, "text/plain"))
        self.assertEqual((first["bytes_up"], first["bytes_down"]), (len(GET), len(OK)))
        self.assertEqual((first["headers_after"], first["duration"]), (0.25, 0.25))
        self.assertEqual(formatEvent(second),
                         f"request {event['id']}/2 GET example.com/a -> 200 action=allow reason='no request rule matched'")

    def test_theAuditLineIsTheRequestAsItCame(self) -> None:
        """Braces in what the device sent are text in the line, not a format."""
        device, origin = self.relaying()
        self.send(device, GET.replace(b"/a", b"/{x}}{"))
        self.send(origin, OK)
        self.endBoth(device, origin)
        event = self.assertDone("intercept", "ok")
        [request] = self.requests()
        self.assertEqual(request["head"]["path"], "/{x}}{")
        self.assertEqual(formatEvent(request),
                         f"request {event['id']}/1 GET example.com/{{x}}}}{{ -> 200 action=allow reason='no request rule matched'")

    def test_pipelining(self) -> None:
        device, origin = self.relaying()
        requests = [GET.replace(b"/a", b"/%d" % i) for i in range(3)]
        self.send(device, b"".join(requests))
        for i, request in enumerate(requests):
            self.assertEqual(self.take(origin), request, i)  # one at a time
            self.assertEqual(self.deviceSocket.paused, i < 2)  # not read while requests wait
            self.send(origin, OK)
        self.assertFalse(self.deviceSocket.paused)
        self.assertEqual(self.take(device), OK * 3)
        self.assertEqual([r["head"]["path"] for r in self.requests()], ["/0", "/1", "/2"])

    def test_chunkedBothWaysWithTrailers(self) -> None:
        device, origin = self.relaying()
        head = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        body = b"4\r\nwiki\r\n5\r\npedia\r\n0\r\nChecksum: x\r\n\r\n"
        self.send(device, head + body[:9])
        self.send(device, body[9:])
        self.assertEqual(self.take(origin), head + body)
        response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\ngrpc-status: 0\r\n\r\n"
        self.send(origin, response)
        self.assertEqual(self.take(device), response)
        self.send(device, GET)
        self.assertEqual(self.take(origin), GET)
        [first] = self.requests()
        self.assertEqual((first["bytes_up"], first["bytes_down"]), (len(head + body), len(response)))

    def test_expect100Continue(self) -> None:
        device, origin = self.relaying()
        head = b"PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        self.send(device, head)
        self.assertEqual(self.take(origin), head)
        self.send(origin, b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertEqual(self.take(device), b"HTTP/1.1 100 Continue\r\n\r\n")
        self.send(device, b"hello")
        self.assertEqual(self.take(origin), b"hello")
        self.send(origin, OK)
        self.assertEqual(self.take(device), OK)
        self.assertEqual(self.requests()[0]["status"], 200)

    def test_headAnd204And304(self) -> None:
        device, origin = self.relaying()
        for request, response in [
            (b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
            (GET, b"HTTP/1.1 204 No Content\r\n\r\n"),
            (GET, b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"),
        ]:
            self.send(device, request)
            self.assertEqual(self.take(origin), request)
            self.send(origin, response)
            self.assertEqual(self.take(device), response)
        self.send(device, GET)
        self.send(origin, OK)
        self.assertEqual(self.take(device), OK)
        self.assertEqual([r["status"] for r in self.requests()], [200, 204, 304, 200])

    def test_closeDelimitedResponse(self) -> None:
        device, origin = self.relaying()
        self.send(device, GET)
        self.send(origin, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        origin.tls.loseWriteConnection()
        self.net.flush()
        self.assertEqual(device.received, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        self.assertEqual((device.readEnded, device.cleanEnd), (True, True))
        device.tls.loseWriteConnection()
        self.net.flush()
        self.assertDone("intercept", "ok")
        self.assertEqual(self.requests()[0]["bytes_down"], len(device.received))

    def test_closeDelimitedResponseTruncated(self) -> None:
        """Without close_notify, the end of a close-delimited body is not to be trusted."""
        device, origin = self.relaying()
        self.send(device, GET)
        self.send(origin, b"HTTP/1.1 200 OK\r\n\r\npart")
        origin.tcp.loseConnection()
        self.net.flush()
        self.assertEqual((device.readEnded, device.cleanEnd), (True, False))
        device.tls.loseWriteConnection()
        self.net.flush()
        self.assertDone("intercept", "error", "truncated")

    def test_upgradeThenOpaque(self) -> None:
        device, origin = self.relaying()
        request = b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        self.send(device, request)
        self.assertEqual(self.take(origin), request)
        switch = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        self.send(origin, switch + b"\x81\x02hi")
        self.assertEqual(self.take(device), switch + b"\x81\x02hi")
        tunnel = b"not HTTP at all\r\n\r\n\x00"
        self.send(device, tunnel)
        self.assertEqual(self.take(origin), tunnel)
        self.assertEqual(self.requests(), [])  # audited when the connection ends
        self.endBoth(device, origin)
        event = self.assertDone("intercept", "ok", "upgraded to websocket")
        [record] = self.requests()
        self.assertEqual((record["status"], record["upgrade"], record["connection"]), (101, "websocket", event["id"]))
        self.assertEqual(record["bytes_up"], len(request + tunnel))

    def test_connectRefused(self) -> None:
        device, origin = self.relaying()
        self.send(device, b"CONNECT other.example:443 HTTP/1.1\r\nHost: other.example:443\r\n\r\n")
        self.assertTrue(device.received.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n"))
        self.assertEqual(origin.received, b"")
        self.peersClose(device, origin)
        self.assertDone("intercept", "error", "CONNECT inside TLS")
        self.assertEqual(self.requests()[0]["action"], "refuse")

    def test_smugglingGets400AndTheOriginNothing(self) -> None:
        for name, request in SMUGGLING.items():
            self.events.clear()
            device, origin = self.relaying()
            self.send(device, request)
            self.assertTrue(device.received.startswith(b"HTTP/1.1 400 Bad Request\r\n"), name)
            self.assertIn(b"connection: close", device.received, name)
            self.assertEqual(origin.received, b"", name)
            self.peersClose(device, origin)
            self.assertDone("intercept", "error", "refused an HTTP/1.1 request")
            [record] = self.requests()
            self.assertEqual((record["action"], record["status"]), ("refuse", 400), name)

    def test_blockedThenNextRequestOnTheSameConnection(self) -> None:
        device, origin = self.relaying()
        self.send(device, b"POST /blocked?x=1 HTTP/1.1\r\nHost: Example.com\r\nContent-Length: 3\r\n\r\nabc")
        page = self.take(device)
        self.assertTrue(page.startswith(b"HTTP/1.1 403 Forbidden\r\n"), page[:30])
        self.assertIn(b"example.com/blocked", page)
        self.assertIn(b"no-blocked", page)
        self.assertEqual(origin.received, b"")
        self.send(device, GET)
        self.assertEqual(self.take(origin), GET)
        self.send(origin, OK)
        self.assertEqual(self.take(device), OK)
        self.assertIs(self.connection.state, State.RELAYING)
        blocked, allowed = self.requests()
        self.assertEqual((blocked["action"], blocked["rule"], blocked["status"]), ("block", "no-blocked", 403))
        self.assertEqual((allowed["action"], allowed["status"]), ("allow", 200))

    def test_altSvcH3Removed(self) -> None:
        device, origin = self.relaying()
        self.send(device, GET)
        self.send(origin, b"HTTP/1.1 200 OK\r\nAlt-Svc: h3=\":443\"; ma=3600, h2=\":443\"\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(device.received, b"HTTP/1.1 200 OK\r\nAlt-Svc: h2=\":443\"\r\nContent-Length: 0\r\n\r\n")

    def test_requestRecordWhenTheConnectionIsCutShort(self) -> None:
        device, origin = self.relaying()
        self.send(device, GET)
        response = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart"
        self.send(origin, response)
        origin.tcp.abortConnection()
        self.net.flush()
        self.assertDone("intercept", "error", "origin connection lost")
        [record] = self.requests()
        self.assertEqual((record["status"], record["bytes_down"]), (200, len(response)))

    # -- which layer ------------------------------------------------------------------------

    def test_noAlpnAndHTTPFirstBytes(self) -> None:
        device, origin = self.relaying(alpn=())
        self.send(device, GET[:5])
        self.assertEqual(origin.received, b"")  # not yet known
        self.send(device, GET[5:])
        self.assertEqual(origin.received, GET)
        self.assertEqual(len(self.judged), 1)

    def test_noAlpnAndOtherBytesRelayedOpaque(self) -> None:
        device, origin = self.relaying(alpn=())
        self.send(device, b"\x16\x03hello")
        self.assertEqual(origin.received, b"\x16\x03hello")
        self.send(device, GET)
        self.assertEqual(self.judged, [])

    def test_layerSelection(self) -> None:
        """h2 goes to the HTTP/2 layer, http/1.1 to this one, any other protocol is relayed opaque."""
        from etpmitm.audit import ConnectionRecord
        from etpmitm.gateway.http1 import HTTP1Layer
        from etpmitm.gateway.http2 import HTTP2Layer
        from etpmitm.gateway.layers import OpaqueRelay

        layerFor = inspectingLayer(self.settings)
        chosen = {}
        for alpn in ("h2", "http/1.1", "imap"):
            record = ConnectionRecord(client="c", destination="d", started=0.0, alpn=alpn)
            chosen[alpn] = type(layerFor(record, self.judge))
        self.assertEqual(chosen, {"h2": HTTP2Layer, "http/1.1": HTTP1Layer, "imap": OpaqueRelay})

    def test_inspectionOff(self) -> None:
        self.policy.current = parse_policy("[inspect]\nhttp = false\n")
        device, origin = self.relaying()
        self.send(device, SMUGGLING["CL and TE"])
        self.assertEqual(origin.received, SMUGGLING["CL and TE"])
        self.assertEqual(self.judged, [])

    def test_sniffing(self) -> None:
        self.assertTrue(looks_like_http1(b"GET / HTTP/1.1\r\n"))
        self.assertIsNone(looks_like_http1(b"OPTIONS * HT"))
        self.assertIsNone(looks_like_http1(b"GET"))
        self.assertFalse(looks_like_http1(b"get / HTTP/1.1\r\n"))
        self.assertFalse(looks_like_http1(b"PRI * HTTP/2.0\r\n"))
        self.assertFalse(looks_like_http1(b"\x16\x03\x01"))


class PolicyRulesTests(CoreTestCase):
    """The policy's request rules, through the connection's own judge (no test judge)."""

    policyText = '[[rule]]\nurls = ["origin.test/private/*"]\nmethods = ["POST"]\naction = "block"\n'

    def setUp(self) -> None:
        super().setUp()
        self.settings = attrs.evolve(self.settings, layerFor=inspectingLayer(self.settings))

    def test_aRequestRuleBlocksOneRequestAndReloadReachesOpenConnections(self) -> None:
        device = self.connectDevice()
        origin = self.acceptTLS()
        post = b"POST /private/x HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 0\r\n\r\n"
        device.tls.write(post)
        self.net.flush()
        self.assertTrue(device.received.startswith(b"HTTP/1.1 403 "), device.received[:40])
        self.assertIn(b"origin.test/private/x", device.received)
        self.assertEqual(origin.received, b"")
        device.received = b""
        device.tls.write(b"GET /private/x HTTP/1.1\r\nHost: origin.test\r\n\r\n")  # GET is not in methods
        self.net.flush()
        self.assertTrue(origin.received.startswith(b"GET /private/x"))
        origin.tls.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.net.flush()
        # SIGHUP's reload, as PolicyHolder.reload does it: new requests on this open connection follow it.
        self.policy.current = parse_policy("")
        origin.received = b""
        device.tls.write(post)
        self.net.flush()
        self.assertEqual(origin.received, post)


class AuditQueryTests(CoreTestCase):
    """[audit] query: the query string is audited only when the policy says so."""

    def setUp(self) -> None:
        super().setUp()
        self.settings = attrs.evolve(self.settings, layerFor=inspectingLayer(self.settings))

    def requestHead(self) -> dict[str, Any]:
        device = self.connectDevice()
        origin = self.acceptTLS()
        device.tls.write(GET)
        self.net.flush()
        origin.tls.write(OK)
        self.net.flush()
        [event] = [e for e in self.events if e.get("log_namespace") == "etpmitm.audit.request"]
        head: dict[str, Any] = event["head"]
        return head

    def test_queryLeftOutByDefault(self) -> None:
        head = self.requestHead()
        self.assertEqual((head["path"], head["query_length"]), ("/a", 8))
        self.assertNotIn("query", head)

    def test_queryKeptWhenAsked(self) -> None:
        self.policy.current = parse_policy("[audit]\nquery = true\n")
        self.assertEqual(self.requestHead()["query"], "secret=1")


class ConnectionBytesTests(CoreTestCase):
    def test_aBlockPageCountsAsBytesToTheDevice(self) -> None:
        """The connection's bytes are what the device sent and what it got, answers included."""
        self.policy.current = parse_policy('[[rule]]\nurls = ["origin.test/x"]\naction = "block"\n')
        self.settings = attrs.evolve(self.settings, layerFor=inspectingLayer(self.settings))
        device = self.connectDevice()
        origin = self.acceptTLS()
        request = b"GET /x HTTP/1.1\r\nHost: origin.test\r\n\r\n"
        device.tls.write(request)
        self.net.flush()
        page = len(device.received)
        self.assertGreater(page, 0)
        device.tls.loseWriteConnection()
        self.net.flush()
        origin.tls.loseWriteConnection()
        self.net.flush()
        event = self.assertDone("intercept", "ok")
        self.assertEqual((event["bytes_up"], event["bytes_down"]), (len(request), page))


class WritesTests(SynchronousTestCase):
    """What the layer asks of its link, write by write."""

    def setUp(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.layer = HTTP1Layer(ConnectionRecord("10.0.0.1:1", "10.0.0.2:443", 0.0), Clock())
        self.layer.start(self)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name in ("toOrigin", "toDevice", "endToOrigin", "endToDevice", "pauseReading", "resumeReading",
                    "fail", "note", "close", "abort"):
            return lambda *args: self.calls.append((name, args[0] if args else None))
        raise AttributeError(name)

    def test_aHeadAndItsBodyGoInOneWrite(self) -> None:
        self.layer.deviceData(GET)
        self.layer.originData(OK)
        self.assertEqual(self.calls, [("toOrigin", GET), ("toDevice", OK)])

    def test_bytesBeforeAnEndAreWrittenBeforeIt(self) -> None:
        """A response delimited by the close: its bytes, then the end, in that order."""
        self.layer.deviceData(GET)
        self.calls.clear()
        self.layer.originData(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody")
        self.layer.originEnded(True)
        self.assertEqual(self.calls, [
            ("toDevice", b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody"),
            ("endToOrigin", True),
            ("endToDevice", True),
        ])
