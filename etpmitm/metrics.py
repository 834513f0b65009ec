"""What the gateway counts, for Prometheus (``--metrics``).

The instrumented places call :data:`current`, an :class:`IMetrics`.  Until
``--metrics`` installs :class:`PrometheusMetrics`, it is :class:`NoMetrics`,
whose methods do nothing: the hot path then pays one method call.

Every label has a small, fixed set of values (the audit's words, classes of
methods and statuses, verdict kinds); nothing a device or an origin names
(SNI, URL, address) becomes a label.

With ``--workers`` the values live in prometheus_client's multiprocess files
(:func:`useDirectory`, before the first metric is made): every worker and the
master write their own, and the master's scrape sums them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Iterable

from zope.interface import Interface, implementer

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from etpmitm.audit import ConnectionRecord
    from etpmitm.http import RequestRecord

ACTIONS = ("intercept", "splice", "block", "close", "refuse")
OUTCOMES = ("ok", "refused", "error")
HANDSHAKES = ("client_hello", "origin", "device")
"""client_hello: from accept to a whole ClientHello; origin: TCP connect and
TLS to the origin; device: the device's TLS handshake with the minted leaf."""
ORIGIN_VERDICTS = (
    "ok", "unknown-issuer", "bad-signature", "not-yet-valid", "expired", "malformed", "self-signed",
    "unknown-root", "incomplete-chain", "chain-too-long", "revoked", "invalid-ca", "path-length",
    "invalid-purpose", "untrusted", "rejected", "name-constraints", "weak-key", "weak-signature",
    "wrong-host", "old-protocol", "chain-error", "other",
)
"""The kinds of :class:`~etpmitm.origintrust.OriginVerdict`; anything else counts as ``other``."""
ADMISSION_LIMITS = ("connection limit", "per-client limit", "per-client rate", "other")
"""The kinds of :func:`~etpmitm.admission.refusal_kind`."""
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "other")
STATUSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "none")
PROTOCOLS = ("http/1.1", "h2")
SCAN_RESULTS = ("clean", "infected", "modified", "oversize", "error", "other")
"""The outcomes of :mod:`etpmitm.scanning`; anything else counts as ``other``."""
DIRECTIONS = ("up", "down")
"""up: what the device sent; down: what the device got."""

HANDSHAKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SCAN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class IMetrics(Interface):
    """The facts the gateway reports where they happen."""

    def connectionOpened() -> None:
        """A device connection was accepted (and admitted)."""

    def connectionEnded(record: ConnectionRecord) -> None:
        """A connection's one audit event was emitted."""

    def handshake(phase: str, seconds: float) -> None:
        """A handshake phase (one of :data:`HANDSHAKES`) finished in ``seconds``."""

    def leafCache(hit: bool) -> None:
        """The leaf cache was asked for a leaf."""

    def leafMinted() -> None:
        """A leaf was minted (signed)."""

    def bypassLearned(active: int) -> None:
        """This process learned a bypass itself; ``active`` entries are in force now."""

    def bypassesActive(active: int) -> None:
        """The learned entries in force changed (adopted from another worker, pruned)."""

    def policyReloaded(ok: bool) -> None:
        """A SIGHUP reload succeeded, or failed and kept the previous policy."""

    def admissionRefused(limit: str) -> None:
        """A connection was refused by an admission limit (:data:`ADMISSION_LIMITS`)."""

    def requestEnded(record: RequestRecord) -> None:
        """An HTTP request's audit event was emitted."""

    def workerStarted(pid: int) -> None:
        """The master started a worker."""

    def workerEnded(pid: int, restarting: bool) -> None:
        """A worker exited; the master restarts it unless it is stopping."""

    def listMatched(name: str) -> None:
        """A threat list (named in the configuration) matched a connection or request."""

    def scanned(result: str, seconds: float) -> None:
        """A content scan (ICAP) ended with ``result`` (:data:`SCAN_RESULTS`) after ``seconds``."""


@implementer(IMetrics)
class NoMetrics:
    """The default without ``--metrics``: nothing is counted."""

    def connectionOpened(self) -> None:
        pass

    def connectionEnded(self, record: ConnectionRecord) -> None:
        pass

    def handshake(self, phase: str, seconds: float) -> None:
        pass

    def leafCache(self, hit: bool) -> None:
        pass

    def leafMinted(self) -> None:
        pass

    def bypassLearned(self, active: int) -> None:
        pass

    def bypassesActive(self, active: int) -> None:
        pass

    def policyReloaded(self, ok: bool) -> None:
        pass

    def admissionRefused(self, limit: str) -> None:
        pass

    def requestEnded(self, record: RequestRecord) -> None:
        pass

    def workerStarted(self, pid: int) -> None:
        pass

    def workerEnded(self, pid: int, restarting: bool) -> None:
        pass

    def listMatched(self, name: str) -> None:
        pass

    def scanned(self, result: str, seconds: float) -> None:
        pass


