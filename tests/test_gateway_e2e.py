"""End to end through a real gateway: namespaces, shipped rules, real clients.

client namespace --(REDIRECT to :8443 by deploy/iptables.sh)--> twistd etpmitm
--> origin namespace (tests/origin_server.py with test-PKI certificates).
"""

from __future__ import annotations

import hashlib
import html
import ipaddress
import json
import os

from twisted.trial.unittest import TestCase

from tests import pki
from tests.gatewaylab import GatewayLab, quoted, shared_lab
from tests.hellos import python_client_hello
from tests.lab import Lab, lab_unavailable
from tests.origin_server import pattern

ORIGIN = Lab.origin_ip
ORIGIN6 = Lab.origin_ip6

# Origin ports, all redirected by the shipped rules.
GOOD, RSA, MULTI, HTTP1, PLAIN, DOWN, RESET, SILENT, RESUME = 443, 4431, 4432, 4433, 4441, 4440, 4442, 4443, 4444
BAD = {  # port: (kind in the log, how the origin's certificate is bad)
    4434: "expired",
    4436: "self-signed",
    4437: "wrong-host",
    4438: "unknown-root",
    4439: "incomplete-chain",
}

# An origin that accepts, then resets the connection (SO_LINGER 0).
RESETTING_ORIGIN = """
import socket, struct
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", {port})); s.listen(16)
while True:
    c, _ = s.accept(); c.recv(4096)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); c.close()
"""


def sha256_pattern(n: int) -> str:
    return hashlib.sha256(pattern(n)).hexdigest()


def build_lab() -> GatewayLab:
    """One lab for this module: every kind of origin, then the gateway."""
    env = GatewayLab(dports=[GOOD, RSA, MULTI, HTTP1, PLAIN, DOWN, RESET, SILENT, RESUME, *BAD])
    try:
        public, other = env.public, pki.Authority("Unknown Test")
        ips = [ORIGIN, ORIGIN6]
        cert, key = public.issue(["origin.test"], ips)
        env.origin(GOOD, [cert, public.intermediate], key, extra=["--plain-port", str(PLAIN)])
        cert, key = public.issue(["rsa.test"], ips, key_kind="rsa")
        env.origin(RSA, [cert, public.intermediate], key)
        cert, key = public.issue(["multi.test", "*.multi.test", "alt.test"], org="Multi Org")
        env.origin(MULTI, [cert, public.intermediate], key)
        cert, key = public.issue(["resume.test"])
        env.origin(RESUME, [cert, public.intermediate], key)
        cert, key = public.issue(["h1.test"])
        env.origin(HTTP1, [cert, public.intermediate], key, alpn=["http/1.1"])
        past = pki.NOW - 10 * pki.DAY
        cert, key = public.issue(["expired.test"], not_before=past - pki.DAY, not_after=past)
        env.origin(4434, [cert, public.intermediate], key)
        cert, key = pki.self_signed(["selfsigned.test"])
        env.origin(4436, [cert], key)
        cert, key = public.issue(["somewhere-else.test"])
        env.origin(4437, [cert, public.intermediate], key)
        cert, key = other.issue(["unknownroot.test"])
        env.origin(4438, [cert, other.intermediate], key)
        cert, key = public.issue(["incomplete.test"])
        env.origin(4439, [cert], key)
        env.lab.origin.popen(["python3", "-c", RESETTING_ORIGIN.format(port=RESET)])
        env.lab.origin.wait_for_port(RESET)
        # An origin that never answers: its SYNs are dropped.
        env.lab.origin.run(["iptables", "-A", "INPUT", "-p", "tcp", "--dport", str(SILENT), "-j", "DROP"])
        env.start_gateway("--handshake-timeout", "5", "--connect-timeout", "3")
    except BaseException:
        env.close()
        raise
    return env


