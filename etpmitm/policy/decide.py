"""The policy in force and the per-connection decision: intercept, bypass or block.

Sans-IO and fast: :class:`Policy` indexes its rules' patterns when it is made,
so :meth:`Policy.decide` costs a few dictionary look-ups however many rules
there are, and still honours first-match-wins.  :meth:`Policy.decide_request`
(:mod:`etpmitm.policy.request`) decides single HTTP requests the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import attrs

from etpmitm.http import RequestHead, RequestVerdict
from etpmitm.icap.settings import IcapSettings
from etpmitm.policy.listspec import ListSpec
from etpmitm.policy.patterns import (
    HostPattern,
    IPAddress,
    IPNetwork,
    NetworkPattern,
    Pattern,
    WildcardPattern,
    normalise_name,
    unmap,
)
from etpmitm.policy.request import RequestRules
from etpmitm.policy.urls import UrlPattern

__all__ = [
    "DEFAULT_POLICY",
    "Action",
    "Decision",
    "ECHMode",
    "LearningScope",
    "LearningSettings",
    "NonTLSMode",
    "Policy",
    "Rule",
    "UntrustedMode",
]

Action = Literal["intercept", "bypass", "block"]
UntrustedMode = Literal["block", "untrusted", "bypass"]
NonTLSMode = Literal["passthrough", "close"]
ECHMode = Literal["intercept", "bypass", "close"]
LearningScope = Literal["client", "all"]

ACTIONS: tuple[Action, ...] = ("intercept", "bypass", "block")
UNTRUSTED_MODES: tuple[UntrustedMode, ...] = ("block", "untrusted", "bypass")
NON_TLS_MODES: tuple[NonTLSMode, ...] = ("passthrough", "close")
ECH_MODES: tuple[ECHMode, ...] = ("intercept", "bypass", "close")
LEARNING_SCOPES: tuple[LearningScope, ...] = ("client", "all")


@attrs.frozen
class Rule:
    """One ``[[rule]]``: which connections (or, with ``urls``/``methods``, which
    requests) it matches and what to do with them."""

    match: tuple[Pattern, ...]
    """Empty only in a request rule."""
    action: Action = attrs.field(validator=attrs.validators.in_(ACTIONS))
    ports: frozenset[int] | None = None
    """Destination ports; None for every port."""
    clients: tuple[IPNetwork, ...] | None = None
    """Device source networks; None for every device."""
    name: str | None = None
    number: int = 0
    """1-based position in the policy file (0 for rules made in code)."""
    line: int = 0
    """Line of the ``[[rule]]`` header."""
    urls: tuple[UrlPattern, ...] | None = None
    """Request URL patterns (:mod:`etpmitm.policy.urls`); None: not a URL filter."""
    methods: frozenset[str] | None = None
    """Request methods, exact upper-case tokens; None: every method."""

    def __attrs_post_init__(self) -> None:
        if self.is_request_rule and self.action == "bypass":
            raise ValueError(f"{self.describe()}: bypass applies to connections, not to requests")
        if not self.match and not self.is_request_rule:
            raise ValueError(f"{self.describe()}: a connection rule needs match patterns")

    @property
    def is_request_rule(self) -> bool:
        """A rule with ``urls`` or ``methods``: it decides on requests, never on connections."""
        return self.urls is not None or self.methods is not None

    def describe(self) -> str:
        """``rule 3 (line 17)``, with the rule's name if it has one."""
        name = f" {self.name!r}" if self.name else ""
        return f"rule {self.number}{name} (line {self.line})"

    def applies(self, port: int, client: IPAddress) -> bool:
        """Whether the ``ports`` and ``clients`` filters let this connection through."""
        if self.ports is not None and port not in self.ports:
            return False
        return self.clients is None or any(client in net for net in self.clients)


