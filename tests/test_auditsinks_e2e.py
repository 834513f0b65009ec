"""``--audit-log syslog:tcp:...`` and ``--audit-log journald`` end to end: curl through
``twistd etpmitm`` in the namespace lab, and the intercepted connection's and
request's events arrive at a real rsyslogd (RFC 5424, octet-counted TCP) in the
gateway namespace, and at a unix datagram socket standing in for journald's."""

from __future__ import annotations

import atexit
import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from tests.gatewaylab import GatewayLab, inspecting_lab, shared_lab
from tests.lab import Lab, lab_unavailable
from tests.sinkpeers import journal_entry
from tests.test_auditsinks import journald_unavailable

ORIGIN = Lab.origin_ip
SYSLOG_PORT = 5514
POLICY = """
[[rule]]
name = "no uploads"
urls = ["origin.test/echo"]
methods = ["POST"]
action = "block"
"""
RSYSLOG_CONF = """
global(workDirectory="{dir}")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{port}")
template(name="fields" type="list") {{
  property(name="pri") constant(value="|")
  property(name="timereported" dateFormat="rfc3339") constant(value="|")
  property(name="hostname") constant(value="|")
  property(name="app-name") constant(value="|")
  property(name="procid") constant(value="|")
  property(name="msgid") constant(value="|")
  property(name="structured-data") constant(value="|")
  property(name="msg") constant(value="\\n")
}}
*.* action(type="omfile" file="{out}" template="fields")
"""


def rsyslog_unavailable() -> str | None:
    return lab_unavailable() or (None if shutil.which("rsyslogd") else "rsyslogd is not installed (apt: rsyslog)")


def start_rsyslog(env: GatewayLab) -> None:
    """rsyslogd in the gateway namespace, taking RFC 6587 TCP on 127.0.0.1:SYSLOG_PORT."""
    directory = env.lab.workdir / "rsyslog"
    directory.mkdir()
    conf = directory / "rsyslog.conf"
    conf.write_text(RSYSLOG_CONF.format(dir=directory, port=SYSLOG_PORT, out=directory / "out.log"))
    proc = env.lab.gateway.popen(["rsyslogd", "-n", "-f", conf, "-i", directory / "rsyslogd.pid"])
    env.lab.gateway.wait_for_port(SYSLOG_PORT, proc=proc, timeout=30)


def build_syslog_lab() -> GatewayLab:
    return inspecting_lab(POLICY, audit_log=f"syslog:tcp:127.0.0.1:{SYSLOG_PORT}", before=start_rsyslog)


_journal: dict[str, socket.socket] = {}


def build_journal_lab() -> GatewayLab:
    directory = Path(tempfile.mkdtemp(prefix="etpmitm-journal-"))
    atexit.register(shutil.rmtree, directory, True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(directory / "socket"))
    server.setblocking(False)
    _journal["socket"] = server
    return inspecting_lab(POLICY, audit_log="journald", env={"ETPMITM_JOURNAL_SOCKET": str(directory / "socket")})


