"""HTTP/1.1 inspection end to end: real curl and Python ssl clients through ``twistd etpmitm`` in the namespace lab."""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests import pki
from tests.gatewaylab import GatewayLab, shared_lab
from tests.lab import Lab, lab_unavailable
from tests.origin_server import pattern
from tests.test_http1 import SMUGGLING

ORIGIN = Lab.origin_ip
GOOD, LOGGING = 443, 4450

# An origin that appends every byte it receives to a file, and answers each head.
LOGGING_ORIGIN = """
import socket, ssl, sys, threading
cert, key, path, port = sys.argv[1:5]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert, key)
ctx.set_alpn_protocols(["http/1.1"])
log = open(path, "ab", buffering=0)
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0); s.bind(("::", int(port))); s.listen(64)
def serve(c):
    try:
        c = ctx.wrap_socket(c, server_side=True)
        while data := c.recv(65536):
            log.write(data)
            if data.endswith(b"\\r\\n\\r\\n"):
                c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 7\\r\\n\\r\\nlogged\\n")
    except OSError:
        pass
    finally:
        c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# A raw TLS client: sends the bytes in the file, prints what comes back until the gateway closes.
RAW_CLIENT = """
import socket, ssl, sys
host, port, sni, cafile, path = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=cafile); ctx.set_alpn_protocols(["http/1.1"])
with socket.create_connection((host, int(port)), timeout=20) as raw, ctx.wrap_socket(raw, server_hostname=sni) as tls:
    tls.sendall(open(path, "rb").read())
    got = b""
    try:
        while data := tls.recv(65536):
            got += data
            if b"logged" in got:
                break
    except (ssl.SSLError, OSError) as e:
        got += b"\\n[" + str(e).encode() + b"]"
    sys.stdout.write(got.hex())
