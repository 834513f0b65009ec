"""Worker processes that share the gateway's listening sockets.

A Twisted reactor uses one core.  With ``--workers N`` the process started
by twistd becomes a master: it binds N sockets per listening address in one
``SO_REUSEPORT`` group (so a port in use still ends start-up with one line),
never accepts on them, and runs N workers.  Each worker is a ``twistd
etpmitm`` that adopts its own socket of each group; the kernel spreads new
connections over the group by their addresses.  While a worker is down,
the master takes its sockets out of their groups (they stay bound), so new
connections go to the live workers instead of waiting for it; the worker
that replaces it puts them back when it starts accepting.

The master:

- restarts a worker that exits, after a delay that grows while workers keep
  dying young;
- passes SIGHUP (policy reload) on to every worker.  A worker starts with
  SIGHUP blocked and unblocks it once its handler is installed, so a reload
  right after a (re)start is held, not fatal;
- logs what its workers log (their events arrive as JSON lines on their
  standard output), so ``--logfile``, ``--syslog`` and daemon mode apply to
  workers too;
- on shutdown sends them SIGTERM and waits for them (SIGKILL after
  ``STOP_GRACE`` seconds).

Each worker reads its standard input, a pipe from the master: when it reads
end-of-file the master is gone, and the worker stops too.  Over that pipe,
and one back (fd 3), workers share what they learn: a bypass one worker
learns is sent to the master, which tells every other worker.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from twisted.application.service import Service
from twisted.internet import abstract, fdesc
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import IDelayedCall, IReactorCore, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import ILogObserver, LogLevel, Logger, eventFromJSON, globalLogPublisher
from twisted.python.failure import Failure

from etpmitm import metrics
from etpmitm.sharedports import stopListening
from etpmitm.worker import AUDIT_MARK

log = Logger()

STOP_GRACE = 10.0
"""Seconds a stopping worker gets before it is killed."""
FIRST_LISTEN_FD = 4
"""Workers find the listening sockets from this descriptor on (0: the
master's pipe, 1: log events to the master, 2: stderr to the master,
3: messages to the master)."""
TO_MASTER_FD = 3
YOUNG = 10.0
"""A worker that exits sooner than this after its start counts as dying young."""
MAX_RESTART_DELAY = 30.0
MIGRATE_REQ = Path("/proc/sys/net/ipv4/tcp_migrate_req")


def workerCommand(options: Sequence[str], backlogs: Sequence[int]) -> list[str]:
    """The command line of one worker: the master's options and the inherited sockets."""
    inherited = [f"--worker-listen={FIRST_LISTEN_FD + i}:{backlog}" for i, backlog in enumerate(backlogs)]
    return [sys.executable, "-m", "etpmitm.worker", *options, *inherited]


def migrationWarning(setting: Path | None = None) -> str | None:
    """Why connections may be lost when a worker dies: those waiting in its
    queue are reset, not moved to a live worker, while ``tcp_migrate_req`` is
    0 (the default, in every network namespace).  None when it is set, or
    cannot be read (before Linux 5.14 there is no such setting)."""
    try:
        value = (setting or MIGRATE_REQ).read_text().strip()
    except OSError:
        return None
    if value != "0":
        return None
    return ("net.ipv4.tcp_migrate_req is 0: connections waiting for a worker that dies are reset "
            "instead of moved to a live worker (deploy/sysctl.conf sets it to 1)")


