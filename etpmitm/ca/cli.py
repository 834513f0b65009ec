"""``etpmitm ca {init,csr,install,export,show}``: the CA directory from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cryptography import x509

from etpmitm.ca import build
from etpmitm.ca.directory import CAPaths, CertificateAuthority
from etpmitm.ca.enroll import create_csr
from etpmitm.ca.export import export_root
from etpmitm.ca.install import install_signed
from etpmitm.ca.ownroot import DEFAULT_INTERMEDIATE_SUBJECT, DEFAULT_ROOT_SUBJECT, init_own_root
from etpmitm.ca.show import describe_directory, fingerprint
from etpmitm.ca.subject import SubjectSyntaxError, format_subject, parse_subject
from etpmitm.ca.trustguide import trust_guide
from etpmitm.cli import SubParsers, UsageError
from etpmitm.defaults import default_ca_directory
from etpmitm.keyfiles import KeyFileError, read_passphrase_file, write_public_file


def register(subparsers: SubParsers) -> None:
    """Add ``ca`` and its actions to the top-level parser."""
    ca = subparsers.add_parser("ca", help="manage the certificate authority", description=__doc__)
    actions = ca.add_subparsers(dest="ca_action", metavar="ACTION", required=True)

    init = actions.add_parser("init", help="make an own root and an intermediate under it")
    _add_directory(init)
    init.add_argument("--subject", type=_subject, help=f"root subject (default {DEFAULT_ROOT_SUBJECT!r})")
    init.add_argument(
        "--intermediate-subject",
        type=_subject,
        help=f"intermediate subject (default: derived from --subject, else {DEFAULT_INTERMEDIATE_SUBJECT!r})",
    )
    _add_key_type(init)
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    _add_passphrase(init)
    init.set_defaults(handler=run_init)

    csr = actions.add_parser("csr", help="make ca.key and a CSR for an enterprise root to sign")
    _add_directory(csr)
    csr.add_argument("--subject", type=_subject, required=True, help='e.g. "/O=Example/CN=Example TLS Inspection"')
    _add_key_type(csr)
    csr.add_argument("--force", action="store_true", help="replace an existing ca.key")
    _add_passphrase(csr)
    csr.set_defaults(handler=run_csr)

    install = actions.add_parser("install", help="check and install the signed intermediate")
    _add_directory(install)
    install.add_argument("signed", type=Path, metavar="SIGNED.pem", help="the intermediate, then its chain")
    install.add_argument("--root", type=Path, metavar="ROOT.pem", help="the root devices trust (recorded as root.pem)")
    _add_passphrase(install)
    install.set_defaults(handler=run_install)

    export = actions.add_parser("export", help="write the certificate devices must trust")
    _add_directory(export, optional=True)
    export.add_argument("--der", action="store_true", help="DER instead of PEM")
    export.add_argument("-o", "--output", type=Path, metavar="FILE", help="write here instead of stdout")
    export.set_defaults(handler=run_export)

    show = actions.add_parser("show", help="describe the CA directory (no private key material)")
    _add_directory(show, optional=True)
    _add_passphrase(show)
    show.set_defaults(handler=run_show)


def _add_directory(parser: argparse.ArgumentParser, *, optional: bool = False) -> None:
    """--dir; read-only actions default to the directory the gateway uses without --ca-dir."""
    if optional:
        parser.add_argument(
            "--dir", type=Path, metavar="DIR",
            help=f"the CA directory (default: the gateway's, here {default_ca_directory()})",
        )
    else:
        parser.add_argument("--dir", type=Path, required=True, metavar="DIR", help="the CA directory")


def _add_key_type(parser: argparse.ArgumentParser) -> None:
    names = ", ".join((*build.CA_KEY_TYPES, *build.KEY_TYPE_ALIASES))
    parser.add_argument(
        "--key-type",
        type=_key_type,
        default=build.DEFAULT_KEY_TYPE,
        metavar="TYPE",
        help=f"CA key type: {names} (default {build.DEFAULT_KEY_TYPE})",
    )


def _add_passphrase(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--passphrase-file", type=Path, metavar="FILE", help="encrypt/decrypt private keys with the first line of FILE"
    )


def _subject(text: str) -> x509.Name:
    try:
        return parse_subject(text)
    except SubjectSyntaxError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _key_type(text: str) -> build.CAKeyType:
    name = build.KEY_TYPE_ALIASES.get(text.lower(), text.lower())
    for key_type in build.CA_KEY_TYPES:
        if key_type == name:
            return key_type
    raise argparse.ArgumentTypeError(f"unknown key type {text!r}")


def _passphrase(args: argparse.Namespace) -> bytes | None:
    path: Path | None = args.passphrase_file
    if path is None:
        return None
    try:
        return read_passphrase_file(path)
    except KeyFileError as e:
        raise UsageError(str(e)) from None


def _existing_directory(args: argparse.Namespace) -> Path:
    directory: Path | None = args.dir
    if directory is None:
        directory = default_ca_directory()
        if not directory.is_dir():
            raise UsageError(f"no CA in the gateway's default directory {directory}; pass --dir DIR")
    elif not directory.is_dir():
        raise UsageError(f"--dir {directory}: no such directory")
    return directory


def _creatable_directory(args: argparse.Namespace) -> Path:
    directory: Path = args.dir
    if not directory.is_dir() and not directory.absolute().parent.is_dir():
        raise UsageError(f"--dir {directory}: neither it nor its parent directory exists")
    return directory


def _read_input(path: Path, what: str) -> bytes:
    """The bytes of an input file; a usage error such as "cannot read --root r.pem: ..." if unreadable."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror or e}") from None