current: IMetrics = NoMetrics()
"""What the instrumented places report to; :func:`install` replaces it."""


def install(metrics: IMetrics) -> IMetrics:
    """Make ``metrics`` the one reported to; returns the previous one (for tests)."""
    global current
    previous, current = current, metrics
    return previous


def useDirectory(path: str) -> None:
    """Keep this process's values in prometheus_client's multiprocess files under ``path``.

    Call before the first metric is made.  prometheus_client chooses its value
    class when it is first imported, from ``PROMETHEUS_MULTIPROC_DIR``; the
    variable stays set, so workers started from here inherit it.
    """
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    from prometheus_client import values

    values.ValueClass = values.MultiProcessValue()


def method_class(method: str) -> str:
    return method if method in METHODS else "other"


def status_class(status: int | None) -> str:
    if status is None or not 100 <= status <= 599:
        return "none"
    return f"{status // 100}xx"


def _known(value: str, known: Iterable[str]) -> str:
    return value if value in known else "other"


@implementer(IMetrics)
class PrometheusMetrics:
    """The metrics, as prometheus_client objects registered in ``registry``.

    Every labelled series is made at start (at zero), so a query sees it
    before its first event, and the hot path looks a child up in a dict
    instead of calling ``labels()``.
    """

    def __init__(self, registry: CollectorRegistry, multiprocessDirectory: str | None = None) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self._directory = multiprocessDirectory

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        connections = counter("etpmitm_connections_total", "Device connections ended, by the audit event's action and outcome", ("action", "outcome"))
        self._connections = {(a, o): connections.labels(a, o) for a in ACTIONS for o in OUTCOMES}
        self._open = Gauge("etpmitm_connections_open", "Device connections open now", registry=registry, multiprocess_mode="livesum")
        handshakes = Histogram(
            "etpmitm_handshake_duration_seconds", "Handshake phases of intercepted connections",
            ("phase",), registry=registry, buckets=HANDSHAKE_BUCKETS,
        )
        self._handshakes = {p: handshakes.labels(p) for p in HANDSHAKES}
        verdicts = counter("etpmitm_origin_verdicts_total", "Origin certificate verdicts, by kind (ok or why not trusted)", ("verdict",))
        self._verdicts = {v: verdicts.labels(v) for v in ORIGIN_VERDICTS}
        relayed = counter("etpmitm_connection_bytes_total", "Bytes of ended connections: up from the device, down to it", ("direction",))
        self._up, self._down = relayed.labels("up"), relayed.labels("down")
        self._hits = counter("etpmitm_leaf_cache_hits_total", "Leaf cache lookups answered from the cache")
        self._misses = counter("etpmitm_leaf_cache_misses_total", "Leaf cache lookups that had to mint")
        self._mints = counter("etpmitm_leaves_minted_total", "Leaf certificates minted")
        self._learned = counter("etpmitm_learned_bypasses_added_total", "Bypasses this gateway learned from interception failures")
        self._active = Gauge(
            "etpmitm_learned_bypasses_active", "Learned bypass entries in force (each worker holds them all: the largest)",
            registry=registry, multiprocess_mode="livemax",
        )
        self._reloads = counter("etpmitm_policy_reloads_total", "Policy reloads that took effect (per process)")
        self._reloadFailures = counter("etpmitm_policy_reload_failures_total", "Policy reloads that failed and kept the previous policy (per process)")
        refusals = counter("etpmitm_admission_refusals_total", "Connections refused by an admission limit", ("limit",))
        self._refusals = {k: refusals.labels(k.replace(" ", "_")) for k in ADMISSION_LIMITS}
        requests = counter("etpmitm_http_requests_total", "Inspected HTTP requests ended", ("protocol", "method", "status"))
        self._requests = {(p, m, s): requests.labels(p, m, s) for p in PROTOCOLS for m in METHODS for s in STATUSES}
        self._requestDuration = Histogram(
            "etpmitm_http_request_duration_seconds", "Inspected HTTP requests, from the request to the end of the response",
            registry=registry, buckets=REQUEST_BUCKETS,
        )
        self._restarts = counter("etpmitm_worker_restarts_total", "Workers the master restarted after they exited")
        self._alive = Gauge("etpmitm_workers_alive", "Worker processes running now", registry=registry, multiprocess_mode="livesum")
        self._lists = counter("etpmitm_list_matches_total", "Threat list matches, by list", ("list",))
        scans = counter("etpmitm_scans_total", "Content scans, by result", ("result",))
        self._scans = {r: scans.labels(r) for r in SCAN_RESULTS}
        self._scanDuration = Histogram(
            "etpmitm_scan_duration_seconds", "Content scans, from the request to the scanner's answer",
            registry=registry, buckets=SCAN_BUCKETS,
        )

    def connectionOpened(self) -> None:
        self._open.inc()

    def connectionEnded(self, record: ConnectionRecord) -> None:
        self._open.dec()
        self._connections[(record.action or "refuse", record.outcome or "ok")].inc()
        if record.origin_verdict is not None:
            self._verdicts[_known(record.origin_verdict, ORIGIN_VERDICTS)].inc()
        if record.bytes_up:
            self._up.inc(record.bytes_up)
        if record.bytes_down:
            self._down.inc(record.bytes_down)
        if record.category is not None:
            self.listMatched(record.category)

    def handshake(self, phase: str, seconds: float) -> None:
        self._handshakes[phase].observe(seconds)

    def leafCache(self, hit: bool) -> None:
        (self._hits if hit else self._misses).inc()

    def leafMinted(self) -> None:
        self._mints.inc()

    def bypassLearned(self, active: int) -> None:
        self._learned.inc()
        self._active.set(active)

    def bypassesActive(self, active: int) -> None:
        self._active.set(active)

    def policyReloaded(self, ok: bool) -> None:
        (self._reloads if ok else self._reloadFailures).inc()

    def admissionRefused(self, limit: str) -> None:
        self._refusals[_known(limit, ADMISSION_LIMITS)].inc()

    def requestEnded(self, record: RequestRecord) -> None:
        protocol = record.protocol if record.protocol in PROTOCOLS else "http/1.1"
        self._requests[(protocol, method_class(record.head.method), status_class(record.status))].inc()
        self._requestDuration.observe(record.duration)
        if record.category is not None:
            self.listMatched(record.category)
        for scan in record.scan or ():
            self.scanned(str(scan.get("result")), float(scan.get("duration") or 0.0))

    def workerStarted(self, pid: int) -> None:
        self._alive.inc()

    def workerEnded(self, pid: int, restarting: bool) -> None:
        self._alive.dec()
        if restarting:
            self._restarts.inc()
        if self._directory is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, self._directory)

    def listMatched(self, name: str) -> None:
        self._lists.labels(name).inc()

    def scanned(self, result: str, seconds: float) -> None:
        self._scans[_known(result, SCAN_RESULTS)].inc()
        self._scanDuration.observe(seconds)


