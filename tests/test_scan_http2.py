"""Content scanning in the HTTP/2 layer, in memory: real h2 peers, real TLS, a fake scanner."""

from __future__ import annotations

from typing import Any

import attrs
import h2.errors

from etpmitm.audit import ConnectionRecord
from etpmitm.gateway.http2 import STREAM_WINDOW, HTTP2Layer
from etpmitm.gateway.inspect import inspectingLayer
from etpmitm.gateway.scanhttp2 import ScanningHTTP2Layer
from etpmitm.scanning import SPOOL_MEMORY, Message
from tests.h2peers import H2Peer
from tests.scanfake import SERVICE, FakeScanner
from tests.test_http2 import H2TestCase, pattern
from tests.test_scan_http1 import EICAR

E = h2.errors.ErrorCodes


class ScanH2Case(H2TestCase):
    kinds: tuple[Any, ...] = ("reqmod", "respmod")
    maxSize = 1 << 30
    oversize = "allow"

    def setUp(self) -> None:
        super().setUp()
        self.scanner = FakeScanner(self.kinds, self.maxSize, self.oversize)
        self.settings = attrs.evolve(self.settings, scanner=self.scanner)
        self.factory = inspectingLayer(self.settings)

    def layerFor(self, record: ConnectionRecord, judge: Any = None) -> HTTP2Layer:
        record.alpn = "h2"
        layer = self.factory(record, self.judge)
        assert isinstance(layer, ScanningHTTP2Layer)
        self.layers.append(layer)
        return layer


