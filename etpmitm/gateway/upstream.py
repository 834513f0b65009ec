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
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from service_identity.pyopenssl import verify_hostname, verify_ip_address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from etpmitm.origintrust import ChainError, OriginVerdict, judge
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
    context.set_session_cache_mode(SSL.SESS_CACHE_CLIENT)
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
    record: VerificationRecord = attrs.Factory(VerificationRecord)

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_verify(SSL.VERIFY_PEER, self.record.callback)
        connection.set_info_callback(self.record.infoCallback)
        if self.sni is not None:
            connection.set_tlsext_host_name(self.sni.encode("ascii"))
        if self.alpn:
            connection.set_alpn_protos(list(self.alpn))
        return connection


def verify_origin(
    connection: SSL.Connection,
    record: VerificationRecord,
    sni: str | None,
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> OriginVerdict:
    """The verdict for a finished handshake: chain first, then the name.

    The name is the client's SNI, or the destination IP when it sent none.
    """
    name_error: str | None = None
    try:
        if sni is not None:
            verify_hostname(connection, sni)
        else:
            verify_ip_address(connection, str(address))
    except VerificationError as e:
        wanted = sni if sni is not None else str(address)
        name_error = f"certificate does not match {wanted}: {e.errors[0]}" if e.errors else str(e)
    except Exception as e:  # service_identity rejects certificates it cannot read
        name_error = f"cannot check the certificate's names: {e}"
    chain = connection.get_peer_cert_chain(as_cryptography=True) or []
    return judge(record.errors, name_error, chain)
