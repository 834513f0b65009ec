"""The data path's cost alone: CPU per keep-alive request and per MB, and idle memory per connection.

Run from the repository root, as root::

    .venv/bin/python dev/measure_datapath.py [--inspect on|off] [--peer sslsplit] [--tree DIR] [--seconds 5]
                                             [--rounds 3] [--loads keepalive,bulk,new_connections,memory]
                                             [--profile DIR]

A shorter bench/bench.py: the same lab, origin, loads and figures (it calls
bench.py's own functions), but only the loads asked for, with one gateway
process (``--workers 1``), and with each ``--peer`` and each ``--tree`` (other
etpmitm sources: before/after) in its place.  The systems take turns round
by round, so that a machine whose load changes skews them alike.  It prints
one line per system and load: the proxy's CPU per unit (median of the
rounds), its share of a core and the kernel's share of that, and how busy
the machine was; ``memory`` is bench.py's 1,000 idle keep-alive connections
held open through one process, opened and closed twice.
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
from tests.gatewaylab import GATEWAY_PORT  # noqa: E402
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
            fresh = lab.rss()
            bench.settle(2)
            figures["memory"] = bench.memory(lab, settings, fresh)
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


def switch(lab: bench.Bench, system: str, args: list[str]) -> bench.Bench:
    """Stop what serves the proxied path and start ``system`` there: "etpmitm" (this
    tree), "etpmitm@DIR" (the sources in DIR, e.g. a checkout of an older commit) or a peer."""
    if system in peers.PEERS:
        return lab.peer(system)
    peers.stop(lab.gateway)
    env = lab.env
    tree = Path(system.partition("@")[2] or REPO)
    argv: list[str] = [str(Path(sys.executable).parent / "twistd"), "-n", "--pidfile=", "etpmitm",
                       "--ca-dir", str(env.ca_dir), "--upstream-trust", str(env.trust),
                       "--listen", f"tcp6:{GATEWAY_PORT}:interface=\\:\\:", *args]
    process = env.lab.gateway.popen(argv, env={"PYTHONPATH": str(tree)}, cwd=env.lab.workdir)
    env.gateway = process
    env.lab.gateway.wait_for_port(GATEWAY_PORT, proc=process, timeout=30)
    fresh = bench.Bench(env, lab.origin, process, "etpmitm", env.root)
    fresh.curl(fresh.proxied, bench.SMALL_PATH, "-w", "%{http_code}")  # mints the leaf
    return fresh


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--inspect", choices=("on", "off"), default="off")
    parser.add_argument("--peer", action="append", default=[], choices=sorted(peers.PEERS))
    parser.add_argument("--tree", action="append", default=[], metavar="DIR",
                        help="also measure the etpmitm sources in DIR (e.g. a worktree at an older commit)")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loads", default="keepalive,bulk")
    parser.add_argument("--profile", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    loads = [load for load in args.loads.split(",") if load != "memory"]
    settings = replace(bench.Settings(), duration=args.seconds, rounds=1, workers="1",
                       inspect=args.inspect, profile=args.profile, slow_seconds=2)
    systems = ["etpmitm", *(f"etpmitm@{tree}" for tree in args.tree), *args.peer]
    busy = {"before": bench.busy_fraction()}
    results: dict[str, Any] = {system: {} for system in systems}
    with bench.bench_lab(settings) as lab:
        gatewayArgs = [*bench.bench_policy(lab.env.lab.workdir, False, args.inspect), "--workers=1"]
        for round_ in range(args.rounds):  # the systems take turns, round by round
            for system in systems:
                if round_ or system != "etpmitm":
                    lab = switch(lab, system, gatewayArgs)
                profile = settings.profile if system == "etpmitm" and round_ == args.rounds - 1 else None
                for load, f in measure(lab, replace(settings, profile=profile), loads).items():
                    into = results[system].setdefault(load, {**f, "samples": [], "core_shares": [], "kernel_shares": []})
                    into["samples"] += f["samples"]
                    into["core_shares"].append(f["core_share"])
                    into["kernel_shares"].append(f["kernel_share"])
        if "memory" in args.loads.split(","):
            for system in systems:
                lab = switch(lab, system, gatewayArgs)
                results[system].update(measure(lab, settings, ["memory"]))
    busy["after"] = bench.busy_fraction()
    print(f"\ninspect {args.inspect}; machine busy {busy['before']:.0%} before, {busy['after']:.0%} after")
    for system, figures in results.items():
        for load, f in figures.items():
            if load == "memory":
                print(f"  {system:9} memory: idle {f['rss_idle_start_kib'] / 1024:.1f} MiB fresh, "
                      f"{f['rss_per_connection_kib']:.1f} KiB per open connection, "
                      f"after close {f['rss_after_close_kib'] / 1024:.1f} MiB (open {f['rss_open_kib'] / 1024:.1f}; "
                      f"second cycle {f['rss_open_second_cycle_kib'] / 1024:.1f} / {f['rss_after_second_close_kib'] / 1024:.1f})")
            else:
                f["median"] = statistics.median(f["samples"])
                print(f"  {system:9} {load:16} {f['median']:8.2f} {f['unit']} (rounds {', '.join(f'{s:.2f}' for s in f['samples'])}; "
                      f"{statistics.median(f['core_shares']):.0%} of a core, "
                      f"{statistics.median(f['kernel_shares']):.0%} of it in the kernel)"
                      f"{'' if f['intercepted'] else ' NOT INTERCEPTED'}")
    if args.json:
        args.json.write_text(json.dumps({"busy": busy, "results": results}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
