"""Content scanning end to end: curl through ``twistd etpmitm --workers 2`` with real c-icap + clamd.

One lab for the module: an origin (origin.test) in the origin namespace
serving an EICAR file and logging every request body byte it receives;
c-icap and clamd (tests/icaplab.py) in the gateway namespace on
127.0.0.1:1344; misbehaving ICAP servers (tests/icap_listen.py) beside them;
and one gateway whose ``[icap]`` each test sets by SIGHUP.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from typing import Any

from twisted.trial.unittest import TestCase

from tests.gatewaylab import GATEWAY_PORT, TWISTD, GatewayLab, gateway_env, shared_lab
from tests.icaplab import IcapLab, eicar, icap_unavailable
from tests.lab import REPO, Lab
from tests.origin_server import pattern

ORIGIN = Lab.origin_ip
URL = "https://origin.test"
STALL, GARBAGE, WRONG_ENCAPSULATED, TRUNCATE = 1345, 1346, 1347, 1348
CLOSED = 1349
"""A port nothing listens on in the gateway namespace."""


class ScanLab:
    """The module's lab: gateway, origin, c-icap + clamd, bad ICAP servers."""

    def __init__(self) -> None:
        self.env = GatewayLab(dports=[443])
        try:
            work = self.env.lab.workdir
            self.eicar = work / "eicar.com"
            self.eicar.write_bytes(eicar())
            self.received = work / "origin-received.bin"
            self.received.touch()
            cert, key = self.env.public.issue(["origin.test"], [ORIGIN])
            self.env.origin(443, [cert, self.env.public.intermediate], key,
                            extra=["--serve", f"/eicar.com={self.eicar}", "--received", str(self.received)])
            self.icap = IcapLab(self.env.lab.gateway, work / "icap")
            self.icap.start()
            listeners = [f"{STALL}:stall", f"{GARBAGE}:garbage", f"{WRONG_ENCAPSULATED}:wrong-encapsulated",
                         f"{TRUNCATE}:truncate"]
            bad = self.env.lab.gateway.popen([sys.executable, "-m", "tests.icap_listen", "127.0.0.1", *listeners],
                                             env={"PYTHONPATH": str(REPO)})
            for port in (STALL, GARBAGE, WRONG_ENCAPSULATED, TRUNCATE):
                self.env.lab.gateway.wait_for_port(port, "127.0.0.1", proc=bad)
            self.env.policy.write_text(policy(self.icap.url))
            self.env.start_gateway("--workers", "2", "--policy", str(self.env.policy),
                                   "--audit-log", str(self.env.audit_log))
            self.env.wait_for_log("serving the master's sockets", count=2)
        except BaseException:
            self.env.close()
            raise


def policy(url: str, **icap: object) -> str:
    """A policy scanning with ``url`` (both services unless overridden), and ``icap`` settings."""
    table: dict[str, object] = {"reqmod": url, "respmod": url, "max_size": "64MiB", "oversize": "block",
                                "on_error": "block", "timeout": 60, **icap}
    lines = [f"{key} = {json.dumps(value)}" for key, value in table.items() if value is not None]
    return "[icap]\n" + "\n".join(lines) + "\n"


