"""Enterprise-root mode, step two: check the signed intermediate and install it.

Nothing in the directory changes unless every check passes.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from etpmitm.ca import checks
from etpmitm.ca.certfiles import certificates_pem, parse_certificates, read_certificates
from etpmitm.ca.directory import CAPaths, CertificateAuthority
from etpmitm.ca.errors import CAError
from etpmitm.keyfiles import KeyFileError, load_private_key, write_public_file


def check_signed(
    directory: Path,
    signed: bytes,
    root: bytes | None = None,
    *,
    passphrase: bytes | None = None,
    now: datetime.datetime | None = None,
    signed_name: str = "signed certificate",
    root_name: str = "root certificate",
) -> CertificateAuthority:
    """Check, without writing anything, that ``signed`` can become this directory's CA.

    ``signed`` holds the intermediate first, then (in any order) the chain above
    it. The intermediate must be a CA, hold ca.key's public key and be valid at
    ``now``; the chain must lead to ``root`` (or to root.pem already in the
    directory) when there is one. Raises :class:`CAError` with the reason.
    """
    paths = CAPaths(directory)
    if not directory.is_dir():
        raise CAError(f"{directory}: no such directory")
    certificate, *others = parse_certificates(signed, signed_name)
    anchor, anchor_hint = _trust_anchor(paths, root, root_name)
    try:
        key = load_private_key(paths.ca_key, passphrase)
    except KeyFileError as e:
        raise CAError(f"{e} (run 'etpmitm ca csr' first)" if not paths.ca_key.exists() else str(e)) from None
    when = now or datetime.datetime.now(datetime.timezone.utc)
    checks.require_ca(certificate, signed_name)
    checks.require_key_match(certificate, key, signed_name, "ca.key")
    checks.require_current(certificate, signed_name, when)
    path = checks.order_path(certificate, others)
    try:
        checks.verify_path(path, anchor, when)
    except CAError as e:
        raise CAError(f"{e}{anchor_hint}") from None
    chain = tuple(c for c in path[1:] if c != anchor)
    return CertificateAuthority(certificate=certificate, key=key, chain=chain, root=anchor)


def _trust_anchor(paths: CAPaths, root: bytes | None, root_name: str) -> tuple[x509.Certificate | None, str]:
    if root is not None:
        certificates = parse_certificates(root, root_name)
        if len(certificates) != 1:
            raise CAError(f"{root_name}: holds {len(certificates)} certificates; give just the root")
        return certificates[0], ""
    if paths.root_cert.exists():
        hint = f" (checked against the existing {paths.root_cert}; give --root to replace it)"
        return read_certificates(paths.root_cert)[0], hint
    return None, ""


def install_signed(
    directory: Path,
    signed: bytes,
    root: bytes | None = None,
    *,
    passphrase: bytes | None = None,
    now: datetime.datetime | None = None,
    signed_name: str = "signed certificate",
    root_name: str = "root certificate",
) -> CertificateAuthority:
    """:func:`check_signed`, then write ca.pem (intermediate + chain) and, if given, root.pem."""
    ca = check_signed(
        directory, signed, root, passphrase=passphrase, now=now, signed_name=signed_name, root_name=root_name
    )
    paths = CAPaths(directory)
    try:
        if root is not None and ca.root is not None:
            write_public_file(paths.root_cert, ca.root.public_bytes(serialization.Encoding.PEM))
        write_public_file(paths.ca_cert, certificates_pem((ca.certificate, *ca.chain)))
    except OSError as e:
        raise CAError(f"{directory}: cannot write: {e.strerror or e}") from None
    return ca
