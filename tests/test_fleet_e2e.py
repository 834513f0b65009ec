"""A fleet behind HAProxy, end to end: real curl and Python ssl clients, Debian's
HAProxy with ``deploy/haproxy.cfg``, two ``twistd etpmitm`` nodes on ``haproxy:`` listeners,
health-checked on their ``/healthz``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from twisted.trial.unittest import TestCase

from tests.fleetlab import DRAIN_DELAY, HEALTH_PORTS, NODE_PORTS, Fleet, fleet_unavailable
from tests.gatewaylab import shared_lab
from tests.lab import Lab, lab_unavailable

ORIGIN = Lab.origin_ip
CLIENT = Lab.client_ip
DETECTION = 0.5 * 2
"""HAProxy's detection window in deploy/haproxy.cfg: inter 500ms, fall 2."""
MARGIN = 2.0


class FleetEndToEndTests(TestCase):
    skip = lab_unavailable() or fleet_unavailable()
    fleet: Fleet
    timeout = 240

    def setUp(self) -> None:
        self.fleet = shared_lab(__name__, Fleet)  # type: ignore[arg-type]
        self.resolve = ["--resolve", f"origin.test:443:{ORIGIN}"]

    def audits(self) -> list[dict[str, object]]:
        return [e for number in NODE_PORTS for e in self.fleet.audit(number)]

    def test_a_auditShowsTheDeviceAndTheOriginalDestination(self) -> None:
        """Through HAProxy, each node's audit names the device's address and the REDIRECTed destination."""
        before = len(self.audits())
        for _ in range(4):
            done = self.fleet.env.curl("--http1.1", *self.resolve, "https://origin.test/")
            self.assertEqual((done.returncode, done.stdout), (0, "origin ok\n"), done.stderr)
        deadline = time.monotonic() + 10
        while len(self.audits()) < before + 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        events = self.audits()[before:]
        self.assertEqual(len(events), 4, events)
        for event in events:
            host, _, port = str(event["client"]).rpartition(":")
            self.assertEqual(host, CLIENT, event)  # not 127.0.0.1, HAProxy's address
            self.assertNotEqual(int(port), 0)
            self.assertEqual(event["destination"], f"{ORIGIN}:443")  # not 127.0.0.1:900N
            self.assertEqual((event["action"], event["outcome"], event["sni"]), ("intercept", "ok", "origin.test"))

    def test_a_IPv6ThroughTPROXY(self) -> None:
        """IPv6 devices reach HAProxy by TPROXY: the audit names the IPv6 device and destination."""
        before = len(self.audits())
        done = self.fleet.env.curl("-6", "--http1.1", "--resolve", f"origin.test:443:{Lab.origin_ip6}", "https://origin.test/")
        self.assertEqual((done.returncode, done.stdout), (0, "origin ok\n"), done.stderr)
        deadline = time.monotonic() + 10
        while len(self.audits()) < before + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        [event] = self.audits()[before:]
        self.assertEqual(str(event["client"]).rpartition(":")[0], Lab.client_ip6)
        self.assertEqual(event["destination"], f"[{Lab.origin_ip6}]:443")
        self.assertEqual((event["action"], event["outcome"]), ("intercept", "ok"))

    def test_a_healthChecksAreOnHealthz(self) -> None:
        """HAProxy checks each node's /healthz (200) every 500 ms; no check reaches a listener or the audit."""
        before = {number: len(self.fleet.audit(number)) for number in NODE_PORTS}
        checks, connections = self.syns(HEALTH_PORTS), self.syns(NODE_PORTS)
        time.sleep(2)
        # inter 500ms: about 4 checks per node in 2 s, no other traffic.
        self.assertGreaterEqual(self.syns(HEALTH_PORTS) - checks, 2 * len(NODE_PORTS), "HAProxy did not check the nodes")
        self.assertEqual(self.syns(NODE_PORTS), connections)
        self.assertEqual({number: len(self.fleet.audit(number)) for number in NODE_PORTS}, before)
        stats = self.fleet.server_stats()
        self.assertEqual({name: (row["status"], row["check_status"], row["check_code"]) for name, row in stats.items()},
                         {"node1": ("UP", "L7OK", "200"), "node2": ("UP", "L7OK", "200")})

    def syns(self, ports: dict[int, int]) -> int:
        """Connections opened to these ports so far (SYNs counted by an iptables rule)."""
        return sum(self.fleet.syns(port) for port in ports.values())

    def test_a_aConnectionWithoutAHeaderIsRefusedAndAudited(self) -> None:
        """A TLS client straight to a node's haproxy: listener (no balancer): reset, audited with the reason."""
        before = len(self.fleet.audit(1))
        script = ("import socket, ssl\n"
                  f"s = socket.create_connection(('127.0.0.1', {NODE_PORTS[1]}), timeout=20)\n"
                  "ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n"
                  "try:\n    ctx.wrap_socket(s, server_hostname='origin.test')\n    print('handshake done')\n"
                  "except OSError as e:\n    print(type(e).__name__)\n")
        done = self.fleet.lab.gateway.run([sys.executable, "-c", script], check=False, timeout=60)
        self.assertIn(done.stdout.strip(), ("ConnectionResetError", "SSLEOFError", "SSLZeroReturnError"), done.stderr)
        deadline = time.monotonic() + 10
        while len(self.fleet.audit(1)) <= before and time.monotonic() < deadline:
            time.sleep(0.05)
        [event] = self.fleet.audit(1)[before:]
        self.assertEqual((event["action"], event["outcome"]), ("refuse", "refused"))
        self.assertIn("bad PROXY header: no PROXY header: the connection starts with a TLS handshake record", str(event["reason"]))

    def test_b_killedNodeDuringLoad(self) -> None:
        """SIGKILL node 1 during 20 s of new connections: after HAProxy's detection window, none fails."""
        load = self.fleet.client("load", "20", "4")
        time.sleep(6)
        killed = time.time()
        self.fleet.nodes[1].send_signal(signal.SIGKILL)
        down = self.fleet.wait_state({"node1": "DOWN"})
        # Taken out by its failed /healthz check (its metrics port is closed): a layer-4 failure.
        check = self.fleet.server_stats()["node1"]["check_status"]
        self.assertIn(check, ("L4CON", "L4TOUT"))
        out, err = load.communicate(timeout=120)
        self.assertEqual(load.returncode, 0, err)
        results = json.loads(out)
        window = killed + DETECTION + MARGIN
        inside = [r for r in results if killed - 1 <= r[0] <= window and not r[2]]
        after = [r for r in results if r[0] > window]
        failedAfter = [r for r in after if not r[2]]
        print(f"\nfleet kill: {len(results)} connections in 20 s; node 1 killed at +{killed - results[0][0]:.1f}s, "
              f"HAProxy marked it DOWN {down - killed:.2f}s later; {len(inside)} failed inside the window "
              f"(kill-1s .. kill+{DETECTION + MARGIN:g}s): {[r[3] for r in inside][:5]}; check {check}; "
              f"{len(after)} started after it, {len(failedAfter)} failed", file=sys.stderr)
        self.assertGreater(len(after), 20, "too few connections after the window to judge")
        self.assertEqual(failedAfter, [])
        # Node 2 served them (its audit has connections that started after the kill).
        self.assertTrue([e for e in self.fleet.audit(2) if float(e["started"]) > window])  # type: ignore[arg-type]
        # Put node 1 back for the next cases.
        self.fleet.start_node(1)
        self.fleet.wait_state({"node1": "UP"})

    def test_c_stoppingNodeDrains(self) -> None:
        """Node 1 (one process) stops: see :meth:`drains`."""
        self.drains(1)

    def test_c_stoppingWorkersNodeDrains(self) -> None:
        """Node 2 (--workers 2: the master stops, its workers drain): see :meth:`drains`."""
        self.drains(2)

    def drains(self, stopping: int) -> None:
        """SIGTERM: /healthz turns 503 while the node still accepts; HAProxy takes it out; the listener
        closes after --drain-delay; new connections go to the other node; the open one finishes."""
        fleet = self.fleet
        [other] = [n for n in NODE_PORTS if n != stopping]
        port = NODE_PORTS[stopping]
        # The held connection goes to the node under test: the other takes none meanwhile.
        fleet.haproxy_command(f"set server etpmitm/node{other} state drain")
        try:
            before = fleet.established(port)
            held = fleet.client("hold", stdin=subprocess.PIPE)
            assert held.stdout is not None and held.stdin is not None
            self.assertEqual(held.stdout.readline(), b"ready\n")
            self.assertEqual(fleet.established(port), before + 1)
        finally:
            fleet.haproxy_command(f"set server etpmitm/node{other} state ready")
        fleet.wait_state({f"node{other}": "UP"})
        self.assertEqual(fleet.healthz(stopping)[0], 200)
        audited = {n: len(fleet.audit(n)) for n in NODE_PORTS}

        signalled = time.time()
        fleet.nodes[stopping].send_signal(signal.SIGTERM)
        # 1. /healthz turns 503 first: the listener still accepts, the held connection is open.
        deadline = time.monotonic() + 10
        while (health := fleet.healthz(stopping))[0] != 503 and time.monotonic() < deadline:
            time.sleep(0.02)
        unhealthy = time.time()
        self.assertTrue(fleet.lab.gateway.listening(port, "127.0.0.1"), "the listener closed before /healthz said 503")
        self.assertEqual((health[0], json.loads(health[1])), (503, {"status": "unavailable", "reason": "stopping"}))
        self.assertEqual(fleet.established(port), before + 1)
        # 2. HAProxy takes the node out because of that 503 (layer 7, wrong status), not a refused connect.
        down = fleet.wait_state({f"node{stopping}": "DOWN"})
        listeningWhenDown = fleet.lab.gateway.listening(port, "127.0.0.1")
        row = fleet.server_stats()[f"node{stopping}"]
        self.assertEqual((row["check_status"], row["check_code"]), ("L7STS", "503"))
        # 3. After --drain-delay the listener closes; the node still runs and holds the connection.
        deadline = time.monotonic() + DRAIN_DELAY + 20
        while fleet.lab.gateway.listening(port, "127.0.0.1") and time.monotonic() < deadline:
            time.sleep(0.05)
        closed = time.time()
        self.assertFalse(fleet.lab.gateway.listening(port, "127.0.0.1"))
        self.assertIsNone(fleet.nodes[stopping].poll())
        self.assertEqual(fleet.established(port), before + 1)
        self.assertEqual(fleet.healthz(stopping)[0], 503)
        print(f"\nfleet drain of node {stopping}: /healthz 503 {unhealthy - signalled:.2f}s after SIGTERM, "
              f"HAProxy DOWN ({row['check_status']} {row['check_code']}) after {down - signalled:.2f}s "
              f"(listener {'still open' if listeningWhenDown else 'already closed'}), "
              f"listener closed after {closed - signalled:.2f}s (--drain-delay {DRAIN_DELAY:g})", file=sys.stderr)
        # 4. New connections all go to the other node, and succeed.
        for _ in range(6):
            done = fleet.env.curl("--http1.1", *self.resolve, "https://origin.test/")
            self.assertEqual((done.returncode, done.stdout), (0, "origin ok\n"), done.stderr)
        self.assertEqual(len(fleet.audit(stopping)), audited[stopping])
        self.assertIsNone(fleet.nodes[stopping].poll())
        # 5. The held connection finishes, then the node exits on its own.
        held.stdin.write(b"go\n")
        held.stdin.flush()
        self.assertEqual(held.stdout.readline(), b"HTTP/1.1 200 OK\n")
        self.assertEqual(held.wait(timeout=30), 0)
        # twistd ends with the signal it stopped for; the master's SIGKILL would be -9.
        self.assertIn(fleet.nodes[stopping].wait(timeout=30), (0, -signal.SIGTERM), fleet.log(stopping)[-3000:])
        log = fleet.log(stopping)
        self.assertIn(f"stopping: still accepting for {DRAIN_DELAY:g}s (--drain-delay), then the listeners close", log)
        self.assertIn("stopping: no new connections; waiting up to 30s for 1 open to end", log)
        self.assertLess(log.index("still accepting for"), log.index("no new connections; waiting"))
        self.assertIn("stopping: every connection ended", log)
        self.assertNotIn("still open after", log)
        self.assertNotIn("did not stop within", log)
        [last] = fleet.audit(stopping)[audited[stopping]:]
        self.assertEqual((last["action"], last["outcome"]), ("intercept", "ok"))
        self.assertGreaterEqual(len(fleet.audit(other)), audited[other] + 6)
        fleet.start_node(stopping)
        fleet.wait_state({f"node{stopping}": "UP"})
