"""Tests for etpmitm.mint: which names a leaf carries, and leaves that real verifiers accept."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from etpmitm.ca import CertificateAuthority, init_own_root, load_or_create_leaf_key
from etpmitm.ca.build import build_intermediate, build_root, generate_key
from etpmitm.keyfiles import PrivateKey, write_private_key
from etpmitm.ca.certfiles import certificates_pem
from etpmitm.mint import LeafIssuer, LeafName, MimicFields, MintedLeaf, MintError, leaf_names

def mint_leaf(ca: Any, leaf_key: Any, names: Any, mimic: Any = None, now: Any = None) -> MintedLeaf:
    """One leaf from a fresh :class:`LeafIssuer`, as the gateway mints them."""
    return LeafIssuer(ca, leaf_key).mint(names, MimicFields.of(mimic), now)


UTC = datetime.timezone.utc


# -- helpers shared with test_ca_cli ----------------------------------------------------


def pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def openssl_verify_leaf(
    workdir: Path, root: x509.Certificate, leaf: MintedLeaf, name: LeafName
) -> subprocess.CompletedProcess[str]:
    """``openssl verify -x509_strict -purpose sslserver`` of ``leaf`` for ``name`` against ``root``."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "root.pem").write_bytes(pem(root))
    (workdir / "chain.pem").write_bytes(certificates_pem(leaf.chain))
    (workdir / "leaf.pem").write_bytes(certificates_pem((leaf.certificate,)))
    if isinstance(name, str):
        check = ["-verify_hostname", name]
    else:
        check = ["-verify_ip", str(name)]
    return subprocess.run(
        ["openssl", "verify", "-x509_strict", "-purpose", "sslserver", *check,
         "-CAfile", str(workdir / "root.pem"), "-untrusted", str(workdir / "chain.pem"),
         str(workdir / "leaf.pem")],
        capture_output=True,
        text=True,
    )


def python_ssl_handshake(workdir: Path, root: x509.Certificate, leaf: MintedLeaf, server_hostname: str) -> None:
    """A real in-memory TLS handshake: server serves ``leaf``; client trusts only ``root``.

    Raises ssl.SSLCertVerificationError if the client rejects the certificate.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    certfile, keyfile = workdir / "fullchain.pem", workdir / "leaf.key"
    certfile.write_bytes(certificates_pem((leaf.certificate, *leaf.chain)))
    if keyfile.exists():
        keyfile.unlink()
    write_private_key(keyfile, leaf.key)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.minimum_version = ssl.TLSVersion.TLSv1_2
    server_context.load_cert_chain(certfile, keyfile)
    client_context = ssl.create_default_context(cadata=pem(root).decode("ascii"))
    client_context.verify_flags |= ssl.VERIFY_X509_STRICT
    assert client_context.check_hostname and client_context.verify_mode == ssl.CERT_REQUIRED

    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_context.wrap_bio(client_in, client_out, server_hostname=server_hostname)
    server = server_context.wrap_bio(server_in, server_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for side, connection in (("client", client), ("server", server)):
            if not done[side]:
                try:
                    connection.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if all(done.values()):
            break
    else:
        raise AssertionError("handshake did not complete")
    client.write(b"ping")
    server_in.write(client_out.read())
    assert server.read(4) == b"ping"


def make_origin(
    san: list[x509.GeneralName] | None = None,
    cn: str | None = None,
    organization: str | None = None,
    extra: list[x509.ExtensionType] = [],
) -> x509.Certificate:
    """A self-signed stand-in for an origin's certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    attributes = []
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    if cn:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    now = datetime.datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Origin Issuer")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    for extension in extra:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(key, hashes.SHA256())


E = TypeVar("E", bound=x509.ExtensionType)


