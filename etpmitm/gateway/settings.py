"""Everything a gateway connection needs, built once by the service."""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import attrs
from cryptography import x509
from OpenSSL import SSL
from twisted.internet.interfaces import IReactorTCP, IReactorTime

from etpmitm.admission import Admission
from etpmitm.audit import ConnectionRecord
from etpmitm.gateway.layers import OpaqueRelay
from etpmitm.addresses import IPAddress
from etpmitm.gateway.origdst import Destination, LocalAddresses, transportDestination
from etpmitm.gateway.origin import RELAY_BUFFER, OriginCertificates, OriginSessions
from etpmitm.gateway.policyholder import PolicyHolder
from etpmitm.gateway.scanners import ScannerHolder
from etpmitm.h2abuse import H2Limits
from etpmitm.http import Judge
from etpmitm.interfaces import ILayer
from etpmitm.lru import LRUCache
from etpmitm.learning import Learned
from etpmitm.mint import LeafName
from etpmitm.scanning import IContentScanner


class LeafContexts(Protocol):
    """Hands out ready device-side contexts for a set of names."""

    def contextFor(self, names: Sequence[LeafName], mimic: x509.Certificate | None) -> SSL.Context:
        ...


def opaqueLayer(record: ConnectionRecord, judge: Judge) -> ILayer:
    """The default layer: relay the decrypted bytes unchanged."""
    return OpaqueRelay()


@attrs.frozen
class GatewaySettings:
    reactor: IReactorTCP
    clock: IReactorTime
    upstream: SSL.Context
    leaves: LeafContexts
    untrustedLeaves: LeafContexts | None = None
    """Signs leaves for untrusted origins under ``untrusted = "untrusted"``."""
    policy: PolicyHolder = attrs.Factory(PolicyHolder)
    originCertificates: OriginCertificates = attrs.Factory(lambda: LRUCache(4096))
    """What each origin certificate says, per name asked (see ``examine_origin``)."""
    originSessions: OriginSessions = attrs.Factory(OriginSessions)
    handshakeTimeout: float = 10.0
    connectTimeout: float = 10.0
    idleTimeout: float = 300.0
    relayBuffer: int = RELAY_BUFFER
    """Bytes buffered towards a side before its peer stops being read (``--relay-buffer``)."""
    layerFor: Callable[[ConnectionRecord, Judge], ILayer] = opaqueLayer
    """The layer for an intercepted connection, once both handshakes are done
    (the record says what was negotiated: ``alpn``, ``sni``), with the
    connection's judge of each request."""
    originalDestination: Callable[[object], Destination] = transportDestination
    isLocal: Callable[[IPAddress], bool] = attrs.Factory(LocalAddresses)
    """Whether an address is the gateway's own (connections to it are refused)."""
    shareLearned: Callable[[Learned], None] = lambda learned: None
    """Tell the other workers of a bypass this one learned (see ``etpmitm.workers``)."""
    admission: Admission | None = None
    """Connection limits (``--max-connections`` and friends); None: no limits."""
    scanner: IContentScanner | None = None
    """A fixed content scanner the HTTP layers hold messages for (tests); None: see ``scanners``."""
    scanners: ScannerHolder | None = None
    """The scanner of the policy's ``[icap]``, swapped on reload (the service sets it; it wins over ``scanner``)."""

    h2Limits: H2Limits = attrs.Factory(H2Limits)
    """What a device may do on an HTTP/2 connection before it is cut as a flood (:mod:`etpmitm.h2abuse`)."""

    def currentScanner(self) -> IContentScanner | None:
        """The scanner for a connection starting now (it keeps it); None: no scanning."""
        if self.scanners is not None:
            return self.scanners.current
        return self.scanner
