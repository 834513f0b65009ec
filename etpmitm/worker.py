"""``python -m etpmitm.worker``: one worker of ``twistd etpmitm --workers N``.

The master starts it with its own options and the inherited sockets
(``--worker-listen FD``); see :mod:`etpmitm.workers`.
"""

import sys

from twisted.scripts.twistd import run


def main() -> None:
    sys.argv = ["twistd", "-n", "--pidfile=", "etpmitm", *sys.argv[1:]]
    run()


if __name__ == "__main__":
    main()
