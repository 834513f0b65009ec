"""Checks that a certificate can serve as etpmitm's CA: CA flags, key, validity, chain.

Each check raises :class:`CAError` with a one-line reason naming the certificate.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from etpmitm.ca.errors import CAError
from etpmitm.ca.subject import format_subject
from etpmitm.keyfiles import PrivateKey


def describe(certificate: x509.Certificate) -> str:
    return repr(format_subject(certificate.subject))


def require_ca(certificate: x509.Certificate, role: str) -> None:
    """``certificate`` has basicConstraints CA:TRUE and, if it has keyUsage, keyCertSign."""
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CAError(f"{role} {describe(certificate)} is not a CA (no basicConstraints CA:TRUE)")
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.key_cert_sign:
        raise CAError(f"{role} {describe(certificate)} is not a CA (keyUsage lacks keyCertSign)")


def require_current(certificate: x509.Certificate, role: str, now: datetime.datetime) -> None:
    """``now`` lies within the validity period of ``certificate``."""
    if now < certificate.not_valid_before_utc:
        raise CAError(
            f"{role} {describe(certificate)} is not yet valid "
            f"(notBefore {certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%S}Z)"
        )
    if now > certificate.not_valid_after_utc:
        raise CAError(
            f"{role} {describe(certificate)} has expired "
            f"(notAfter {certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z)"
        )


def public_key_der(key: x509.Certificate | x509.CertificateSigningRequest | PrivateKey) -> bytes:
    """The DER SubjectPublicKeyInfo of a certificate, CSR or private key."""
    public = key.public_key()
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def require_key_match(certificate: x509.Certificate, key: PrivateKey, role: str, key_name: str) -> None:
    """The public key in ``certificate`` is the public half of ``key``."""
    if public_key_der(certificate) != public_key_der(key):
        raise CAError(f"{role} {describe(certificate)} does not hold the public key of {key_name}")


def order_path(certificate: x509.Certificate, others: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """Order ``others`` as the issuer chain above ``certificate`` (whatever order they came in).

    Refuses certificates that are not on that chain.
    """
    path = [certificate]
    remaining = [other for other in others if other != certificate]
    while remaining:
        issuer = next((c for c in remaining if _issued_by(path[-1], c)), None)
        if issuer is None:
            stray = remaining[0]
            raise CAError(
                f"chain certificate {describe(stray)} is not an issuer of {describe(path[-1])}"
            )
        path.append(issuer)
        remaining.remove(issuer)
    return path


def verify_path(
    path: Sequence[x509.Certificate],
    root: x509.Certificate | None,
    now: datetime.datetime,
) -> None:
    """Check every link of ``path`` (intermediate first) and, if given, that it ends at ``root``.

    Each issuer must be a CA that is currently valid, whose signature verifies and
    whose path length constraint leaves room for the leaves the intermediate signs.
    """
    issuers: list[tuple[x509.Certificate, str]] = [(c, "chain certificate") for c in path[1:]]
    links = list(zip(path, issuers))
    if root is not None:
        require_ca(root, "root")
        require_current(root, "root", now)
        if path[-1] != root:
            if not _issued_by(path[-1], root):
                raise CAError(f"{describe(path[-1])} does not chain to the root {describe(root)}")
            issuers.append((root, "root"))
    for child, (issuer, role) in links:
        require_ca(issuer, role)
        require_current(issuer, role, now)
        if not _issued_by(child, issuer):  # order_path guarantees this, but path may be caller-made
            raise CAError(f"{describe(child)} is not signed by {describe(issuer)}")
    for depth, (issuer, role) in enumerate(issuers, start=1):
        limit = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
        if limit is not None and limit < depth:
            raise CAError(
                f"{role} {describe(issuer)} has pathlen:{limit} and cannot certify "
                f"{depth} CA certificate(s) below it"
            )


def _issued_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