"""


def build_lab() -> GatewayLab:
    env = GatewayLab(dports=[GOOD, LOGGING])
    try:
        cert, key = env.public.issue(["origin.test"], [ORIGIN])
        env.origin(GOOD, [cert, env.public.intermediate], key)
        cert, key = env.public.issue(["logging.test"])
        cert_path, key_path = pki.write_pair(env.lab.workdir, "logging", [cert, env.public.intermediate], key)
        script = env.lab.workdir / "logging_origin.py"
        script.write_text(LOGGING_ORIGIN)
        (env.lab.workdir / "origin-received.log").touch()
        env.lab.origin.popen([sys.executable, script, cert_path, key_path, env.lab.workdir / "origin-received.log", str(LOGGING)])
        env.lab.origin.wait_for_port(LOGGING)
        (env.lab.workdir / "raw_client.py").write_text(RAW_CLIENT)
        env.start_gateway()
    except BaseException:
        env.close()
        raise
    return env


class HTTP1EndToEndTests(TestCase):
    skip = lab_unavailable()
    env: GatewayLab

    def setUp(self) -> None:
        self.env = shared_lab(__name__, build_lab)
        self.resolve = ["--resolve", f"origin.test:{GOOD}:{ORIGIN}"]

    @property
    def received(self) -> Path:
        return self.env.lab.workdir / "origin-received.log"

    def requestLines(self, connection: str) -> list[str]:
        return [line for line in self.env.log().splitlines() if f"request {connection}/" in line]

    def raw(self, data: bytes) -> str:
        path = self.env.lab.workdir / "raw-request.bin"
        path.write_bytes(data)
        done = self.env.lab.client.run(
            [sys.executable, self.env.lab.workdir / "raw_client.py", ORIGIN, str(LOGGING), "logging.test",
             str(self.env.root), str(path)], check=False, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        return bytes.fromhex(done.stdout).decode("latin-1")

    def test_severalURLsOnOneConnection(self) -> None:
        done = self.env.curl(
            "--http1.1", *self.resolve, "-w", "%{http_code} %{num_connects} %{size_download}\\n",
            "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null",
            "https://origin.test/", "https://origin.test/bytes/100000?token=abc", "https://origin.test/info",
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        lines = done.stdout.split()
        self.assertEqual(lines[0::3], ["200", "200", "200"])
        self.assertEqual(lines[1::3], ["1", "0", "0"])  # one connection, reused
        self.assertEqual(lines[5], "100000")
        line = self.env.wait_for_log("GET origin.test/bytes/100000 -> 200 action=allow")
        connection = re.search(r"request (\S+)/2 ", line)
        assert connection is not None, line
        self.assertNotIn("token", line)
        requests = self.requestLines(connection.group(1))
        self.assertEqual(len(requests), 3, requests)
        self.assertIn("GET origin.test/info -> 200", requests[2])

    def test_http10Clients(self) -> None:
        """curl --http1.0, asking for keep-alive too: each request answered whole, one connection each."""
        done = self.env.curl(
            "--http1.0", "-H", "Connection: keep-alive", *self.resolve,
            "-w", "%{http_code} %{num_connects} %{size_download}\\n", "-o", "/dev/null", "-o", "/dev/null",
            "https://origin.test/bytes/1000?http10", "https://origin.test/bytes/2000?http10",
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.split(), ["200", "1", "1000", "200", "1", "2000"])
        for size in (1000, 2000):
            line = self.env.wait_for_log(f"GET origin.test/bytes/{size} -> 200 action=allow")
            connection = re.search(r"request (\S+)/1 ", line)
            assert connection is not None, line
            event = self.env.wait_for_log(f" id={connection.group(1)} ")
            self.assertIn(" action=intercept outcome=ok ", event)

    def test_bodyOfAResponseIsIntact(self) -> None:
        done = self.env.shell(f"curl -sS --http1.1 --cacert {self.env.root} {' '.join(self.resolve)} "
                              "https://origin.test/bytes/3000000 | sha256sum")
        self.assertEqual(done.stdout.split()[0], hashlib.sha256(pattern(3000000)).hexdigest(), done.stderr)

    def test_upload50MiBArrivesByteIdentical(self) -> None:
        body = self.env.lab.workdir / "upload.bin"
        with body.open("wb") as f:
            for i in range(50):
                f.write(hashlib.sha256(b"%d" % i).digest() * (1024 * 1024 // 32))
        digest = hashlib.sha256(body.read_bytes()).hexdigest()
        for extra in ([], ["-H", "Transfer-Encoding: chunked"]):
            done = self.env.curl("--http1.1", *self.resolve, "--data-binary", f"@{body}", *extra,
                                 "https://origin.test/echo", timeout=120)
            self.assertEqual(done.returncode, 0, done.stderr)
            self.assertIn(f'"sha256": "{digest}"', done.stdout, extra)
            self.assertIn(f'"length": {50 * 1024 * 1024}', done.stdout)
        self.env.wait_for_log("POST origin.test/echo -> 200 action=allow", count=2)

    def test_smugglingGets400AndNeverReachesTheOrigin(self) -> None:
        control = b"GET /control HTTP/1.1\r\nHost: logging.test\r\n\r\n"
        for name, request in SMUGGLING.items():
            self.received.write_bytes(b"")
            answer = self.raw(request)
            self.assertTrue(answer.startswith("HTTP/1.1 400 Bad Request\r\n"), (name, answer[:200]))
            # The origin logs what reaches it: a good request after the bad one is all there is.
            self.assertIn("logged", self.raw(control), name)
            self.assertEqual(self.received.read_bytes(), control, name)
        self.env.wait_for_log("action=refuse", count=len(SMUGGLING))

    def test_keepsServingAfterRefusals(self) -> None:
        self.assertIn(" 400 ", self.raw(SMUGGLING["CL and TE"])[:20])
        done = self.env.curl("--http1.1", *self.resolve, "https://origin.test/")
        self.assertEqual((done.returncode, done.stdout), (0, "origin ok\n"), done.stderr)
