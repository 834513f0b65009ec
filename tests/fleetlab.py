"""A fleet in the namespace lab: Debian's HAProxy on the gateway takes the
REDIRECTed TCP/443 and balances it over two etpmitm nodes (loopback ports
9001 and 9002, ``--listen haproxy:tcp:PORT``) with ``send-proxy-v2`` and HTTP
health checks on each node's ``/healthz`` (``--metrics`` on 9181 and 9182),
running ``deploy/haproxy.cfg`` as shipped.  IPv4 reaches it
by the shipped REDIRECT rules (``deploy/iptables.sh --family 4``), IPv6 by
TPROXY (``deploy/haproxy-tproxy6.cfg`` and the rules in its comment).  The nodes share
the CA directory and the policy file; each writes its own ``--audit-log``.
Node 2 runs ``--workers 2`` (its sockets are inherited by its workers).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.gatewaylab import TWISTD, GatewayLab, gateway_env
from tests.lab import REPO, Lab

FRONT_PORT = 8443
NODE_PORTS = {1: 9001, 2: 9002}
HEALTH_PORTS = {1: 9181, 2: 9182}
"""Each node's ``--metrics`` port: HAProxy's check, ``GET /healthz``."""
NODE_ARGS = {1: (), 2: ("--workers", "2")}
DRAIN = 30.0
DRAIN_DELAY = 3.0
"""``--drain-delay``: above HAProxy's detection window (inter 500ms, fall 2)."""
FLEET_CLIENT = Path(__file__).resolve().parent / "fleet_client.py"


def fleet_unavailable() -> str | None:
    if shutil.which("haproxy") is None:
        return "haproxy is not installed (apt-get install haproxy)"
    return None


