"""Threat lists in the decisions (sans-IO): for connections and for requests.

The order, for a connection (:func:`decide_connection`):

1. ``block`` lists, in policy order: a listed SNI (without an SNI: any name
   on the origin's certificate) or destination address is blocked, whatever
   the rules say.  A feed of known-bad names is a deny list; a broad
   ``bypass`` rule (a network, ``*.bank.example``) must not let a listed
   name through, and nobody can order a million-name feed against
   hand-written rules one by one.
2. the ``[[rule]]``\\ s, first match wins, as without lists.
3. when no rule matched, ``bypass`` and ``intercept`` lists, in policy
   order: bypass splices, intercept intercepts (and audits).  These never
   override a rule, so an audit-only list cannot weaken a ``block`` rule.

Whenever a list matched, the decision carries its name as ``category``, and
the gateway never applies a learned bypass to it.

For a request on an intercepted connection (:func:`decide_request`):
``block`` lists first (the request's host and its URL at each ``/`` of the
path), then the policy's request decision; ``intercept`` lists tag an
allowed request with their category.  ``bypass`` lists do not apply to
requests.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from etpmitm.addresses import IPAddress, unmap
from etpmitm.http import RequestHead, RequestVerdict
from etpmitm.policy.decide import _NO_MATCH, Decision, Policy
from etpmitm.policy.listspec import ListAction
from etpmitm.policy.patterns import normalise_name
from etpmitm.policy.request import _target
from etpmitm.policy.urls import normalise_path, request_host
from etpmitm.threat.table import HashTable

__all__ = ["NO_LISTS", "Hit", "ThreatList", "ThreatLists", "decide_connection", "decide_request"]


@attrs.frozen
class ThreatList:
    """One loaded list: its category, action and table."""

    name: str
    action: ListAction
    table: HashTable = attrs.field(eq=False)
    source: str = ""
    """The list file, for messages."""


@attrs.frozen
class Hit:
    """A list that matched, and what in it."""

    list: ThreatList
    entry: str
    """The listed domain or ``host/path``."""
    subject: str
    """What matched it: ``SNI x``, ``certificate name x``, ``request host x``..."""

    def reason(self) -> str:
        return f"listed in {self.list.name!r} as {self.entry} ({self.subject})"


@attrs.frozen
class ThreatLists:
    """The lists in force, in policy order; replaced whole on a reload."""

    lists: tuple[ThreatList, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.lists)

    def first(self, actions: tuple[ListAction, ...], subjects: Sequence[tuple[str, str]]) -> Hit | None:
        """The first list (in policy order) with one of *actions* that lists one of *subjects*.

        Each subject is (normalised name or address, description).
        """
        for threat in self.lists:
            if threat.action not in actions:
                continue
            for name, what in subjects:
                entry = threat.table.domain(name)
                if entry is not None:
                    return Hit(threat, entry, what)
        return None

    def first_url(self, actions: tuple[ListAction, ...], host: str, path: str) -> Hit | None:
        for threat in self.lists:
            if threat.action in actions:
                entry = threat.table.url(host, path)
                if entry is not None:
                    return Hit(threat, entry, f"request URL {host}{path}")
        return None


NO_LISTS = ThreatLists()


def _connection_subjects(sni: str | None, names: Sequence[str], destination: IPAddress) -> list[tuple[str, str]]:
    subjects = []
    kind = "SNI" if sni is not None else "certificate name"
    for subject in (sni,) if sni is not None else names:
        name = normalise_name(subject)
        if name is not None and not name.startswith("*."):
            subjects.append((name, f"{kind} {subject}"))
        elif name is not None:  # a wildcard certificate name: its domain
            subjects.append((name[2:], f"{kind} {subject}"))
    subjects.append((str(unmap(destination)), f"destination {unmap(destination)}"))
    return subjects


def decide_connection(
    policy: Policy,
    lists: ThreatLists,
    *,
    sni: str | None,
    destination: IPAddress,
    port: int,
    client: IPAddress,
    names: Sequence[str] = (),
    ech: bool = False,
) -> Decision:
    """:meth:`Policy.decide` with the threat lists around it (see the module's docstring)."""
    subjects = _connection_subjects(sni, names, destination) if lists else []
    if subjects:
        hit = lists.first(("block",), subjects)
        if hit is not None:
            return Decision("block", None, hit.reason(), hit.list.name)
    decision = policy.decide(sni=sni, destination=destination, port=port, client=client, names=names, ech=ech)
    if not subjects:
        return decision
    hit = lists.first(("bypass", "intercept"), subjects)
    if hit is None:
        return decision
    if decision != _NO_MATCH:  # a rule, or an ECH mode, decided
        return attrs.evolve(decision, category=hit.list.name)
    return Decision("bypass" if hit.list.action == "bypass" else "intercept", None, hit.reason(), hit.list.name)


def needs_names(
    policy: Policy, lists: ThreatLists, *, sni: str | None, destination: IPAddress, port: int, client: IPAddress,
    ech: bool = False,
) -> bool:
    """:meth:`Policy.needs_names`, and True without an SNI whenever lists are loaded."""
    if sni is None and lists and not (ech and policy.ech != "intercept"):
        return True
    return policy.needs_names(sni=sni, destination=destination, port=port, client=client, ech=ech)


def decide_request(
    policy: Policy,
    lists: ThreatLists,
    head: RequestHead,
    *,
    sni: str | None,
    destination: IPAddress,
    port: int,
    client: IPAddress,
) -> RequestVerdict:
    """:meth:`Policy.decide_request` with the threat lists around it (see the module's docstring)."""
    if not lists:
        return policy.decide_request(head, sni=sni, destination=destination, port=port, client=client)
    authority, path = _target(head)
    host = request_host(authority, sni)
    hit = None
    if host is not None:
        shown = str(host)
        path = normalise_path(path)
        subjects = [(shown, f"request host {shown}")]
        hit = lists.first(("block",), subjects) or lists.first_url(("block",), shown, path)
        if hit is not None:
            return RequestVerdict("block", hit.reason(), None, hit.list.name)
    verdict = policy.decide_request(head, sni=sni, destination=destination, port=port, client=client)
    if host is None:
        return verdict
    hit = lists.first(("intercept",), subjects) or lists.first_url(("intercept",), shown, path)
    if hit is None:
        return verdict
    if verdict.action == "allow" and verdict.rule is None:
        return RequestVerdict("allow", hit.reason(), None, hit.list.name)
    return attrs.evolve(verdict, category=hit.list.name)
