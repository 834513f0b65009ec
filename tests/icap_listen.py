"""Run tests/icapserver.py's misbehaving ICAP server as real TCP listeners (for lab tests).

    python -m tests.icap_listen 127.0.0.1 1345:stall 1346:garbage ...

Each PORT:BEHAVIOUR listens on the address with that ``behaviour`` of
:class:`tests.icapserver.IcapServerProtocol` (stall, garbage,
wrong-encapsulated, truncate, ...).  It prints ``ready`` once all listen.
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.internet.interfaces import IReactorCore, IReactorTCP
from twisted.internet.protocol import Factory

from tests.icapserver import ServerLog, server_factory


def main(argv: list[str]) -> None:
    address, *listeners = argv
    log = ServerLog()
    for listener in listeners:
        port, _, behaviour = listener.partition(":")
        factory = Factory.forProtocol(server_factory(log, behaviour))  # type: ignore[arg-type]
        IReactorTCP(reactor).listenTCP(int(port), factory, interface=address)
    print("ready", flush=True)
    IReactorCore(reactor).run()


if __name__ == "__main__":
    main(sys.argv[1:])
