"""``--metrics`` end to end: real curl traffic through ``twistd etpmitm`` in the
namespace lab, a live scrape checked by ``promtool check metrics``, a real
Prometheus server scraping the gateway, and ``/healthz`` through a SIGTERM drain.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.parse
from collections import Counter
from typing import Any

from twisted.trial.unittest import SkipTest, TestCase

from tests.gatewaylab import GatewayLab, shared_lab
from tests.lab import Lab, lab_unavailable

ORIGIN = Lab.origin_ip
METRICS = f"{Lab.gateway_lan_ip}:9180"
PROMETHEUS = f"{Lab.gateway_lan_ip}:9090"
POLICY = """
[[rule]]
match = ["blocked.test"]
action = "block"
"""
RESOLVE = ("--resolve", f"origin.test:443:{ORIGIN}", "--resolve", f"blocked.test:443:{ORIGIN}")
INTERCEPTED, BLOCKED = 5, 3


def build_lab(*extra: str) -> GatewayLab:
    env = GatewayLab(dports=[443])
    try:
        cert, key = env.public.issue(["origin.test"], [ORIGIN])
        env.origin(443, [cert, env.public.intermediate], key)
        env.policy.write_text(POLICY)
        env.start_gateway("--policy", str(env.policy), "--audit-log", str(env.audit_log),
                          "--metrics", f"tcp:9180:interface={Lab.gateway_lan_ip}", *extra)
        env.lab.gateway.wait_for_port(9180, proc=env.gateway, timeout=30)
    except BaseException:
        env.close()
        raise
    return env


def http_get(env: GatewayLab, url: str) -> tuple[int, str]:
    """GET ``url`` from the gateway's namespace (where the metrics listen): (status, body)."""
    done = env.lab.gateway.run(["curl", "-sS", "--max-time", "20", "-w", "\n%{http_code}", url], check=False, timeout=40)
    body, _, code = done.stdout.rpartition("\n")
    return int(code or 0), body


def samples(text: str) -> dict[str, float]:
    """The exposition's samples, by name and labels as written."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def audited(env: GatewayLab) -> list[dict[str, Any]]:
    if not env.audit_log.exists():
        return []
    events = [json.loads(line) for line in env.audit_log.read_text().splitlines() if line.strip()]
    return [e for e in events if e["event"] == "connection"]


def wait_for(condition: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class _MetricsTests:
    """The traffic and the checks, for one gateway and for ``--workers 2``."""

    extra: tuple[str, ...] = ()
    env: GatewayLab
    traffic: dict[str, Any]

    def setUp(self) -> None:
        if (reason := lab_unavailable()) is not None:
            raise SkipTest(reason)
        key = f"metrics{self.extra}"
        self.env = shared_lab(key, lambda: build_lab(*self.extra))
        self.traffic = _traffic.get(key) or _traffic.setdefault(key, make_traffic(self.env))

    def test_countsMatchTheAudit(self) -> None:
        """Each (action, outcome) counter equals the audit events', and the total is the curls made."""
        env, case = self.env, self  # type: ignore[attr-defined]
        status, text = http_get(env, f"http://{METRICS}/metrics")
        case.assertEqual(status, 200)
        got = samples(text)
        audit = Counter((e["action"], e["outcome"]) for e in audited(env))
        case.assertEqual(sum(audit.values()), INTERCEPTED + BLOCKED)
        case.assertEqual(audit[("intercept", "ok")], INTERCEPTED)
        case.assertEqual(audit[("block", "refused")], BLOCKED)
        for action in ("intercept", "splice", "block", "close", "refuse"):
            for outcome in ("ok", "refused", "error"):
                series = f'etpmitm_connections_total{{action="{action}",outcome="{outcome}"}}'
                case.assertEqual(got[series], audit[(action, outcome)], series)
        case.assertEqual(got['etpmitm_http_requests_total{method="GET",protocol="http/1.1",status="2xx"}'], INTERCEPTED)
        case.assertEqual(got["etpmitm_http_request_duration_seconds_count"], INTERCEPTED)
        case.assertEqual(got['etpmitm_handshake_duration_seconds_count{phase="origin"}'], INTERCEPTED)
        case.assertEqual(got['etpmitm_handshake_duration_seconds_count{phase="device"}'], INTERCEPTED)
        case.assertEqual(got['etpmitm_handshake_duration_seconds_count{phase="client_hello"}'], INTERCEPTED + BLOCKED)
        case.assertEqual(got['etpmitm_origin_verdicts_total{verdict="ok"}'], INTERCEPTED)
        case.assertEqual(got["etpmitm_connections_open"], 0)
        case.assertEqual(got['etpmitm_connection_bytes_total{direction="up"}'], sum(e["bytes_up"] for e in audited(env)))
        case.assertEqual(got['etpmitm_connection_bytes_total{direction="down"}'], sum(e["bytes_down"] for e in audited(env)))
        minted = got["etpmitm_leaves_minted_total"]
        case.assertGreaterEqual(minted, 2)  # origin.test and blocked.test, at least once in each process
        case.assertEqual(got["etpmitm_leaf_cache_misses_total"], minted)
        case.assertEqual(got["etpmitm_leaf_cache_hits_total"] + minted, INTERCEPTED + BLOCKED)

    def test_promtoolAcceptsALiveScrape(self) -> None:
        env, case = self.env, self  # type: ignore[attr-defined]
        status, text = http_get(env, f"http://{METRICS}/metrics")
        case.assertEqual(status, 200)
        case.assertIn("etpmitm_connections_total", text)
        done = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
        case.assertEqual(done.returncode, 0, done.stdout + done.stderr)

    def test_prometheusCountsTheConnections(self) -> None:
        """A real Prometheus scrapes the gateway; its query gives exactly the connections made."""
        env, case = self.env, self  # type: ignore[attr-defined]
        prometheus(env)
        query = "sum(etpmitm_connections_total)"

        def scrapedSince(moment: float) -> bool:
            result = promql(env, 'timestamp(up{job="etpmitm"})')
            return bool(result) and float(result[0]["value"][1]) > moment

        wait_for(lambda: scrapedSince(self.traffic["done"]), "a scrape after the traffic", timeout=60)
        [up] = promql(env, 'up{job="etpmitm"}')
        case.assertEqual(up["value"][1], "1")
        [total] = promql(env, query)
        case.assertEqual(float(total["value"][1]), INTERCEPTED + BLOCKED)
        [blocked] = promql(env, 'etpmitm_connections_total{action="block",outcome="refused"}')
        case.assertEqual(float(blocked["value"][1]), BLOCKED)

    def test_healthy(self) -> None:
        env, case = self.env, self  # type: ignore[attr-defined]
        status, body = http_get(env, f"http://{METRICS}/healthz")
        case.assertEqual((status, json.loads(body)), (200, {"status": "ok", "reason": "ok"}))
        status, _ = http_get(env, f"http://{METRICS}/nothing")
        case.assertEqual(status, 404)


