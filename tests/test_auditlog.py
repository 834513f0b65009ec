# trial's assertion methods carry no annotations.
# mypy: disable-error-code="no-untyped-call"
"""``--audit-log``: audit events as JSON lines, in memory, through a worker, and from twistd."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import LogPublisher, Logger, eventAsJSON, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from etpmitm.audit import ConnectionRecord
from etpmitm.auditlog import MODE, AuditLogError, AuditLogFile, AuditLogService, auditRecord
from etpmitm.http import RequestHead, RequestRecord
from etpmitm.workers import WorkerPool

REPO = Path(__file__).resolve().parent.parent
TWISTD = Path(sys.executable).parent / "twistd"
ETPMITM = Path(sys.executable).parent / "etpmitm"


def connectionRecord() -> ConnectionRecord:
    record = ConnectionRecord(client="10.1.2.3:50312", destination="93.184.216.34:443", started=100.0,
                              sni="example.com", alpn_offered=("h2", "http/1.1"))
    record.action, record.alpn, record.policy = "intercept", "h2", "no rule matched"
    record.bytes_up, record.bytes_down = 517, 1256
    return record


def requestRecord(connection: str) -> RequestRecord:
    head = RequestHead(method="POST", authority="good.example", path="/private/x", query_length=7,
                       user_agent="curl/8.5.0", content_type="text/plain", content_length=5)
    record = RequestRecord(connection=connection, stream=1, protocol="h2", head=head, started=100.0)
    record.action, record.reason, record.rule = "block", "rule 1 (line 1) matched ...", "rule 1 (line 1)"
    record.status = 403
    return record


class Captured:
    """The global log's audit events while a test runs, written to a file."""

    def __init__(self, test: SynchronousTestCase, path: Path) -> None:
        self.file = AuditLogFile(path)
        self.path = path
        globalLogPublisher.addObserver(self.file)
        test.addCleanup(globalLogPublisher.removeObserver, self.file)
        test.addCleanup(self.file.close)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.path.read_text("ascii").splitlines()]


class RecordTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.captured = Captured(self, self.dir / "audit.json")

    def test_connection(self) -> None:
        record = connectionRecord()
        record.emit(100.5)
        [line] = self.captured.lines()
        expected = {"event": "connection", **json.loads(json.dumps(record.fields()))}
        self.assertEqual({k: v for k, v in line.items() if k != "time"}, expected)
        self.assertEqual(line["duration"], 0.5)
        self.assertEqual(line["alpn_offered"], ["h2", "http/1.1"])
        self.assertEqual((line["sni"], line["tls_version"]), ("example.com", None))
        self.assertRegex(line["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

    def test_request(self) -> None:
        record = requestRecord("1a-2")
        record.emit(100.25)
        [line] = self.captured.lines()
        self.assertEqual(line["event"], "request")
        self.assertEqual(line["head"], {"method": "POST", "authority": "good.example", "path": "/private/x",
                                        "query_length": 7, "user_agent": "curl/8.5.0",
                                        "content_type": "text/plain", "content_length": 5})
        self.assertEqual({k: v for k, v in line.items() if k not in ("time", "event")},
                         json.loads(json.dumps(record.fields())))
        self.assertEqual((line["connection"], line["action"], line["status"], line["duration"]),
                         ("1a-2", "block", 403, 0.25))

    def test_requestFieldsAreTheRecordsFields(self) -> None:
        """RequestRecord.fields spells its keys out: none of the record's or the head's is left behind."""
        record = requestRecord("1a-2")
        names = {a.name for a in attrs.fields(RequestRecord) if not a.name.startswith("_")} - {"log_query"}
        self.assertEqual(set(record.fields()), names)
        self.assertEqual(record.fields()["head"], {k: v for k, v in attrs.asdict(record.head).items() if k != "query"})
        record.log_query = True
        self.assertEqual(record.fields()["head"], attrs.asdict(record.head))

    def test_joined_by_the_connection_id(self) -> None:
        connection = connectionRecord()
        requestRecord(connection.id).emit(101.0)
        connection.emit(102.0)
        request, conn = self.captured.lines()
        self.assertEqual(request["connection"], conn["id"])

    def test_one_line_each_and_ascii(self) -> None:
        record = connectionRecord()
        record.reason = "odd\n\"reason\" \u2028 é"
        record.alpn = "h2\nx"
        record.emit(101.0)
        text = self.captured.path.read_text("ascii")
        self.assertEqual(text.count("\n"), 1)
        [line] = self.captured.lines()
        self.assertEqual(line["reason"], "odd\n\"reason\" \u2028 é")
        self.assertEqual(line["alpn"], "h2\nx")  # JSON escapes it; the text log has h2\x0ax

    def test_missing_values_are_null(self) -> None:
        record = ConnectionRecord(client="10.1.2.3:1", destination="192.0.2.1:443", started=1.0)
        record.emit(2.0)
        [line] = self.captured.lines()
        self.assertEqual((line["sni"], line["alpn"], line["policy"]), (None, None, None))
        self.assertNotIn("sni_text", line)

    def test_other_events_are_not_written(self) -> None:
        Logger(namespace="etpmitm.service").info("starting")
        Logger(namespace="etpmitm.audit.other").info("x")
        Logger().info("x")
        self.assertEqual(self.captured.path.read_text(), "")

    def test_auditRecord(self) -> None:
        self.assertIsNone(auditRecord({"log_namespace": "etpmitm.gateway"}))
        self.assertIsNone(auditRecord({}))
        self.assertEqual(auditRecord({"log_namespace": "etpmitm.audit", "client": "a", "log_format": "x", "duration_text": "1"}),
                         {"event": "connection", "time": None, "client": "a"})


class FileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.path = self.dir / "audit.json"

    def write(self, auditLog: AuditLogFile, client: str) -> None:
        auditLog({"log_namespace": "etpmitm.audit", "log_time": 0.0, "client": client})

    def clients(self, path: Path) -> list[str]:
        return [json.loads(line)["client"] for line in path.read_text().splitlines()]

    def test_new_file_mode_whatever_the_umask(self) -> None:
        for umask in (0o077, 0o000):
            path = self.dir / f"audit-{umask:o}.json"
            old = os.umask(umask)
            try:
                AuditLogFile(path).close()
            finally:
                os.umask(old)
            self.assertEqual(stat.S_IMODE(path.stat().st_mode), MODE)

    def test_existing_file_is_appended_and_keeps_its_mode(self) -> None:
        self.path.write_text('{"client": "before"}\n')
        self.path.chmod(0o600)
        auditLog = AuditLogFile(self.path)
        self.addCleanup(auditLog.close)
        self.write(auditLog, "after")
        self.assertEqual(self.clients(self.path), ["before", "after"])
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)

    def test_cannot_open(self) -> None:
        missing = self.dir / "nope" / "audit.json"
        with self.assertRaises(AuditLogError) as caught:
            AuditLogFile(missing)
        self.assertEqual(str(caught.exception), f"cannot open --audit-log {missing}: No such file or directory")
        with self.assertRaises(AuditLogError):
            AuditLogFile(self.dir)

    def test_reopen_after_rename(self) -> None:
        auditLog = AuditLogFile(self.path)
        self.addCleanup(auditLog.close)
        self.write(auditLog, "one")
        self.path.rename(self.dir / "audit.json.1")
        self.write(auditLog, "two")  # still the renamed file, until reopened
        self.assertTrue(auditLog.reopen())
        self.write(auditLog, "three")
        self.assertEqual(self.clients(self.dir / "audit.json.1"), ["one", "two"])
        self.assertEqual(self.clients(self.path), ["three"])
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), MODE)

    def test_failed_reopen_keeps_the_old_file(self) -> None:
        sub = self.dir / "sub"
        sub.mkdir()
        auditLog = AuditLogFile(sub / "audit.json")
        self.addCleanup(auditLog.close)
        sub.rename(self.dir / "moved")
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.assertFalse(auditLog.reopen())
        self.write(auditLog, "kept")
        self.assertEqual(self.clients(self.dir / "moved" / "audit.json"), ["kept"])
        self.assertIn(f"cannot open --audit-log {sub / 'audit.json'}: No such file or directory; "
                      "still writing to the file it was", [formatEvent(e) for e in events])

    def test_write_failure_is_logged_once(self) -> None:
        auditLog = AuditLogFile(Path("/dev/full"))
        self.addCleanup(auditLog.close)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for client in ("a", "b"):
            self.write(auditLog, client)
        failures = [e for e in events if e.get("log_format", "").startswith("cannot write the audit log")]
        self.assertEqual(len(failures), 1)


