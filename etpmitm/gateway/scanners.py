"""The content scanner of the policy in force: built from ``[icap]``, swapped on reload.

:class:`ScannerHolder` builds the scanner once at start-up and again only
when a reloaded policy's ``[icap]`` settings differ.  A connection keeps the
scanner it started with (as it keeps its policy): each new connection's HTTP
layer is given :attr:`ScannerHolder.current`.  A replaced scanner is retired:
it is closed (its idle ICAP connections reset) as soon as no scan is in
flight, and again each time it goes idle, since a connection that started
before the reload may still use it (its pool then opens a connection for that
scan, closed once the scan is over).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from etpmitm.icap.settings import IcapSettings
from etpmitm.scanning import IContentScanner, Kind, ScanJob, ScanResult

__all__ = ["ClosableScanner", "ScannerHolder"]

log = Logger()
_T = TypeVar("_T")


class ClosableScanner(Protocol):
    """An :class:`IContentScanner` that can be closed and asked whether its server answers."""

    @property
    def max_size(self) -> int: ...

    @property
    def oversize(self) -> str: ...

    def scans(self, kind: Kind) -> bool: ...

    def scan(self, job: ScanJob) -> Deferred[ScanResult]: ...

    def close(self) -> None: ...

    def probe(self) -> Deferred[list[str]]: ...


@implementer(IContentScanner)
class _Tracked:
    """A scanner with a count of the scans in flight, closed when retired and idle."""

    def __init__(self, scanner: ClosableScanner) -> None:
        self.scanner = scanner
        self.max_size = scanner.max_size
        self.oversize = scanner.oversize
        self.busy = 0
        self.retired = False

    def scans(self, kind: Kind) -> bool:
        return self.scanner.scans(kind)

    def scan(self, job: ScanJob) -> Deferred[ScanResult]:
        self.busy += 1
        return maybeDeferred(self.scanner.scan, job).addBoth(self._done)

    def _done(self, result: _T) -> _T:
        self.busy -= 1
        if self.retired and self.busy == 0:
            self.scanner.close()
        return result

    def retire(self) -> None:
        self.retired = True
        if self.busy == 0:
            self.scanner.close()


class ScannerHolder:
    """Hands each new connection the scanner of the ``[icap]`` settings in force.

    *build* makes a scanner from settings (the service: an
    :class:`~etpmitm.icap.client.IcapScanner`)."""

    def __init__(self, build: Callable[[IcapSettings], ClosableScanner]) -> None:
        self._build = build
        self.settings: IcapSettings | None = None
        self._current: _Tracked | None = None
        self.retired: list[_Tracked] = []
        """Replaced scanners that may still have scans in flight (for tests)."""

    @property
    def current(self) -> IContentScanner | None:
        """The scanner for a connection starting now; None: no ``[icap]``, no scanning."""
        return self._current

    def update(self, settings: IcapSettings | None) -> bool:
        """Use *settings* from now on; whether that changed the scanner.

        Unchanged settings keep the scanner (and its warm connections)."""
        if settings == self.settings:
            return False
        old = self._current
        self.settings = settings
        self._current = None if settings is None else _Tracked(self._build(settings))
        if old is not None:
            old.retire()
            self.retired = [t for t in self.retired if t.busy] + ([old] if old.busy else [])
        return True

    def probe(self) -> Deferred[Any]:
        """Ask the current scanner's services for their OPTIONS; log a warning
        for each that does not answer (scans then get ``on_error``)."""
        tracked, settings = self._current, self.settings
        if tracked is None:
            return succeed(None)

        def report(problems: list[str]) -> None:
            for problem in problems:
                log.warn(
                    "ICAP service {problem}; scans get on_error = {action} until it answers",
                    problem=problem, action=_on_error(settings),
                )
            if not problems:
                log.info("ICAP services answer OPTIONS: {settings}", settings=_describe(settings))

        return tracked.scanner.probe().addCallback(report)

    def close(self) -> None:
        """Shutdown: close the current scanner and every retired one."""
        for tracked in [*self.retired, *([self._current] if self._current is not None else [])]:
            tracked.scanner.close()
        self.retired = []


def _on_error(settings: IcapSettings | None) -> str:
    return settings.on_error if settings is not None else "-"


def _describe(settings: IcapSettings | None) -> str:
    if settings is None:
        return "none"
    services = [f"{kind} {url}" for kind, url in (("reqmod", settings.reqmod), ("respmod", settings.respmod)) if url]
    return ", ".join(services)
