"""The connection core in the namespace lab: idle timeouts leave no socket behind,
truncations are errors, and the gateway never relays to itself."""

from __future__ import annotations

import re
import sys
import time

from twisted.trial.unittest import TestCase

from tests.gatewaylab import GatewayLab, quoted, shared_lab
from tests.lab import Lab, lab_unavailable

ORIGIN = Lab.origin_ip
IDLE = 2
HELD = 100

# Open HELD keep-alive TLS connections, one request each, then hold them idle
# without reading (as a device that walked away would).
HOLDER = """
import socket, ssl, sys, time
host, cafile, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
context = ssl.create_default_context(cafile=cafile)
held = []
for _ in range(count):
    s = context.wrap_socket(socket.create_connection((host, 443), timeout=20), server_hostname="origin.test")
    s.sendall(b"GET / HTTP/1.1\\r\\nHost: origin.test\\r\\n\\r\\n")
    answer = b""
    while not answer.endswith(b"origin ok\\n"):
        answer += s.recv(4096)
    held.append(s)
print("held", len(held), flush=True)
time.sleep(float(sys.argv[4]))
"""


def build_lab() -> GatewayLab:
    env = GatewayLab(dports=[443])
    try:
        cert, key = env.public.issue(["origin.test"], [ORIGIN])
        env.origin(443, [cert, env.public.intermediate], key, alpn=["http/1.1"])
        env.start_gateway("--idle-timeout", str(IDLE))
    except BaseException:
        env.close()
        raise
    return env


class CoreEndToEndTests(TestCase):
    skip = lab_unavailable()
    env: GatewayLab

    def setUp(self) -> None:
        self.env = shared_lab(__name__, build_lab)

    def gatewaySockets(self, state: str) -> list[str]:
        done = self.env.lab.gateway.run(["ss", "-Htn", "state", state], check=False)
        return [line for line in done.stdout.splitlines() if line.strip()]

    def test_idleInterceptedConnectionsLeaveNoCloseWait(self) -> None:
        """100 idle intercepted connections: each closed by the idle timeout, audited once, none left in CLOSE-WAIT."""
        before = self.env.log().count("idle timeout")
        holder = self.env.lab.client.popen(
            ["python3", "-c", HOLDER, ORIGIN, str(self.env.root), str(HELD), "30"]
        )
        self.addCleanup(holder.kill)
        self.env.wait_for_log("idle timeout", count=before + HELD, timeout=60)
        time.sleep(1)
        lines = [line for line in self.env.log().splitlines() if "idle timeout" in line][before:]
        self.assertEqual(len(lines), HELD)
        for line in lines:
            self.assertIn("action=intercept outcome=ok reason='idle timeout: no bytes for 2s'", line)
        ports = [re.search(r":(\d+) -> ", line).group(1) for line in lines]  # type: ignore[union-attr]
        self.assertEqual(len(set(ports)), HELD, "one audit line per connection")
        # The holder never answers the close: after the grace period the gateway resets its side.
        deadline = time.monotonic() + 20
        while (self.gatewaySockets("close-wait") or self.gatewaySockets("fin-wait-2")) and time.monotonic() < deadline:
            time.sleep(0.5)
        self.assertEqual(self.gatewaySockets("close-wait"), [])
        self.assertEqual(self.gatewaySockets("fin-wait-2"), [])

    def test_truncatedResponseIsAnError(self) -> None:
        done = self.env.curl("--resolve", f"origin.test:443:{ORIGIN}", "https://origin.test/truncate/50000", "-o", "/dev/null")
        self.assertNotEqual(done.returncode, 0, "curl must see the truncation")
        line = self.env.wait_for_log("truncated: the origin closed without close_notify")
        self.assertIn("sni=origin.test action=intercept outcome=error", line)

    def test_gatewaysOwnAddressIsRefused(self) -> None:
        """A device that connects to the gateway's own LAN address on 443 is not relayed to the gateway.

        The shipped rules never redirect local destinations; the plain rule the
        start-up log suggests does, so the gateway must refuse them itself.
        """
        lab = self.env.lab
        lan = lab.gateway_lan_ip
        rule = ["-i", lab.lan_if, "-p", "tcp", "-d", lan, "--dport", "443", "-j", "REDIRECT", "--to-ports", "8443"]
        lab.gateway.run(["iptables", "-t", "nat", "-I", "PREROUTING", "1", *rule])
        self.addCleanup(lab.gateway.run, ["iptables", "-t", "nat", "-D", "PREROUTING", *rule])
        done = self.env.curl("--resolve", f"origin.test:443:{lan}", "https://origin.test/", timeout=15)
        self.assertNotEqual(done.returncode, 0)
        line = self.env.wait_for_log(f"addressed to the gateway itself ({lan}:443)")
        self.assertIn("action=refuse outcome=error", line)
