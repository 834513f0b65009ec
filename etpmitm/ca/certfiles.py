"""Reading and writing certificate bundles (PEM, or a single DER certificate)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from etpmitm.ca.errors import CAError


def parse_certificates(data: bytes, source: str) -> list[x509.Certificate]:
    """All certificates in ``data``: PEM blocks in order, or one DER certificate."""
    if b"-----BEGIN" in data:
        try:
            return x509.load_pem_x509_certificates(data)
        except ValueError:
            raise CAError(f"{source}: no readable PEM certificate in it") from None
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise CAError(f"{source}: not a certificate (neither PEM nor DER)") from None


def read_certificates(path: Path, source: str | None = None) -> list[x509.Certificate]:
    """Read and parse a certificate file; a missing or unreadable file is a :class:`CAError`."""
    name = source or str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CAError(f"{name}: no such file") from None
    except OSError as e:
        raise CAError(f"{name}: cannot read: {e.strerror or e}") from None
    return parse_certificates(data, name)


def certificates_pem(certificates: Iterable[x509.Certificate]) -> bytes:
    """The PEM concatenation of ``certificates``."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)
