"""Reading the policy file: TOML in, a checked :class:`Policy` out.

Every problem becomes a :class:`PolicyError` whose ``str()`` is one line,
``FILE:LINE: problem``.  Unknown tables and keys are errors, so that a typo
is never silently ignored.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import NoReturn, TypeVar

from etpmitm.policy.decide import (
    ACTIONS,
    ECH_MODES,
    LEARNING_SCOPES,
    NON_TLS_MODES,
    UNTRUSTED_MODES,
    LearningSettings,
    Policy,
    Rule,
)
from etpmitm.icap.settings import ICAP_KEYS, IcapSettings, parse_icap
from etpmitm.policy.listspec import LIST_ACTIONS, ListSpec
from etpmitm.policy.urls import parse_url_pattern
from etpmitm.policy.lines import KeyLines
from etpmitm.policy.lines import Path as KeyPath
from etpmitm.policy.patterns import IPNetwork, PatternError, parse_network, parse_pattern

__all__ = ["PolicyError", "load_policy", "parse_policy"]

T = TypeVar("T")
S = TypeVar("S", bound=str)

_SECTIONS: dict[str, Collection[str]] = {
    "origin": ("untrusted",),
    "traffic": ("non_tls", "ech"),
    "learning": ("enabled", "failures", "window", "ttl", "max_entries", "scope", "min_clients"),
    "inspect": ("http", "strip_quic", "max_headers"),
    "audit": ("query",),
    "icap": ICAP_KEYS,
}
_RULE_KEYS = ("match", "urls", "methods", "action", "ports", "clients", "name")
_MAX_HEADERS = 10_000
_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_LIST_KEYS = ("name", "file", "action")
_TOP_LEVEL = (*_SECTIONS, "rule", "list")
_DEFAULT_LEARNING = LearningSettings()
_LONG_NUMBER = re.compile(r"[0-9_]{4000,}")
_TOML_WHERE = re.compile(r"\s*\((?:at line (\d+), column (\d+)|at end of document)\)$")


class PolicyError(Exception):
    """A policy that cannot be used.  ``str()`` is one line: ``FILE:LINE: problem``."""

    def __init__(self, source: str, line: int | None, problem: str) -> None:
        super().__init__(source, line, problem)
        self.source = source
        self.line = line
        self.problem = problem

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return " ".join(f"{where}: {self.problem}".splitlines())


def load_policy(path: Path) -> Policy:
    """Read and parse the policy file at *path*."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PolicyError(str(path), None, f"cannot read the policy: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise PolicyError(str(path), line, f"not UTF-8 (byte 0x{data[e.start]:02x})") from None
    return parse_policy(text, str(path), path.parent)