class GatewayEndToEndTests(TestCase):
    """The gateway path for valid and failing origins."""

    skip = lab_unavailable()
    env: GatewayLab

    def setUp(self) -> None:
        self.env = shared_lab(__name__, build_lab)

    def resolve(self, name: str, port: int = GOOD, ip: str = ORIGIN) -> list[str]:
        host = f"[{ip}]" if ":" in ip else ip
        return ["--resolve", f"{name}:{port}:{host}"]

    def assertServedByGateway(self, result: dict[str, object]) -> None:
        self.assertNotIn("error", result)
        issuer = result["issuer"]
        assert isinstance(issuer, dict)
        self.assertEqual(issuer.get("commonName"), "etpmitm Intermediate CA")

    def assertStillServing(self) -> None:
        """Nothing else is lost: a good connection still works."""
        done = self.env.curl(*self.resolve("origin.test"), "https://origin.test/")
        self.assertEqual((done.returncode, done.stdout), (0, "origin ok\n"), done.stderr)

    # -- valid origins -------------------------------------------------------

    def test_ecdsaOrigin(self) -> None:
        result = self.env.python_client("--host", ORIGIN, "--sni", "origin.test", "--alpn", "http/1.1")
        self.assertServedByGateway(result)
        self.assertEqual(result["status"], "HTTP/1.1 200 OK")
        self.assertIn(["DNS", "origin.test"], result["san"])
        self.env.wait_for_log("sni=origin.test action=intercept outcome=ok")

    def test_originSessionsResumed(self) -> None:
        """The gateway resumes its TLS session with a verified origin."""
        reused = []
        done = f"-> {ORIGIN}:{RESUME} sni=resume.test action=intercept outcome=ok"
        for attempt in range(4):
            result = self.env.python_client("--host", ORIGIN, "--port", str(RESUME), "--sni", "resume.test",
                                            "--path", "/info")
            self.assertServedByGateway(result)
            reused.append(json.loads(result["body"])["session_reused"])
            # The session is kept when the origin connection closes, which
            # the audit line follows.
            self.env.wait_for_log(done, count=attempt + 1)
        self.assertEqual(reused, [False, True, True, True])  # the first had no session yet

    def test_rsaOrigin(self) -> None:
        done = self.env.curl(*self.resolve("rsa.test", RSA), f"https://rsa.test:{RSA}/")
        self.assertEqual((done.returncode, done.stdout), (0, "origin ok\n"), done.stderr)

    def test_opensslSeesLeafAndIntermediate(self) -> None:
        """openssl s_client verifies the served chain: leaf + intermediate, no root."""
        done = self.env.lab.client.run(
            ["openssl", "s_client", "-connect", f"{ORIGIN}:{GOOD}", "-servername", "origin.test",
             "-CAfile", str(self.env.root), "-verify_return_error", "-verify_hostname", "origin.test",
             "-showcerts"],
            input="", check=False, timeout=30,
        )
        self.assertIn("Verify return code: 0 (ok)", done.stdout, done.stderr)
        self.assertEqual(done.stdout.count("-----BEGIN CERTIFICATE-----"), 2)
        self.assertIn("etpmitm Intermediate CA", done.stdout)

    def test_severalNamesAndWildcard(self) -> None:
        """The leaf carries the origin's names, wildcard included, and the SNI it covers."""
        result = self.env.python_client("--host", ORIGIN, "--port", str(MULTI), "--sni", "www.multi.test")
        self.assertServedByGateway(result)
        sans = {tuple(x) for x in result["san"]}  # type: ignore[union-attr]
        self.assertLessEqual(
            {("DNS", "www.multi.test"), ("DNS", "multi.test"), ("DNS", "*.multi.test"), ("DNS", "alt.test")}, sans
        )
        self.assertEqual(result["subject"], {"organizationName": "Multi Org", "commonName": "www.multi.test"})

    def test_ipOnlyWithoutSNI(self) -> None:
        """No SNI: the origin is checked by IP and the leaf carries the IP."""
        result = self.env.python_client("--host", ORIGIN)
        self.assertServedByGateway(result)
        self.assertIn(["IP Address", ORIGIN], result["san"])
        done = self.env.curl(f"https://{ORIGIN}/")
        self.assertEqual((done.returncode, done.stdout), (0, "origin ok\n"), done.stderr)

    def test_h2Mirrored(self) -> None:
        done = self.env.curl("--http2", "-o", "/dev/null", "-w", "%{http_version}",
                             *self.resolve("origin.test"), "https://origin.test/")
        self.assertEqual((done.returncode, done.stdout), (0, "2"), done.stderr)

    def test_http11WhenOriginHasNoH2(self) -> None:
        done = self.env.curl("--http2", "-w", "|%{http_version}",
                             *self.resolve("h1.test", HTTP1), f"https://h1.test:{HTTP1}/")
        self.assertEqual((done.returncode, done.stdout), (0, "origin ok\n|1.1"), done.stderr)

    def test_download100MB(self) -> None:
        size = 100 * 1024 * 1024
        done = self.env.shell(
            quoted("curl", "-sS", "--cacert", self.env.root, *self.resolve("origin.test"),
                   f"https://origin.test/bytes/{size}") + " | sha256sum",
            timeout=300,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.split()[0], sha256_pattern(size))

    def test_upload20MB(self) -> None:
        body = os.urandom(20 * 1024 * 1024)
        path = self.env.lab.workdir / "upload.bin"
        path.write_bytes(body)
        done = self.env.curl("--data-binary", f"@{path}", "-H", "Content-Type: application/octet-stream",
                             *self.resolve("origin.test"), "https://origin.test/echo", timeout=300)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(json.loads(done.stdout), {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()})

    def test_halfClose(self) -> None:
        """The client sends close_notify + FIN after its request and still reads it all."""
        size = 2_000_000
        result = self.env.python_client("--host", ORIGIN, "--sni", "origin.test", "--half-close",
                                        "--path", f"/bytes/{size}")
        self.assertServedByGateway(result)
        self.assertEqual((result["half_closed"], result["status"]), (True, "HTTP/1.1 200 OK"))
        self.assertEqual((result["length"], result["sha256"]), (size, sha256_pattern(size)))
        self.assertTrue(result["clean_close"], "the response should end with close_notify")

    def test_200Concurrent(self) -> None:
        result = self.env.python_client("--host", ORIGIN, "--sni", "origin.test", "--connections", "200",
                                        "--path", "/bytes/20000", timeout=300)
        self.assertEqual(result["errors"], [])
        self.assertEqual(result["ok"], 200)
        self.assertEqual(result["statuses"], ["HTTP/1.1 200 OK"])
        self.assertEqual(result["digests"], [sha256_pattern(20000)])

    def test_ipv6(self) -> None:
        done = self.env.curl("-6", *self.resolve("origin.test", ip=ORIGIN6), "https://origin.test/")
        self.assertEqual((done.returncode, done.stdout), (0, "origin ok\n"), done.stderr)
        result = self.env.python_client("--host", ORIGIN6)
        self.assertServedByGateway(result)
        addresses = {ipaddress.ip_address(v) for k, v in result["san"] if k == "IP Address"}  # type: ignore[union-attr]
        self.assertIn(ipaddress.ip_address(ORIGIN6), addresses)
        self.env.wait_for_log(f"-> [{ORIGIN6}]:443 sni=origin.test action=intercept outcome=ok")

    # -- failing origins -----------------------------------------------------

    def test_untrustedOriginsNeverReachTheDevice(self) -> None:
        """Under the default policy an untrusted origin gets a block page, never its content."""
        names = {4434: "expired.test", 4436: "selfsigned.test", 4437: "wrongname.test",
                 4438: "unknownroot.test", 4439: "incomplete.test"}
        for port, kind in BAD.items():
            name = names[port]
            done = self.env.curl("--http1.1", "-w", "|%{http_code}", *self.resolve(name, port), f"https://{name}:{port}/")
            self.assertEqual(done.returncode, 0, f"{kind}: {done.stderr}")  # the page's certificate is trusted
            body, _, status = done.stdout.rpartition("|")
            self.assertEqual(status, "502", kind)
            self.assertNotIn("origin ok", body, kind)
            self.assertIn(f"origin certificate not trusted ({kind})", html.unescape(body))
            line = self.env.wait_for_log(f"-> {ORIGIN}:{port} sni={name} action=block outcome=error")
            self.assertIn(f"origin certificate not trusted ({kind})", line)
        self.assertStillServing()

    def assertOriginFailureLogged(self, name: str, port: int, reason: str) -> None:
        """The device's connection fails, the log says why, and the gateway serves on."""
        done = self.env.curl(*self.resolve(name, port), f"https://{name}:{port}/")
        self.assertNotEqual(done.returncode, 0)
        line = self.env.wait_for_log(f"-> {ORIGIN}:{port} sni={name}")
        self.assertIn(reason, line)
        self.assertStillServing()

    def test_originDown(self) -> None:
        self.assertOriginFailureLogged("down.test", DOWN, "origin refused the connection")

    def test_originTimesOut(self) -> None:
        self.assertOriginFailureLogged("silent.test", SILENT, "origin connection timed out")

    def test_originResets(self) -> None:
        self.assertOriginFailureLogged("reset.test", RESET, "origin reset the connection during the TLS handshake")

    def test_notTLSIsSpliced(self) -> None:
        """Plain HTTP on a redirected port passes through untouched."""
        done = self.env.lab.client.run(["curl", "-sS", "--max-time", "20", f"http://{ORIGIN}:{PLAIN}/"],
                                       check=False, timeout=30)
        self.assertEqual((done.returncode, done.stdout), (0, "origin ok\n"), done.stderr)
        line = self.env.wait_for_log(f"-> {ORIGIN}:{PLAIN} sni=None action=splice")
        self.assertIn("outcome=ok", line)

    def test_truncatedClientHello(self) -> None:
        """Half a ClientHello, then silence: cut at the handshake timeout, with the reason."""
        hello = python_client_hello("truncated.test")
        self.assertEqual(self.env.send_raw(ORIGIN, GOOD, hello[:60]), "")  # closed, nothing served
        self.env.wait_for_log("handshake timeout: no complete ClientHello within 5s")
        self.assertStillServing()
