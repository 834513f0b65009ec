"""In-process cost of the HTTP/2 layer per request, and its memory per idle connection.

    .venv/bin/python dev/h2_cost.py [-n N] [--streams M] [--idle K] [--profile OUT.txt]

An h2 client (the device) and an h2 server (the origin, answering a 1 KiB
body) talk through :class:`etpmitm.gateway.http2.HTTP2Layer` in memory, M
streams at a time like ``h2load -m M``; it prints CPU microseconds (process
time) per request: the whole loop, and the client and server's own share,
measured without the layer.  ``--idle K`` opens K connections through the
layer, handshaken, and prints tracemalloc's bytes per connection (the layer
and its two h2 connections).  Figures, not tests.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

from etpmitm.gateway.http2 import HTTP2Layer  # noqa: E402

BODY = b"x" * 1024
REQUEST = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"origin.test"), (b":path", b"/1k"),
           (b"user-agent", b"h2load nghttp2/1.52.0")]
RESPONSE = [(b":status", b"200"), (b"server", b"nginx/1.22.1"), (b"date", b"Mon, 30 Nov 2026 05:00:00 GMT"),
            (b"content-type", b"application/octet-stream"), (b"content-length", b"1024"),
            (b"last-modified", b"Mon, 30 Nov 2026 04:00:00 GMT"), (b"etag", b'"abc-400"'),
            (b"accept-ranges", b"bytes")]


class Wire:
    """The layer's link: bytes it sends are queued for the peers."""

    def __init__(self) -> None:
        self.toDeviceQ: list[bytes] = []
        self.toOriginQ: list[bytes] = []

    def toOrigin(self, data: bytes) -> None: self.toOriginQ.append(data)
    def toDevice(self, data: bytes) -> None: self.toDeviceQ.append(data)
    def endToOrigin(self, clean: bool = True) -> None: pass
    def endToDevice(self, clean: bool = True) -> None: pass
    def pauseReading(self, side: str) -> None: pass
    def resumeReading(self, side: str) -> None: pass
    def fail(self, reason: str) -> None: raise AssertionError(reason)
    def note(self, text: str) -> None: pass
    def close(self, reason: str) -> None: pass
    def abort(self, reason: str) -> None: raise AssertionError(reason)


class Ends:
    """A device (h2 client) and an origin (h2 server), with or without the layer between."""

    def __init__(self, layered: bool) -> None:
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.wire = Wire()
        self.layer = HTTP2Layer("c", Clock()) if layered else None
        if self.layer is not None:
            self.layer.start(self.wire)  # type: ignore[arg-type]
        self.client.initiate_connection()
        self.server.initiate_connection()
        self.done = 0
        self.pump()

    def pump(self) -> None:
        moved = True
        while moved:
            moved = False
            if data := self.client.data_to_send():
                moved = True
                if self.layer is None:
                    self.onServer(self.server.receive_data(data))
                else:
                    self.layer.deviceData(data)
            if data := self.server.data_to_send():
                moved = True
                if self.layer is None:
                    self.onClient(self.client.receive_data(data))
                else:
                    self.layer.originData(data)
            if self.layer is not None:
                q, self.wire.toOriginQ = self.wire.toOriginQ, []
                for data in q:
                    moved = True
                    self.onServer(self.server.receive_data(data))
                q, self.wire.toDeviceQ = self.wire.toDeviceQ, []
                for data in q:
                    moved = True
                    self.onClient(self.client.receive_data(data))

    def onServer(self, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self.server.send_headers(event.stream_id, RESPONSE)
                self.server.send_data(event.stream_id, BODY, end_stream=True)
            elif isinstance(event, h2.events.DataReceived):
                self.server.acknowledge_received_data(event.flow_controlled_length, event.stream_id)

    def onClient(self, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                self.client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.done += 1

    def batch(self, streams: int) -> None:
        for _ in range(streams):
            self.client.send_headers(self.client.get_next_available_stream_id(), REQUEST, end_stream=True)
        self.pump()


def perRequest(layered: bool, n: int, streams: int) -> float:
    ends = Ends(layered)
    start = time.process_time()
    for _ in range(n // streams):
        ends.batch(streams)
    assert ends.done == n // streams * streams, ends.done
    return (time.process_time() - start) / ends.done * 1e6


def idle(k: int) -> float:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = [Ends(layered=True) for _ in range(k)]
    for ends in kept:  # only the layer counts: drop the peers' share
        ends.client = ends.server = None  # type: ignore[assignment]
    gc.collect()
    layers = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return layers / k


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--idle", type=int, default=200)
    parser.add_argument("--profile", type=Path, help="cProfile the layered run into this text file")
    args = parser.parse_args()
    perRequest(True, 500, args.streams)
    both = perRequest(True, args.n, args.streams)
    peers = perRequest(False, args.n, args.streams)
    print(f"device+layer+origin   {both:7.1f} us/request")
    print(f"device+origin alone   {peers:7.1f} us/request")
    print(f"the layer             {both - peers:7.1f} us/request (difference)")
    print(f"idle connection       {idle(args.idle) / 1024:7.1f} KiB (layer and its two h2 connections)")
    if args.profile:
        import cProfile
        import pstats

        profile = cProfile.Profile()
        profile.runcall(perRequest, True, args.n, args.streams)
        with args.profile.open("w") as f:
            pstats.Stats(profile, stream=f).sort_stats("tottime").print_stats(40)


if __name__ == "__main__":
    main()
