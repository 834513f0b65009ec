"""Table files on disk: building one from a list file, and the manifest workers map.

The process that builds (the master with ``--workers``, else the gateway
itself) writes each list's table into a private directory (mode 0700, files
0600) and a ``manifest.json`` naming them, replaced atomically.  Workers map
the tables the manifest names (:func:`read_manifest`): a worker adds only the
pages it touches, shared with the others, instead of parsing the file itself.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import attrs

from etpmitm.policy.listspec import LIST_ACTIONS, ListSpec
from etpmitm.threat.judge import ThreatList, ThreatLists
from etpmitm.threat.lists import ListError, read_entries
from etpmitm.threat.table import Hashes, HashTable, new_key, write_table

__all__ = ["Built", "MANIFEST", "build", "read_manifest", "stamp", "write_manifest"]

MANIFEST = "manifest.json"
Stamp = tuple[int, int, int]


def stamp(path: Path) -> Stamp:
    """What says a list file changed: modification time, size, inode (raises OSError)."""
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size, st.st_ino


@attrs.frozen
class Built:
    """One list, built and mapped."""

    spec: ListSpec
    stamp: Stamp
    table: Path
    loaded: ThreatList
    domains: int
    urls: int
    skipped: int
    seconds: float

    def describe(self) -> str:
        return (f"threat list {self.spec.name!r} ({self.spec.action}) from {self.spec.file}: "
                f"{self.domains} domains, {self.urls} URLs, {self.skipped} hosts-file lines skipped, "
                f"loaded in {self.seconds:.2f}s")


def build(spec: ListSpec, directory: Path, serial: int) -> Built:
    """Read, parse and hash *spec*'s file into a table file in *directory*, and map it.

    Raises :class:`ListError` (``FILE[:LINE]: problem``).  Safe in a thread.
    """
    started = time.monotonic()
    source = str(spec.file)
    key = new_key()
    names, urls = Hashes(key), Hashes(key)
    try:
        before = stamp(spec.file)
        with open(spec.file, "rb") as f:
            skipped = read_entries(iter(lambda: f.read(1 << 20), b""), source, names, urls)
    except OSError as e:
        raise ListError(source, None, f"cannot read threat list {spec.name!r}: {e.strerror or e}") from None
    path = directory / f"{serial}.table"
    try:
        write_table(path, key, names.sorted(), urls.sorted())
        table = HashTable.open(path)
    except (OSError, ValueError) as e:
        raise ListError(source, None, f"cannot write its table {path}: {e}") from None
    loaded = ThreatList(spec.name, spec.action, table, source)
    return Built(spec, before, path, loaded, table.domains, table.urls, skipped,
                 time.monotonic() - started)


def write_manifest(directory: Path, built: list[Built]) -> Path:
    """Name the tables in force, in policy order; replaced atomically."""
    entries = [{"name": b.spec.name, "action": b.spec.action, "source": str(b.spec.file), "table": b.table.name}
               for b in built]
    path = directory / MANIFEST
    tmp = directory / (MANIFEST + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(entries, f)
    os.replace(tmp, path)
    return path


def read_manifest(path: Path) -> ThreatLists:
    """Map the tables a manifest names (raises OSError or ValueError)."""
    entries = json.loads(path.read_text())
    if not isinstance(entries, list):
        raise ValueError("the manifest is not a list")
    lists = []
    for entry in entries:
        if not (isinstance(entry, dict) and set(entry) == {"name", "action", "source", "table"}
                and all(isinstance(v, str) for v in entry.values()) and entry["action"] in LIST_ACTIONS
                and "/" not in entry["table"]):
            raise ValueError(f"bad manifest entry {str(entry)[:200]}")
        table = HashTable.open(path.parent / entry["table"])
        lists.append(ThreatList(entry["name"], entry["action"], table, entry["source"]))
    return ThreatLists(tuple(lists))
