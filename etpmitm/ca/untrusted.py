"""The untrusted CA: it signs leaves for origins that failed verification, so that browsers warn.

Beside the real CA, a CA directory holds a second, self-signed CA that no
device trusts (like Squid's signUntrusted or Palo Alto's forward-untrust)::

    untrusted/          0700
    untrusted/ca.key    its private key (0600)
    untrusted/ca.pem    its self-signed certificate

It is made on first use and never exported: it must never enter a trust store.
"""

from __future__ import annotations

import datetime
import errno
import os
import shutil
import tempfile
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from etpmitm.ca import build, checks
from etpmitm.ca.certfiles import read_certificates
from etpmitm.ca.directory import CAPaths, CertificateAuthority
from etpmitm.ca.errors import CAError
from etpmitm.ca.subject import first_text_attribute
from etpmitm.keyfiles import KeyFileError, load_private_key, write_private_key, write_public_file

UNTRUSTED_CN = "etpmitm UNTRUSTED origin - do not trust"
DEFAULT_ORGANIZATION = "etpmitm"


@attrs.frozen
class UntrustedPaths:
    """Where the untrusted CA of the CA directory ``ca_directory`` lives."""

    ca_directory: Path

    @property
    def directory(self) -> Path:
        return self.ca_directory / "untrusted"

    @property
    def key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def cert(self) -> Path:
        return self.directory / "ca.pem"


def untrusted_subject(ca_directory: Path) -> x509.Name:
    """O = the real CA's organization (else "etpmitm"), CN = :data:`UNTRUSTED_CN`."""
    organization = None
    ca_cert = CAPaths(ca_directory).ca_cert
    if ca_cert.exists():
        try:
            organization = first_text_attribute(read_certificates(ca_cert)[0].subject, NameOID.ORGANIZATION_NAME)
        except CAError:
            pass  # a broken ca.pem is reported by load_ca, not here
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization or DEFAULT_ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, UNTRUSTED_CN),
        ]
    )


def untrusted_certificate(ca_directory: Path) -> x509.Certificate | None:
    """The untrusted CA's certificate if ``ca_directory`` holds a readable one (not checked)."""
    path = UntrustedPaths(ca_directory).cert
    try:
        return read_certificates(path)[0] if path.exists() else None
    except CAError:
        return None


def load_or_create_untrusted_ca(
    directory: Path,
    passphrase: bytes | None = None,
    *,
    now: datetime.datetime | None = None,
) -> CertificateAuthority:
    """Load the untrusted CA of the CA directory ``directory``, creating it on first use.

    Creation is atomic and race-safe: both files are written into a private
    temporary directory that is then renamed to ``untrusted/``; a process that
    loses the race discards its CA and loads the winner's. The CA is checked
    (self-signed CA, key matches, valid now, not the real CA); problems raise
    :class:`CAError` (one line). ``chain_for_tls`` is the untrusted certificate.
    """
    if not directory.is_dir():
        raise CAError(f"{directory}: no such directory")
    paths = UntrustedPaths(directory)
    if not paths.directory.exists():
        _create(paths, passphrase, now)
    return _load(paths, passphrase, now or build.utc_now())


def _create(paths: UntrustedPaths, passphrase: bytes | None, now: datetime.datetime | None) -> None:
    key = build.generate_key("ecdsa-p256")
    certificate = build.build_root(key, untrusted_subject(paths.ca_directory), now=now, path_length=0)
    try:
        staging = Path(tempfile.mkdtemp(prefix=".untrusted.", suffix=".tmp", dir=paths.ca_directory))
    except OSError as e:
        raise CAError(f"{paths.directory}: cannot create: {e.strerror or e}") from None
    try:
        os.chmod(staging, 0o700)
        write_private_key(staging / paths.key.name, key, passphrase)
        write_public_file(staging / paths.cert.name, certificate.public_bytes(serialization.Encoding.PEM))
        try:
            os.rename(staging, paths.directory)  # fails if another process's directory is there
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    except OSError as e:
        raise CAError(f"{paths.directory}: cannot create: {e.strerror or e}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _load(paths: UntrustedPaths, passphrase: bytes | None, now: datetime.datetime) -> CertificateAuthority:
    certificates = read_certificates(paths.cert)
    if len(certificates) != 1:
        raise CAError(f"{paths.cert}: must hold exactly one certificate, not {len(certificates)}")
    certificate = certificates[0]
    try:
        key = load_private_key(paths.key, passphrase)
    except KeyFileError as e:
        raise CAError(str(e)) from None
    role = "untrusted/ca.pem"
    checks.require_ca(certificate, role)
    checks.require_key_match(certificate, key, role, "untrusted/ca.key")
    checks.require_current(certificate, role, now)
    try:
        certificate.verify_directly_issued_by(certificate)
    except (ValueError, TypeError, InvalidSignature):
        raise CAError(f"{role} {checks.describe(certificate)} is not self-signed") from None
    _require_not_trusted(paths.ca_directory, certificate)
    return CertificateAuthority(certificate=certificate, key=key, chain=(), root=None)


def _require_not_trusted(ca_directory: Path, certificate: x509.Certificate) -> None:
    """Refuse an untrusted CA whose key is that of a certificate in ca.pem or root.pem."""
    key = checks.public_key_der(certificate)
    ca_paths = CAPaths(ca_directory)
    for path in (ca_paths.ca_cert, ca_paths.root_cert):
        try:
            trusted = read_certificates(path) if path.exists() else []
        except CAError:
            continue
        if any(checks.public_key_der(c) == key for c in trusted):
            raise CAError(f"untrusted/ca.pem has the key of {path.name}: it would be trusted; refusing it")
