"""What the HTTP layers share (sans-IO): a request's facts, the verdict on it, its audit event.

The HTTP/1.1 and HTTP/2 layers fill a :class:`RequestHead` from each request,
ask the policy for a :class:`RequestVerdict` before the origin sees the
request, and log one :class:`RequestRecord` per request, joined to its
connection's audit event by ``connection``.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import attrs
from twisted.logger import Logger

from etpmitm import metrics

log = Logger(namespace="etpmitm.audit.request")

RequestAction = Literal["allow", "block", "refuse"]
"""allow: forwarded; block: answered with the block page by policy; refuse:
answered with an error (a malformed or smuggling request), never forwarded."""


@attrs.frozen
class RequestHead:
    """One request as the policy and the audit see it."""

    method: str
    authority: str
    """Host (HTTP/1.1) or :authority (HTTP/2), lower case, without a default port."""
    path: str
    """The path without the query string."""
    query_length: int = 0
    user_agent: str | None = None
    content_type: str | None = None
    content_length: int | None = None
    query: str | None = None
    """The query string, if any; audited only with ``[audit] query = true``."""

    @property
    def url(self) -> str:
        return f"{self.authority}{self.path}"


def authority(host: str) -> str:
    """A Host or ``:authority`` as requests are audited: lower case, without a
    trailing dot or the default port (443)."""
    host = host.strip().lower().rstrip(".")
    if host.endswith(":443"):
        host = host[:-4].rstrip(".")
    return host


@attrs.frozen
class RequestVerdict:
    """What the policy says of one request."""

    action: Literal["allow", "block"]
    reason: str
    rule: str | None = None
    category: str | None = None
    """The threat list that matched, if any (:mod:`etpmitm.threat.judge`)."""


def literal(text: str) -> str:
    """``text`` as a log format that formats to itself."""
    return text.replace("{", "{{").replace("}", "}}")


ALLOW = RequestVerdict("allow", "no request rule matched")

Judge = Callable[[RequestHead], RequestVerdict]
"""Rules on one request before the origin sees it (the connection binds the policy in force)."""


def allow_all(head: RequestHead) -> RequestVerdict:
    """The judge that allows everything (inspection without request rules)."""
    return ALLOW


@attrs.define
class RequestRecord:
    """What happened to one request; logged once when its exchange ends."""

    connection: str
    """The connection's id (its audit event's ``id``)."""
    stream: int
    """1, 2, 3 ... per connection for HTTP/1.1; the stream id for HTTP/2."""
    protocol: Literal["http/1.1", "h2"]
    head: RequestHead
    started: float
    action: RequestAction = "allow"
    reason: str = ""
    rule: str | None = None
    category: str | None = None
    """The threat list that matched the request, if any."""
    status: int | None = None
    response_content_type: str | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    headers_after: float | None = None
    """Seconds from the request to the response's headers."""
    duration: float = 0.0
    upgrade: str | None = None
    """The protocol switched to after a 101 (``websocket``), if any."""
    scan: list[dict[str, Any]] | None = None
    """The content scans of this request (``etpmitm.gateway.scanhold.audit``): kind, service,
    istag, result, threat, duration; None when nothing was scanned."""
    log_query: bool = False
    """Whether the audit event keeps the query string (``[audit] query``)."""
    _emitted: bool = False

    def fields(self) -> dict[str, Any]:
        """The event's fields, JSON-ready (spelled out: this runs once per request)."""
        h = self.head
        head = {
            "method": h.method, "authority": h.authority, "path": h.path, "query_length": h.query_length,
            "user_agent": h.user_agent, "content_type": h.content_type, "content_length": h.content_length,
        }
        if self.log_query:
            head["query"] = h.query
        return {
            "connection": self.connection, "stream": self.stream, "protocol": self.protocol, "head": head,
            "started": self.started, "action": self.action, "reason": self.reason, "rule": self.rule,
            "status": self.status, "response_content_type": self.response_content_type,
            "bytes_up": self.bytes_up, "bytes_down": self.bytes_down, "headers_after": self.headers_after,
            "duration": self.duration, "upgrade": self.upgrade, "category": self.category, "scan": self.scan,
        }

    def emit(self, now: float) -> None:
        """Log the event, once."""
        if self._emitted:
            return
        self._emitted = True
        self.duration = max(0.0, now - self.started)
        head = self.head
        # Rendered here, once: Twisted's format machinery costs about 20 us an
        # event, on every request; the fields ride along for JSON observers.
        text = (
            f"request {self.connection}/{self.stream} {head.method} {head.url} -> {self.status} "
            f"action={self.action} reason={self.reason!r}"
        )
        log.info(literal(text), method=head.method, url=head.url, **self.fields())
        metrics.current.requestEnded(self)
