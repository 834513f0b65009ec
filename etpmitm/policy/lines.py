"""Where things are in a TOML document, for error messages.

tomllib gives values without positions.  :class:`KeyLines` scans the source
of a document that tomllib has accepted and records the line on which each
table header and each ``key =`` starts, under the key's path: ``("origin",
"untrusted")``, and for arrays of tables the element's 0-based index:
``("rule", 1, "action")``.  Keys inside inline tables and multi-line arrays
are not recorded; :meth:`KeyLines.line` then falls back to the nearest
enclosing key or header that is.
"""

from __future__ import annotations

import re
import tomllib

__all__ = ["KeyLines", "Path"]

Path = tuple[str | int, ...]

_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*"|'[^'\n]*')"""
_KEY = rf"{_PART}(?:[ \t]*\.[ \t]*{_PART})*"
_ARRAY_TABLE = re.compile(rf"[ \t]*\[\[[ \t]*({_KEY})[ \t]*\]\]")
_TABLE = re.compile(rf"[ \t]*\[[ \t]*({_KEY})[ \t]*\]")
_KEY_VALUE = re.compile(rf"[ \t]*({_KEY})[ \t]*=")
_BARE_DOTTED = re.compile(r"[A-Za-z0-9_.\s-]+")


class KeyLines:
    """Line numbers (1-based) of the headers and keys of a valid TOML document."""

    def __init__(self, text: str) -> None:
        self._lines: dict[Path, int] = {}
        self._counts: dict[Path, int] = {}  # array of tables -> elements so far
        self._table: Path = ()
        self._depth = 0  # open [ and { of the current value
        self._string: str | None = None  # the open multi-line string's delimiter
        for number, line in enumerate(text.split("\n"), 1):
            self._scan(number, line)

    def line(self, path: Path) -> int:
        """The line of *path*, else of its nearest recorded ancestor, else 1."""
        while path:
            found = self._lines.get(path)
            if found is not None:
                return found
            path = path[:-1]
        return 1

    def _scan(self, number: int, line: str) -> None:
        start = 0
        if self._string is None and self._depth == 0:
            start = self._statement(number, line)
        self._lex(line, start)

    def _statement(self, number: int, line: str) -> int:
        """Record a header or key starting *line*; return where its value starts."""
        if m := _ARRAY_TABLE.match(line):
            keys = _key_path(m.group(1))
            if keys:
                array = (*self._resolve(keys[:-1]), keys[-1])
                index = self._counts.get(array, 0)
                self._counts[array] = index + 1
                self._table = (*array, index)
                self._record(self._table, number)
            return len(line)
        if m := _TABLE.match(line):
            keys = _key_path(m.group(1))
            if keys:
                self._table = self._resolve(keys)
                self._record(self._table, number)
            return len(line)
        if m := _KEY_VALUE.match(line):
            keys = _key_path(m.group(1))
            if keys:
                self._record((*self._table, *keys), number)
            return m.end()
        return 0

    def _resolve(self, keys: tuple[str, ...]) -> Path:
        """A header's path, with the current element index after each array of tables."""
        path: Path = ()
        for key in keys:
            path = (*path, key)
            count = self._counts.get(path)
            if count is not None:
                path = (*path, count - 1)
        return path

    def _record(self, path: Path, number: int) -> None:
        for end in range(1, len(path) + 1):
            self._lines.setdefault(path[:end], number)

    def _lex(self, line: str, i: int) -> None:
        """Track brackets and multi-line strings; skip strings and comments."""
        n = len(line)
        while i < n:
            delim = self._string
            if delim is not None:
                if delim == '"""' and line[i] == "\\":
                    i += 2
                elif line.startswith(delim, i):
                    j = i
                    while j < n and line[j] == delim[0]:
                        j += 1
                    self._string = None
                    i = j
                else:
                    i += 1
                continue
            c = line[i]
            if c == "#":
                return
            if c in "[{":
                self._depth += 1
            elif c in "]}":
                self._depth = max(0, self._depth - 1)
            elif c in "\"'":
                if line.startswith(c * 3, i):
                    self._string = c * 3
                    i += 3
                    continue
                i += 1
                while i < n and line[i] != c:
                    i += 2 if c == '"' and line[i] == "\\" else 1
            i += 1


def _key_path(text: str) -> tuple[str, ...]:
    """The parts of a (possibly dotted, possibly quoted) key; () if unreadable."""
    if _BARE_DOTTED.fullmatch(text):
        return tuple(part.strip() for part in text.split("."))
    try:
        table = tomllib.loads(f"{text} = 0")
    except (ValueError, RecursionError):
        return ()
    keys: list[str] = []
    value: object = table
    while isinstance(value, dict) and len(value) == 1:
        key, value = next(iter(value.items()))
        keys.append(key)
    return tuple(keys)