def extension(certificate: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return certificate.extensions.get_extension_for_class(kind)


class MintTestCase(TestCase):
    """Gives each test a fresh own-root CA and the gateway's ECDSA leaf key."""

    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.ca = init_own_root(self.directory)
        self.leaf_key: PrivateKey = load_or_create_leaf_key(self.directory, "ecdsa")
        assert self.ca.root is not None
        self.root: x509.Certificate = self.ca.root

    def work(self, name: str) -> Path:
        return self.directory / "work" / name

    def assertVerifies(self, leaf: MintedLeaf, name: LeafName, hostname: str | None = None) -> None:
        """openssl and Python's ssl both accept ``leaf`` for ``name``."""
        result = openssl_verify_leaf(self.work("openssl"), self.root, leaf, name)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("leaf.pem: OK", result.stdout)
        python_ssl_handshake(self.work("python"), self.root, leaf, hostname or str(name))


# -- real verifiers ------------------------------------------------------------------------


class VerifierTests(MintTestCase):
    def test_every_name_verifies(self) -> None:
        names: tuple[LeafName, ...] = ("www.example.com", "example.com", ipaddress.ip_address("192.0.2.7"))
        leaf = mint_leaf(self.ca, self.leaf_key, names)
        for name in names:
            self.assertVerifies(leaf, name)

    def test_a_name_not_in_the_leaf_is_rejected(self) -> None:
        """Negative control: the verifiers used above do check the name."""
        leaf = mint_leaf(self.ca, self.leaf_key, ["www.example.com"])
        result = openssl_verify_leaf(self.work("openssl"), self.root, leaf, "other.example.com")
        self.assertNotEqual(result.returncode, 0)
        self.assertRaises(
            ssl.SSLCertVerificationError,
            python_ssl_handshake, self.work("python"), self.root, leaf, "other.example.com",
        )

    def test_another_root_is_rejected(self) -> None:
        """Negative control: the client trusts only the given root."""
        leaf = mint_leaf(self.ca, self.leaf_key, ["www.example.com"])
        stranger = init_own_root(Path(self.mktemp())).root
        assert stranger is not None
        self.assertRaises(
            ssl.SSLCertVerificationError,
            python_ssl_handshake, self.work("python"), stranger, leaf, "www.example.com",
        )

    def test_idna_names(self) -> None:
        leaf = mint_leaf(self.ca, self.leaf_key, ["bücher.example", "xn--caf-dma.example"])
        san = extension(leaf.certificate, x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["xn--bcher-kva.example", "xn--caf-dma.example"])
        self.assertEqual(leaf.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value,
                         "xn--bcher-kva.example")
        self.assertVerifies(leaf, "xn--bcher-kva.example")
        python_ssl_handshake(self.work("unicode"), self.root, leaf, "bücher.example")

    def test_ip_names(self) -> None:
        leaf = mint_leaf(
            self.ca, self.leaf_key,
            [ipaddress.ip_address("192.0.2.1"), "2001:db8::1", ipaddress.ip_address("198.51.100.2")],
        )
        san = extension(leaf.certificate, x509.SubjectAlternativeName).value
        self.assertEqual(
            san.get_values_for_type(x509.IPAddress),
            [ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("2001:db8::1"),
             ipaddress.ip_address("198.51.100.2")],
        )
        self.assertEqual(san.get_values_for_type(x509.DNSName), [])
        for address in ("192.0.2.1", "2001:db8::1", "198.51.100.2"):
            self.assertVerifies(leaf, ipaddress.ip_address(address), address)

    def test_wildcard(self) -> None:
        leaf = mint_leaf(self.ca, self.leaf_key, ["*.example.com"])
        san = extension(leaf.certificate, x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["*.example.com"])
        self.assertVerifies(leaf, "www.example.com")
        self.assertRaises(
            ssl.SSLCertVerificationError,
            python_ssl_handshake, self.work("deep"), self.root, leaf, "a.b.example.com",
        )

    def test_rsa_leaf_verifies(self) -> None:
        rsa_key = load_or_create_leaf_key(self.directory, "rsa")
        leaf = mint_leaf(self.ca, rsa_key, ["rsa.example"])
        self.assertVerifies(leaf, "rsa.example")

    def test_long_first_name_omits_cn_and_still_verifies(self) -> None:
        long_name = "a" * 60 + ".example.com"
        leaf = mint_leaf(self.ca, self.leaf_key, [long_name, "short.example"])
        self.assertEqual(leaf.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME), [])
        san = extension(leaf.certificate, x509.SubjectAlternativeName)
        self.assertTrue(san.critical, "an empty subject requires a critical SAN")
        self.assertVerifies(leaf, long_name)
        self.assertVerifies(leaf, "short.example")


