"""Run the ICAP client once per job inside a lab namespace; print JSON results.

    python -m tests.icap_scan SETTINGS_JSON JOBS_JSON

SETTINGS_JSON: keyword arguments of IcapSettings (service URLs as strings).
JOBS_JSON: a list of {"kind", "body", "size"}; body is "eicar", "none", "clean"
(size bytes of a pattern) or "clean+eicar" (EICAR after them).
Each result line is the ScanResult as JSON, plus ``peak``: the most memory
Python allocated (tracemalloc) while that scan ran, and ``body_size``.
"""

from __future__ import annotations

import json
import sys
import tracemalloc
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred

from etpmitm.icap.client import IcapScanner
from etpmitm.icap.settings import IcapSettings, parse_service_url, parse_size
from etpmitm.scanning import Message, ScanJob, ScanResult, Spool
from tests.icaplab import eicar

_PATTERN = bytes(range(256)) * 256  # 64 KiB of every byte value


def make_body(kind: str, size: int) -> Spool | None:
    if kind == "none":
        return None
    spool = Spool()
    if kind == "eicar":
        spool.write(eicar())
        return spool
    left = size
    while left > 0:
        piece = _PATTERN[: min(left, len(_PATTERN))]
        spool.write(piece)
        left -= len(piece)
    if kind == "clean+eicar":
        spool.write(eicar())
    return spool


def job_for(spec: dict[str, Any]) -> ScanJob:
    body = make_body(spec["body"], spec.get("size", 0))
    length = str(0 if body is None else body.size).encode()
    if spec["kind"] == "reqmod":
        request = Message(b"POST /upload HTTP/1.1", ((b"Host", b"origin.test"), (b"Content-Length", length)))
        return ScanJob(kind="reqmod", url="https://origin.test/upload", request=request, response=None, body=body)
    request = Message(b"GET /file.bin HTTP/1.1", ((b"Host", b"origin.test"),))
    response = Message(b"HTTP/1.1 200 OK", ((b"Content-Type", b"application/octet-stream"), (b"Content-Length", length)))
    return ScanJob(kind="respmod", url="https://origin.test/file.bin", request=request, response=response, body=body)


def as_json(result: ScanResult) -> dict[str, Any]:
    out: dict[str, Any] = {
        k: getattr(result, k) for k in ("verdict", "outcome", "service", "istag", "threat", "reason", "duration")
    }
    if result.replacement is not None:
        out["replacement"] = {
            "start_line": result.replacement.head.start_line.decode("latin-1"),
            "body": result.replacement.body.decode("latin-1"),
            "is_response": result.replacement.is_response,
        }
    return out


async def main(reactor_: Any, settings_json: str, jobs_json: str) -> None:
    raw = json.loads(settings_json)
    for key in ("reqmod", "respmod"):
        if raw.get(key):
            raw[key] = parse_service_url(raw[key])
    if "max_size" in raw:
        raw["max_size"] = parse_size(raw["max_size"])
    scanner = IcapScanner(IcapSettings(**raw), reactor_)
    for spec in json.loads(jobs_json):
        job = job_for(spec)
        size = 0 if job.body is None else job.body.size
        tracemalloc.start()
        result = await scanner.scan(job)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        if job.body is not None:
            job.body.close()
        print(json.dumps({**as_json(result), "peak": peak, "body_size": size}), flush=True)
    scanner.close()


if __name__ == "__main__":
    task.react(lambda r: Deferred.fromCoroutine(main(r, sys.argv[1], sys.argv[2])))
