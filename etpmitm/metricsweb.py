"""``--metrics ENDPOINT``: ``/metrics`` (Prometheus text) and ``/healthz`` over twisted.web.

The listener outlives the rest of shutdown: :class:`MetricsService` marks
the health as stopping as soon as shutdown begins (so ``/healthz`` answers
503 while connections drain and workers stop), and closes its port only when
the reactor's shutdown itself runs.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.application import strports
from twisted.application.service import IService, Service
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from etpmitm.health import Health
from etpmitm.metrics import exposition

log = Logger()


class MetricsPage(Resource):
    isLeaf = True

    def __init__(self, registry: Callable[[], Any]) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        body, contentType = exposition(self._registry())
        request.setHeader(b"content-type", contentType.encode())
        return body


class HealthPage(Resource):
    isLeaf = True

    def __init__(self, health: Health) -> None:
        super().__init__()
        self._health = health

    def render_GET(self, request: Request) -> bytes:
        healthy, reason = self._health.status()
        request.setResponseCode(200 if healthy else 503)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps({"status": "ok" if healthy else "unavailable", "reason": reason}).encode() + b"\n"


class QuietSite(Site):
    """No access log line per request: a balancer checks /healthz every second or so,
    Prometheus scrapes every few seconds, and each would add a line to the log."""

    def log(self, request: http.Request) -> None:
        pass


def site(registry: Callable[[], Any], health: Health) -> Site:
    root = Resource()
    root.putChild(b"metrics", MetricsPage(registry))
    root.putChild(b"healthz", HealthPage(health))
    factory = QuietSite(root)
    factory.noisy = False
    factory.displayTracebacks = False
    return factory


class MetricsService(Service):
    """Listens on ``description`` (strports) until the reactor shuts down."""

    def __init__(self, description: str, registry: Callable[[], Any], health: Health) -> None:
        # Parsed now: a bad description is an error at start-up, in one line.
        self.description = description
        self.health = health
        self._listener: IService = strports.service(description, site(registry, health))

    def privilegedStartService(self) -> None:
        from twisted.internet import reactor

        try:
            self._listener.privilegedStartService()
        except CannotListenError as e:
            from etpmitm.service import StartupError

            raise StartupError(f"cannot listen for --metrics on {e.interface or '*'}:{e.port}: {e.socketError}") from None
        reactor.addSystemEventTrigger("during", "shutdown", self._listener.stopService)
        super().privilegedStartService()

    def startService(self) -> None:
        if not self._listener.running:
            self._listener.startService()
        super().startService()

    def stopService(self) -> None:
        """Shutdown begins: report stopping; the port closes with the reactor."""
        self.health.stopping = True
        super().stopService()
