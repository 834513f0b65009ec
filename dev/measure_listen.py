"""Lab figures for issue 9, items 5 and 9 (run as root; never in CI).

    python dev/measure_listen.py burst      # 2,000 connects at once
    python dev/measure_listen.py crashloop  # new connections while a worker crash-loops

It runs the gateway from the source tree it sits in (tests/lab.py's REPO),
so copying dev/ and tests/ into an older checkout measures that one.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.gatewaylab import GatewayLab, burst, listen_backlogs, listen_overflows, quoted  # noqa: E402
from tests.lab import Lab  # noqa: E402
from tests.test_workers_e2e import live_children, wait_until  # noqa: E402


def lab(*args: str) -> GatewayLab:
    env = GatewayLab(dports=[443])
    env.lab.gateway.run(["sysctl", "-q", "-w", "net.core.somaxconn=4096"])
    cert, key = env.public.issue(["origin.test"], [Lab.origin_ip])
    env.origin(443, [cert, env.public.intermediate], key)
    env.start_gateway(*args)
    return env


def measure_burst(workers: str, count: int = 2000) -> dict[str, object]:
    env = lab("--workers", workers)
    try:
        assert env.gateway is not None
        wait_until(lambda: workers == "1" or len(live_children(env.gateway.pid)) == int(workers))  # type: ignore[union-attr]
        before = listen_overflows(env.lab.gateway)
        result = burst(env.lab.client, Lab.origin_ip, 443, count)
        result["ListenOverflows"] = listen_overflows(env.lab.gateway) - before
        result["backlogs"] = listen_backlogs(env.lab.gateway, 8443)
        result["workers"] = workers
        return result
    finally:
        env.close()


def measure_crashloop(count: int = 40, max_time: int = 5) -> dict[str, object]:
    """Kill one worker and every worker that replaces it, while a client makes
    ``count`` new connections one after another (curl --max-time)."""
    env = lab("--workers", "2")
    try:
        assert env.gateway is not None
        master = env.gateway.pid
        wait_until(lambda: len(live_children(master)) == 2)
        survivor, victim = live_children(master)
        stop = threading.Event()
        kills = []

        def crashloop() -> None:
            while not stop.is_set():
                for pid in live_children(master):
                    if pid != survivor:
                        os.kill(pid, signal.SIGKILL)
                        kills.append(pid)
                time.sleep(0.005)

        killer = threading.Thread(target=crashloop)
        killer.start()
        curl = quoted("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}\\n", "--max-time", max_time,
                      "--cacert", env.root, "--resolve", f"origin.test:443:{Lab.origin_ip}", "https://origin.test/")
        loop = f"for i in $(seq {count}); do {curl} 2>/dev/null; echo \"rc=$?\"; done"
        started = time.monotonic()
        done = env.shell(loop, timeout=count * (max_time + 5))
        elapsed = time.monotonic() - started
        stop.set()
        killer.join()
        codes = [line for line in done.stdout.splitlines() if line.startswith("rc=")]
        return {
            "connections": len(codes),
            "ok": codes.count("rc=0"),
            "hung (curl exit 28)": codes.count("rc=28"),
            "other failures": len(codes) - codes.count("rc=0") - codes.count("rc=28"),
            "worker kills": len(kills),
            "seconds": round(elapsed, 1),
        }
    finally:
        env.close()


def main() -> None:
    what = sys.argv[1]
    if what == "burst":
        for workers in ("1", "2"):
            print(json.dumps(measure_burst(workers)))
    elif what == "crashloop":
        print(json.dumps(measure_crashloop()))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
