"""In-process cost of a keep-alive exchange through the whole gateway, inspection off and on.

    .venv/bin/python dev/inspect_cost.py [-n N] [--profile tottime|cumtime]

A device and an origin speak real TLS to the gateway's connection in memory
(:mod:`tests.corelab`); the device sends a wrk GET, the origin answers with
nginx's 1 KiB response, N times on one connection.  It prints CPU
microseconds (process time) per exchange with the opaque relay and with the
HTTP/1.1 layer: the difference is what inspection adds, without the lab's
system calls and cache misses.  The peers' own TLS work is in both figures.
The audit events go to a list (the test case's observer), not to a text log
(``dev/http1_cost.py`` prices that).  Figures, not tests.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import attrs  # noqa: E402

from etpmitm.gateway.inspect import inspectingLayer  # noqa: E402
from tests.corelab import CoreTestCase  # noqa: E402
from http1_cost import REQUEST, RESPONSE  # noqa: E402  (the same wrk GET and nginx answer)

class _Gateway(CoreTestCase):
    def runTest(self) -> None:
        pass


def exchanges(inspect: bool, n: int, profile: str | None = None) -> float:
    """CPU microseconds per exchange over ``n`` keep-alive exchanges."""
    gateway = _Gateway()
    gateway.setUp()
    try:
        if inspect:
            gateway.settings = attrs.evolve(gateway.settings, layerFor=inspectingLayer(gateway.settings))
        device, origin = gateway.connectDevice(), gateway.acceptTLS()

        def loop() -> None:
            for _ in range(n):
                device.tls.write(REQUEST)
                gateway.net.flush()
                origin.received = b""
                origin.tls.write(RESPONSE)
                gateway.net.flush()
                device.received = b""

        start = time.process_time()
        if profile:
            profiler = cProfile.Profile()
            profiler.runcall(loop)
            pstats.Stats(profiler).sort_stats(profile).print_stats(30)
        else:
            loop()
        return (time.process_time() - start) / n * 1e6
    finally:
        gateway.doCleanups()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("--profile", choices=["tottime", "cumtime"], help="cProfile the inspected run")
    args = parser.parse_args()
    for inspect in (False, True):
        exchanges(inspect, 500)  # warm up
    off, on = exchanges(False, args.n), exchanges(True, args.n)
    print(f"opaque relay       {off:7.1f} us/exchange")
    print(f"HTTP/1.1 layer     {on:7.1f} us/exchange")
    print(f"inspection adds    {on - off:7.1f} us/exchange")
    if args.profile:
        exchanges(True, args.n, args.profile)


if __name__ == "__main__":
    main()
