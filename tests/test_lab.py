# mypy: allow-untyped-calls
# (trial's assert* methods carry no annotations.)
"""Tests of the namespace lab itself, the shipped redirect rules and the origin helper.

They prove the lab is a real routed network, that deploy/iptables.sh and
deploy/nftables.conf redirect LAN traffic (and only LAN traffic) with the
original destination recoverable through SO_ORIGINAL_DST, and that teardown
leaves nothing behind. They need root; otherwise they skip with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from twisted.trial.unittest import SynchronousTestCase

from tests import pki
from tests.gatewaylab import TWISTD, GatewayLab, gateway_env
from tests.lab import (
    DEPLOY,
    Backend,
    Lab,
    Namespace,
    lab_unavailable,
    make_cert,
    nft_config,
    reap_stale_namespaces,
    start_origin,
)
from tests.origin_server import pattern

# A listener for the gateway namespace. For every connection it reads the
# original destination both ways, SOL_IP/SO_ORIGINAL_DST (16-byte sockaddr_in)
# and SOL_IPV6/IP6T_SO_ORIGINAL_DST (28-byte sockaddr_in6), then sends the
# findings as JSON to the client and logs them. Mode "split": an AF_INET and
# a v6only AF_INET6 socket; mode "dual": one dual-stack AF_INET6 socket on ::.
# The buffer sizes are exact on purpose: the kernel never shrinks optlen, so a
# larger buffer comes back full length with uninitialised bytes at the end.
ORIGDST_LISTENER = r"""
import json, selectors, socket, struct, sys

SO_ORIGINAL_DST = 80       # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h
mode, port = sys.argv[1], int(sys.argv[2])

def listen(family, v6only):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
    s.bind(("0.0.0.0" if family == socket.AF_INET else "::", port))
    s.listen(64)
    return s

def origdst(conn, level, optname, size):
    try:
        raw = conn.getsockopt(level, optname, size)
    except OSError as e:
        return {"errno": e.errno}
    family = struct.unpack("=H", raw[:2])[0]  # host byte order
    if family == socket.AF_INET:
        port, addr = struct.unpack("!2xH4s", raw[:8])
        return {"family": "AF_INET", "len": len(raw), "addr": socket.inet_ntop(socket.AF_INET, addr), "port": port}
    port, flow, addr = struct.unpack("!2xHI16s", raw[:24])
    (scope,) = struct.unpack("=I", raw[24:28])
    return {"family": "AF_INET6", "len": len(raw), "addr": socket.inet_ntop(socket.AF_INET6, addr),
            "port": port, "flowinfo": flow, "scope_id": scope}

if mode == "split":
    socks = [listen(socket.AF_INET, 0), listen(socket.AF_INET6, 1)]
else:
    socks = [listen(socket.AF_INET6, 0)]
sel = selectors.DefaultSelector()
for s in socks:
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        conn, peer = key.fileobj.accept()
        out = {
            "listener": key.fileobj.family.name,
            "peer": peer[0],
            "local": conn.getsockname()[0],
            "sol_ip": origdst(conn, socket.SOL_IP, SO_ORIGINAL_DST, 16),
            "sol_ipv6": origdst(conn, socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28),
        }
        line = json.dumps(out)
        print(line, flush=True)
        conn.sendall(line.encode())
        conn.close()
"""

# Connect to argv[1]:argv[2], print everything received until EOF.
CONNECT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
data = b""
while chunk := s.recv(65536):
    data += chunk
sys.stdout.write(data.decode())
"""

# Open N TLS connections at once (all handshakes done before any request),
# then GET /bytes/SIZE on each; print how many bodies matched.
CONCURRENT = r"""
import hashlib, socket, ssl, sys, threading
host, cafile, n, size, expect = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
ctx = ssl.create_default_context(cafile=cafile)
barrier = threading.Barrier(n, timeout=30)
ok = []
def one():
    with socket.create_connection((host, 443), timeout=30) as raw:
        with ctx.wrap_socket(raw, server_hostname="origin.test") as s:
            barrier.wait()
            s.sendall(f"GET /bytes/{size} HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    body = data.split(b"\r\n\r\n", 1)[1]
    if hashlib.sha256(body).hexdigest() == expect:
        ok.append(1)
threads = [threading.Thread(target=one) for _ in range(n)]
for t in threads: t.start()
for t in threads: t.join(40)
print(len(ok))
"""

