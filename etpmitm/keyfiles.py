"""Key and certificate files on disk: atomic writes with safe modes, key loading.

Private keys are created 0600 from their first byte (never chmod-ed down
afterwards) in a temporary file in the target directory, fsync-ed, and then
renamed into place, so that a crash leaves either the old file or the new one.
Public files (certificates, CSRs) are written the same way with mode 0644.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import TypeAlias

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
"""The private key types etpmitm creates and accepts."""

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


class KeyFileError(Exception):
    """A key or passphrase file cannot be read or used (one-line message)."""


def write_private_key(
    path: Path,
    key: PrivateKey,
    passphrase: bytes | None = None,
    *,
    replace: bool = True,
) -> None:
    """Write ``key`` as PKCS#8 PEM, mode 0600, encrypted when a passphrase is given.

    With ``replace=False`` an existing file is never touched and
    :class:`FileExistsError` is raised instead (safe against concurrent creators).
    """
    encryption: serialization.KeySerializationEncryption
    if passphrase:
        encryption = serialization.BestAvailableEncryption(passphrase)
    else:
        encryption = serialization.NoEncryption()
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    write_file_atomically(path, data, PRIVATE_MODE, replace=replace)


def write_public_file(path: Path, data: bytes, *, replace: bool = True) -> None:
    """Write a public file (certificate, CSR) atomically with mode 0644."""
    write_file_atomically(path, data, PUBLIC_MODE, replace=replace)


def write_file_atomically(path: Path, data: bytes, mode: int, *, replace: bool = True) -> None:
    """Write ``data`` to ``path`` through a same-directory temporary file.

    The temporary file is created with O_EXCL and ``mode`` (then set exactly,
    whatever the umask), fsync-ed, and moved into place: ``os.replace`` when
    ``replace`` is true, otherwise ``os.link``, which fails if ``path`` exists.
    """
    directory = path.parent
    temporary = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(temporary, flags, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)
            os.unlink(temporary)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable; best effort where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_private_key(path: Path, passphrase: bytes | None = None) -> PrivateKey:
    """Load a PEM private key (ECDSA or RSA), decrypting it with ``passphrase`` if needed.

    Raises :class:`KeyFileError` with a one-line reason; never echoes key bytes.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such file") from None
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read: {e.strerror or e}") from None
    return parse_private_key(data, passphrase, source=str(path))


def parse_private_key(data: bytes, passphrase: bytes | None = None, *, source: str = "key") -> PrivateKey:
    """Parse PEM private key bytes; see :func:`load_private_key`."""
    try:
        key = serialization.load_pem_private_key(data, password=passphrase or None)
    except TypeError:
        if passphrase:
            # Given a passphrase for a plaintext key: accept the key as it is.
            return parse_private_key(data, None, source=source)
        raise KeyFileError(f"{source}: key is encrypted; give a passphrase (--passphrase-file)") from None
    except ValueError:
        if passphrase:
            raise KeyFileError(f"{source}: wrong passphrase or not a PEM private key") from None
        raise KeyFileError(f"{source}: not a PEM private key") from None
    except Exception:  # unsupported algorithms and the like
        raise KeyFileError(f"{source}: unreadable private key") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise KeyFileError(f"{source}: unsupported key type (need ECDSA or RSA)")
    return key


def read_passphrase_file(path: Path) -> bytes:
    """Read a passphrase: the file's first line, without its line ending; must not be empty."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"passphrase file {path}: {e.strerror or e}") from None
    passphrase = data.splitlines()[0] if data else b""
    if not passphrase:
        raise KeyFileError(f"passphrase file {path} is empty")
    return passphrase
