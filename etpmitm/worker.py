"""``python -m etpmitm.worker``: one worker of ``twistd etpmitm --workers N``.

The master starts it with its own options and the inherited sockets
(``--worker-listen FD:BACKLOG``); see :mod:`etpmitm.workers`.  It logs each
event as a JSON line on its standard output, a pipe that the master reads
and logs through its own observers (``--logfile``, ``--syslog``, daemon mode).
"""

import signal
import sys

from twisted.logger import FileLogObserver, ILogObserver, eventAsJSON
from twisted.scripts.twistd import run


def logToMaster() -> ILogObserver:
    """twistd ``--logger``: one JSON line per event, to the master."""
    out = open(1, "w", encoding="utf-8", errors="replace", closefd=False)
    return FileLogObserver(out, lambda event: eventAsJSON(event) + "\n")


def main() -> None:
    # SIGUSR1 reopens the master's --audit-log; a worker has nothing to reopen,
    # and must survive a "systemctl kill -s USR1" that reaches every process.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    sys.argv = ["twistd", "-n", "--pidfile=", "--logger=etpmitm.worker.logToMaster", "etpmitm", *sys.argv[1:]]
    run()


if __name__ == "__main__":
    main()