_traffic: dict[str, dict[str, Any]] = {}


def make_traffic(env: GatewayLab) -> dict[str, Any]:
    """The known traffic: INTERCEPTED GETs of origin.test, BLOCKED of blocked.test; waits for their audit events."""
    for _ in range(INTERCEPTED):
        done = env.curl("--http1.1", *RESOLVE, "https://origin.test/")
        assert done.returncode == 0, done.stderr
    for _ in range(BLOCKED):
        done = env.curl("--http1.1", *RESOLVE, "-o", "/dev/null", "-w", "%{http_code}", "https://blocked.test/")
        assert done.stdout == "403", (done.stdout, done.stderr)
    wait_for(lambda: len(audited(env)) >= INTERCEPTED + BLOCKED, "the audit events")
    return {"done": time.time()}


def prometheus(env: GatewayLab) -> None:
    """A Prometheus server in the gateway's namespace, scraping the gateway every second (once per lab)."""
    if getattr(env, "prometheus", None) is not None:
        return
    work = env.lab.workdir
    (work / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: etpmitm\n    static_configs:\n"
        f"      - targets: ['{METRICS}']\n"
    )
    (work / "tsdb").mkdir()
    proc = env.lab.gateway.popen([
        "prometheus", f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
        f"--web.listen-address={PROMETHEUS}",
    ], cwd=work)
    env.lab.gateway.wait_for_port(9090, proc=proc, timeout=60)
    env.prometheus = proc  # type: ignore[attr-defined]


def promql(env: GatewayLab, query: str) -> list[dict[str, Any]]:
    status, body = http_get(env, f"http://{PROMETHEUS}/api/v1/query?query={urllib.parse.quote(query)}")
    assert status == 200, body
    answer = json.loads(body)
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


class OneProcessTests(_MetricsTests, TestCase):
    extra = ()


class WorkersTests(_MetricsTests, TestCase):
    extra = ("--workers", "2")

    def test_workersAlive(self) -> None:
        status, text = http_get(self.env, f"http://{METRICS}/metrics")
        self.assertEqual(status, 200)
        got = samples(text)
        self.assertEqual(got["etpmitm_workers_alive"], 2)
        self.assertEqual(got["etpmitm_worker_restarts_total"], 0)


class DrainTests(TestCase):
    """``/healthz`` answers 503 while SIGTERM drains a connection that is still open."""

    extra: tuple[str, ...] = ()

    def setUp(self) -> None:
        if (reason := lab_unavailable()) is not None:
            raise SkipTest(reason)
        self.env = build_lab("--drain-timeout", "60", *self.extra)
        self.addCleanup(self.env.close)

    def test_unhealthyWhileDraining(self) -> None:
        env = self.env
        self.assertEqual(http_get(env, f"http://{METRICS}/healthz")[0], 200)
        held = env.lab.client.popen(
            ["openssl", "s_client", "-connect", f"{ORIGIN}:443", "-servername", "origin.test",
             "-CAfile", str(env.root), "-quiet"],
            stdin=subprocess.PIPE,
        )
        self.addCleanup(held.kill)

        def openNow() -> float:
            return samples(http_get(env, f"http://{METRICS}/metrics")[1])["etpmitm_connections_open"]

        wait_for(lambda: openNow() == 1, "the held connection")
        assert env.gateway is not None
        env.gateway.send_signal(signal.SIGTERM)
        wait_for(lambda: http_get(env, f"http://{METRICS}/healthz")[0] == 503, "/healthz 503")
        status, body = http_get(env, f"http://{METRICS}/healthz")
        self.assertEqual((status, json.loads(body)), (503, {"status": "unavailable", "reason": "stopping"}))
        self.assertIsNone(env.gateway.poll(), "the gateway stopped instead of draining")
        self.assertEqual(openNow(), 1)
        assert held.stdin is not None
        held.stdin.write(b"GET / HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n")
        held.stdin.close()  # the request is answered, the connection ends, the drain is over
        self.assertIn(env.gateway.wait(30), (0, -signal.SIGTERM), env.log())
        self.assertIn("every connection ended", env.log())
        [event] = audited(env)
        self.assertEqual((event["action"], event["outcome"]), ("intercept", "ok"))



class DrainWorkersTests(DrainTests):
    """The master answers 503 while its workers drain."""

    extra = ("--workers", "2")
