"""Building CA keys, the own root, the intermediate and the enterprise CSR (pure, no files)."""

from __future__ import annotations

import datetime
from typing import Literal, TypeAlias, get_args

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from etpmitm.keyfiles import PrivateKey

CAKeyType: TypeAlias = Literal["ecdsa-p256", "ecdsa-p384", "rsa-3072", "rsa-4096"]
CA_KEY_TYPES: tuple[CAKeyType, ...] = get_args(CAKeyType)
KEY_TYPE_ALIASES: dict[str, CAKeyType] = {"ecdsa": "ecdsa-p256", "rsa": "rsa-3072"}
DEFAULT_KEY_TYPE: CAKeyType = "ecdsa-p256"

ROOT_LIFETIME = datetime.timedelta(days=3653)  # about 10 years
INTERMEDIATE_LIFETIME = datetime.timedelta(days=1826)  # about 5 years
BACKDATE = datetime.timedelta(hours=1)  # tolerate clocks a little behind ours

PublicKey: TypeAlias = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
SignatureHash: TypeAlias = hashes.SHA256 | hashes.SHA384


def generate_key(key_type: CAKeyType = DEFAULT_KEY_TYPE) -> PrivateKey:
    """A fresh CA private key of the given type."""
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    bits = 3072 if key_type == "rsa-3072" else 4096
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def signature_hash(key: PrivateKey) -> SignatureHash:
    """The digest to sign with: SHA-384 for P-384 (and larger curves), SHA-256 otherwise."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def ca_constraints(path_length: int | None) -> list[tuple[x509.ExtensionType, bool]]:
    """basicConstraints CA:TRUE and keyUsage keyCertSign+cRLSign, both critical."""
    return [
        (x509.BasicConstraints(ca=True, path_length=path_length), True),
        (
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        ),
    ]


def build_root(
    key: PrivateKey,
    subject: x509.Name,
    *,
    now: datetime.datetime | None = None,
    lifetime: datetime.timedelta = ROOT_LIFETIME,
    path_length: int | None = None,
) -> x509.Certificate:
    """A self-signed root: CA:TRUE (pathlen ``path_length``; none by default), keyCertSign+cRLSign, SKI."""
    start = (now or utc_now()) - BACKDATE
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + lifetime)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    for extension, critical in ca_constraints(path_length=path_length):
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(key, signature_hash(key))


def build_intermediate(
    public_key: PublicKey,
    subject: x509.Name,
    *,
    issuer: x509.Certificate,
    issuer_key: PrivateKey,
    now: datetime.datetime | None = None,
    lifetime: datetime.timedelta = INTERMEDIATE_LIFETIME,
) -> x509.Certificate:
    """An intermediate CA signed by ``issuer``.

    CA:TRUE pathlen:0, keyCertSign+cRLSign (critical), EKU serverAuth (so that
    the key cannot vouch for code or e-mail), SKI, and AKI = the issuer's SKI.
    It never outlives its issuer.
    """
    start = (now or utc_now()) - BACKDATE
    end = min(start + lifetime, issuer.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(start, issuer.not_valid_before_utc))
        .not_valid_after(end)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(authority_key_identifier(issuer), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    for extension, critical in ca_constraints(path_length=0):
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, signature_hash(issuer_key))


def authority_key_identifier(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """AKI (key identifier form) pointing at ``issuer``: its SKI, else one computed from its key."""
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        public_key = issuer.public_key()
        if not isinstance(public_key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
            raise ValueError("issuer key must be ECDSA or RSA") from None
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def build_ca_csr(key: PrivateKey, subject: x509.Name) -> x509.CertificateSigningRequest:
    """A CSR asking (extensionRequest) for CA:TRUE pathlen:0 and keyCertSign+cRLSign, plus SKI."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    for extension, critical in ca_constraints(path_length=0):
        builder = builder.add_extension(extension, critical=critical)
    builder = builder.add_extension(
        x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
    )
    return builder.sign(key, signature_hash(key))
