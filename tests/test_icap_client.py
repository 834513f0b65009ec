"""The ICAP client against a small in-memory ICAP server (tests/icapserver.py)."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from etpmitm.icap.client import IcapScanner
from etpmitm.icap.settings import IcapSettings, parse_service_url
from etpmitm.scanning import IContentScanner, Message, ScanJob, ScanResult, Spool
from tests.icapserver import ISTAG, MARKER, THREAT, IcapServerProtocol, ServerLog
from tests.memnet import Net

RESPMOD = parse_service_url("icap://192.0.2.10:1344/respmod")
REQMOD = parse_service_url("icap://192.0.2.10:1344/reqmod")
REQUEST = Message(b"GET /file.bin?secret=1 HTTP/1.1", ((b"Host", b"example.test"),))
RESPONSE = Message(b"HTTP/1.1 200 OK", ((b"Content-Type", b"application/octet-stream"),))


@implementer(IStreamClientEndpoint)
class MemoryEndpoint:
    """Connects to a fresh server protocol over a memnet wire, or refuses, or hangs."""

    def __init__(self, net: Net, server: Callable[[], Protocol], mode: str = "ok") -> None:
        self.net, self.server, self.mode = net, server, mode
        self.attempts = 0

    def connect(self, factory: IProtocolFactory) -> Deferred[Protocol]:
        self.attempts += 1
        if self.mode == "refuse":
            return fail(ConnectionRefusedError("refused"))
        if self.mode == "hang":
            return Deferred()
        address = IPv4Address("TCP", "192.0.2.10", 1344)
        client = factory.buildProtocol(address)
        assert client is not None
        self.net.wire(self.server(), client, address, IPv4Address("TCP", "192.0.2.1", 40000 + self.attempts))
        return succeed(client)  # type: ignore[arg-type]


def body(data: bytes, memory: int = 1 << 20) -> Spool:
    spool = Spool(memory=memory)
    for start in range(0, len(data), 65536):
        spool.write(data[start : start + 65536])
    return spool


class ClientTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.net = Net()
        self.clock = Clock()
        self.log = ServerLog()
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def scanner(
        self, behaviour: str = "ok", mode: str = "ok", preview: int | None = 16, **settings: object
    ) -> tuple[IcapScanner, MemoryEndpoint]:
        endpoint = MemoryEndpoint(self.net, lambda: IcapServerProtocol(self.log, behaviour, preview), mode)
        config = IcapSettings(respmod=RESPMOD, reqmod=REQMOD, **settings)  # type: ignore[arg-type]
        return IcapScanner(config, self.clock, endpoint=lambda url: endpoint), endpoint

    def drive(self, d: Deferred[ScanResult], seconds: float = 60) -> ScanResult:
        """Move bytes and time until *d* fires (at most *seconds* of clock)."""
        for _ in range(int(seconds * 10)):
            self.net.flush()
            if d.called:
                break
            self.clock.advance(0.1)
        return self.successResultOf(d)

    def respmod(self, data: bytes | None, url: str = "https://example.test/file.bin?secret=1") -> ScanJob:
        return ScanJob(kind="respmod", url=url, request=REQUEST, response=RESPONSE,
                       body=None if data is None else body(data))

    def warnings(self) -> list[str]:
        return [formatEvent(e) for e in self.events if formatEvent(e).startswith("ICAP")]


class ResultTests(ClientTestCase):
    def test_interface(self) -> None:
        scanner, _ = self.scanner()
        self.assertTrue(IContentScanner.providedBy(scanner))
        self.assertTrue(scanner.scans("respmod"))
        only = IcapScanner(IcapSettings(respmod=RESPMOD), MemoryReactorClock())
        self.assertFalse(only.scans("reqmod"))

    def test_clean_body_after_preview_passes(self) -> None:
        scanner, _ = self.scanner()
        data = b"clean data " * 1000
        result = self.drive(scanner.scan(self.respmod(data)))
        self.assertEqual((result.verdict, result.outcome), ("pass", "clean"))
        self.assertEqual(result.istag, ISTAG)
        self.assertEqual(result.service, str(RESPMOD))
        [scan] = self.log.scans()
        self.assertEqual(scan.preview, data[:16])  # the server's Preview: 16 caps our 4096
        self.assertEqual(bytes(scan.body), data)
        self.assertFalse(scan.ieof)
        self.assertEqual(scan.headers["allow"], "204")

    def test_small_body_fits_the_preview_with_ieof(self) -> None:
        scanner, _ = self.scanner()
        result = self.drive(scanner.scan(self.respmod(b"tiny")))
        self.assertEqual(result.outcome, "clean")
        [scan] = self.log.scans()
        self.assertTrue(scan.ieof)
        self.assertEqual(scan.preview, b"tiny")

    def test_no_preview_when_the_server_offers_none(self) -> None:
        scanner, _ = self.scanner(preview=None)
        data = b"abc" * 5000
        self.assertEqual(self.drive(scanner.scan(self.respmod(data))).outcome, "clean")
        [scan] = self.log.scans()
        self.assertNotIn("preview", scan.headers)
        self.assertEqual(bytes(scan.body), data)

    def test_no_preview_when_configured_off(self) -> None:
        endpoint = MemoryEndpoint(self.net, lambda: IcapServerProtocol(self.log, "ok", 16))
        scanner = IcapScanner(IcapSettings(respmod=RESPMOD, preview=0), self.clock, endpoint=lambda url: endpoint)
        self.assertEqual(self.drive(scanner.scan(self.respmod(b"z" * 100))).outcome, "clean")
        self.assertNotIn("preview", self.log.scans()[-1].headers)

    def test_204_after_preview_passes_without_the_rest(self) -> None:
        scanner, _ = self.scanner("204-after-preview")
        data = b"q" * 100_000
        result = self.drive(scanner.scan(self.respmod(data)))
        self.assertEqual((result.verdict, result.outcome), ("pass", "clean"))
        [scan] = self.log.scans()
        self.assertEqual(len(scan.body), 16)  # only the preview was sent
        # the connection stays usable: the next scan reuses it
        self.assertEqual(self.drive(scanner.scan(self.respmod(b"x" * 50))).outcome, "clean")
        self.assertEqual(self.log.connections, 1)

    def test_infected_response_is_replaced_by_the_block_page(self) -> None:
        scanner, _ = self.scanner()
        result = self.drive(scanner.scan(self.respmod(b"a" * 5000 + MARKER + b"b" * 5000)))
        self.assertEqual((result.verdict, result.outcome, result.threat), ("replace", "infected", THREAT))
        assert result.replacement is not None
        self.assertEqual(result.replacement.head.start_line, b"HTTP/1.1 403 Forbidden")
        self.assertIn(b"blocked by the test ICAP server", result.replacement.body)
        self.assertTrue(result.replacement.is_response)

    def test_reqmod_upload(self) -> None:
        scanner, _ = self.scanner()
        job = ScanJob(kind="reqmod", url="https://example.test/up", request=Message(b"POST /up HTTP/1.1", ()),
                      response=None, body=body(MARKER))
        result = self.drive(scanner.scan(job))
        self.assertEqual((result.outcome, result.threat, result.service), ("infected", THREAT, str(REQMOD)))
        [scan] = self.log.scans()
        self.assertEqual(scan.method, "REQMOD")
        self.assertTrue(scan.headers["encapsulated"].startswith("req-hdr=0, req-body="))

    def test_no_body_is_null_body(self) -> None:
        scanner, _ = self.scanner()
        self.assertEqual(self.drive(scanner.scan(self.respmod(None))).outcome, "clean")
        [scan] = self.log.scans()
        self.assertIn("null-body=", scan.headers["encapsulated"])
        self.assertTrue(scan.heads.startswith(b"GET /file.bin?secret=1 HTTP/1.1\r\n"))

    def test_modified_message(self) -> None:
        scanner, _ = self.scanner("modify")
        result = self.drive(scanner.scan(self.respmod(b"hello")))
        self.assertEqual((result.verdict, result.outcome, result.threat), ("replace", "modified", None))
        assert result.replacement is not None
        self.assertIn((b"X-Modified", b"yes"), result.replacement.head.headers)

    def test_duration_is_reported(self) -> None:
        scanner, _ = self.scanner("stall")
        result = self.drive(scanner.scan(self.respmod(b"x")))
        self.assertGreaterEqual(result.duration, 10.0)


class PoolTests(ClientTestCase):
    def test_connections_are_reused(self) -> None:
        scanner, endpoint = self.scanner()
        for _ in range(5):
            self.assertEqual(self.drive(scanner.scan(self.respmod(b"data" * 100))).outcome, "clean")
        self.assertEqual(self.log.connections, 1)
        # OPTIONS once (Options-TTL 60), then five scans
        self.assertEqual([r.method for r in self.log.requests], ["OPTIONS"] + ["RESPMOD"] * 5)

    def test_options_are_learned_again_after_their_ttl(self) -> None:
        scanner, _ = self.scanner()
        self.drive(scanner.scan(self.respmod(b"a")))
        self.clock.advance(61)
        self.drive(scanner.scan(self.respmod(b"b")))
        self.assertEqual([r.method for r in self.log.requests], ["OPTIONS", "RESPMOD", "OPTIONS", "RESPMOD"])

    def test_pool_is_bounded(self) -> None:
        scanner, _ = self.scanner("stall", connections=2, timeout=5)
        scans = [scanner.scan(self.respmod(b"x" * 10)) for _ in range(5)]
        self.net.flush()
        self.assertEqual(self.log.connections, 2)
        self.assertEqual(scanner.pool("respmod").count, 2)
        results = [self.drive(d) for d in scans]
        self.assertEqual({r.outcome for r in results}, {"error"})

    def test_server_max_connections_caps_the_pool(self) -> None:
        scanner, _ = self.scanner("max-connections-1", connections=4, timeout=5)
        self.assertEqual(self.drive(scanner.scan(self.respmod(b"x"))).outcome, "error")  # stalls; learns the cap
        self.assertEqual(self.log.connections, 1)
        scans = [scanner.scan(self.respmod(b"x")) for _ in range(3)]
        self.net.flush()
        self.assertEqual(self.log.connections, 2)  # one at a time (the first was dropped on its timeout)
        self.assertEqual({self.drive(d).outcome for d in scans}, {"error"})

    def test_connection_with_unsolicited_data_is_not_reused(self) -> None:
        scanner, _ = self.scanner("extra-after-204")
        self.assertEqual(self.drive(scanner.scan(self.respmod(b"x"))).outcome, "clean")
        self.assertEqual(self.drive(scanner.scan(self.respmod(b"x"))).outcome, "clean")
        self.assertEqual(self.log.connections, 2)

    def test_waiting_scans_get_freed_connections(self) -> None:
        scanner, _ = self.scanner(connections=1)
        scans = [scanner.scan(self.respmod(b"y" * 100)) for _ in range(4)]
        results = [self.drive(d) for d in scans]
        self.assertEqual([r.outcome for r in results], ["clean"] * 4)
        self.assertEqual(self.log.connections, 1)

    def test_broken_connection_is_dropped_and_replaced(self) -> None:
        scanner, _ = self.scanner("error-500")
        self.assertEqual(self.drive(scanner.scan(self.respmod(b"x"))).outcome, "error")
        self.assertEqual(scanner.pool("respmod").count, 0)
        self.assertEqual(self.drive(scanner.scan(self.respmod(b"x"))).outcome, "error")
        self.assertEqual(self.log.connections, 2)


class FailureTests(ClientTestCase):
    def assertError(self, result: ScanResult, verdict: str, *words: str) -> None:
        self.assertEqual((result.outcome, result.verdict), ("error", verdict))
        for word in words:
            self.assertIn(word, result.reason)
        [line] = self.warnings()  # logged once per scan
        for word in words:
            self.assertIn(word, line)
        self.assertNotIn("secret", line)  # the query string is not logged

    def test_stall_times_out_and_blocks(self) -> None:
        scanner, _ = self.scanner("stall")
        self.assertError(self.drive(scanner.scan(self.respmod(b"x" * 100))), "block", "timeout of 10s")

    def test_stall_with_on_error_allow_passes(self) -> None:
        scanner, _ = self.scanner("stall", on_error="allow")
        self.assertError(self.drive(scanner.scan(self.respmod(b"x"))), "pass", "timeout")

    def test_stalled_options_times_out(self) -> None:
        scanner, _ = self.scanner("stall-options", timeout=3)
        self.assertError(self.drive(scanner.scan(self.respmod(b"x"))), "block", "timeout of 3s")

    def test_connect_that_hangs_times_out(self) -> None:
        scanner, _ = self.scanner(mode="hang", timeout=2)
        self.assertError(self.drive(scanner.scan(self.respmod(b"x"))), "block", "timeout")
        self.assertEqual(scanner.pool("respmod").count, 0)

    def test_refused(self) -> None:
        scanner, _ = self.scanner(mode="refuse")
        self.assertError(self.drive(scanner.scan(self.respmod(b"x"))), "block", "refused")

    def test_garbage(self) -> None:
        scanner, _ = self.scanner("garbage", on_error="allow")
        self.assertError(self.drive(scanner.scan(self.respmod(b"x"))), "pass", "bad ICAP status line")

    def test_wrong_encapsulated(self) -> None:
        scanner, _ = self.scanner("wrong-encapsulated")
        self.assertError(self.drive(scanner.scan(self.respmod(b"x"))), "block", "does not end where Encapsulated says")

    def test_truncated(self) -> None:
        scanner, _ = self.scanner("truncate")
        self.assertError(self.drive(scanner.scan(self.respmod(MARKER))), "block", "truncated")

    def test_server_closes(self) -> None:
        scanner, _ = self.scanner("close")
        self.assertError(self.drive(scanner.scan(self.respmod(b"x"))), "block", "without an answer")

    def test_error_status(self) -> None:
        scanner, _ = self.scanner("error-500")
        self.assertError(self.drive(scanner.scan(self.respmod(b"x"))), "block", "500 Server Error")

    def test_replacement_over_the_bound(self) -> None:
        scanner, _ = self.scanner("big-body")
        self.assertError(self.drive(scanner.scan(self.respmod(MARKER))), "block", "over 1048576 bytes")


class SizeTests(ClientTestCase):
    def test_oversize_is_not_sent(self) -> None:
        for oversize, verdict in (("allow", "pass"), ("block", "block")):
            scanner, endpoint = self.scanner(max_size=1000, oversize=oversize)
            result = self.drive(scanner.scan(self.respmod(b"x" * 1001)))
            self.assertEqual((result.outcome, result.verdict), ("oversize", verdict))
            self.assertIn("over max_size 1000", result.reason)
            self.assertEqual(endpoint.attempts, 0)
        scanner, _ = self.scanner(max_size=1000)
        self.assertEqual(self.drive(scanner.scan(self.respmod(b"x" * 1000))).outcome, "clean")

    def test_body_streams_with_back_pressure(self) -> None:
        scanner, _ = self.scanner("slow-reader", preview=None)
        data = bytes(range(256)) * (8 << 12)  # 8 MiB, spooled to a file
        job = ScanJob(kind="respmod", url="https://example.test/", request=REQUEST, response=RESPONSE, body=body(data))
        assert job.body is not None and job.body.spooled
        d = scanner.scan(job)
        for _ in range(20):
            self.net.flush()
            self.clock.advance(0.1)
        [server_end] = [end for end in self.net.ends if isinstance(end.protocol, IcapServerProtocol)]
        self.assertTrue(server_end.paused)  # the server stopped reading after 256 KiB
        # so the client stopped writing near the in-flight limit instead of sending all 8 MiB
        self.assertLess(server_end.other.written, 2 << 20)
        self.assertFalse(d.called)
        server_end.resumeProducing()
        result = self.drive(d)
        self.assertEqual(result.outcome, "clean")
        self.assertEqual(bytes(self.log.scans()[0].body), data)


class ProbeTests(ClientTestCase):
    """``probe``: the start-up check that the services answer OPTIONS."""

    def probe(self, scanner: IcapScanner) -> list[str]:
        d = scanner.probe()
        for _ in range(600):
            self.net.flush()
            if d.called:
                break
            self.clock.advance(0.1)
        return self.successResultOf(d)

    def test_answering_services(self) -> None:
        scanner, _ = self.scanner()
        self.assertEqual(self.probe(scanner), [])
        self.assertEqual([r.method for r in self.log.requests], ["OPTIONS", "OPTIONS"])  # reqmod and respmod
        self.drive(scanner.scan(self.respmod(b"x" * 100)))
        self.assertEqual([r.method for r in self.log.requests].count("OPTIONS"), 2)  # kept: not asked again
        self.assertEqual(scanner.pool("respmod").count, 1)  # the probe's connection is reused

    def test_refused(self) -> None:
        scanner, _ = self.scanner(mode="refuse")
        problems = self.probe(scanner)
        self.assertEqual(len(problems), 2, problems)
        self.assertTrue(problems[0].startswith("reqmod icap://192.0.2.10:1344/reqmod: "), problems)
        self.assertTrue(problems[1].startswith("respmod icap://192.0.2.10:1344/respmod: "), problems)
        self.assertIn("refused", problems[1])

    def test_stalled_options(self) -> None:
        scanner, _ = self.scanner("stall-options", timeout=3)
        problems = self.probe(scanner)
        self.assertEqual(len(problems), 2, problems)
        self.assertIn("no answer within the timeout of 3s", problems[0])
        self.assertEqual(scanner.pool("respmod").count, 0)  # the stalled connection is dropped
