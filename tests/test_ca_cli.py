"""Tests for ``etpmitm ca ...``, run as the real installed command, and for loading a CA directory."""

from __future__ import annotations

import datetime
import os
import stat
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID, NameOID
from twisted.trial.unittest import TestCase

from etpmitm.ca import CAError, load_ca, load_or_create_leaf_key
from etpmitm.keyfiles import write_private_key
from tests.test_mint import extension, openssl_verify_leaf, pem, python_ssl_handshake

ETPMITM = os.path.join(os.path.dirname(sys.executable), "etpmitm")
UTC = datetime.timezone.utc
DAY = datetime.timedelta(days=1)

Snapshot = dict[str, tuple[bytes, int]]


def snapshot(directory: Path) -> Snapshot:
    """Every file under ``directory``: its bytes and mode (and the directory's own mode)."""
    files: Snapshot = {".": (b"", stat.S_IMODE(directory.stat().st_mode))}
    for path in sorted(directory.rglob("*")):
        files[str(path.relative_to(directory))] = (
            path.read_bytes() if path.is_file() else b"<dir>",
            stat.S_IMODE(path.stat().st_mode),
        )
    return files


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def ca_extensions(path_length: int | None) -> list[tuple[x509.ExtensionType, bool]]:
    return [
        (x509.BasicConstraints(ca=True, path_length=path_length), True),
        (x509.KeyUsage(False, False, False, False, False, True, True, False, False), True),
    ]


def sign(
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    subject: str,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    extensions: list[tuple[x509.ExtensionType, bool]],
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> x509.Certificate:
    """What an enterprise CA does: sign ``public_key`` (self-signed when ``issuer`` is None)."""
    now = datetime.datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Corp"),
                      x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - DAY)
        .not_valid_after(not_after or now + 365 * DAY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def enterprise_root(subject: str = "Example Enterprise Root") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    return sign(key.public_key(), subject, None, key, extensions=ca_extensions(None)), key


class CLITestCase(TestCase):
    """Runs the installed ``etpmitm`` console script in a temporary directory."""

    def setUp(self) -> None:
        self.assertTrue(
            os.access(ETPMITM, os.X_OK), f"{ETPMITM} is missing: install etpmitm into this virtualenv"
        )
        self.base = Path(self.mktemp()).absolute()
        self.base.mkdir()
        self.dir = self.base / "ca"

    def run_etpmitm(
        self, *args: str | Path, binary: bool = False, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [ETPMITM, *map(str, args)], capture_output=True, cwd=self.base, timeout=120, env=env,
        )

    def ok(self, *args: str | Path) -> str:
        result = self.run_etpmitm(*args)
        self.assertEqual(result.returncode, 0, result.stderr.decode())
        self.assertEqual(result.stderr, b"")
        return result.stdout.decode()

    def assertOneLineError(self, result: subprocess.CompletedProcess[bytes], code: int, *needles: str) -> str:
        stderr = result.stderr.decode()
        self.assertEqual(result.returncode, code, stderr)
        self.assertTrue(stderr.startswith("etpmitm: error: "), stderr)
        self.assertEqual(stderr.count("\n"), 1, f"not one line: {stderr!r}")
        self.assertNotIn("Traceback", stderr)
        for needle in needles:
            self.assertIn(needle, stderr)
        return stderr

    def openssl(self, *args: str | Path) -> str:
        result = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, cwd=self.base)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        return result.stdout + result.stderr

    def certificate(self, name: str) -> x509.Certificate:
        return x509.load_pem_x509_certificate((self.dir / name).read_bytes())


# -- ca init --------------------------------------------------------------------------------