# A UDP echo server on port argv[1], v4 and v6: logs and echoes each datagram.
UDP_ECHO = r"""
import selectors, socket, sys
port = int(sys.argv[1])
sel = selectors.DefaultSelector()
for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    s = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, port))
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        data, peer = key.fileobj.recvfrom(2048)
        print(f"got {peer[0]} {data.decode()}", flush=True)
        key.fileobj.sendto(data, peer)
"""

# One datagram to argv[1]:argv[2] on a connected UDP socket; print what came
# of it: "echo", "refused" (an ICMP port-unreachable came back) or "timeout".
UDP_PROBE = r"""
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.connect((host, port))
s.send(b"quic")
try:
    print("echo" if s.recv(2048) == b"quic" else "garbled")
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("timeout")
"""

ENOENT = 2


def _netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _alive(pid: int) -> bool:
    """A process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def curl(ns: Namespace, *args: str, timeout: float = 15) -> str:
    """curl inside a namespace; returns stdout, raises with stderr on failure."""
    return ns.run(["curl", "-sS", "--max-time", str(timeout - 5), *args], timeout=timeout).stdout


class LabCase(SynchronousTestCase):
    """A fresh lab per test, torn down by a cleanup even when the test fails."""

    skip = lab_unavailable()

    def setUp(self) -> None:
        self.lab = Lab()
        self.lab.start()
        self.addCleanup(self.lab.close)

    def origin(self, **kw: Any) -> tuple[Path, Path]:
        """Start the TLS origin (443, plus plain 8080); return (cert, key)."""
        cert, key = make_cert(self.lab.workdir)
        start_origin(self.lab, cert, key, plain_port=8080, **kw)
        return cert, key

    def https(self, ns: Namespace, ip: str, path: str, *args: str) -> str:
        """GET https://origin.test/path with origin.test pinned to ip, verified."""
        return curl(
            ns, "--http1.1", "--cacert", str(self.lab.workdir / "origin.crt"),
            "--resolve", f"origin.test:443:{ip}", *args, f"https://origin.test{path}",
        )

    def listener(self, mode: str, port: int = 8443) -> subprocess.Popen[bytes]:
        proc = self.lab.gateway.popen([sys.executable, "-c", ORIGDST_LISTENER, mode, str(port)])
        self.lab.gateway.wait_for_port(port, proc=proc)
        return proc

    def connect(self, ns: Namespace, host: str, port: int = 443) -> dict[str, Any]:
        out = ns.run([sys.executable, "-c", CONNECT, host, str(port)], timeout=15).stdout
        result: dict[str, Any] = json.loads(out)
        return result

    def udp_echo(self, port: int = 443) -> subprocess.Popen[bytes]:
        """A UDP echo server in the origin namespace; its log lists what arrived."""
        proc = self.lab.origin.popen([sys.executable, "-c", UDP_ECHO, str(port)])
        deadline = time.monotonic() + 10
        while "ready" not in self.lab.log(proc):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.fail(f"UDP echo server did not start: {self.lab.log(proc)}")
            time.sleep(0.05)
        return proc

    def udp(self, host: str, port: int = 443) -> str:
        """Send one datagram from the client; "echo", "refused" or "timeout"."""
        return self.lab.client.run([sys.executable, "-c", UDP_PROBE, host, str(port)], timeout=15).stdout.strip()


