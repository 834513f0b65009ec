"""Minting leaf certificates that stand in for an origin's (sans-IO: no reactor, no files).

:func:`leaf_names` picks the names a leaf must carry; a :class:`LeafIssuer`
(reused across calls) builds and signs it with the CA's
intermediate. A leaf carries only names and, when mimicking an origin, that
origin's organization (O); no other origin extension is copied.

A minted leaf has: SAN with all names (DNS names as IDNA A-labels, wildcards
kept, IP addresses as iPAddress); CN = the first name when it fits in 64
characters; basicConstraints CA:FALSE (critical); keyUsage digitalSignature
(critical), plus keyEncipherment for RSA keys; EKU serverAuth; SKI; AKI = the
intermediate's SKI; a random 128-bit serial; validity from one day back for at
most 90 days, never past the intermediate's notAfter. It is signed with SHA-256
(SHA-384 when the intermediate's key is ECDSA P-384).
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import re
import secrets
from collections.abc import Iterable
from typing import TypeAlias

import attrs
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from etpmitm.ca.build import SignatureHash, authority_key_identifier, signature_hash
from etpmitm.ca.directory import CertificateAuthority
from etpmitm.ca.subject import common_name, first_text_attribute
from etpmitm.addresses import IPAddress
from etpmitm.keyfiles import PrivateKey
from etpmitm.names import a_labels

LeafName: TypeAlias = str | IPAddress
"""A DNS name (possibly a wildcard like ``*.example.com``) or an IP address."""

MAX_LIFETIME = datetime.timedelta(days=90)
BACKDATE = datetime.timedelta(days=1)
MAX_CN_LENGTH = 64

_ASCII_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


class MintError(ValueError):
    """No leaf can be minted for these names or with this CA (one-line reason)."""


# -- which names --------------------------------------------------------------------------


def leaf_names(
    origin: x509.Certificate | None,
    sni: str | None,
    destination_ip: IPAddress | None,
) -> tuple[LeafName, ...]:
    """The names a leaf standing in for ``origin`` must carry, in order, without duplicates.

    The origin's SAN DNS names and IP addresses (its CN if it has neither) are
    all kept, wildcards as wildcards; names that cannot go into a certificate
    (e.g. partial wildcards like ``w*.example.com``) are dropped. The client's
    SNI comes first, so that it becomes the CN, but only when the origin's
    certificate covers it (exactly or by a one-label wildcard, RFC 6125).
    Without SNI the destination IP is added, so that clients connecting by
    address are satisfied. With no origin certificate the SNI is taken as is.
    """
    covered = origin_names(origin) if origin is not None else ()
    names: list[LeafName] = []
    requested = _as_name(sni) if sni else None
    if requested is not None and (origin is None or any(_covers(p, requested) for p in covered)):
        names.append(requested)
    names.extend(covered)
    if not sni and destination_ip is not None:
        names.append(destination_ip)
    return tuple(dict.fromkeys(names))


def origin_names(origin: x509.Certificate) -> tuple[LeafName, ...]:
    """The origin's SAN DNS names and IPs (normalized as :func:`a_label_name`), else its CN."""
    try:
        san = origin.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):  # ValueError: some extension is malformed
        san = None
    texts: list[str] = []
    addresses: list[LeafName] = []
    if san is not None:
        texts = san.get_values_for_type(x509.DNSName)
        addresses = [
            address
            for address in san.get_values_for_type(x509.IPAddress)
            if isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address))
        ]
    if not texts and not addresses:
        texts = [cn] if (cn := common_name(origin.subject)) else []
    names = [name for name in map(_as_name, texts) if name is not None]
    return tuple(dict.fromkeys([*names, *addresses]))


