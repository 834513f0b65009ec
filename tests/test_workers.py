"""The worker pool, its messages and command lines, in memory."""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import (
    LogLevel,
    Logger,
    eventAsJSON,
    eventFromJSON,
    formatEvent,
    formatEventAsClassicLogText,
    globalLogPublisher,
)
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from etpmitm import workers
from etpmitm.sharedports import bindShared
from etpmitm.audit import ConnectionRecord
from etpmitm.auditlog import auditRecord
from etpmitm.http import RequestHead, RequestRecord
from etpmitm.worker import AUDIT_MARK, ToMaster, encodeEvent
from etpmitm.workers import FIRST_LISTEN_FD, STOP_GRACE, WorkerPool, _Messages, decodeEvent, workerCommand


class MessagesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.got: list[dict[str, object]] = []
        self.messages = _Messages(self.got.append)

    def test_linesSplitAnywhere(self) -> None:
        data = b'{"learned": ["a.test", "192.0.2.1:443"], "why": "x"}\n{"n": 2}\n'
        for i in range(len(data)):
            self.got.clear()
            messages = _Messages(self.got.append)
            messages.dataReceived(data[:i])
            messages.dataReceived(data[i:])
            self.assertEqual(self.got, [{"learned": ["a.test", "192.0.2.1:443"], "why": "x"}, {"n": 2}])

    def test_malformedAndNonObjectLinesIgnored(self) -> None:
        self.messages.dataReceived(b'not json\n[1, 2]\n"text"\n{"ok": true}\n')
        self.assertEqual(self.got, [{"ok": True}])

    def test_overlongLineDropped(self) -> None:
        self.messages.dataReceived(b"x" * (_Messages.MAX_LENGTH + 1))
        self.messages.dataReceived(b'tail of it\n{"ok": 1}\n')
        self.assertEqual(self.got, [{"ok": 1}])


def auditEvents() -> list[dict[str, Any]]:
    """A request event and a connection event (ok and failed), as the gateway logs them."""
    events: list[dict[str, Any]] = []
    head = RequestHead(method="GET", authority="a.test", path="/x", query_length=3, user_agent="ua\u00e9/1")
    request = RequestRecord(connection="1-2", stream=3, protocol="http/1.1", head=head, started=10.0,
                            reason="it's \"quoted\" {x} }", status=200, headers_after=0.123)
    connection = ConnectionRecord(client="10.0.0.1:5", destination="10.0.0.2:443", started=10.0,
                                  sni="a.test", alpn_offered=("h2", "http/1.1"))
    failed = ConnectionRecord(client="10.0.0.1:6", destination="10.0.0.2:443", started=10.0)
    failed.fail("origin refused")
    globalLogPublisher.addObserver(events.append)
    try:
        request.emit(11.0)
        connection.emit(12.0)
        failed.emit(12.5)
    finally:
        globalLogPublisher.removeObserver(events.append)
    return [e for e in events if e.get("log_namespace", "").startswith("etpmitm.audit")]


class ToMasterTests(SynchronousTestCase):
    """A worker's lines wait a moment, and go in one write."""

    def setUp(self) -> None:
        read, write = os.pipe()
        os.set_blocking(read, False)
        self.addCleanup(os.close, read)
        self.addCleanup(os.close, write)
        self.read = read
        self.reactor = MemoryReactorClock()
        self.reactor.running = True
        self.observer = ToMaster(write, self.reactor)

    def written(self) -> list[bytes]:
        try:
            return os.read(self.read, 1 << 20).splitlines()
        except BlockingIOError:
            return []

    def test_batchedForAMoment(self) -> None:
        events = auditEvents()
        for event in events:
            self.observer(event)
        self.assertEqual(self.written(), [])
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.reactor.advance(ToMaster.DELAY / 2)
        self.assertEqual(self.written(), [])
        self.reactor.advance(ToMaster.DELAY / 2)
        lines = self.written()
        self.assertEqual([decodeEvent(line)["log_namespace"] for line in lines],
                         [e["log_namespace"] for e in events])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_errorsAndAStoppedReactorWriteAtOnce(self) -> None:
        event = {"log_namespace": "x", "log_level": LogLevel.info, "log_format": "a", "log_time": 1.0}
        self.observer(event)
        self.observer({**event, "log_level": LogLevel.error, "log_format": "b"})
        self.assertEqual([formatEvent(decodeEvent(line)) for line in self.written()], ["a", "b"])
        self.reactor.running = False
        self.observer({**event, "log_format": "c"})
        self.assertEqual([formatEvent(decodeEvent(line)) for line in self.written()], ["c"])

    def test_aFullBatchWritesAtOnce(self) -> None:
        self.observer.LIMIT = 4000  # the pipe holds less than the real limit
        event = {"log_namespace": "x", "log_level": LogLevel.info, "log_format": "x" * 1000, "log_time": 1.0}
        for _ in range(3):
            self.observer(event)
        self.assertEqual(self.written(), [])
        self.observer(event)
        self.assertEqual(len(self.written()), 4)