class InitTests(CLITestCase):
    def test_files_modes_and_guide(self) -> None:
        out = self.ok("ca", "init", "--dir", self.dir)
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["ca.key", "ca.pem", "root.key", "root.pem"])
        self.assertEqual(mode(self.dir / "ca.key"), 0o600)
        self.assertEqual(mode(self.dir / "root.key"), 0o600)
        self.assertEqual(mode(self.dir / "ca.pem"), 0o644)
        self.assertEqual(mode(self.dir / "root.pem"), 0o644)
        self.assertIn(str(self.dir / "root.pem"), out)
        for hint in ("update-ca-certificates", "update-ca-trust", "certutil", "add-trusted-cert", "Firefox"):
            self.assertIn(hint, out)
        self.assertNotIn("PRIVATE KEY", out)

    def test_extensions(self) -> None:
        self.ok("ca", "init", "--dir", self.dir)
        root, intermediate = self.certificate("root.pem"), self.certificate("ca.pem")
        for certificate, path_length in ((root, None), (intermediate, 0)):
            constraints = extension(certificate, x509.BasicConstraints)
            self.assertTrue(constraints.critical)
            self.assertTrue(constraints.value.ca)
            self.assertEqual(constraints.value.path_length, path_length)
            usage = extension(certificate, x509.KeyUsage)
            self.assertTrue(usage.critical)
            self.assertTrue(usage.value.key_cert_sign and usage.value.crl_sign)
            self.assertFalse(usage.value.digital_signature)
            self.assertIsInstance(certificate.public_key(), ec.EllipticCurvePublicKey)
        self.assertEqual(
            extension(intermediate, x509.AuthorityKeyIdentifier).value.key_identifier,
            extension(root, x509.SubjectKeyIdentifier).value.digest,
        )
        self.assertEqual(root.subject.rfc4514_string(), "CN=etpmitm Root CA,O=etpmitm")
        self.assertEqual(intermediate.subject.rfc4514_string(), "CN=etpmitm Intermediate CA,O=etpmitm")
        self.assertEqual(intermediate.issuer, root.subject)
        root_life = root.not_valid_after_utc - root.not_valid_before_utc
        intermediate_life = intermediate.not_valid_after_utc - intermediate.not_valid_before_utc
        self.assertTrue(3640 * DAY < root_life < 3660 * DAY, root_life)
        self.assertTrue(1820 * DAY < intermediate_life < 1830 * DAY, intermediate_life)
        self.assertLessEqual(intermediate.not_valid_after_utc, root.not_valid_after_utc)
        intermediate.verify_directly_issued_by(root)

    def test_openssl_agrees(self) -> None:
        self.ok("ca", "init", "--dir", self.dir)
        text = self.openssl("x509", "-in", self.dir / "ca.pem", "-noout", "-text")
        self.assertIn("CA:TRUE, pathlen:0", text)
        self.assertIn("Certificate Sign, CRL Sign", text)
        self.assertIn("X509v3 Authority Key Identifier", text)
        self.assertIn("X509v3 Subject Key Identifier", text)
        root_text = self.openssl("x509", "-in", self.dir / "root.pem", "-noout", "-text")
        self.assertIn("CA:TRUE", root_text)
        verified = self.openssl("verify", "-x509_strict", "-CAfile", self.dir / "root.pem", self.dir / "ca.pem")
        self.assertIn("ca.pem: OK", verified)

    def test_refuses_to_overwrite_without_force(self) -> None:
        self.ok("ca", "init", "--dir", self.dir)
        before = snapshot(self.dir)
        result = self.run_etpmitm("ca", "init", "--dir", self.dir)
        self.assertOneLineError(result, 1, "already holds a CA", "--force")
        self.assertEqual(snapshot(self.dir), before)
        self.ok("ca", "init", "--dir", self.dir, "--force")
        after = snapshot(self.dir)
        self.assertNotEqual(after["root.pem"], before["root.pem"])
        self.assertNotEqual(after["ca.key"], before["ca.key"])
        self.assertEqual(after["ca.key"][1], 0o600)

    def test_subjects(self) -> None:
        self.ok("ca", "init", "--dir", self.dir, "--subject", "/O=Example/CN=Example TLS Inspection")
        self.assertEqual(self.certificate("root.pem").subject.rfc4514_string(), "CN=Example TLS Inspection,O=Example")
        self.assertEqual(
            self.certificate("ca.pem").subject.rfc4514_string(), "CN=Example TLS Inspection Intermediate CA,O=Example"
        )
        other = self.base / "other"
        self.ok("ca", "init", "--dir", other, "--subject", "/C=DE/O=A\\/B/CN=Root",
                "--intermediate-subject", "/O=A/CN=Issuing")
        root = x509.load_pem_x509_certificate((other / "root.pem").read_bytes())
        self.assertEqual(root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value, "A/B")
        self.assertEqual(root.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value, "DE")
        self.assertEqual(x509.load_pem_x509_certificate((other / "ca.pem").read_bytes()).subject.rfc4514_string(),
                         "CN=Issuing,O=A")

    def test_rsa_key_type(self) -> None:
        self.ok("ca", "init", "--dir", self.dir, "--key-type", "rsa")
        for name in ("root.pem", "ca.pem"):
            public_key = self.certificate(name).public_key()
            self.assertIsInstance(public_key, rsa.RSAPublicKey)
            assert isinstance(public_key, rsa.RSAPublicKey)
            self.assertEqual(public_key.key_size, 3072)
        self.openssl("verify", "-x509_strict", "-CAfile", self.dir / "root.pem", self.dir / "ca.pem")

    def test_p384_signs_with_sha384(self) -> None:
        self.ok("ca", "init", "--dir", self.dir, "--key-type", "ecdsa-p384")
        self.assertIsInstance(self.certificate("ca.pem").signature_hash_algorithm, hashes.SHA384)

    def test_passphrase_file(self) -> None:
        passphrase = self.base / "pass"
        passphrase.write_bytes(b"s3cret passphrase\n")
        self.ok("ca", "init", "--dir", self.dir, "--passphrase-file", passphrase)
        for name in ("ca.key", "root.key"):
            self.assertTrue((self.dir / name).read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----"))
        self.assertIn("status:     ok", self.ok("ca", "show", "--dir", self.dir, "--passphrase-file", passphrase))
        self.assertIn("encrypted", self.ok("ca", "show", "--dir", self.dir))
        self.assertRaises(CAError, load_ca, self.dir)
        self.assertEqual(load_ca(self.dir, b"s3cret passphrase").certificate, self.certificate("ca.pem"))

    def test_python_m_etpmitm(self) -> None:
        self.ok("ca", "init", "--dir", self.dir)
        result = subprocess.run([sys.executable, "-m", "etpmitm", "ca", "show", "--dir", self.dir],
                                capture_output=True, text=True, cwd=self.base)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("etpmitm Intermediate CA", result.stdout)


# -- ca csr ---------------------------------------------------------------------------------

SUBJECT = "/O=Example/CN=Example TLS Inspection"


class CSRTests(CLITestCase):
    def test_csr(self) -> None:
        out = self.ok("ca", "csr", "--dir", self.dir, "--subject", SUBJECT)
        self.assertIn("etpmitm ca install", out)
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["ca.csr", "ca.key"])
        self.assertEqual(mode(self.dir / "ca.key"), 0o600)
        text = self.openssl("req", "-in", self.dir / "ca.csr", "-text", "-noout", "-verify")
        self.assertIn("verify OK", text)
        self.assertIn("CA:TRUE, pathlen:0", text)
        self.assertIn("Certificate Sign, CRL Sign", text)
        self.assertIn("Requested Extensions", text)
        csr = x509.load_pem_x509_csr((self.dir / "ca.csr").read_bytes())
        self.assertTrue(csr.is_signature_valid)
        self.assertEqual(csr.subject.rfc4514_string(), "CN=Example TLS Inspection,O=Example")
        constraints = csr.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS)
        self.assertTrue(constraints.critical)
        usage = csr.extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE)
        self.assertTrue(usage.critical)

    def test_refuses_to_clobber_ca_key(self) -> None:
        self.ok("ca", "csr", "--dir", self.dir, "--subject", SUBJECT)
        before = snapshot(self.dir)
        result = self.run_etpmitm("ca", "csr", "--dir", self.dir, "--subject", SUBJECT)
        self.assertOneLineError(result, 1, "ca.key already exists", "--force")
        self.assertEqual(snapshot(self.dir), before)
        self.ok("ca", "csr", "--dir", self.dir, "--subject", SUBJECT, "--force")
        self.assertNotEqual(snapshot(self.dir)["ca.key"], before["ca.key"])


