"""Enterprise-root mode, step one: make the intermediate's key and a CSR for the enterprise to sign."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from etpmitm.ca import build
from etpmitm.ca.directory import CAPaths, prepare_directory
from etpmitm.ca.errors import CAError
from etpmitm.keyfiles import write_private_key, write_public_file


def create_csr(
    directory: Path,
    subject: x509.Name,
    *,
    key_type: build.CAKeyType = build.DEFAULT_KEY_TYPE,
    passphrase: bytes | None = None,
    force: bool = False,
) -> x509.CertificateSigningRequest:
    """Write a new ca.key (0600) and ca.csr (PEM) in ``directory``; return the CSR.

    Refuses (:class:`CAError`) to replace an existing ca.key unless ``force``.
    """
    paths = CAPaths(directory)
    prepare_directory(directory)
    if paths.ca_key.exists() and not force:
        raise CAError(f"{paths.ca_key} already exists; use --force to replace it")
    key = build.generate_key(key_type)
    csr = build.build_ca_csr(key, subject)
    try:
        write_private_key(paths.ca_key, key, passphrase, replace=force)
        write_public_file(paths.csr, csr.public_bytes(serialization.Encoding.PEM))
    except FileExistsError:
        raise CAError(f"{paths.ca_key} appeared meanwhile (another process?); not replaced") from None
    except OSError as e:
        raise CAError(f"{directory}: cannot write: {e.strerror or e}") from None
    return csr
