"""Verdicts on origin certificates from recorded verification errors."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from etpmitm.origintrust import ChainError, judge, weak_crypto
from tests.pki import Authority, issue_sha1


class JudgeTests(SynchronousTestCase):
    def test_trusted(self) -> None:
        verdict = judge([], None)
        self.assertTrue(verdict.trusted)

    def test_kinds(self) -> None:
        cases = {
            (10, 0): "expired",
            (9, 0): "not-yet-valid",
            (18, 0): "self-signed",
            (19, 1): "unknown-root",
            (20, 0): "incomplete-chain",
            (20, 1): "unknown-root",
            (21, 0): "incomplete-chain",
            (999, 0): "chain-error",
        }
        for (code, depth), kind in cases.items():
            verdict = judge([ChainError(depth=depth, code=code)], None)
            self.assertFalse(verdict.trusted)
            self.assertEqual(verdict.kind, kind, (code, depth))
            self.assertIn(f"depth {depth}", verdict.reason)

    def test_chainBeforeName(self) -> None:
        """The first chain error wins over later ones and over the name."""
        verdict = judge([ChainError(0, 10), ChainError(0, 18)], "wrong name")
        self.assertEqual(verdict.kind, "expired")

    def test_wrongHost(self) -> None:
        verdict = judge([], "certificate does not match a.example")
        self.assertEqual((verdict.trusted, verdict.kind), (False, "wrong-host"))
        self.assertEqual(verdict.reason, "certificate does not match a.example")


class WeakCryptoTests(SynchronousTestCase):
    def test_sha1AndSmallKeys(self) -> None:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.x509.oid import NameOID

        def cert(key: object, signer: object, algorithm: hashes.HashAlgorithm) -> x509.Certificate:
            now = datetime.datetime.now(datetime.timezone.utc)
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")])
            issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")])
            return (
                x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                .public_key(key.public_key())  # type: ignore[attr-defined]
                .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                .sign(signer, algorithm)  # type: ignore[arg-type]
            )

        ca = rsa.generate_private_key(65537, 2048)
        good = cert(ec.generate_private_key(ec.SECP256R1()), ca, hashes.SHA256())
        self.assertIsNone(weak_crypto([good]))
        work = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, work)
        sha1, _ = issue_sha1(Authority("Legacy"), ["legacy.example"], work)
        verdict = weak_crypto([sha1])
        assert verdict is not None
        self.assertEqual((verdict.trusted, verdict.kind), (False, "weak-signature"))
        self.assertIn("SHA1", verdict.reason)
        small = rsa.generate_private_key(65537, 1024)
        verdict = weak_crypto([cert(small, ca, hashes.SHA256())])
        assert verdict is not None
        self.assertEqual((verdict.kind, verdict.reason), ("weak-key", "1024-bit key (depth 0)"))
        # A self-signed anchor is not judged by its own (irrelevant) signature.
        anchor = x509.load_pem_x509_certificate(subprocess.run(
            ["openssl", "req", "-x509", "-sha1", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", str(work / "anchor.key"), "-subj", "/CN=anchor", "-days", "1"],
            check=True, capture_output=True).stdout)
        self.assertIsNone(weak_crypto([good, anchor]))
        # Weak crypto comes first (OpenSSL may report a SHA-1 signature as a
        # missing issuer), then chain errors, then the name.
        self.assertEqual(judge([ChainError(0, 20)], "x", weak_crypto([sha1])).kind, "weak-signature")
        self.assertEqual(judge([ChainError(0, 10)], "x", weak_crypto([good])).kind, "expired")
        self.assertEqual(judge([], "wrong", weak_crypto([sha1])).kind, "weak-signature")
