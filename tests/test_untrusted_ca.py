"""Tests for etpmitm.ca.untrusted: the CA that signs leaves for unverifiable origins, trusted by nobody."""

from __future__ import annotations

from typing import Any

import datetime
import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.trial.unittest import TestCase

from etpmitm.ca import CAError, init_own_root, load_or_create_leaf_key, load_or_create_untrusted_ca
from etpmitm.ca.show import fingerprint
from etpmitm.ca.untrusted import UNTRUSTED_CN, UntrustedPaths, _create
from etpmitm.keyfiles import write_private_key
from etpmitm.ca.certfiles import certificates_pem
from tests.test_ca_cli import ETPMITM, CLITestCase, mode, snapshot
from tests.test_mint import extension, mint_leaf, openssl_verify_leaf, pem, python_ssl_handshake


REPO = Path(__file__).resolve().parent.parent
DAY = datetime.timedelta(days=1)


class UntrustedTestCase(TestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).absolute()
        self.real = init_own_root(self.dir)
        self.paths = UntrustedPaths(self.dir)

    def assertOneLineCAError(self, *needles: str, passphrase: bytes | None = None) -> None:
        error = self.assertRaises(CAError, load_or_create_untrusted_ca, self.dir, passphrase)
        message = str(error)
        self.assertNotIn("\n", message)
        for needle in needles:
            self.assertIn(needle, message)


class CreationTests(UntrustedTestCase):
    def test_files_and_modes(self) -> None:
        load_or_create_untrusted_ca(self.dir)
        self.assertEqual(sorted(p.name for p in self.paths.directory.iterdir()), ["ca.key", "ca.pem"])
        self.assertEqual(mode(self.paths.directory), 0o700)
        self.assertEqual(mode(self.paths.key), 0o600)
        self.assertEqual(mode(self.paths.cert), 0o644)
        self.assertEqual([p.name for p in self.dir.iterdir() if p.name.startswith(".")], [], "staging left behind")
        self.assertIn(b"BEGIN PRIVATE KEY", self.paths.key.read_bytes())

    def test_certificate(self) -> None:
        ca = load_or_create_untrusted_ca(self.dir)
        certificate = ca.certificate
        self.assertEqual(x509.load_pem_x509_certificate(self.paths.cert.read_bytes()), certificate)
        self.assertEqual((ca.chain, ca.root, ca.chain_for_tls), ((), None, (certificate,)))
        constraints = extension(certificate, x509.BasicConstraints)
        self.assertTrue(constraints.critical)
        self.assertEqual((constraints.value.ca, constraints.value.path_length), (True, 0))
        usage = extension(certificate, x509.KeyUsage)
        self.assertTrue(usage.critical)
        self.assertTrue(usage.value.key_cert_sign and usage.value.crl_sign)
        self.assertFalse(usage.value.digital_signature)
        self.assertEqual(
            extension(certificate, x509.SubjectKeyIdentifier).value,
            x509.SubjectKeyIdentifier.from_public_key(ca.key.public_key()),
        )
        self.assertEqual(certificate.subject.rfc4514_string(), f"CN={UNTRUSTED_CN},O=etpmitm")
        self.assertIn("UNTRUSTED", UNTRUSTED_CN)
        self.assertEqual(certificate.issuer, certificate.subject)
        certificate.verify_directly_issued_by(certificate)
        public_key = certificate.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        self.assertEqual(public_key.curve.name, "secp256r1")
        lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
        self.assertTrue(3640 * DAY < lifetime < 3660 * DAY, lifetime)
        for real in (self.real.certificate, self.real.root):
            assert real is not None
            self.assertNotEqual(real.public_key(), public_key)

    def test_reuses_the_real_organization(self) -> None:
        other = Path(self.mktemp()).absolute()
        init_own_root(other, "/O=Example Corp/CN=Example Root CA")
        subject = load_or_create_untrusted_ca(other).certificate.subject
        self.assertEqual(subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value, "Example Corp")
        self.assertEqual(subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value, UNTRUSTED_CN)

    def test_idempotent(self) -> None:
        first = load_or_create_untrusted_ca(self.dir)
        files = snapshot(self.dir)
        second = load_or_create_untrusted_ca(self.dir)
        self.assertEqual(second.certificate, first.certificate)
        self.assertEqual(second.key.private_numbers(), first.key.private_numbers())
        self.assertEqual(snapshot(self.dir), files)

    def test_losing_the_race_keeps_the_winner(self) -> None:
        """A creator that finds untrusted/ already there discards its own CA."""
        winner = load_or_create_untrusted_ca(self.dir)
        files = snapshot(self.dir)
        _create(self.paths, None, None)  # what a slower process does after its exists() check
        self.assertEqual(snapshot(self.dir), files)
        self.assertEqual(load_or_create_untrusted_ca(self.dir).certificate, winner.certificate)

    def test_concurrent_processes_agree(self) -> None:
        code = (
            "import sys; from pathlib import Path; "
            "from etpmitm.ca import load_or_create_untrusted_ca; from etpmitm.ca.show import fingerprint; "
            "print(fingerprint(load_or_create_untrusted_ca(Path(sys.argv[1])).certificate))"
        )
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        processes = [
            subprocess.Popen([sys.executable, "-c", code, str(self.dir)], stdout=subprocess.PIPE, env=env)
            for _ in range(6)
        ]
        outputs = {p.communicate(timeout=60)[0].decode().strip() for p in processes}
        self.assertEqual([p.returncode for p in processes], [0] * 6)
        self.assertEqual(outputs, {fingerprint(load_or_create_untrusted_ca(self.dir).certificate)})
        self.assertEqual([p.name for p in self.dir.iterdir() if p.name.startswith(".")], [])

    def test_passphrase(self) -> None:
        ca = load_or_create_untrusted_ca(self.dir, b"secret")
        self.assertIn(b"ENCRYPTED PRIVATE KEY", self.paths.key.read_bytes())
        self.assertEqual(load_or_create_untrusted_ca(self.dir, b"secret").certificate, ca.certificate)
        self.assertOneLineCAError("encrypted")
        self.assertOneLineCAError("wrong passphrase", passphrase=b"wrong")


