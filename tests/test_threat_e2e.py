"""Threat lists end to end: a million-name list, ``--workers 2``, curl and Python ssl clients in the namespace lab.

The master builds the tables and the workers map them; the tests check the
block page and audit events with the list's category, a listed URL on an
intercepted HTTP/1.1 connection, and reloads (the file's mtime, SIGHUP, a bad
file) while a client keeps connecting.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

from twisted.trial.unittest import TestCase

from tests.gatewaylab import GatewayLab, shared_lab
from tests.lab import Lab, lab_unavailable

ORIGIN = Lab.origin_ip
MILLION = 1_000_000

# New TLS connections to origin.test, one request each, until the stop file appears.
LOOP_CLIENT = """
import json, os, socket, ssl, sys, time
host, cafile, stop, started = sys.argv[1:5]
ctx = ssl.create_default_context(cafile=cafile)
ok, failed, errors = 0, 0, []
deadline = time.monotonic() + 120
while not os.path.exists(stop) and time.monotonic() < deadline:
    try:
        with socket.create_connection((host, 443), timeout=20) as raw, ctx.wrap_socket(raw, server_hostname="origin.test") as tls:
            tls.sendall(b"GET / HTTP/1.1\\r\\nHost: origin.test\\r\\nConnection: close\\r\\n\\r\\n")
            got = b""
            while data := tls.recv(65536):
                got += data
        if got.startswith(b"HTTP/1.1 200 ") and got.endswith(b"origin ok\\n"):
            ok += 1
            if ok == 1:
                open(started, "w").close()
        else:
            failed += 1; errors.append(got[:80].decode("latin-1"))
    except (OSError, ssl.SSLError) as e:
        failed += 1; errors.append(str(e))
print(json.dumps({"ok": ok, "failed": failed, "errors": errors[:5]}))
"""


def list_text(*extra: str) -> str:
    """A million generated names, then *extra* lines."""
    return "".join(f"bad{i}.example\n" for i in range(MILLION)) + "".join(f"{line}\n" for line in extra)


BASE = ("# the test's feed", "evil.test", "https://origin.test/blocked/path")


def build_lab() -> GatewayLab:
    env = GatewayLab(dports=[443])
    try:
        cert, key = env.public.issue(["origin.test", "*.origin.test", "evil.test", "*.evil.test"], [ORIGIN])
        env.origin(443, [cert, env.public.intermediate], key)
        listed = env.lab.workdir / "malware.txt"
        listed.write_text(list_text(*BASE))
        env.policy.write_text(f'[[list]]\nname = "malware"\nfile = "{listed}"\naction = "block"\n')
        (env.lab.workdir / "loop_client.py").write_text(LOOP_CLIENT)
        env.start_gateway("--workers", "2", "--policy", str(env.policy), "--audit-log", str(env.audit_log),
                          "--list-interval", "1")
    except BaseException:
        env.close()
        raise
    return env


class ThreatListEndToEndTests(TestCase):
    skip = lab_unavailable()
    env: GatewayLab

    def setUp(self) -> None:
        self.env = shared_lab(__name__, build_lab)
        self.listed = self.env.lab.workdir / "malware.txt"

    def get(self, url: str, *extra: str) -> tuple[str, str]:
        """(status, body) of one curl GET through the gateway."""
        host = url.split("/")[2]
        done = self.env.curl("--http1.1", "--resolve", f"{host}:443:{ORIGIN}", "-w", "\n%{http_code}", *extra, url)
        self.assertEqual(done.returncode, 0, done.stderr)
        body, _, status = done.stdout.rpartition("\n")
        return status, body

    def audit(self, match: Any, timeout: float = 15) -> dict[str, Any]:
        """The last --audit-log event for which ``match(event)`` holds (waits for it)."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.env.audit_log.read_text().splitlines() if self.env.audit_log.exists() else []
            found = [e for e in map(json.loads, lines) if match(e)]
            if found:
                return found[-1]
            if time.monotonic() > deadline:
                raise AssertionError(f"no such audit event in {lines[-5:]}")
            time.sleep(0.1)

    def swap(self, text: str, *, hangup: bool = False) -> None:
        """Rewrite the list; reload by mtime (or SIGHUP); wait until the master has
        built this very list and both workers mapped it after that.

        (Counting remap lines alone is not enough: a build still running, or the
        remap the master sends once its workers are up, may be the one counted.)
        """
        domains = sum(1 for line in text.splitlines() if line and not line.startswith(("#", "https://")))
        built = f"from {self.listed}: {domains} domains"
        before = self.env.log().count(built)
        tmp = self.listed.with_suffix(".new")
        tmp.write_text(text)
        os.replace(tmp, self.listed)
        if hangup:
            assert self.env.gateway is not None
            os.kill(self.env.gateway.pid, signal.SIGHUP)
        deadline = time.monotonic() + 60
        while True:
            log = self.env.log()
            if log.count(built) > before:
                after = log[log.rindex(built):]
                if after.count("threat lists remapped") >= 2:
                    return
            self.assertLess(time.monotonic(), deadline, f"the new list was not built and mapped:\n{log[-3000:]}")
            time.sleep(0.1)

    def test_listedNamesAreBlockedWithTheirCategory(self) -> None:
        for url, entry in [("https://evil.test/", "evil.test"), ("https://www.evil.test/x", "evil.test"),
                           ("https://bad765432.example/", "bad765432.example")]:
            status, body = self.get(url)
            self.assertEqual(status, "403", url)
            self.assertIn("<dt>Category</dt><dd>malware</dd>", body)
            self.assertIn(f"listed in &#x27;malware&#x27; as {entry}", body)
            sni = url.split("/")[2]
            event = self.audit(lambda e, sni=sni: e.get("sni") == sni and "client" in e)
            self.assertEqual((event["action"], event["category"]), ("block", "malware"))
        status, body = self.get("https://origin.test/")
        self.assertEqual((status, body), ("200", "origin ok\n"))
        event = self.audit(lambda e: e.get("sni") == "origin.test" and "client" in e)
        self.assertIsNone(event["category"])
        self.assertIn("threat list 'malware' (block)", self.env.wait_for_log(f"{MILLION + 1} domains, 1 URLs"))

    def test_aListedURLBlocksOneRequestOnAnInterceptedConnection(self) -> None:
        done = self.env.curl(
            "--http1.1", "--resolve", f"origin.test:443:{ORIGIN}", "-w", "%{http_code} %{num_connects}\\n",
            "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null",
            "https://origin.test/", "https://origin.test/blocked/path/deeper", "https://origin.test/blocked/pathx",
            "https://origin.test/bytes/10",
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.split(), ["200", "1", "403", "0", "404", "0", "200", "0"])
        event = self.audit(lambda e: e.get("head", {}).get("path") == "/blocked/path/deeper")
        self.assertEqual((event["action"], event["category"]), ("block", "malware"))
        self.assertIn("request URL origin.test/blocked/path/deeper", event["reason"])
        other = self.audit(lambda e: e.get("head", {}).get("path") == "/blocked/pathx")
        self.assertEqual((other["action"], other["category"]), ("allow", None))

    def test_aListedURLOverHTTP2(self) -> None:
        done = self.env.curl("--http2", "--resolve", f"origin.test:443:{ORIGIN}", "-w", "%{http_code} %{http_version}\\n",
                             "-o", "/dev/null", "-o", "/dev/null",
                             "https://origin.test/blocked/path", "https://origin.test/")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.split(), ["403", "2", "200", "2"])
        event = self.audit(lambda e: e.get("protocol") == "h2" and e.get("head", {}).get("path") == "/blocked/path")
        self.assertEqual((event["action"], event["category"], event["status"]), ("block", "malware", 403))

    def test_reloadsSwapTheListUnderLoad(self) -> None:
        stop, started = self.env.lab.workdir / "loop.stop", self.env.lab.workdir / "loop.started"
        stop.unlink(missing_ok=True)
        started.unlink(missing_ok=True)
        loop = self.env.lab.client.popen([sys.executable, self.env.lab.workdir / "loop_client.py", ORIGIN,
                                          str(self.env.root), str(stop), str(started)])
        self.addCleanup(self.swap, list_text(*BASE))
        try:
            deadline = time.monotonic() + 60
            while not started.exists():
                self.assertIsNone(loop.poll(), self.env.lab.log(loop))
                self.assertLess(time.monotonic(), deadline, "the client loop never got a response")
                time.sleep(0.1)
            self.assertEqual(self.get("https://new.origin.test/")[0], "200")
            self.swap(list_text(*BASE, "new.origin.test"))  # the file's mtime
            self.assertEqual(self.get("https://new.origin.test/")[0], "403")
            self.swap(list_text(*BASE), hangup=True)  # SIGHUP
            self.assertEqual(self.get("https://new.origin.test/")[0], "200")
        finally:
            stop.touch()
            loop.wait(timeout=120)
        result = json.loads(self.env.lab.log(loop))
        self.assertEqual(result["failed"], 0, result)
        self.assertGreater(result["ok"], 0)

    def test_aBadFileOnReloadKeepsTheOldList(self) -> None:
        before = self.env.log().count("reload failed, keeping the previous version")
        self.addCleanup(self.swap, list_text(*BASE))
        self.listed.write_text("fine.example\nstill.fine.example\nthis is bad\n")
        line = self.env.wait_for_log("reload failed, keeping the previous version", count=before + 1, timeout=30)
        self.assertIn(f"{self.listed}:3: ", line)
        self.assertIn("a hosts-file line starts with an address", line)
        self.assertEqual(self.get("https://evil.test/")[0], "403")  # the old list is in force


