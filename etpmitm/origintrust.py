"""Judge an origin's certificate from what the TLS handshake reported.

Sans-IO: the glue records OpenSSL's chain-verification errors and the
host-name check; this module turns them into a verdict with a reason that an
operator (and, later, a block page) can show.
"""

from __future__ import annotations

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, rsa

# X509_V_ERR_* codes from openssl/x509_vfy.h, with the kind of failure each
# stands for.  Kinds are stable identifiers for logs and policy.
_CHAIN_ERRORS: dict[int, tuple[str, str]] = {
    2: ("unknown-issuer", "unable to get issuer certificate"),
    4: ("bad-signature", "unable to decrypt certificate signature"),
    7: ("bad-signature", "certificate signature failure"),
    9: ("not-yet-valid", "certificate is not yet valid"),
    10: ("expired", "certificate has expired"),
    13: ("malformed", "format error in certificate's notBefore field"),
    14: ("malformed", "format error in certificate's notAfter field"),
    18: ("self-signed", "self-signed certificate"),
    19: ("unknown-root", "self-signed certificate in chain (untrusted root)"),
    20: ("unknown-issuer", "unable to get local issuer certificate (unknown root or incomplete chain)"),
    21: ("incomplete-chain", "unable to verify the first certificate (incomplete chain)"),
    22: ("chain-too-long", "certificate chain too long"),
    23: ("revoked", "certificate revoked"),
    24: ("invalid-ca", "invalid CA certificate"),
    25: ("path-length", "path length constraint exceeded"),
    26: ("invalid-purpose", "unsupported certificate purpose"),
    27: ("untrusted", "certificate not trusted"),
    28: ("rejected", "certificate rejected"),
    47: ("name-constraints", "permitted subtree violation"),
    66: ("weak-key", "end-entity key too small"),
    67: ("weak-key", "CA key too small"),
    68: ("weak-signature", "CA signature digest algorithm too weak"),
}


_UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20


@attrs.frozen
class ChainError:
    """One failure OpenSSL reported while verifying the origin's chain."""

    depth: int
    code: int

    @property
    def kind(self) -> str:
        if self.code == _UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
            # The leaf's issuer is missing: the origin left out its
            # intermediate.  Higher up, the chain ends at an unknown CA.
            return "incomplete-chain" if self.depth == 0 else "unknown-root"
        return _CHAIN_ERRORS.get(self.code, ("chain-error", ""))[0]

    def describe(self) -> str:
        text = _CHAIN_ERRORS.get(self.code, ("", f"verify error {self.code}"))[1]
        return f"{text} (depth {self.depth})"


@attrs.frozen
class OriginVerdict:
    """Whether the origin proved its identity, and if not, why."""

    trusted: bool
    kind: str = "ok"
    reason: str = "verified"


TRUSTED = OriginVerdict(True)


MIN_RSA_BITS = 2048
_WEAK_HASHES = (hashes.SHA1, hashes.MD5)


def weak_crypto(chain: list[x509.Certificate]) -> OriginVerdict | None:
    """A verdict against SHA-1/MD5 signatures or keys under 2048 bits, if any.

    Self-signed certificates (trust anchors the origin sent along) are not
    judged by their own signature, only by their key.
    """
    for depth, certificate in enumerate(chain):
        key = certificate.public_key()
        if isinstance(key, (rsa.RSAPublicKey, dsa.DSAPublicKey)) and key.key_size < MIN_RSA_BITS:
            return OriginVerdict(False, "weak-key", f"{key.key_size}-bit key (depth {depth})")
        if certificate.issuer == certificate.subject:
            continue
        try:
            algorithm = certificate.signature_hash_algorithm
        except UnsupportedAlgorithm:
            continue
        if isinstance(algorithm, _WEAK_HASHES):
            return OriginVerdict(False, "weak-signature", f"signed with {algorithm.name.upper()} (depth {depth})")
    return None


def judge(chain_errors: list[ChainError], name_error: str | None, weak: OriginVerdict | None = None) -> OriginVerdict:
    """Weak signatures or keys (see :func:`weak_crypto`) first: OpenSSL reports
    a SHA-1 signature it will not check as a missing issuer.  Then chain
    errors (the first reported is the most telling), then the name."""
    if weak is not None:
        return weak
    if chain_errors:
        first = chain_errors[0]
        return OriginVerdict(False, first.kind, first.describe())
    if name_error is not None:
        return OriginVerdict(False, "wrong-host", name_error)
    return TRUSTED
