# trial's assertion methods carry no annotations.
# mypy: disable-error-code="no-untyped-call"
"""``--audit-log journald | syslog:ADDRESS``: the encoders in memory, the sinks
against sockets this test listens on, and the start-up errors from twistd."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.logger import LogEvent, LogPublisher, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from etpmitm.auditlog import AuditLogError, AuditLogFile, AuditLogService, AuditObserver, auditRecord, severity
from etpmitm.auditsinks import JOURNAL_SOCKET, DatagramSyslogSink, JournalSink, TCPSyslogSink, openAuditSink
from etpmitm.interfaces import IAuditSink
from etpmitm.journal import JournalFieldError, auditFields, encodeEntry, fieldName
from etpmitm.syslog5424 import (MAX_MESSAGE, SyslogAddress, SyslogAddressError, fitted, formatLocal, formatMessage,
                                octetCounted, parseAddress)
from tests.sinkpeers import journal_entry, local_message, octet_frames, syslog_message
from tests.test_auditlog import ETPMITM, REPO, TWISTD, connectionRecord, freePort, requestRecord


def auditEvents() -> tuple[LogEvent, LogEvent]:
    """A real connection event (outcome error: a warning) and its request event."""
    events: list[LogEvent] = []
    publisher = LogPublisher(events.append)
    globalLogPublisher.addObserver(publisher)
    try:
        connection = connectionRecord()
        connection.fail("origin said \"no\"\nreally")
        requestRecord(connection.id).emit(100.125)
        connection.emit(100.5)
    finally:
        globalLogPublisher.removeObserver(publisher)
    request, conn = [e for e in events if e["log_namespace"].startswith("etpmitm.audit")]
    return conn, request


def record(event: LogEvent) -> dict[str, Any]:
    found = auditRecord(event)
    assert found is not None
    return found


def fieldsOf(entry: list[tuple[str, bytes]]) -> dict[str, str]:
    names = [name for name, _ in entry]
    assert len(names) == len(set(names)), names
    return {name: value.decode() for name, value in entry}


class JournalEncoderTests(SynchronousTestCase):
    def test_fieldNames(self) -> None:
        self.assertEqual(fieldName("sni"), "ETPMITM_SNI")
        self.assertEqual(fieldName("head_query_length"), "ETPMITM_HEAD_QUERY_LENGTH")
        self.assertEqual(fieldName("a.b-c é"), "ETPMITM_A_B_C__")
        self.assertEqual(len(fieldName("x" * 100)), 64)

    def test_connectionFields(self) -> None:
        event, _ = auditEvents()
        fields = fieldsOf(auditFields(record(event), formatEvent(event), severity(event)))
        self.assertEqual(fields["MESSAGE"], formatEvent(event))
        self.assertEqual((fields["PRIORITY"], fields["SYSLOG_IDENTIFIER"]), ("4", "etpmitm"))
        self.assertEqual((fields["ETPMITM_EVENT"], fields["ETPMITM_SNI"], fields["ETPMITM_ACTION"],
                          fields["ETPMITM_OUTCOME"], fields["ETPMITM_ECH"], fields["ETPMITM_BYTES_UP"]),
                         ("connection", "example.com", "intercept", "error", "false", "517"))
        self.assertEqual(fields["ETPMITM_REASON"], "origin said \"no\"\nreally")
        self.assertEqual(json.loads(fields["ETPMITM_ALPN_OFFERED"]), ["h2", "http/1.1"])
        self.assertEqual(fields["ETPMITM_DURATION"], "0.5")
        self.assertNotIn("ETPMITM_TLS_VERSION", fields)  # null: left out
        self.assertEqual(set(fields) - {"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER"},
                         {fieldName(k) for k, v in record(event).items() if v is not None})

    def test_requestFieldsFlattenTheHead(self) -> None:
        _, event = auditEvents()
        fields = fieldsOf(auditFields(record(event), formatEvent(event), severity(event)))
        self.assertEqual((fields["ETPMITM_EVENT"], fields["ETPMITM_HEAD_METHOD"], fields["ETPMITM_HEAD_PATH"],
                          fields["ETPMITM_HEAD_QUERY_LENGTH"], fields["ETPMITM_STATUS"], fields["PRIORITY"]),
                         ("request", "POST", "/private/x", "7", "403", "6"))
        self.assertNotIn("ETPMITM_HEAD", fields)

    def test_encoding(self) -> None:
        entry = encodeEntry([("MESSAGE", b"plain"), ("ETPMITM_REASON", b"two\nlines"), ("ETPMITM_X", b"")])
        self.assertEqual(entry, b"MESSAGE=plain\nETPMITM_REASON\n" + struct.pack("<Q", 9) + b"two\nlines\nETPMITM_X=\n")
        self.assertEqual(journal_entry(entry), [("MESSAGE", b"plain"), ("ETPMITM_REASON", b"two\nlines"),
                                                ("ETPMITM_X", b"")])

    def test_binaryAndUTF8(self) -> None:
        binary = bytes(range(256))
        self.assertEqual(journal_entry(encodeEntry([("ETPMITM_B", binary)])), [("ETPMITM_B", binary)])
        fields = dict(auditFields({"event": "connection", "sni": "b\u00fccher.example", "odd": "x\udcff"}, "m", 6))
        self.assertEqual(fields["ETPMITM_SNI"], "b\u00fccher.example".encode())
        self.assertEqual(fields["ETPMITM_ODD"], b"x\\udcff")  # a lone surrogate, escaped

    def test_longValue(self) -> None:
        value = b"a" * 1_000_000
        self.assertEqual(journal_entry(encodeEntry([("ETPMITM_PATH", value)])), [("ETPMITM_PATH", value)])

    def test_badNames(self) -> None:
        for name in ("lower", "_TRUSTED", "1ST", "A-B", "", "X" * 65):
            with self.assertRaises(JournalFieldError):
                encodeEntry([(name, b"v")])


class SyslogEncoderTests(SynchronousTestCase):
    def test_header(self) -> None:
        event, _ = auditEvents()
        rec = record(event)
        parts = syslog_message(formatMessage(rec, severity(event), "gw1.example", 1))
        self.assertEqual((parts["pri"], parts["time"], parts["host"], parts["app"], parts["procid"],
                          parts["msgid"], parts["sd"]),
                         (16 * 8 + 4, rec["time"], "gw1.example", "etpmitm", str(rec["pid"]), "connection", "-"))
        self.assertRegex(parts["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertEqual(json.loads(parts["msg"]), json.loads(json.dumps(rec)))

    def test_requestAndInformational(self) -> None:
        _, event = auditEvents()
        parts = syslog_message(formatMessage(record(event), severity(event), "gw", 1))
        self.assertEqual((parts["pri"], parts["msgid"]), (16 * 8 + 6, "request"))

    def test_headerFieldsAreTokens(self) -> None:
        message = formatMessage({"event": "conn ection"}, 9, "gate way\u00e9", 77)
        parts = syslog_message(message)
        self.assertEqual((parts["pri"], parts["time"], parts["host"], parts["procid"], parts["msgid"]),
                         (16 * 8 + 7, "-", "gateway", "77", "connection"))
        self.assertEqual(syslog_message(formatMessage({}, 6, "", 1))["host"], "-")

    def test_msgIsASCII(self) -> None:
        rec = {"event": "connection", "sni": "b\u00fccher.example\n\u2028", "reason": "x\udcff"}
        message = formatMessage(rec, 6, "gw", 1)
        message.decode("ascii")
        self.assertEqual(message.count(b"\n"), 0)
        self.assertEqual(json.loads(syslog_message(message)["msg"]), rec)
        self.assertFalse(message.startswith(b"\xef\xbb\xbf"))

    def test_shortRecordsAreUntouched(self) -> None:
        event, _ = auditEvents()
        self.assertEqual(fitted(record(event), MAX_MESSAGE), json.dumps(record(event), separators=(",", ":")))

    def test_longValuesAreCut(self) -> None:
        rec = {"event": "request", "head": {"path": "/" + "p" * 100_000, "method": "GET"}, "status": 200}
        message = formatMessage(rec, 6, "gw", 1)
        self.assertLessEqual(len(message), MAX_MESSAGE)
        msg = json.loads(syslog_message(message)["msg"])
        self.assertEqual((msg["truncated"], msg["head"]["method"], msg["status"]), (True, "GET", 200))
        self.assertTrue(msg["head"]["path"].startswith("/ppp"))
        self.assertRegex(msg["head"]["path"], r"\.\.\.\(\d+ more\)$")

    def test_hostileRecordsStillFit(self) -> None:
        """Many long, escaped values and a long list: cut until it fits."""
        rec: dict[str, Any] = {f"k{i}": "\u00e9" * 3000 for i in range(30)}
        rec["alpn_offered"] = ["x" * 255] * 5000
        message = formatMessage({"event": "connection", **rec}, 6, "gw", 1)
        self.assertLessEqual(len(message), MAX_MESSAGE)
        msg = json.loads(syslog_message(message)["msg"])
        self.assertTrue(msg["truncated"])
        self.assertRegex(msg["alpn_offered"][-1], r"^\.\.\.\(49\d\d more\)$")

    def test_localFormat(self) -> None:
        """On a unix socket: syslog(3)'s format, the time in local time."""
        old = os.environ.get("TZ")
        os.environ["TZ"] = "XYZ-2"  # two hours east of UTC
        time.tzset()
        try:
            message = formatLocal({"event": "connection", "time": "2026-11-30T04:25:49.893Z", "pid": 42,
                                   "sni": "b\u00fccher\n"}, 4, 1, 0.0)
            self.assertEqual(message, b'<132>Nov 30 06:25:49 etpmitm[42]: {"event":"connection",'
                                      b'"time":"2026-11-30T04:25:49.893Z","pid":42,"sni":"b\\u00fccher\\n"}')
            # No time or pid in the record: now, and the sender's pid; a single-digit day is space-padded.
            self.assertEqual(formatLocal({"event": "x"}, 6, 7, 86400.0 * 3), b'<134>Jan  4 02:00:00 etpmitm[7]: {"event":"x"}')
        finally:
            if old is None:
                del os.environ["TZ"]
            else:
                os.environ["TZ"] = old
            time.tzset()
        long = formatLocal({"event": "request", "head": {"path": "/" + "p" * 100_000}}, 6, 1, 0.0)
        self.assertLessEqual(len(long), MAX_MESSAGE)
        self.assertTrue(json.loads(local_message(long)["msg"])["truncated"])

    def test_octetCounting(self) -> None:
        self.assertEqual(octetCounted(b"hello"), b"5 hello")
        frames = octetCounted(b"a" * 1234) + octetCounted(b"b\nc")
        self.assertEqual(octet_frames(frames), ([b"a" * 1234, b"b\nc"], b""))

    def test_addresses(self) -> None:
        self.assertEqual(parseAddress("unix:/dev/log"), SyslogAddress("unix", path="/dev/log"))
        self.assertEqual(parseAddress("udp:siem.example:514"), SyslogAddress("udp", host="siem.example", port=514))
        self.assertEqual(parseAddress("tcp:[2001:db8::1]:6514"), SyslogAddress("tcp", host="2001:db8::1", port=6514))
        self.assertEqual(str(parseAddress("tcp:[2001:db8::1]:6514")), "syslog:tcp:[2001:db8::1]:6514")
        for bad, words in [("", "--audit-log syslog needs an address"), ("unix:", "no socket path"), ("udp:host", "needs HOST:PORT"),
                           ("tcp:host:0", "needs HOST:PORT"), ("tcp::514", "needs HOST:PORT"),
                           ("udp:host:http", "needs HOST:PORT"), ("tls:host:6514", "unknown transport 'tls'")]:
            with self.assertRaises(SyslogAddressError) as caught:
                parseAddress(bad)
            self.assertIn(words, str(caught.exception))
            self.assertNotIn("\n", str(caught.exception))


class ChoosingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="etpmitm-sinks-", dir="/tmp"))
        self.addCleanup(subprocess.run, ["rm", "-rf", str(self.dir)])

    def test_badValuesAreOneLine(self) -> None:
        for value, words in [("syslog:", "needs an address"), ("syslog", "needs an address"),
                             ("syslog:udp:host", "needs HOST:PORT"), ("tcp:10.0.0.1:514", "unknown kind 'tcp'"),
                             ("journal:x", "unknown kind 'journal'"),
                             (f"syslog:unix:{self.dir}/nope", "No such file or directory"),
                             ("syslog:udp:no-such-host.invalid:514", "cannot use --audit-log")]:
            with self.assertRaises(AuditLogError, msg=value) as caught:
                openAuditSink(value, reactor)
            self.assertIn(words, str(caught.exception))
            self.assertNotIn("\n", str(caught.exception))

    def test_journaldWithoutItsSocket(self) -> None:
        os.environ["ETPMITM_JOURNAL_SOCKET"] = str(self.dir / "journal.socket")
        self.addCleanup(os.environ.pop, "ETPMITM_JOURNAL_SOCKET")
        with self.assertRaises(AuditLogError) as caught:
            openAuditSink("journald", reactor)
        self.assertEqual(str(caught.exception), f"cannot use --audit-log journald ({self.dir}/journal.socket): "
                                                f"{self.dir}/journal.socket: No such file or directory")

    def test_files(self) -> None:
        for name in ("audit.json", "./tcp:x", "syslog.json"):
            sink = openAuditSink(str(self.dir / name) if "/" not in name else name, reactor)
            self.addCleanup(sink.close)
            self.assertIsInstance(sink, AuditLogFile)
        os.unlink("tcp:x")

    def test_theSinksProvideTheInterface(self) -> None:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(server.close)
        server.bind(str(self.dir / "s"))
        sinks: list[IAuditSink] = [AuditLogFile(self.dir / "a.json"), JournalSink(str(self.dir / "s")),
                                   DatagramSyslogSink(parseAddress(f"unix:{self.dir}/s")),
                                   DatagramSyslogSink(parseAddress("udp:127.0.0.1:9")),
                                   TCPSyslogSink(reactor, parseAddress("tcp:127.0.0.1:9"))]
        for sink in sinks:
            self.assertTrue(verifyObject(IAuditSink, sink))
            sink.close()


