"""A stand-in "public" PKI for lab origins, made at test time.

``OriginPKI`` holds a root and an intermediate (what the gateway trusts as
its upstream trust store) and issues origin certificates, good and bad.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def _name(cn: str, org: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attributes)


def _key(kind: str) -> Key:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _ca(subject: x509.Name, key: Key, issuer: x509.Name, signer: Key, pathlen: int | None) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + 365 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=pathlen), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(signer, hashes.SHA256())
    )


class Authority:
    """A root and an intermediate under it."""

    def __init__(self, label: str) -> None:
        self.root_key = _key("ecdsa")
        self.root = _ca(_name(f"{label} Root"), self.root_key, _name(f"{label} Root"), self.root_key, None)
        self.key = _key("ecdsa")
        self.intermediate = _ca(_name(f"{label} Issuing CA"), self.key, self.root.subject, self.root_key, 0)

    def issue(
        self,
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
        *,
        key_kind: str = "ecdsa",
        cn: str | None = None,
        org: str | None = "Origin Example Inc",
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> tuple[x509.Certificate, Key]:
        key = _key(key_kind)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn or (dns[0] if dns else ips[0]), org))
            .issuer_name(self.intermediate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or NOW - DAY)
            .not_valid_after(not_after or NOW + 30 * DAY)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert, key


def self_signed(dns: Sequence[str]) -> tuple[x509.Certificate, Key]:
    key = _key("ecdsa")
    name = _name(dns[0])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + 30 * DAY)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def write_pair(
    directory: Path, name: str, chain: Sequence[x509.Certificate], key: Key
) -> tuple[Path, Path]:
    """Write ``name.crt`` (the chain, leaf first) and ``name.key`` (0600)."""
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(pem(*chain))
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def issue_sha1(authority: Authority, dns: Sequence[str], workdir: Path) -> tuple[x509.Certificate, Key]:
    """A leaf signed with SHA-1 by ``authority``'s intermediate.

    cryptography refuses to make SHA-1 signatures, so the openssl command
    does the signing, as a legacy CA would have.
    """
    import subprocess

    key = _key("ecdsa")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name(dns[0]))
        .sign(key, hashes.SHA256())
    )
    files = {
        "leaf.csr": csr.public_bytes(serialization.Encoding.PEM),
        "ca.pem": pem(authority.intermediate),
        "ca.key": authority.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        "ext.cnf": ("subjectAltName=" + ",".join(f"DNS:{d}" for d in dns) + "\n").encode(),
    }
    for name, data in files.items():
        (workdir / f"sha1-{name}").write_bytes(data)
    out = workdir / "sha1-leaf.pem"
    subprocess.run(
        ["openssl", "x509", "-req", "-sha1", "-days", "30",
         "-in", workdir / "sha1-leaf.csr", "-CA", workdir / "sha1-ca.pem", "-CAkey", workdir / "sha1-ca.key",
         "-CAcreateserial", "-extfile", workdir / "sha1-ext.cnf", "-out", out],
        check=True, capture_output=True,
    )
    return x509.load_pem_x509_certificate(out.read_bytes()), key
