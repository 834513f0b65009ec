"""Exporting the certificate devices must trust (root.pem) as PEM or DER."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization

from etpmitm.ca import checks
from etpmitm.ca.certfiles import read_certificates
from etpmitm.ca.directory import CAPaths
from etpmitm.ca.errors import CAError
from etpmitm.ca.untrusted import untrusted_certificate


def export_root(directory: Path, *, der: bool = False) -> bytes:
    """root.pem's certificate, re-encoded as PEM or DER; :class:`CAError` if it is unknown.

    The untrusted CA (untrusted/) is never exported, even if copied over root.pem.
    """
    paths = CAPaths(directory)
    if not directory.is_dir():
        raise CAError(f"{directory}: no such directory")
    if not paths.root_cert.exists():
        raise CAError(
            f"{directory} has no root.pem: the root devices trust is not known here "
            "(enterprise mode: install with --root ROOT.pem to record it)"
        )
    root = read_certificates(paths.root_cert)[0]
    untrusted = untrusted_certificate(directory)
    if untrusted is not None and checks.public_key_der(untrusted) == checks.public_key_der(root):
        raise CAError(f"{paths.root_cert} holds the untrusted CA, which no device may trust; not exporting it")
    encoding = serialization.Encoding.DER if der else serialization.Encoding.PEM
    return root.public_bytes(encoding)