class TopologyTests(LabCase):
    def test_routed_v4_and_v6(self) -> None:
        """The client reaches the origin through the gateway, unNATed, on both families."""
        self.origin()
        body = pattern(100_000)
        for origin_ip, client_ip in ((self.lab.origin_ip, self.lab.client_ip), (f"[{self.lab.origin_ip6}]", self.lab.client_ip6)):
            got = self.lab.client.run(
                ["curl", "-sS", "--max-time", "10", f"http://{origin_ip}:8080/bytes/100000"], text=False
            ).stdout
            self.assertEqual(_sha256(got), _sha256(body))
            info = json.loads(curl(self.lab.client, f"http://{origin_ip}:8080/info"))
            self.assertEqual(info["peer"][0], client_ip)  # no NAT on the forwarded path
        # It really is routed: the path crosses the gateway (one hop).
        trace = self.lab.client.run(["ip", "route", "get", self.lab.origin_ip]).stdout
        self.assertIn(f"via {self.lab.gateway_lan_ip}", trace)

    def test_forwarding_on_in_gateway_only(self) -> None:
        for ns, want in ((self.lab.gateway, "1"), (self.lab.client, "0"), (self.lab.origin, "0")):
            out = ns.run(["sysctl", "-n", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"]).stdout
            self.assertEqual(out.split(), [want, want], ns)

    def test_root_namespace_untouched(self) -> None:
        """Lab addresses and interfaces exist only inside the lab namespaces."""
        host = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
        self.assertNotIn("10.231.", host)
        self.assertNotIn("fd00:e7:", host)
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
        self.assertNotIn(f" {self.lab.lan_if}", links)


class TeardownTests(SynchronousTestCase):
    skip = lab_unavailable()

    def test_removes_namespaces_and_processes(self) -> None:
        with Lab() as lab:
            names = {ns.name for ns in lab.namespaces}
            self.assertTrue(names <= _netns_names())
            tracked = lab.origin.popen(["sleep", "60"])
            # A daemon the lab did not start (own session, reparented).
            lab.gateway.run(["bash", "-c", "setsid sleep 60 </dev/null >/dev/null 2>&1 &"])
            stray = [int(p) for p in subprocess.run(
                ["ip", "netns", "pids", lab.gateway.name], capture_output=True, text=True, check=True
            ).stdout.split()]
            self.assertEqual(len(stray), 1)
            workdir = lab.workdir
        self.assertFalse(names & _netns_names())
        self.assertIsNotNone(tracked.poll())
        self.assertFalse(_alive(stray[0]))
        self.assertFalse(workdir.exists())

    def test_removes_namespaces_when_body_raises(self) -> None:
        names: set[str] = set()
        with self.assertRaises(ZeroDivisionError):
            with Lab() as lab:
                names = {ns.name for ns in lab.namespaces}
                lab.client.popen(["sleep", "60"])
                1 / 0
        self.assertEqual(len(names), 3)
        self.assertFalse(names & _netns_names())

    def test_reaps_namespaces_of_dead_runs(self) -> None:
        dead = subprocess.Popen(["true"])
        dead.wait()
        name = f"etpmitm-lab-{dead.pid}-1-gw"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.addCleanup(subprocess.run, ["ip", "netns", "delete", name], capture_output=True)
        self.assertIn(name, reap_stale_namespaces())
        self.assertNotIn(name, _netns_names())


# trial collects every TestCase subclass in the module, so the shared rule
# tests live in a plain mixin; only the type checker sees it as a LabCase.
if TYPE_CHECKING:
    _MixinBase = LabCase
else:
    _MixinBase = object


class RulesMixin(_MixinBase):
    """The shipped rules, per backend. Subclasses set backend."""

    backend: ClassVar[Backend]

    def ruleset(self) -> str:
        raise NotImplementedError

    def mark_client(self) -> None:
        """Give the client's packets the bypass mark, before nat sees them."""
        raise NotImplementedError

    def apply_rules_quic_allowed(self) -> None:
        """The shipped rules with the documented QUIC setting turned to allow."""
        raise NotImplementedError

    def test_quic_rejected_tcp_redirected(self) -> None:
        """By default, UDP/443 from the LAN gets port-unreachable; TCP/443 still lands on the gateway."""
        self.lab.apply_rules(8443, self.backend)
        echo, other = self.udp_echo(), self.udp_echo(4443)
        self.listener("split")
        for ip in (self.lab.origin_ip, self.lab.origin_ip6):
            self.assertEqual(self.udp(ip), "refused", ip)
            got = self.connect(self.lab.client, ip)
            key = "sol_ip" if "." in ip else "sol_ipv6"
            self.assertEqual((got[key]["addr"], got[key]["port"]), (ip, 443))
        self.assertEqual(self.lab.log(echo), "ready\n")  # nothing reached the origin
        self.assertEqual(self.udp(self.lab.origin_ip, 4443), "echo")  # other UDP ports pass
        self.assertIn(f"got {self.lab.client_ip} quic", self.lab.log(other))

    def test_quic_allowed_when_turned_off(self) -> None:
        """With the setting at allow, UDP/443 reaches the origin; TCP/443 is still redirected."""
        self.lab.apply_rules(8443, self.backend)  # reject first: the switch must undo it
        self.apply_rules_quic_allowed()
        echo = self.udp_echo()
        self.listener("split")
        for ip in (self.lab.origin_ip, self.lab.origin_ip6):
            self.assertEqual(self.udp(ip), "echo", ip)
            got = self.connect(self.lab.client, ip)
            key = "sol_ip" if "." in ip else "sol_ipv6"
            self.assertEqual(got[key]["port"], 443)
        self.assertEqual(self.lab.log(echo).count(" quic"), 2)

    def test_redirect_v4_and_v6(self) -> None:
        """Client -> origin:443 lands on the gateway's port; the original destination survives."""
        self.lab.apply_rules(8443, self.backend)
        self.listener("split")
        v4 = self.connect(self.lab.client, self.lab.origin_ip)
        self.assertEqual(v4["listener"], "AF_INET")
        self.assertEqual(v4["peer"], self.lab.client_ip)
        self.assertEqual(v4["local"], self.lab.gateway_lan_ip)
        self.assertEqual(v4["sol_ip"], {"family": "AF_INET", "len": 16, "addr": self.lab.origin_ip, "port": 443})
        self.assertIn("errno", v4["sol_ipv6"])

        v6 = self.connect(self.lab.client, self.lab.origin_ip6)
        self.assertEqual(v6["listener"], "AF_INET6")
        self.assertEqual(v6["peer"], self.lab.client_ip6)
        # IPv6 REDIRECT picks an address of the incoming interface: the global one.
        self.assertEqual(v6["local"], self.lab.gateway_lan_ip6)
        self.assertEqual(
            v6["sol_ipv6"],
            {"family": "AF_INET6", "len": 28, "addr": self.lab.origin_ip6, "port": 443, "flowinfo": 0, "scope_id": 0},
        )
        self.assertEqual(v6["sol_ip"], {"errno": ENOENT})

    def test_dual_stack_listener(self) -> None:
        """On one AF_INET6 socket bound to ::, v4 clients answer SOL_IP, v6 clients SOL_IPV6."""
        self.lab.apply_rules(8443, self.backend)
        self.listener("dual")
        v4 = self.connect(self.lab.client, self.lab.origin_ip)
        self.assertEqual(v4["peer"], f"::ffff:{self.lab.client_ip}")
        self.assertEqual(v4["sol_ip"], {"family": "AF_INET", "len": 16, "addr": self.lab.origin_ip, "port": 443})
        self.assertEqual(v4["sol_ipv6"], {"errno": ENOENT})
        v6 = self.connect(self.lab.client, self.lab.origin_ip6)
        self.assertEqual(v6["sol_ipv6"]["addr"], self.lab.origin_ip6)
        self.assertEqual(v6["sol_ipv6"]["port"], 443)
        self.assertEqual(v6["sol_ip"], {"errno": ENOENT})

    def test_extra_ports(self) -> None:
        self.lab.apply_rules(8443, self.backend, dports=(443, 8444))
        self.listener("split")
        for host in (self.lab.origin_ip, self.lab.origin_ip6):
            got = self.connect(self.lab.client, host, 8444)
            key = "sol_ip" if "." in host else "sol_ipv6"
            self.assertEqual((got[key]["addr"], got[key]["port"]), (host, 8444))

    def test_connections_to_the_gateway_not_redirected(self) -> None:
        """Port 443 on the gateway's own addresses is exempt (no self-loop)."""
        self.lab.apply_rules(8443, self.backend)
        listener = self.listener("split")
        for host in (self.lab.gateway_lan_ip, self.lab.gateway_wan_ip, self.lab.gateway_lan_ip6):
            done = self.lab.client.run([sys.executable, "-c", CONNECT, host, "443"], check=False, timeout=15)
            self.assertIn("ConnectionRefusedError", done.stderr, host)  # nothing listens on 443
        self.assertEqual(self.lab.log(listener).split(), ["ready"])

    def test_gateway_own_connections_not_redirected(self) -> None:
        """From the gateway itself, origin:443 is the real origin (verified cert), not the proxy port."""
        self.lab.apply_rules(8443, self.backend)
        listener = self.listener("split")
        self.origin()
        for ip in (self.lab.origin_ip, self.lab.origin_ip6):
            info = json.loads(self.https(self.lab.gateway, ip, "/info"))
            self.assertEqual(info["local"], [ip, 443])
            self.assertEqual(info["sni"], "origin.test")
        self.assertEqual(self.lab.log(listener).split(), ["ready"])  # no connection reached it

    def test_bypass_mark(self) -> None:
        """Packets carrying the bypass mark are routed to the origin untouched."""
        self.lab.apply_rules(8443, self.backend)
        listener = self.listener("split")
        self.origin()
        self.mark_client()
        self.udp_echo()
        for ip, client_ip in ((self.lab.origin_ip, self.lab.client_ip), (self.lab.origin_ip6, self.lab.client_ip6)):
            info = json.loads(self.https(self.lab.client, ip, "/info"))
            self.assertEqual(info["peer"][0], client_ip)
            self.assertEqual(self.udp(ip), "echo", ip)  # nor is its QUIC rejected
        self.assertEqual(self.lab.log(listener).split(), ["ready"])

    def test_idempotent_and_removable(self) -> None:
        self.lab.apply_rules(9000, self.backend)
        self.lab.apply_rules(8443, self.backend)
        first = self.ruleset()
        self.lab.apply_rules(8443, self.backend)
        self.assertEqual(self.ruleset(), first)  # re-applying changes nothing
        self.assertIn("8443", first)
        self.assertNotIn("9000", first)
        self.lab.remove_rules(self.backend)
        self.assertNotIn("8443", self.ruleset())
        # Without rules, the client reaches the real origin.
        self.origin()
        info = json.loads(self.https(self.lab.client, self.lab.origin_ip, "/info"))
        self.assertEqual(info["local"], [self.lab.origin_ip, 443])


class IptablesRulesTests(RulesMixin, LabCase):
    skip = lab_unavailable("iptables")
    backend = "iptables"

    def ruleset(self) -> str:
        return "".join(
            self.lab.gateway.run([cmd, "-w", "10", "-t", table, "-S"]).stdout
            for cmd in ("iptables", "ip6tables")
            for table in ("nat", "filter")
        )

    def apply_rules_quic_allowed(self) -> None:
        self.lab.gateway.run(["bash", DEPLOY / "iptables.sh", "--lan-if", self.lab.lan_if, "--quic", "allow"])

    def mark_client(self) -> None:
        for cmd, src in (("iptables", self.lab.client_ip), ("ip6tables", self.lab.client_ip6)):
            self.lab.gateway.run(
                [cmd, "-w", "10", "-t", "mangle", "-A", "PREROUTING", "-s", src, "-j", "MARK", "--set-mark", "0x1e7"]
            )

    def test_one_jump_per_family(self) -> None:
        self.lab.apply_rules(8443, self.backend)
        self.lab.apply_rules(8443, self.backend)
        for cmd in ("iptables", "ip6tables"):
            for table, chain in (("nat", "PREROUTING"), ("filter", "FORWARD")):
                rules = self.lab.gateway.run([cmd, "-w", "10", "-t", table, "-S", chain]).stdout
                self.assertEqual(rules.count("-j ETPMITM"), 1, rules)
        self.lab.remove_rules(self.backend)
        self.assertNotIn("ETPMITM", self.ruleset())

    def test_interfaces_must_exist(self) -> None:
        """A LAN interface that does not exist is refused (a typo would inspect nothing); wildcards pass."""
        gw, script = self.lab.gateway, str(DEPLOY / "iptables.sh")
        done = gw.run(["bash", script, "--lan-if", "lan0,lna0"], check=False)
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertIn("no interface 'lna0'", done.stderr)
        self.assertNotIn("ETPMITM", self.ruleset())
        gw.run(["bash", script, "--lan-if", "lan0,ppp+"])
        self.assertIn("-i ppp+ -p tcp", self.ruleset())

    def test_remove_twice_and_bad_arguments(self) -> None:
        gw, script = self.lab.gateway, str(DEPLOY / "iptables.sh")
        gw.run(["bash", script, "--remove"])
        gw.run(["bash", script, "--remove"])
        for bad in (
            [],  # no LAN interface
            ["--lan-if", "lan0", "--port", "0"],
            ["--lan-if", "lan0", "--dports", ",".join(str(p) for p in range(1, 17))],
            ["--lan-if", "lan0", "--mark", "0"],
            ["--lan-if", "lan0", "--family", "5"],
            ["--lan-if", "lan0", "--quic", "drop"],
            ["--lan-if", "bad name"],
        ):
            done = gw.run(["bash", script, *bad], check=False, env={"ETPMITM_LAN_IF": ""})
            self.assertEqual(done.returncode, 2, (bad, done.stderr))
        self.assertNotIn("ETPMITM", self.ruleset())


class NftRulesTests(RulesMixin, LabCase):
    skip = lab_unavailable("nft")
    backend = "nft"

    def ruleset(self) -> str:
        return self.lab.gateway.run(["nft", "list", "ruleset"]).stdout

    def apply_rules_quic_allowed(self) -> None:
        path = self.lab.workdir / "etpmitm-quic-allowed.nft"
        path.write_text(nft_config(ETPMITM_LAN_IF=f'"{self.lab.lan_if}"', ETPMITM_QUIC='"quic_allow"'))
        self.lab.gateway.run(["nft", "-f", path])

    def mark_client(self) -> None:
        self.lab.gateway.run(
            ["nft", "-f", "-"],
            input=(
                "table inet labmark {\n"
                "  chain pre { type filter hook prerouting priority mangle;\n"
                f"    ip saddr {self.lab.client_ip} meta mark set 0x1e7\n"
                f"    ip6 saddr {self.lab.client_ip6} meta mark set 0x1e7\n"
                "  }\n}\n"
            ),
        )

    def test_shipped_file_loads_verbatim(self) -> None:
        """deploy/nftables.conf as shipped (LAN lan0, port 8443) loads twice and redirects."""
        self.lab.gateway.run(["nft", "-f", DEPLOY / "nftables.conf"])
        self.lab.gateway.run(["nft", "-f", DEPLOY / "nftables.conf"])
        self.assertEqual(self.ruleset().count("redirect to :8443"), 1)
        self.listener("split")
        got = self.connect(self.lab.client, self.lab.origin_ip)
        self.assertEqual(got["sol_ip"]["addr"], self.lab.origin_ip)

    def test_debian_boot_configuration(self) -> None:
        """Debian 12's stock /etc/nftables.conf plus the README's include line loads, at boot and on reload."""
        included = self.lab.workdir / "nftables.d" / "etpmitm.nft"
        included.parent.mkdir()
        included.write_text((DEPLOY / "nftables.conf").read_text())
        readme = (DEPLOY / "README.md").read_text()
        include = 'include "/etc/nftables.d/etpmitm.nft"'
        self.assertIn(f"echo '{include}' >> /etc/nftables.conf", readme)
        self.assertIn("install -D -m 644 deploy/nftables.conf /etc/nftables.d/etpmitm.nft", readme)  # makes the dir
        self.assertIn("systemctl enable nftables", readme)  # disabled on a stock Debian 12
        main = self.lab.workdir / "nftables.conf"
        main.write_text(DEBIAN_NFTABLES_CONF + include.replace("/etc/nftables.d", str(included.parent)) + "\n")
        self.lab.gateway.run(["nft", "-c", "-f", main])
        for _ in range(2):  # nftables.service: start, then reload
            self.lab.gateway.run(["nft", "-f", main])
        ruleset = self.ruleset()
        self.assertEqual(ruleset.count("table inet etpmitm"), 1)
        self.assertEqual(ruleset.count("table inet filter"), 1)
        self.udp_echo()
        self.assertEqual(self.udp(self.lab.origin_ip6), "refused")
        self.listener("split")
        got = self.connect(self.lab.client, self.lab.origin_ip)
        self.assertEqual(got["sol_ip"]["addr"], self.lab.origin_ip)


# /etc/nftables.conf as the nftables package of Debian 12 ships it.
DEBIAN_NFTABLES_CONF = """#!/usr/sbin/nft -f

flush ruleset

table inet filter {
	chain input {
		type filter hook input priority filter;
	}
	chain forward {
		type filter hook forward priority filter;
	}
	chain output {
		type filter hook output priority filter;
	}
}
"""


class OriginServerTests(LabCase):
    def test_http11_keepalive_bytes_and_echo(self) -> None:
        cert, _ = self.origin()
        ip = self.lab.origin_ip
        # Two URLs on one curl: /bytes/10 (to /dev/null), then the helper's own
        # /bytes/300000 (to "big"); curl pairs each -o with the URLs in order.
        out = self.https(
            self.lab.client, ip, "/bytes/300000", "-w", "%{num_connects} %{http_version}\n",
            "https://origin.test/bytes/10", "-o", "/dev/null", "-o", str(self.lab.workdir / "big"),
        )
        self.assertEqual(out.split(), ["1", "1.1", "0", "1.1"])  # second request reused the connection
        self.assertEqual(_sha256((self.lab.workdir / "big").read_bytes()), _sha256(pattern(300_000)))
        upload = os.urandom(2_000_000)
        (self.lab.workdir / "up").write_bytes(upload)
        for how in ("--data-binary", "--upload-file"):  # Content-Length, then chunked (from stdin)
            arg = f"@{self.lab.workdir / 'up'}" if how == "--data-binary" else "-"
            echoed = self.lab.client.run(
                ["curl", "-sS", "--max-time", "10", "--http1.1", "--cacert", str(cert),
                 "--resolve", f"origin.test:443:{ip}", how, arg, "-X", "POST", "https://origin.test/echo"],
                input=upload if arg == "-" else None, text=False,
            ).stdout
            self.assertEqual(json.loads(echoed), {"length": len(upload), "sha256": _sha256(upload)})

    def test_alpn_h2_and_tls_versions(self) -> None:
        self.origin()
        out = curl(
            self.lab.client, "--http2", "--cacert", str(self.lab.workdir / "origin.crt"),
            "--resolve", f"origin.test:443:{self.lab.origin_ip6}", "-w", "%{http_version}",
            "https://origin.test/",
        )
        self.assertEqual(out, "origin ok\n2")
        info = json.loads(self.https(self.lab.client, self.lab.origin_ip, "/info"))
        self.assertEqual((info["alpn"], info["version"]), ("http/1.1", "TLSv1.3"))

    def test_http2_routes_multiplexed(self) -> None:
        """Real HTTP/2 (curl/nghttp2): the HTTP/1.1 routes, as concurrent streams on one connection."""
        cert, _ = self.origin()
        work = self.lab.workdir
        h2 = ["--http2", "--cacert", str(cert), "--resolve", f"origin.test:443:{self.lab.origin_ip}"]
        # --parallel multiplexes every URL over one connection; output comes in
        # completion order, hence urlnum and the sort.
        out = curl(
            self.lab.client, *h2, "--parallel",
            "-w", "%{urlnum} %{num_connects} %{http_version} %{response_code} %{content_type} %{size_download}\n",
            "https://origin.test/", "-o", str(work / "root"),
            "https://origin.test/bytes/1000000", "-o", str(work / "big"),
            "https://origin.test/info", "-o", str(work / "info"),
            "https://origin.test/missing", "-o", "/dev/null",
        )
        rows = sorted(line.split() for line in out.splitlines())
        self.assertEqual(sum(int(r[1]) for r in rows), 1)  # one connection for all four
        info = (work / "info").read_bytes()
        self.assertEqual(
            [[r[0], *r[2:]] for r in rows],
            [
                ["0", "2", "200", "text/plain", "10"],
                ["1", "2", "200", "application/octet-stream", "1000000"],
                ["2", "2", "200", "application/json", str(len(info))],
                ["3", "2", "404", "text/plain", "10"],
            ],
        )
        self.assertEqual((work / "root").read_bytes(), b"origin ok\n")
        self.assertEqual(_sha256((work / "big").read_bytes()), _sha256(pattern(1_000_000)))
        self.assertEqual(json.loads(info)["alpn"], "h2")
        # 5 MB up: with a content-length (--data-binary), then without one
        # (-T - from stdin), both well past the initial 64 KiB windows.
        upload = os.urandom(5_000_000)
        (work / "up").write_bytes(upload)
        for how, arg in (("--data-binary", f"@{work / 'up'}"), ("--upload-file", "-")):
            echoed = self.lab.client.run(
                ["curl", "-sS", "--max-time", "10", *h2, how, arg, "-X", "POST",
                 "-w", "\n%{http_version}", "https://origin.test/echo"],
                input=upload if arg == "-" else None, text=False,
            ).stdout
            body, _, version = echoed.rpartition(b"\n")
            self.assertEqual(version, b"2")
            self.assertEqual(json.loads(body), {"length": len(upload), "sha256": _sha256(upload)})

    def test_max_tls_12(self) -> None:
        cert, key = make_cert(self.lab.workdir)
        start_origin(self.lab, cert, key, extra_args=["--max-tls", "1.2"])
        info = json.loads(self.https(self.lab.client, self.lab.origin_ip, "/info"))
        self.assertEqual(info["version"], "TLSv1.2")

    def test_200_concurrent_connections(self) -> None:
        cert, _ = self.origin()
        out = self.lab.client.run(
            [sys.executable, "-c", CONCURRENT, self.lab.origin_ip, str(cert), "200", "20000",
             _sha256(pattern(20_000))],
            timeout=60,
        ).stdout
        self.assertEqual(out.strip(), "200")


class DeployFilesTests(LabCase):
    def test_sysctl_conf_keys_exist(self) -> None:
        """Every key set in deploy/sysctl.conf exists (read-only check in the gateway namespace)."""
        self.lab.apply_rules(8443, "nft" if lab_unavailable("iptables") else "iptables")  # loads conntrack
        keys = [
            line.split("=", 1)[0].strip()
            for line in (DEPLOY / "sysctl.conf").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        self.assertIn("net.ipv4.ip_forward", keys)
        self.lab.gateway.run(["sysctl", "-n", *keys])

    def test_systemd_unit_verifies(self) -> None:
        if shutil.which("systemd-analyze") is None:
            self.skipTest("systemd-analyze is not installed")
        unit = (DEPLOY / "etpmitm.service").read_text()
        self.assertIn("ExecStart=/opt/etpmitm/bin/twistd ", unit)
        self.assertIn("\nLogRateLimitIntervalSec=0\n", unit)  # audit lines are not rate-limited away
        # The venv is not installed here: point ExecStart at a binary that exists.
        path = self.lab.workdir / "etpmitm.service"
        path.write_text(unit.replace("/opt/etpmitm/bin/twistd", "/bin/true"))
        done = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=30)
        self.assertEqual((done.returncode, done.stderr), (0, ""))


class UnitPolicyTests(SynchronousTestCase):
    """The systemd unit's ExecStart and ExecReload with /etc/etpmitm/policy.toml, end to end.

    The gateway runs in a private mount namespace whose /etc is an overlay
    holding etpmitm/policy.toml, so the host's /etc is never touched.
    """

    skip = lab_unavailable("iptables")

    def unit_line(self, key: str) -> list[str]:
        unit = (DEPLOY / "etpmitm.service").read_text()
        lines = [line for line in unit.splitlines() if line.startswith(f"{key}=")]
        self.assertEqual(len(lines), 1, key)
        return lines[0].split("=", 1)[1].split()

    def test_default_policy_file_and_reload(self) -> None:
        env = GatewayLab(dports=[443])
        self.addCleanup(env.close)
        lab = env.lab
        cert, key = env.public.issue(["origin.test"], [lab.origin_ip])
        env.origin(443, [cert, env.public.intermediate], key)
        subprocess.run([Path(sys.executable).parent / "etpmitm", "ca", "init", "--dir", env.ca_dir],
                       check=True, capture_output=True, env={**os.environ, **gateway_env()})
        upper, work = lab.workdir / "etc-upper", lab.workdir / "etc-work"
        (upper / "etpmitm").mkdir(parents=True)
        work.mkdir()
        block = '[[rule]]\nmatch = ["origin.test"]\naction = "block"\n'
        (upper / "etpmitm" / "policy.toml").write_text(block)

        argv = self.unit_line("ExecStart")
        self.assertEqual(argv[0], "/opt/etpmitm/bin/twistd")
        self.assertNotIn("--policy", argv)  # the file is found by itself
        argv[0] = str(TWISTD)
        argv[argv.index("--ca-dir") + 1] = str(env.ca_dir)
        argv += ["--upstream-trust", str(env.trust)]
        overlay = 'mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1,workdir=$2" /etc && shift 2 && exec "$@"'
        gateway = lab.gateway.popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", overlay, "sh", upper, work, *argv],
            env=gateway_env(), cwd=lab.workdir,
        )
        env.gateway = gateway
        lab.gateway.wait_for_port(8443, proc=gateway, timeout=30)
        workers = (os.cpu_count() or 1) if "--workers" in argv else 1
        if workers > 1:
            env.wait_for_log("serving the master's sockets", count=workers)
        self.assertIn("policy /etc/etpmitm/policy.toml", env.wait_for_log("etpmitm: listen on"))

        def codes() -> list[str]:
            return [
                env.curl("--resolve", f"origin.test:443:{lab.origin_ip}", "-o", "/dev/null",
                         "-w", "%{http_code}", "https://origin.test/").stdout
                for _ in range(4)
            ]

        self.assertEqual(codes(), ["403"] * 4)
        # An operator edits the file, then: systemctl reload etpmitm (the unit's ExecReload).
        lab.gateway.run(["nsenter", "-t", str(gateway.pid), "-m", "sh", "-c", "cat > /etc/etpmitm/policy.toml"],
                        input='[origin]\nuntrusted = "block"\n')
        reload = [str(gateway.pid) if word == "$MAINPID" else word for word in self.unit_line("ExecReload")]
        self.assertEqual(reload, ["/bin/kill", "-HUP", str(gateway.pid)])
        subprocess.run(reload, check=True)
        env.wait_for_log("policy reloaded from /etc/etpmitm/policy.toml: 0 rules", count=workers)
        self.assertEqual(codes(), ["200"] * 4)
        self.assertIsNone(gateway.poll())
