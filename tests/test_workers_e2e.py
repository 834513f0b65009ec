"""End to end: ``--workers 2`` in the namespace lab.

A master that binds the sockets and two workers that serve them: traffic
spreads over both, a bypass one worker learns reaches the other, SIGHUP
reaches both, a killed worker is replaced, and workers end with the master.
A SIGHUP storm while a worker starts kills nothing; while a worker is down,
new connections go to the other one instead of hanging.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.gatewaylab import GATEWAY_PORT, TWISTD, GatewayLab, gateway_env, listen_backlogs, quoted, shared_lab
from tests.lab import Lab, lab_unavailable

ORIGIN = Lab.origin_ip
GOOD, MTLS = 443, 4433
AUDIT_PID = re.compile(r" action=(\w+) outcome=(\w+) .* pid=(\d+)$", re.M)


def build_lab() -> GatewayLab:
    env = GatewayLab(dports=[GOOD, MTLS])
    try:
        public = env.public
        cert, key = public.issue(["origin.test"], [ORIGIN])
        env.origin(GOOD, [cert, public.intermediate], key)
        cert, key = public.issue(["mtls.test"])
        env.openssl_origin(MTLS, [cert, public.intermediate], key, "-verify", "1", "-CAfile", str(env.trust))
        env.policy.write_text("# defaults\n")
        env.start_gateway("--workers", "2", "--policy", str(env.policy))
    except BaseException:
        env.close()
        raise
    return env


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def live_children(pid: int) -> list[int]:
    return [child for child in children(pid) if alive(child)]


def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


class WorkersEndToEndTests(TestCase):
    skip = lab_unavailable()

    def setUp(self) -> None:
        self.env = shared_lab(__name__, build_lab)
        assert self.env.gateway is not None
        self.master = self.env.gateway.pid
        self.assertTrue(wait_until(lambda: len(self.workers()) == 2), "the master does not run two workers")
        # A worker restarted by an earlier test may not have put its socket back yet.
        self.assertTrue(wait_until(self.bothListen, timeout=60), self.env.log()[-3000:])

    def workers(self) -> list[int]:
        return live_children(self.master)

    def bothListen(self) -> bool:
        return len(listen_backlogs(self.env.lab.gateway, GATEWAY_PORT)) == 2

    def events(self) -> list[tuple[str, str, int]]:
        return [(a, o, int(p)) for a, o, p in AUDIT_PID.findall(self.env.log())]

    def fetch(self, count: int) -> list[str]:
        """count new connections to the origin through the gateway, one curl each."""
        url = "https://origin.test/"
        loop = (f"for i in $(seq {count}); do "
                + quoted("curl", "-sS", "--max-time", "20", "--cacert", self.env.root,
                         "--resolve", f"origin.test:443:{ORIGIN}", url)
                + "; done")
        done = self.env.shell(loop)
        self.assertEqual(done.returncode, 0, done.stderr)
        return done.stdout.splitlines()

    def test_trafficSpreadsOverBothWorkers(self) -> None:
        before = len(self.events())
        bodies = self.fetch(40)
        self.assertEqual(bodies, ["origin ok"] * 40)
        self.assertTrue(wait_until(lambda: len(self.events()) >= before + 40), self.env.log()[-3000:])
        served = self.events()[before:]
        self.assertEqual({(a, o) for a, o, _ in served}, {("intercept", "ok")})
        pids = {pid for _, _, pid in served}
        self.assertEqual(pids, set(self.workers()), "both workers, and only workers, serve")

    def test_learnedBypassReachesTheOtherWorker(self) -> None:
        """The worker that meets the mTLS origin learns the bypass and tells the
        other (through the master); every later connection is spliced as
        learned, whichever worker takes it."""
        done = self.env.python_client("--host", ORIGIN, "--port", str(MTLS), "--sni", "mtls.test", "--insecure")
        self.assertIn("s_server", done.get("body", ""), done)
        learned = "learned bypass for ('mtls.test', '10.231.2.2:4433'): origin requests a client certificate"
        self.env.wait_for_log(learned)
        self.env.wait_for_log(learned + " (learned by another worker)")
        before = len(self.events())
        for _ in range(12):
            done = self.env.python_client("--host", ORIGIN, "--port", str(MTLS), "--sni", "mtls.test", "--insecure")
            self.assertIn("s_server", done.get("body", ""), done)
        self.assertTrue(wait_until(lambda: len(self.events()) >= before + 12))
        later = [line for line in self.env.log().splitlines() if f"-> {ORIGIN}:{MTLS} sni=mtls.test" in line][-12:]
        for line in later:
            self.assertIn("action=splice outcome=ok reason='learned bypass", line)

    def test_hangupReachesEveryWorker(self) -> None:
        line = "policy reloaded from"
        before = self.env.log().count(line)
        os.kill(self.master, signal.SIGHUP)
        self.env.wait_for_log(line, count=before + 2)
        self.assertEqual(len(self.workers()), 2)

    def test_killedWorkerIsReplaced(self) -> None:
        first, second = self.workers()
        os.kill(first, signal.SIGKILL)
        line = self.env.wait_for_log(f"(pid {first})")
        self.assertIn("process ended by signal 9", line)
        self.assertIn("restarting it in", line)
        self.assertTrue(wait_until(lambda: len(self.workers()) == 2 and first not in self.workers()))
        self.assertIn(second, self.workers())
        self.assertEqual(self.fetch(10), ["origin ok"] * 10)  # served meanwhile
        self.assertTrue(wait_until(self.bothListen, timeout=60), "the replacement does not take its socket back")


class CrashLoop:
    """Kills every worker of ``master`` but ``survivor`` as soon as it appears."""

    def __init__(self, master: int, survivor: int) -> None:
        self.master, self.survivor = master, survivor
        self.kills: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in live_children(self.master):
                if pid != self.survivor:
                    os.kill(pid, signal.SIGKILL)
                    self.kills.append(pid)
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class SupervisionTests(TestCase):
    """Restarts: SIGHUP while a worker starts, and connections while one is down."""

    skip = lab_unavailable()

    def setUp(self) -> None:
        self.env = shared_lab(__name__, build_lab)
        assert self.env.gateway is not None
        self.master = self.env.gateway.pid
        self.addCleanup(self.waitForTwoWorkers)
        self.waitForTwoWorkers()

    def waitForTwoWorkers(self) -> None:
        ok = wait_until(lambda: len(live_children(self.master)) == 2, timeout=90)
        self.assertTrue(ok, self.env.log()[-3000:])

    def test_hangupStormWhileAWorkerStarts(self) -> None:
        """SIGHUPs to the master every 10 ms from before a restart until the new
        worker serves: none kills it, and only the one death we caused restarts."""
        first, second = live_children(self.master)
        restarts = self.env.log().count("restarting it in")
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            new = [pid for pid in live_children(self.master) if pid not in (first, second)]
            if new and f"etpmitm worker {new[0]} serving" in self.env.log():
                break
            os.kill(self.master, signal.SIGHUP)
            time.sleep(0.01)
        for _ in range(20):  # and a few more once it serves
            os.kill(self.master, signal.SIGHUP)
            time.sleep(0.01)
        self.assertNotIn("ended by signal 1", self.env.log())
        self.assertEqual(self.env.log().count("restarting it in"), restarts + 1, self.env.log()[-3000:])
        self.assertEqual(len(live_children(self.master)), 2)

    def test_noConnectionHangsWhileAWorkerCrashLoops(self) -> None:
        """Every worker that replaces the victim is killed at once: the survivor
        serves every new connection meanwhile, none waits in the dead one's queue."""
        survivor, _ = live_children(self.master)
        before = len(AUDIT_PID.findall(self.env.log()))
        loop = CrashLoop(self.master, survivor)
        try:
            curl = quoted("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}\\n", "--max-time", "20",
                          "--cacert", self.env.root, "--resolve", f"origin.test:443:{ORIGIN}", "https://origin.test/")
            done = self.env.shell(f"for i in $(seq 30); do {curl}; done", timeout=900)
        finally:
            loop.stop()
        self.assertEqual((done.stdout.split(), done.stderr), (["200"] * 30, ""))
        self.assertGreater(len(loop.kills), 0)
        served = AUDIT_PID.findall(self.env.log())[before:]
        self.assertEqual({int(pid) for _, _, pid in served}, {survivor})


    def test_aWorkerThatDiedBeforeListeningLeavesItsSocketWhole(self) -> None:
        """The victim's replacements are killed before they listen, so the master
        takes their socket out of its group a second time; the worker that then
        lives serves the connections that reach it, once the survivor is gone too."""
        survivor, _ = live_children(self.master)
        loop = CrashLoop(self.master, survivor)
        try:
            # Two workers: the victim, and one replacement (a pid may be killed twice).
            self.assertTrue(wait_until(lambda: len(set(loop.kills)) >= 2, timeout=60), self.env.log()[-3000:])
        finally:
            loop.stop()
        both = wait_until(lambda: len(listen_backlogs(self.env.lab.gateway, GATEWAY_PORT)) == 2, timeout=90)
        self.assertTrue(both, self.env.log()[-3000:])
        before = len(AUDIT_PID.findall(self.env.log()))
        os.kill(survivor, signal.SIGKILL)
        self.env.wait_for_log(f"(pid {survivor})")  # out of the group: the replacement's socket takes them
        curl = quoted("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}\\n", "--max-time", "20",
                      "--cacert", self.env.root, "--resolve", f"origin.test:443:{ORIGIN}", "https://origin.test/")
        done = self.env.shell(f"for i in $(seq 10); do {curl}; done")
        self.assertEqual((done.stdout.split(), done.stderr), (["200"] * 10, ""))
        self.assertTrue(wait_until(lambda: len(AUDIT_PID.findall(self.env.log())) >= before + 10))
        served = AUDIT_PID.findall(self.env.log())[before:]
        self.assertEqual({(a, o) for a, o, _ in served}, {("intercept", "ok")})