def wait(found: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = found()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


class Traffic:
    """One intercepted connection with one request, which a rule blocks."""

    env: GatewayLab

    def post(self) -> None:
        done = self.env.curl("--http1.1", "--resolve", f"origin.test:443:{ORIGIN}", "-o", "/dev/null",
                             "-w", "%{http_code}", "--data-binary", "abc", "https://origin.test/echo?q=1")
        assert done.stdout == "403", (done.stdout, done.stderr)

    def checkConnection(self, connection: dict[str, Any]) -> None:
        assert isinstance(self, TestCase)
        self.assertEqual((connection["action"], connection["outcome"], connection["sni"], connection["alpn"],
                          connection["destination"], connection["origin_verdict"]),
                         ("intercept", "ok", "origin.test", "http/1.1", f"{ORIGIN}:443", "ok"))
        self.assertIn(Lab.client_ip, connection["client"])

    def checkRequest(self, request: dict[str, Any]) -> None:
        assert isinstance(self, TestCase)
        self.assertEqual((request["action"], request["status"], request["protocol"], request["rule"]),
                         ("block", 403, "http/1.1", "rule 1 'no uploads' (line 2)"))
        self.assertEqual((request["head"]["method"], request["head"]["authority"], request["head"]["path"],
                          request["head"]["query_length"], request["head"]["content_length"]),
                         ("POST", "origin.test", "/echo", 3, 3))


class SyslogEndToEndTests(TestCase, Traffic):
    skip = rsyslog_unavailable()

    def setUp(self) -> None:
        self.env = shared_lab(__name__ + ".syslog", build_syslog_lab)
        self.out = self.env.lab.workdir / "rsyslog" / "out.log"

    def lines(self) -> list[list[str]]:
        text = self.out.read_text() if self.out.exists() else ""
        return [line.split("|", 7) for line in text.splitlines()]

    def test_eventsReachRsyslog(self) -> None:
        before = len(self.lines())
        self.post()
        lines = wait(lambda: [line for line in self.lines()[before:] if line[5] == "connection"], "the connection")
        [connection] = lines
        pri, timestamp, host, app, procid, msgid, sd, msg = connection
        record = json.loads(msg)
        self.checkConnection(record)
        # rsyslog parsed our header as RFC 5424: each part where it belongs.
        self.assertEqual((pri, app, procid, msgid, sd), ("134", "etpmitm", str(record["pid"]), "connection", "-"))
        self.assertEqual(timestamp.replace("+00:00", "Z")[:19], record["time"][:19])
        self.assertEqual(host, socket.gethostname())  # the lab's gateway shares this UTS namespace
        [request] = [line for line in self.lines()[before:] if line[5] == "request"]
        self.assertEqual((request[0], request[3]), ("134", "etpmitm"))  # a block is informational
        requestRecord = json.loads(request[7])
        self.checkRequest(requestRecord)
        self.assertEqual(requestRecord["connection"], record["id"])
        self.assertIn("audit log connected to syslog:tcp:127.0.0.1:5514", self.env.log())


class JournalEndToEndTests(TestCase, Traffic):
    skip = lab_unavailable()

    def setUp(self) -> None:
        self.env = shared_lab(__name__ + ".journal", build_journal_lab)
        self.socket = _journal["socket"]

    def entries(self) -> list[dict[str, str]]:
        entries = []
        while True:
            try:
                data = self.socket.recv(1 << 20)
            except BlockingIOError:
                return entries
            entries.append({name: value.decode() for name, value in journal_entry(data)})

    def test_eventsReachTheJournalSocket(self) -> None:
        self.entries()  # anything earlier
        self.post()
        received: list[dict[str, str]] = []

        def connection() -> list[dict[str, str]]:
            received.extend(self.entries())
            return [e for e in received if e.get("ETPMITM_EVENT") == "connection"]

        [entry] = wait(connection, "the connection's journal entry")
        self.assertEqual((entry["SYSLOG_IDENTIFIER"], entry["PRIORITY"]), ("etpmitm", "6"))
        self.assertIn(f"-> {ORIGIN}:443 sni=origin.test action=intercept outcome=ok", entry["MESSAGE"])
        self.checkConnection({"action": entry["ETPMITM_ACTION"], "outcome": entry["ETPMITM_OUTCOME"],
                              "sni": entry["ETPMITM_SNI"], "alpn": entry["ETPMITM_ALPN"],
                              "destination": entry["ETPMITM_DESTINATION"],
                              "origin_verdict": entry["ETPMITM_ORIGIN_VERDICT"], "client": entry["ETPMITM_CLIENT"]})
        self.assertEqual(json.loads(entry["ETPMITM_ALPN_OFFERED"]), ["http/1.1"])
        [request] = [e for e in received if e.get("ETPMITM_EVENT") == "request"]
        self.checkRequest({"action": request["ETPMITM_ACTION"], "status": int(request["ETPMITM_STATUS"]),
                           "protocol": request["ETPMITM_PROTOCOL"], "rule": request["ETPMITM_RULE"],
                           "head": {"method": request["ETPMITM_HEAD_METHOD"],
                                    "authority": request["ETPMITM_HEAD_AUTHORITY"],
                                    "path": request["ETPMITM_HEAD_PATH"],
                                    "query_length": int(request["ETPMITM_HEAD_QUERY_LENGTH"]),
                                    "content_length": int(request["ETPMITM_HEAD_CONTENT_LENGTH"])}})
        self.assertEqual(request["ETPMITM_CONNECTION"], entry["ETPMITM_ID"])
        self.assertIn("POST origin.test/echo", request["MESSAGE"])


def build_journalctl_lab() -> GatewayLab:
    return inspecting_lab(POLICY, audit_log="journald")


class JournalctlEndToEndTests(TestCase, Traffic):
    """Where systemd-journald runs: the same events, as ``journalctl -o json`` shows them."""

    skip = lab_unavailable() or journald_unavailable()

    def setUp(self) -> None:
        self.env = shared_lab(__name__ + ".journalctl", build_journalctl_lab)

    def test_eventsReachJournald(self) -> None:
        self.post()
        pid = str(self.env.gateway.pid) if self.env.gateway is not None else "?"

        def entries() -> list[dict[str, Any]]:
            done = subprocess.run(["journalctl", "-o", "json", "--all", "SYSLOG_IDENTIFIER=etpmitm", f"_PID={pid}"],
                                  capture_output=True, text=True, timeout=30)
            found = [json.loads(line) for line in done.stdout.splitlines()]
            return found if any(e.get("ETPMITM_EVENT") == "connection" for e in found) else []

        found = wait(entries, "the connection's journal entry")
        [entry] = [e for e in found if e["ETPMITM_EVENT"] == "connection"]
        self.checkConnection({"action": entry["ETPMITM_ACTION"], "outcome": entry["ETPMITM_OUTCOME"],
                              "sni": entry["ETPMITM_SNI"], "alpn": entry["ETPMITM_ALPN"],
                              "destination": entry["ETPMITM_DESTINATION"],
                              "origin_verdict": entry["ETPMITM_ORIGIN_VERDICT"], "client": entry["ETPMITM_CLIENT"]})
        self.assertEqual(entry["PRIORITY"], "6")
        [request] = [e for e in found if e["ETPMITM_EVENT"] == "request"]
        self.assertEqual((request["ETPMITM_CONNECTION"], request["ETPMITM_ACTION"], request["ETPMITM_STATUS"],
                          request["ETPMITM_HEAD_METHOD"], request["ETPMITM_HEAD_PATH"]),
                         (entry["ETPMITM_ID"], "block", "403", "POST", "/echo"))