class Fleet:
    def __init__(self) -> None:
        self.env = GatewayLab(dports=[443])
        self.nodes: dict[int, subprocess.Popen[bytes]] = {}
        try:
            cert, key = self.env.public.issue(["origin.test"], [Lab.origin_ip])
            self.env.origin(443, [cert, self.env.public.intermediate], key)
            self.env.policy.write_text("# shared by every node\n")
            self.intake_rules()
            subprocess.run(
                [Path(sys.executable).parent / "etpmitm", "ca", "init", "--dir", self.env.ca_dir],
                check=True, capture_output=True, env={**os.environ, **gateway_env()},
            )
            for port in [*NODE_PORTS.values(), *HEALTH_PORTS.values()]:  # counts connections to the nodes and their checks
                self.lab.gateway.run(["iptables", "-A", "INPUT", "-p", "tcp", "--syn", "--dport", str(port)])
            for number in NODE_PORTS:  # one after the other: the first start writes the shared leaf key
                self.start_node(number)
            self.stats = self.lab.workdir / "haproxy.sock"
            env = {
                "ETPMITM_BIND4": f"0.0.0.0:{FRONT_PORT}",
                "ETPMITM_BIND6": f":::{FRONT_PORT}",
                "ETPMITM_NODE1": f"127.0.0.1:{NODE_PORTS[1]}",
                "ETPMITM_NODE2": f"127.0.0.1:{NODE_PORTS[2]}",
                "ETPMITM_CHECK1": str(HEALTH_PORTS[1]),
                "ETPMITM_CHECK2": str(HEALTH_PORTS[2]),
                "ETPMITM_STATS": str(self.stats),
            }
            configs = ["-f", REPO / "deploy" / "haproxy.cfg", "-f", REPO / "deploy" / "haproxy-tproxy6.cfg"]
            self.haproxy = self.lab.gateway.popen(["haproxy", "-db", *configs], env=env)
            self.lab.gateway.wait_for_port(FRONT_PORT, proc=self.haproxy)
            self.wait_state({"node1": "UP", "node2": "UP"})
        except BaseException:
            self.env.close()
            raise

    def intake_rules(self) -> None:
        """REDIRECT for IPv4 (the shipped script), TPROXY for IPv6 (deploy/haproxy-tproxy6.cfg's rules)."""
        gateway, script = self.lab.gateway, REPO / "deploy" / "iptables.sh"
        gateway.run(["bash", script, "--remove"])
        gateway.run(["bash", script, "--lan-if", self.lab.lan_if, "--port", str(FRONT_PORT), "--dports", "443", "--family", "4"])
        gateway.run(["ip6tables", "-t", "mangle", "-A", "PREROUTING", "-i", self.lab.lan_if, "-p", "tcp", "--dport", "443",
                     "-m", "addrtype", "!", "--dst-type", "LOCAL",
                     "-j", "TPROXY", "--on-port", str(FRONT_PORT), "--tproxy-mark", "0x1/0x1"])
        gateway.run(["ip", "-6", "rule", "add", "fwmark", "0x1/0x1", "lookup", "100"])
        gateway.run(["ip", "-6", "route", "add", "local", "::/0", "dev", "lo", "table", "100"])

    @property
    def lab(self) -> Lab:
        return self.env.lab

    def audit_path(self, number: int) -> Path:
        return self.lab.workdir / f"audit-node{number}.json"

    def start_node(self, number: int) -> subprocess.Popen[bytes]:
        port = NODE_PORTS[number]
        argv: list[str | os.PathLike[str]] = [
            TWISTD, "-n", "--pidfile=", "etpmitm",
            "--ca-dir", self.env.ca_dir, "--upstream-trust", self.env.trust, "--policy", self.env.policy,
            "--listen", f"haproxy:tcp:{port}:interface=127.0.0.1",
            "--audit-log", self.audit_path(number), "--drain-timeout", str(DRAIN), "--drain-delay", str(DRAIN_DELAY),
            "--metrics", f"tcp:{HEALTH_PORTS[number]}:interface=127.0.0.1", *NODE_ARGS[number],
        ]
        proc = self.lab.gateway.popen(argv, env=gateway_env(), cwd=self.lab.workdir)
        self.lab.gateway.wait_for_port(port, proc=proc, timeout=30)
        self.nodes[number] = proc
        return proc

    def healthz(self, number: int) -> tuple[int, str]:
        """``GET /healthz`` of a node, straight from the gateway's namespace: (status, body)."""
        url = f"http://127.0.0.1:{HEALTH_PORTS[number]}/healthz"
        done = self.lab.gateway.run(["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}", url], check=False, timeout=30)
        body, _, code = done.stdout.rpartition("\n")
        return int(code or 0), body

    def log(self, number: int) -> str:
        return self.lab.log(self.nodes[number])

    def audit(self, number: int) -> list[dict[str, Any]]:
        path = self.audit_path(number)
        if not path.exists():
            return []
        events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [e for e in events if e.get("event") == "connection"]

    # -- HAProxy's runtime API -------------------------------------------------------------

    def haproxy_command(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX) as skt:
            skt.settimeout(10)
            skt.connect(str(self.stats))
            skt.sendall(command.encode() + b"\n")
            out = b""
            while chunk := skt.recv(65536):
                out += chunk
        return out.decode()

    def server_stats(self) -> dict[str, dict[str, str]]:
        """Each node's row of ``show stat`` (status, check_status, check_code, ...)."""
        lines = self.haproxy_command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        found = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(",")))
            if row.get("pxname") == "etpmitm" and row.get("svname", "").startswith("node"):
                found[row["svname"]] = row
        return found

    def states(self) -> dict[str, str]:
        """Each node's state as HAProxy's checks see it (UP, DOWN, ...)."""
        return {name: row["status"] for name, row in self.server_stats().items()}

    def wait_state(self, wanted: dict[str, str], timeout: float = 20) -> float:
        """Wait until the nodes are in ``wanted`` states; return when (time.time())."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.states()
            if all(states.get(name) == state for name, state in wanted.items()):
                return time.time()
            if time.monotonic() > deadline:
                raise AssertionError(f"HAProxy sees {states}, not {wanted}")
            time.sleep(0.05)

    def syns(self, port: int) -> int:
        """New TCP connections to ``port`` so far (the counting rule's packets)."""
        out = self.lab.gateway.run(["iptables", "-L", "INPUT", "-v", "-n", "-x"]).stdout
        [count] = [int(line.split()[0]) for line in out.splitlines() if f"dpt:{port} " in line + " "]
        return count

    def established(self, port: int) -> int:
        """Connections from HAProxy to the node on ``port`` that are open now."""
        out = self.lab.gateway.run(["ss", "-H", "-t", "-n", "state", "established", f"dport = :{port}"]).stdout
        return len([line for line in out.splitlines() if line.strip()])

    # -- clients ------------------------------------------------------------------------

    def client(self, *args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
        argv = [sys.executable, FLEET_CLIENT, args[0], Lab.origin_ip, "origin.test", str(self.env.root), *args[1:]]
        return self.lab.client.popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def close(self) -> None:
        self.env.close()
