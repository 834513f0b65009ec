"""Lab figures for issue 9, item 6 (run as root; never in CI).

    python dev/measure_limits.py hog [GATEWAY-ARGS...]      # one client tries 140 connections, fd limit 256
    python dev/measure_limits.py stalled [GATEWAY-ARGS...]  # RSS with 200 stalled readers, and after they close

It runs the gateway from the source tree it sits in (tests/lab.py's REPO),
so copying dev/ and tests/ into an older checkout measures that one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.gatewaylab import GatewayLab  # noqa: E402
from tests.lab import Lab  # noqa: E402

HOLD = """
import socket, ssl, sys, time
host, cafile, count, path, read = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5] == "read"
context = ssl.create_default_context(cafile=cafile)
held, failed = [], 0
for _ in range(count):
    try:
        s = context.wrap_socket(socket.create_connection((host, 443), timeout=10), server_hostname="origin.test")
        s.sendall(f"GET {path} HTTP/1.1\\r\\nHost: origin.test\\r\\n\\r\\n".encode())
        if read:
            s.recv(4096)
        held.append(s)
    except OSError:
        failed += 1
print(len(held), failed, flush=True)
sys.stdin.readline()
"""


def lab(*args: str) -> GatewayLab:
    env = GatewayLab(dports=[443])
    cert, key = env.public.issue(["origin.test"], [Lab.origin_ip, Lab.origin_ip6])
    env.origin(443, [cert, env.public.intermediate], key, alpn=["http/1.1"])
    env.start_gateway(*args)
    return env


def rss_mib(env: GatewayLab) -> float:
    assert env.gateway is not None
    pids = [env.gateway.pid]
    status = Path(f"/proc/{pids[0]}/status").read_text()
    kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return round(kib / 1024, 1)


def hold(env: GatewayLab, host: str, count: int, path: str, read: bool) -> tuple[object, int, int]:
    proc = env.lab.client.popen(
        ["python3", "-c", HOLD, host, str(env.root), str(count), path, "read" if read else "stall"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    held, failed = (int(n) for n in proc.stdout.readline().split())
    return proc, held, failed


def release(proc: object) -> None:
    proc.stdin.write(b"\n")  # type: ignore[attr-defined]
    proc.stdin.flush()  # type: ignore[attr-defined]
    proc.wait(30)  # type: ignore[attr-defined]


def measure_hog(args: list[str]) -> dict[str, object]:
    """Under a 256-descriptor limit, one client tries to hold 140 connections; can another client still get through?"""
    env = lab("--idle-timeout", "60", *args)
    try:
        assert env.gateway is not None
        env.lab.gateway.run(["prlimit", f"--pid={env.gateway.pid}", "--nofile=256:256"])
        proc, held, failed = hold(env, Lab.origin_ip, 140, "/", read=True)
        other = env.curl("-6", "--resolve", f"origin.test:443:[{Lab.origin_ip6}]", "https://origin.test/", timeout=10)
        result = {"held": held, "refused": failed, "second client served": other.returncode == 0,
                  "second client": other.stdout.strip() or other.stderr.strip()}
        release(proc)
        return result
    finally:
        env.close()


def measure_stalled(args: list[str], count: int = 200) -> dict[str, object]:
    """RSS before, with ``count`` readers stalled on a 1 GiB download, and after they close."""
    env = lab("--idle-timeout", "600", *args)
    try:
        time.sleep(1)
        before = rss_mib(env)
        proc, held, failed = hold(env, Lab.origin_ip, count, "/bytes/1000000000", read=False)
        time.sleep(5)
        stalled = rss_mib(env)
        release(proc)
        time.sleep(5)
        after = rss_mib(env)
        time.sleep(31)  # etpmitm.memory trims every 30 s after connections end
        later = rss_mib(env)
        return {"held": held, "failed": failed, "RSS MiB before": before, "with stalled readers": stalled,
                "5 s after they closed": after, "36 s after": later,
                "per stalled reader KiB": round((stalled - before) * 1024 / max(held, 1))}
    finally:
        env.close()


def main() -> None:
    what, args = sys.argv[1], sys.argv[2:]
    result = measure_hog(args) if what == "hog" else measure_stalled(args)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
