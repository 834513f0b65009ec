"""End to end: where and how the gateway listens, in the namespace lab.

- The systemd unit's own arguments (no --listen) serve IPv4 and IPv6.
- Every listening socket asks for a backlog of 4096, with and without
  workers, and a burst of 2,000 connects overflows no accept queue.
- After running out of descriptors (EMFILE), the gateway accepts again
  without a restart.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.gatewaylab import (
    TWISTD, GatewayLab, burst, gateway_env, listen_backlogs, listen_overflows, shared_lab, unit_arguments,
)
from tests.lab import Lab, lab_unavailable
from tests.test_workers_e2e import live_children, wait_until

ORIGIN, ORIGIN6 = Lab.origin_ip, Lab.origin_ip6
GOOD, LIMITED, SINGLE, POOLED = 443, 4443, 4444, 4445
SINGLE_PORT, LIMITED_PORT, POOLED_PORT = 9445, 9446, 9447
FD_LIMIT = 100
HOLDER = """
import socket, sys, time
held = []
for _ in range({count}):
    try:
        held.append(socket.create_connection(({host!r}, {port}), timeout=5))
    except OSError:
        pass
print(len(held), flush=True)
time.sleep(3600)
"""


def build_lab() -> GatewayLab:
    env = GatewayLab(dports=[GOOD])
    try:
        env.lab.gateway.run(["sysctl", "-q", "-w", "net.core.somaxconn=4096"])  # as deploy/sysctl.conf
        for dport, port in ((LIMITED, LIMITED_PORT), (SINGLE, SINGLE_PORT), (POOLED, POOLED_PORT)):
            env.lab.gateway.run(["iptables", "-t", "nat", "-I", "PREROUTING", "-i", Lab.lan_if, "-p", "tcp",
                                 "--dport", str(dport), "-j", "REDIRECT", "--to-ports", str(port)])
        public = env.public
        cert, key = public.issue(["origin.test"], [ORIGIN, ORIGIN6])
        env.origin(GOOD, [cert, public.intermediate], key)
        env.origin(LIMITED, [cert, public.intermediate], key)
        env.start_gateway(*unit_arguments(env.ca_dir), listen=False)
    except BaseException:
        env.close()
        raise
    return env


class ListenTests(TestCase):
    skip = lab_unavailable("iptables")

    def setUp(self) -> None:
        self.env = shared_lab(__name__, build_lab)

    def second(self, port: int, *args: str, limit: int | None = None) -> subprocess.Popen[bytes]:
        """Another gateway in the gateway namespace, on ``port``."""
        argv: list[str | os.PathLike[str]] = [
            TWISTD, "-n", "--pidfile=", "etpmitm", "--ca-dir", self.env.ca_dir,
            "--upstream-trust", self.env.trust, "--listen", f"tcp:{port}", *args,
        ]
        if limit is not None:
            argv = ["prlimit", f"--nofile={limit}:{limit}", *argv]
        proc = self.env.lab.gateway.popen(argv, env=gateway_env(), cwd=self.env.lab.workdir)
        self.addCleanup(proc.wait, 30)
        self.addCleanup(proc.terminate)
        self.env.lab.gateway.wait_for_port(port, proc=proc, timeout=30)
        return proc

    def fetch(self, address: str, port: int = GOOD) -> str:
        done = self.env.curl("--resolve", f"origin.test:{port}:{address}", f"https://origin.test:{port}/")
        self.assertEqual(done.returncode, 0, done.stderr + self.env.log()[-3000:])
        return done.stdout.strip()

    def test_unitArgumentsServeIPv4AndIPv6(self) -> None:
        """No --listen, as in deploy/etpmitm.service: dual-stack."""
        self.assertNotIn("--listen", unit_arguments(self.env.ca_dir))
        self.assertEqual(self.fetch(ORIGIN), "origin ok")
        self.assertEqual(self.fetch(f"[{ORIGIN6}]"), "origin ok")
        self.env.wait_for_log(f"{Lab.client_ip6}")
        self.env.wait_for_log(f"-> [{ORIGIN6}]:443 sni=origin.test action=intercept outcome=ok")

    def test_unitListensWithBacklog4096(self) -> None:
        """One socket per worker (--workers auto), each with the default backlog."""
        assert self.env.gateway is not None
        self.assertTrue(wait_until(lambda: len(live_children(self.env.gateway.pid)) == os.cpu_count()))
        self.assertEqual(listen_backlogs(self.env.lab.gateway, 8443), [4096] * (os.cpu_count() or 1))

    def test_burstOverflowsNoQueueWithWorkers(self) -> None:
        """The accept queues alone: a gateway with workers and admission off (one client's
        2,000 connects in a burst are past --max-client-rate, which resets them on purpose)."""
        self.second(POOLED_PORT, "--workers", "2", "--max-client-rate=0")
        self.assertEqual(listen_backlogs(self.env.lab.gateway, POOLED_PORT), [4096, 4096])
        before = listen_overflows(self.env.lab.gateway)
        result = burst(self.env.lab.client, ORIGIN, POOLED, 2000)
        self.assertEqual((result["connected"], listen_overflows(self.env.lab.gateway) - before), (2000, 0), result)

    def test_unitRefusesABurstPastItsRateAndServesAfter(self) -> None:
        """With the unit's defaults the same burst is cut by the per-client rate, at once
        (no queue overflows); the client is served again once its bucket refills."""
        before = listen_overflows(self.env.lab.gateway)
        result = burst(self.env.lab.client, ORIGIN, GOOD, 2000)
        self.assertEqual((result["pending"], result["delayed_1s"], listen_overflows(self.env.lab.gateway) - before),
                         (0, 0, 0), result)
        time.sleep(2.5)  # the bucket (200/s in bursts of 400 per worker) refills
        self.assertEqual(self.fetch(ORIGIN), "origin ok")

    def test_withoutWorkers(self) -> None:
        self.second(SINGLE_PORT, "--max-client-rate=0")  # the accept queue alone, not admission
        self.assertEqual(listen_backlogs(self.env.lab.gateway, SINGLE_PORT), [4096])
        before = listen_overflows(self.env.lab.gateway)
        result = burst(self.env.lab.client, ORIGIN, SINGLE, 2000)
        self.assertEqual((result["connected"], listen_overflows(self.env.lab.gateway) - before), (2000, 0), result)

    def test_backlogOption(self) -> None:
        self.second(SINGLE_PORT + 10, "--backlog", "1000")
        self.second(SINGLE_PORT + 11, "--backlog", "1000", "--workers", "2")
        self.assertEqual(listen_backlogs(self.env.lab.gateway, SINGLE_PORT + 10), [1000])
        self.assertEqual(listen_backlogs(self.env.lab.gateway, SINGLE_PORT + 11), [1000, 1000])

    def test_recoversAfterEMFILE(self) -> None:
        """Out of descriptors, then released: a new connection is served, with no restart."""
        proc = self.second(LIMITED_PORT, "--handshake-timeout", "600", limit=FD_LIMIT)
        holder = self.env.lab.client.popen(
            ["python3", "-c", HOLDER.format(count=FD_LIMIT * 2, host=ORIGIN, port=LIMITED)])
        log = lambda: self.env.lab.log(proc)  # noqa: E731
        self.assertTrue(wait_until(lambda: "EMFILE encountered" in log(), timeout=60), log()[-3000:])
        holder.kill()
        holder.wait(10)
        self.assertTrue(wait_until(lambda: len(os.listdir(f"/proc/{proc.pid}/fd")) < FD_LIMIT // 2, timeout=60))
        done = self.env.curl("--resolve", f"origin.test:{LIMITED}:{ORIGIN}", f"https://origin.test:{LIMITED}/")
        self.assertEqual((done.returncode, done.stdout.strip()), (0, "origin ok"), done.stderr + log()[-3000:])
        self.assertIsNone(proc.poll())
        served = f"-> {ORIGIN}:{LIMITED} sni=origin.test action=intercept outcome=ok"
        # The audit line is written when the connection is done, which may be just after curl exits.
        self.assertTrue(wait_until(lambda: served in log(), timeout=30), log()[-3000:])
