"""``--metrics`` at start-up: which registry, which files, which health checks.

- One process: the metrics live in memory; a scrape reads them.
- ``--workers N``: the master makes a private directory (mode 0700, new and
  so empty at every start, removed when it stops) for prometheus_client's
  multiprocess files and tells its workers (``--worker-metrics DIR``); every
  process writes its own file, and a scrape of the master sums them.  A
  worker that exits is marked dead (its gauges leave the sum; its counts
  stay).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from typing import Any, Callable

import attrs

from etpmitm import metrics
from etpmitm.ca.directory import CertificateAuthority
from etpmitm.health import Health, MintCheck
from etpmitm.keyfiles import PrivateKey
from etpmitm.metricsweb import MetricsService


@attrs.define
class MetricsSetup:
    """What ``makeService`` needs: the service to add, and the workers' option."""

    service: MetricsService
    directory: str | None
    """The multiprocess directory, with ``--workers``."""

    def workerOptions(self) -> list[str]:
        return [f"--worker-metrics={self.directory}"] if self.directory is not None else []


def inWorker(directory: str) -> None:
    """A worker of a master with ``--metrics``: count into ``directory``."""
    from prometheus_client import CollectorRegistry, disable_created_metrics

    disable_created_metrics()  # the _created series double a scrape and no query here needs them
    metrics.useDirectory(directory)
    metrics.install(metrics.PrometheusMetrics(CollectorRegistry()))


def privateDirectory() -> str:
    """A new, empty 0700 directory for the multiprocess files: under systemd's
    ``$RUNTIME_DIRECTORY`` if set, else the temporary directory."""
    base = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or None
    return tempfile.mkdtemp(prefix="etpmitm-metrics-", dir=base)


def setUp(description: str, workers: int, ca: CertificateAuthority, leafKey: PrivateKey,
          clock: Callable[[], float], accepting: Callable[[], str | None]) -> MetricsSetup:
    """Install the metrics and build the ``--metrics`` listener (a bad description raises ValueError etc.)."""
    from prometheus_client import CollectorRegistry, disable_created_metrics

    disable_created_metrics()
    health = Health([accepting, MintCheck(ca, leafKey, clock)])
    registry = CollectorRegistry()
    directory: str | None = None

    def scrape() -> Any:
        return metrics.scrapeRegistry(directory, registry)

    service = MetricsService(description, scrape, health)  # parses the description first
    if workers > 1:
        directory = privateDirectory()
        metrics.useDirectory(directory)
        # At exit: after the workers stopped, and also when start-up fails.
        atexit.register(shutil.rmtree, directory, True)
    metrics.install(metrics.PrometheusMetrics(registry, directory))
    return MetricsSetup(service, directory)
