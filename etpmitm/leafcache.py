"""Keeping minted leaves: :class:`LeafMinter` mints through a bounded LRU cache.

Single-threaded by design (one reactor thread); not safe for concurrent use.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Sequence
from typing import TypeAlias

import attrs
from cryptography import x509

from etpmitm import metrics
from etpmitm.ca.directory import CertificateAuthority
from etpmitm.keyfiles import PrivateKey
from etpmitm.lru import LRUCache
from etpmitm.mint import LeafIssuer, LeafName, MimicFields, MintedLeaf

LeafKey: TypeAlias = tuple[tuple[LeafName, ...], MimicFields]
"""Cache key of a leaf: the names as given, and the fields copied from the origin."""


@attrs.frozen
class _Entry:
    leaf: MintedLeaf
    renew_at: float


@attrs.define
class LeafMinter:
    """Mints leaves for one CA and leaf key, reusing them while they stay fresh.

    A hit costs building a small tuple and a dictionary lookup: no signature, no
    parsing, no encoding, and it returns the very same :class:`MintedLeaf`. A
    leaf is re-minted ``renew_before`` seconds before it expires (or at expiry,
    if it was minted closer to its end than that).
    """

    issuer: LeafIssuer
    cache: LRUCache[LeafKey, _Entry]
    clock: Callable[[], float] = time.time
    renew_before: float = 86400.0
    minted: int = attrs.field(default=0, init=False)

    @classmethod
    def create(
        cls,
        ca: CertificateAuthority,
        leaf_key: PrivateKey,
        maxsize: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> LeafMinter:
        return cls(LeafIssuer(ca, leaf_key), LRUCache(maxsize), clock)

    def leaf_for(self, names: Sequence[LeafName], mimic: x509.Certificate | None = None) -> MintedLeaf:
        """A leaf for ``names`` mimicking ``mimic``: cached if fresh, else minted and cached."""
        fields = MimicFields.of(mimic)
        key: LeafKey = (tuple(names), fields)
        now = self.clock()
        entry = self.cache.get(key)
        if entry is not None and now < entry.renew_at:
            metrics.current.leafCache(hit=True)
            return entry.leaf
        metrics.current.leafCache(hit=False)
        leaf = self.issuer.mint(key[0], fields, datetime.datetime.fromtimestamp(now, datetime.timezone.utc))
        self.minted += 1
        metrics.current.leafMinted()
        expires = leaf.not_after.timestamp()
        renew_at = expires - self.renew_before
        self.cache.put(key, _Entry(leaf, renew_at if renew_at > now else expires))
        return leaf
