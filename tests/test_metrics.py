"""Tests for etpmitm.metrics, etpmitm.health and etpmitm.metricsweb, in memory (the drain: tests/test_drain.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from ipaddress import ip_address
from pathlib import Path

from prometheus_client import CollectorRegistry
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from etpmitm import metrics
from etpmitm.admission import Admission, refusal_kind
from etpmitm.audit import ConnectionRecord, open_now
from etpmitm.ca import init_own_root, load_or_create_leaf_key
from etpmitm.gateway.policyholder import PolicyHolder
from etpmitm.health import Health, MintCheck
from etpmitm.http import RequestHead, RequestRecord
from etpmitm.leafcache import LeafMinter
from etpmitm.learning import LearnedBypass, bypass_key
from etpmitm.metricsweb import HealthPage, MetricsPage, site
from tests.test_leafcache import FakeClock

REPO = Path(__file__).resolve().parent.parent

FAMILIES = {
    # name (as collected: counters without _total): (type, label names)
    "etpmitm_connections": ("counter", ("action", "outcome")),
    "etpmitm_connections_open": ("gauge", ()),
    "etpmitm_handshake_duration_seconds": ("histogram", ("phase",)),
    "etpmitm_origin_verdicts": ("counter", ("verdict",)),
    "etpmitm_connection_bytes": ("counter", ("direction",)),
    "etpmitm_leaf_cache_hits": ("counter", ()),
    "etpmitm_leaf_cache_misses": ("counter", ()),
    "etpmitm_leaves_minted": ("counter", ()),
    "etpmitm_learned_bypasses_added": ("counter", ()),
    "etpmitm_learned_bypasses_active": ("gauge", ()),
    "etpmitm_policy_reloads": ("counter", ()),
    "etpmitm_policy_reload_failures": ("counter", ()),
    "etpmitm_admission_refusals": ("counter", ("limit",)),
    "etpmitm_http_requests": ("counter", ("protocol", "method", "status")),
    "etpmitm_http_request_duration_seconds": ("histogram", ()),
    "etpmitm_worker_restarts": ("counter", ()),
    "etpmitm_workers_alive": ("gauge", ()),
    "etpmitm_list_matches": ("counter", ("list",)),
    "etpmitm_scans": ("counter", ("result",)),
    "etpmitm_scan_duration_seconds": ("histogram", ()),
}


class Recording(TestCase):
    """A test with PrometheusMetrics installed on a fresh registry."""

    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = metrics.PrometheusMetrics(self.registry)
        previous = metrics.install(self.metrics)
        self.addCleanup(metrics.install, previous)

    def value(self, name: str, **labels: str) -> float:
        found = self.registry.get_sample_value(name, labels)
        assert found is not None, f"no sample {name} {labels}"
        return found


class DefaultTests(TestCase):
    def test_noMetricsByDefault(self) -> None:
        """Without --metrics nothing is counted: the default is the no-op, and it does nothing."""
        self.assertIsInstance(metrics.current, metrics.NoMetrics)
        verifyObject(metrics.IMetrics, metrics.current)
        record = ConnectionRecord("10.0.0.2:1", "10.0.0.3:443", 0.0)
        record.emit(1.0)
        metrics.listMatched("ads")
        metrics.scanned("clean", 0.1)
        self.assertIsNone(metrics.current.handshake("origin", 0.1))

    def test_prometheusImplementsTheInterface(self) -> None:
        verifyObject(metrics.IMetrics, metrics.PrometheusMetrics(CollectorRegistry()))

    def test_installReturnsThePrevious(self) -> None:
        mine = metrics.NoMetrics()
        previous = metrics.install(mine)
        try:
            self.assertIs(metrics.current, mine)
        finally:
            self.assertIs(metrics.install(previous), mine)


class NamingTests(Recording):
    def test_namesTypesAndLabels(self) -> None:
        """Exactly the documented families, with the etpmitm_ prefix, base units and bounded labels."""
        found = {}
        for family in self.registry.collect():
            labels: set[str] = set()
            for sample in family.samples:
                labels |= set(sample.labels) - {"le"}
                if family.type == "counter" and not sample.name.endswith("_created"):
                    self.assertTrue(sample.name.endswith("_total"), sample.name)
            found[family.name] = (family.type, labels)
        expected = {name: (kind, set(labels)) for name, (kind, labels) in FAMILIES.items()}
        # Families with labels but no series made at start show no labels yet (only list matches).
        expected["etpmitm_list_matches"] = ("counter", set())
        self.assertEqual(found, expected)
        for name in found:
            self.assertTrue(name.startswith("etpmitm_"))
            self.assertNotRegex(name, "milliseconds|_ms$|kilobytes")

    def test_seriesExistAtZeroBeforeAnyEvent(self) -> None:
        for action in metrics.ACTIONS:
            for outcome in metrics.OUTCOMES:
                self.assertEqual(self.value("etpmitm_connections_total", action=action, outcome=outcome), 0)
        self.assertEqual(self.value("etpmitm_admission_refusals_total", limit="per-client_rate"), 0)
        self.assertEqual(self.value("etpmitm_http_requests_total", protocol="h2", method="other", status="none"), 0)

    def test_noUnboundedLabelNames(self) -> None:
        for family in self.registry.collect():
            for sample in family.samples:
                self.assertFalse({"sni", "url", "host", "client", "address", "ip", "path"} & set(sample.labels))


class ConnectionTests(Recording):
    def test_openAndEnded(self) -> None:
        """A record counts as open from its making to its emit, then by its action and outcome."""
        before = open_now()
        record = ConnectionRecord("10.0.0.2:1", "10.0.0.3:443", 0.0)
        self.assertEqual(self.value("etpmitm_connections_open"), 1)
        self.assertEqual(open_now(), before + 1)
        record.action = "intercept"
        record.origin_verdict = "ok"
        record.bytes_up, record.bytes_down = 100, 2000
        record.emit(1.0)
        record.emit(2.0)  # once
        self.assertEqual(open_now(), before)
        self.assertEqual(self.value("etpmitm_connections_open"), 0)
        self.assertEqual(self.value("etpmitm_connections_total", action="intercept", outcome="ok"), 1)
        self.assertEqual(self.value("etpmitm_origin_verdicts_total", verdict="ok"), 1)
        self.assertEqual(self.value("etpmitm_connection_bytes_total", direction="up"), 100)
        self.assertEqual(self.value("etpmitm_connection_bytes_total", direction="down"), 2000)

    def test_defaultsAndUnknownVerdicts(self) -> None:
        """An audit event without an action is a refuse, ok; an unknown verdict kind is 'other'."""
        record = ConnectionRecord("10.0.0.2:1", "10.0.0.3:443", 0.0)
        record.origin_verdict = "something-new"
        record.emit(1.0)
        self.assertEqual(self.value("etpmitm_connections_total", action="refuse", outcome="ok"), 1)
        self.assertEqual(self.value("etpmitm_origin_verdicts_total", verdict="other"), 1)

    def test_handshakes(self) -> None:
        for phase in metrics.HANDSHAKES:
            metrics.current.handshake(phase, 0.02)
        for phase in metrics.HANDSHAKES:
            self.assertEqual(self.value("etpmitm_handshake_duration_seconds_count", phase=phase), 1)
            self.assertEqual(self.value("etpmitm_handshake_duration_seconds_bucket", phase=phase, le="0.01"), 0)
            self.assertEqual(self.value("etpmitm_handshake_duration_seconds_bucket", phase=phase, le="0.025"), 1)


class RequestTests(Recording):
    def request(self, method: str, status: int | None, protocol: str = "http/1.1") -> None:
        record = RequestRecord("c-1", 1, protocol, RequestHead(method, "origin.test", "/"), 10.0)  # type: ignore[arg-type]
        record.status = status
        record.emit(10.5)

    def test_classes(self) -> None:
        self.request("GET", 200)
        self.request("BREW", 418, "h2")
        self.request("POST", None)
        self.request("PUT", 999)
        self.assertEqual(self.value("etpmitm_http_requests_total", protocol="http/1.1", method="GET", status="2xx"), 1)
        self.assertEqual(self.value("etpmitm_http_requests_total", protocol="h2", method="other", status="4xx"), 1)
        self.assertEqual(self.value("etpmitm_http_requests_total", protocol="http/1.1", method="POST", status="none"), 1)
        self.assertEqual(self.value("etpmitm_http_requests_total", protocol="http/1.1", method="PUT", status="none"), 1)
        self.assertEqual(self.value("etpmitm_http_request_duration_seconds_count"), 4)
        self.assertEqual(self.value("etpmitm_http_request_duration_seconds_sum"), 2.0)

    def test_classFunctions(self) -> None:
        self.assertEqual([metrics.status_class(s) for s in (100, 199, 301, 404, 503, None, 42)],
                         ["1xx", "1xx", "3xx", "4xx", "5xx", "none", "none"])
        self.assertEqual(metrics.method_class("get"), "other")  # methods are case-sensitive
        self.assertEqual(metrics.method_class("DELETE"), "DELETE")


class PlacesTests(Recording):
    """The instrumented places report what happened."""

    def test_leafCache(self) -> None:
        directory = Path(self.mktemp())
        minter = LeafMinter.create(init_own_root(directory), load_or_create_leaf_key(directory), clock=FakeClock())
        minter.leaf_for(("a.example",))
        minter.leaf_for(("a.example",))
        minter.leaf_for(("b.example",))
        self.assertEqual(self.value("etpmitm_leaf_cache_hits_total"), 1)
        self.assertEqual(self.value("etpmitm_leaf_cache_misses_total"), 2)
        self.assertEqual(self.value("etpmitm_leaves_minted_total"), 2)

    def test_learnedAddedAndActive(self) -> None:
        """Learned here counts as added; adopted from another worker only changes the active count."""
        learned = LearnedBypass(ttl=60)
        first = learned.learn(bypass_key("a.example", ip_address("10.0.0.3"), 443), 0.0, "client certificate")
        assert first is not None
        self.assertEqual((self.value("etpmitm_learned_bypasses_added_total"), self.value("etpmitm_learned_bypasses_active")), (1, 1))
        other = LearnedBypass(ttl=60)
        other.adopt(first, 0.0)
        self.assertEqual((self.value("etpmitm_learned_bypasses_added_total"), self.value("etpmitm_learned_bypasses_active")), (1, 1))
        learned.prune(61.0)
        self.assertEqual(self.value("etpmitm_learned_bypasses_active"), 0)

    def test_pinningFailuresLearn(self) -> None:
        learned = LearnedBypass(failures=2, scope="client")
        key = bypass_key("a.example", ip_address("10.0.0.3"), 443)
        learned.record_failure(key, ip_address("10.0.0.2"), 0.0, "pinned")
        self.assertEqual(self.value("etpmitm_learned_bypasses_added_total"), 0)
        learned.record_failure(key, ip_address("10.0.0.2"), 1.0, "pinned")
        self.assertEqual(self.value("etpmitm_learned_bypasses_added_total"), 1)

    def test_policyReloads(self) -> None:
        path = Path(self.mktemp())
        path.write_text("")
        holder = PolicyHolder.load(path)
        self.assertTrue(holder.reload())
        path.write_text("[[rule]]\naction = 'nonsense'\n")
        self.assertFalse(holder.reload())
        self.assertEqual(self.value("etpmitm_policy_reloads_total"), 1)
        self.assertEqual(self.value("etpmitm_policy_reload_failures_total"), 1)

    def test_admissionRefusalKinds(self) -> None:
        """The kinds Admission's refusals really have map to their own labels, not 'other'."""
        admission = Admission(max_connections=0, per_client=1, per_client_rate=1.0, burst=1)
        client = ip_address("10.0.0.2")
        self.assertIsNone(admission.admit(client, 0.0))
        per_client = admission.admit(client, 0.0)
        admission.release(client)
        rate = admission.admit(client, 0.1)
        limited = Admission(max_connections=1, per_client=0, per_client_rate=0.0, burst=1)
        limited.admit(client, 0.0)
        total = limited.admit(ip_address("10.0.0.9"), 0.0)
        for reason in (per_client, rate, total):
            assert reason is not None
            metrics.current.admissionRefused(refusal_kind(reason))
        for label in ("per-client_limit", "per-client_rate", "connection_limit"):
            self.assertEqual(self.value("etpmitm_admission_refusals_total", limit=label), 1, label)
        metrics.current.admissionRefused("a new kind")
        self.assertEqual(self.value("etpmitm_admission_refusals_total", limit="other"), 1)

    def test_workers(self) -> None:
        metrics.current.workerStarted(100)
        metrics.current.workerStarted(101)
        metrics.current.workerEnded(100, restarting=True)
        metrics.current.workerEnded(101, restarting=False)
        self.assertEqual(self.value("etpmitm_workers_alive"), 0)
        self.assertEqual(self.value("etpmitm_worker_restarts_total"), 1)

    def test_threatHelpers(self) -> None:
        metrics.listMatched("malware")
        metrics.scanned("infected", 0.2)
        metrics.scanned("weird", 0.3)
        self.assertEqual(self.value("etpmitm_list_matches_total", list="malware"), 1)
        self.assertEqual(self.value("etpmitm_scans_total", result="infected"), 1)
        self.assertEqual(self.value("etpmitm_scans_total", result="other"), 1)
        self.assertEqual(self.value("etpmitm_scan_duration_seconds_count"), 2)

    def test_auditedCategoriesAndScans(self) -> None:
        """A list match and a scan count where they are audited: the connection's and the request's events."""
        connection = ConnectionRecord("10.0.0.2:1", "10.0.0.3:443", 0.0, action="block")
        connection.category = "malware"
        connection.emit(1.0)
        ConnectionRecord("10.0.0.2:2", "10.0.0.3:443", 0.0, action="intercept").emit(1.0)  # no list: not counted
        request = RequestRecord("c-1", 1, "h2", RequestHead("GET", "origin.test", "/"), 10.0)
        request.category = "phishing"
        request.scan = [
            {"kind": "reqmod", "result": "clean", "duration": 0.25},
            {"kind": "respmod", "result": "infected", "duration": 0.5},
        ]
        request.emit(11.0)
        self.assertEqual(self.value("etpmitm_list_matches_total", list="malware"), 1)
        self.assertEqual(self.value("etpmitm_list_matches_total", list="phishing"), 1)
        self.assertEqual(self.value("etpmitm_scans_total", result="clean"), 1)
        self.assertEqual(self.value("etpmitm_scans_total", result="infected"), 1)
        self.assertEqual(self.value("etpmitm_scan_duration_seconds_sum"), 0.75)


