"""The per-request decision: allow or block one HTTP request (sans-IO).

Two kinds of rule take part, in the policy's order, first match wins:

- request rules (with ``urls`` and/or ``methods``): every filter the rule has
  must match: ``methods`` the request's method, ``urls`` its host and path,
  ``match`` its host (host patterns) or the connection's destination
  (networks), and ``ports``/``clients`` the connection.  ``block`` blocks the
  request, ``intercept`` allows it;
- connection rules with ``action = "block"``: their host patterns are matched
  against the request's host, so that a blocked host stays blocked on a
  connection opened for another name (HTTP/2 connection reuse, a Host that
  differs from the SNI).

The rules are indexed by host when the policy is made, so a request costs a
few look-ups however many rules there are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from etpmitm.addresses import IPAddress, unmap
from etpmitm.http import ALLOW, RequestHead, RequestVerdict
from etpmitm.policy.patterns import HostPattern, NetworkPattern, WildcardPattern
from etpmitm.policy.urls import host_matches, normalise_path, request_host

if TYPE_CHECKING:
    from etpmitm.policy.decide import Rule

__all__ = ["RequestRules"]


class RequestRules:
    """The rules that can apply to a request, indexed by the host names they need."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self._rules = rules
        self._names: dict[str, list[int]] = {}
        self._suffixes: dict[str, list[int]] = {}  # "*.x.example" is under ".x.example"
        self._any: list[int] = []
        for pos, rule in enumerate(rules):
            if rule.is_request_rule:
                hosts = _request_rule_hosts(rule)
            elif rule.action == "block":
                hosts = [p for p in rule.match if isinstance(p, HostPattern | WildcardPattern)]
                if not hosts:
                    continue
            else:
                continue
            if hosts is None:
                self._any.append(pos)
            for host in hosts or ():
                if isinstance(host, HostPattern):
                    self._names.setdefault(host.name, []).append(pos)
                else:
                    self._suffixes.setdefault("." + host.domain, []).append(pos)
        self.empty = not (self._names or self._suffixes or self._any)
        """No rule can ever apply to a request."""

    def _candidates(self, host: str | IPAddress | None) -> list[int]:
        found = list(self._any)
        if isinstance(host, str):
            found += self._names.get(host, ())
            if self._suffixes:
                dot = host.find(".")
                while dot >= 0:
                    found += self._suffixes.get(host[dot:], ())
                    dot = host.find(".", dot + 1)
        return sorted(set(found))

    def decide(
        self, head: RequestHead, sni: str | None, destination: IPAddress, port: int, client: IPAddress
    ) -> RequestVerdict:
        """The verdict on one request; :data:`etpmitm.http.ALLOW` when no rule matches."""
        if self.empty:
            return ALLOW
        authority, path = _target(head)
        host = request_host(authority, sni)
        candidates = self._candidates(host)
        if not candidates:
            return ALLOW
        destination, client = unmap(destination), unmap(client)
        normalised: str | None = None
        for pos in candidates:
            rule = self._rules[pos]
            if not rule.applies(port, client):
                continue
            if rule.is_request_rule:
                if normalised is None:
                    normalised = normalise_path(path)
                what = _request_rule_match(rule, head.method, host, normalised, destination)
            else:
                what = next((p.text for p in rule.match if isinstance(p, HostPattern | WildcardPattern)
                             and host_matches(p, host)), None)
            if what is not None:
                shown = "none" if host is None else str(host)
                reason = f"{rule.describe()} matched {what} (request {head.method} {shown}{path})"
                return RequestVerdict("block" if rule.action == "block" else "allow", reason, rule.describe())
        return ALLOW


def _request_rule_hosts(rule: Rule) -> list[HostPattern | WildcardPattern] | None:
    """The host names a request rule needs; None when it may match any host."""
    if rule.urls is not None:
        hosts = []
        for url in rule.urls:
            if not isinstance(url.host, HostPattern | WildcardPattern):
                return None
            hosts.append(url.host)
        return hosts
    if rule.match and all(isinstance(p, HostPattern | WildcardPattern) for p in rule.match):
        return [p for p in rule.match if isinstance(p, HostPattern | WildcardPattern)]
    return None


def _request_rule_match(
    rule: Rule, method: str, host: str | IPAddress | None, path: str, destination: IPAddress
) -> str | None:
    """What in *rule* matched the request (for the reason), or None if it does not match."""
    shown = []
    if rule.methods is not None:
        if method not in rule.methods:
            return None
        shown.append(method)
    if rule.urls is not None:
        url = next((u for u in rule.urls if u.matches(host, path)), None)
        if url is None:
            return None
        shown.append(url.text)
    if rule.match:
        pattern = next((p for p in rule.match if _pattern_matches(p, host, destination)), None)
        if pattern is None:
            return None
        shown.append(pattern.text)
    return " ".join(shown)


def _pattern_matches(
    pattern: HostPattern | WildcardPattern | NetworkPattern, host: str | IPAddress | None, destination: IPAddress
) -> bool:
    if isinstance(pattern, NetworkPattern):
        return destination in pattern.network
    return host_matches(pattern, host)


def _target(head: RequestHead) -> tuple[str, str]:
    """The authority and path a request names; an absolute-form path (``http://h/p``) names its own."""
    path = head.path
    if not path.startswith("/"):
        scheme, sep, rest = path.partition("://")
        if sep and scheme.isalpha():
            authority, slash, tail = rest.partition("/")
            return authority.rpartition("@")[2].lower(), slash + tail
    return head.authority, path

