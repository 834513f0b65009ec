"""The gateway's leaf keys: one per kind, made on first use and reused forever after."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from etpmitm.ca.directory import CAPaths, LeafKeyKind
from etpmitm.ca.errors import CAError
from etpmitm.keyfiles import KeyFileError, PrivateKey, load_private_key, write_private_key

LEAF_KEY_KINDS: tuple[LeafKeyKind, ...] = ("ecdsa", "rsa")


def generate_leaf_key(kind: LeafKeyKind = "ecdsa") -> PrivateKey:
    """A new leaf key: ECDSA P-256, or RSA-2048."""
    if kind == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown leaf key kind {kind!r}")


def load_or_create_leaf_key(
    directory: Path,
    kind: LeafKeyKind = "ecdsa",
    passphrase: bytes | None = None,
) -> PrivateKey:
    """Load ``leaf-<kind>.key`` from ``directory``, creating it (0600) if it does not exist.

    Creation never replaces a file: if another process creates the key first,
    that key is loaded and used, so all workers share one leaf key.
    """
    path = CAPaths(directory).leaf_key(kind)
    try:
        if not path.exists():
            try:
                write_private_key(path, generate_leaf_key(kind), passphrase, replace=False)
            except FileExistsError:
                pass  # another process won the race: use its key
            except OSError as e:
                raise CAError(f"{path}: cannot create: {e.strerror or e}") from None
        return load_private_key(path, passphrase)
    except KeyFileError as e:
        raise CAError(str(e)) from None
