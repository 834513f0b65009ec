"""Keeping minted leaves: a bounded LRU cache, and :class:`LeafMinter`, which mints through it.

Single-threaded by design (one reactor thread); not safe for concurrent use.
"""

from __future__ import annotations

import datetime
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeAlias, TypeVar

import attrs
from cryptography import x509

from etpmitm.ca.directory import CertificateAuthority
from etpmitm.keyfiles import PrivateKey
from etpmitm.mint import LeafIssuer, LeafName, MimicFields, MintedLeaf

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, not {value}")


@attrs.define
class LRUCache(Generic[K, V]):
    """A mapping of at most ``maxsize`` entries that drops the least recently used first.

    :meth:`get` and :meth:`get_or_create` count hits and misses and make the entry
    the most recently used; values must not be ``None``.
    """

    maxsize: int = attrs.field(validator=_positive)
    hits: int = attrs.field(default=0, init=False)
    misses: int = attrs.field(default=0, init=False)
    evictions: int = attrs.field(default=0, init=False)
    _entries: OrderedDict[K, V] = attrs.field(factory=OrderedDict, init=False, repr=False)

    def get(self, key: K) -> V | None:
        """The value for ``key`` (now most recently used), or None."""
        try:
            value = self._entries[key]
        except KeyError:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: K, value: V) -> None:
        """Store ``value`` as the most recently used entry, evicting the oldest if full."""
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)
            self.evictions += 1

    def get_or_create(self, key: K, factory: Callable[[], V]) -> V:
        """The cached value, or ``factory()`` stored and returned (nothing is stored if it raises)."""
        value = self.get(key)
        if value is None:
            value = factory()
            self.put(key, value)
        return value

    def pop(self, key: K) -> V | None:
        """Remove and return the entry for ``key``, if any (not counted)."""
        return self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        """Membership without counting or refreshing."""
        return key in self._entries

    def keys(self) -> list[K]:
        """Keys from least to most recently used."""
        return list(self._entries)


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
            return entry.leaf
        leaf = self.issuer.mint(key[0], fields, datetime.datetime.fromtimestamp(now, datetime.timezone.utc))
        self.minted += 1
        expires = leaf.not_after.timestamp()
        renew_at = expires - self.renew_before
        self.cache.put(key, _Entry(leaf, renew_at if renew_at > now else expires))
        return leaf
