"""In-process cost of the HTTP/1.1 inspection path, per keep-alive exchange.

    .venv/bin/python dev/http1_cost.py [-n N] [--profile OUT.txt]

Feeds the observer (and the layer, and the audit event through the worker's
JSON logger) the bytes of a wrk GET and an nginx 1 KiB response, N times, and
prints CPU microseconds (process time) per exchange for each stage.  Figures, not tests.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.task import Clock  # noqa: E402
from twisted.logger import FileLogObserver, LogPublisher, eventAsJSON, formatEventAsClassicLogText  # noqa: E402

try:
    from etpmitm.worker import encodeEvent
except ImportError:  # a checkout from before it (for the "before" figures)
    encodeEvent = eventAsJSON

REQUEST = b"GET /1k HTTP/1.1\r\nHost: origin.test\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 30 Nov 2026 05:00:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
    b"Last-Modified: Mon, 30 Nov 2026 04:00:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "abc-400"\r\nAccept-Ranges: bytes\r\n\r\n' + b"x" * 1024
)


class Link:
    def toOrigin(self, data: bytes) -> None: pass
    def toDevice(self, data: bytes) -> None: pass
    def endToOrigin(self, clean: bool = True) -> None: pass
    def endToDevice(self, clean: bool = True) -> None: pass
    def pauseReading(self, side: str) -> None: pass
    def resumeReading(self, side: str) -> None: pass
    def fail(self, reason: str) -> None: pass
    def note(self, text: str) -> None: pass
    def close(self, reason: str) -> None: pass
    def abort(self, reason: str) -> None: pass


def observer(n: int) -> float:
    from etpmitm.http1 import HTTP1Observer

    o = HTTP1Observer()
    start = time.process_time()
    for _ in range(n):
        o.device(REQUEST)
        o.origin(RESPONSE)
    return (time.process_time() - start) / n * 1e6


def layer(n: int, sink: str) -> float:
    from etpmitm.audit import ConnectionRecord
    from etpmitm.gateway.http1 import HTTP1Layer
    from twisted.logger import globalLogPublisher

    out = io.StringIO()
    observers = []
    if sink == "json":  # what a worker does with every event
        observers.append(FileLogObserver(out, lambda e: encodeEvent(e) + "\n"))
    elif sink == "text":
        observers.append(FileLogObserver(out, formatEventAsClassicLogText))
    for o in observers:
        globalLogPublisher.addObserver(o)
    try:
        layer = HTTP1Layer(ConnectionRecord("10.0.0.1:1", "10.0.0.2:443", 0.0), Clock())
        layer.start(Link())
        start = time.process_time()
        for _ in range(n):
            layer.deviceData(REQUEST)
            layer.originData(RESPONSE)
            out.seek(0)
            out.truncate()
        return (time.process_time() - start) / n * 1e6
    finally:
        for o in observers:
            globalLogPublisher.removeObserver(o)


def master(n: int) -> float:
    """The master's side of one worker event: decode, text log, audit line."""
    from etpmitm.auditlog import auditRecord
    from etpmitm.audit import ConnectionRecord
    from etpmitm.gateway.http1 import HTTP1Layer
    from twisted.logger import globalLogPublisher

    lines: list[str] = []
    capture = lambda e: lines.append(encodeEvent(e))  # noqa: E731
    globalLogPublisher.addObserver(capture)
    layer = HTTP1Layer(ConnectionRecord("10.0.0.1:1", "10.0.0.2:443", 0.0), Clock())
    layer.start(Link())
    layer.deviceData(REQUEST)
    layer.originData(RESPONSE)
    globalLogPublisher.removeObserver(capture)
    line = lines[-1].encode()

    import json
    from etpmitm.workers import WorkerPool

    out = io.StringIO()
    publisher = LogPublisher(FileLogObserver(out, formatEventAsClassicLogText),
                             lambda e: json.dumps(auditRecord(e), default=str, separators=(",", ":")))
    pool = WorkerPool.__new__(WorkerPool)
    pool._observer = publisher  # type: ignore[attr-defined]
    start = time.process_time()
    for _ in range(n):
        pool.workerLogged(None, line)  # type: ignore[arg-type]
        out.seek(0)
        out.truncate()
    return (time.process_time() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20000)
    parser.add_argument("--profile", type=Path, help="cProfile the layer+json run into this text file")
    args = parser.parse_args()
    observer(1000)
    print(f"observer only          {observer(args.n):7.1f} us/exchange")
    print(f"layer, no log observer {layer(args.n, 'none'):7.1f} us/exchange")
    print(f"layer + worker JSON    {layer(args.n, 'json'):7.1f} us/exchange")
    print(f"layer + text log       {layer(args.n, 'text'):7.1f} us/exchange")
    print(f"master, per event      {master(args.n):7.1f} us/event")
    if args.profile:
        import cProfile
        import pstats

        profile = cProfile.Profile()
        profile.runcall(layer, args.n, "json")
        with args.profile.open("w") as f:
            pstats.Stats(profile, stream=f).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
