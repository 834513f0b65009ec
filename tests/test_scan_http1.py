"""Content scanning in the HTTP/1.1 layer, in memory (whole gateway, real TLS, a fake scanner)."""

from __future__ import annotations

import json
import os
from typing import Any

import attrs

from etpmitm.audit import ConnectionRecord
from etpmitm.auditlog import FIELDS, auditRecord
from etpmitm.gateway.http1 import HTTP1Layer
from etpmitm.gateway.http2 import HTTP2Layer
from etpmitm.gateway.inspect import inspectingLayer
from etpmitm.http import allow_all
from etpmitm.gateway.scanhttp1 import ScanningHTTP1Layer
from etpmitm.scanning import SPOOL_MEMORY, Message
from tests.corelab import CoreTestCase, Peer
from tests.scanfake import SERVICE, FakeScanner
from tests.test_http1 import GET, OK

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def pattern(n: int) -> bytes:
    return (bytes(range(251)) * (n // 251 + 1))[:n]


class ScanCase(CoreTestCase):
    """A gateway with the fake scanner; helpers."""

    kinds: tuple[Any, ...] = ("reqmod", "respmod")
    maxSize = 1 << 30
    oversize = "allow"

    def setUp(self) -> None:
        super().setUp()
        self.scanner = FakeScanner(self.kinds, self.maxSize, self.oversize)
        self.settings = attrs.evolve(self.settings, scanner=self.scanner)
        self.settings = attrs.evolve(self.settings, layerFor=inspectingLayer(self.settings))

    def relaying(self) -> tuple[Peer, Peer]:
        device = self.connectDevice(alpn=(b"http/1.1",))
        origin = self.acceptTLS(alpn=(b"http/1.1",))
        pipe = self.connection._pipe
        assert pipe is not None
        self.assertIsInstance(pipe.layer, ScanningHTTP1Layer)
        return device, origin

    def send(self, peer: Peer, data: bytes) -> None:
        peer.tls.write(data)
        self.net.flush()

    def take(self, peer: Peer) -> bytes:
        data, peer.received = peer.received, b""
        return data

    def settle(self) -> None:
        """Run the paced releases to their end."""
        for _ in range(10_000):
            self.net.flush()
            if not self.reactor.getDelayedCalls() or all(c.getTime() > self.reactor.seconds() for c in self.reactor.getDelayedCalls()):
                return
            self.reactor.advance(0)
        raise AssertionError("the release did not end")

    def requests(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("log_namespace") == "etpmitm.audit.request"]

    def endBoth(self, device: Peer, origin: Peer) -> None:
        device.tls.loseWriteConnection()
        self.net.flush()
        origin.tls.loseWriteConnection()
        self.net.flush()



class ScanHTTP1Tests(ScanCase):
    # -- RESPMOD --------------------------------------------------------------------------

    def test_passForwardsTheResponseAsReceivedAfterTheVerdict(self) -> None:
        device, origin = self.relaying()
        self.send(device, GET)
        self.assertEqual(self.take(origin), GET)
        self.send(origin, OK)
        self.assertEqual(self.take(device), b"")  # nothing of it before the verdict
        [scan] = self.scanner.scans_
        self.assertEqual(scan.job.kind, "respmod")
        self.assertEqual(scan.job.url, "https://example.com/a?secret=1")
        self.assertEqual(scan.job.request.start_line, b"GET /a?secret=1 HTTP/1.1")
        self.assertIn((b"Host", b"Example.COM:443"), scan.job.request.headers)
        assert scan.job.response is not None
        self.assertEqual(scan.job.response.start_line, b"HTTP/1.1 200 OK")
        self.assertEqual(scan.body, b"ok")
        scan.passes()
        self.settle()
        self.assertEqual(self.take(device), OK)
        self.send(device, GET)  # keep-alive goes on
        self.assertEqual(self.take(origin), GET)
        self.send(origin, OK)
        self.scanner.scans_[1].passes()
        self.settle()
        self.assertEqual(self.take(device), OK)
        self.endBoth(device, origin)
        first = self.requests()[0]
        self.assertEqual(first["action"], "allow")
        self.assertEqual(first["scan"], [{"kind": "respmod", "service": SERVICE, "istag": "tag-1", "result": "clean",
                                          "threat": None, "duration": 0.25}])
        self.assertDone("intercept", "ok")

    def test_chunkedWithTrailersPassesByteIdentical(self) -> None:
        device, origin = self.relaying()
        self.send(device, GET)
        self.take(origin)
        response = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"4\r\nwiki\r\n5;x=y\r\npedia\r\n0\r\nChecksum: x\r\n\r\n")
        self.send(origin, response[:50])
        self.send(origin, response[50:])
        self.assertEqual(self.take(device), b"")
        [scan] = self.scanner.scans_
        self.assertEqual(scan.body, b"wikipedia")  # decoded for the scanner
        scan.passes()
        self.settle()
        self.assertEqual(self.take(device), response)

    def test_blockSendsTheBlockPageNamingTheThreat(self) -> None:
        device, origin = self.relaying()
        self.send(device, GET)
        self.take(origin)
        self.send(origin, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(EICAR) + EICAR)
        self.assertEqual(self.take(device), b"")
        self.scanner.scans_[0].blocks()
        self.settle()
        page = self.take(device)
        self.assertTrue(page.startswith(b"HTTP/1.1 403 Forbidden\r\n"), page[:100])
        self.assertIn(b"Eicar-Test-Signature", page)
        self.assertNotIn(EICAR, page)
        self.send(device, GET)  # the connection keeps alive: the page is framed by its length
        self.assertEqual(self.take(origin), GET)
        self.send(origin, OK)
        self.scanner.scans_[1].passes()
        self.settle()
        self.assertEqual(self.take(device), OK)
        self.endBoth(device, origin)
        first = self.requests()[0]
        self.assertEqual((first["action"], first["status"]), ("block", 403))
        self.assertIn("Eicar-Test-Signature", first["reason"])
        self.assertEqual(first["scan"][0]["threat"], "Eicar-Test-Signature")
        self.assertEqual(first["scan"][0]["result"], "infected")

    def test_scanErrorBlocks(self) -> None:
        device, origin = self.relaying()
        self.send(device, GET)
        self.take(origin)
        self.send(origin, OK)
        self.scanner.scans_[0].fails()
        self.settle()
        page = self.take(device)
        self.assertIn(b"403", page.split(b"\r\n")[0])
        self.assertIn(b"timed out", page)
        [event] = self.requests()
        self.assertEqual((event["action"], event["scan"][0]["result"]), ("block", "error"))

    def test_replaceSendsTheScannersResponseWithItsLength(self) -> None:
        device, origin = self.relaying()
        self.send(device, GET)
        self.take(origin)
        self.send(origin, b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 4\r\n\r\nbad!")
        head = Message(b"HTTP/1.1 403 Forbidden", ((b"Content-Type", b"text/html"), (b"Content-Length", b"999")))
        self.scanner.scans_[0].replaces(head, b"<p>virus</p>", threat="Bad.Thing")
        self.settle()
        self.assertEqual(self.take(device), b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/html\r\n"
                         b"content-length: 12\r\nconnection: close\r\n\r\n<p>virus</p>")
        self.assertTrue(device.readEnded)  # the original did not keep alive: neither does its replacement
        [event] = self.requests()
        self.assertEqual((event["action"], event["status"], event["response_content_type"]), ("block", 403, "text/html"))
        self.assertEqual(event["scan"][0]["threat"], "Bad.Thing")

    def test_responseReadUntilCloseIsHeldUntilTheEnd(self) -> None:
        device, origin = self.relaying()
        self.send(device, GET)
        self.take(origin)
        response = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end"
        self.send(origin, response)
        self.assertEqual(self.scanner.scans_, [])  # not whole yet
        origin.tls.loseConnection()
        self.net.flush()
        self.assertEqual((self.take(device), device.readEnded), (b"", False))
        [scan] = self.scanner.scans_
        self.assertEqual(scan.body, b"until the end")
        scan.passes()
        self.settle()
        self.assertEqual(self.take(device), response)
        self.assertTrue(device.readEnded)
        device.tls.loseConnection()
        self.net.flush()
        self.assertDone("intercept", "ok")
        self.assertEqual(self.requests()[0]["scan"][0]["result"], "clean")

    def test_originCutsAHeldResponse(self) -> None:
        device, origin = self.relaying()
        self.send(device, GET)
        self.take(origin)
        self.send(origin, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        origin.tls.loseConnection()
        self.net.flush()
        self.assertEqual(self.scanner.scans_, [])
        self.assertEqual(device.received, b"")  # none of a partial body
        self.assertTrue(device.readEnded)
        device.tls.loseConnection()
        self.net.flush()
        self.assertDone("intercept", "error", "the origin closed before its response ended")
        self.assertIn("not delivered", self.requests()[0]["reason"])

    def test_headAndNoBodyResponsesAreNotHeld(self) -> None:
        device, origin = self.relaying()
        self.send(device, GET.replace(b"GET", b"HEAD"))
        self.take(origin)
        self.send(origin, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        self.assertEqual(self.take(device), b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        self.send(device, GET)
        self.take(origin)
        self.send(origin, b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertEqual(self.take(device), b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertEqual(self.scanner.scans_, [])

    def test_blockedPipelinedUploadIsAnsweredAfterTheHeldResponseBeforeIt(self) -> None:
        device, origin = self.relaying()
        upload = b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(EICAR) + EICAR
        self.send(device, GET + upload)
        self.assertEqual(self.take(origin), GET)
        self.send(origin, OK)
        respmod, reqmod = self.scanner.scans_
        self.assertEqual((respmod.job.kind, reqmod.job.kind, reqmod.body), ("respmod", "reqmod", EICAR))
        reqmod.blocks()
        self.settle()
        self.assertEqual(self.take(device), b"")  # the first response's verdict is still pending
        respmod.passes()
        self.settle()
        received = self.take(device)
        self.assertTrue(received.startswith(OK + b"HTTP/1.1 403 Forbidden\r\n"), received[:200])
        self.assertTrue(device.readEnded)
        self.assertEqual(origin.received, b"")  # the upload never reached the origin
        device.tls.loseConnection()
        origin.tls.loseConnection()
        self.net.flush()
        first, second = self.requests()
        self.assertEqual((first["action"], first["status"], first["scan"][0]["result"]), ("allow", 200, "clean"))
        self.assertEqual((second["action"], second["status"], second["scan"][0]["result"]), ("block", 403, "infected"))

    def test_pipelinedResponsesWaitInOrder(self) -> None:
        device, origin = self.relaying()
        second = GET.replace(b"/a", b"/b")
        self.send(device, GET + second)
        self.assertEqual(self.take(origin), GET)
        self.send(origin, OK)
        self.assertEqual(self.take(origin), second)  # the next request goes on while the first response is held
        self.send(origin, OK.replace(b"ok", b"OK"))
        self.assertEqual(self.take(device), b"")
        self.assertEqual(len(self.scanner.scans_), 1)  # the origin is not read while a whole response waits
        self.scanner.scans_[0].passes()
        self.settle()
        self.assertEqual(self.take(device), OK)
        self.scanner.scans_[1].passes()
        self.settle()
        self.assertEqual(self.take(device), OK.replace(b"ok", b"OK"))

    def test_spooledBodyPassesByteIdenticalPacedAndTheFileGoes(self) -> None:
        device, origin = self.relaying()
        body = pattern(3 * SPOOL_MEMORY + 123)
        self.send(device, GET)
        self.take(origin)
        response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        self.send(origin, response)
        self.assertEqual(self.take(device), b"")
        [scan] = self.scanner.scans_
        self.assertEqual(scan.body, body)
        assert scan.file is not None, "the body was not spooled to a file"
        self.assertEqual(os.fstat(scan.file.fileno()).st_mode & 0o777, 0o600)
        self.assertEqual(os.fstat(scan.file.fileno()).st_nlink, 0)  # no name on disk
        scan.passes()
        # paced: the gateway stops once the device's buffer is full
        self.assertLess(self.deviceSocket.other.pendingBytes(), 512 * 1024)
        self.settle()
        self.assertEqual(self.take(device), response)
        self.assertTrue(scan.file.closed)

    def test_deviceGoneDuringTheScanReleasesTheSpoolAndALateResultIsIgnored(self) -> None:
        device, origin = self.relaying()
        body = pattern(2 * SPOOL_MEMORY)
        self.send(device, GET)
        self.take(origin)
        self.send(origin, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        [scan] = self.scanner.scans_
        assert scan.file is not None
        device.tls.abortConnection()
        self.net.flush()
        self.assertTrue(scan.file.closed)
        scan.passes()  # after the connection ended: ignored
        self.settle()
        [event] = self.requests()
        self.assertEqual(event["scan"], None)
        self.assertIs(self.connection.state.name, "DONE")

    # -- REQMOD ---------------------------------------------------------------------------

    def test_uploadHeldUntilScannedThenForwardedAsReceived(self) -> None:
        device, origin = self.relaying()
        head = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        body = b"4\r\nwiki\r\n5\r\npedia\r\n0\r\nChecksum: x\r\n\r\n"
        self.send(device, head + body[:9])
        self.send(device, body[9:])
        self.assertEqual(self.take(origin), b"")  # the origin gets nothing before the verdict
        [scan] = self.scanner.scans_
        self.assertEqual((scan.job.kind, scan.body, scan.job.response), ("reqmod", b"wikipedia", None))
        scan.passes()
        self.settle()
        self.assertEqual(self.take(origin), head + body)
        self.send(origin, OK)
        self.scanner.scans_[1].passes()
        self.settle()
        self.assertEqual(self.take(device), OK)

    def test_uploadBlockedNeverReachesTheOrigin(self) -> None:
        device, origin = self.relaying()
        upload = b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(EICAR) + EICAR
        self.send(device, upload)
        self.scanner.scans_[0].blocks()
        self.settle()
        page = self.take(device)
        self.assertTrue(page.startswith(b"HTTP/1.1 403 Forbidden\r\n"))
        self.assertIn(b"connection: close", page)
        self.assertEqual(origin.received, b"")
        self.assertTrue(device.readEnded)
        device.tls.loseConnection()
        origin.tls.loseConnection()
        self.net.flush()
        [event] = self.requests()
        self.assertEqual((event["action"], event["status"]), ("block", 403))
        self.assertEqual(event["scan"][0]["kind"], "reqmod")

    def test_expect100ContinueIsAnsweredByTheGateway(self) -> None:
        device, origin = self.relaying()
        head = b"PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        self.send(device, head)
        self.assertEqual(self.take(device), b"HTTP/1.1 100 Continue\r\n\r\n")
        self.send(device, b"hello")
        self.assertEqual(self.take(origin), b"")
        self.scanner.scans_[0].passes()
        self.settle()
        self.assertEqual(self.take(origin), head + b"hello")

    def test_modifiedRequestIsForwarded(self) -> None:
        device, origin = self.relaying()
        self.send(device, b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nsecret")
        new = Message(b"POST /up HTTP/1.1", ((b"Host", b"a"), (b"Content-Length", b"6")))
        self.scanner.scans_[0].replaces(new, b"XXXXXX", response=False)
        self.settle()
        self.assertEqual(self.take(origin), b"POST /up HTTP/1.1\r\nHost: a\r\ncontent-length: 6\r\n\r\nXXXXXX")


class OversizeAllowTests(ScanCase):
    maxSize = 10
    kinds = ("respmod",)

    def test_knownLengthOverMaxSizeStreamsUnscanned(self) -> None:
        device, origin = self.relaying()
        self.send(device, GET)
        self.take(origin)
        response = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n" + b"x" * 11
        self.send(origin, response)
        self.assertEqual(self.take(device), response)
        self.assertEqual(self.scanner.scans_, [])
        self.endBoth(device, origin)
        self.assertEqual(self.requests()[0]["scan"][0]["result"], "oversize")

    def test_growingBodyOverMaxSizeIsReleasedThenStreams(self) -> None:
        device, origin = self.relaying()
        self.send(device, GET)
        self.take(origin)
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        self.send(origin, head + b"8\r\n12345678\r\n")
        self.assertEqual(self.take(device), b"")
        self.send(origin, b"8\r\nabcdefgh\r\n")
        self.settle()
        self.assertEqual(self.take(device), head + b"8\r\n12345678\r\n8\r\nabcdefgh\r\n")
        self.send(origin, b"0\r\n\r\n")
        self.assertEqual(self.take(device), b"0\r\n\r\n")
        self.assertEqual(self.scanner.scans_, [])


class ScannerFailureTests(ScanCase):
    kinds = ("respmod",)

    def test_aScannerThatErrbacksBlocksWithALoggedReason(self) -> None:
        device, origin = self.relaying()
        self.send(device, GET)
        self.take(origin)
        self.send(origin, OK)
        self.scanner.scans_[0].answer.errback(RuntimeError("scanner bug"))
        self.settle()
        self.assertIn(b"403 Forbidden", self.take(device))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.endBoth(device, origin)
        event = self.requests()[0]
        self.assertEqual((event["action"], event["scan"][0]["result"]), ("block", "error"))

    def test_aVerdictThatCannotBeCarriedOutResetsTheConnection(self) -> None:
        device, origin = self.relaying()
        self.send(device, GET)
        self.take(origin)
        self.send(origin, OK)
        self.scanner.scans_[0].answer.callback(None)  # not a ScanResult: a broken scanner
        self.settle()
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)
        self.assertEqual(device.received, b"")
        self.assertDone("intercept", "error", "the content scan's verdict could not be carried out")

    def test_theAuditLineIsJSON(self) -> None:
        device, origin = self.relaying()
        self.send(device, GET)
        self.take(origin)
        self.send(origin, OK)
        self.scanner.scans_[0].blocks()
        self.settle()
        self.endBoth(device, origin)
        line = json.loads(json.dumps(auditRecord(self.requests()[0])))
        self.assertEqual(line["scan"], [{"kind": "respmod", "service": SERVICE, "istag": "tag-1", "result": "infected",
                                         "threat": "Eicar-Test-Signature", "duration": 0.0}])
        self.assertIn("scan", FIELDS["request"])


class NoScannerTests(CoreTestCase):
    def test_withoutAScannerTheLayersAreThePlainOnes(self) -> None:
        layerFor = inspectingLayer(self.settings)
        record = ConnectionRecord(client="192.0.2.1:1", destination="192.0.2.2:443", started=0.0)
        record.alpn = "http/1.1"
        self.assertIs(type(layerFor(record, allow_all)), HTTP1Layer)
        record.alpn = "h2"
        self.assertIs(type(layerFor(record, allow_all)), HTTP2Layer)


class OversizeBlockTests(ScanCase):
    maxSize = 10
    oversize = "block"

    def test_knownLengthOverMaxSizeIsBlocked(self) -> None:
        device, origin = self.relaying()
        self.send(device, GET)
        self.take(origin)
        self.send(origin, b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n" + b"x" * 11)
        page = self.take(device)
        self.assertTrue(page.startswith(b"HTTP/1.1 403 Forbidden\r\n"))
        self.assertIn(b"max_size", page)
        self.assertNotIn(b"xxxxxxxxxxx", page)
        self.assertTrue(device.readEnded)
        device.tls.loseConnection()
        origin.tls.loseConnection()
        self.net.flush()
        [event] = self.requests()
        self.assertEqual((event["action"], event["scan"][0]["result"]), ("block", "oversize"))

    def test_growingUploadOverMaxSizeIsBlockedBeforeTheOrigin(self) -> None:
        device, origin = self.relaying()
        self.send(device, b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n")
        self.send(device, b"8\r\nabcdefgh\r\n")
        self.assertIn(b"403 Forbidden", self.take(device))
        self.assertEqual(origin.received, b"")
        self.assertTrue(device.readEnded)
        self.assertEqual(self.scanner.scans_, [])