def build_single_lab() -> GatewayLab:
    env = GatewayLab(dports=[443])
    try:
        cert, key = env.public.issue(["origin.test", "*.origin.test"], [ORIGIN])
        env.origin(443, [cert, env.public.intermediate], key)
        env.policy.write_text("# no lists yet\n")
        env.start_gateway("--policy", str(env.policy), "--list-interval", "1")
    except BaseException:
        env.close()
        raise
    return env


class OneProcessTests(TestCase):
    """Without workers the gateway builds and maps the tables itself; SIGHUP can add a list."""

    skip = lab_unavailable()

    def test_aListAddedBySIGHUPThenChangedOnDisk(self) -> None:
        env = shared_lab(f"{__name__}.single", build_single_lab)
        resolve = ["--resolve", f"sub.origin.test:443:{ORIGIN}", "-o", "/dev/null", "-w", "%{http_code}"]
        self.assertEqual(env.curl(*resolve, "https://sub.origin.test/").stdout, "200")
        listed = env.lab.workdir / "phishing.txt"
        listed.write_text("other.test\n")
        env.set_policy(f'[[list]]\nname = "phishing"\nfile = "{listed}"\naction = "block"\n',
                       expect="threat list 'phishing' (block)")
        self.assertEqual(env.curl(*resolve, "https://sub.origin.test/").stdout, "200")
        listed.write_text("other.test\norigin.test\n")
        env.wait_for_log("threat list 'phishing' (block)", count=2)
        done = env.curl("--resolve", f"sub.origin.test:443:{ORIGIN}", "https://sub.origin.test/")
        self.assertIn("<dt>Category</dt><dd>phishing</dd>", done.stdout)
        line = env.wait_for_log("sni=sub.origin.test action=block")
        self.assertIn("category=phishing id=", line)
