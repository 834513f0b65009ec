"""A human-readable report on a CA directory (certificates and key types; never key material)."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from etpmitm.ca.certfiles import read_certificates
from etpmitm.ca.directory import CAPaths, load_ca
from etpmitm.ca.errors import CAError
from etpmitm.ca.leafkeys import LEAF_KEY_KINDS
from etpmitm.ca.subject import format_subject
from etpmitm.ca.untrusted import untrusted_certificate
from etpmitm.keyfiles import KeyFileError, load_private_key

_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


def describe_key(key: object) -> str:
    """E.g. "ECDSA P-256" or "RSA 2048" for a public or private key."""
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        return f"ECDSA {_CURVE_NAMES.get(key.curve.name, key.curve.name)}"
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        return f"RSA {key.key_size}"
    return type(key).__name__


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 fingerprint as colon-separated upper-case hex (as ``openssl x509 -fingerprint``)."""
    return certificate.fingerprint(hashes.SHA256()).hex(":").upper()


def describe_certificate(certificate: x509.Certificate, title: str) -> list[str]:
    return [
        f"{title}:",
        f"  subject:    {format_subject(certificate.subject)}",
        f"  issuer:     {format_subject(certificate.issuer)}",
        f"  not before: {certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%S}Z",
        f"  not after:  {certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z",
        f"  key:        {describe_key(certificate.public_key())}",
        f"  SHA-256:    {fingerprint(certificate)}",
    ]


def describe_directory(
    directory: Path,
    passphrase: bytes | None = None,
    *,
    now: datetime.datetime | None = None,
) -> list[str]:
    """Report lines for ``directory``; :class:`CAError` if it holds neither a CA nor a CSR."""
    paths = CAPaths(directory)
    if not directory.is_dir():
        raise CAError(f"{directory}: no such directory")
    lines = [f"CA directory: {directory}"]
    if paths.ca_cert.exists():
        intermediate, *chain = read_certificates(paths.ca_cert)
        lines += describe_certificate(intermediate, "intermediate (ca.pem)")
        for certificate in chain:
            lines += describe_certificate(certificate, "chain certificate (ca.pem)")
    elif paths.csr.exists():
        lines.append(f"pending: {paths.csr.name} ({_csr_subject(paths.csr)}) awaits the enterprise's signature;")
        lines.append("         then 'etpmitm ca install'")
    else:
        raise CAError(f"{directory} holds no CA (no ca.pem, no ca.csr)")
    if paths.root_cert.exists():
        lines += describe_certificate(read_certificates(paths.root_cert)[0], "root (root.pem)")
    else:
        lines.append("root: not known here (no root.pem)")
    untrusted = untrusted_certificate(directory)
    if untrusted is not None:
        lines += describe_certificate(untrusted, "untrusted CA (untrusted/ca.pem; never exported, trusted by no device)")
    lines.append(f"leaf keys:  {_describe_leaf_keys(paths, passphrase)}")
    if paths.ca_cert.exists():
        lines.append(f"status:     {_status(directory, passphrase, now)}")
    return lines


def _csr_subject(path: Path) -> str:
    try:
        return format_subject(x509.load_pem_x509_csr(path.read_bytes()).subject)
    except (OSError, ValueError):
        return "unreadable"


def _describe_leaf_keys(paths: CAPaths, passphrase: bytes | None) -> str:
    found: list[str] = []
    for kind in LEAF_KEY_KINDS:
        path = paths.leaf_key(kind)
        if not path.exists():
            continue
        try:
            found.append(f"{path.name} ({describe_key(load_private_key(path, passphrase))})")
        except KeyFileError:
            found.append(f"{path.name} (unreadable without the right passphrase)")
    return ", ".join(found) if found else "none yet (made on first use)"


def _status(directory: Path, passphrase: bytes | None, now: datetime.datetime | None) -> str:
    try:
        ca = load_ca(directory, passphrase, now=now)
    except CAError as e:
        return f"NOT USABLE: {e}"
    if ca.root is None:
        return "ok (ca.key matches ca.pem; a CA, valid now; no root.pem, so its chain to a root is not checked)"
    return "ok (ca.key matches ca.pem; a CA, valid now; chains to root.pem)"
