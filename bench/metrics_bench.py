"""What ``--metrics`` costs per event, in-process: no metrics, one process, multiprocess files.

    .venv/bin/python bench/metrics_bench.py [--number N]

Each mode runs in its own interpreter (prometheus_client picks its value
class once per process).  Prints microseconds per call of the hot-path
reports: a connection's end (its audit record: one counter, the open gauge,
a verdict, two byte counters), a handshake observation, a request's end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = """
import json, sys, timeit
from prometheus_client import CollectorRegistry
from etpmitm import metrics
from etpmitm.audit import ConnectionRecord
from etpmitm.http import RequestHead, RequestRecord
mode, number = sys.argv[1], int(sys.argv[2])
if mode == "multiprocess":
    metrics.useDirectory(sys.argv[3])
if mode != "off":
    metrics.install(metrics.PrometheusMetrics(CollectorRegistry(), None))
m = metrics.current
record = ConnectionRecord("10.0.0.2:1", "10.0.0.3:443", 0.0, action="intercept", origin_verdict="ok", bytes_up=500, bytes_down=5000)
request = RequestRecord("c", 1, "http/1.1", RequestHead("GET", "a.example", "/"), 0.0, status=200, duration=0.05)
def per_call(statement):
    return min(timeit.repeat(statement, number=number, repeat=5, globals=globals())) / number * 1e6
print(json.dumps({
    "connection_opened_and_ended": per_call("m.connectionOpened(); m.connectionEnded(record)"),
    "handshake": per_call("m.handshake('origin', 0.01)"),
    "request_ended": per_call("m.requestEnded(request)"),
}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--number", type=int, default=20000)
    args = parser.parse_args()
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    with tempfile.TemporaryDirectory(prefix="etpmitm-metrics-bench-") as directory:
        for mode in ("off", "memory", "multiprocess"):
            done = subprocess.run([sys.executable, "-c", CHILD, mode, str(args.number), directory],
                                  env={"PYTHONPATH": str(REPO)}, capture_output=True, text=True, check=True)
            figures = json.loads(done.stdout)
            print(f"{mode:>12}: " + ", ".join(f"{k} {v:.2f} us" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