# -- the enterprise flow, signed by openssl ----------------------------------------------------

ENTERPRISE_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
O = Example Corp
CN = Example Enterprise Root
[v3_root]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[v3_issuing]
basicConstraints = critical, CA:TRUE, pathlen:1
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[v3_intermediate]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""


class EnterpriseFlowTests(CLITestCase):
    def setUp(self) -> None:
        super().setUp()
        self.pki = self.base / "enterprise"
        self.pki.mkdir()
        self.config = self.pki / "openssl.cnf"
        self.config.write_text(ENTERPRISE_CONFIG)
        self.openssl("req", "-x509", "-config", self.config, "-extensions", "v3_root", "-newkey", "ec",
                     "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", self.pki / "root.key",
                     "-out", self.pki / "root.pem", "-days", "3650")
        self.ok("ca", "csr", "--dir", self.dir, "--subject", SUBJECT)

    def openssl_sign(self, csr: Path, issuer: str, extensions: str, out: Path) -> None:
        self.openssl("x509", "-req", "-in", csr, "-CA", self.pki / f"{issuer}.pem", "-CAkey", self.pki / f"{issuer}.key",
                     "-set_serial", str(int.from_bytes(os.urandom(12), "big")), "-days", "730",
                     "-extfile", self.config, "-extensions", extensions, "-out", out)

    def assertMintedLeavesVerify(self, root: x509.Certificate) -> None:
        ca = load_ca(self.dir)
        from tests.test_mint import mint_leaf

        leaf = mint_leaf(ca, load_or_create_leaf_key(self.dir), ["www.example.com", "example.com"])
        for name in ("www.example.com", "example.com"):
            result = openssl_verify_leaf(self.base / "verify", root, leaf, name)
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        python_ssl_handshake(self.base / "handshake", root, leaf, "www.example.com")

    def test_install_signed_intermediate(self) -> None:
        self.openssl_sign(self.dir / "ca.csr", "root", "v3_intermediate", self.pki / "signed.pem")
        out = self.ok("ca", "install", "--dir", self.dir, self.pki / "signed.pem", "--root", self.pki / "root.pem")
        self.assertIn("Example TLS Inspection", out)
        self.assertIn("Example Enterprise Root", out)
        root = x509.load_pem_x509_certificate((self.pki / "root.pem").read_bytes())
        self.assertEqual(self.certificate("root.pem"), root)
        self.assertEqual(self.dir.joinpath("ca.pem").read_bytes(), self.pki.joinpath("signed.pem").read_bytes())
        self.assertEqual(mode(self.dir / "ca.pem"), 0o644)
        self.openssl("verify", "-x509_strict", "-CAfile", self.dir / "root.pem", self.dir / "ca.pem")
        self.assertMintedLeavesVerify(root)
        self.assertEqual(self.run_etpmitm("ca", "export", "--dir", self.dir).stdout, pem(root))

    def test_install_with_a_chain_in_any_order(self) -> None:
        self.openssl("req", "-new", "-config", self.config, "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                     "-nodes", "-keyout", self.pki / "issuing.key", "-out", self.pki / "issuing.csr",
                     "-subj", "/O=Example Corp/CN=Example Issuing CA")
        self.openssl_sign(self.pki / "issuing.csr", "root", "v3_issuing", self.pki / "issuing.pem")
        self.openssl_sign(self.dir / "ca.csr", "issuing", "v3_intermediate", self.pki / "signed.pem")
        bundle = self.pki / "bundle.pem"
        parts = ("signed.pem", "root.pem", "issuing.pem")  # root included, issuing after it
        bundle.write_bytes(b"".join((self.pki / p).read_bytes() for p in parts))
        self.ok("ca", "install", "--dir", self.dir, bundle, "--root", self.pki / "root.pem")
        installed = x509.load_pem_x509_certificates((self.dir / "ca.pem").read_bytes())
        issuing = x509.load_pem_x509_certificate((self.pki / "issuing.pem").read_bytes())
        signed = x509.load_pem_x509_certificate((self.pki / "signed.pem").read_bytes())
        self.assertEqual(installed, [signed, issuing], "intermediate, then the chain, without the root")
        root = x509.load_pem_x509_certificate((self.pki / "root.pem").read_bytes())
        self.assertEqual(load_ca(self.dir).chain, (issuing,))
        self.assertMintedLeavesVerify(root)

    def test_install_without_root(self) -> None:
        self.openssl_sign(self.dir / "ca.csr", "root", "v3_intermediate", self.pki / "signed.pem")
        out = self.ok("ca", "install", "--dir", self.dir, self.pki / "signed.pem")
        self.assertIn("not known", out)
        self.assertFalse((self.dir / "root.pem").exists())
        self.assertIsNone(load_ca(self.dir).root)
        result = self.run_etpmitm("ca", "export", "--dir", self.dir)
        self.assertOneLineError(result, 1, "no root.pem")
        self.assertEqual(result.stdout, b"")


