"""``python -m etpmitm.worker``: one worker of ``twistd etpmitm --workers N``.

The master starts it with its own options and the inherited sockets
(``--worker-listen FD:BACKLOG``); see :mod:`etpmitm.workers`.  It logs each
event as a JSON line on its standard output, a pipe that the master reads
and logs through its own observers (``--logfile``, ``--syslog``, daemon mode).
"""

import json
import signal
import sys

from twisted.logger import FileLogObserver, ILogObserver, LogEvent, eventAsJSON
from twisted.scripts.twistd import run


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


def logToMaster() -> ILogObserver:
    """twistd ``--logger``: one line per event, to the master."""
    out = open(1, "w", encoding="utf-8", errors="replace", closefd=False)
    return FileLogObserver(out, lambda event: encodeEvent(event) + "\n")


def main() -> None:
    # SIGUSR1 reopens the master's --audit-log; a worker has nothing to reopen,
    # and must survive a "systemctl kill -s USR1" that reaches every process.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    sys.argv = ["twistd", "-n", "--pidfile=", "--logger=etpmitm.worker.logToMaster", "etpmitm", *sys.argv[1:]]
    run()


if __name__ == "__main__":
    main()