@attrs.frozen
class Decision:
    """What to do with one connection, and why (for the audit log)."""

    action: Action
    rule: Rule | None
    """The rule that matched; None for the default and for ECH modes."""
    reason: str
    category: str | None = None
    """The threat list that matched, if any (:mod:`etpmitm.threat.judge`)."""


@attrs.frozen
class LearningSettings:
    """``[learning]``: when to bypass (SNI, destination) pairs that fail interception.

    See :class:`etpmitm.learning.LearnedBypass` for what each setting means.
    """

    enabled: bool = True
    failures: int = 2
    window: float = 300.0
    ttl: float = 3600.0
    max_entries: int = 10000
    scope: LearningScope = attrs.field(default="client", validator=attrs.validators.in_(LEARNING_SCOPES))
    """"client": a bypass applies to the device that taught it, and to every
    device once ``min_clients`` devices failed; "all": to every device at once."""
    min_clients: int = 3


_NO_MATCH = Decision("intercept", None, "no rule matched")

# Rule positions with the pattern text that can match there, in rule order.
_Hits = list[tuple[int, str]]


class _Index:
    """The rules' patterns keyed for look-up."""

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        self.names: dict[str, _Hits] = {}
        self.suffixes: dict[str, _Hits] = {}  # "*.x.example" is under ".x.example"
        tables: dict[tuple[int, int], dict[int, _Hits]] = {}
        host_rules = []
        for pos, rule in enumerate(rules):
            if rule.is_request_rule:
                continue
            for pattern in rule.match:
                if isinstance(pattern, HostPattern):
                    self.names.setdefault(pattern.name, []).append((pos, pattern.text))
                elif isinstance(pattern, WildcardPattern):
                    suffix = "." + pattern.domain
                    self.suffixes.setdefault(suffix, []).append((pos, pattern.text))
                else:
                    net = pattern.network
                    table = tables.setdefault((net.version, int(net.netmask)), {})
                    table.setdefault(int(net.network_address), []).append((pos, pattern.text))
            if any(not isinstance(p, NetworkPattern) for p in rule.match):
                host_rules.append(pos)
        self.host_rules = tuple(host_rules)
        # version -> [(netmask, {network address: hits})]
        self.networks: dict[int, list[tuple[int, dict[int, _Hits]]]] = {4: [], 6: []}
        for (version, mask), table in sorted(tables.items()):
            self.networks[version].append((mask, table))

    def by_name(self, name: str) -> Iterator[tuple[int, str]]:
        yield from self.names.get(name, ())
        if self.suffixes:
            dot = name.find(".")
            while dot >= 0:
                yield from self.suffixes.get(name[dot:], ())
                dot = name.find(".", dot + 1)

    def by_address(self, address: IPAddress) -> Iterator[tuple[int, str]]:
        value = int(address)
        for mask, table in self.networks[address.version]:
            yield from table.get(value & mask, ())


def _make_index(policy: Policy) -> _Index:
    return _Index(policy.rules)


def _make_request_rules(policy: Policy) -> RequestRules:
    return RequestRules(policy.rules)