@contextmanager
def _hangupBlocked() -> Iterator[None]:
    """SIGHUP blocked in this thread.  A child started meanwhile inherits the
    mask (fork and posix_spawn both keep it across exec), so a SIGHUP waits
    until the child unblocks it; one sent to the master meanwhile waits too."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _Lines:
    """Lines from a pipe; an overlong one is dropped."""

    MAX_LENGTH = 65536

    def __init__(self, handle: Callable[[bytes], None]) -> None:
        self._handle = handle
        self._buffer = b""

    def dataReceived(self, data: bytes) -> None:
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        if len(self._buffer) > self.MAX_LENGTH:
            log.warn("dropped an overlong line from another process")
            self._buffer = b""
        for line in lines:
            self._handle(line)


class _Messages(_Lines):
    """JSON lines between master and worker."""

    def __init__(self, handle: Callable[[dict[str, Any]], None]) -> None:
        super().__init__(self._line)
        self._handleMessage = handle

    def _line(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            log.warn("ignored a malformed message between master and worker: {line!r}", line=line[:200])
            return
        if isinstance(message, dict):
            self._handleMessage(message)


class _Worker(ProcessProtocol):
    def __init__(self, pool: WorkerPool, slot: int) -> None:
        self.pool = pool
        self.slot = slot
        self.started = 0.0
        self.pid = 0
        self.ended: Deferred[None] = Deferred()
        self.messages = _Messages(lambda message: pool.fromWorker(self, message))
        self.logs = _Lines(lambda line: pool.workerLogged(self, line))
        self.stderr = _Lines(lambda line: pool.workerWrote(self, line))

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == TO_MASTER_FD:
            self.messages.dataReceived(data)
        elif childFD == 1:
            self.logs.dataReceived(data)
        elif childFD == 2:
            self.stderr.dataReceived(data)

    def send(self, message: dict[str, Any]) -> None:
        if self.transport is not None:
            self.transport.writeToChild(0, json.dumps(message).encode() + b"\n")

    def processEnded(self, reason: Failure) -> None:
        self.pool.ended(self, reason)
        self.ended.callback(None)


def decodeEvent(line: bytes) -> Any:
    """The event a worker's line carries (:func:`etpmitm.worker.encodeEvent`), or None."""
    try:
        if line[:1] == _AUDIT_MARK:
            event = json.loads(line[1:])
            if isinstance(event, dict):
                level = event.get("log_level")
                event["log_level"] = LogLevel.levelWithName(level) if isinstance(level, str) and level in _LEVELS else None
                event["log_logger"] = event["log_source"] = None
                _formatted(event)
            return event
        return eventFromJSON(line.decode())
    except ValueError:  # UnicodeDecodeError and JSONDecodeError among them
        return None


def _formatted(event: dict[str, Any]) -> None:
    """Give the event its message, formatted once by ``str.format`` (the same
    text as Twisted's formatter, which parses the format field by field each
    time an observer asks; an audit event's fields are plain values)."""
    format = event.get("log_format")
    if isinstance(format, str):
        try:
            text = format.format(**event)
        except Exception:  # a format only Twisted reads ("{f()}"): it stays
            return
        event["log_format"] = text.replace("{", "{{").replace("}", "}}")


_AUDIT_MARK = AUDIT_MARK.encode("ascii")
_LEVELS = frozenset(level.name for level in LogLevel.iterconstants())


