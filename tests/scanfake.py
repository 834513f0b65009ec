"""A content scanner for tests: each scan waits on a Deferred the test fires."""

from __future__ import annotations

from typing import IO, Literal

import attrs
from twisted.internet.defer import Deferred
from zope.interface import implementer

from etpmitm.scanning import IContentScanner, Kind, Message, Replacement, ScanJob, ScanResult, Spool

SERVICE = "icap://scanner.test:1344/avscan"


@attrs.define
class Scan:
    """One scan asked for: the job, the body as the scanner read it, and the answer to give."""

    job: ScanJob
    body: bytes | None
    file: IO[bytes] | None
    """The spool's temporary file, if the body had moved to one."""
    answer: Deferred[ScanResult]

    def passes(self) -> None:
        self.answer.callback(ScanResult("pass", "clean", SERVICE, istag="tag-1", duration=0.25))

    def blocks(self, threat: str = "Eicar-Test-Signature") -> None:
        self.answer.callback(ScanResult("block", "infected", SERVICE, istag="tag-1", threat=threat, reason=threat))

    def fails(self) -> None:
        self.answer.callback(ScanResult("block", "error", SERVICE, reason="the ICAP server timed out"))

    def replaces(self, head: Message, body: bytes, *, response: bool = True, threat: str | None = None) -> None:
        outcome: Literal["infected", "modified"] = "infected" if threat else "modified"
        self.answer.callback(ScanResult("replace", outcome, SERVICE, istag="tag-1", threat=threat,
                                        replacement=Replacement(head, body, is_response=response)))


@implementer(IContentScanner)
class FakeScanner:
    """Answers nothing until the test fires the scan's Deferred."""

    def __init__(self, kinds: tuple[Kind, ...] = ("reqmod", "respmod"), max_size: int = 1 << 30,
                 oversize: str = "allow") -> None:
        self.kinds = kinds
        self.max_size = max_size
        self.oversize = oversize
        self.scans_: list[Scan] = []

    def scans(self, kind: Kind) -> bool:
        return kind in self.kinds

    def scan(self, job: ScanJob) -> Deferred[ScanResult]:
        body = b"".join(job.body.chunks()) if job.body is not None else None
        file = _file(job.body)
        scan = Scan(job, body, file, Deferred())
        self.scans_.append(scan)
        return scan.answer


def _file(spool: Spool | None) -> IO[bytes] | None:
    return getattr(spool, "_file", None) if spool is not None else None
