"""A WebSocket through the HTTP/1.1 layer, end to end: a wsproto client in the client
namespace, ``twistd etpmitm`` with ``--audit-log``, and the lab origin's GET /ws (wsproto)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from tests.gatewaylab import GatewayLab, inspecting_lab, shared_lab
from tests.lab import Lab, lab_unavailable
from tests.ws_client import MESSAGES, digest

ORIGIN = Lab.origin_ip
PORT = 443
WS_CLIENT = Path(__file__).resolve().parent / "ws_client.py"
POLICY = """
[[rule]]
name = "no blocked sockets"
urls = ["origin.test/blocked/*"]
action = "block"
"""


def build_lab() -> GatewayLab:
    return inspecting_lab(POLICY)


class WebSocketEndToEndTests(TestCase):
    skip = lab_unavailable()
    env: GatewayLab

    def setUp(self) -> None:
        self.env = shared_lab(__name__, build_lab)

    def client(self, path: str = "/ws") -> dict[str, Any]:
        argv = [sys.executable, str(WS_CLIENT), "--host", ORIGIN, "--port", str(PORT),
                "--sni", "origin.test", "--cafile", str(self.env.root), "--path", path]
        done = self.env.lab.client.run(argv, check=False, timeout=90)
        self.assertEqual(done.returncode, 0, done.stderr)
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def audit(self, local: int, timeout: float = 15.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The connection event of the client's connection from port ``local``, and its
        request events (from the --audit-log file; both are written when it ends)."""
        path = self.env.audit_log
        deadline = time.monotonic() + timeout
        while True:
            lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
            mine = [e for e in lines if e["event"] == "connection" and e["client"].endswith(f":{local}")]
            if mine:
                [connection] = mine
                requests = [e for e in lines if e["event"] == "request" and e["connection"] == connection["id"]]
                return connection, requests
            if time.monotonic() > deadline:
                raise AssertionError(f"no connection event from port {local} in {path}:\n{lines[-5:]}")
            time.sleep(0.1)

    def test_messagesEchoAndTheUpgradeIsAudited(self) -> None:
        result = self.client()
        self.assertEqual((result["alpn"], result["accepted"]), ("http/1.1", True), result)
        # Every echo is what was sent, byte for byte, in order (the 1 MiB one too).
        self.assertEqual(result["echoes"], [digest(m) for m in MESSAGES])
        self.assertEqual(result["mismatches"], [])
        self.assertEqual(result["pongs"], 1)
        # The close handshake, then TLS ends with close_notify.
        self.assertEqual((result["close"], result["state"], result["tls_end"]),
                         ([1000, "done"], "CLOSED", "close_notify"))

        connection, requests = self.audit(result["local"])
        self.assertEqual((connection["action"], connection["outcome"], connection["alpn"]),
                         ("intercept", "ok", "http/1.1"), connection)
        [request] = requests
        self.assertEqual((request["protocol"], request["head"]["method"], request["head"]["authority"],
                          request["head"]["path"], request["status"], request["action"], request["upgrade"]),
                         ("http/1.1", "GET", "origin.test", "/ws", 101, "allow", "websocket"), request)
        # The relayed frames count in the request's bytes, which are the connection's.
        payload = sum(m["length"] for m in result["echoes"])
        self.assertGreater(request["bytes_up"], payload)
        self.assertGreater(request["bytes_down"], payload)
        self.assertEqual((request["bytes_up"], request["bytes_down"]),
                         (connection["bytes_up"], connection["bytes_down"]))
        self.assertIn("upgraded to websocket", connection["reason"])
        # The text log says the same.
        self.env.wait_for_log(f"request {connection['id']}/1 GET origin.test/ws -> 101 action=allow")
        line = self.env.wait_for_log(f" id={connection['id']} ")
        self.assertIn("action=intercept outcome=ok reason='upgraded to websocket", line)

    def test_aBlockedUpgradeGetsTheBlockPage(self) -> None:
        """A request rule decides the upgrade request like any other: the gateway's 403, no
        WebSocket (the origin would answer /blocked/ws with a 404)."""
        result = self.client("/blocked/ws")
        self.assertEqual((result["accepted"], result["rejected"]), (False, 403), result)
        connection, requests = self.audit(result["local"])
        self.assertEqual(connection["action"], "intercept", connection)
        [request] = requests
        self.assertEqual((request["head"]["path"], request["status"], request["action"], request["upgrade"]),
                         ("/blocked/ws", 403, "block", None), request)