class RespmodH2Tests(ScanH2Case):
    def test_passSendsTheOriginalHeadersDataAndTrailersAfterTheVerdict(self) -> None:
        device, origin = self.open()
        origin.onRequest = lambda sid, log: origin.respond(
            sid, body=b"hello world", extra=[("content-type", "text/plain")], trailers=[("grpc-status", "0")])
        sid = device.request("/file?x=1")
        self.net.flush()
        self.assertIsNone(device.streams[sid].headers)  # nothing before the verdict: not even the head
        self.assertEqual(device.streams[sid].body, b"")
        [scan] = self.scanner.scans_
        self.assertEqual((scan.job.kind, scan.job.url, scan.body), ("respmod", "https://origin.test/file?x=1", b"hello world"))
        self.assertEqual(scan.job.request.start_line, b"GET /file?x=1 HTTP/1.1")
        self.assertIn((b"host", b"origin.test"), scan.job.request.headers)
        assert scan.job.response is not None
        self.assertIn((b"content-type", b"text/plain"), scan.job.response.headers)
        scan.passes()
        self.net.flush()
        log = device.streams[sid]
        self.assertEqual((log.header(b":status"), log.header(b"content-type")), (b"200", b"text/plain"))
        self.assertEqual((log.body, log.trailers, log.ended), (b"hello world", [(b"grpc-status", b"0")], True))
        self.finish(device)
        [event] = self.requests()
        self.assertEqual(event["scan"], [{"kind": "respmod", "service": SERVICE, "istag": "tag-1", "result": "clean",
                                          "threat": None, "duration": 0.25}])

    def test_otherStreamsGoOnWhileOneIsHeldAndItsWindowKeepsFlowing(self) -> None:
        device, origin = self.open()
        big = pattern(3 * SPOOL_MEMORY)  # far beyond the stream and connection windows
        origin.onRequest = lambda sid, log: origin.respond(sid, body=big if log.header(b":path") == b"/big" else b"small")
        held = device.request("/big")
        self.net.flush()
        self.assertEqual(origin.pending(1), 0, "the origin could not send the whole held body: its window stalled")
        other = device.request("/other")
        self.net.flush()
        self.assertEqual(len(self.scanner.scans_), 2)
        self.scanner.scans_[1].passes()
        self.net.flush()
        self.assertEqual((device.streams[other].body, device.streams[other].ended), (b"small", True))
        self.assertIsNone(device.streams[held].headers)
        scan = self.scanner.scans_[0]
        assert scan.file is not None, "not spooled to a file"
        self.assertEqual(scan.body, big)
        scan.passes()
        self.net.flush()
        self.assertEqual(device.streams[held].body, big)
        self.assertTrue(device.streams[held].ended)
        self.assertTrue(scan.file.closed)
        self.finish(device)

    def test_releasedBodyIsPacedByTheDevicesWindow(self) -> None:
        device, origin = self.open(device=H2Peer(client=True, autoAck=False))
        body = pattern(2 * SPOOL_MEMORY)
        origin.onRequest = lambda sid, log: origin.respond(sid, body=body)
        sid = device.request("/big")
        self.net.flush()
        self.scanner.scans_[0].passes()
        self.net.flush()
        self.assertLessEqual(len(device.streams[sid].body), STREAM_WINDOW)
        self.assertLessEqual(self.layer.buffered(), STREAM_WINDOW + 16384)
        device.ackAll()
        self.net.flush()
        self.assertEqual(device.streams[sid].body, body)

    def test_blockSendsTheBlockPageOnThatStream(self) -> None:
        device, origin = self.open()
        origin.onRequest = lambda sid, log: origin.respond(sid, body=EICAR)
        sid = device.request("/eicar.com")
        self.net.flush()
        self.scanner.scans_[0].blocks()
        self.net.flush()
        log = device.streams[sid]
        self.assertEqual(log.header(b":status"), b"403")
        self.assertIn(b"Eicar-Test-Signature", bytes(log.body))
        self.assertNotIn(EICAR, bytes(log.body))
        self.finish(device)
        [event] = self.requests()
        self.assertEqual((event["action"], event["status"]), ("block", 403))
        self.assertIn("Eicar-Test-Signature", event["reason"])
        self.assertEqual(event["scan"][0]["threat"], "Eicar-Test-Signature")

    def test_replaceSendsTheScannersResponse(self) -> None:
        device, origin = self.open()
        origin.onRequest = lambda sid, log: origin.respond(sid, body=b"original")
        sid = device.request("/x")
        self.net.flush()
        head = Message(b"HTTP/1.1 403 Forbidden", ((b"Content-Type", b"text/html"), (b"Connection", b"close")))
        self.scanner.scans_[0].replaces(head, b"<p>blocked by AV</p>", threat="Bad.Thing")
        self.net.flush()
        log = device.streams[sid]
        self.assertEqual((log.header(b":status"), log.header(b"content-type"), log.header(b"connection")),
                         (b"403", b"text/html", None))
        self.assertEqual((log.body, log.ended), (b"<p>blocked by AV</p>", True))
        self.finish(device)
        self.assertEqual(self.requests()[0]["action"], "block")

    def test_deviceGoneDuringTheScanReleasesTheSpoolAndALateResultIsIgnored(self) -> None:
        device, origin = self.open()
        origin.onRequest = lambda sid, log: origin.respond(sid, body=pattern(2 * SPOOL_MEMORY))
        device.request("/big")
        self.net.flush()
        [scan] = self.scanner.scans_
        assert scan.file is not None
        device.tls.abortConnection()
        self.net.flush()
        self.assertTrue(scan.file.closed)
        scan.passes()
        self.net.flush()
        self.assertEqual(len(self.requests()), 1)
        self.assertEqual(self.connection.state.name, "DONE")

    def test_originEndsWhileAWholeResponseWaitsForItsVerdict(self) -> None:
        device, origin = self.open()
        origin.onRequest = lambda sid, log: origin.respond(sid, body=b"done")
        sid = device.request("/x")
        self.net.flush()
        origin.tls.loseConnection()
        self.net.flush()
        self.scanner.scans_[0].passes()
        self.net.flush()
        self.assertEqual((device.streams[sid].body, device.streams[sid].ended), (b"done", True))


