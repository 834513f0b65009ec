"""The ICAP client: an :class:`IContentScanner` that asks an ICAP server.

One :class:`IcapScanner` serves the REQMOD and RESPMOD services of the
``[icap]`` settings.  Each scan takes a pooled connection, learns the
service's options (OPTIONS, cached for ``Options-TTL``), sends the heads and
a preview, the rest of the body on ``100 Continue`` (streamed from the
:class:`Spool` with back-pressure), and reads the answer.  The whole scan is
bounded by ``timeout``; any failure becomes ``outcome="error"`` with the
``on_error`` verdict and one logged line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import attrs
from twisted.internet.defer import Deferred, TimeoutError as DeferredTimeout, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTCP, IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from etpmitm.icap.codec import (
    MAX_BODY,
    IcapError,
    IcapOptions,
    IcapResponse,
    ResponseParser,
    encode_chunk,
    encode_request,
    last_chunk,
    options_request,
    parse_options,
)
from etpmitm.icap.connection import IcapConnection, Pool
from etpmitm.icap.results import interpret
from etpmitm.icap.settings import IcapSettings, ServiceURL
from etpmitm.scanning import IContentScanner, Kind, ScanJob, ScanResult, Spool, Verdict

__all__ = ["IcapScanner"]

log = Logger()

EndpointFactory = Callable[[ServiceURL], IStreamClientEndpoint]
_CHUNK = 65536


@attrs.define
class _Service:
    url: ServiceURL
    pool: Pool
    options: IcapOptions | None = None
    options_expire: float = 0.0


@implementer(IContentScanner)
class IcapScanner:
    """Scans messages with the services of *settings*.

    *endpoint* makes the client endpoint for a service (default: TCP to its
    host and port); *max_replacement*: the largest body the server may send
    back (larger is an error)."""

    def __init__(
        self,
        settings: IcapSettings,
        reactor: IReactorTime,
        endpoint: EndpointFactory | None = None,
        max_replacement: int = MAX_BODY,
    ) -> None:
        self.settings = settings
        self.max_size = settings.max_size
        self.oversize = settings.oversize
        self._reactor = reactor
        self._max_replacement = max_replacement
        make = endpoint or self._tcp
        pools: dict[tuple[str, int], Pool] = {}
        self._services: dict[Kind, _Service] = {}
        for kind, url in (("reqmod", settings.reqmod), ("respmod", settings.respmod)):
            if url is None:
                continue
            pool = pools.get((url.host, url.port))
            if pool is None:
                pool = pools[(url.host, url.port)] = Pool(make(url), settings.connections)
            self._services[kind] = _Service(url=url, pool=pool)  # type: ignore[index]

    def _tcp(self, url: ServiceURL) -> IStreamClientEndpoint:
        reactor = self._reactor
        assert IReactorTCP.providedBy(reactor)
        return HostnameEndpoint(reactor, url.host, url.port, timeout=max(1, int(self.settings.timeout)))

    def pool(self, kind: Kind) -> Pool:
        """The connection pool the service of *kind* uses."""
        return self._services[kind].pool

    def scans(self, kind: Kind) -> bool:
        return kind in self._services

    def close(self) -> None:
        """Reset the idle connections."""
        for service in self._services.values():
            service.pool.close()

    def scan(self, job: ScanJob) -> Deferred[ScanResult]:
        service = self._services.get(job.kind)
        started = self._reactor.seconds()
        if service is None:
            return succeed(self._error(job, "", "no ICAP service for " + job.kind, 0.0))
        url = str(service.url)
        size = 0 if job.body is None else job.body.size
        if size > self.max_size:
            verdict: Verdict = "pass" if self.oversize == "allow" else "block"
            reason = f"body of {size} bytes over max_size {self.max_size}: not scanned, {self.oversize}"
            log.info("ICAP {kind} {url}: {reason}", kind=job.kind, url=_no_query(job.url), reason=reason)
            result = ScanResult(verdict=verdict, outcome="oversize", service=url, reason=reason)
            return succeed(result)
        exchange = Deferred.fromCoroutine(self._exchange(service, job))
        exchange.addTimeout(self.settings.timeout, self._reactor)

        def answered(response: IcapResponse) -> ScanResult:
            duration = self._reactor.seconds() - started
            try:
                result = interpret(job.kind, url, response, duration)
            except IcapError as e:
                return self._error(job, url, str(e), duration)
            if result.outcome == "infected":
                log.info("ICAP {kind} {url}: {reason}", kind=job.kind, url=_no_query(job.url), reason=result.reason)
            return result

        def failed(failure: Failure) -> ScanResult:
            duration = self._reactor.seconds() - started
            why = self._why(failure)
            service.options = None  # learn them again: the server may have changed
            return self._error(job, url, why, duration)

        return exchange.addCallbacks(answered, failed)

    def _why(self, failure: Failure) -> str:
        if failure.check(DeferredTimeout):
            return f"no answer within the timeout of {self.settings.timeout:g}s"
        if failure.check(IcapError):
            return str(failure.value)
        return f"{type(failure.value).__name__}: {failure.getErrorMessage()}"

    def probe(self) -> Deferred[list[str]]:
        """Ask each service for its OPTIONS now (and keep them); the problems, one line each."""

        async def probeAll() -> list[str]:
            problems = []
            for kind, service in self._services.items():
                asked = Deferred.fromCoroutine(self._probe(service))
                asked.addTimeout(self.settings.timeout, self._reactor)
                try:
                    await asked
                except Exception:
                    problems.append(f"{kind} {service.url}: {self._why(Failure())}")
            return problems

        return Deferred.fromCoroutine(probeAll())

    async def _probe(self, service: _Service) -> None:
        conn = await service.pool.acquire()
        answered = False
        try:
            service.options = None
            await self._options(service, conn)
            answered = True
        finally:
            service.pool.release(conn, answered)

    def _error(self, job: ScanJob, service: str, why: str, duration: float) -> ScanResult:
        verdict: Verdict = "pass" if self.settings.on_error == "allow" else "block"
        why = " ".join(why.split())
        log.warn(
            "ICAP {kind} {url} via {service}: {why}; on_error = {action}",
            kind=job.kind, url=_no_query(job.url), service=service or "-", why=why,
            action=self.settings.on_error,
        )
        return ScanResult(
            verdict=verdict, outcome="error", service=service, reason=f"ICAP error: {why}", duration=duration,
        )

    async def _exchange(self, service: _Service, job: ScanJob) -> IcapResponse:
        conn = await service.pool.acquire()
        reusable = False
        try:
            options = await self._options(service, conn)
            response, reusable = await self._send(service.url, options, conn, job)
            return response
        finally:
            service.pool.release(conn, reusable)

    async def _options(self, service: _Service, conn: IcapConnection) -> IcapOptions:
        if service.options is not None and self._reactor.seconds() < service.options_expire:
            return service.options
        answer = conn.expect(ResponseParser(options=True))
        conn.write(options_request(service.url))
        options = parse_options(await answer)
        service.options = options
        service.pool.limit(options.max_connections)
        ttl = options.ttl if options.ttl is not None else 3600
        service.options_expire = self._reactor.seconds() + ttl
        return options

    async def _send(
        self, url: ServiceURL, options: IcapOptions, conn: IcapConnection, job: ScanJob
    ) -> tuple[IcapResponse, bool]:
        """Send the request; return the final answer and whether the connection is reusable."""
        body = job.body if job.body is not None and job.body.size > 0 else None
        preview: int | None = None
        if body is not None and self.settings.preview > 0 and options.preview is not None:
            preview = min(self.settings.preview, options.preview)
        head = encode_request(
            job.kind, url, job.request, job.response if job.kind == "respmod" else None,
            has_body=body is not None, preview=preview,
        )
        answer = conn.expect(ResponseParser(max_body=self._max_replacement))
        if body is None:
            conn.write(head)
            return await answer, True
        reader = _Reader(body)
        if preview is not None:
            first = reader.read(preview)
            ieof = reader.exhausted
            conn.write(head + encode_chunk(first) + last_chunk(ieof))
            response = await answer
            if response.status != 100:
                return response, True  # a final answer to the preview: the rest is never sent
            if ieof:
                raise IcapError("ICAP 100 Continue after a preview that held the whole body")
            answer = conn.expect(ResponseParser(max_body=self._max_replacement))
        else:
            conn.write(head)
        complete = await self._stream(conn, reader)
        response = await answer
        if response.status == 100:
            raise IcapError("ICAP 100 Continue where a final answer was due")
        return response, complete

    async def _stream(self, conn: IcapConnection, reader: _Reader) -> bool:
        """Send the rest of the body; False if the server answered before the end."""
        while True:
            await conn.drained()
            if conn.answered:
                return False
            data = reader.read(_CHUNK)
            if not data:
                conn.write(last_chunk())
                return True
            conn.write(encode_chunk(data))


class _Reader:
    """Exact-size reads over a spool's chunks, holding at most one chunk."""

    def __init__(self, spool: Spool) -> None:
        self._chunks: Iterator[bytes] = spool.chunks(_CHUNK)
        self._pending = b""
        self._done = False

    @property
    def exhausted(self) -> bool:
        if not self._pending and not self._done:
            self._pending = next(self._chunks, b"")
            self._done = not self._pending
        return self._done and not self._pending

    def read(self, size: int) -> bytes:
        parts: list[bytes] = []
        wanted = size
        while wanted > 0:
            if not self._pending:
                if self._done:
                    break
                self._pending = next(self._chunks, b"")
                if not self._pending:
                    self._done = True
                    break
            piece, self._pending = self._pending[:wanted], self._pending[wanted:]
            parts.append(piece)
            wanted -= len(piece)
        return b"".join(parts)


def _no_query(url: str) -> str:
    return url.partition("?")[0]