class WorkerReplayTests(SynchronousTestCase):
    """With --workers, a worker's audit events reach the master's file as if logged there."""

    def test_replayed_events_are_written_unchanged(self) -> None:
        events: list[dict[str, Any]] = []
        publisher = LogPublisher(events.append)
        globalLogPublisher.addObserver(publisher)
        self.addCleanup(globalLogPublisher.removeObserver, publisher)
        connection = connectionRecord()
        requestRecord(connection.id).emit(100.125)
        connection.emit(100.3337)
        self.assertEqual(len(events), 2)

        directory = Path(self.mktemp())
        directory.mkdir()
        direct, replayed = AuditLogFile(directory / "direct.json"), AuditLogFile(directory / "replayed.json")
        self.addCleanup(direct.close)
        self.addCleanup(replayed.close)
        pool = WorkerPool(None, [], [], [], observer=replayed)  # type: ignore[arg-type]
        for event in events:
            direct(event)
            pool.workerLogged(None, eventAsJSON(event).encode())  # type: ignore[arg-type]
        lines = (directory / "replayed.json").read_text().splitlines()
        self.assertEqual(len(lines), 2)
        self.assertEqual([json.loads(line) for line in lines],
                         [json.loads(line) for line in (directory / "direct.json").read_text().splitlines()])
        self.assertEqual(json.loads(lines[1])["duration"], 0.3337)  # not 0.3336999999999932


