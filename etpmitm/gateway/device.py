"""The gateway as a TLS server towards devices: one cached context per leaf.

A returning name costs a dictionary lookup: the minted leaf, its chain and
the shared key are loaded into an ``SSL.Context`` once, and ALPN selection
reads the origin's choice from the protocol being served (its ``alpn``).
"""

from __future__ import annotations

from typing import Any, Sequence

import attrs
from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IProtocol
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from etpmitm.ca.directory import CertificateAuthority
from etpmitm.gateway._twisted import HalfCloseableTLS, halfCloseableTLS
from etpmitm.keyfiles import PrivateKey
from etpmitm.leafcache import LeafMinter
from etpmitm.lru import LRUCache
from etpmitm.mint import LeafName, MintedLeaf
from etpmitm.tlsconfig import hardened_context

_SESSION_ID_CONTEXT = b"etpmitm"


def _selectALPN(connection: SSL.Connection, offered: list[bytes]) -> Any:
    """Select exactly what the origin chose, or nothing."""
    tlsProtocol = connection.get_app_data()
    wanted = getattr(tlsProtocol.wrappedProtocol, "alpn", None)
    if wanted is not None and wanted in offered:
        return wanted
    return SSL.NO_OVERLAPPING_PROTOCOLS


def deviceContext(leaf: MintedLeaf, key: crypto.PKey) -> SSL.Context:
    """A server context serving ``leaf`` + its chain with the shared leaf key."""
    context = hardened_context()
    context.use_certificate(crypto.X509.from_cryptography(leaf.certificate))
    for certificate in leaf.chain:
        context.add_extra_chain_cert(crypto.X509.from_cryptography(certificate))
    context.use_privatekey(key)
    context.check_privatekey()
    context.set_alpn_select_callback(_selectALPN)
    context.set_session_id(_SESSION_ID_CONTEXT)
    return context


@implementer(IOpenSSLServerConnectionCreator)
@attrs.frozen
class DeviceTLSCreator:
    """Makes the server ``Connection`` for one device."""

    context: SSL.Context

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        return SSL.Connection(self.context, None)


class CachedLeafContexts:
    """Device-side contexts per minted leaf, minted and built once per name set."""

    def __init__(self, ca: CertificateAuthority, leafKey: PrivateKey, maxsize: int) -> None:
        self.minter = LeafMinter.create(ca, leafKey, maxsize)
        self._key = crypto.PKey.from_cryptography_key(leafKey)
        self._contexts: LRUCache[int, tuple[MintedLeaf, SSL.Context]] = LRUCache(maxsize)

    def contextFor(self, names: Sequence[LeafName], mimic: x509.Certificate | None) -> SSL.Context:
        leaf = self.minter.leaf_for(names, mimic)
        entry = self._contexts.get(id(leaf))
        if entry is None or entry[0] is not leaf:
            entry = (leaf, deviceContext(leaf, self._key))
            self._contexts.put(id(leaf), entry)
        return entry[1]


def deviceTLS(context: SSL.Context, protocol: IProtocol) -> HalfCloseableTLS:
    """The TLS server for the device's connection, around ``protocol``.

    Not yet connected: the intake connects it and replays the buffered
    ClientHello into it.
    """
    return halfCloseableTLS(DeviceTLSCreator(context), False, protocol)