def parse_policy(text: str, source: str = "policy", base: Path | None = None) -> Policy:
    """Parse and check a policy document; *source* names it in error messages.

    A relative ``[[list]] file`` is relative to *base* (the policy file's
    directory), else to the working directory.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        m = _TOML_WHERE.search(message)
        if m is None:
            line = None
        elif m.group(1):
            line, message = int(m.group(1)), f"{message[: m.start()]} (column {m.group(2)})"
        else:
            line, message = len(text.rstrip().split("\n")), f"{message[: m.start()]} (at the end of the file)"
        raise PolicyError(source, line, f"TOML syntax error: {message}") from None
    except ValueError as e:  # e.g. an integer beyond Python's digit limit
        long = _LONG_NUMBER.search(text)
        line = None if long is None else text.count("\n", 0, long.start()) + 1
        raise PolicyError(source, line, f"TOML syntax error: {str(e).partition(';')[0]}") from None
    except RecursionError:
        raise PolicyError(source, None, "TOML syntax error: nested too deeply") from None
    return _Checker(source, KeyLines(text), base).policy(document)


class _Checker:
    """Turns the parsed document into a :class:`Policy`, or raises at the first problem."""

    def __init__(self, source: str, lines: KeyLines, base: Path | None = None) -> None:
        self._source = source
        self._lines = lines
        self._base = base

    def fail(self, path: KeyPath, problem: str) -> NoReturn:
        if len(path) >= 2 and path[0] in ("rule", "list") and isinstance(path[1], int):
            problem = f"{path[0]} {path[1] + 1}: {problem}"
        elif len(path) >= 2 and path[0] in _SECTIONS:
            problem = f"[{path[0]}] {problem}"
        raise PolicyError(self._source, self._lines.line(path), problem)

    def policy(self, document: Mapping[str, object]) -> Policy:
        for key, value in document.items():
            if key not in _TOP_LEVEL:
                what = f"table [{key}]" if isinstance(value, dict) else f"key {key!r}"
                self.fail((key,), f"unknown {what}{_suggest(key, _TOP_LEVEL, '[{}]')}")
        origin = self.section(document, "origin")
        traffic = self.section(document, "traffic")
        learning = self.section(document, "learning")
        inspect = self.section(document, "inspect")
        audit = self.section(document, "audit")
        return Policy(
            untrusted=self.choice(origin, ("origin", "untrusted"), UNTRUSTED_MODES, "block"),
            non_tls=self.choice(traffic, ("traffic", "non_tls"), NON_TLS_MODES, "passthrough"),
            ech=self.choice(traffic, ("traffic", "ech"), ECH_MODES, "intercept"),
            learning=self.learning(learning),
            rules=self.rules(document.get("rule", [])),
            inspect_http=self.flag(inspect, ("inspect", "http"), True),
            strip_quic=self.flag(inspect, ("inspect", "strip_quic"), True),
            max_headers=self.max_headers(inspect),
            audit_query=self.flag(audit, ("audit", "query"), False),
            icap=self.icap(document),
            lists=self.lists(document.get("list", [])),
        )

    def icap(self, document: Mapping[str, object]) -> IcapSettings | None:
        if "icap" not in document:
            return None
        return parse_icap(self.section(document, "icap"), lambda key, problem: self.fail(("icap", key), problem))

    def section(self, document: Mapping[str, object], name: str) -> dict[str, object]:
        table = document.get(name, {})
        if not isinstance(table, dict):
            self.fail((name,), f"{name} must be a table, written [{name}]")
        self.known_keys(table, (name,), _SECTIONS[name])
        return table

    def known_keys(self, table: Mapping[str, object], path: KeyPath, known: Collection[str]) -> None:
        for key in table:
            if key not in known:
                self.fail((*path, key), f"unknown key {key!r}{_suggest(key, known, '{!r}')}")

    def choice(
        self, table: Mapping[str, object], path: KeyPath, choices: tuple[S, ...], default: S
    ) -> S:
        value = table.get(str(path[-1]), default)
        for choice in choices:
            if value == choice and isinstance(value, str):
                return choice
        self.fail(path, f"{path[-1]} must be {_either(choices)}, not {_show(value)}")

    def flag(self, table: Mapping[str, object], path: KeyPath, default: bool) -> bool:
        value = table.get(str(path[-1]), default)
        if not isinstance(value, bool):
            self.fail(path, f"{path[-1]} must be true or false, not {_show(value)}")
        return value

    def max_headers(self, table: Mapping[str, object]) -> int:
        value = table.get("max_headers", 100)
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= _MAX_HEADERS:
            return value
        self.fail(("inspect", "max_headers"), f"max_headers must be an integer from 1 to {_MAX_HEADERS}, not {_show(value)}")

    def learning(self, table: Mapping[str, object]) -> LearningSettings:
        enabled = table.get("enabled", True)
        if not isinstance(enabled, bool):
            self.fail(("learning", "enabled"), f"enabled must be true or false, not {_show(enabled)}")
        scope = self.choice(table, ("learning", "scope"), LEARNING_SCOPES, _DEFAULT_LEARNING.scope)
        if scope == "all" and "min_clients" in table:
            self.fail(("learning", "min_clients"), 'min_clients applies only with scope = "client"')
        return LearningSettings(
            enabled=enabled,
            failures=self.count(table, "failures", 1000),
            window=self.seconds(table, "window"),
            ttl=self.seconds(table, "ttl"),
            max_entries=self.count(table, "max_entries", 10_000_000),
            scope=scope,
            min_clients=self.count(table, "min_clients", 1000),
        )

    def count(self, table: Mapping[str, object], key: str, most: int) -> int:
        value = table.get(key, getattr(_DEFAULT_LEARNING, key))
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= most:
            return value
        self.fail(("learning", key), f"{key} must be an integer from 1 to {most}, not {_show(value)}")

    def seconds(self, table: Mapping[str, object], key: str) -> float:
        value = table.get(key, getattr(_DEFAULT_LEARNING, key))
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                seconds = float(value)
            except OverflowError:
                seconds = math.inf
            if 0 < seconds < math.inf:
                return seconds
        self.fail(("learning", key), f"{key} must be a positive number of seconds, not {_show(value)}")

    def rules(self, value: object) -> tuple[Rule, ...]:
        if not isinstance(value, list):
            self.fail(("rule",), "rules must be written as [[rule]] tables")
        rules = []
        for index, table in enumerate(value):
            if not isinstance(table, dict):
                self.fail(("rule", index), "must be a table, written [[rule]]")
            rules.append(self.rule(table, index))
        return tuple(rules)

    def lists(self, value: object) -> tuple[ListSpec, ...]:
        if not isinstance(value, list):
            self.fail(("list",), "threat lists must be written as [[list]] tables")
        specs: list[ListSpec] = []
        for index, table in enumerate(value):
            path: KeyPath = ("list", index)
            if not isinstance(table, dict):
                self.fail(path, "must be a table, written [[list]]")
            self.known_keys(table, path, _LIST_KEYS)
            for key in ("name", "file", "action"):
                if key not in table:
                    self.fail(path, f"{key} is missing")
                if key != "action" and (not isinstance(table[key], str) or not table[key]):
                    self.fail((*path, key), f"{key} must be a non-empty string, not {_show(table[key])}")
            name = table["name"]
            if any(spec.name == name for spec in specs):
                self.fail((*path, "name"), f"another list is already named {_show(name)}")
            file = Path(table["file"])
            if not file.is_absolute() and self._base is not None:
                file = self._base / file
            action = self.choice(table, (*path, "action"), LIST_ACTIONS, "block")
            specs.append(ListSpec(name, file, action, self._lines.line(path)))
        return tuple(specs)

    def rule(self, table: Mapping[str, object], index: int) -> Rule:
        path: KeyPath = ("rule", index)
        self.known_keys(table, path, _RULE_KEYS)
        request = "urls" in table or "methods" in table
        if "match" not in table and not request:
            self.fail(path, "match is missing (or urls or methods, for a request rule)")
        if "action" not in table:
            self.fail(path, f"action is missing ({_either(ACTIONS)})")
        name = table.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            self.fail((*path, "name"), f"name must be a non-empty string, not {_show(name)}")
        action = self.choice(table, (*path, "action"), ACTIONS, "intercept")
        if request and action == "bypass":
            self.fail((*path, "action"), "bypass applies to whole connections, not to requests: "
                      "a rule with urls or methods can only block or intercept (allow)")
        match = table.get("match")
        return Rule(
            match=() if match is None else tuple(self.strings(match, (*path, "match"), "pattern", parse_pattern)),
            action=action,
            ports=self.ports(table.get("ports"), (*path, "ports")),
            clients=self.clients(table.get("clients"), (*path, "clients")),
            name=name,
            number=index + 1,
            line=self._lines.line(path),
            urls=self.optional(table, (*path, "urls"), "URL pattern", parse_url_pattern),
            methods=self.methods(table.get("methods"), (*path, "methods")),
        )

    def optional(
        self, table: Mapping[str, object], path: KeyPath, what: str, parse: Callable[[str], T]
    ) -> tuple[T, ...] | None:
        if str(path[-1]) not in table:
            return None
        return tuple(self.strings(table[str(path[-1])], path, what, parse))

    def methods(self, value: object, path: KeyPath) -> frozenset[str] | None:
        if value is None:
            return None
        methods = self.strings(value, path, "method", str)
        for method in methods:
            if not _METHOD.fullmatch(method):
                self.fail(path, f"methods holds {_show(method)}, not an HTTP method (a token such as \"POST\")")
            if method != method.upper():
                self.fail(path, f"methods are case-sensitive and upper case: write {_show(method.upper())}, not {_show(method)}")
        return frozenset(methods)

    def strings(
        self, items: object, path: KeyPath, what: str, parse: Callable[[str], T]
    ) -> list[T]:
        """A non-empty array of strings, each parsed by *parse*."""
        key = path[-1]
        if not isinstance(items, list):
            self.fail(path, f"{key} must be an array of strings, like [\"...\"], not {_show(items)}")
        if not items:
            self.fail(path, f"{key} is empty")
        parsed = []
        for item in items:
            if not isinstance(item, str):
                self.fail(path, f"{key} holds {_show(item)}, not a string")
            try:
                parsed.append(parse(item))
            except PatternError as e:
                self.fail(path, f"bad {what} {_show(item)} in {key}: {_clip(str(e), 200)}")
        return parsed

    def ports(self, value: object, path: KeyPath) -> frozenset[int] | None:
        if value is None:
            return None
        if not isinstance(value, list):
            self.fail(path, f"ports must be an array, like [443], not {_show(value)}")
        if not value:
            self.fail(path, "ports is empty (leave it out to match every port)")
        for port in value:
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                self.fail(path, f"ports holds {_show(port)}, not a port number (1-65535)")
        return frozenset(value)

    def clients(self, value: object, path: KeyPath) -> tuple[IPNetwork, ...] | None:
        if value is None:
            return None
        return tuple(self.strings(value, path, "client address", parse_network))


def _either(choices: tuple[str, ...]) -> str:
    if len(choices) == 1:
        return choices[0]
    return ", ".join(choices[:-1]) + f" or {choices[-1]}"


def _show(value: object) -> str:
    """A value as the operator would recognise it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return _clip(repr(value))
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


def _clip(text: str, most: int = 80) -> str:
    return text if len(text) <= most else text[: most - 3] + "..."


def _suggest(key: str, known: Collection[str], form: str) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    if close:
        return f" (did you mean {form.format(close[0])}?)"
    return " (expected " + _either(tuple(form.format(k) for k in known)) + ")"