class ServiceTests(TestCase):
    """The service observes the log, and SIGUSR1 reopens the file (and still reaches twistd's handler)."""

    def setUp(self) -> None:
        self.previousCalls: list[int] = []
        original = signal.signal(signal.SIGUSR1, self.previous)
        self.addCleanup(signal.signal, signal.SIGUSR1, original)
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.path = self.dir / "audit.json"
        self.publisher = LogPublisher()
        self.service = AuditLogService(AuditLogFile(self.path), self.publisher)

    def previous(self, signum: int, frame: FrameType | None) -> None:
        self.previousCalls.append(signum)

    def emit(self, client: str) -> None:
        self.publisher({"log_namespace": "etpmitm.audit", "log_time": 0.0, "client": client})

    def clients(self, path: Path) -> list[str]:
        return [json.loads(line)["client"] for line in path.read_text().splitlines()]

    def test_sigusr1_reopens_after_rename(self) -> Deferred[None]:
        self.service.startService()
        self.addCleanup(lambda: self.service.running and self.service.stopService())
        self.emit("before")
        self.path.rename(self.dir / "audit.json.1")

        reopened: Deferred[None] = Deferred()
        realReopen = self.service.auditLog.reopen

        def reopen() -> bool:
            result = realReopen()
            reopened.callback(None)
            return result

        self.service.auditLog.reopen = reopen  # type: ignore[method-assign]
        os.kill(os.getpid(), signal.SIGUSR1)

        def check(_: None) -> None:
            self.emit("after")
            self.assertEqual(self.clients(self.dir / "audit.json.1"), ["before"])
            self.assertEqual(self.clients(self.path), ["after"])
            self.assertEqual(self.previousCalls, [signal.SIGUSR1])

        return reopened.addCallback(check)

    def test_stop_restores_and_closes(self) -> None:
        self.service.startService()
        self.assertNotEqual(signal.getsignal(signal.SIGUSR1), self.previous)
        self.service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGUSR1), self.previous)
        self.emit("after stop")
        self.assertEqual(self.path.read_text(), "")


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TwistdTests(TestCase):
    """``twistd etpmitm --audit-log`` on loopback: connections that were not
    redirected are refused, and each gets its line."""

    def setUp(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="etpmitm-auditlog-"))
        self.addCleanup(subprocess.run, ["rm", "-rf", str(self.work)])
        self.env = {**os.environ, "PYTHONPATH": str(REPO)}
        subprocess.run([str(ETPMITM), "ca", "init", "--dir", str(self.work / "ca")],
                       env=self.env, check=True, capture_output=True, timeout=60)
        self.logfile = self.work / "gateway.log"
        self.audit = self.work / "audit.json"
        self.port = freePort()

    def start(self, *args: str, ready: str, count: int) -> subprocess.Popen[bytes]:
        argv = [str(TWISTD), "-n", "--pidfile=", f"--logfile={self.logfile}", "etpmitm", "--ca-dir",
                str(self.work / "ca"), "--listen", f"tcp:{self.port}:interface=127.0.0.1",
                "--audit-log", str(self.audit), *args]
        proc = subprocess.Popen(argv, cwd=self.work, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.addCleanup(proc.wait, 30)
        self.addCleanup(proc.terminate)
        self.waitFor(lambda: self.logText().count(ready) >= count, proc)
        return proc

    def logText(self) -> str:
        """The gateway's log, with what SIGUSR1 rotated away (twistd's --logfile rotation)."""
        paths = [self.logfile.with_name(self.logfile.name + ".1"), self.logfile]
        return "".join(path.read_text() for path in paths if path.exists())

    def waitFor(self, condition: Any, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 60
        while not condition():
            if proc.poll() is not None or time.monotonic() > deadline:
                self.fail(f"gave up waiting (exit {proc.poll()}):\n{self.logText()}")
            time.sleep(0.05)

    def connect(self, count: int) -> None:
        for _ in range(count):
            # The gateway accepts and resets it, maybe before connect() returns.
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                    s.recv(1)
            except ConnectionResetError:
                pass

    def lines(self, path: Path) -> list[dict[str, Any]]:
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]

    def test_single_process(self) -> None:
        proc = self.start(ready="starting on", count=1)
        self.assertEqual(stat.S_IMODE(self.audit.stat().st_mode), MODE)
        self.connect(2)
        self.waitFor(lambda: len(self.lines(self.audit)) == 2, proc)
        for line in self.lines(self.audit):
            self.assertEqual((line["event"], line["action"], line["outcome"], line["pid"]),
                             ("connection", "refuse", "error", proc.pid))
            self.assertTrue(line["reason"].startswith("not redirected"), line)
            self.assertTrue(line["client"].startswith("127.0.0.1:"), line)

    def test_workers_write_once_through_the_master(self) -> None:
        proc = self.start("--workers", "2", ready="serving the master's sockets", count=2)
        self.connect(8)
        self.waitFor(lambda: len(self.lines(self.audit)) >= 8, proc)
        lines = self.lines(self.audit)
        self.assertEqual(len(lines), 8)  # each once: the workers do not write it too
        self.assertEqual(len({line["id"] for line in lines}), 8)
        self.assertNotIn(proc.pid, {line["pid"] for line in lines})  # the workers handled them

        # logrotate: rename, SIGUSR1 (to every process, as "systemctl kill" does), new file.
        self.audit.rename(self.work / "audit.json.1")
        for pid in {proc.pid, *(line["pid"] for line in lines)}:
            os.kill(pid, signal.SIGUSR1)
        self.waitFor(lambda: "reopened the audit log" in self.logText(), proc)
        self.connect(2)
        self.waitFor(lambda: len(self.lines(self.audit)) >= 2, proc)
        self.assertEqual(len(self.lines(self.audit)), 2)
        self.assertEqual(len(self.lines(self.work / "audit.json.1")), 8)
        self.assertNotIn("exited", self.logText())  # the workers ignore SIGUSR1
        self.assertTrue(self.logfile.with_name(self.logfile.name + ".1").exists())  # twistd's rotation still runs

    def test_cannot_open_is_one_line(self) -> None:
        missing = self.work / "nope" / "audit.json"
        done = subprocess.run([str(TWISTD), "-n", "--pidfile=", "etpmitm", "--ca-dir", str(self.work / "ca"),
                               "--listen", f"tcp:{self.port}:interface=127.0.0.1", "--audit-log", str(missing)],
                              cwd=self.work, env=self.env, capture_output=True, text=True, timeout=60)
        self.assertNotEqual(done.returncode, 0)
        output = done.stdout + done.stderr
        errors = [line for line in output.splitlines() if "etpmitm: error:" in line]
        self.assertEqual(errors, [f"etpmitm: error: cannot open --audit-log {missing}: No such file or directory"],
                         output)
        self.assertNotIn("Traceback", output)
