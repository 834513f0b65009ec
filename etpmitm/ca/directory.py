"""A CA directory: its file names, and loading it into a checked :class:`CertificateAuthority`.

Layout (names are fixed; operators' scripts rely on them)::

    ca.key          the intermediate's private key (0600)
    ca.pem          the intermediate's certificate, then any chain above it
    root.pem        the certificate devices must trust, when etpmitm knows it
    root.key        the own root's private key (own-root mode only, 0600)
    ca.csr          the intermediate's CSR (enterprise mode, until installed)
    leaf-ecdsa.key  the gateway's leaf keys (0600), made on first use
    leaf-rsa.key
    untrusted/      the untrusted CA (see etpmitm.ca.untrusted; never exported)
"""

from __future__ import annotations

import datetime
import functools
from pathlib import Path
from typing import Literal, TypeAlias

import attrs
from cryptography import x509

from etpmitm.ca import checks
from etpmitm.ca.certfiles import read_certificates
from etpmitm.ca.errors import CAError
from etpmitm.keyfiles import KeyFileError, PrivateKey, load_private_key

LeafKeyKind: TypeAlias = Literal["ecdsa", "rsa"]


@attrs.frozen
class CAPaths:
    """Where each file of a CA directory lives."""

    directory: Path

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def root_cert(self) -> Path:
        return self.directory / "root.pem"

    @property
    def root_key(self) -> Path:
        return self.directory / "root.key"

    @property
    def csr(self) -> Path:
        return self.directory / "ca.csr"

    def leaf_key(self, kind: LeafKeyKind) -> Path:
        return self.directory / f"leaf-{kind}.key"

    def ca_files(self) -> tuple[Path, ...]:
        """The files whose presence means "this directory already holds a CA"."""
        return (self.ca_key, self.ca_cert, self.root_cert, self.root_key)


@attrs.frozen
class CertificateAuthority:
    """The intermediate that signs leaves, with its key and what sits above it."""

    certificate: x509.Certificate
    key: PrivateKey = attrs.field(repr=False)
    chain: tuple[x509.Certificate, ...] = ()
    """Certificates above the intermediate, from ca.pem (never the root)."""
    root: x509.Certificate | None = None
    """The certificate devices trust, if known (root.pem)."""

    @functools.cached_property
    def chain_for_tls(self) -> tuple[x509.Certificate, ...]:
        """What a server sends after its leaf: the intermediate, then the chain; no root."""
        return (self.certificate, *self.chain)


def load_ca(
    directory: Path,
    passphrase: bytes | None = None,
    *,
    now: datetime.datetime | None = None,
) -> CertificateAuthority:
    """Load and check the CA in ``directory``.

    Raises :class:`CAError` (one line) if a file is missing or unreadable, ca.key
    does not match ca.pem, ca.pem is not a CA, anything is expired or not yet
    valid, or the chain does not lead to root.pem.
    """
    paths = CAPaths(directory)
    if not directory.is_dir():
        raise CAError(f"{directory}: no such directory")
    if not paths.ca_cert.exists():
        raise CAError(f"{directory} holds no installed CA (no ca.pem); run 'etpmitm ca init' or 'ca install'")
    certificate, *others = read_certificates(paths.ca_cert)
    try:
        key = load_private_key(paths.ca_key, passphrase)
    except KeyFileError as e:
        raise CAError(str(e)) from None
    root = read_certificates(paths.root_cert)[0] if paths.root_cert.exists() else None
    when = now or datetime.datetime.now(datetime.timezone.utc)
    checks.require_ca(certificate, "ca.pem")
    checks.require_key_match(certificate, key, "ca.pem", "ca.key")
    checks.require_current(certificate, "ca.pem", when)
    path = checks.order_path(certificate, others)
    checks.verify_path(path, root, when)
    chain = tuple(c for c in path[1:] if c != root)
    return CertificateAuthority(certificate=certificate, key=key, chain=chain, root=root)


def prepare_directory(directory: Path) -> None:
    """Make sure ``directory`` exists (creating it 0700, not its parents)."""
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
    except FileNotFoundError:
        raise CAError(f"{directory}: parent directory does not exist") from None
    except OSError as e:
        raise CAError(f"{directory}: cannot create: {e.strerror or e}") from None
    if not directory.is_dir():
        raise CAError(f"{directory}: not a directory")
