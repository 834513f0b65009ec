"""The HTTP/2 layer in memory: real h2 devices and origins through a whole gateway with real TLS.

See :mod:`tests.corelab` (the gateway) and :mod:`tests.h2peers` (the peers).
"""

from __future__ import annotations

import hashlib
from typing import Any

import attrs
import h2.errors
import h2.events
import h2.settings
import hpack
from hyperframe.frame import PushPromiseFrame

from etpmitm.audit import ConnectionRecord
from etpmitm.gateway._twisted import halfCloseableTLS
from etpmitm.gateway.http2 import CONNECTION_WINDOW, STOP_UPLOAD_DELAY, STREAM_WINDOW, HTTP2Layer, http2Layer
from etpmitm.http import ALLOW, RequestHead, RequestVerdict
from tests.corelab import CoreTestCase, _Client
from tests.h2peers import H2Peer

E = h2.errors.ErrorCodes
S = h2.settings.SettingCodes
MiB = 1024 * 1024


def pattern(n: int) -> bytes:
    return (bytes(range(251)) * (n // 251 + 1))[:n]


class H2TestCase(CoreTestCase):
    """A gateway whose intercepted connections run the HTTP/2 layer."""

    def setUp(self) -> None:
        super().setUp()
        self.layers: list[HTTP2Layer] = []
        self.settings = attrs.evolve(self.settings, layerFor=self.layerFor)

    def layerFor(self, record: ConnectionRecord, judge: Any = None) -> HTTP2Layer:
        layer = http2Layer(self.settings, record, judge=self.judge)
        assert isinstance(layer, HTTP2Layer)
        self.layers.append(layer)
        return layer

    def judge(self, head: RequestHead) -> RequestVerdict:
        return ALLOW

    def open(self, device: H2Peer | None = None, origin: H2Peer | None = None) -> tuple[H2Peer, H2Peer]:
        """A device and an origin, both speaking h2 to the gateway's layer."""
        device = device or H2Peer(client=True)
        origin = origin or H2Peer(client=False)
        tls = halfCloseableTLS(_Client(self.deviceContext(), "origin.test", (b"h2", b"http/1.1")), True, device)
        self.connectDevice(device=tls)
        self.acceptTLS(app=origin, alpn=(b"h2", b"http/1.1"))
        self.net.flush()
        self.assertEqual(len(self.layers), 1, "the HTTP/2 layer did not start")
        return device, origin

    @property
    def layer(self) -> HTTP2Layer:
        return self.layers[0]

    def requests(self) -> list[dict[str, Any]]:
        """The per-request audit events, by stream."""
        events = [e for e in self.events if e.get("log_namespace") == "etpmitm.audit.request"]
        return sorted(events, key=lambda e: e["stream"])

    def finish(self, device: H2Peer) -> dict[str, Any]:
        """The device says goodbye (GOAWAY, then close_notify and FIN); the connection's audit event."""
        device.goaway(0)
        device.tls.loseConnection()
        self.net.flush()
        return self.assertDone("intercept", "ok")


def answersEarly(origin: H2Peer) -> None:
    """The origin answers 413 at a request's headers, then resets it with NO_ERROR (RFC 9113 8.1)."""
    def early(sid: int, log: Any) -> None:
        origin.respond(sid, status=413, body=b"too large")
        origin.reset(sid, E.NO_ERROR)
    origin.onHeaders = early


def answerWith(origin: H2Peer, **responses: bytes) -> None:
    """The origin answers ``/name`` with ``responses[name]`` once each request has ended."""
    def onRequest(sid: int, log: Any) -> None:
        name = log.header(b":path").decode().strip("/").split("?")[0]
        origin.respond(sid, body=responses[name], extra=[("content-type", "text/plain")])
    origin.onRequest = onRequest


class StreamTests(H2TestCase):
    def test_concurrentStreams(self) -> None:
        """Several requests at once on one connection, each answered on its own stream, each audited."""
        device, origin = self.open()
        answerWith(origin, a=b"alpha", b=b"bravo" * 1000, c=b"")
        ids = [
            device.request("/a", extra=[("user-agent", "test-agent/1")]),
            device.request("/b?q=12345", method="POST", body=b"x" * 300, extra=[("content-type", "text/plain")]),
            device.request("/c"),
        ]
        self.net.flush()
        self.assertEqual(ids, [1, 3, 5])
        self.assertEqual(sorted(log.header(b":path") for log in origin.streams.values()), [b"/a", b"/b?q=12345", b"/c"])
        self.assertEqual([device.streams[i].body for i in ids], [b"alpha", b"bravo" * 1000, b""])
        self.assertTrue(all(device.streams[i].ended and device.streams[i].header(b":status") == b"200" for i in ids))
        event = self.finish(device)
        records = self.requests()
        self.assertEqual([r["stream"] for r in records], ids)
        self.assertEqual({r["connection"] for r in records}, {event["id"]})
        first, second, third = records
        self.assertEqual(first["head"], {
            "method": "GET", "authority": "origin.test", "path": "/a", "query_length": 0,
            "user_agent": "test-agent/1", "content_type": None, "content_length": None,
        })
        self.assertEqual((second["head"]["method"], second["head"]["path"], second["head"]["query_length"]), ("POST", "/b", 7))
        self.assertEqual((second["bytes_up"], second["bytes_down"]), (300, 5000))
        self.assertEqual((first["status"], first["response_content_type"], first["protocol"]), (200, "text/plain", "h2"))
        self.assertEqual((third["bytes_down"], third["action"]), (0, "allow"))
        self.assertTrue(all(r["headers_after"] is not None for r in records))

    def test_requestsBeyondTheOriginsStreamLimitWait(self) -> None:
        """SETTINGS: an origin that takes one stream at a time gets one; the others wait in the gateway."""
        device, origin = self.open(origin=H2Peer(client=False, settings={S.MAX_CONCURRENT_STREAMS: 1}))
        ids = [device.request(f"/{n}") for n in "abc"]
        self.net.flush()
        self.assertEqual(list(origin.streams), [1], "the gateway opened more streams than the origin allows")
        for expected in (1, 3, 5):
            self.assertEqual(max(origin.streams), expected)
            origin.respond(expected, body=b"done")
            self.net.flush()
        self.assertEqual([device.streams[i].body for i in ids], [b"done"] * 3)

    def test_smallWindowAndFramesOfTheDevice(self) -> None:
        """SETTINGS: the device's window of 1000 bytes and the origin's large frames are honoured
        (the device's h2 fails the connection on a flow-control or frame-size violation)."""
        device = H2Peer(client=True, settings={S.INITIAL_WINDOW_SIZE: 1000, S.HEADER_TABLE_SIZE: 0})
        origin = H2Peer(client=False, settings={S.MAX_FRAME_SIZE: 1 << 20})
        device, origin = self.open(device, origin)
        body = pattern(300_000)
        answerWith(origin, big=body)
        sid = device.request("/big")
        self.net.flush()
        self.assertEqual(device.streams[sid].body, body)
        self.assertLessEqual(max(device.streams[sid].chunks), 1000)
        self.finish(device)

    def test_informationalResponse(self) -> None:
        device, origin = self.open()
        origin.onHeaders = lambda sid, log: origin.respond(sid, status=103, extra=[("link", "</s.css>; rel=preload")], end=False)
        sid = device.request("/early")
        self.net.flush()
        self.assertEqual(device.streams[sid].informational, [[(b":status", b"103"), (b"link", b"</s.css>; rel=preload")]])


    def test_endStreamRidesOnTheLastDataFrameBothWays(self) -> None:
        """A body whose last DATA frame carries END_STREAM is passed on the same way: one DATA
        frame each way, not the data and then an empty DATA frame to end the stream."""
        device, origin = self.open()

        def onRequest(sid: int, log: Any) -> None:
            origin.conn.send_headers(sid, [(":status", "200")])
            origin.conn.send_data(sid, b"the response", end_stream=True)
            origin.flush()
        origin.onRequest = onRequest
        sid = device.request("/up", method="POST", end=False)
        device.conn.send_data(sid, b"the upload", end_stream=True)
        device.flush()
        self.net.flush()
        [upload] = origin.eventsOf(h2.events.DataReceived)
        self.assertEqual((upload.data, upload.stream_ended is not None), (b"the upload", True))
        [response] = device.eventsOf(h2.events.DataReceived)
        self.assertEqual((response.data, response.stream_ended is not None), (b"the response", True))
        self.assertEqual((device.streams[sid].body, device.streams[sid].ended), (b"the response", True))
        [record] = self.requests()
        self.assertEqual((record["bytes_up"], record["bytes_down"], record["status"]), (10, 12, 200))


class FlowControlTests(H2TestCase):
    def test_stalledDeviceStreamHoldsAtMostItsWindow(self) -> None:
        """A device that stops reading one stream: the gateway holds at most that stream's window,
        the origin is stopped by its own window, and another stream still completes."""
        device, origin = self.open(device=H2Peer(client=True, autoAck=False))
        device.conn.increment_flow_control_window(16 * MiB)  # the device stalls streams, not the connection
        body = pattern(4 * MiB)
        answerWith(origin, big=body, small=b"small")
        big = device.request("/big")
        self.net.flush()
        self.assertGreater(origin.pending(1), 0, "the origin sent its whole body")
        self.assertEqual(origin.conn.local_flow_control_window(1), 0)
        self.assertLessEqual(self.layer.buffered(), STREAM_WINDOW)
        self.assertLess(len(device.streams[big].body), 4 * MiB)
        small = device.request("/small")
        self.net.flush()
        self.assertEqual(device.streams[small].body, b"small", "one stalled stream blocked another")
        device.ackAll()
        self.net.flush()
        self.assertEqual(device.streams[big].body, body)
        self.assertTrue(device.streams[big].ended)
        self.assertEqual(self.layer.buffered(), 0)
        self.finish(device)

    def test_deviceThatStopsReadingTheSocket(self) -> None:
        """TCP back-pressure: a device that reads nothing leaves the gateway holding at most the
        connection's window, however large the response."""
        device, origin = self.open()
        body = pattern(8 * MiB)
        answerWith(origin, a=body, b=body)
        device.tcp.pauseProducing()
        device.request("/a")
        device.request("/b")
        self.net.flush()
        self.assertGreater(origin.pending(1) + origin.pending(3), 0)
        self.assertLessEqual(self.layer.buffered(), CONNECTION_WINDOW)
        self.assertLess(self.deviceSocket.written, 4 * MiB)
        device.tcp.resumeProducing()
        self.net.flush()
        self.assertEqual((device.streams[1].body, device.streams[3].body), (body, body))

    def test_uploadToAnOriginThatDoesNotRead(self) -> None:
        """The device's upload waits in the gateway only up to the stream's window until the origin
        reads; then it arrives whole."""
        origin = H2Peer(client=False, autoAck=False)
        device, origin = self.open(origin=origin)
        body = pattern(3 * MiB + 17)
        origin.onRequest = lambda sid, log: origin.respond(sid, body=hashlib.sha256(log.body).hexdigest().encode())
        sid = device.request("/echo", method="POST", body=body)
        self.net.flush()
        self.assertGreater(device.pending(sid), 0)
        self.assertLessEqual(self.layer.buffered(), STREAM_WINDOW)
        origin.ackAll()
        self.net.flush()
        self.assertEqual(device.streams[sid].body, hashlib.sha256(body).hexdigest().encode())
        self.finish(device)
        self.assertEqual(self.requests()[0]["bytes_up"], len(body))


class ResetTests(H2TestCase):
    def test_deviceResetReachesTheOrigin(self) -> None:
        device, origin = self.open()
        def onHeaders(sid: int, log: Any) -> None:
            if log.header(b":path") == b"/slow":
                origin.respond(sid, body=b"", end=False)
            else:
                origin.respond(sid, body=b"fine")
        origin.onHeaders = onHeaders
        slow = device.request("/slow")
        self.net.flush()
        device.reset(slow, E.CANCEL)
        other = device.request("/other")
        self.net.flush()
        self.assertEqual(origin.streams[1].reset, E.CANCEL)
        self.assertEqual(device.streams[other].body, b"fine")
        self.finish(device)
        first = self.requests()[0]
        self.assertEqual((first["stream"], first["status"]), (slow, 200))
        self.assertIn("reset by the device (CANCEL)", first["reason"])

    def test_originResetReachesTheDevice(self) -> None:
        device, origin = self.open()
        origin.onRequest = lambda sid, log: origin.reset(sid, E.REFUSED_STREAM)
        sid = device.request("/refused")
        self.net.flush()
        self.assertEqual(device.streams[sid].reset, E.REFUSED_STREAM)
        self.finish(device)
        self.assertIn("reset by the origin (REFUSED_STREAM)", self.requests()[0]["reason"])

    def test_originResetAfterAFullResponseStopsTheUpload(self) -> None:
        """RFC 9113 8.1: an origin that answered in full and resets with NO_ERROR: the device gets the
        whole response, then (STOP_UPLOAD_DELAY later, in a write of its own) the same reset."""
        device, origin = self.open()
        answersEarly(origin)
        sid = device.request("/upload", method="POST", end=False)
        device.send(sid, b"x" * 1000, end=False)
        self.net.flush()
        self.assertEqual((device.streams[sid].header(b":status"), device.streams[sid].body), (b"413", b"too large"))
        self.assertTrue(device.streams[sid].ended)
        self.assertIsNone(device.streams[sid].reset)
        self.advance(STOP_UPLOAD_DELAY)
        self.assertEqual(device.streams[sid].reset, E.NO_ERROR)
        self.finish(device)

    def test_anUploadAnsweredEarlyFillsItsWindowAndNoMore(self) -> None:
        """Until the reset, what the device sends on the answered stream is taken, and only the
        connection's window comes back (after the reset): the stream's window bounds it."""
        device, origin = self.open()
        answersEarly(origin)
        sid = device.request("/upload", method="POST", end=False)
        device.send(sid, b"x" * (STREAM_WINDOW * 4), end=False)
        self.net.flush()
        self.assertEqual(device.streams[sid].header(b":status"), b"413")
        self.assertEqual(device.conn.local_flow_control_window(sid), 0)  # it may send no more on it
        self.advance(STOP_UPLOAD_DELAY)
        self.assertEqual(device.streams[sid].reset, E.NO_ERROR)
        # More such uploads than the connection's window holds: what each sent comes back to the
        # connection, so a later upload still gets through whole.
        for _ in range(CONNECTION_WINDOW // STREAM_WINDOW + 1):
            more = device.request("/upload", method="POST", end=False)
            device.send(more, b"x" * (STREAM_WINDOW * 2), end=False)
            self.net.flush()
            self.advance(STOP_UPLOAD_DELAY)
            self.assertEqual(device.streams[more].reset, E.NO_ERROR)
        origin.onHeaders = None
        last = device.request("/echo", method="POST", body=pattern(300_000))
        self.net.flush()
        self.assertEqual((origin.streams[last].body, origin.streams[last].ended), (pattern(300_000), True))
        self.assertEqual(self.layer.buffered(), 0)

    def test_anUploadThatEndsBeforeTheResetIsNotReset(self) -> None:
        device, origin = self.open()
        answersEarly(origin)
        sid = device.request("/upload", method="POST", end=False)
        device.send(sid, b"x" * 1000, end=False)
        self.net.flush()
        device.send(sid, b"", end=True)
        self.net.flush()
        self.advance(STOP_UPLOAD_DELAY)
        self.assertEqual((device.streams[sid].header(b":status"), device.streams[sid].reset), (b"413", None))
        self.finish(device)


class GoawayTests(H2TestCase):
    def test_originGoawayLetsStreamsInFlightFinish(self) -> None:
        """The origin will process stream 1 but not 3: 1 completes, 3 is refused (the device may
        retry it), new requests are refused, and the connection then closes."""
        device, origin = self.open()
        first = device.request("/first")
        second = device.request("/second")
        self.net.flush()
        origin.goaway(last=1)
        self.net.flush()
        self.assertEqual(device.streams[second].reset, E.REFUSED_STREAM)
        [goaway] = device.eventsOf(h2.events.ConnectionTerminated)
        self.assertEqual((goaway.error_code, goaway.last_stream_id), (E.NO_ERROR, second))
        origin.respond(1, body=b"first body")
        self.net.flush()
        self.assertEqual((device.streams[first].body, device.streams[first].ended), (b"first body", True))
        self.assertTrue(device.readEnded, "the gateway did not close the connection once no stream was left")
        self.assertDone("intercept", "ok", "the origin sent GOAWAY")
        self.assertIn("refused", self.requests()[1]["reason"])

    def test_deviceGoawayLetsStreamsInFlightFinish(self) -> None:
        device, origin = self.open()
        sid = device.request("/first")
        self.net.flush()
        device.goaway(0)
        self.net.flush()
        [goaway] = origin.eventsOf(h2.events.ConnectionTerminated)
        self.assertEqual(goaway.error_code, E.NO_ERROR)
        origin.respond(1, body=b"still delivered")
        self.net.flush()
        self.assertEqual(device.streams[sid].body, b"still delivered")
        self.assertDone("intercept", "ok", "the device sent GOAWAY")

    def test_deviceGoawayWithAnError(self) -> None:
        device, origin = self.open()
        device.request("/first")
        self.net.flush()
        device.goaway(0, E.INTERNAL_ERROR)
        self.net.flush()
        self.assertEqual(origin.streams[1].reset, E.CANCEL)
        self.assertDone("intercept", "ok", "device sent GOAWAY (INTERNAL_ERROR)")


class TrailerTests(H2TestCase):
    def test_grpcStyleTrailersBothWays(self) -> None:
        device, origin = self.open()
        message = b"\x00\x00\x00\x00\x05hello"
        def onRequest(sid: int, log: Any) -> None:
            origin.respond(sid, body=b"\x00\x00\x00\x00\x02ok" + log.body[5:], extra=[("content-type", "application/grpc")],
                           trailers=[("grpc-status", "0"), ("grpc-message", "fine")])
        origin.onRequest = onRequest
        sid = device.request(
            "/pkg.Service/Call", method="POST", body=message,
            extra=[("content-type", "application/grpc"), ("te", "trailers")],
            trailers=[("x-request-checksum", "42")],
        )
        self.net.flush()
        request = origin.streams[1]
        self.assertEqual((request.body, request.trailers), (message, [(b"x-request-checksum", b"42")]))
        self.assertEqual(request.header(b"te"), b"trailers")
        response = device.streams[sid]
        self.assertEqual(response.body, b"\x00\x00\x00\x00\x02okhello")
        self.assertEqual(response.trailers, [(b"grpc-status", b"0"), (b"grpc-message", b"fine")])
        self.finish(device)
        self.assertEqual(self.requests()[0]["response_content_type"], "application/grpc")

    def test_trailersWaitForTheBodyHeldBeforeThem(self) -> None:
        device, origin = self.open(device=H2Peer(client=True, autoAck=False))
        body = pattern(500_000)
        origin.onRequest = lambda sid, log: origin.respond(sid, body=body, trailers=[("grpc-status", "0")])
        sid = device.request("/stream")
        self.net.flush()
        self.assertIsNone(device.streams[sid].trailers)
        device.ackAll()
        self.net.flush()
        self.assertEqual((device.streams[sid].body, device.streams[sid].trailers), (body, [(b"grpc-status", b"0")]))


class PushTests(H2TestCase):
    def test_pushIsDisabledTowardsTheOriginAndRefused(self) -> None:
        """The gateway tells the origin ENABLE_PUSH = 0; a PUSH_PROMISE anyway is a protocol error,
        and the device never sees a push."""
        device, origin = self.open()
        self.assertEqual(origin.conn.remote_settings.enable_push, 0)
        sid = device.request("/page")
        self.net.flush()
        frame = PushPromiseFrame(1, promised_stream_id=2, data=hpack.Encoder().encode(
            [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"origin.test"), (b":path", b"/pushed")]
        ), flags=["END_HEADERS"])
        origin.tls.write(frame.serialize())
        self.net.flush()
        self.assertEqual(device.eventsOf(h2.events.PushedStreamReceived), [])
        self.assertEqual(device.streams[sid].reset, E.INTERNAL_ERROR)
        [goaway] = origin.eventsOf(h2.events.ConnectionTerminated)
        self.assertEqual(goaway.error_code, E.PROTOCOL_ERROR)
        self.assertDone("intercept", "error", "origin broke HTTP/2")


class VerdictTests(H2TestCase):
    def judge(self, head: RequestHead) -> RequestVerdict:
        if head.path.startswith("/blocked"):
            return RequestVerdict("block", "rule 3 blocks origin.test/blocked/*", "3")
        return ALLOW

    def test_blockedStreamGets403WhileAnotherCompletes(self) -> None:
        device, origin = self.open()
        answerWith(origin, ok=b"allowed")
        blocked = device.request("/blocked/x?secret=1", method="POST", body=b"upload" * 5000)
        ok = device.request("/ok")
        self.net.flush()
        self.assertEqual([log.header(b":path") for log in origin.streams.values()], [b"/ok"])
        self.assertEqual(device.streams[ok].body, b"allowed")
        page = device.streams[blocked]
        self.assertEqual(page.header(b":status"), b"403")
        self.assertIn(b"origin.test/blocked/x", page.body)
        self.assertNotIn(b"secret", page.body)
        self.assertIn(b"rule 3 blocks", page.body)
        self.assertTrue(page.ended)
        self.finish(device)
        first, second = self.requests()
        self.assertEqual((first["action"], first["status"], first["rule"]), ("block", 403, "3"))
        self.assertEqual((second["action"], second["status"]), ("allow", 200))

    def test_blockedRequestStillUploading(self) -> None:
        """The page is complete before the upload: the device gets it, then RST_STREAM(NO_ERROR)."""
        device, origin = self.open()
        sid = device.request("/blocked", method="POST", end=False)
        device.send(sid, b"part", end=False)
        self.net.flush()
        self.assertEqual(device.streams[sid].header(b":status"), b"403")
        self.assertTrue(device.streams[sid].ended)
        self.assertIsNone(device.streams[sid].reset)
        self.advance(STOP_UPLOAD_DELAY)
        self.assertEqual(device.streams[sid].reset, E.NO_ERROR)
        self.assertEqual(origin.streams, {})

    def test_policyThatFailsBlocks(self) -> None:
        self.judge = lambda head: 1 / 0  # type: ignore[method-assign, assignment, return-value]
        device, origin = self.open()
        sid = device.request("/anything")
        self.net.flush()
        self.assertEqual(device.streams[sid].header(b":status"), b"403")
        self.assertEqual(origin.streams, {})
        self.flushLoggedErrors(ZeroDivisionError)

    def test_connectIsRefused(self) -> None:
        device, origin = self.open()
        sid = device.conn.get_next_available_stream_id()
        device.conn.send_headers(sid, [(":method", "CONNECT"), (":authority", "elsewhere.test:22")])
        device.flush()
        self.net.flush()
        self.assertEqual(device.streams[sid].header(b":status"), b"405")
        self.assertEqual(origin.streams, {})


class AltSvcTests(H2TestCase):
    stripQuic = True

    def layerFor(self, record: ConnectionRecord, judge: Any = None) -> HTTP2Layer:
        layer = HTTP2Layer(record.id, self.reactor, stripQuic=lambda: self.stripQuic)
        self.layers.append(layer)
        return layer

    def exchange(self) -> tuple[H2Peer, int]:
        device, origin = self.open()
        def onRequest(sid: int, log: Any) -> None:
            origin.conn.advertise_alternative_service(b'h3=":443"; ma=86400', stream_id=sid)
            origin.conn.advertise_alternative_service(b'h3=":443", h2="alt.origin.test:443"', stream_id=sid)
            origin.respond(sid, body=b"x", extra=[
                ("alt-svc", 'h3=":443"; ma=86400, h3-29=":443", h2="alt.origin.test:443"; ma=60'),
                ("alt-svc", 'h3-Q050=":443"'),
            ])
        origin.onRequest = onRequest
        sid = device.request("/")
        self.net.flush()
        return device, sid

    def test_quicAlternativesRemoved(self) -> None:
        device, sid = self.exchange()
        self.assertEqual(device.streams[sid].all(b"alt-svc"), [b'h2="alt.origin.test:443"; ma=60'])
        frames = device.eventsOf(h2.events.AlternativeServiceAvailable)
        self.assertEqual([f.field_value for f in frames], [b'h2="alt.origin.test:443"'])

    def test_keptWhenTheSettingIsOff(self) -> None:
        self.stripQuic = False
        device, sid = self.exchange()
        self.assertEqual(device.streams[sid].all(b"alt-svc"), [
            b'h3=":443"; ma=86400, h3-29=":443", h2="alt.origin.test:443"; ma=60', b'h3-Q050=":443"',
        ])
        self.assertEqual(len(device.eventsOf(h2.events.AlternativeServiceAvailable)), 2)


class EndingTests(H2TestCase):
    def test_originClosesMidResponse(self) -> None:
        """An unfinished response fails on its stream; a finished one still reaches the device."""
        device, origin = self.open(device=H2Peer(client=True, autoAck=False))
        done = pattern(100_000)
        def onRequest(sid: int, log: Any) -> None:
            if log.header(b":path") == b"/done":
                origin.respond(sid, body=done)
            else:
                origin.respond(sid, body=b"part", end=False)
        origin.onRequest = onRequest
        finished = device.request("/done")
        cut = device.request("/cut")
        self.net.flush()
        self.assertLess(len(device.streams[finished].body), len(done))  # the rest is held by the gateway
        origin.tls.loseConnection()
        self.net.flush()
        self.assertEqual(device.streams[cut].reset, E.INTERNAL_ERROR)
        device.ackAll()
        self.net.flush()
        self.assertEqual(device.streams[finished].body, done)
        self.assertDone("intercept", "error", "the origin closed the connection with 1 response(s) unfinished")
        self.assertEqual(len(self.requests()), 2)

    def test_deviceGoesAwayMidResponse(self) -> None:
        device, origin = self.open()
        origin.onRequest = lambda sid, log: origin.respond(sid, body=b"part", end=False)
        device.request("/long")
        self.net.flush()
        device.tcp.abortConnection()
        self.net.flush()
        self.assertDone("intercept", "error", "device connection lost")
        [record] = self.requests()
        self.assertEqual((record["status"], record["bytes_down"]), (200, 4))
        self.assertIn("the connection closed", record["reason"])

    def test_deviceSpeaksBrokenHTTP2(self) -> None:
        device, origin = self.open()
        device.tls.write(b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00")  # WINDOW_UPDATE of 0 on stream 0
        self.net.flush()
        [goaway] = device.eventsOf(h2.events.ConnectionTerminated)
        self.assertEqual(goaway.error_code, E.PROTOCOL_ERROR)
        self.assertDone("intercept", "error", "device broke HTTP/2")

    def test_malformedRequestHeadersAreRefused(self) -> None:
        """The gateway sends header blocks on without checking them again (``_config``), so what
        comes in is checked: here a connection-specific field from the device."""
        device, origin = self.open()
        device.conn.config.validate_outbound_headers = device.conn.config.normalize_outbound_headers = False
        device.request("/smuggled", extra=[("connection", "keep-alive")])
        self.net.flush()
        self.assertEqual(origin.streams, {}, "the origin saw a malformed request")
        [goaway] = device.eventsOf(h2.events.ConnectionTerminated)
        self.assertEqual(goaway.error_code, E.PROTOCOL_ERROR)
        self.assertDone("intercept", "error", "device broke HTTP/2")

    def test_malformedResponseHeadersAreRefused(self) -> None:
        """An upper-case field name from the origin never reaches the device."""
        device, origin = self.open()
        origin.conn.config.validate_outbound_headers = origin.conn.config.normalize_outbound_headers = False
        origin.onRequest = lambda sid, log: origin.respond(sid, body=b"body", extra=[("X-Upper", "1")])
        sid = device.request("/a")
        self.net.flush()
        self.assertIsNone(device.streams[sid].headers, "the device got a malformed response")
        self.assertEqual(device.streams[sid].reset, E.INTERNAL_ERROR)
        self.assertDone("intercept", "error", "origin broke HTTP/2")

    def test_idleConnectionTimesOut(self) -> None:
        device, origin = self.open()
        self.advance(self.idleTimeout)
        self.assertDone("intercept", "ok", "idle timeout")
