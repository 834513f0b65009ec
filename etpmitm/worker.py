"""``python -m etpmitm.worker``: one worker of ``twistd etpmitm --workers N``.

The master starts it with its own options and the inherited sockets
(``--worker-listen FD:BACKLOG``); see :mod:`etpmitm.workers`.  It logs each
event as a JSON line on its standard output, a pipe that the master reads
and logs through its own observers (``--logfile``, ``--syslog``, daemon mode).
"""

import atexit
import json
import os
import signal
import sys
import threading
from typing import Any

from twisted.logger import ILogObserver, LogEvent, LogLevel, eventAsJSON
from twisted.scripts.twistd import run
from zope.interface import implementer


AUDIT_MARK = "\x1e"
"""Starts a line that carries an audit event as plain JSON (see :func:`encodeEvent`)."""
_AUDIT_NAMESPACES = frozenset({"etpmitm.audit", "etpmitm.audit.request"})
_NOT_SENT = frozenset({"log_logger", "log_source", "log_level"})


def encodeEvent(event: LogEvent) -> str:
    """One event as one line for the master (without the newline).

    Audit events (one per connection and one per request, the bulk of a
    busy worker's log) hold only plain values: they go as :data:`AUDIT_MARK`
    and a flat JSON object, which costs a fraction of Twisted's
    ``eventAsJSON`` (that flattens the format and hooks every object) both
    here and in the master (:func:`etpmitm.workers.decodeEvent`).  Any other
    event goes as ``eventAsJSON``.
    """
    if event.get("log_namespace") in _AUDIT_NAMESPACES:
        level = event.get("log_level")
        plain = {key: value for key, value in event.items() if key not in _NOT_SENT}
        plain["log_level"] = getattr(level, "name", None)  # a LogLevel constant
        return AUDIT_MARK + json.dumps(plain, default=str, separators=(",", ":"))
    return eventAsJSON(event)


@implementer(ILogObserver)
class ToMaster:
    """Writes each event as a line (:func:`encodeEvent`) to ``fd``, a pipe to the master.

    A busy worker logs an audit event per request: a write (and a wake-up of
    the master) per event would cost more than the event itself.  So lines
    wait up to :attr:`DELAY` seconds and go in one write, unless the reactor
    is not running (start-up, shutdown), the event is an error or worse (it
    may be the last before a crash), 64 KiB are waiting, or the event comes
    from another thread (written at once: a line under ``PIPE_BUF`` is
    atomic).
    """

    LIMIT = 65536
    DELAY = 0.05

    def __init__(self, fd: int = 1, reactor: Any = None) -> None:
        self._fd = fd
        self._reactor = reactor
        self._lines: list[str] = []
        self._size = 0
        self._scheduled = False
        atexit.register(self.flush)

    def __call__(self, event: LogEvent) -> None:
        line = encodeEvent(event) + "\n"
        if threading.current_thread() is not threading.main_thread():
            self._write(line)
            return
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor as installed  # twistd has installed it by now

            reactor = self._reactor = installed
            reactor.addSystemEventTrigger("after", "shutdown", self.flush)
        self._lines.append(line)
        self._size += len(line)
        level = event.get("log_level")
        if (
            not reactor.running or self._size >= self.LIMIT
            or level is LogLevel.error or level is LogLevel.critical
        ):
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            reactor.callLater(self.DELAY, self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if self._lines:
            text = "".join(self._lines)
            self._lines.clear()
            self._size = 0
            self._write(text)

    def _write(self, text: str) -> None:
        data = text.encode("utf-8", "replace")
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except OSError:
            pass  # the master is gone: the worker stops when its stdin ends


def logToMaster() -> ILogObserver:
    """twistd ``--logger``: one line per event, to the master (standard output)."""
    return ToMaster()


def main() -> None:
    # SIGUSR1 reopens the master's --audit-log; a worker has nothing to reopen,
    # and must survive a "systemctl kill -s USR1" that reaches every process.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    sys.argv = ["twistd", "-n", "--pidfile=", "--logger=etpmitm.worker.logToMaster", "etpmitm", *sys.argv[1:]]
    run()


if __name__ == "__main__":
    main()