class ReqmodH2Tests(ScanH2Case):
    kinds = ("reqmod",)

    def test_uploadHeldThenForwardedWithTrailers(self) -> None:
        device, origin = self.open()
        origin.onRequest = lambda sid, log: origin.respond(sid, body=b"stored")
        sid = device.request("/up", method="POST", body=b"payload", trailers=[("x-sum", "1")])
        self.net.flush()
        self.assertEqual(origin.streams, {})  # the origin has not even seen the request's headers
        [scan] = self.scanner.scans_
        self.assertEqual((scan.job.kind, scan.body, scan.job.request.start_line), ("reqmod", b"payload", b"POST /up HTTP/1.1"))
        scan.passes()
        self.net.flush()
        self.assertEqual((origin.streams[1].body, origin.streams[1].trailers), (b"payload", [(b"x-sum", b"1")]))
        self.assertEqual(device.streams[sid].body, b"stored")

    def test_uploadBlockedNeverReachesTheOrigin(self) -> None:
        device, origin = self.open()
        sid = device.request("/up", method="POST", body=EICAR)
        self.net.flush()
        self.scanner.scans_[0].blocks()
        self.net.flush()
        self.assertEqual(origin.streams, {})
        self.assertEqual(device.streams[sid].header(b":status"), b"403")
        self.finish(device)
        self.assertEqual(self.requests()[0]["action"], "block")

    def test_bigUploadSpooledAndForwardedByteIdentical(self) -> None:
        device, origin = self.open()
        body = pattern(2 * SPOOL_MEMORY + 7)
        origin.onRequest = lambda sid, log: origin.respond(sid, body=b"ok")
        sid = device.request("/up", method="POST", body=body)
        self.net.flush()
        self.assertEqual(device.pending(sid), 0, "the device's upload stalled while held")
        self.scanner.scans_[0].passes()
        self.net.flush()
        self.assertEqual(origin.streams[1].body, body)
        self.assertEqual(device.streams[sid].body, b"ok")

    def test_modifiedRequestGoesToTheOrigin(self) -> None:
        device, origin = self.open()
        origin.onRequest = lambda sid, log: origin.respond(sid, body=b"ok")
        device.request("/up", method="POST", body=b"secret")
        self.net.flush()
        new = Message(b"POST /up HTTP/1.1", ((b"Host", b"origin.test"), (b"X-Scanned", b"yes")))
        self.scanner.scans_[0].replaces(new, b"XXXXXX", response=False)
        self.net.flush()
        request = origin.streams[1]
        self.assertEqual((request.body, request.header(b"x-scanned"), request.header(b":path")), (b"XXXXXX", b"yes", b"/up"))


class OversizeH2Tests(ScanH2Case):
    maxSize = 100_000

    def test_growingResponseOverMaxSizeIsReleasedThenStreams(self) -> None:
        device, origin = self.open()
        body = pattern(700_000)
        origin.onRequest = lambda sid, log: origin.respond(sid, body=body)
        sid = device.request("/big")
        self.net.flush()
        self.assertEqual(self.scanner.scans_, [])
        self.assertEqual((device.streams[sid].body, device.streams[sid].ended), (body, True))
        self.finish(device)
        self.assertEqual(self.requests()[0]["scan"][0]["result"], "oversize")


    def test_knownLengthOverMaxSizeStreamsUnscanned(self) -> None:
        device, origin = self.open()
        body = pattern(200_000)
        origin.onRequest = lambda sid, log: origin.respond(sid, body=body, extra=[("content-length", "200000")])
        sid = device.request("/big")
        self.net.flush()
        self.assertEqual(self.scanner.scans_, [])
        self.assertEqual((device.streams[sid].header(b"content-length"), device.streams[sid].body), (b"200000", body))
        self.finish(device)
        self.assertEqual(self.requests()[0]["scan"][0], {"kind": "respmod", "service": None, "istag": None,
                         "result": "oversize", "threat": None, "duration": 0.0, "size": 200_000, "max_size": 100_000})


class OversizeBlockH2Tests(ScanH2Case):
    maxSize = 100_000
    oversize = "block"

    def test_knownLengthOverMaxSizeIsBlocked(self) -> None:
        device, origin = self.open()
        def onRequest(sid: int, log: Any) -> None:
            if log.header(b":path") == b"/big":
                origin.respond(sid, body=pattern(200_000), extra=[("content-length", "200000")])
            else:
                origin.respond(sid, body=pattern(50_000))
        origin.onRequest = onRequest
        sid = device.request("/big")
        other = device.request("/small")
        self.net.flush()
        self.assertEqual(device.streams[sid].header(b":status"), b"403")
        self.assertIn(b"max_size", bytes(device.streams[sid].body))
        self.assertIsNone(device.streams[other].headers)  # (held for its scan)
        self.scanner.scans_[0].passes()
        self.net.flush()
        self.assertEqual(device.streams[other].body, pattern(50_000))
        self.finish(device)
        self.assertEqual(self.requests()[0]["scan"][0]["result"], "oversize")

    def test_growingUploadOverMaxSizeIsBlockedBeforeTheOrigin(self) -> None:
        device, origin = self.open()
        sid = device.request("/up", method="POST", body=pattern(300_000))
        self.net.flush()
        self.assertEqual(origin.streams, {})
        self.assertEqual(device.streams[sid].header(b":status"), b"403")
