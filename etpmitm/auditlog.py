"""``--audit-log FILE``: the audit events as JSON lines, reopened on SIGUSR1.

Each event of the namespaces ``etpmitm.audit`` (one per connection,
:class:`etpmitm.audit.ConnectionRecord`) and ``etpmitm.audit.request`` (one
per request, :class:`etpmitm.http.RequestRecord`) becomes one line: a JSON
object with ``event`` (``connection`` or ``request``), ``time`` (ISO 8601,
UTC) and the record's fields as keys.  Lines are ASCII (JSON escapes the
rest), so no value can split a line.

With ``--workers`` only the master writes: workers send it their events
(:mod:`etpmitm.worker`), and :class:`etpmitm.workers.WorkerPool` replays them
to the master's observers, this one among them.

The file is one :class:`etpmitm.interfaces.IAuditSink`; ``journald`` and
``syslog:ADDRESS`` are others (:mod:`etpmitm.auditsinks`), and
:class:`AuditLogService` runs any of them.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import ILogObserver, LogEvent, LogLevel, LogPublisher, Logger, formatEvent, globalLogPublisher
from zope.interface import implementer

from etpmitm.audit import ConnectionRecord
from etpmitm.http import RequestRecord
from etpmitm.interfaces import IAuditSink

__all__ = ["AuditLogError", "AuditLogFile", "AuditLogService", "AuditObserver", "auditRecord", "severity"]

log = Logger()

MODE = 0o640
"""A new audit log's mode, whatever the umask."""
KINDS = {"etpmitm.audit": "connection", "etpmitm.audit.request": "request"}
FIELDS = {
    "connection": tuple(a.name for a in attrs.fields(ConnectionRecord) if not a.name.startswith("_")),
    "request": tuple(a.name for a in attrs.fields(RequestRecord) if not a.name.startswith("_")),
}

_SECONDS = frozenset({"duration", "headers_after"})
"""Durations, to the microsecond (not 0.3336999999999932)."""
_Handler = Callable[[int, FrameType | None], Any] | int | None


class AuditLogError(Exception):
    """The audit log cannot be opened; ``str()`` is one line."""


def auditRecord(event: LogEvent) -> dict[str, Any] | None:
    """The JSON object for an audit event; None for any other event."""
    kind = KINDS.get(event.get("log_namespace", ""))
    if kind is None:
        return None
    record: dict[str, Any] = {"event": kind, "time": _iso(event.get("log_time"))}
    for name in FIELDS[kind]:
        if name in event:
            value = event[name]
            if name in _SECONDS and isinstance(value, float):
                value = round(value, 6)
            record[name] = value
    return record


_SEVERITIES = {LogLevel.debug: 7, LogLevel.info: 6, LogLevel.warn: 4, LogLevel.error: 3, LogLevel.critical: 2}


def severity(event: LogEvent) -> int:
    """The syslog severity of an event's ``log_level`` (informational if it has none)."""
    level = event.get("log_level")
    return next((number for known, number in _SEVERITIES.items() if level is known), 6)


@implementer(ILogObserver)
class AuditObserver:
    """A log observer that hands each audit event to an :class:`IAuditSink`."""

    def __init__(self, sink: IAuditSink) -> None:
        self.sink = sink

    def __call__(self, event: LogEvent) -> None:
        record = auditRecord(event)
        if record is not None:
            self.sink.write(record, formatEvent(event), severity(event))


def _iso(when: object) -> str | None:
    if not isinstance(when, int | float):
        return None
    stamp = datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def _open(path: Path) -> int:
    """Open *path* for appending; a new file gets :data:`MODE`."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
    for _ in range(3):  # it may appear or vanish between the two tries
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, MODE)
        except FileExistsError:
            try:
                return os.open(path, flags)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise AuditLogError(f"cannot open --audit-log {path}: {e.strerror}") from None
        except OSError as e:
            raise AuditLogError(f"cannot open --audit-log {path}: {e.strerror}") from None
        os.fchmod(fd, MODE)
        return fd
    raise AuditLogError(f"cannot open --audit-log {path}: it keeps appearing and vanishing")


@implementer(ILogObserver, IAuditSink)
class AuditLogFile:
    """Appends the audit events to a file as JSON lines (also a log observer itself)."""

    def __init__(self, path: Path) -> None:
        """Open *path* (raises :class:`AuditLogError`)."""
        self.path = path
        self._fd: int | None = _open(path)
        self._failing = False

    def __call__(self, event: LogEvent) -> None:
        AuditObserver(self)(event)

    def start(self) -> None:
        """Nothing to do: the file is open."""

    def write(self, record: dict[str, Any], message: str = "", severity: int = 6) -> None:
        if self._fd is None:
            return
        data = (json.dumps(record, default=str, separators=(",", ":")) + "\n").encode("ascii")
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except OSError as e:
            if not self._failing:
                self._failing = True
                log.error("cannot write the audit log {path}: {error}", path=str(self.path), error=e.strerror)
            return
        if self._failing:
            self._failing = False
            log.info("writing the audit log {path} again", path=str(self.path))

    def reopen(self) -> bool:
        """Open the path again (after logrotate renamed the file); on failure keep the old file."""
        try:
            fd = _open(self.path)
        except AuditLogError as e:
            log.error("{error}; still writing to the file it was", error=str(e))
            return False
        self.close()
        self._fd = fd
        log.info("reopened the audit log {path}", path=str(self.path))
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class AuditLogService(Service):
    """Observes the log while running, for one :class:`IAuditSink`; SIGUSR1 reopens it.

    A SIGUSR1 handler that was there before (twistd's, which rotates
    ``--logfile``) is still called.
    """

    def __init__(self, auditLog: IAuditSink, publisher: LogPublisher = globalLogPublisher) -> None:
        self.auditLog = auditLog
        self._observer = AuditObserver(auditLog)
        self._publisher = publisher
        self._previous: _Handler = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.auditLog.start()
        self._publisher.addObserver(self._observer)
        self._previous = signal.getsignal(signal.SIGUSR1)
        signal.signal(signal.SIGUSR1, self._onUSR1)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})  # blocked since start-up (etpmitm.service)

    def _onUSR1(self, signum: int, frame: FrameType | None) -> None:
        from twisted.internet import reactor

        reactor.callFromThread(self.auditLog.reopen)  # type: ignore[attr-defined]
        if callable(self._previous):
            self._previous(signum, frame)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        if signal.getsignal(signal.SIGUSR1) == self._onUSR1:
            signal.signal(signal.SIGUSR1, self._previous if self._previous is not None else signal.SIG_DFL)
        self._publisher.removeObserver(self._observer)
        closed = self.auditLog.close()
        return closed if isinstance(closed, Deferred) else None