class EventLineTests(SynchronousTestCase):
    """A worker's events reach the master's observers as Twisted's own JSON would bring them."""

    def test_auditEventsAsPlainJSON(self) -> None:
        events = auditEvents()
        self.assertEqual([e["log_namespace"] for e in events],
                         ["etpmitm.audit.request", "etpmitm.audit", "etpmitm.audit"])
        for event in events:
            line = encodeEvent(event)
            self.assertTrue(line.startswith(AUDIT_MARK))
            self.assertNotIn("\n", line)
            got = decodeEvent(line.encode())
            reference = eventFromJSON(eventAsJSON(event))
            self.assertEqual(formatEventAsClassicLogText(got), formatEventAsClassicLogText(reference))
            self.assertEqual(auditRecord(got), auditRecord(reference))
            self.assertIs(got["log_level"], event["log_level"])
        self.assertEqual([decodeEvent(encodeEvent(e).encode())["log_level"] for e in events],
                         [LogLevel.info, LogLevel.info, LogLevel.warn])

    def test_otherEventsAsTwistedJSON(self) -> None:
        event = {"log_namespace": "etpmitm.gateway", "log_level": LogLevel.error, "log_time": 2.0,
                 "log_format": "x {thing}", "thing": object()}
        line = encodeEvent(event)
        self.assertEqual(line, eventAsJSON(event))
        self.assertEqual(formatEvent(decodeEvent(line.encode())), formatEvent(eventFromJSON(line)))

    def test_malformedLines(self) -> None:
        for line in (AUDIT_MARK.encode() + b"{not json", b"{", b"\xff\xfe", AUDIT_MARK.encode() + b"\xff"):
            self.assertIsNone(decodeEvent(line))


class CommandTests(SynchronousTestCase):
    def test_workerCommand(self) -> None:
        argv = workerCommand(["--ca-dir=/ca", "--policy=/p.toml"], [4096, 100])
        self.assertEqual(argv, [sys.executable, "-m", "etpmitm.worker", "--ca-dir=/ca", "--policy=/p.toml",
                                f"--worker-listen={FIRST_LISTEN_FD}:4096", f"--worker-listen={FIRST_LISTEN_FD + 1}:100"])


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid: int | None = pid
        self.signals: list[str] = []
        self.written: list[bytes] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)

    def writeToChild(self, fd: int, data: bytes) -> None:
        self.written.append(data)


class FakeReactor(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[object, list[str], dict[int, object]]] = []
        self.masks: list[set[signal.Signals]] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], env: object = None,
                     childFDs: dict[int, object] | None = None, **kwargs: object) -> FakeProcess:
        process = FakeProcess(1000 + len(self.spawned))
        protocol.makeConnection(process)
        self.spawned.append((protocol, args, childFDs or {}))
        self.masks.append(signal.pthread_sigmask(signal.SIG_BLOCK, []))
        return process


class PoolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeReactor()
        group = bindShared("tcp:0:interface=127.0.0.1", 2)
        for skt in group:
            self.addCleanup(skt.close)
        self.sockets = [[group[0]], [group[1]]]
        self.events: list[dict[str, Any]] = []
        self.pool = WorkerPool(self.reactor, self.sockets, [4096], ["--ca-dir=/ca"],  # type: ignore[arg-type]
                               observer=self.events.append)
        self.patch(signal, "signal", lambda *args: None)
        self.patch(workers, "log", Logger(observer=self.events.append))
        self.pool.startService()
        self.events.clear()  # "worker N started"

    def worker(self, slot: int) -> Any:
        return self.pool._workers[slot]

    def test_eachWorkerGetsItsOwnSockets(self) -> None:
        self.assertEqual(len(self.reactor.spawned), 2)
        for slot, (_, args, fds) in enumerate(self.reactor.spawned):
            self.assertEqual(fds[FIRST_LISTEN_FD], self.sockets[slot][0].fileno())
            self.assertEqual((fds[0], fds[1], fds[2], fds[3]), ("w", "r", "r", "r"))
            self.assertEqual(args[-1], f"--worker-listen={FIRST_LISTEN_FD}:4096")

    def test_workersStartWithHangupBlocked(self) -> None:
        """A worker inherits a mask that holds SIGHUP until it unblocks it; the
        master's own mask is back as it was."""
        self.assertEqual([signal.SIGHUP in mask for mask in self.reactor.masks], [True, True])
        self.assertNotIn(signal.SIGHUP, signal.pthread_sigmask(signal.SIG_BLOCK, []))
        self.worker(0).processEnded(Failure(ProcessTerminated(signal=9)))
        self.reactor.advance(1)
        self.assertEqual(len(self.reactor.masks), 3)
        self.assertIn(signal.SIGHUP, self.reactor.masks[-1])
        self.assertNotIn(signal.SIGHUP, signal.pthread_sigmask(signal.SIG_BLOCK, []))

    def test_deadWorkersSocketsStopListening(self) -> None:
        """While a worker is down its sockets leave their group (the replacement
        listens on them again itself); the others keep listening."""
        self.worker(0).processEnded(Failure(ProcessTerminated(signal=9)))
        accepting = [skt.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) for [skt] in self.sockets]
        self.assertEqual(accepting, [0, 1])
        self.reactor.advance(1)
        self.assertEqual(self.reactor.spawned[-1][2][FIRST_LISTEN_FD], self.sockets[0][0].fileno())

    def test_aWorkerDeadBeforeItsReplacementListenedLeavesTheSocketWhole(self) -> None:
        """Its replacement dies before it listens: stopped twice, the socket must
        still hand out connections that wait for data, not ones at end-of-file."""
        self.worker(0).processEnded(Failure(ProcessTerminated(signal=9)))
        self.reactor.advance(1)
        self.worker(0).processEnded(Failure(ProcessTerminated(signal=9)))  # never listened
        self.reactor.advance(2)
        self.worker(1).processEnded(Failure(ProcessTerminated(signal=9)))  # so connections come here
        [skt] = self.sockets[0]
        skt.listen(64)  # as the next replacement does
        client = socket.create_connection(skt.getsockname(), timeout=5)
        self.addCleanup(client.close)
        skt.setblocking(True)
        skt.settimeout(5)
        server, _ = skt.accept()
        self.addCleanup(server.close)
        server.setblocking(False)
        with self.assertRaises(BlockingIOError):
            server.recv(1)

    def test_workerLogEventsReachTheMastersObserver(self) -> None:
        event = {"log_namespace": "etpmitm.audit", "log_level": LogLevel.info, "log_time": 1.5,
                 "log_format": "a -> {dest} pid={pid}", "dest": "b", "pid": 7}
        line = eventAsJSON(event).encode() + b"\n"
        self.worker(0).childDataReceived(1, line[:10])
        self.worker(0).childDataReceived(1, line[10:])
        [got] = self.events
        self.assertEqual((got["log_namespace"], got["log_level"], got["log_time"]), ("etpmitm.audit", LogLevel.info, 1.5))
        self.assertEqual(formatEvent(got), "a -> b pid=7")

    def test_workerAuditLinesReachTheMastersObserver(self) -> None:
        event = auditEvents()[0]
        line = encodeEvent(event).encode() + b"\n"
        self.worker(1).childDataReceived(1, line[:7])
        self.worker(1).childDataReceived(1, line[7:])
        [got] = self.events
        self.assertEqual((got["log_namespace"], got["log_level"], got["connection"], got["head"]["path"]),
                         ("etpmitm.audit.request", LogLevel.info, "1-2", "/x"))

    def test_workerOutputOutsideItsLogIsLogged(self) -> None:
        self.worker(1).childDataReceived(2, b"etpmitm: error: no\n")
        self.worker(1).childDataReceived(1, b"stray print\n\n")
        self.assertEqual([formatEvent(e) for e in self.events],
                         ["worker 1 (pid 1001): etpmitm: error: no", "worker 1 (pid 1001): stray print"])
        self.assertEqual({e["log_level"] for e in self.events}, {LogLevel.warn})

    def test_restartBacksOffWhileWorkersDieYoung(self) -> None:
        delays = []
        for _ in range(7):
            self.worker(0).processEnded(Failure(ProcessTerminated(signal=9)))
            call = self.pool._restarts[0]
            delays.append(call.getTime() - self.reactor.seconds())
            self.reactor.advance(delays[-1])
        self.assertEqual(delays, [1, 2, 4, 8, 16, 30, 30])
        self.reactor.advance(60)  # this one lives long
        self.worker(0).processEnded(Failure(ProcessDone(0)))
        self.assertEqual(self.pool._restarts[0].getTime() - self.reactor.seconds(), 1)

    def test_learnedGoesToTheOthers(self) -> None:
        self.worker(0).childDataReceived(3, b'{"learned": ["a.test", "192.0.2.1:443"], "why": "w"}\n')
        self.assertEqual(self.worker(0).transport.written, [])
        self.assertEqual(self.worker(1).transport.written,
                         [b'{"learned": ["a.test", "192.0.2.1:443"], "why": "w"}\n'])

    def test_stopTerminatesWaitsAndCancelsRestarts(self) -> None:
        self.worker(0).processEnded(Failure(ProcessTerminated(signal=9)))
        running = self.worker(1)
        stopped = self.pool.stopService()
        self.assertEqual(running.transport.signals, ["TERM"])
        self.assertEqual(self.pool._restarts, {})
        self.assertNoResult(stopped)
        self.reactor.advance(STOP_GRACE)
        self.assertEqual(running.transport.signals, ["TERM", "KILL"])
        running.processEnded(Failure(ProcessTerminated(signal=9)))
        self.successResultOf(stopped)
        self.assertEqual(len(self.reactor.spawned), 2)  # no restart while stopping


class MigrationWarningTests(SynchronousTestCase):
    def setting(self, text: str | None) -> Path:
        path = Path(self.mktemp())
        if text is not None:
            path.write_text(text)
        return path

    def test_resetWhenZero(self) -> None:
        warning = workers.migrationWarning(self.setting("0\n"))
        assert warning is not None
        self.assertIn("net.ipv4.tcp_migrate_req is 0", warning)

    def test_silentWhenSetOrMissing(self) -> None:
        self.assertIsNone(workers.migrationWarning(self.setting("1\n")))
        self.assertIsNone(workers.migrationWarning(self.setting(None)))

    def test_theMasterLogsItOnce(self) -> None:
        self.patch(workers, "MIGRATE_REQ", self.setting("0\n"))
        events: list[dict[str, Any]] = []
        self.patch(workers, "log", Logger(observer=events.append))
        self.patch(signal, "signal", lambda *args: None)
        group = bindShared("tcp:0:interface=127.0.0.1", 2)
        for skt in group:
            self.addCleanup(skt.close)
        pool = WorkerPool(FakeReactor(), [[group[0]], [group[1]]], [4096], [])  # type: ignore[arg-type]
        pool.startService()
        warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertIn("tcp_migrate_req is 0", warnings[0])