@implementer(IAuditSink)
class ListSink:
    """An operator's own sink."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def start(self) -> None:
        self.calls.append("start")

    def write(self, record: dict[str, object], message: str, severity: int) -> None:
        self.calls.append((record, message, severity))

    def reopen(self) -> bool:
        self.calls.append("reopen")
        return True

    def close(self) -> None:
        self.calls.append("close")


class PluggedSinkTests(SynchronousTestCase):
    def test_theServiceRunsAnySink(self) -> None:
        sink, publisher = ListSink(), LogPublisher()
        service = AuditLogService(sink, publisher)
        service.startService()
        conn, request = auditEvents()
        publisher(conn)
        publisher({"log_namespace": "etpmitm.gateway", "log_format": "not audit"})
        publisher(request)
        service.stopService()
        publisher(conn)
        self.assertEqual(sink.calls, ["start", (record(conn), formatEvent(conn), 4),
                                      (record(request), formatEvent(request), 6), "close"])

    def test_observer(self) -> None:
        sink = ListSink()
        conn, _ = auditEvents()
        AuditObserver(sink)(conn)
        self.assertEqual(sink.calls, [(record(conn), formatEvent(conn), 4)])


class Logged:
    def __init__(self, test: SynchronousTestCase) -> None:
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        test.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def texts(self, fragment: str) -> list[str]:
        return [t for t in (formatEvent(e) for e in self.events) if fragment in t]


class DatagramSinkTests(SynchronousTestCase):
    """The journal and syslog datagram sinks, against unix and UDP sockets this test binds."""

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="etpmitm-sinks-", dir="/tmp"))
        self.addCleanup(subprocess.run, ["rm", "-rf", str(self.dir)])
        self.path = str(self.dir / "socket")
        self.server = self.bind()
        self.logged = Logged(self)

    def bind(self) -> socket.socket:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(server.close)
        server.bind(self.path)
        server.settimeout(10)
        return server

    def test_journalEntry(self) -> None:
        sink = JournalSink(self.path)
        self.addCleanup(sink.close)
        conn, request = auditEvents()
        for event in (conn, request):
            sink.write(record(event), formatEvent(event), severity(event))
        first = fieldsOf(journal_entry(self.server.recv(65536)))
        second = fieldsOf(journal_entry(self.server.recv(65536)))
        self.assertEqual((first["ETPMITM_EVENT"], first["ETPMITM_REASON"], first["PRIORITY"], first["MESSAGE"]),
                         ("connection", "origin said \"no\"\nreally", "4", formatEvent(conn)))
        self.assertEqual((second["ETPMITM_EVENT"], second["ETPMITM_CONNECTION"], second["ETPMITM_HEAD_AUTHORITY"]),
                         ("request", first["ETPMITM_ID"], "good.example"))

    def test_largeEntryGoesInASealedMemfd(self) -> None:
        sink = JournalSink(self.path)
        self.addCleanup(sink.close)
        path = "/" + "p" * 1_000_000
        sink.write({"event": "request", "head": {"path": path}}, "m", 6)
        data, fds, _, _ = socket.recv_fds(self.server, 100, 1)
        self.assertEqual(data, b"")
        [fd] = fds
        self.addCleanup(os.close, fd)
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        self.assertEqual(seals & fcntl.F_SEAL_WRITE, fcntl.F_SEAL_WRITE)
        fields = fieldsOf(journal_entry(os.pread(fd, os.fstat(fd).st_size, 0)))
        self.assertEqual(fields["ETPMITM_HEAD_PATH"], path)
        self.assertEqual(sink.outage.dropped, 0)

    def test_unixSyslog(self) -> None:
        sink = DatagramSyslogSink(parseAddress(f"unix:{self.path}"))
        self.addCleanup(sink.close)
        conn, _ = auditEvents()
        sink.write(record(conn), formatEvent(conn), severity(conn))
        parts = local_message(self.server.recv(65536))
        self.assertEqual((parts["pri"], parts["tag"], parts["pid"]), (132, "etpmitm", str(conn["pid"])))
        self.assertEqual(json.loads(parts["msg"]), json.loads(json.dumps(record(conn))))

    def test_daemonRestartedIsReconnected(self) -> None:
        sink = JournalSink(self.path)
        self.addCleanup(sink.close)
        sink.write({"event": "connection", "id": "one"}, "m", 6)
        self.server.close()
        os.unlink(self.path)
        sink.write({"event": "connection", "id": "lost"}, "m", 6)  # nobody there
        self.assertEqual(sink.outage.dropped, 1)
        self.assertEqual(len(self.logged.texts("cannot send audit events to journald")), 1)
        self.server = self.bind()
        sink.write({"event": "connection", "id": "two"}, "m", 6)
        self.assertEqual(fieldsOf(journal_entry(self.server.recv(65536)))["ETPMITM_ID"], "two")
        self.assertEqual(len(self.logged.texts("1 dropped meanwhile")), 1)

    def test_fullQueueDropsAndCounts(self) -> None:
        sink = DatagramSyslogSink(parseAddress(f"unix:{self.path}"))
        self.addCleanup(sink.close)
        sent = 0
        while sink.outage.dropped == 0 and sent < 100_000:  # nobody reads: the queue fills
            sink.write({"event": "connection", "n": sent}, "m", 6)
            sent += 1
        for _ in range(10):
            sink.write({"event": "connection"}, "m", 6)
        self.assertEqual(sink.outage.dropped, 11)
        [failure] = self.logged.texts("cannot send audit events to syslog:unix:")
        self.assertIn("its socket's queue is full; dropping them until it works again", failure)
        received = [json.loads(local_message(self.server.recv(65536))["msg"])["n"] for _ in range(sent - 1)]
        self.assertEqual(received, list(range(sent - 1)))
        sink.write({"event": "connection", "n": "after"}, "m", 6)
        self.assertEqual(json.loads(local_message(self.server.recv(65536))["msg"])["n"], "after")
        self.assertEqual(len(self.logged.texts("11 dropped meanwhile")), 1)

    def test_reopen(self) -> None:
        """SIGUSR1: a new socket at the path is used; no socket there keeps the old one."""
        sink = DatagramSyslogSink(parseAddress(f"unix:{self.path}"))
        self.addCleanup(sink.close)
        os.rename(self.path, self.path + ".old")
        self.assertFalse(sink.reopen())
        [error] = self.logged.texts("still using the socket it was")
        self.assertIn(f"{self.path}: No such file or directory", error)
        sink.write({"event": "connection", "n": 1}, "m", 6)
        self.assertEqual(json.loads(local_message(self.server.recv(65536))["msg"])["n"], 1)
        old, self.server = self.server, self.bind()
        self.assertTrue(sink.reopen())
        sink.write({"event": "connection", "n": 2}, "m", 6)
        self.assertEqual(json.loads(local_message(self.server.recv(65536))["msg"])["n"], 2)
        old.setblocking(False)
        self.assertRaises(BlockingIOError, old.recv, 65536)

    def test_udp(self) -> None:
        collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(collector.close)
        collector.bind(("127.0.0.1", 0))
        collector.settimeout(10)
        port = collector.getsockname()[1]
        sink = DatagramSyslogSink(parseAddress(f"udp:localhost:{port}"))
        self.addCleanup(sink.close)
        _, request = auditEvents()
        sink.write(record(request), formatEvent(request), severity(request))
        parts = syslog_message(collector.recv(65536))
        self.assertEqual((parts["pri"], parts["msgid"]), (134, "request"))
        self.assertEqual(json.loads(parts["msg"]), json.loads(json.dumps(record(request))))

        # The collector goes away: UDP loses what is sent meanwhile (an ICMP
        # "port unreachable" may fail one send); the sink keeps going.
        collector.close()
        for n in range(3):
            sink.write({"event": "connection", "n": n}, "m", 6)
        collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(collector.close)
        collector.bind(("127.0.0.1", port))
        collector.settimeout(10)
        sink.write({"event": "connection", "n": "back"}, "m", 6)
        self.assertEqual(json.loads(syslog_message(collector.recv(65536))["msg"])["n"], "back")


class Collector(Protocol):
    lost = False

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True

    def connectionMade(self) -> None:
        self.factory.connections.append(self)  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self.factory.stream += data  # type: ignore[attr-defined]
        self.factory.check()  # type: ignore[attr-defined]


class CollectorFactory(Factory):
    protocol = Collector

    def __init__(self) -> None:
        self.stream = b""
        self.connections: list[Collector] = []
        self.waiting: list[tuple[int, Deferred[list[bytes]]]] = []

    def frames(self) -> list[bytes]:
        frames, _ = octet_frames(self.stream)
        return frames

    def check(self) -> None:
        for count, d in list(self.waiting):
            if len(self.frames()) >= count:
                self.waiting.remove((count, d))
                d.callback(self.frames())

    def until(self, count: int) -> Deferred[list[bytes]]:
        d: Deferred[list[bytes]] = Deferred()
        d.addTimeout(30, reactor)
        self.waiting.append((count, d))
        self.check()
        return d


async def eventually(condition: Any) -> None:
    """Wait (on the reactor) until ``condition()``; fail after 30 s."""
    for _ in range(3000):
        if condition():
            return
        await deferLater(reactor, 0.01)
    raise AssertionError("gave up waiting")


def ids(frames: list[bytes]) -> list[Any]:
    return [json.loads(syslog_message(f)["msg"])["n"] for f in frames]


class TCPSinkTests(TestCase):
    """The TCP syslog sink against a collector this test runs, which goes away and comes back."""

    def setUp(self) -> None:
        self.logged = Logged(self)
        self.port = freePort()
        self.factory = CollectorFactory()
        self.listening = reactor.listenTCP(self.port, self.factory, interface="127.0.0.1")
        self.addCleanup(self.stop)

    async def stop(self) -> None:
        """Stop listening (if it still does) and end the collector's connections."""
        if self.listening.connected:
            await self.listening.stopListening()
        for connection in self.factory.connections:
            connection.transport.abortConnection()  # type: ignore[union-attr]

    def sink(self, **kwargs: Any) -> TCPSyslogSink:
        sink = TCPSyslogSink(reactor, parseAddress(f"tcp:127.0.0.1:{self.port}"), initialDelay=0.05,
                             closeWait=0.5, **kwargs)
        self.addCleanup(sink.close)
        return sink

    async def test_goesAwayAndComesBack(self) -> None:
        sink = self.sink()
        sink.start()
        sink.write({"event": "connection", "n": 0}, "m", 6)  # queued until connected
        frames = await self.factory.until(1)
        self.assertEqual(syslog_message(frames[0])["msgid"], "connection")
        self.assertTrue(sink.connected)

        await self.stop()
        while sink.connected:
            await deferLater(reactor, 0.01)
        for n in range(1, 6):
            sink.write({"event": "connection", "n": n}, "m", 6)
        self.assertEqual(sink.queued, 5)
        await eventually(lambda: len(self.logged.texts("cannot connect to the audit log collector")) == 1)
        await eventually(lambda: sink.attempts >= 3)  # it keeps trying, and logs it once
        self.assertEqual(len(self.logged.texts("cannot connect to the audit log collector")), 1)

        self.listening = reactor.listenTCP(self.port, self.factory, interface="127.0.0.1")
        frames = await self.factory.until(6)
        self.assertEqual(ids(frames), [0, 1, 2, 3, 4, 5])  # in order, none lost
        self.assertEqual((sink.queued, sink.outage.dropped), (0, 0))
        self.assertEqual(len(self.logged.texts("lost the audit log collector")), 1)

    async def test_boundedQueueWhileDown(self) -> None:
        await self.stop()
        sink = self.sink(queueBytes=2000)
        sink.start()
        for n in range(40):
            sink.write({"event": "connection", "n": n}, "m", 6)
        kept = sink.queued
        self.assertLess(kept, 40)
        self.assertEqual(sink.outage.dropped, 40 - kept)
        [failure] = self.logged.texts("cannot send audit events to syslog:tcp:")
        self.assertIn("its queue is full (2000 bytes): the collector is unreachable", failure)

        self.listening = reactor.listenTCP(self.port, self.factory, interface="127.0.0.1")
        frames = await self.factory.until(kept)
        self.assertEqual(ids(frames), list(range(kept)))
        sink.write({"event": "connection", "n": "after"}, "m", 6)
        frames = await self.factory.until(kept + 1)
        self.assertEqual(ids(frames)[-1], "after")
        self.assertEqual(len(self.logged.texts(f"{40 - kept} dropped meanwhile")), 1)

    async def test_slowCollectorDoesNotGrowMemory(self) -> None:
        """A collector that stops reading: the transport pauses the sink, and the queue stays bounded."""
        sink = self.sink(queueBytes=100_000)
        sink.start()
        await self.factory.until(0)
        while not (self.factory.connections and sink.connected):
            await deferLater(reactor, 0.01)
        self.factory.connections[0].transport.pauseProducing()  # type: ignore[union-attr]
        big = "x" * 4000
        for n in range(5000):  # about 20 MB
            sink.write({"event": "request", "n": n, "pad": big}, "m", 6)
            if n % 100 == 0:
                await deferLater(reactor, 0)
        self.assertGreater(sink.outage.dropped, 0)
        self.assertLessEqual(sink.queuedBytes, 100_000)
        self.assertIn("the collector is slow", self.logged.texts("cannot send audit events to syslog:tcp:")[0])

    async def test_closeSendsWhatIsLeft(self) -> None:
        """Stopping the gateway: queued messages go out, then the connection closes."""
        sink = self.sink()
        sink.start()
        await eventually(lambda: sink.connected and self.factory.connections)
        sink.pauseProducing()  # as the transport does when its buffer is full
        for n in range(3):
            sink.write({"event": "connection", "n": n}, "m", 6)
        self.assertEqual(sink.queued, 3)
        await sink.close()
        frames = await self.factory.until(3)
        self.assertEqual(ids(frames), [0, 1, 2])
        await eventually(lambda: self.factory.connections[0].lost)
        self.assertEqual(sink.outage.dropped, 0)

    async def test_closeGivesUpOnAStuckCollector(self) -> None:
        sink = self.sink(queueBytes=16 * 1024 * 1024)  # nothing dropped: what is missing was cut off
        sink.start()
        await eventually(lambda: sink.connected and self.factory.connections)
        self.factory.connections[0].transport.pauseProducing()  # type: ignore[union-attr]
        for n in range(2000):  # more than the kernel buffers
            sink.write({"event": "request", "n": n, "pad": "x" * 4000}, "m", 6)
            if n % 100 == 0:
                await deferLater(reactor, 0)
        self.assertEqual(sink.outage.dropped, 0)
        await sink.close()  # fires after closeWait: the connection was aborted
        self.factory.connections[0].transport.resumeProducing()  # type: ignore[union-attr]
        await eventually(lambda: self.factory.connections[0].lost)
        self.assertLess(len(self.factory.frames()), 2000)

    async def test_closeStopsReconnecting(self) -> None:
        await self.stop()
        sink = self.sink()
        sink.start()
        sink.write({"event": "connection", "n": 1}, "m", 6)
        sink.close()
        self.assertEqual((sink.queued, sink.outage.dropped), (0, 1))
        sink.write({"event": "connection", "n": 2}, "m", 6)
        self.assertEqual(sink.outage.dropped, 2)


