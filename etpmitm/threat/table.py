"""A compact, shareable look-up table of listed names: sorted 64-bit keyed hashes.

A table file is a 64-byte header (magic, a 16-byte random BLAKE2b key, the
two counts) and two sorted arrays of 64-bit hashes: listed domains, then URL
keys (``host/path``, :func:`etpmitm.threat.lists.url_key`).  A million
domains take 8 MB; the master builds the file once and every worker maps it
read-only, so the pages are shared.  A look-up hashes each suffix of a name
at a label boundary (``a.b.example``, ``b.example``, ``example``) and
binary-searches for it: O(labels x log n), about 20 probes for a million.

Hashes are not verified against the names.  Two different names share a
64-bit hash with probability 2^-64, so with a million entries a look-up of
a 4-label name hits a name that is not listed with odds of about
4 x 10^6 / 1.8 x 10^19, about 2 x 10^-13: never, in practice.  The key is
random per table, so nobody can craft a name that collides on purpose.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from pathlib import Path

__all__ = ["HashTable", "Hashes", "build_table", "new_key", "write_table"]

MAGIC = b"ETPMTL01"
_HEADER = struct.Struct("<8s16sQQ")
HEADER_SIZE = 64
_blake2b = hashlib.blake2b


class Hashes:
    """A sink for :func:`etpmitm.threat.lists.read_entries` that keeps only 8 bytes per entry."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._data = bytearray()

    def append(self, entry: bytes, /) -> None:
        self._data += _blake2b(entry, digest_size=8, key=self._key).digest()

    def extend(self, entries: list[bytes], /) -> None:
        key = self._key
        self._data += b"".join([_blake2b(entry, digest_size=8, key=key).digest() for entry in entries])

    def sorted(self) -> array[int]:
        """The hashes as sorted native 64-bit integers (this sink is emptied)."""
        words = array("Q")
        words.frombytes(self._data)
        self._data = bytearray()
        values = words.tolist()
        del words
        values.sort()
        return array("Q", values)


def new_key() -> bytes:
    return os.urandom(16)


def _header(key: bytes, domains: array[int], urls: array[int]) -> bytes:
    return _HEADER.pack(MAGIC, key, len(domains), len(urls)).ljust(HEADER_SIZE, b"\0")


def build_table(domains: Iterable[bytes], urls: Iterable[bytes] = (), key: bytes | None = None) -> bytes:
    """The table file's bytes for these entries (for tests and small lists)."""
    key = new_key() if key is None else key
    names, paths = Hashes(key), Hashes(key)
    for name in domains:
        names.append(name)
    for path in urls:
        paths.append(path)
    words, more = names.sorted(), paths.sorted()
    return _header(key, words, more) + words.tobytes() + more.tobytes()


def write_table(path: Path, key: bytes, domains: array[int], urls: array[int]) -> None:
    """Write a table file atomically (a temporary file renamed), mode 0600."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_header(key, domains, urls))
            domains.tofile(f)
            urls.tofile(f)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


class HashTable:
    """A table over bytes or a read-only memory map (:meth:`open`)."""

    def __init__(self, buffer: bytes | mmap.mmap) -> None:
        if len(buffer) < HEADER_SIZE:
            raise ValueError("not a threat list table: too short")
        magic, key, domains, urls = _HEADER.unpack_from(buffer)
        if magic != MAGIC or len(buffer) != HEADER_SIZE + 8 * (domains + urls):
            raise ValueError("not a threat list table, or a damaged one")
        self._buffer = buffer
        self._key = key
        words = memoryview(buffer)[HEADER_SIZE:].cast("Q")
        self._domains = words[:domains]
        self._urls = words[domains:]

    @classmethod
    def open(cls, path: Path) -> HashTable:
        """Map a table file read-only (raises OSError or ValueError)."""
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise ValueError("not a threat list table: empty")
            return cls(mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ))

    @property
    def domains(self) -> int:
        return len(self._domains)

    @property
    def urls(self) -> int:
        return len(self._urls)

    def _hash(self, data: bytes) -> int:
        return int.from_bytes(_blake2b(data, digest_size=8, key=self._key).digest(), sys.byteorder)

    @staticmethod
    def _has(words: memoryview, value: int) -> bool:
        i = bisect_left(words, value)
        return i < len(words) and bool(words[i] == value)

    def domain(self, name: str) -> str | None:
        """The listed domain that *name* is, or is below; None if none is.

        *name* is lower-case A-labels without a trailing dot (or an address).
        """
        if not self._domains:
            return None
        data = name.encode("ascii", "replace")
        start = 0
        while True:
            if self._has(self._domains, self._hash(data[start:])):
                return name[start:]
            dot = data.find(b".", start)
            if dot < 0:
                return None
            start = dot + 1

    def url(self, host: str, path: str) -> str | None:
        """The listed ``host/path`` prefix of this request, or None.

        *path* is normalised (:func:`etpmitm.policy.urls.normalise_path`);
        it is tried at every ``/`` boundary and whole.
        """
        if not self._urls:
            return None
        base = host.encode("ascii", "replace")
        raw = path.encode("utf-8", "surrogateescape")
        end = raw.find(b"/", 1)
        while True:
            prefix = raw if end < 0 else raw[:end]
            if prefix.rstrip(b"/") and self._has(self._urls, self._hash(base + prefix.rstrip(b"/"))):
                return host + prefix.rstrip(b"/").decode("utf-8", "surrogateescape")
            if end < 0:
                return None
            end = raw.find(b"/", end + 1)
