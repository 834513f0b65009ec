"""The worker pool, its messages and command lines, in memory."""

from __future__ import annotations

import signal
import socket
import sys
from typing import Any

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from etpmitm.workers import FIRST_LISTEN_FD, STOP_GRACE, WorkerPool, _Messages, workerCommand


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


class CommandTests(SynchronousTestCase):
    def test_workerCommand(self) -> None:
        argv = workerCommand(["--ca-dir=/ca", "--policy=/p.toml"], 2)
        self.assertEqual(argv, [sys.executable, "-m", "etpmitm.worker", "--ca-dir=/ca", "--policy=/p.toml",
                                f"--worker-listen={FIRST_LISTEN_FD}", f"--worker-listen={FIRST_LISTEN_FD + 1}"])


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

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], env: object = None,
                     childFDs: dict[int, object] | None = None, **kwargs: object) -> FakeProcess:
        process = FakeProcess(1000 + len(self.spawned))
        protocol.makeConnection(process)
        self.spawned.append((protocol, args, childFDs or {}))
        return process


class PoolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeReactor()
        self.sockets = [[socket.socket()], [socket.socket()]]
        for group in self.sockets:
            for skt in group:
                self.addCleanup(skt.close)
        self.pool = WorkerPool(self.reactor, self.sockets, ["--ca-dir=/ca"])  # type: ignore[arg-type]
        self.patch(signal, "signal", lambda *args: None)
        self.pool.startService()

    def worker(self, slot: int) -> Any:
        return self.pool._workers[slot]

    def test_eachWorkerGetsItsOwnSockets(self) -> None:
        self.assertEqual(len(self.reactor.spawned), 2)
        for slot, (_, args, fds) in enumerate(self.reactor.spawned):
            self.assertEqual(fds[FIRST_LISTEN_FD], self.sockets[slot][0].fileno())
            self.assertEqual((fds[0], fds[1], fds[2], fds[3]), ("w", 1, 2, "r"))
            self.assertEqual(args[-1], f"--worker-listen={FIRST_LISTEN_FD}")

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