# -- install refusals ---------------------------------------------------------------------------


class InstallRefusalTests(CLITestCase):
    """Each refusal: non-zero exit, one line naming the reason, the directory unchanged."""

    def setUp(self) -> None:
        super().setUp()
        self.ok("ca", "csr", "--dir", self.dir, "--subject", SUBJECT)
        csr = x509.load_pem_x509_csr((self.dir / "ca.csr").read_bytes())
        public_key = csr.public_key()
        assert isinstance(public_key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey))
        self.public_key = public_key
        self.root, self.root_key = enterprise_root()
        self.root_pem = self.write("root.pem", pem(self.root))

    def write(self, name: str, data: bytes) -> Path:
        path = self.base / name
        path.write_bytes(data)
        return path

    def signed(self, **overrides: object) -> Path:
        arguments: dict[str, object] = {"extensions": ca_extensions(0)}
        arguments.update(overrides)
        public_key = arguments.pop("public_key", self.public_key)
        certificate = sign(public_key, "Signed", self.root, self.root_key, **arguments)  # type: ignore[arg-type]
        return self.write("signed.pem", pem(certificate))

    def assertRefused(self, signed: Path, *reason: str, root: Path | None = None, code: int = 1) -> None:
        before = snapshot(self.dir)
        result = self.run_etpmitm("ca", "install", "--dir", self.dir, signed, "--root", root or self.root_pem)
        self.assertOneLineError(result, code, *reason)
        self.assertEqual(result.stdout, b"")
        self.assertEqual(snapshot(self.dir), before)

    def test_control_a_good_certificate_is_accepted(self) -> None:
        """The refusals below differ from this accepted certificate in one way each."""
        self.ok("ca", "install", "--dir", self.dir, self.signed(), "--root", self.root_pem)

    def test_not_a_ca(self) -> None:
        not_ca = [(x509.BasicConstraints(ca=False, path_length=None), True)]
        self.assertRefused(self.signed(extensions=not_ca), "is not a CA", "CA:TRUE")
        self.assertRefused(self.signed(extensions=[]), "is not a CA")

    def test_wrong_key(self) -> None:
        other = ec.generate_private_key(ec.SECP256R1()).public_key()
        self.assertRefused(self.signed(public_key=other), "does not hold the public key of ca.key")

    def test_expired(self) -> None:
        now = datetime.datetime.now(UTC)
        self.assertRefused(self.signed(not_before=now - 30 * DAY, not_after=now - DAY), "has expired")

    def test_not_yet_valid(self) -> None:
        now = datetime.datetime.now(UTC)
        self.assertRefused(self.signed(not_before=now + DAY, not_after=now + 30 * DAY), "is not yet valid")

    def test_does_not_chain_to_root(self) -> None:
        stranger, _ = enterprise_root("Some Other Root")
        self.assertRefused(self.signed(), "does not chain to the root", root=self.write("other.pem", pem(stranger)))

    def test_root_must_be_a_ca(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        fake = sign(key.public_key(), "Not A Root", None, key,
                    extensions=[(x509.BasicConstraints(ca=False, path_length=None), True)])
        self.root, self.root_key = fake, key
        self.assertRefused(self.signed(), "root", "is not a CA", root=self.write("fake.pem", pem(fake)))

    def test_root_path_length_leaves_no_room(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        self.root, self.root_key = sign(key.public_key(), "Tight Root", None, key, extensions=ca_extensions(0)), key
        self.assertRefused(self.signed(), "pathlen:0", root=self.write("tight.pem", pem(self.root)))

    def test_garbage(self) -> None:
        self.assertRefused(self.write("garbage.pem", os.urandom(600)), "not a certificate")
        self.assertRefused(self.write("empty.pem", b""), "not a certificate")
        broken = b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
        self.assertRefused(self.write("broken.pem", broken), "no readable PEM certificate")
        self.assertRefused(self.signed(), "no readable PEM certificate", root=self.write("bad-root.pem", broken))

    def test_unreadable_file_is_a_usage_error(self) -> None:
        self.assertRefused(self.base / "missing.pem", f"cannot read the signed certificate {self.base}/missing.pem: ", code=2)
        self.assertRefused(self.signed(), f"cannot read --root {self.base}/nope.pem: ", root=self.base / "nope.pem", code=2)

    def test_refusal_keeps_an_installed_ca(self) -> None:
        self.ok("ca", "install", "--dir", self.dir, self.signed(), "--root", self.root_pem)
        stranger, _ = enterprise_root("Some Other Root")
        self.assertRefused(self.signed(), "does not chain", root=self.write("other.pem", pem(stranger)))
        now = datetime.datetime.now(UTC)
        self.assertRefused(self.signed(not_after=now - DAY, not_before=now - 2 * DAY), "has expired")


# -- export and show ------------------------------------------------------------------------------


class ExportShowTests(CLITestCase):
    def setUp(self) -> None:
        super().setUp()
        self.ok("ca", "init", "--dir", self.dir)
        self.root = self.certificate("root.pem")

    def test_export_pem_and_der(self) -> None:
        self.assertEqual(self.run_etpmitm("ca", "export", "--dir", self.dir).stdout, (self.dir / "root.pem").read_bytes())
        der = self.run_etpmitm("ca", "export", "--dir", self.dir, "--der").stdout
        self.assertEqual(x509.load_der_x509_certificate(der), self.root)
        self.assertEqual(der, self.root.public_bytes(serialization.Encoding.DER))

    def test_export_to_file(self) -> None:
        result = self.run_etpmitm("ca", "export", "--dir", self.dir, "--der", "-o", self.base / "root.der")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stderr, b"")
        self.assertIn(b"root.der", result.stdout)
        self.assertEqual(x509.load_der_x509_certificate((self.base / "root.der").read_bytes()), self.root)
        self.assertEqual(mode(self.base / "root.der"), 0o644)

    def test_show(self) -> None:
        load_or_create_leaf_key(self.dir, "ecdsa")
        load_or_create_leaf_key(self.dir, "rsa")
        out = self.ok("ca", "show", "--dir", self.dir)
        intermediate = self.certificate("ca.pem")
        for certificate in (intermediate, self.root):
            self.assertIn(certificate.fingerprint(hashes.SHA256()).hex(":").upper(), out)
        self.assertIn("subject:    /O=etpmitm/CN=etpmitm Intermediate CA", out)
        self.assertIn("issuer:     /O=etpmitm/CN=etpmitm Root CA", out)
        self.assertIn(f"not after:  {intermediate.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z", out)
        self.assertIn("leaf-ecdsa.key (ECDSA P-256)", out)
        self.assertIn("leaf-rsa.key (RSA 2048)", out)
        self.assertIn("status:     ok (ca.key matches ca.pem; a CA, valid now; chains to root.pem)", out)
        self.assertNotIn("PRIVATE KEY", out)
        for key_file in self.dir.glob("*.key"):
            for line in key_file.read_text().splitlines()[1:-1]:
                self.assertNotIn(line, out)

    def test_show_without_a_root_does_not_claim_the_chain(self) -> None:
        (self.dir / "root.pem").unlink()
        out = self.ok("ca", "show", "--dir", self.dir)
        self.assertIn("status:     ok", out)
        self.assertIn("no root.pem, so its chain to a root is not checked", out)
        self.assertNotIn("chains to", out)

    def test_show_and_export_default_to_the_gateways_directory(self) -> None:
        """Without --dir: the directory twistd etpmitm uses without --ca-dir, in the same environment."""
        home = self.base / "home"
        env = {k: v for k, v in os.environ.items() if k not in ("STATE_DIRECTORY", "XDG_DATA_HOME")}
        env["HOME"] = str(home)
        default = home / ".local" / "share" / "etpmitm" / "ca"
        result = self.run_etpmitm("ca", "show", env=env)
        self.assertOneLineError(result, 2, f"no CA in the gateway's default directory {default}; pass --dir")
        default.parent.mkdir(parents=True)
        self.dir.rename(default)
        shown = self.run_etpmitm("ca", "show", env=env)
        self.assertEqual(shown.returncode, 0, shown.stderr)
        self.assertIn(self.root.fingerprint(hashes.SHA256()).hex(":").upper(), shown.stdout.decode())
        self.assertEqual(self.run_etpmitm("ca", "export", env=env).stdout, (default / "root.pem").read_bytes())
        env["STATE_DIRECTORY"] = str(self.base / "state")  # as under systemd
        self.assertOneLineError(self.run_etpmitm("ca", "show", env=env), 2, str(self.base / "state" / "ca"))

    def test_show_reports_a_broken_ca(self) -> None:
        write_private_key(self.dir / "ca.key", ec.generate_private_key(ec.SECP256R1()))
        out = self.ok("ca", "show", "--dir", self.dir)
        self.assertIn("NOT USABLE", out)
        self.assertIn("does not hold the public key of ca.key", out)

    def test_show_pending_csr(self) -> None:
        pending = self.base / "pending"
        self.ok("ca", "csr", "--dir", pending, "--subject", SUBJECT)
        out = self.ok("ca", "show", "--dir", pending)
        self.assertIn("awaits", out)
        self.assertIn("/O=Example/CN=Example TLS Inspection", out)


# -- bad input -----------------------------------------------------------------------------------


class BadInputTests(CLITestCase):
    def test_usage_errors_are_one_line(self) -> None:
        missing = self.base / "missing"
        cases: list[tuple[str | Path, ...]] = [
            (),
            ("bogus",),
            ("ca",),
            ("ca", "frobnicate"),
            ("ca", "init"),
            ("ca", "init", "--dir", self.dir, "--key-type", "dsa"),
            ("ca", "init", "--dir", self.dir, "--subject", "O=no slash"),
            ("ca", "init", "--dir", self.dir, "--subject", "/XX=unknown"),
            ("ca", "init", "--dir", self.dir, "--subject", "/CN=" + "x" * 65),
            ("ca", "init", "--dir", self.dir, "--subject", "/C=USA"),
            ("ca", "init", "--dir", missing / "deeper"),
            ("ca", "init", "--dir", self.dir, "--passphrase-file", missing),
            ("ca", "csr", "--dir", self.dir),
            ("ca", "show", "--dir", missing),
            ("ca", "export", "--dir", missing),
            ("ca", "install", "--dir", missing, "signed.pem"),
            ("ca", "install", "--dir", self.base, missing),
        ]
        for args in cases:
            result = self.run_etpmitm(*args)
            self.assertOneLineError(result, 2)
            self.assertEqual(result.stdout, b"", args)
        self.assertFalse(self.dir.exists(), "nothing was created by a rejected command line")

    def test_refusals_without_a_ca(self) -> None:
        self.base.joinpath("empty").mkdir()
        self.assertOneLineError(self.run_etpmitm("ca", "show", "--dir", self.base / "empty"), 1, "holds no CA")
        self.assertOneLineError(self.run_etpmitm("ca", "export", "--dir", self.base / "empty"), 1, "no root.pem")
        signed = self.base / "signed.pem"
        signed.write_bytes(pem(enterprise_root()[0]))
        self.assertOneLineError(
            self.run_etpmitm("ca", "install", "--dir", self.base / "empty", signed), 1, "ca.key", "ca csr"
        )

    def test_help(self) -> None:
        self.assertIn("init", self.ok("ca", "--help"))


# -- loading a CA directory in the gateway -----------------------------------------------------------


class LoadCATests(TestCase):
    def setUp(self) -> None:
        from etpmitm.ca import init_own_root

        self.dir = Path(self.mktemp())
        self.created = init_own_root(self.dir)

    def test_load_matches_what_was_created(self) -> None:
        ca = load_ca(self.dir)
        self.assertEqual(ca.certificate, self.created.certificate)
        self.assertEqual(ca.root, self.created.root)
        self.assertEqual(ca.chain, ())
        self.assertEqual(ca.chain_for_tls, (ca.certificate,))
        self.assertNotIn("key=", repr(ca))

    def test_mismatched_key(self) -> None:
        write_private_key(self.dir / "ca.key", ec.generate_private_key(ec.SECP256R1()))
        self.assertIn("does not hold the public key of ca.key", str(self.assertRaises(CAError, load_ca, self.dir)))

    def test_missing_files(self) -> None:
        (self.dir / "ca.key").unlink()
        self.assertIn("no such file", str(self.assertRaises(CAError, load_ca, self.dir)))
        (self.dir / "ca.pem").unlink()
        self.assertIn("no ca.pem", str(self.assertRaises(CAError, load_ca, self.dir)))
        self.assertRaises(CAError, load_ca, self.dir / "nowhere")

    def test_expired_and_not_yet_valid(self) -> None:
        after = self.created.certificate.not_valid_after_utc + DAY
        self.assertIn("has expired", str(self.assertRaises(CAError, load_ca, self.dir, now=after)))
        before = self.created.certificate.not_valid_before_utc - DAY
        self.assertIn("not yet valid", str(self.assertRaises(CAError, load_ca, self.dir, now=before)))

    def test_root_that_did_not_sign_the_intermediate(self) -> None:
        other, _ = enterprise_root()
        (self.dir / "root.pem").write_bytes(pem(other))
        self.assertIn("does not chain to the root", str(self.assertRaises(CAError, load_ca, self.dir)))

    def test_leaf_keys_are_made_once_and_reused(self) -> None:
        first = load_or_create_leaf_key(self.dir, "ecdsa")
        self.assertEqual(mode(self.dir / "leaf-ecdsa.key"), 0o600)
        again = load_or_create_leaf_key(self.dir, "ecdsa")
        self.assertEqual(first.private_numbers(), again.private_numbers())
        rsa_key = load_or_create_leaf_key(self.dir, "rsa")
        self.assertIsInstance(rsa_key, rsa.RSAPrivateKey)
        self.assertEqual(rsa_key.key_size, 2048)
        self.assertIsInstance(first, ec.EllipticCurvePrivateKey)

    def test_an_existing_leaf_key_is_never_replaced(self) -> None:
        existing = ec.generate_private_key(ec.SECP256R1())
        write_private_key(self.dir / "leaf-ecdsa.key", existing)
        self.assertEqual(load_or_create_leaf_key(self.dir).private_numbers(), existing.private_numbers())