def listMatched(name: str) -> None:
    """For threat lists: count a match of the list ``name`` (a configured list's name, never a host)."""
    current.listMatched(name)


def scanned(result: str, seconds: float) -> None:
    """For content scans: count one with its result and duration."""
    current.scanned(result, seconds)


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The registry's text exposition and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(registry), CONTENT_TYPE_LATEST


def scrapeRegistry(multiprocessDirectory: str | None, registry: CollectorRegistry | None) -> Any:
    """The registry a scrape reads: the multiprocess files' sum, or ``registry`` itself."""
    if multiprocessDirectory is None:
        return registry
    from prometheus_client import CollectorRegistry

    summed = CollectorRegistry()
    summed.register(_SizedFiles(multiprocessDirectory))
    return summed


class _SizedFiles:
    """prometheus_client's multiprocess sum, less the files that a starting
    process has created but not yet sized (reading one raises, so a scrape
    while a worker starts would fail)."""

    def __init__(self, directory: str) -> None:
        self._directory = directory

    def collect(self) -> Any:
        import glob

        from prometheus_client.multiprocess import MultiProcessCollector

        files = []
        for path in glob.glob(os.path.join(self._directory, "*.db")):
            try:
                if os.path.getsize(path) > 0:
                    files.append(path)
            except OSError:  # removed meanwhile (a dead process's gauges)
                pass
        return MultiProcessCollector.merge(files, accumulate=True)
