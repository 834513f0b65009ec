"""``python3 burst.py HOST PORT COUNT``: open COUNT TCP connections at once
and print, as JSON, how many connected, failed or were still pending after
``--timeout`` seconds, and how many took 1 s or more (a SYN retry: the
listener's queue overflowed).  Run in the lab's client namespace."""

from __future__ import annotations

import argparse
import errno
import json
import resource
import selectors
import socket
import time


def burst(host: str, port: int, count: int, timeout: float) -> dict[str, object]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    selector = selectors.DefaultSelector()
    started = time.monotonic()
    sockets = []
    for _ in range(count):
        skt = socket.socket(family, socket.SOCK_STREAM)
        skt.setblocking(False)
        skt.connect_ex((host, port))
        selector.register(skt, selectors.EVENT_WRITE)
        sockets.append(skt)
    took: list[float] = []
    errors: dict[str, int] = {}
    deadline = started + timeout
    while len(took) + sum(errors.values()) < count and time.monotonic() < deadline:
        for key, _ in selector.select(max(0.0, deadline - time.monotonic())):
            skt = key.fileobj
            assert isinstance(skt, socket.socket)
            selector.unregister(skt)
            error = skt.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error == 0:
                took.append(time.monotonic() - started)
            else:
                name = errno.errorcode.get(error, str(error))
                errors[name] = errors.get(name, 0) + 1
    for skt in sockets:
        skt.close()
    return {
        "count": count,
        "connected": len(took),
        "failed": errors,
        "pending": count - len(took) - sum(errors.values()),
        "delayed_1s": sum(1 for t in took if t >= 1.0),
        "slowest_s": round(max(took, default=0.0), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    print(json.dumps(burst(args.host, args.port, args.count, args.timeout)))


if __name__ == "__main__":
    main()
