"""The HTTP/1.1 inspection layer: the observer of :mod:`etpmitm.http1` between the decrypted ends.

It carries out the observer's actions on the :class:`~etpmitm.interfaces.ILayerLink`,
stops reading the device while a pipelined request waits, and logs one
:class:`~etpmitm.http.RequestRecord` per request (when its exchange ends, or
when the connection does).
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from etpmitm.audit import ConnectionRecord
from etpmitm.http import Judge, RequestRecord, allow_all
from etpmitm.http1 import (
    Action,
    Began,
    Close,
    EndDevice,
    EndOrigin,
    Exchange,
    Finished,
    HTTP1Observer,
    Responded,
    ToDevice,
    ToOrigin,
    Upgraded,
)
from etpmitm.http1guard import MAX_HEADERS
from etpmitm.interfaces import ILayer, ILayerLink


@implementer(ILayer)
class HTTP1Layer:
    """Inspects one HTTP/1.1 connection; ``judge`` rules on each request head."""

    name = "http/1.1"

    def __init__(
        self,
        record: ConnectionRecord,
        clock: IReactorTime,
        judge: Judge = allow_all,
        *,
        maxHeaders: int = MAX_HEADERS,
        stripAltSvc: bool = True,
        keepQuery: Callable[[], bool] = lambda: False,
    ) -> None:
        self._connection = record
        self._clock = clock
        self._keepQuery = keepQuery
        self._observer = HTTP1Observer(judge, max_headers=maxHeaders, strip_alt_svc=stripAltSvc)
        self._records: dict[int, RequestRecord] = {}
        self._paused = False
        self._deviceClean = True
        self._originClean = True
        self._deviceEnded = False

    def start(self, link: ILayerLink) -> None:
        self._link = link

    def deviceData(self, data: bytes) -> None:
        self._apply(self._observer.device(data))

    def originData(self, data: bytes) -> None:
        self._apply(self._observer.origin(data))

    def deviceEnded(self, clean: bool) -> None:
        self._deviceClean, self._deviceEnded = clean, True
        self._apply(self._observer.device_ended())

    def originEnded(self, clean: bool) -> None:
        self._originClean = clean
        if not clean and self._observer.awaiting_response:
            self._link.fail("truncated: the origin closed without close_notify")
        elif not clean:
            self._link.note("the origin closed without close_notify between responses")
        cut = self._observer.awaiting_response and self._observer.mode == "http"
        self._apply(self._observer.origin_ended())
        if clean and cut and self._observer.awaiting_response:
            self._link.fail("the origin closed before its response ended")

    def closed(self) -> None:
        """Log the exchanges the connection's end cut short (and upgraded ones)."""
        now = self._clock.seconds()
        current = self._observer.current
        for number, record in sorted(self._records.items()):
            if current is not None and current.number == number:
                self._fill(record, current)
            record.emit(now)
        self._records.clear()

    # -- the observer's actions ------------------------------------------------------------

    def _apply(self, actions: list[Action]) -> None:
        link = self._link
        # The device's bytes of this batch go in one write: a response's head
        # and the body that came with it become one TLS record, not two.
        toDevice: list[bytes] = []
        for action in actions:
            if isinstance(action, ToOrigin):
                link.toOrigin(action.data)
                continue
            if isinstance(action, ToDevice):
                toDevice.append(action.data)
                continue
            if toDevice and not isinstance(action, (Began, Responded, Finished)):
                link.toDevice(_joined(toDevice))
                toDevice = []
            if isinstance(action, Began):
                self._began(action.exchange)
            elif isinstance(action, Responded):
                record = self._records.get(action.exchange.number)
                if record is not None and record.headers_after is None:
                    record.headers_after = max(0.0, self._clock.seconds() - record.started)
            elif isinstance(action, Finished):
                self._finished(action.exchange)
            elif isinstance(action, Upgraded):
                link.note(f"upgraded to {action.exchange.upgrade} (relayed opaque from then on)")
            elif isinstance(action, EndOrigin):
                link.endToOrigin(self._deviceClean if self._deviceEnded else True)
            elif isinstance(action, EndDevice):
                link.endToDevice(self._originClean)
            elif isinstance(action, Close):
                if action.error:
                    link.fail(action.reason)
                link.close(action.reason)
        if toDevice:
            link.toDevice(_joined(toDevice))
        self._flowControl()

    def _began(self, exchange: Exchange) -> None:
        self._records[exchange.number] = RequestRecord(
            connection=self._connection.id,
            stream=exchange.number,
            protocol="http/1.1",
            head=exchange.head,
            started=self._clock.seconds(),
            log_query=self._keepQuery(),
        )

    def _finished(self, exchange: Exchange) -> None:
        record = self._records.pop(exchange.number, None)
        if record is not None:
            self._fill(record, exchange)
            record.emit(self._clock.seconds())

    @staticmethod
    def _fill(record: RequestRecord, exchange: Exchange) -> None:
        record.action, record.reason, record.rule = exchange.action, exchange.reason, exchange.rule
        record.category = exchange.category
        record.status, record.response_content_type = exchange.status, exchange.content_type
        record.bytes_up, record.bytes_down = exchange.bytes_up, exchange.bytes_down
        record.upgrade = exchange.upgrade

    def _flowControl(self) -> None:
        """Stop reading the device while its next request waits for the response before it."""
        holding = self._observer.holding
        if holding and not self._paused:
            self._paused = True
            self._link.pauseReading("device")
        elif self._paused and not holding:
            self._paused = False
            self._link.resumeReading("device")


def _joined(pieces: list[bytes]) -> bytes:
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)