class MasterLifetimeTests(TestCase):
    """A second gateway in the lab's gateway namespace, on a port nothing redirects to."""

    skip = lab_unavailable()

    def setUp(self) -> None:
        self.env = shared_lab(__name__, build_lab)

    def start(self, port: int) -> tuple[subprocess.Popen[bytes], list[int]]:
        argv = [TWISTD, "-n", "--pidfile=", "etpmitm", "--ca-dir", self.env.ca_dir,
                "--upstream-trust", self.env.trust, "--listen", f"tcp:{port}", "--workers", "2"]
        proc = self.env.lab.gateway.popen(argv, env=gateway_env(), cwd=self.env.lab.workdir)
        self.assertTrue(wait_until(lambda: len(live_children(proc.pid)) == 2), self.env.lab.log(proc))
        self.env.lab.gateway.wait_for_port(port, proc=proc, timeout=30)
        return proc, children(proc.pid)

    def test_sigtermStopsWorkersThenMaster(self) -> None:
        """The master waits for its workers: none is left once it has exited
        (as twistd does, with the signal's own status)."""
        proc, workers = self.start(9443)
        proc.send_signal(signal.SIGTERM)
        self.assertIn(proc.wait(30), (0, -signal.SIGTERM), self.env.lab.log(proc))
        self.assertEqual([p for p in workers if alive(p)], [])

    def test_workersEndWhenTheMasterDies(self) -> None:
        """(Their last log line, "the master process is gone", has nowhere to go:
        workers log through the master.)"""
        proc, workers = self.start(9444)
        proc.kill()
        proc.wait(10)
        self.assertTrue(wait_until(lambda: not any(alive(p) for p in workers)), self.env.lab.log(proc))