WRITER = """
import sys
from prometheus_client import CollectorRegistry
from etpmitm import metrics
from etpmitm.audit import ConnectionRecord
metrics.useDirectory(sys.argv[1])
metrics.install(metrics.PrometheusMetrics(CollectorRegistry()))
for _ in range(int(sys.argv[2])):
    record = ConnectionRecord("10.0.0.2:1", "10.0.0.3:443", 0.0, action="splice")
    record.emit(1.0)
ConnectionRecord("10.0.0.2:1", "10.0.0.3:443", 0.0)  # still open when the process ends
"""


class MultiprocessTests(TestCase):
    def test_scrapeSumsTheProcesses(self) -> None:
        """Two worker processes write their files; a scrape sums the counts and, until a
        process is marked dead, its open connections."""
        directory = tempfile.mkdtemp(prefix="etpmitm-metrics-test-")
        self.addCleanup(subprocess.run, ["rm", "-rf", directory])
        pids = []
        for count in (3, 4):
            done = subprocess.run([sys.executable, "-c", WRITER + "print(__import__('os').getpid())", directory, str(count)],
                                  env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60)
            self.assertEqual(done.returncode, 0, done.stderr)
            pids.append(int(done.stdout))
        registry = metrics.scrapeRegistry(directory, None)
        self.assertEqual(registry.get_sample_value("etpmitm_connections_total", {"action": "splice", "outcome": "ok"}), 7)
        self.assertEqual(registry.get_sample_value("etpmitm_connections_open"), 2)
        master = metrics.PrometheusMetrics(CollectorRegistry(), directory)
        master.workerEnded(pids[0], restarting=True)  # the master has no files here: no value of its own
        registry = metrics.scrapeRegistry(directory, None)
        self.assertEqual(registry.get_sample_value("etpmitm_connections_open"), 1)
        self.assertEqual(registry.get_sample_value("etpmitm_connections_total", {"action": "splice", "outcome": "ok"}), 7)

    def test_aFileNotYetSizedIsLeftOut(self) -> None:
        """A worker that has just created its file (still empty) does not make the scrape fail."""
        directory = tempfile.mkdtemp(prefix="etpmitm-metrics-test-")
        self.addCleanup(subprocess.run, ["rm", "-rf", directory])
        done = subprocess.run([sys.executable, "-c", WRITER, directory, "2"],
                              env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        Path(directory, "counter_99999.db").touch()
        registry = metrics.scrapeRegistry(directory, None)
        self.assertEqual(registry.get_sample_value("etpmitm_connections_total", {"action": "splice", "outcome": "ok"}), 2)
        self.assertIn(b"etpmitm_connections_total", metrics.exposition(registry)[0])

    def test_oneProcessReadsItsOwnRegistry(self) -> None:
        registry = CollectorRegistry()
        self.assertIs(metrics.scrapeRegistry(None, registry), registry)


class HealthTests(TestCase):
    def setUp(self) -> None:
        directory = Path(self.mktemp())
        self.ca = init_own_root(directory)
        self.key = load_or_create_leaf_key(directory)
        self.clock = FakeClock()

    def test_mintsAndCaches(self) -> None:
        check = MintCheck(self.ca, self.key, self.clock, every=60)
        self.assertIsNone(check())
        # A CA that cannot sign any more is seen at the next check, not before.
        check.key = "not a key"  # type: ignore[assignment]
        self.clock.now += 30
        self.assertIsNone(check())
        self.clock.now += 31
        problem = check()
        assert problem is not None
        self.assertTrue(problem.startswith("cannot mint: "), problem)

    def test_expiredCA(self) -> None:
        check = MintCheck(self.ca, self.key, self.clock)
        self.clock.now = self.ca.certificate.not_valid_after_utc.timestamp() + 1
        problem = check()
        assert problem is not None
        self.assertIn("the CA certificate is not valid now", problem)

    def test_stoppingComesFirst(self) -> None:
        health = Health([lambda: None])
        self.assertEqual(health.status(), (True, "ok"))
        health.checks.append(lambda: "no worker is running")
        self.assertEqual(health.status(), (False, "no worker is running"))
        health.stopping = True
        self.assertEqual(health.status(), (False, "stopping"))

    def test_pages(self) -> None:
        health = Health([lambda: None])
        request = DummyRequest([b""])
        body = HealthPage(health).render_GET(request)  # type: ignore[arg-type]
        self.assertEqual((request.responseCode or 200, json.loads(body)), (200, {"status": "ok", "reason": "ok"}))
        health.stopping = True
        request = DummyRequest([b""])
        body = HealthPage(health).render_GET(request)  # type: ignore[arg-type]
        self.assertEqual((request.responseCode, json.loads(body)), (503, {"status": "unavailable", "reason": "stopping"}))
        registry = CollectorRegistry()
        metrics.PrometheusMetrics(registry)
        request = DummyRequest([b""])
        text = MetricsPage(lambda: registry).render_GET(request)  # type: ignore[arg-type]
        self.assertIn(b"# TYPE etpmitm_connections_total counter", text)
        self.assertTrue(request.responseHeaders.getRawHeaders(b"content-type")[0].startswith(b"text/plain; version="))


    def test_noAccessLogLines(self) -> None:
        """A health check (or scrape) over HTTP is answered without a line in the log."""
        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        factory = site(CollectorRegistry, Health([lambda: None]))
        factory.startFactory()
        self.addCleanup(factory.stopFactory)
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET /healthz HTTP/1.0\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.0 200 OK\r\n"), transport.value())
        self.assertEqual([e for e in events if "/healthz" in str(e.get("log_io", ""))], [])