def journald_unavailable() -> str | None:
    if not os.path.exists(JOURNAL_SOCKET):
        return f"no systemd-journald here ({JOURNAL_SOCKET} is missing); the sink is tested against a stand-in socket"
    if shutil.which("journalctl") is None:
        return "journalctl is not installed"
    done = subprocess.run(["journalctl", "-n", "0", "-q"], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        return f"journalctl does not work here: {done.stderr.strip()}"
    return None


class JournalctlTests(TestCase):
    """Where systemd-journald runs: an entry written by the sink, as ``journalctl -o json`` shows it."""

    skip = journald_unavailable()

    def entry(self, field: str, value: str) -> dict[str, Any]:
        """The one entry with ``field=value``, as ``journalctl -o json --all`` shows it."""
        deadline = time.monotonic() + 30
        while True:
            done = subprocess.run(["journalctl", "-o", "json", "--all", f"{field}={value}"],
                                  capture_output=True, text=True, timeout=30)
            if done.stdout.strip() or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        [entry] = [json.loads(line) for line in done.stdout.splitlines()]
        found: dict[str, Any] = entry
        return found

    def test_journalctl(self) -> None:
        sink = JournalSink()
        self.addCleanup(sink.close)
        conn, _ = auditEvents()
        rec = {**record(conn), "id": f"test-{os.getpid()}-{time.time_ns()}", "reason": "two\nlines \u00e9"}
        sink.write(rec, formatEvent(conn), 4)
        entry = self.entry("ETPMITM_ID", rec["id"])
        self.assertEqual((entry["MESSAGE"], entry["PRIORITY"], entry["SYSLOG_IDENTIFIER"], entry["ETPMITM_EVENT"],
                          entry["ETPMITM_SNI"], entry["ETPMITM_ACTION"], entry["ETPMITM_BYTES_UP"]),
                         (formatEvent(conn), "4", "etpmitm", "connection", "example.com", "intercept", "517"))
        # journalctl -o json shows a value with a control character as an array of bytes.
        reason = entry["ETPMITM_REASON"]
        self.assertEqual(bytes(reason).decode() if isinstance(reason, list) else reason, "two\nlines \u00e9")
        self.assertEqual(json.loads(entry["ETPMITM_ALPN_OFFERED"]), ["h2", "http/1.1"])
        self.assertEqual(int(entry["_PID"]), os.getpid())

    def test_devLog(self) -> None:
        """``syslog:unix:`` at journald's syslog socket: it parses syslog(3)'s format."""
        sink = DatagramSyslogSink(parseAddress("unix:/run/systemd/journal/dev-log"))
        self.addCleanup(sink.close)
        conn, _ = auditEvents()
        rec = {**record(conn), "id": f"test-{os.getpid()}-{time.time_ns()}"}
        sink.write(rec, formatEvent(conn), 4)
        entry = self.entry("SYSLOG_PID", str(rec["pid"]))
        self.assertEqual((entry["SYSLOG_IDENTIFIER"], entry["PRIORITY"], entry["SYSLOG_FACILITY"]),
                         ("etpmitm", "4", "16"))
        self.assertEqual(json.loads(entry["MESSAGE"]), json.loads(json.dumps(rec)))

    def test_largeEntry(self) -> None:
        """Too large for a datagram: journald takes it from the sealed memfd."""
        sink = JournalSink()
        self.addCleanup(sink.close)
        path = "/" + "p" * 500_000
        connection = f"test-{os.getpid()}-{time.time_ns()}"
        sink.write({"event": "request", "connection": connection, "head": {"path": path}}, "m", 6)
        entry = self.entry("ETPMITM_CONNECTION", connection)
        self.assertEqual(entry["ETPMITM_HEAD_PATH"], path)
        self.assertEqual(sink.outage.dropped, 0)


RSYSLOG_CONF = """
global(workDirectory="{dir}")
module(load="imuxsock" SysSock.Use="off")
module(load="imudp")
input(type="imuxsock" Socket="{dir}/log")
input(type="imudp" address="127.0.0.1" port="{port}")
template(name="fields" type="list") {{
  property(name="inputname") constant(value="|")
  property(name="pri") constant(value="|")
  property(name="hostname") constant(value="|")
  property(name="programname") constant(value="|")
  property(name="procid") constant(value="|")
  property(name="msgid") constant(value="|")
  property(name="msg" droplastlf="on") constant(value="\\n")
}}
*.* action(type="omfile" file="{dir}/out.log" template="fields")
"""


class RsyslogTests(TestCase):
    """A real rsyslogd, with its default parsers, takes the unix and UDP sinks' messages."""

    skip = None if shutil.which("rsyslogd") else "rsyslogd is not installed (apt: rsyslog)"

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="etpmitm-rsyslog-", dir="/tmp"))
        self.addCleanup(subprocess.run, ["rm", "-rf", str(self.dir)])
        self.port = freePort()
        (self.dir / "rsyslog.conf").write_text(RSYSLOG_CONF.format(dir=self.dir, port=self.port))
        proc = subprocess.Popen(["rsyslogd", "-n", "-f", str(self.dir / "rsyslog.conf"), "-i", str(self.dir / "pid")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(proc.wait, 30)
        self.addCleanup(proc.terminate)
        deadline = time.monotonic() + 30
        while not (self.dir / "log").exists():
            self.assertIsNone(proc.poll(), "rsyslogd exited")
            self.assertLess(time.monotonic(), deadline, "rsyslogd did not start")
            time.sleep(0.05)

    def received(self, count: int) -> list[list[str]]:
        out = self.dir / "out.log"
        deadline = time.monotonic() + 30
        while True:
            lines = [line.split("|", 6) for line in (out.read_text() if out.exists() else "").splitlines()]
            if len(lines) >= count or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)

    def test_unixAndUDP(self) -> None:
        conn, request = auditEvents()
        unix = DatagramSyslogSink(parseAddress(f"unix:{self.dir}/log"))
        self.addCleanup(unix.close)
        unix.write(record(conn), formatEvent(conn), severity(conn))
        [line] = self.received(1)
        self.assertEqual(line[:2] + line[3:6], ["imuxsock", "132", "etpmitm", str(conn["pid"]), "-"])
        self.assertEqual(json.loads(line[6].strip()), json.loads(json.dumps(record(conn))))

        udp = DatagramSyslogSink(parseAddress(f"udp:127.0.0.1:{self.port}"))
        self.addCleanup(udp.close)
        udp.write(record(request), formatEvent(request), severity(request))
        [_, line] = self.received(2)
        # A request event has no pid: PROCID is the sender's.
        self.assertEqual(line[:6], ["imudp", "134", udp.hostname, "etpmitm", str(os.getpid()), "request"])
        self.assertEqual(json.loads(line[6]), json.loads(json.dumps(record(request))))


class StartupTests(TestCase):
    """``twistd etpmitm --audit-log`` with a bad sink: one line, no traceback."""

    def setUp(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="etpmitm-sinks-"))
        self.addCleanup(subprocess.run, ["rm", "-rf", str(self.work)])
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "ETPMITM_JOURNAL_SOCKET": str(self.work / "journal")}
        subprocess.run([str(ETPMITM), "ca", "init", "--dir", str(self.work / "ca")],
                       env=self.env, check=True, capture_output=True, timeout=60)

    def test_badValues(self) -> None:
        for value, expected in [
            ("syslog:", "etpmitm: error: --audit-log syslog needs an address; use syslog:unix:PATH, "
                        "syslog:udp:HOST:PORT or syslog:tcp:HOST:PORT"),
            ("syslog:udp:host", "etpmitm: error: --audit-log syslog:udp:host: needs HOST:PORT with a port from 1 to "
                                "65535; use syslog:unix:PATH, syslog:udp:HOST:PORT or syslog:tcp:HOST:PORT"),
            ("bogus:x", "etpmitm: error: --audit-log bogus:x: unknown kind 'bogus'; use journald, syslog:ADDRESS "
                        "or a file (./bogus:x for a file named so)"),
            (f"syslog:unix:{self.work}/log", f"etpmitm: error: cannot use --audit-log syslog:unix:{self.work}/log: "
                                             f"{self.work}/log: No such file or directory"),
            ("journald", f"etpmitm: error: cannot use --audit-log journald ({self.work}/journal): "
                         f"{self.work}/journal: No such file or directory"),
        ]:
            done = subprocess.run([str(TWISTD), "-n", "--pidfile=", "etpmitm", "--ca-dir", str(self.work / "ca"),
                                   "--listen", f"tcp:{freePort()}:interface=127.0.0.1", "--audit-log", value],
                                  cwd=self.work, env=self.env, capture_output=True, text=True, timeout=60)
            self.assertNotEqual(done.returncode, 0)
            output = done.stdout + done.stderr
            errors = [line for line in output.splitlines() if "etpmitm: error:" in line]
            self.assertEqual(errors, [expected], output)
            self.assertNotIn("Traceback", output)