def run_init(args: argparse.Namespace) -> int:
    directory = _creatable_directory(args)
    ca = init_own_root(
        directory,
        args.subject,
        args.intermediate_subject,
        key_type=args.key_type,
        passphrase=_passphrase(args),
        force=args.force,
    )
    paths = CAPaths(directory)
    assert ca.root is not None
    print(f"Created a new CA in {directory}:")
    print(f"  root.pem  root certificate {format_subject(ca.root.subject)}, until {_until(ca.root)}")
    print(f"            SHA-256 {fingerprint(ca.root)}")
    print("  root.key  root private key (0600); the gateway does not need it: consider moving it offline")
    print(f"  ca.pem    intermediate {format_subject(ca.certificate.subject)}, until {_until(ca.certificate)}")
    print("  ca.key    intermediate private key (0600), used by the gateway to sign leaves")
    print()
    print(trust_guide(paths.root_cert.absolute(), directory))
    return 0


def run_csr(args: argparse.Namespace) -> int:
    directory = _creatable_directory(args)
    paths = CAPaths(directory)
    create_csr(
        directory, args.subject, key_type=args.key_type, passphrase=_passphrase(args), force=args.force
    )
    print(f"Wrote {paths.ca_key} (0600) and {paths.csr}.")
    print("Have the enterprise CA sign ca.csr as an intermediate CA certificate:")
    print("  basicConstraints=critical,CA:TRUE,pathlen:0  keyUsage=critical,keyCertSign,cRLSign")
    print(f"then run: etpmitm ca install --dir {directory} SIGNED.pem --root ENTERPRISE-ROOT.pem")
    if paths.ca_cert.exists():
        print(f"note: {paths.ca_cert} belongs to the previous key and stays unusable until that install")
    return 0


def run_install(args: argparse.Namespace) -> int:
    directory = _existing_directory(args)
    signed = _read_input(args.signed, "the signed certificate")
    root = _read_input(args.root, "--root") if args.root is not None else None
    ca = install_signed(
        directory,
        signed,
        root,
        passphrase=_passphrase(args),
        signed_name=args.signed.name,
        root_name=args.root.name if args.root is not None else "root certificate",
    )
    print(f"Installed into {CAPaths(directory).ca_cert}:")
    _print_summary(ca)
    if args.root is not None:
        print(f"Recorded the root in {CAPaths(directory).root_cert}.")
    return 0


def _print_summary(ca: CertificateAuthority) -> None:
    print(f"  intermediate {format_subject(ca.certificate.subject)}, until {_until(ca.certificate)}")
    print(f"    issued by  {format_subject(ca.certificate.issuer)}")
    for certificate in ca.chain:
        print(f"  chain        {format_subject(certificate.subject)}, until {_until(certificate)}")
    if ca.root is not None:
        print(f"  root         {format_subject(ca.root.subject)}, SHA-256 {fingerprint(ca.root)}")
    else:
        print("  root         not known (not checked; 'ca export' unavailable)")


def run_export(args: argparse.Namespace) -> int:
    data = export_root(_existing_directory(args), der=args.der)
    output: Path | None = args.output
    if output is None or str(output) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        write_public_file(output, data)
        print(f"Wrote {output} ({'DER' if args.der else 'PEM'}).")
    return 0


def run_show(args: argparse.Namespace) -> int:
    for line in describe_directory(_existing_directory(args), _passphrase(args)):
        print(line)
    return 0


def _until(certificate: x509.Certificate) -> str:
    return f"{certificate.not_valid_after_utc:%Y-%m-%d}"