class ScanningGatewayTests(TestCase):
    skip = icap_unavailable()
    lab: ScanLab

    def setUp(self) -> None:
        self.lab = shared_lab(__name__, ScanLab)  # type: ignore[arg-type]
        self.env = self.lab.env
        self.icap = self.lab.icap
        self.resolve = ["--resolve", f"origin.test:443:{ORIGIN}"]

    # -- helpers ----------------------------------------------------------------------------

    def use(self, text: str) -> None:
        """Reload the gateway with the policy ``text``; wait until both workers did."""
        assert self.env.gateway is not None
        before = self.env.log().count("policy reloaded")
        self.env.policy.write_text(text)
        os.kill(self.env.gateway.pid, signal.SIGHUP)
        self.env.wait_for_log("policy reloaded", count=before + 2)

    def get(self, protocol: str, path: str, *extra: str) -> tuple[int, bytes]:
        """GET path with curl; the status and the body."""
        out = self.env.lab.workdir / "body.out"
        done = self.env.curl(f"--{protocol}", *self.resolve, "-o", str(out), "-w", "%{http_code}", *extra,
                             URL + path, timeout=180)
        self.assertEqual(done.returncode, 0, done.stderr)
        return int(done.stdout), out.read_bytes()

    def respmods(self) -> int:
        """RESPMOD requests c-icap logged so far."""
        return self.icap.access_log.read_text().count("RESPMOD")

    def offset(self) -> int:
        path = self.env.audit_log
        return path.stat().st_size if path.exists() else 0

    def requests(self, offset: int, path: str, count: int) -> list[dict[str, Any]]:
        """The ``count`` request events for ``path`` logged after ``offset`` (waits for them)."""
        deadline = time.monotonic() + 30
        while True:
            with self.env.audit_log.open("rb") as f:
                f.seek(offset)
                events = [json.loads(line) for line in f.read().decode().splitlines()]
            found = [e for e in events if e["event"] == "request" and e["head"]["path"] == path]
            if len(found) >= count or time.monotonic() > deadline:
                self.assertEqual(len(found), count, found)
                return found
            time.sleep(0.1)

    def assertScan(self, event: dict[str, Any], kind: str, result: str, service: str | None = None) -> dict[str, Any]:
        """The request event has one scan of ``kind`` with ``result`` by ``service``; it is returned."""
        self.assertIsNotNone(event["scan"], event)
        [scan] = [s for s in event["scan"] if s["kind"] == kind]
        self.assertEqual(scan["result"], result, event)
        if result != "oversize":
            self.assertEqual(scan["service"], service or self.icap.url)
            self.assertIsInstance(scan["duration"], float)
        return scan

    def assertInfected(self, event: dict[str, Any], kind: str) -> None:
        scan = self.assertScan(event, kind, "infected")
        self.assertEqual(scan["threat"], self.icap.threat)
        self.assertTrue(scan["istag"], scan)  # c-icap's ISTag
        self.assertGreater(scan["duration"], 0)
        self.assertEqual(event["action"], "block", event)
        self.assertIn(self.icap.threat, event["reason"])
        self.assertEqual(event["status"], 403)

    # -- RESPMOD ----------------------------------------------------------------------------

    def test_eicarDownloadIsBlockedInEveryWorker(self) -> None:
        """EICAR over HTTP/1.1 and h2, one connection each time: c-icap's 403 page naming the
        threat, never the file; each audit event has the scan; both workers scanned."""
        self.use(policy(self.icap.url))
        offset = self.offset()
        for protocol in ["http1.1", "http2"] * 8:
            status, body = self.get(protocol, "/eicar.com")
            self.assertEqual(status, 403, body[:300])
            self.assertIn(self.icap.threat.encode(), body)
            self.assertNotIn(eicar(), body)
        events = self.requests(offset, "/eicar.com", 16)
        self.assertEqual(sorted(e["protocol"] for e in events), ["h2"] * 8 + ["http/1.1"] * 8)
        for event in events:
            self.assertInfected(event, "respmod")
        workers = {e["connection"].partition("-")[0] for e in events}
        self.assertEqual(len(workers), 2, "16 connections should have reached both workers")
        self.assertIn(f"VIRUS DETECTED: {self.icap.threat}", self.icap.server_log.read_text())

    def test_clean50MiBIsByteIdentical(self) -> None:
        """A clean 50 MiB download over HTTP/1.1 and h2 is scanned (204) and arrives whole."""
        self.use(policy(self.icap.url))
        size = 50 << 20
        want = hashlib.sha256(pattern(size)).hexdigest()
        offset, scanned = self.offset(), self.respmods()
        for protocol in ("http1.1", "http2"):
            done = self.env.shell(f"curl -sS --{protocol} --max-time 300 --cacert {self.env.root} "
                                  f"{' '.join(self.resolve)} {URL}/bytes/{size} | sha256sum", timeout=320)
            self.assertEqual(done.stdout.split()[0], want, (protocol, done.stderr))
        for event in self.requests(offset, f"/bytes/{size}", 2):
            scan = self.assertScan(event, "respmod", "clean")
            self.assertTrue(scan["istag"])
            self.assertEqual((event["action"], event["status"]), ("allow", 200))
        self.assertEqual(self.respmods(), scanned + 2)  # c-icap logs each scan it did

    # -- REQMOD -----------------------------------------------------------------------------

    def test_uploads(self) -> None:
        """An EICAR upload (PUT over HTTP/1.1, POST over h2) is blocked and never reaches the
        origin; a clean 3 MiB upload each way arrives byte-identical, and is all the origin got."""
        self.use(policy(self.icap.url))
        self.lab.received.write_bytes(b"")
        offset = self.offset()
        for protocol, send in (("http1.1", ["-T", str(self.lab.eicar)]),
                               ("http2", ["--data-binary", f"@{self.lab.eicar}"])):
            done = self.env.curl(f"--{protocol}", *self.resolve, *send, "-w", "\n%{http_code}", f"{URL}/echo")
            self.assertEqual(done.returncode, 0, done.stderr)
            body, _, status = done.stdout.rpartition("\n")
            self.assertEqual(status, "403", done.stdout[:300])
            self.assertIn(self.icap.threat, body)
        for event in self.requests(offset, "/echo", 2):
            self.assertInfected(event, "reqmod")
        clean = self.env.lab.workdir / "clean-upload.bin"
        clean.write_bytes(os.urandom(3 << 20))
        digest = hashlib.sha256(clean.read_bytes()).hexdigest()
        for protocol in ("http1.1", "http2"):
            done = self.env.curl(f"--{protocol}", *self.resolve, "--data-binary", f"@{clean}", f"{URL}/echo")
            self.assertEqual(done.returncode, 0, done.stderr)
            self.assertEqual(json.loads(done.stdout), {"length": 3 << 20, "sha256": digest})
        for event in self.requests(offset, "/echo", 4)[2:]:
            self.assertScan(event, "reqmod", "clean")
        received = self.lab.received.read_bytes()
        self.assertNotIn(eicar(), received)
        self.assertEqual(received, clean.read_bytes() * 2)

    # -- max_size ---------------------------------------------------------------------------

    def test_oversize(self) -> None:
        """A 2 MiB body over max_size = 1MiB: oversize = "block" blocks it (the gateway's page),
        "allow" passes it whole; both audited as oversize, neither sent to c-icap."""
        size = 2 << 20
        path = f"/bytes/{size}"
        scanned = self.respmods()
        self.use(policy(self.icap.url, max_size="1MiB", oversize="block"))
        offset = self.offset()
        for protocol in ("http1.1", "http2"):
            status, body = self.get(protocol, path)
            self.assertEqual(status, 403, body[:300])
            self.assertIn(b"max_size", body)
        for event in self.requests(offset, path, 2):
            scan = self.assertScan(event, "respmod", "oversize")
            self.assertEqual((scan["size"], scan["max_size"]), (size, 1 << 20))
            self.assertEqual(event["action"], "block")
        self.use(policy(self.icap.url, max_size="1MiB", oversize="allow"))
        offset = self.offset()
        for protocol in ("http1.1", "http2"):
            status, body = self.get(protocol, path)
            self.assertEqual((status, hashlib.sha256(body).digest()), (200, hashlib.sha256(pattern(size)).digest()))
        for event in self.requests(offset, path, 2):
            self.assertScan(event, "respmod", "oversize")
            self.assertEqual(event["action"], "allow")
        self.assertEqual(self.respmods(), scanned)

    # -- the ICAP server failing ------------------------------------------------------------

    def test_serverDown(self) -> None:
        """c-icap stopped: on_error = "block" blocks (refused, logged); "allow" passes the body."""
        self.use(policy(self.icap.url))
        self.icap.stop_icap()
        try:
            offset = self.offset()
            status, body = self.get("http1.1", "/bytes/1000")
            self.assertEqual(status, 403, body[:300])
            self.env.wait_for_log("Connection was refused")
            [event] = self.requests(offset, "/bytes/1000", 1)
            self.assertScan(event, "respmod", "error")
            self.use(policy(self.icap.url, on_error="allow"))
            for protocol in ("http1.1", "http2"):
                self.assertEqual(self.get(protocol, "/bytes/1000"), (200, pattern(1000)))
        finally:
            self.icap.start_icap()
        self.use(policy(self.icap.url))
        self.assertEqual(self.get("http2", "/bytes/1000"), (200, pattern(1000)))

    def test_slowServer(self) -> None:
        """An ICAP server that never answers: after timeout = 2 the scan is an error, blocked
        (HTTP/1.1 and h2), or passed with on_error = "allow"; the gateway keeps serving."""
        stall = f"icap://127.0.0.1:{STALL}/stall"
        self.use(policy(stall, timeout=2))
        offset = self.offset()
        for protocol in ("http1.1", "http2"):
            status, body = self.get(protocol, "/bytes/1000")
            self.assertEqual(status, 403, body[:300])
        for event in self.requests(offset, "/bytes/1000", 2):
            self.assertScan(event, "respmod", "error", stall)
        self.env.wait_for_log("no answer within the timeout of 2s; on_error = block", count=2)
        self.use(policy(stall, timeout=2, on_error="allow"))
        self.assertEqual(self.get("http1.1", "/bytes/1000"), (200, pattern(1000)))
        self.env.wait_for_log("no answer within the timeout of 2s; on_error = allow")
        self.use(policy(self.icap.url))
        self.assertEqual(self.get("http1.1", "/"), (200, b"origin ok\n"))

    def test_malformedAnswers(self) -> None:
        """Garbage, a wrong Encapsulated, a truncated answer: blocked (on_error) with the
        reason in the gateway's log; then a normal request on the same gateway succeeds."""
        for port, why in ((GARBAGE, "bad ICAP status line"),
                          (WRONG_ENCAPSULATED, "does not end where Encapsulated says"),
                          (TRUNCATE, "truncated")):
            service = f"icap://127.0.0.1:{port}/bad"
            self.use(policy(service, timeout=10))
            offset = self.offset()
            status, body = self.get("http2", "/bytes/1000")
            self.assertEqual(status, 403, (port, body[:300]))
            [event] = self.requests(offset, "/bytes/1000", 1)
            self.assertScan(event, "respmod", "error", service)
            line = self.env.wait_for_log(f"via {service}:")
            self.assertIn(why, line)
            self.assertIn("on_error = block", line)
        self.use(policy(self.icap.url))
        self.assertEqual(self.get("http1.1", "/"), (200, b"origin ok\n"))
        self.assertEqual(self.get("http2", "/"), (200, b"origin ok\n"))

    # -- wiring -----------------------------------------------------------------------------

    def test_reloadReplacesTheScannerOnlyWhenIcapChanged(self) -> None:
        """A reload with the same [icap] keeps the scanner; a changed one builds a new one."""
        changed = "ICAP settings changed"
        self.use(policy(self.icap.url, timeout=61))
        before = self.env.log().count(changed)
        self.use(policy(self.icap.url, timeout=61))
        self.assertEqual(self.env.log().count(changed), before)
        self.use(policy(self.icap.url, timeout=62))
        self.env.wait_for_log(changed, count=before + 2)  # once per worker
        self.use("")
        self.env.wait_for_log(f"{changed}: new connections use no scanner", count=2)
        offset = self.offset()
        self.assertEqual(self.get("http1.1", "/eicar.com"), (200, eicar()))
        [event] = self.requests(offset, "/eicar.com", 1)
        self.assertIsNone(event["scan"])
        self.use(policy(self.icap.url))
        self.assertEqual(self.get("http1.1", "/eicar.com")[0], 403)

    def test_startWithTheServerDown(self) -> None:
        """An ICAP server down at start-up is a warning, not a start-up failure."""
        service = f"icap://127.0.0.1:{CLOSED}/avscan"
        other = self.env.lab.workdir / "down-policy.toml"
        other.write_text(policy(service))
        port = GATEWAY_PORT + 1
        proc = self.env.lab.gateway.popen(
            [TWISTD, "-n", "--pidfile=", "etpmitm", "--ca-dir", self.env.ca_dir, "--upstream-trust", self.env.trust,
             "--listen", f"tcp:{port}:interface=127.0.0.1", "--policy", other],
            env=gateway_env(), cwd=self.env.lab.workdir)
        try:
            self.env.lab.gateway.wait_for_port(port, proc=proc, timeout=30)
            deadline = time.monotonic() + 30
            while "ICAP service" not in self.env.lab.log(proc) and time.monotonic() < deadline:
                time.sleep(0.1)
            lines = [line for line in self.env.lab.log(proc).splitlines() if "ICAP service" in line]
            self.assertEqual(len(lines), 2, self.env.lab.log(proc)[-3000:])  # reqmod and respmod
            for line in lines:
                self.assertIn(f"{service}: ", line)
                self.assertIn("refused", line.lower())
                self.assertIn("scans get on_error = block until it answers", line)
            self.assertIsNone(proc.poll())
        finally:
            proc.terminate()
            proc.wait(timeout=30)