class WorkersTests(TestCase):
    """``--workers 2 --audit-log syslog:unix:...``: the master sends each worker's events once."""

    def setUp(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="etpmitm-sinks-"))
        self.addCleanup(subprocess.run, ["rm", "-rf", str(self.work)])
        self.env = {**os.environ, "PYTHONPATH": str(REPO)}
        subprocess.run([str(ETPMITM), "ca", "init", "--dir", str(self.work / "ca")],
                       env=self.env, check=True, capture_output=True, timeout=60)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(self.server.close)
        self.server.bind(str(self.work / "log"))
        self.server.settimeout(30)

    def test_workers(self) -> None:
        port = freePort()
        logfile = self.work / "gateway.log"
        proc = subprocess.Popen([str(TWISTD), "-n", "--pidfile=", f"--logfile={logfile}", "etpmitm", "--ca-dir",
                                 str(self.work / "ca"), "--listen", f"tcp:{port}:interface=127.0.0.1", "--workers", "2",
                                 "--audit-log", f"syslog:unix:{self.work}/log"],
                                cwd=self.work, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.addCleanup(proc.wait, 30)
        self.addCleanup(proc.terminate)
        deadline = time.monotonic() + 60
        while (logfile.read_text() if logfile.exists() else "").count("serving the master's sockets") < 2:
            self.assertIsNone(proc.poll())
            self.assertLess(time.monotonic(), deadline, "the workers did not start")
            time.sleep(0.05)
        self.connect(port, 4)
        messages = [local_message(self.server.recv(65536)) for _ in range(4)]
        records = [json.loads(m["msg"]) for m in messages]
        self.assertEqual(len({r["id"] for r in records}), 4)
        self.assertEqual([m["pid"] for m in messages], [str(r["pid"]) for r in records])
        self.assertNotIn(proc.pid, {r["pid"] for r in records})  # the workers handled them
        self.assertEqual({(r["action"], r["outcome"], m["pri"]) for r, m in zip(records, messages)},
                         {("refuse", "error", 132)})
        # The next message is the next connection's: none came twice (from a worker and the master).
        self.connect(port, 1)
        fifth = json.loads(local_message(self.server.recv(65536))["msg"])
        self.assertNotIn(fifth["id"], {r["id"] for r in records})

    def connect(self, port: int, count: int) -> None:
        for _ in range(count):  # not redirected: each is refused, and audited
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    s.recv(1)
            except ConnectionResetError:
                pass