class RefusalTests(UntrustedTestCase):
    def setUp(self) -> None:
        super().setUp()
        load_or_create_untrusted_ca(self.dir)

    def test_missing_ca_directory(self) -> None:
        self.dir = self.dir / "missing"
        self.assertOneLineCAError("no such directory")

    def test_key_does_not_match(self) -> None:
        self.paths.key.unlink()
        write_private_key(self.paths.key, ec.generate_private_key(ec.SECP256R1()))
        self.assertOneLineCAError("does not hold the public key of untrusted/ca.key")

    def test_missing_certificate(self) -> None:
        self.paths.cert.unlink()
        self.assertOneLineCAError("ca.pem: no such file")

    def test_expired(self) -> None:
        later = datetime.datetime.now(datetime.timezone.utc) + 4000 * DAY
        error = self.assertRaises(CAError, load_or_create_untrusted_ca, self.dir, now=later)
        self.assertIn("has expired", str(error))

    def test_a_certificate_under_the_real_root_is_refused(self) -> None:
        """ca.pem (signed by the trusted root) put in its place is not self-signed: refused."""
        shutil.copy(self.dir / "ca.pem", self.paths.cert)
        shutil.copy(self.dir / "ca.key", self.paths.key)
        self.assertOneLineCAError("is not self-signed")

    def test_the_real_root_is_refused(self) -> None:
        shutil.copy(self.dir / "root.pem", self.paths.cert)
        shutil.copy(self.dir / "root.key", self.paths.key)
        self.assertOneLineCAError("has the key of root.pem", "would be trusted")

    def test_not_a_ca(self) -> None:
        leaf_key = load_or_create_leaf_key(self.dir)
        leaf = mint_leaf(self.real, leaf_key, ["x.example"])
        self.paths.cert.write_bytes(certificates_pem((leaf.certificate,)))
        self.assertOneLineCAError("is not a CA")


