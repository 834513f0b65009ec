"""Tests for etpmitm.keyfiles: atomic writes with the right modes, and key loading."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.trial.unittest import TestCase

from etpmitm.keyfiles import (
    KeyFileError,
    load_private_key,
    read_passphrase_file,
    write_private_key,
    write_public_file,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def public_der(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class KeyFileTestCase(TestCase):
    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.directory.mkdir()
        self.key = ec.generate_private_key(ec.SECP256R1())

    def with_umask(self, umask: int) -> None:
        old = os.umask(umask)
        self.addCleanup(os.umask, old)

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.directory.iterdir() if p.name.startswith("."))


class WriteTests(KeyFileTestCase):
    def test_private_key_is_0600_even_with_a_permissive_umask(self) -> None:
        self.with_umask(0)
        path = self.directory / "a.key"
        write_private_key(path, self.key)
        self.assertEqual(mode(path), 0o600)
        self.assertEqual(self.leftovers(), [])

    def test_private_key_file_is_never_created_with_wider_permissions(self) -> None:
        """The temporary file is opened with mode 0600 (not chmod-ed afterwards)."""
        self.with_umask(0)
        opened: list[tuple[int, int]] = []
        real_open = os.open

        def spy(path: str | os.PathLike[str], flags: int, mode: int = 0o777, **kwargs: object) -> int:
            opened.append((flags, mode))
            return real_open(path, flags, mode)

        self.patch(os, "open", spy)
        write_private_key(self.directory / "a.key", self.key)
        flags, created_mode = opened[0]
        self.assertEqual(created_mode, 0o600)
        self.assertTrue(flags & os.O_CREAT and flags & os.O_EXCL)

    def test_public_file_is_0644_even_with_a_strict_umask(self) -> None:
        self.with_umask(0o077)
        path = self.directory / "a.pem"
        write_public_file(path, b"public\n")
        self.assertEqual(mode(path), 0o644)
        self.assertEqual(path.read_bytes(), b"public\n")

    def test_replace_installs_a_new_file_with_the_private_mode(self) -> None:
        path = self.directory / "a.key"
        path.write_bytes(b"old")
        path.chmod(0o644)
        write_private_key(path, self.key)
        self.assertEqual(mode(path), 0o600)
        self.assertEqual(public_der(load_private_key(path)), public_der(self.key))

    def test_no_replace_refuses_an_existing_file(self) -> None:
        path = self.directory / "a.key"
        path.write_bytes(b"keep me")
        self.assertRaises(FileExistsError, write_private_key, path, self.key, replace=False)
        self.assertEqual(path.read_bytes(), b"keep me")
        self.assertEqual(self.leftovers(), [])

    def test_failed_write_leaves_no_temporary_file(self) -> None:
        def broken_fsync(fd: int) -> None:
            raise OSError(5, "Input/output error")

        self.patch(os, "fsync", broken_fsync)
        path = self.directory / "a.key"
        self.assertRaises(OSError, write_private_key, path, self.key)
        self.assertFalse(path.exists())
        self.assertEqual(self.leftovers(), [])

    def test_passphrase_encrypts(self) -> None:
        path = self.directory / "a.key"
        write_private_key(path, self.key, b"s3cret")
        self.assertIn(b"-----BEGIN ENCRYPTED PRIVATE KEY-----", path.read_bytes())
        self.assertEqual(public_der(load_private_key(path, b"s3cret")), public_der(self.key))


class LoadTests(KeyFileTestCase):
    def test_round_trip_ecdsa_and_rsa(self) -> None:
        cases: list[tuple[str, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, type]] = [
            ("ec.key", self.key, ec.EllipticCurvePrivateKey),
            ("rsa.key", rsa.generate_private_key(65537, 2048), rsa.RSAPrivateKey),
        ]
        for name, key, kind in cases:
            path = self.directory / name
            write_private_key(path, key)
            loaded = load_private_key(path)
            self.assertIsInstance(loaded, kind)
            self.assertEqual(public_der(loaded), public_der(key))

    def test_encrypted_key_without_passphrase(self) -> None:
        path = self.directory / "a.key"
        write_private_key(path, self.key, b"s3cret")
        error = self.assertRaises(KeyFileError, load_private_key, path)
        self.assertIn("encrypted", str(error))

    def test_wrong_passphrase(self) -> None:
        path = self.directory / "a.key"
        write_private_key(path, self.key, b"s3cret")
        error = self.assertRaises(KeyFileError, load_private_key, path, b"wrong")
        self.assertIn("wrong passphrase", str(error))

    def test_passphrase_for_a_plain_key_is_ignored(self) -> None:
        path = self.directory / "a.key"
        write_private_key(path, self.key)
        self.assertEqual(public_der(load_private_key(path, b"unused")), public_der(self.key))

    def test_missing_garbage_and_unsupported(self) -> None:
        self.assertIn("no such file", str(self.assertRaises(KeyFileError, load_private_key, self.directory / "none")))
        garbage = self.directory / "garbage.key"
        garbage.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
        self.assertIn("not a PEM private key", str(self.assertRaises(KeyFileError, load_private_key, garbage)))
        edwards = self.directory / "ed25519.key"
        edwards.write_bytes(
            ed25519.Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        self.assertIn("unsupported key type", str(self.assertRaises(KeyFileError, load_private_key, edwards)))

    def test_errors_do_not_echo_key_material(self) -> None:
        path = self.directory / "a.key"
        write_private_key(path, self.key, b"s3cret")
        body = path.read_bytes().splitlines()[1].decode()
        for passphrase in (None, b"wrong"):
            message = str(self.assertRaises(KeyFileError, load_private_key, path, passphrase))
            self.assertNotIn(body, message)
            self.assertNotIn("PRIVATE KEY", message)
            self.assertNotIn("\n", message)


class PassphraseFileTests(KeyFileTestCase):
    def test_first_line_without_line_ending(self) -> None:
        path = self.directory / "pass"
        path.write_bytes(b"correct horse\r\nsecond line\n")
        self.assertEqual(read_passphrase_file(path), b"correct horse")

    def test_empty_or_missing(self) -> None:
        empty = self.directory / "empty"
        empty.write_bytes(b"\n")
        self.assertRaises(KeyFileError, read_passphrase_file, empty)
        self.assertRaises(KeyFileError, read_passphrase_file, self.directory / "missing")