def _as_name(text: str) -> LeafName | None:
    """An address, or the DNS name in A-label form; None if it cannot go into a certificate."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    try:
        return a_label_name(text)
    except MintError:
        return None


def _covers(pattern: LeafName, name: LeafName) -> bool:
    """Whether certificate name ``pattern`` covers ``name`` (RFC 6125: exact, or ``*.`` + one label)."""
    if isinstance(pattern, str) and isinstance(name, str):
        if pattern == name:
            return True
        if pattern.startswith("*.") and pattern.count(".") >= 2 and "*" not in pattern[1:]:
            label, dot, rest = name.partition(".")
            return bool(label) and bool(dot) and rest == pattern[2:]
        return False
    return pattern == name


# -- how names are written -----------------------------------------------------------------


def general_name(name: LeafName) -> x509.GeneralName:
    """The SAN entry for ``name``: iPAddress for addresses (also given as text), else dNSName."""
    if not isinstance(name, str):
        return x509.IPAddress(name)
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(a_label_name(name))


def a_label_name(name: str) -> str:
    """``name`` in lower-case ASCII (IDNA A-labels, :func:`etpmitm.names.a_labels`),
    checked for a certificate; a leading ``*.`` wildcard is kept."""
    text = name.strip().rstrip(".")
    wildcard = text.startswith("*.")
    rest = text[2:] if wildcard else text
    if not rest:
        raise MintError(f"empty DNS name {name!r}")
    try:
        ascii_name = a_labels(rest)
    except ValueError as e:
        raise MintError(f"cannot IDNA-encode {name!r}: {e}") from None
    labels = ascii_name.split(".")
    if len(ascii_name) > 253 or not all(_ASCII_LABEL.fullmatch(label) for label in labels):
        raise MintError(f"not a valid DNS name: {name!r}")
    return f"*.{ascii_name}" if wildcard else ascii_name


def name_text(name: LeafName) -> str:
    """How ``name`` reads in a CN: the A-label form, or the address in canonical form."""
    return str(general_name(name).value)


# -- what is copied from the origin ---------------------------------------------------------


@attrs.frozen
class MimicFields:
    """The few origin fields a leaf copies; hashable, so part of the leaf cache key."""

    organization: str | None = None

    @classmethod
    def of(cls, origin: x509.Certificate | None) -> MimicFields:
        if origin is None:
            return NO_MIMIC
        return cls(organization=first_text_attribute(origin.subject, NameOID.ORGANIZATION_NAME))


NO_MIMIC = MimicFields()


# -- the result ---------------------------------------------------------------------------


@attrs.frozen
class MintedLeaf:
    """A minted leaf with what a TLS server needs to serve it."""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    """What the server sends after the leaf: the intermediate, then the CA's chain; never the root."""
    key: PrivateKey = attrs.field(repr=False)
    """The shared leaf key (the same object for every leaf of a gateway)."""
    names: tuple[LeafName, ...]

    @functools.cached_property
    def not_after(self) -> datetime.datetime:
        return self.certificate.not_valid_after_utc


# -- building ------------------------------------------------------------------------------


@attrs.frozen
class LeafIssuer:
    """Mints leaves for one CA and one leaf key, computing what they share only once."""

    ca: CertificateAuthority
    key: PrivateKey = attrs.field(repr=False)

    @functools.cached_property
    def _signature_hash(self) -> SignatureHash:
        return signature_hash(self.ca.key)

    @functools.cached_property
    def _fixed_extensions(self) -> tuple[tuple[x509.ExtensionType, bool], ...]:
        rsa_key = isinstance(self.key, rsa.RSAPrivateKey)
        usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=rsa_key,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        )
        return (
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (usage, True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            (x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), False),
            (authority_key_identifier(self.ca.certificate), False),
        )

    def mint(
        self,
        names: Iterable[LeafName],
        mimic: MimicFields = NO_MIMIC,
        now: datetime.datetime | None = None,
    ) -> MintedLeaf:
        """Build and sign a leaf for ``names`` (at least one); :class:`MintError` if impossible."""
        wanted = tuple(names)
        if not wanted:
            raise MintError("a leaf needs at least one name")
        entries = list(dict.fromkeys(general_name(name) for name in wanted))
        subject = _subject(name_text(wanted[0]), mimic)
        start, end = self._validity(now)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.ca.certificate.subject)
            .public_key(self.key.public_key())
            .serial_number(1 + secrets.randbelow(2**128 - 1))
            .not_valid_before(start)
            .not_valid_after(end)
            # RFC 5280 4.2.1.6: the SAN must be critical when the subject is empty.
            .add_extension(x509.SubjectAlternativeName(entries), critical=not subject.rdns)
        )
        for extension, critical in self._fixed_extensions:
            builder = builder.add_extension(extension, critical=critical)
        certificate = builder.sign(self.ca.key, self._signature_hash)
        return MintedLeaf(certificate=certificate, chain=self.ca.chain_for_tls, key=self.key, names=wanted)

    def _validity(self, now: datetime.datetime | None) -> tuple[datetime.datetime, datetime.datetime]:
        moment = (now or datetime.datetime.now(datetime.timezone.utc)).replace(microsecond=0)
        intermediate = self.ca.certificate
        if moment >= intermediate.not_valid_after_utc:
            raise MintError("the intermediate CA certificate has expired")
        start = max(moment - BACKDATE, intermediate.not_valid_before_utc)
        end = min(start + MAX_LIFETIME, intermediate.not_valid_after_utc)
        return start, end


def _subject(first_name: str, mimic: MimicFields) -> x509.Name:
    attributes: list[x509.NameAttribute[str]] = []
    if mimic.organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, mimic.organization[:64]))
    if len(first_name) <= MAX_CN_LENGTH:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, first_name))
    return x509.Name(attributes)