class VerificationTests(UntrustedTestCase):
    """A leaf from the untrusted CA is a valid certificate that only its own CA accepts."""

    def setUp(self) -> None:
        super().setUp()
        self.untrusted = load_or_create_untrusted_ca(self.dir)
        self.leaf = mint_leaf(self.untrusted, load_or_create_leaf_key(self.dir), ["x.example"])
        self.work = Path(self.mktemp())

    def test_leaf_is_issued_by_the_untrusted_ca(self) -> None:
        self.assertEqual(self.leaf.certificate.issuer, self.untrusted.certificate.subject)
        self.assertEqual(self.leaf.chain, (self.untrusted.certificate,))

    def test_openssl_rejects_it_against_the_real_root(self) -> None:
        assert self.real.root is not None
        result = openssl_verify_leaf(self.work / "real", self.real.root, self.leaf, "x.example")
        self.assertNotEqual(result.returncode, 0, result.stdout)
        self.assertIn("self-signed certificate in certificate chain", result.stdout + result.stderr)

    def test_openssl_accepts_it_against_the_untrusted_ca(self) -> None:
        result = openssl_verify_leaf(self.work / "untrusted", self.untrusted.certificate, self.leaf, "x.example")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("leaf.pem: OK", result.stdout)

    def test_python_tls_client(self) -> None:
        assert self.real.root is not None
        self.assertRaises(
            ssl.SSLCertVerificationError, python_ssl_handshake, self.work / "a", self.real.root, self.leaf, "x.example"
        )
        python_ssl_handshake(self.work / "b", self.untrusted.certificate, self.leaf, "x.example")


class SourceCLITestCase(CLITestCase):
    """The installed ``etpmitm`` command importing this source tree (the installed copy may be older)."""

    def run_etpmitm(self, *args: str | Path, binary: bool = False) -> subprocess.CompletedProcess[bytes]:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        return subprocess.run(
            [ETPMITM, *map(str, args)], capture_output=True, cwd=self.base, env=env, timeout=120
        )


class CLITests(SourceCLITestCase):
    def setUp(self) -> None:
        super().setUp()
        self.ok("ca", "init", "--dir", self.dir)
        self.untrusted = load_or_create_untrusted_ca(self.dir).certificate

    def test_export_never_outputs_the_untrusted_ca(self) -> None:
        untrusted_der = self.untrusted.public_bytes(serialization.Encoding.DER)
        exported_pem = self.ok("ca", "export", "--dir", self.dir).encode()
        exported_der = self.run_etpmitm("ca", "export", "--dir", self.dir, "--der").stdout
        self.assertEqual(exported_pem, (self.dir / "root.pem").read_bytes())
        self.assertNotEqual(exported_pem, pem(self.untrusted))
        self.assertNotIn(pem(self.untrusted), exported_pem)
        self.assertNotEqual(exported_der, untrusted_der)
        self.assertEqual(x509.load_der_x509_certificate(exported_der), self.certificate("root.pem"))

    def test_export_refuses_the_untrusted_ca_as_root(self) -> None:
        shutil.copy(UntrustedPaths(self.dir).cert, self.dir / "root.pem")
        for extra in ((), ("--der",)):
            result = self.run_etpmitm("ca", "export", "--dir", self.dir, *extra)
            self.assertOneLineError(result, 1, "untrusted CA")
            self.assertEqual(result.stdout, b"")

    def test_show_lists_it_as_never_exported(self) -> None:
        out = self.ok("ca", "show", "--dir", self.dir)
        self.assertIn("untrusted CA (untrusted/ca.pem; never exported, trusted by no device):", out)
        self.assertIn(fingerprint(self.untrusted), out)
        self.assertIn(f"root (root.pem):\n  subject:    /O=etpmitm/CN=etpmitm Root CA", out)
        self.assertIn("status:     ok", out)
        self.assertNotIn("PRIVATE KEY", out)
