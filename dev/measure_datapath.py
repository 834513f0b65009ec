"""The data path's cost alone: CPU per keep-alive request and per MB, and idle memory per connection.

Run from the repository root, as root::

    .venv/bin/python dev/measure_datapath.py [--inspect on|off] [--peer sslsplit] [--seconds 5] [--rounds 3]
                                             [--loads keepalive,bulk,new_connections,memory] [--profile DIR]

A shorter bench/bench.py: the same lab, origin, loads and figures (it calls
bench.py's own functions), but only the loads asked for, with one gateway
process (``--workers 1``), then the same through each ``--peer`` in its
place.  It prints one line per system and load: the proxy's CPU per unit
(median of the rounds) and how busy the machine was; ``memory`` is bench.py's
1,000 idle keep-alive connections held open through one process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

import bench  # noqa: E402  (bench/bench.py)
import peers  # noqa: E402  (bench/peers.py)

LOADS = {
    "new_connections": (bench.new_connections, 1000.0, "ms per new connection"),
    "keepalive": (bench.keepalive, 1.0, "us per keep-alive request"),
    "bulk": (bench.bulk, 1000.0, "ms per MB"),
}


def user_system(lab: bench.Bench) -> tuple[float, float]:
    """User and system CPU seconds of the proxy's processes so far."""
    user = system = 0.0
    for pid in bench.with_children(lab.gateway.pid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except FileNotFoundError:
            continue
        user += int(fields[11]) / bench.CLOCK_TICKS
        system += int(fields[12]) / bench.CLOCK_TICKS
    return user, system


def measure(lab: bench.Bench, settings: bench.Settings, loads: list[str]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for load in loads:
        if load == "memory":
            bench.settle(2)
            figures["memory"] = bench.memory(lab, settings, lab.rss())
            continue
        step, scale, unit = LOADS[load]
        user0, system0 = user_system(lab)
        comparison = step(lab, settings)
        user1, system1 = user_system(lab)
        samples = comparison.cpu["proxied_gateway_us_per_request"]
        figures[load] = {"unit": unit, "median": statistics.median(samples) / scale,
                         "samples": [s / scale for s in samples], "rate": comparison.proxied,
                         "core_share": statistics.median(comparison.cpu["proxied_gateway_core_share"]),
                         "notes": comparison.notes, "intercepted": comparison.intercepted,
                         "kernel_share": (system1 - system0) / max(1e-9, user1 - user0 + system1 - system0)}
        bench.settle()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--inspect", choices=("on", "off"), default="off")
    parser.add_argument("--peer", action="append", default=[], choices=sorted(peers.PEERS))
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loads", default="keepalive,bulk")
    parser.add_argument("--profile", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    loads = args.loads.split(",")
    settings = replace(bench.Settings(), duration=args.seconds, rounds=args.rounds, workers="1",
                       inspect=args.inspect, profile=args.profile, slow_seconds=2)
    busy = {"before": bench.busy_fraction()}
    results: dict[str, Any] = {}
    with bench.bench_lab(settings) as lab:
        results["etpmitm"] = measure(lab, settings, loads)
        for name in args.peer:
            lab = lab.peer(name)
            results[name] = measure(lab, replace(settings, profile=None), loads)
    busy["after"] = bench.busy_fraction()
    print(f"\ninspect {args.inspect}; machine busy {busy['before']:.0%} before, {busy['after']:.0%} after")
    for system, figures in results.items():
        for load, f in figures.items():
            if load == "memory":
                print(f"  {system:9} memory: idle {f['rss_idle_kib'] / 1024:.1f} MiB, "
                      f"{f['rss_per_connection_kib']:.1f} KiB per open connection, "
                      f"after close {f['rss_after_close_kib'] / 1024:.1f} MiB (open {f['rss_open_kib'] / 1024:.1f})")
            else:
                print(f"  {system:9} {load:16} {f['median']:8.2f} {f['unit']} (rounds {', '.join(f'{s:.2f}' for s in f['samples'])}; "
                      f"{f['core_share']:.0%} of a core, {f['kernel_share']:.0%} of it in the kernel)"
                      f"{'' if f['intercepted'] else ' NOT INTERCEPTED'}")
    if args.json:
        args.json.write_text(json.dumps({"busy": busy, "results": results}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