class WorkerPool(Service):
    """Runs and watches the workers; see the module's docstring."""

    def __init__(
        self,
        reactor: IReactorProcess,
        sockets: Sequence[Sequence[socket.socket]],
        backlogs: Sequence[int],
        options: Sequence[str],
        observer: ILogObserver = globalLogPublisher,
        stopGrace: float = STOP_GRACE,
    ) -> None:
        """Worker *i* gets ``sockets[i]``; ``backlogs`` holds one per socket of a worker."""
        self._reactor = reactor
        self._sockets = sockets
        self._backlogs = backlogs
        self._options = options
        self._observer = observer
        self._workers: dict[int, _Worker] = {}
        self._restarts: dict[int, IDelayedCall] = {}
        self._delay = 1.0
        self._stopping = False
        self._stopGrace = stopGrace
        self.hangup: Callable[[], object] | None = None
        """Also run (in the reactor) on each SIGHUP: the master's own reload."""

    def _clock(self) -> IReactorTime:
        return self._reactor  # type: ignore[return-value]

    def startService(self) -> None:
        super().startService()
        signal.signal(signal.SIGHUP, self._onHangup)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # blocked since start-up (etpmitm.service)
        warning = migrationWarning()
        if warning is not None:
            log.warn("{warning}", warning=warning)
        for slot in range(len(self._sockets)):
            self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        self._restarts.pop(slot, None)
        worker = _Worker(self, slot)
        childFDs: dict[int, int | str] = {0: "w", 1: "r", 2: "r", TO_MASTER_FD: "r"}
        for i, skt in enumerate(self._sockets[slot]):
            childFDs[FIRST_LISTEN_FD + i] = skt.fileno()
        argv = workerCommand(self._options, self._backlogs)
        worker.started = self._clock().seconds()
        with _hangupBlocked():
            self._reactor.spawnProcess(worker, argv[0], argv, env=os.environ.copy(), childFDs=childFDs)
        self._workers[slot] = worker
        worker.pid = worker.transport.pid  # type: ignore[union-attr]
        metrics.current.workerStarted(worker.pid)
        log.info("worker {slot} started, pid {pid}", slot=slot, pid=worker.pid)

    @property
    def pids(self) -> list[int]:
        """The running workers' process ids."""
        return [w.transport.pid for w in self._workers.values() if w.transport is not None and w.transport.pid]

    def _onHangup(self, signum: int, frame: object) -> None:
        for pid in self.pids:
            os.kill(pid, signal.SIGHUP)
        if self.hangup is not None:
            self._reactor.callFromThread(self.hangup)  # type: ignore[attr-defined]

    def broadcast(self, message: dict[str, Any]) -> None:
        """Tell every worker (new threat list tables to map)."""
        for worker in self._workers.values():
            worker.send(message)

    def fromWorker(self, sender: _Worker, message: dict[str, Any]) -> None:
        """A worker learned something: tell the others."""
        for worker in self._workers.values():
            if worker is not sender:
                worker.send(message)

    def workerLogged(self, worker: _Worker, line: bytes) -> None:
        """A worker's log event (one line, :func:`etpmitm.worker.encodeEvent`): log it here, as it was."""
        event = decodeEvent(line)
        if isinstance(event, dict) and "log_namespace" in event:
            self._observer(event)
        elif line.strip():
            self.workerWrote(worker, line)

    def workerWrote(self, worker: _Worker, line: bytes) -> None:
        """A line a worker wrote outside its log (before logging began, or a crash)."""
        if line.strip():
            log.warn("worker {slot} (pid {pid}): {line}", slot=worker.slot, pid=worker.pid,
                     line=line.decode(errors="replace").rstrip())

    def ended(self, worker: _Worker, reason: Failure) -> None:
        if self._workers.get(worker.slot) is worker:
            del self._workers[worker.slot]
        metrics.current.workerEnded(worker.pid, restarting=not self._stopping)
        if self._stopping:
            return
        for skt in self._sockets[worker.slot]:
            stopListening(skt)  # its connections go to the live workers
        how = "exited" if isinstance(reason.value, ProcessDone) else reason.getErrorMessage().rstrip(".")
        lived = self._clock().seconds() - worker.started
        if lived >= YOUNG:
            self._delay = 1.0
        delay, self._delay = self._delay, min(self._delay * 2, MAX_RESTART_DELAY)
        log.error(
            "worker {slot} (pid {pid}) {how} after {lived:.1f}s; restarting it in {delay:.0f}s",
            slot=worker.slot, pid=worker.pid, how=how, lived=lived, delay=delay,
        )
        self._restarts[worker.slot] = self._clock().callLater(delay, self._spawn, worker.slot)

    def stopService(self) -> Deferred[object]:
        super().stopService()
        self._stopping = True
        for call in self._restarts.values():
            call.cancel()
        self._restarts.clear()
        workers = list(self._workers.values())
        for worker in workers:
            worker.transport.signalProcess("TERM")  # type: ignore[union-attr]
        kill = self._clock().callLater(self._stopGrace, self._kill, workers)
        done: Deferred[object] = DeferredList([w.ended for w in workers])  # type: ignore[assignment]

        def stopped(result: object) -> object:
            if kill.active():
                kill.cancel()
            return result

        return done.addBoth(stopped)

    def _kill(self, workers: list[_Worker]) -> None:
        for worker in workers:
            if worker.transport is not None and worker.transport.pid:
                log.warn("worker {slot} did not stop within {grace}s; killing it", slot=worker.slot, grace=f"{self._stopGrace:g}")
                worker.transport.signalProcess("KILL")


class _MasterPipe(abstract.FileDescriptor):
    """A worker's end of the master's pipe (standard input)."""

    def __init__(self, reactor: IReactorCore, fd: int, protocol: _Messages, gone: Callable[[], None]) -> None:
        super().__init__(reactor)  # type: ignore[arg-type]
        self._fd = fd
        self._protocol = protocol
        self._gone = gone
        fdesc.setNonBlocking(fd)
        self.connected = True

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> object:
        return fdesc.readFromFD(self._fd, self._protocol.dataReceived)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self._gone()


class MasterLink:
    """A worker's side of the link: messages both ways, and the master's end."""

    def __init__(self, reactor: IReactorCore, handle: Callable[[dict[str, Any]], None]) -> None:
        self._reactor = reactor
        self._pipe = _MasterPipe(reactor, 0, _Messages(handle), self._masterGone)

    def start(self) -> None:
        self._pipe.startReading()

    def send(self, message: dict[str, Any]) -> None:
        """One message to the master (a few hundred bytes: one atomic pipe write)."""
        try:
            os.write(TO_MASTER_FD, json.dumps(message).encode() + b"\n")
        except OSError as e:
            log.warn("could not tell the master: {error}", error=e.strerror)

    def _masterGone(self) -> None:
        if self._reactor.running:
            log.error("the master process is gone; this worker stops")
            self._reactor.stop()