# -- certificate contents ------------------------------------------------------------------


class ContentTests(MintTestCase):
    def test_extensions_are_exactly_the_expected_ones(self) -> None:
        origin = make_origin(
            san=[x509.DNSName("www.example.com")],
            organization="Example Inc",
            extra=[x509.OCSPNoCheck(), x509.TLSFeature([x509.TLSFeatureType.status_request])],
        )
        leaf = mint_leaf(self.ca, self.leaf_key, ["www.example.com"], mimic=origin).certificate
        self.assertEqual(
            {e.oid for e in leaf.extensions},
            {ExtensionOID.SUBJECT_ALTERNATIVE_NAME, ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE,
             ExtensionOID.EXTENDED_KEY_USAGE, ExtensionOID.SUBJECT_KEY_IDENTIFIER,
             ExtensionOID.AUTHORITY_KEY_IDENTIFIER},
        )
        constraints = extension(leaf, x509.BasicConstraints)
        self.assertTrue(constraints.critical)
        self.assertFalse(constraints.value.ca)
        self.assertEqual(list(extension(leaf, x509.ExtendedKeyUsage).value), [ExtendedKeyUsageOID.SERVER_AUTH])
        self.assertEqual(
            extension(leaf, x509.SubjectKeyIdentifier).value,
            x509.SubjectKeyIdentifier.from_public_key(self.leaf_key.public_key()),
        )
        self.assertIsInstance(leaf.signature_hash_algorithm, hashes.SHA256)
        self.assertEqual(leaf.issuer, self.ca.certificate.subject)

    def test_subject_is_organization_and_first_name(self) -> None:
        origin = make_origin(san=[x509.DNSName("example.com")], organization="Example Inc", cn="example.com")
        leaf = mint_leaf(self.ca, self.leaf_key, ["www.example.com", "example.com"], mimic=origin)
        subject = leaf.certificate.subject
        self.assertEqual(subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value, "Example Inc")
        self.assertEqual(subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value, "www.example.com")
        plain = mint_leaf(self.ca, self.leaf_key, ["www.example.com"]).certificate.subject
        self.assertEqual(plain.get_attributes_for_oid(NameOID.ORGANIZATION_NAME), [])

    def test_key_usage_by_key_type(self) -> None:
        ecdsa_leaf = mint_leaf(self.ca, self.leaf_key, ["a.example"]).certificate
        rsa_leaf = mint_leaf(self.ca, load_or_create_leaf_key(self.directory, "rsa"), ["a.example"]).certificate
        ecdsa_usage = extension(ecdsa_leaf, x509.KeyUsage)
        rsa_usage = extension(rsa_leaf, x509.KeyUsage)
        self.assertTrue(ecdsa_usage.critical and rsa_usage.critical)
        self.assertTrue(ecdsa_usage.value.digital_signature and rsa_usage.value.digital_signature)
        self.assertFalse(ecdsa_usage.value.key_encipherment)
        self.assertTrue(rsa_usage.value.key_encipherment)
        self.assertFalse(rsa_usage.value.key_cert_sign or ecdsa_usage.value.key_cert_sign)
        self.assertIsInstance(rsa_leaf.public_key(), rsa.RSAPublicKey)

    def test_aki_is_the_intermediates_ski(self) -> None:
        leaf = mint_leaf(self.ca, self.leaf_key, ["a.example"]).certificate
        ski = extension(self.ca.certificate, x509.SubjectKeyIdentifier).value
        aki = extension(leaf, x509.AuthorityKeyIdentifier).value
        self.assertEqual(aki.key_identifier, ski.digest)
        self.assertIsNone(aki.authority_cert_issuer)

    def test_serials_are_random_positive_and_distinct(self) -> None:
        serials = [mint_leaf(self.ca, self.leaf_key, ["a.example"]).certificate.serial_number for _ in range(20)]
        self.assertEqual(len(set(serials)), 20)
        for serial in serials:
            self.assertTrue(0 < serial < 2**159)
        self.assertGreater(max(serials), 2**64, "serials carry far more than 64 bits")

    def test_validity_window(self) -> None:
        now = datetime.datetime.now(UTC)
        leaf = mint_leaf(self.ca, self.leaf_key, ["a.example"], now=now).certificate
        self.assertLessEqual(leaf.not_valid_before_utc, now)
        self.assertGreaterEqual(leaf.not_valid_before_utc, now - datetime.timedelta(days=2))
        self.assertGreater(leaf.not_valid_after_utc, now + datetime.timedelta(days=80))
        self.assertLessEqual(leaf.not_valid_after_utc - leaf.not_valid_before_utc, datetime.timedelta(days=90))

    def test_validity_is_clamped_to_the_intermediate(self) -> None:
        now = datetime.datetime.now(UTC)
        root_key = generate_key()
        root = build_root(root_key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Short Root")]), now=now)
        ca_key = generate_key()
        intermediate = build_intermediate(
            ca_key.public_key(), x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Short CA")]),
            issuer=root, issuer_key=root_key, now=now, lifetime=datetime.timedelta(days=10),
        )
        short = CertificateAuthority(certificate=intermediate, key=ca_key, root=root)
        leaf = mint_leaf(short, self.leaf_key, ["a.example"], now=now)
        self.assertEqual(leaf.certificate.not_valid_after_utc, intermediate.not_valid_after_utc)
        self.assertGreaterEqual(leaf.certificate.not_valid_before_utc, intermediate.not_valid_before_utc)
        self.root = root
        self.assertVerifies(leaf, "a.example")

    def test_expired_intermediate_refuses(self) -> None:
        later = self.ca.certificate.not_valid_after_utc + datetime.timedelta(seconds=1)
        self.assertRaises(MintError, mint_leaf, self.ca, self.leaf_key, ["a.example"], now=later)

    def test_chain_is_intermediate_without_root(self) -> None:
        leaf = mint_leaf(self.ca, self.leaf_key, ["a.example"])
        self.assertEqual(leaf.chain, (self.ca.certificate,))
        self.assertNotIn(self.root, leaf.chain)
        self.assertEqual(x509.load_pem_x509_certificates(certificates_pem((leaf.certificate, *leaf.chain))), [leaf.certificate, self.ca.certificate])
        self.assertIs(leaf.key, self.leaf_key)

    def test_bad_names_refuse(self) -> None:
        for names in ([], ["bad..example"], ["-bad-.example"], ["white space.example"], ["a.*.example"]):
            self.assertRaises(MintError, mint_leaf, self.ca, self.leaf_key, names)

    def test_repeated_names_appear_once(self) -> None:
        leaf = mint_leaf(self.ca, self.leaf_key, ["A.example", "a.example.", "192.0.2.1",
                                                   ipaddress.ip_address("192.0.2.1")])
        san = extension(leaf.certificate, x509.SubjectAlternativeName).value
        self.assertEqual(list(san), [x509.DNSName("a.example"), x509.IPAddress(ipaddress.ip_address("192.0.2.1"))])


# -- leaf_names ----------------------------------------------------------------------------

IP1 = ipaddress.ip_address("192.0.2.1")
DEST = ipaddress.ip_address("203.0.113.9")
DEST6 = ipaddress.ip_address("2001:db8::9")


class LeafNamesTests(TestCase):
    def setUp(self) -> None:
        self.origin = make_origin(
            san=[x509.DNSName("example.com"), x509.DNSName("www.example.com"), x509.IPAddress(IP1)],
            cn="example.com",
        )

    def test_covered_sni_comes_first(self) -> None:
        self.assertEqual(leaf_names(self.origin, "www.example.com", DEST),
                         ("www.example.com", "example.com", IP1))

    def test_uncovered_sni_is_left_out(self) -> None:
        self.assertEqual(leaf_names(self.origin, "evil.test", DEST), ("example.com", "www.example.com", IP1))

    def test_sni_is_normalized(self) -> None:
        self.assertEqual(leaf_names(self.origin, "WWW.Example.COM.", DEST)[0], "www.example.com")

    def test_no_sni_adds_destination_ip(self) -> None:
        self.assertEqual(leaf_names(self.origin, None, DEST), ("example.com", "www.example.com", IP1, DEST))
        self.assertEqual(leaf_names(self.origin, None, DEST6)[-1], DEST6)
        self.assertEqual(leaf_names(self.origin, None, IP1), ("example.com", "www.example.com", IP1))

    def test_wildcard_coverage(self) -> None:
        origin = make_origin(san=[x509.DNSName("*.example.com"), x509.DNSName("example.com")])
        self.assertEqual(leaf_names(origin, "foo.example.com", DEST), ("foo.example.com", "*.example.com", "example.com"))
        self.assertEqual(leaf_names(origin, "a.b.example.com", DEST), ("*.example.com", "example.com"))
        self.assertEqual(leaf_names(origin, "example.com", DEST), ("example.com", "*.example.com"))
        self.assertEqual(leaf_names(origin, "fooexample.com", DEST), ("*.example.com", "example.com"))

    def test_partial_and_short_wildcards_cover_nothing(self) -> None:
        origin = make_origin(san=[x509.DNSName("w*.example.com"), x509.DNSName("*.com"), x509.DNSName("a.example")])
        self.assertEqual(leaf_names(origin, "www.example.com", DEST), ("*.com", "a.example"),
                         "the partial wildcard is dropped; the short one covers nothing")
        self.assertEqual(leaf_names(origin, "example.com", DEST), ("*.com", "a.example"))

    def test_names_that_cannot_be_written_are_dropped(self) -> None:
        origin = make_origin(san=[x509.DNSName("bad..example"), x509.DNSName("good.example")])
        self.assertEqual(leaf_names(origin, "bad..example", DEST), ("good.example",))
        self.assertEqual(leaf_names(None, "white space", DEST), ())

    def test_san_wins_over_cn(self) -> None:
        origin = make_origin(san=[x509.DNSName("san.example")], cn="cn.example")
        self.assertEqual(leaf_names(origin, "cn.example", DEST), ("san.example",))

    def test_falls_back_to_cn_without_san(self) -> None:
        origin = make_origin(cn="legacy.example")
        self.assertEqual(leaf_names(origin, "legacy.example", DEST), ("legacy.example",))
        self.assertEqual(leaf_names(origin, None, DEST), ("legacy.example", DEST))
        self.assertEqual(leaf_names(make_origin(cn="192.0.2.1"), None, None), (IP1,))

    def test_sni_covered_by_an_ip_literal(self) -> None:
        self.assertEqual(leaf_names(self.origin, "192.0.2.1", DEST)[0], IP1)

    def test_without_origin(self) -> None:
        self.assertEqual(leaf_names(None, "blocked.example", DEST), ("blocked.example",))
        self.assertEqual(leaf_names(None, None, DEST), (DEST,))

    @given(
        san=st.lists(st.sampled_from(["a.example", "b.example", "*.example", "*.a.example", "c.test"]), max_size=5),
        sni=st.one_of(st.none(), st.sampled_from(["a.example", "x.example", "y.a.example", "c.test", "A.EXAMPLE"])),
        destination=st.one_of(st.none(), st.sampled_from([IP1, DEST, DEST6])),
    )
    def test_properties(self, san: list[str], sni: str | None, destination: ipaddress.IPv4Address | None) -> None:
        origin = make_origin(san=[x509.DNSName(n) for n in san] or None, cn="fallback.example")
        names = leaf_names(origin, sni, destination)
        self.assertEqual(len(names), len(set(names)), "no duplicates")
        from_origin = set(san) if san else {"fallback.example"}
        self.assertTrue(from_origin <= set(names), "every origin name is kept")
        extra = set(names) - from_origin
        if sni is None:
            self.assertEqual(extra, {destination} - from_origin - {None})
        else:
            if destination is not None and str(destination) not in from_origin:
                self.assertNotIn(destination, names)
            wanted = sni.lower()
            covered = wanted in from_origin or any(
                p.startswith("*.") and wanted.split(".", 1)[1] == p[2:] for p in from_origin if p.count(".") >= 2
            )
            self.assertEqual(names[0] == wanted, covered)
            self.assertTrue(extra <= {wanted})
