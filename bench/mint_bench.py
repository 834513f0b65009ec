"""Leaf minting cost: a cache miss (build + sign) versus a cache hit, in microseconds per leaf.

Run from the repository root:  .venv/bin/python bench/mint_bench.py [--seconds 1.0]

Rows vary the leaf key (ECDSA P-256 / RSA-2048) and the intermediate's key,
which is what actually signs and so sets most of the cost.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from etpmitm.ca import CAKeyType, init_own_root, load_or_create_leaf_key  # noqa: E402
from etpmitm.ca.directory import LeafKeyKind  # noqa: E402
from etpmitm.leafcache import LeafMinter  # noqa: E402
from etpmitm.mint import LeafIssuer, MimicFields  # noqa: E402


def origin_certificate(organization: str) -> x509.Certificate:
    """A throwaway origin certificate with an O to mimic."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
        x509.NameAttribute(NameOID.COMMON_NAME, "www.example.com"),
    ])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def per_op_microseconds(operation: Callable[[], object], seconds: float) -> tuple[float, int]:
    """Best of 5 timeit runs, each sized to last about ``seconds`` / 5."""
    timer = timeit.Timer(operation)
    number, elapsed = timer.autorange()
    number = max(1, int(number * (seconds / 5) / max(elapsed, 1e-9)))
    best = min(timer.repeat(repeat=5, number=number))
    return best / number * 1e6, number * 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time budget per measurement")
    options = parser.parse_args()

    cases: list[tuple[CAKeyType, LeafKeyKind]] = [
        ("ecdsa-p256", "ecdsa"),
        ("ecdsa-p256", "rsa"),
        ("ecdsa-p384", "ecdsa"),
        ("rsa-3072", "ecdsa"),
    ]
    names = ("www.example.com", "example.com", "static.example.com")
    print(f"{'intermediate':<13} {'leaf key':<9} {'operation':<34} {'us/op':>10} {'ops':>8}")
    with tempfile.TemporaryDirectory() as temporary:
        for index, (ca_key_type, leaf_kind) in enumerate(cases):
            directory = Path(temporary) / str(index)
            ca = init_own_root(directory, key_type=ca_key_type)
            leaf_key = load_or_create_leaf_key(directory, leaf_kind)
            minter = LeafMinter.create(ca, leaf_key, maxsize=1 << 20)
            counter = itertools.count()

            def miss() -> object:  # a new name every time: always a cache miss
                return minter.leaf_for((f"host{next(counter)}.example.com", *names))

            origin = origin_certificate("Example Inc")
            minter.leaf_for(names)
            minter.leaf_for(names, origin)
            rows = [
                ("LeafIssuer.mint (no cache)", lambda: LeafIssuer(ca, leaf_key).mint(names, MimicFields.of(None))),
                ("LeafMinter.leaf_for, miss", miss),
                ("LeafMinter.leaf_for, hit", lambda: minter.leaf_for(names)),
                ("LeafMinter.leaf_for, hit + mimic O", lambda: minter.leaf_for(names, origin)),
            ]
            for label, operation in rows:
                microseconds, count = per_op_microseconds(operation, options.seconds)
                print(f"{ca_key_type:<13} {leaf_kind:<9} {label:<34} {microseconds:>10.1f} {count:>8}")


if __name__ == "__main__":
    main()
