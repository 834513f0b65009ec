"""The HTTP/2 layer end to end: real h2 clients through a real gateway in the namespace lab.

Needs the gateway to pick the HTTP/2 layer for ALPN ``h2`` (the layer selection).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests import pki
from tests.gatewaylab import GatewayLab, quoted, shared_lab
from tests.lab import Lab, lab_unavailable
from tests.origin_server import pattern

ORIGIN = Lab.origin_ip
GOOD, TRAILERS = 443, 4450
H2_TRAILERS = Path(__file__).resolve().parent / "h2_trailers.py"
H2_RAPIDRESET = Path(__file__).resolve().parent / "h2_rapidreset.py"


def build_lab() -> GatewayLab:
    env = GatewayLab(dports=[GOOD, TRAILERS])
    try:
        cert, key = env.public.issue(["origin.test", "grpc.test"], [ORIGIN])
        env.origin(GOOD, [cert, env.public.intermediate], key)
        cert_path, key_path = pki.write_pair(env.lab.workdir, "trailers", [cert, env.public.intermediate], key)
        server = env.lab.origin.popen([sys.executable, H2_TRAILERS, "server", "--cert", cert_path, "--key", key_path,
                                       "--port", str(TRAILERS)])
        env.lab.origin.wait_for_port(TRAILERS, proc=server)
        env.policy.write_text('[[rule]]\nurls = ["origin.test/blocked-upload"]\naction = "block"\n')
        env.start_gateway(f"--policy={env.policy}")
    except BaseException:
        env.close()
        raise
    return env


class HTTP2EndToEndTests(TestCase):
    skip = lab_unavailable()
    env: GatewayLab

    def setUp(self) -> None:
        self.env = shared_lab(__name__, build_lab)

    def resolve(self, name: str = "origin.test", port: int = GOOD) -> list[str]:
        return ["--resolve", f"{name}:{port}:{ORIGIN}"]

    def test_curlSeveralURLsOnOneConnection(self) -> None:
        """curl sends three requests on one h2 connection; each is answered and audited on its stream."""
        done = self.env.curl(
            "--http2", *self.resolve(), "-w", "|%{http_version}|%{num_connects}\n",
            "https://origin.test/bytes/100000", "-o", "/dev/null",
            "https://origin.test/info?x=1",
            "https://origin.test/",
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        out = done.stdout
        self.assertTrue(out.startswith("|2|1\n"), out)
        info, _, rest = out.removeprefix("|2|1\n").partition("|2|0\n")
        self.assertEqual(rest, "origin ok\n|2|0\n", "curl opened a second connection")
        self.assertEqual(json.loads(info)["alpn"], "h2", "the gateway did not speak h2 to the origin")
        lines = [self.env.wait_for_log(f"GET origin.test/{path} -> 200") for path in ("bytes/100000", "info", "")]
        ids = {re.search(r"request (\S+)/(\d+) ", line).group(1) for line in lines}  # type: ignore[union-attr]
        self.assertEqual(len(ids), 1, lines)

    def audited(self, request: str) -> int:
        """How many request events the gateway logged for ``request`` (``"GET origin.test/ -> 200"``)."""
        return self.env.log().count(f" {request} ")

    def test_h2load(self) -> None:
        before = self.audited("GET origin.test/ -> 200")
        done = self.env.lab.client.run(
            ["h2load", "-n", "2000", "-c", "4", "-m", "10", "--connect-to", f"{ORIGIN}:{GOOD}", "https://origin.test/"],
            check=False, timeout=300,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("2000 succeeded, 0 failed, 0 errored", done.stdout, done.stdout)
        self.assertIn("status codes: 2000 2xx", done.stdout)
        self.env.wait_for_log("GET origin.test/ -> 200", count=before + 2000)

    def test_post50MiB(self) -> None:
        body = os.urandom(50 * 1024 * 1024)
        path = self.env.lab.workdir / "upload50.bin"
        path.write_bytes(body)
        done = self.env.curl("--http2", "--data-binary", f"@{path}", "-H", "Content-Type: application/octet-stream",
                             *self.resolve(), "https://origin.test/echo", timeout=300)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(json.loads(done.stdout), {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()})
        self.env.wait_for_log("POST origin.test/echo -> 200")

    def test_anUploadBlockedAtItsHeadersGetsTheBlockPage(self) -> None:
        """curl (7.88 on Debian 12) uploads 3 MiB to a blocked URL: it gets the 403 page.  The gateway
        answers at the request's headers and stops the upload later, in a write of its own: with the
        reset in the same read as the page, that curl failed the transfer (error 92)."""
        path = self.env.lab.workdir / "upload3.bin"
        path.write_bytes(os.urandom(3 * 1024 * 1024))
        done = self.env.curl("--http2", "--data-binary", f"@{path}", *self.resolve(), "-w", "\n%{http_code}",
                             "https://origin.test/blocked-upload")
        self.assertEqual(done.returncode, 0, done.stderr)
        body, _, status = done.stdout.rpartition("\n")
        self.assertEqual(status, "403", body[:300])
        self.assertIn("origin.test/blocked-upload", body)
        self.env.wait_for_log("POST origin.test/blocked-upload -> 403 action=block")

    def test_download50MiB(self) -> None:
        size = 50 * 1024 * 1024
        done = self.env.shell(
            quoted("curl", "-sS", "--http2", "--cacert", self.env.root, *self.resolve(),
                   f"https://origin.test/bytes/{size}") + " | sha256sum",
            timeout=300,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.split()[0], hashlib.sha256(pattern(size)).hexdigest())

    def test_grpcStyleTrailers(self) -> None:
        done = self.env.lab.client.run(
            [sys.executable, H2_TRAILERS, "client", "--cafile", self.env.root, "--host", ORIGIN,
             "--port", str(TRAILERS), "--sni", "grpc.test", "--size", str(3 * 1024 * 1024 + 5)],
            check=False, timeout=120,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        result = json.loads(done.stdout)
        self.assertNotIn("error", result)
        self.assertEqual((result["alpn"], result["status"]), ("h2", "200"))
        self.assertEqual(result["body"], result["sent_sha256"])
        self.assertEqual(result["trailers"], {"grpc-status": "0", "x-request-trailer": result["sent_sha256"]})
        self.env.wait_for_log("POST grpc.test/pkg.Echo/Digest -> 200")

    def test_rapidResetIsCut(self) -> None:
        """CVE-2023-44487 through the real gateway: a client that opens and resets 5000 streams gets
        GOAWAY(ENHANCE_YOUR_CALM), and the connection's audit line says why."""
        done = self.env.lab.client.run(
            [sys.executable, H2_RAPIDRESET, "--cafile", self.env.root, "--host", ORIGIN, "--port", str(GOOD),
             "--sni", "origin.test", "--streams", "5000"],
            check=False, timeout=120,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        result = json.loads(done.stdout)
        self.assertEqual(result["alpn"], "h2")
        self.assertIsNotNone(result["goaway"], result)
        self.assertEqual(result["goaway"]["code"], "ENHANCE_YOUR_CALM")
        self.assertLess(result["goaway"]["last_stream_id"], 2 * 5000, "the gateway took every stream")
        line = self.env.wait_for_log("HTTP/2 rapid reset (CVE-2023-44487)")
        self.assertIn("outcome=error", line)
        self.assertIn("sni=origin.test", line)
