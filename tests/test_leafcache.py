"""Tests for etpmitm.leafcache: the bounded LRU and the caching LeafMinter."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from etpmitm.ca import init_own_root, load_or_create_leaf_key
from etpmitm.leafcache import LeafMinter
from etpmitm.lru import LRUCache
from etpmitm.mint import MintError
from tests.test_mint import make_origin


class LRUCacheTests(TestCase):
    def test_get_counts_hits_and_misses(self) -> None:
        cache: LRUCache[str, int] = LRUCache(2)
        self.assertIsNone(cache.get("a"))
        cache.put("a", 1)
        self.assertEqual(cache.get("a"), 1)
        self.assertEqual((cache.hits, cache.misses), (1, 1))
        self.assertEqual(len(cache), 1)
        self.assertEqual(cache.maxsize, 2)

    def test_evicts_least_recently_used(self) -> None:
        cache: LRUCache[str, int] = LRUCache(3)
        for i, key in enumerate("abc"):
            cache.put(key, i)
        cache.get("a")  # a is now the most recently used; b the least
        cache.put("d", 3)
        self.assertEqual(cache.keys(), ["c", "a", "d"])
        self.assertNotIn("b", cache.keys())
        self.assertEqual(cache.evictions, 1)
        self.assertEqual(len(cache), 3)

    def test_put_refreshes_an_existing_key(self) -> None:
        cache: LRUCache[str, int] = LRUCache(2)
        cache.put("a", 1)
        cache.put("b", 2)
        cache.put("a", 10)
        cache.put("c", 3)
        self.assertEqual(cache.keys(), ["a", "c"])
        self.assertEqual(cache.get("a"), 10)

    def test_maxsize_must_be_positive(self) -> None:
        self.assertRaises(ValueError, LRUCache, 0)

    @given(
        maxsize=st.integers(min_value=1, max_value=5),
        operations=st.lists(st.tuples(st.sampled_from(["get", "put"]), st.integers(0, 8)), max_size=60),
    )
    def test_matches_a_reference_model(self, maxsize: int, operations: list[tuple[str, int]]) -> None:
        cache: LRUCache[int, int] = LRUCache(maxsize)
        model: list[tuple[int, int]] = []  # least recently used first
        hits = misses = 0
        for step, (operation, key) in enumerate(operations):
            found = [value for k, value in model if k == key]
            if operation == "get":
                self.assertEqual(cache.get(key), found[0] if found else None)
                if found:
                    hits += 1
                    model = [entry for entry in model if entry[0] != key] + [(key, found[0])]
                else:
                    misses += 1
            else:
                cache.put(key, step)
                model = [entry for entry in model if entry[0] != key] + [(key, step)]
                model = model[-maxsize:]
            self.assertEqual(cache.keys(), [k for k, _ in model])
            self.assertLessEqual(len(cache), maxsize)
        self.assertEqual((cache.hits, cache.misses), (hits, misses))


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime.datetime.now(datetime.timezone.utc).timestamp()

    def __call__(self) -> float:
        return self.now


class LeafMinterTests(TestCase):
    def setUp(self) -> None:
        directory = Path(self.mktemp())
        self.ca = init_own_root(directory)
        self.clock = FakeClock()
        self.minter = LeafMinter.create(self.ca, load_or_create_leaf_key(directory), maxsize=3, clock=self.clock)

    def test_hit_returns_the_same_object(self) -> None:
        first = self.minter.leaf_for(("www.example.com", "example.com"))
        self.assertIs(self.minter.leaf_for(["www.example.com", "example.com"]), first)
        self.assertEqual(self.minter.minted, 1)
        self.assertEqual(self.minter.cache.hits, 1)

    def test_different_names_or_order_make_different_leaves(self) -> None:
        first = self.minter.leaf_for(("a.example", "b.example"))
        self.assertIsNot(self.minter.leaf_for(("b.example", "a.example")), first)
        self.assertIsNot(self.minter.leaf_for(("a.example",)), first)
        self.assertEqual(self.minter.minted, 3)

    def test_mimicked_organization_is_part_of_the_key(self) -> None:
        names = ("www.example.com",)
        acme = make_origin(san=[x509.DNSName("www.example.com")], organization="Acme")
        acme_again = make_origin(san=[x509.DNSName("www.example.com")], organization="Acme")
        other = make_origin(san=[x509.DNSName("www.example.com")], organization="Other")
        bare = make_origin(san=[x509.DNSName("www.example.com")])
        leaf = self.minter.leaf_for(names, acme)
        self.assertIs(self.minter.leaf_for(names, acme_again), leaf, "same copied fields, same leaf")
        self.assertIsNot(self.minter.leaf_for(names, other), leaf)
        self.assertIs(self.minter.leaf_for(names, bare), self.minter.leaf_for(names), "no O behaves as no mimic")
        organization = leaf.certificate.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)
        self.assertEqual([a.value for a in organization], ["Acme"])

    def test_cache_is_bounded_and_evicts_least_recently_used(self) -> None:
        leaves = {name: self.minter.leaf_for((name,)) for name in ("a.example", "b.example", "c.example")}
        self.minter.leaf_for(("a.example",))
        self.minter.leaf_for(("d.example",))
        self.assertEqual(len(self.minter.cache), 3)
        self.assertIs(self.minter.leaf_for(("a.example",)), leaves["a.example"])
        self.assertIsNot(self.minter.leaf_for(("b.example",)), leaves["b.example"], "b was evicted and re-minted")

    def test_renews_a_day_before_expiry(self) -> None:
        leaf = self.minter.leaf_for(("a.example",))
        expires = leaf.not_after.timestamp()
        self.clock.now = expires - 86400 - 1
        self.assertIs(self.minter.leaf_for(("a.example",)), leaf)
        self.clock.now = expires - 86400 + 1
        renewed = self.minter.leaf_for(("a.example",))
        self.assertIsNot(renewed, leaf)
        self.assertGreater(renewed.not_after, leaf.not_after)

    def test_mint_errors_are_not_cached(self) -> None:
        self.assertRaises(MintError, self.minter.leaf_for, ("bad..example",))
        self.assertEqual(len(self.minter.cache), 0)
