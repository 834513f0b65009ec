"""The gateway as a TLS client of origins: one shared context, per-connection SNI/ALPN.

Chain verification runs inside the handshake but never aborts it: each error
is recorded so that, once the handshake is done, the gateway can decide what
the device may see (see :mod:`etpmitm.origintrust`).  Nothing is relayed
before that decision.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from pathlib import Path

import attrs
from cryptography import x509
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from etpmitm.leafcache import LRUCache
from etpmitm.mint import LeafName, leaf_names
from etpmitm.origintrust import ChainError, OriginVerdict, judge, weak_crypto
from etpmitm.tlsconfig import hardened_context

# Where Linux distributions keep the system bundle, in the order tried after
# SSL_CERT_FILE and Python's compiled-in default.
_SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/ca-bundle.pem",  # SUSE
    "/etc/ssl/cert.pem",
)


class TrustStoreError(Exception):
    """The upstream trust store could not be loaded."""


def system_bundle() -> Path:
    """The platform's CA bundle file."""
    candidates = [os.environ.get("SSL_CERT_FILE"), ssl.get_default_verify_paths().cafile]
    for candidate in [*candidates, *_SYSTEM_BUNDLES]:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise TrustStoreError("no system CA bundle found; pass --upstream-trust FILE")


def upstream_context(bundle: Path) -> SSL.Context:
    """The shared client context, trusting the CAs in ``bundle`` (read once)."""
    context = hardened_context()
    try:
        context.load_verify_locations(str(bundle))
    except SSL.Error as e:
        raise TrustStoreError(f"cannot load trust bundle {bundle}: {e}") from e
    context.set_verify(SSL.VERIFY_PEER)
    # Sessions are kept by etpmitm.gateway.sessions, only for verified origins.
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    return context


@attrs.define
class VerificationRecord:
    """Chain errors seen during one origin handshake, and whether it asked for a client certificate."""

    errors: list[ChainError] = attrs.Factory(list)
    certificateRequested: bool = False

    def infoCallback(self, conn: SSL.Connection, where: int, ret: int) -> None:
        if where & SSL.SSL_CB_LOOP and b"certificate request" in (conn.get_state_string() or b""):
            self.certificateRequested = True

    def callback(
        self, conn: SSL.Connection, cert: crypto.X509, code: int, depth: int, ok: int
    ) -> bool:
        if not ok:
            self.errors.append(ChainError(depth=depth, code=code))
        return True  # decide after the handshake, with the whole picture


@implementer(IOpenSSLClientConnectionCreator)
@attrs.frozen
class OriginTLSCreator:
    """Makes the client ``Connection`` for one origin handshake."""

    context: SSL.Context
    sni: str | None
    alpn: tuple[bytes, ...]
    session: SSL.Session | None = None
    record: VerificationRecord = attrs.Factory(VerificationRecord)

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_verify(SSL.VERIFY_PEER, self.record.callback)
        connection.set_info_callback(self.record.infoCallback)
        if self.sni is not None:
            connection.set_tlsext_host_name(self.sni.encode("ascii"))
        if self.alpn:
            connection.set_alpn_protos(list(self.alpn))
        if self.session is not None:
            connection.set_session(self.session)
        return connection


@attrs.frozen
class OriginCertificate:
    """What an origin's certificate says, worked out once per certificate and name."""

    certificate: x509.Certificate
    name_error: str | None
    """Why the certificate does not cover the name asked for, if it does not."""
    weak: OriginVerdict | None
    """A verdict against weak signatures or keys in the presented chain."""
    names: tuple[LeafName, ...]
    """The names for the device's leaf (see :func:`etpmitm.mint.leaf_names`)."""


OriginCertificates = LRUCache[tuple[bytes, str | None, str], OriginCertificate]


def examine_origin(
    connection: SSL.Connection,
    record: VerificationRecord,
    sni: str | None,
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
    cache: OriginCertificates,
) -> tuple[OriginVerdict, OriginCertificate | None]:
    """The verdict for a finished handshake, and the certificate's facts.

    The name checked is the client's SNI, or the destination IP when it
    sent none.  Chain errors come from this handshake; the rest is cached
    per (certificate, name), so a returning origin costs a digest and a
    dictionary lookup.
    """
    leaf = connection.get_peer_certificate()
    if leaf is None:
        return OriginVerdict(False, "no-certificate", "origin presented no certificate"), None
    key = (leaf.digest("sha256"), sni, str(address))
    facts = cache.get(key)
    if facts is None:
        facts = _facts(connection, leaf.to_cryptography(), sni, address)
        cache.put(key, facts)
    return judge(record.errors, facts.name_error, facts.weak), facts


def _facts(
    connection: SSL.Connection,
    certificate: x509.Certificate,
    sni: str | None,
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> OriginCertificate:
    name_error: str | None = None
    try:
        if sni is not None:
            verify_certificate_hostname(certificate, sni)
        else:
            verify_certificate_ip_address(certificate, str(address))
    except VerificationError as e:
        wanted = sni if sni is not None else str(address)
        name_error = f"certificate does not match {wanted}: {e.errors[0]}" if e.errors else str(e)
    except Exception as e:  # service_identity rejects certificates it cannot read
        name_error = f"cannot check the certificate's names: {e}"
    chain = connection.get_peer_cert_chain(as_cryptography=True) or [certificate]
    try:
        names = leaf_names(certificate, sni, address)
    except Exception:  # nothing to mimic; the caller refuses if it needs names
        names = ()
    return OriginCertificate(certificate, name_error, weak_crypto(chain), names)
