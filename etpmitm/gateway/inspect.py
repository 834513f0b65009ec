"""Which layer inspects an intercepted connection.

:func:`inspectingLayer` is the gateway's ``layerFor``: the HTTP/1.1 layer
when the device and the origin agreed on ``http/1.1``, or agreed on nothing
and the device's first bytes are an HTTP/1.x request line
(:class:`FirstBytes` waits for them); the HTTP/2 layer for ``h2``; the opaque
relay otherwise, and whenever the policy says ``[inspect] http = false``.
"""

from __future__ import annotations

import re
from typing import Callable

from zope.interface import implementer

from etpmitm.audit import ConnectionRecord
from etpmitm.gateway.http1 import HTTP1Layer
from etpmitm.gateway.http2 import http2Layer
from etpmitm.gateway.layers import OpaqueRelay
from etpmitm.gateway.scanhttp1 import ScanningHTTP1Layer
from etpmitm.gateway.scanhttp2 import scanningHTTP2Layer
from etpmitm.gateway.settings import GatewaySettings
from etpmitm.http import Judge
from etpmitm.interfaces import ILayer, ILayerLink

_REQUEST_LINE = re.compile(rb"[A-Z]{1,20} [\x21-\x7e]+ HTTP/1\.[01]\r?")
_REQUEST_LINE_START = re.compile(rb"[A-Z]{0,20}(?: [\x21-\x7e]*(?: [HTP/1.01]{0,8})?)?")
SNIFF_LIMIT = 8192
"""Bytes of a request line read at most before deciding it is not HTTP."""


def inspectingLayer(
    settings: GatewaySettings, judge: Judge | None = None
) -> Callable[[ConnectionRecord, Judge], ILayer]:
    """The ``layerFor`` that inspects HTTP/1.1 and HTTP/2.

    Each request is ruled on by the connection's judge (the policy in force,
    with the connection's SNI, destination and client), or by ``judge`` when
    one is given (tests).
    """

    def layerFor(record: ConnectionRecord, connectionJudge: Judge) -> ILayer:
        policy = settings.policy.current
        if not policy.inspect_http:
            return OpaqueRelay()
        rule = judge or connectionJudge

        scanner = settings.currentScanner()

        def http1() -> ILayer:
            if scanner is not None:
                return ScanningHTTP1Layer(
                    record, settings.clock, rule, scanner=scanner, maxHeaders=policy.max_headers,
                    stripAltSvc=policy.strip_quic, keepQuery=lambda: settings.policy.current.audit_query,
                )
            return HTTP1Layer(
                record, settings.clock, rule, maxHeaders=policy.max_headers, stripAltSvc=policy.strip_quic,
                keepQuery=lambda: settings.policy.current.audit_query,
            )

        if record.alpn == "h2":
            if scanner is not None:
                return scanningHTTP2Layer(settings, record, rule, scanner)
            return http2Layer(settings, record, rule)
        if record.alpn == "http/1.1":
            return http1()
        if record.alpn is None:
            return FirstBytes(http1, paced=scanner is not None)
        return OpaqueRelay()  # a protocol the gateway does not inspect

    return layerFor


def looks_like_http1(prefix: bytes) -> bool | None:
    """Whether ``prefix`` starts an HTTP/1.x request; None while it cannot tell yet."""
    end = prefix.find(b"\n")
    if end >= 0:
        return _REQUEST_LINE.fullmatch(prefix[:end]) is not None
    if len(prefix) > SNIFF_LIMIT or not _REQUEST_LINE_START.fullmatch(prefix.removesuffix(b"\r")):
        return False
    return None


@implementer(ILayer)
class FirstBytes:
    """Holds the device's first bytes until they show HTTP/1.x or not, then hands over.

    Anything else first (the origin speaking, an end) means opaque.
    """

    name = "sniffing"

    def __init__(self, http1: Callable[[], ILayer], paced: bool = False) -> None:
        self._http1 = http1
        self.paced = paced
        """Whether the layer it hands over to asks ``whenDrained``."""
        self._held = b""
        self._inner: ILayer | None = None

    def start(self, link: ILayerLink) -> None:
        self._link = link

    def deviceData(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.deviceData(data)
            return
        self._held += data
        verdict = looks_like_http1(self._held)
        if verdict is not None:
            self._choose(self._http1() if verdict else OpaqueRelay())

    def originData(self, data: bytes) -> None:
        self._choose(OpaqueRelay()).originData(data)

    def deviceEnded(self, clean: bool) -> None:
        self._choose(OpaqueRelay()).deviceEnded(clean)

    def originEnded(self, clean: bool) -> None:
        self._choose(OpaqueRelay()).originEnded(clean)

    def closed(self) -> None:
        if self._inner is not None:
            self._inner.closed()

    def _choose(self, layer: ILayer) -> ILayer:
        if self._inner is not None:
            return self._inner
        self._inner = layer
        self.name = layer.name
        layer.start(self._link)
        held, self._held = self._held, b""
        if held:
            layer.deviceData(held)
        return layer
