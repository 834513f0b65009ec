"""A bounded mapping that forgets the least recently used entry first."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

import attrs

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, not {value}")


@attrs.define
class LRUCache(Generic[K, V]):
    """A mapping of at most ``maxsize`` entries that drops the least recently used first.

    :meth:`get` counts hits and misses and makes the entry the most recently
    used; values must not be ``None``.
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

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[K]:
        """Keys from least to most recently used."""
        return list(self._entries)
