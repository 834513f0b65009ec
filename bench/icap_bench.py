"""RESPMOD throughput: a 256 MiB download through the gateway with ICAP off and on, in one run.

Run from the repository root, as root (it builds network namespaces)::

    .venv/bin/python bench/icap_bench.py [--rounds 3] [--size-mib 256] [--json OUT]

The lab is bench.py's (nginx in the origin namespace, ``twistd etpmitm`` in
the gateway namespace, one worker, HTTP inspection on), plus c-icap and
clamd (tests/icaplab.py) in the gateway namespace with their size limits
raised to 300M so that the whole body is scanned.  The file is random bytes.
Each round downloads it once per mode, the order alternating:

* direct: curl straight to nginx (no gateway), for reference;
* off: through the gateway, policy without ``[icap]``;
* on: through the gateway with ``[icap] respmod`` = c-icap's virus_scan
  (``max_size = "300MiB"``): the gateway spools the response, streams it to
  c-icap (which hands it to clamd), and releases it to the device on the 204.

The gateway switches modes by SIGHUP (a policy reload), so both gateway
figures come from the same process.  One more download of the same file with
EICAR appended must be blocked: proof that bodies of this size are really
scanned to the end.  Figures: MB/s (1 MB = 10^6 bytes) of the whole
download as the device sees it (curl's time_total), and CPU milliseconds per
MB of the gateway (and, with ICAP on, of c-icap + clamd).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench as lab  # noqa: E402
from tests.icaplab import IcapLab, eicar  # noqa: E402

MB = 1_000_000


def write_file(path: Path, size: int, tail: bytes = b"") -> None:
    """``size`` random bytes (then ``tail``), written 1 MiB at a time."""
    with path.open("wb") as f:
        left = size
        while left:
            piece = os.urandom(min(left, 1 << 20))
            f.write(piece)
            left -= len(piece)
        f.write(tail)


def cpu_of(pids: list[int]) -> float:
    return sum(lab.cpu_seconds(pid) for pid in pids)


class IcapBench:
    def __init__(self, bench: lab.Bench, icap: IcapLab, base_policy: str) -> None:
        self.bench = bench
        self.icap = icap
        self.base = base_policy
        self.policy = bench.env.lab.workdir / "bench-policy.toml"

    def use(self, scanning: bool) -> None:
        """Reload the gateway with ICAP on or off; wait for its log line."""
        text = self.base
        if scanning:
            text += (f'\n[icap]\nrespmod = "{self.icap.url}"\nmax_size = "300MiB"\n'
                     'on_error = "block"\ntimeout = 600\n')
        before = self.bench.env.log().count("policy reloaded")
        self.policy.write_text(text)
        os.kill(self.bench.gateway.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while self.bench.env.log().count("policy reloaded") <= before:
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway did not reload its policy:\n" + self.bench.env.log()[-3000:])
            time.sleep(0.05)

    def scanners(self) -> list[int]:
        assert self.icap.cicap is not None and self.icap.clamd is not None
        return [*lab.with_children(self.icap.cicap.pid), self.icap.clamd.pid]

    def respmods(self) -> int:
        return self.icap.access_log.read_text().count("RESPMOD")

    def download(self, target: lab.Target, path: str, size: int) -> dict[str, Any]:
        scanners = self.scanners()
        gateway0, scan0 = self.bench.cpu(), cpu_of(scanners)
        out = self.bench.curl(target, path, "--http1.1", "-w", "%{size_download} %{time_total} %{http_code}",
                              timeout=900)
        gateway1, scan1 = self.bench.cpu(), cpu_of(scanners)
        got, seconds, status = out.split()
        if (int(got), status) != (size, "200"):
            raise RuntimeError(f"{target.name} {path}: {got} bytes, status {status}; expected {size}, 200")
        mb = size / MB
        return {
            "mb_per_s": mb / float(seconds),
            "seconds": float(seconds),
            "gateway_cpu_ms_per_mb": 1000 * (gateway1.gateway - gateway0.gateway) / mb,
            "scanner_cpu_ms_per_mb": 1000 * (scan1 - scan0) / mb,
        }


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = args.size_mib << 20
    settings = lab.Settings(rounds=args.rounds, workers="1", inspect="on")
    results: dict[str, list[dict[str, Any]]] = {"direct": [], "off": [], "on": []}
    with lab.bench_lab(settings) as bench:
        work = bench.env.lab.workdir
        write_file(work / "www" / "big", size)
        write_file(work / "www" / "big-eicar", size, eicar())
        icap = IcapLab(bench.env.lab.gateway, work / "icap", max_size="300M")
        icap.start()
        try:
            runner = IcapBench(bench, icap, (work / "bench-policy.toml").read_text())
            for round_ in range(args.rounds):
                modes = ["off", "on"] if round_ % 2 == 0 else ["on", "off"]
                for mode in ["direct", *modes]:
                    target = bench.direct if mode == "direct" else bench.proxied
                    if mode != "direct":
                        runner.use(mode == "on")
                    before = runner.respmods()
                    result = runner.download(target, "/big", size)
                    scanned = runner.respmods() - before
                    if scanned != (1 if mode == "on" else 0):
                        raise RuntimeError(f"{mode}: c-icap logged {scanned} RESPMOD for the download")
                    results[mode].append(result)
                    print(f"  round {round_ + 1} {mode:6}: {result['mb_per_s']:7.1f} MB/s in {result['seconds']:.2f}s, "
                          f"gateway {result['gateway_cpu_ms_per_mb']:.2f} ms CPU/MB, "
                          f"c-icap+clamd {result['scanner_cpu_ms_per_mb']:.2f} ms CPU/MB", flush=True)
            runner.use(True)
            out = bench.curl(bench.proxied, "/big-eicar", "--http1.1", "-w", "%{http_code}", timeout=900)
            if out.strip() != "403":
                raise RuntimeError(f"{size} bytes + EICAR came through ({out.strip()}): not scanned to the end")
            print(f"  {args.size_mib} MiB + EICAR: blocked (403)", flush=True)
        finally:
            icap.stop()
    summary = {
        mode: {key: statistics.median(r[key] for r in rows) for key in rows[0]} for mode, rows in results.items()
    }
    return {"size_bytes": size, "rounds": args.rounds, "median": summary, "samples": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    if args.size_mib >= 290:
        parser.error("--size-mib must stay below the lab's 300M scan limits")
    busy = lab.busy_fraction()
    report = run(args)
    report["background_busy"] = busy
    median = report["median"]
    print(f"\n{args.size_mib} MiB download, HTTP/1.1, one connection; median of {args.rounds} rounds; "
          f"background CPU busy before the run {100 * busy:.0f} %")
    print(f"{'':10}{'MB/s':>8}{'gateway ms CPU/MB':>20}{'c-icap+clamd ms CPU/MB':>25}")
    for mode, label in (("direct", "direct"), ("off", "ICAP off"), ("on", "ICAP on")):
        m = median[mode]
        print(f"{label:10}{m['mb_per_s']:8.1f}{m['gateway_cpu_ms_per_mb']:20.2f}{m['scanner_cpu_ms_per_mb']:25.2f}")
    print(f"ICAP on / off: {median['on']['mb_per_s'] / median['off']['mb_per_s']:.2f} of the throughput")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