@attrs.frozen
class Policy:
    """The operator's policy.  Rules are tried in order; the first match wins."""

    untrusted: UntrustedMode = attrs.field(
        default="block", validator=attrs.validators.in_(UNTRUSTED_MODES)
    )
    """What to do when the origin fails verification."""
    non_tls: NonTLSMode = attrs.field(
        default="passthrough", validator=attrs.validators.in_(NON_TLS_MODES)
    )
    """What to do with a connection that does not start with a ClientHello."""
    ech: ECHMode = attrs.field(default="intercept", validator=attrs.validators.in_(ECH_MODES))
    """What to do with a ClientHello carrying encrypted_client_hello ("intercept": apply the
    rules to the outer SNI, the public name)."""
    learning: LearningSettings = LearningSettings()
    rules: tuple[Rule, ...] = ()
    inspect_http: bool = True
    """``[inspect] http``: run the HTTP/1.1 and HTTP/2 layers; False: the opaque relay."""
    strip_quic: bool = True
    """``[inspect] strip_quic``: remove h3 and other QUIC alternatives from Alt-Svc."""
    max_headers: int = 100
    """``[inspect] max_headers``: more header fields in one request is refused (400)."""
    audit_query: bool = False
    """``[audit] query``: log request paths with their query string."""
    icap: IcapSettings | None = None
    """``[icap]``: the content scanner's settings, or None: no scanning."""
    lists: tuple[ListSpec, ...] = ()
    """``[[list]]``: threat list files, in policy order (:mod:`etpmitm.threat`)."""
    _index: _Index = attrs.field(
        init=False, eq=False, repr=False, default=attrs.Factory(_make_index, takes_self=True)
    )
    _request_rules: RequestRules = attrs.field(
        init=False, eq=False, repr=False, default=attrs.Factory(_make_request_rules, takes_self=True)
    )

    def decide(
        self,
        *,
        sni: str | None,
        destination: IPAddress,
        port: int,
        client: IPAddress,
        names: Sequence[str] = (),
        ech: bool = False,
    ) -> Decision:
        """Decide for one connection.

        Host patterns match the SNI; without one, they match *names* (the
        origin's certificate names) and any one matching is enough.  Network
        patterns match the original *destination*.  *ech* says the ClientHello
        carries encrypted_client_hello.  No matching rule: intercept.
        """
        if ech and self.ech != "intercept":
            action: Action = "bypass" if self.ech == "bypass" else "block"
            return Decision(action, None, f"encrypted_client_hello with traffic.ech = {self.ech}")
        index = self._index
        destination = unmap(destination)
        hits: dict[int, tuple[str, str, str]] = {}
        if sni is not None:
            subjects: Sequence[str] = (sni,)
            kind = "SNI"
        else:
            subjects, kind = names, "certificate name"
        for subject in subjects:
            name = normalise_name(subject)
            if name is not None:
                for pos, text in index.by_name(name):
                    hits.setdefault(pos, (text, kind, subject))
        for pos, text in index.by_address(destination):
            hits.setdefault(pos, (text, "destination", str(destination)))
        if hits:
            client = unmap(client)
            for pos in sorted(hits):
                rule = self.rules[pos]
                if rule.applies(port, client):
                    text, kind, subject = hits[pos]
                    reason = f"{rule.describe()} matched {text} ({kind} {subject})"
                    return Decision(rule.action, rule, reason)
        return _NO_MATCH

    def decide_request(
        self, head: RequestHead, *, sni: str | None, destination: IPAddress, port: int, client: IPAddress
    ) -> RequestVerdict:
        """Decide for one request on an intercepted connection: allow or block.

        The request rules, and the host patterns of connection rules that
        block, in order; the first match wins (:mod:`etpmitm.policy.request`).
        The request's host is its authority, else *sni*.  No match:
        :data:`etpmitm.http.ALLOW`.  Never raises on what a device sends.
        """
        return self._request_rules.decide(head, sni, destination, port, client)

    def needs_names(
        self,
        *,
        sni: str | None,
        destination: IPAddress,
        port: int,
        client: IPAddress,
        ech: bool = False,
    ) -> bool:
        """Whether :meth:`decide` may pick a different rule once the certificate's names are known.

        False when there is an SNI, or when no host-pattern rule that lets this
        port and client through comes before the first rule matching the
        destination: the gateway can then decide before the origin handshake.
        """
        if sni is not None or (ech and self.ech != "intercept"):
            return False
        index = self._index
        if not index.host_rules:
            return False
        destination, client = unmap(destination), unmap(client)
        first = len(self.rules)
        for pos, _ in index.by_address(destination):
            if pos < first and self.rules[pos].applies(port, client):
                first = pos
        for pos in index.host_rules:
            if pos >= first:
                return False
            if self.rules[pos].applies(port, client):
                return True
        return False


DEFAULT_POLICY = Policy()
"""No rules (intercept everything), block untrusted origins, pass non-TLS through."""
