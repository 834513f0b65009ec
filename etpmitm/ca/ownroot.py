"""Own-root mode: make a root and an intermediate under it, and write them to a CA directory."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from etpmitm.ca import build
from etpmitm.ca.directory import CAPaths, CertificateAuthority, prepare_directory
from etpmitm.ca.errors import CAError
from etpmitm.ca.subject import SubjectSyntaxError, common_name, parse_subject
from etpmitm.keyfiles import write_private_key, write_public_file

DEFAULT_ROOT_SUBJECT = "/O=etpmitm/CN=etpmitm Root CA"
DEFAULT_INTERMEDIATE_SUBJECT = "/O=etpmitm/CN=etpmitm Intermediate CA"


def derive_intermediate_subject(root_subject: x509.Name) -> x509.Name:
    """The root's subject with its CN turned into "... Intermediate CA"."""
    root_cn = common_name(root_subject)
    if root_cn is None:
        return x509.Name([*root_subject, x509.NameAttribute(NameOID.COMMON_NAME, "Intermediate CA")])
    stem = root_cn.removesuffix(" CA").removesuffix(" Root")
    cn = f"{stem} Intermediate CA"
    if len(cn) > 64:
        raise CAError("derived intermediate CN would exceed 64 characters; give --intermediate-subject")
    replaced = False
    attributes: list[x509.NameAttribute[str | bytes]] = []
    for attribute in root_subject:
        if attribute.oid == NameOID.COMMON_NAME and not replaced:
            attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
            replaced = True
        else:
            attributes.append(attribute)
    return x509.Name(attributes)


def _as_name(subject: x509.Name | str) -> x509.Name:
    if isinstance(subject, x509.Name):
        return subject
    try:
        return parse_subject(subject)
    except SubjectSyntaxError as e:
        raise CAError(str(e)) from None


def init_own_root(
    directory: Path,
    subject_root: x509.Name | str | None = None,
    subject_intermediate: x509.Name | str | None = None,
    *,
    key_type: build.CAKeyType = build.DEFAULT_KEY_TYPE,
    passphrase: bytes | None = None,
    force: bool = False,
    now: datetime.datetime | None = None,
) -> CertificateAuthority:
    """Create root.key/root.pem and ca.key/ca.pem in ``directory`` and return the CA.

    Subjects are names or ``/KEY=value`` strings; the intermediate's defaults to
    the root's with "Intermediate CA" as CN. ``directory`` is created (0700) if
    missing, but not its parents. An existing
    CA is refused (:class:`CAError`) unless ``force``. Without ``force`` files are
    created exclusively, so a concurrent creator makes this fail rather than mix
    two CAs; the caller may then :func:`load_ca`.
    """
    root_subject = _as_name(subject_root or DEFAULT_ROOT_SUBJECT)
    if subject_intermediate is not None:
        intermediate_subject = _as_name(subject_intermediate)
    elif subject_root is None:
        intermediate_subject = parse_subject(DEFAULT_INTERMEDIATE_SUBJECT)
    else:
        intermediate_subject = derive_intermediate_subject(root_subject)
    if intermediate_subject == root_subject:
        raise CAError("the root and the intermediate need different subjects")

    paths = CAPaths(directory)
    prepare_directory(directory)
    existing = [p.name for p in paths.ca_files() if p.exists()]
    if existing and not force:
        raise CAError(f"{directory} already holds a CA ({', '.join(existing)}); use --force to replace it")

    root_key = build.generate_key(key_type)
    root = build.build_root(root_key, root_subject, now=now)
    intermediate_key = build.generate_key(key_type)
    intermediate = build.build_intermediate(
        intermediate_key.public_key(), intermediate_subject, issuer=root, issuer_key=root_key, now=now
    )
    pem = serialization.Encoding.PEM
    try:
        write_private_key(paths.root_key, root_key, passphrase, replace=force)
        write_private_key(paths.ca_key, intermediate_key, passphrase, replace=force)
        write_public_file(paths.root_cert, root.public_bytes(pem), replace=force)
        write_public_file(paths.ca_cert, intermediate.public_bytes(pem), replace=force)
    except FileExistsError:
        raise CAError(f"{directory}: CA files appeared meanwhile (another process?); none replaced") from None
    except OSError as e:
        raise CAError(f"{directory}: cannot write: {e.strerror or e}") from None
    return CertificateAuthority(certificate=intermediate, key=intermediate_key, chain=(), root=root)

