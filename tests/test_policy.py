# trial's assertion methods carry no annotations.
# mypy: disable-error-code="no-untyped-call"
"""Tests for etpmitm.policy: parsing the policy file, its errors, and decisions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from pathlib import Path
from textwrap import dedent

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from etpmitm.policy import (
    DEFAULT_POLICY,
    Action,
    Decision,
    HostPattern,
    LearningSettings,
    NetworkPattern,
    Policy,
    PolicyError,
    Rule,
    WildcardPattern,
    load_policy,
    parse_pattern,
    parse_policy,
)

FUZZ = settings(max_examples=300, deadline=None, database=None)

Address = IPv4Address | IPv6Address

EXAMPLE = """\
[origin]
untrusted = "block"

[traffic]
non_tls = "passthrough"
ech = "intercept"

[learning]
failures = 2
window = 300
ttl = 3600
max_entries = 10000

[[rule]]
match = ["*.bank.example", "health.example", "10.20.0.0/16", "[2001:db8::]/32"]
action = "bypass"
ports = [443]
clients = ["192.168.10.0/24"]

[[rule]]
name = "ads"
match = ["ads.example"]
action = "block"
"""


def decide(
    policy: Policy,
    sni: str | None = None,
    destination: str = "192.0.2.1",
    port: int = 443,
    client: str = "192.168.10.5",
    names: Sequence[str] = (),
    ech: bool = False,
) -> Decision:
    return policy.decide(
        sni=sni,
        destination=ip_address(destination),
        port=port,
        client=ip_address(client),
        names=names,
        ech=ech,
    )


def one_rule(*patterns: str, action: str = "bypass", extra: str = "") -> Policy:
    listed = ", ".join(f'"{p}"' for p in patterns)
    return parse_policy(f'[[rule]]\nmatch = [{listed}]\naction = "{action}"\n{extra}')


class ParseTests(SynchronousTestCase):
    def test_example(self) -> None:
        policy = parse_policy(EXAMPLE, "policy.toml")
        self.assertEqual(
            (policy.untrusted, policy.non_tls, policy.ech), ("block", "passthrough", "intercept")
        )
        self.assertEqual(policy.learning, LearningSettings(True, 2, 300.0, 3600.0, 10000))
        first, second = policy.rules
        self.assertEqual(
            first.match,
            (
                WildcardPattern("*.bank.example", "bank.example"),
                HostPattern("health.example", "health.example"),
                NetworkPattern("10.20.0.0/16", ip_network("10.20.0.0/16")),
                NetworkPattern("[2001:db8::]/32", ip_network("2001:db8::/32")),
            ),
        )
        self.assertEqual(first.action, "bypass")
        self.assertEqual(first.ports, frozenset({443}))
        self.assertEqual(first.clients, (ip_network("192.168.10.0/24"),))
        self.assertEqual((first.number, first.line, first.name), (1, 14, None))
        self.assertEqual(first.describe(), "rule 1 (line 14)")
        self.assertEqual((second.number, second.line, second.name), (2, 20, "ads"))
        self.assertEqual((second.ports, second.clients), (None, None))
        self.assertEqual(second.describe(), "rule 2 'ads' (line 20)")

    def test_empty_is_default(self) -> None:
        self.assertEqual(parse_policy(""), DEFAULT_POLICY)
        self.assertEqual(parse_policy("# nothing\n\n[origin]\n[traffic]\n[learning]\n"), DEFAULT_POLICY)
        self.assertEqual(
            (DEFAULT_POLICY.untrusted, DEFAULT_POLICY.non_tls, DEFAULT_POLICY.ech, DEFAULT_POLICY.rules),
            ("block", "passthrough", "intercept", ()),
        )
        self.assertEqual(decide(DEFAULT_POLICY, "a.example"), Decision("intercept", None, "no rule matched"))

    def test_settings(self) -> None:
        policy = parse_policy(
            dedent(
                """\
                origin.untrusted = "untrusted"
                [traffic]
                non_tls = "close"
                ech = "close"
                [learning]
                enabled = false
                failures = 1
                window = 0.5
                ttl = 60
                max_entries = 3
                """
            )
        )
        self.assertEqual((policy.untrusted, policy.non_tls, policy.ech), ("untrusted", "close", "close"))
        self.assertEqual(policy.learning, LearningSettings(False, 1, 0.5, 60.0, 3))
        self.assertIsInstance(policy.learning.window, float)

    def test_readme_example(self) -> None:
        """The policy example in README.md is a valid policy, with the documented defaults."""
        readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
        example = readme.split("```toml\n", 1)[1].split("```", 1)[0]
        policy = parse_policy(example, "README.md")
        self.assertEqual(policy.learning, LearningSettings())
        self.assertTrue(policy.rules)

    def test_learning_scope(self) -> None:
        """Learned bypasses are per client by default, for all after 3 clients."""
        self.assertEqual((DEFAULT_POLICY.learning.scope, DEFAULT_POLICY.learning.min_clients), ("client", 3))
        policy = parse_policy("[learning]\nscope = 'client'\nmin_clients = 5\n")
        self.assertEqual((policy.learning.scope, policy.learning.min_clients), ("client", 5))
        policy = parse_policy("[learning]\nscope = 'all'\n")
        self.assertEqual(policy.learning.scope, "all")

    def test_inline_rules(self) -> None:
        """Rules may be written as an inline array of tables; they are numbered the same."""
        policy = parse_policy('\n\nrule = [{match = ["a.example"], action = "block"}]\n')
        [rule] = policy.rules
        self.assertEqual((rule.number, rule.line, rule.action), (1, 3, "block"))

    def test_load(self) -> None:
        path = Path(self.mktemp())
        path.write_bytes(b"\xef\xbb\xbf" + EXAMPLE.encode())  # a BOM is tolerated
        self.assertEqual(load_policy(path), parse_policy(EXAMPLE))


class PatternTests(SynchronousTestCase):
    def assertMatches(self, policy: Policy, **query: Any) -> None:
        self.assertEqual(decide(policy, **query).action, "bypass", query)

    def assertNoMatch(self, policy: Policy, **query: Any) -> None:
        self.assertEqual(decide(policy, **query), Decision("intercept", None, "no rule matched"), query)

    def test_exact_name(self) -> None:
        policy = one_rule("Health.Example")
        for sni in ("health.example", "HEALTH.example", "health.example."):
            self.assertMatches(policy, sni=sni)
        for sni in ("www.health.example", "health.example.com", "ealth.example", "health.exampl"):
            self.assertNoMatch(policy, sni=sni)

    def test_trailing_dot_in_pattern(self) -> None:
        policy = one_rule("health.example.", "*.bank.example.")
        self.assertMatches(policy, sni="health.example")
        self.assertMatches(policy, sni="www.bank.example")

    def test_wildcard(self) -> None:
        policy = one_rule("*.bank.example")
        for sni in ("www.bank.example", "a.b.bank.example", "WWW.Bank.Example", "_x.bank.example"):
            self.assertMatches(policy, sni=sni)
        for sni in ("bank.example", "xbank.example", "bank.example.com", "example", "www.bank.exampl"):
            self.assertNoMatch(policy, sni=sni)

    def test_idna(self) -> None:
        """U-label patterns compare in A-label form, whichever form the name arrives in."""
        self.assertEqual(
            parse_pattern("Bücher.example"), HostPattern("Bücher.example", "xn--bcher-kva.example")
        )
        policy = one_rule("bücher.example", "*.münchen.example")
        self.assertMatches(policy, sni="xn--bcher-kva.example")
        self.assertMatches(policy, sni="bücher.example")
        self.assertMatches(policy, sni="www.xn--mnchen-3ya.example")
        self.assertNoMatch(policy, sni="xn--mnchen-3ya.example")
        self.assertNoMatch(policy, sni="bucher.example")
        self.assertMatches(one_rule("xn--bcher-kva.example"), sni="bücher.example")

    def test_ipv4(self) -> None:
        policy = one_rule("10.20.0.0/16", "192.0.2.7")
        for destination in ("10.20.0.0", "10.20.255.255", "192.0.2.7", "::ffff:10.20.1.1", "::ffff:192.0.2.7"):
            self.assertMatches(policy, destination=destination)
            self.assertMatches(policy, sni="unrelated.example", destination=destination)
        for destination in ("10.21.0.1", "10.19.255.255", "192.0.2.8", "::10.20.1.1", "2001:db8::1"):
            self.assertNoMatch(policy, destination=destination)

    def test_ipv6(self) -> None:
        for pattern in ("2001:db8::/32", "[2001:db8::]/32"):
            policy = one_rule(pattern)
            self.assertMatches(policy, destination="2001:db8:ffff::1")
            self.assertNoMatch(policy, destination="2001:db9::1")
            self.assertNoMatch(policy, destination="32.1.13.184")  # the same first 32 bits
        policy = one_rule("[2001:db8::1]")
        self.assertMatches(policy, destination="2001:db8::1")
        self.assertNoMatch(policy, destination="2001:db8::2")

    def test_ipv4_mapped_pattern(self) -> None:
        """A pattern written as an IPv4-mapped network stands for the IPv4 network."""
        pattern = parse_pattern("::ffff:10.1.0.0/112")
        self.assertEqual(pattern, NetworkPattern("::ffff:10.1.0.0/112", ip_network("10.1.0.0/16")))
        self.assertMatches(one_rule("[::ffff:10.1.2.3]"), destination="10.1.2.3")

    def test_host_patterns_never_match_addresses(self) -> None:
        policy = one_rule("192.0.2.1", action="block")
        self.assertEqual(decide(policy, sni="a.example", destination="192.0.2.1").action, "block")
        self.assertNoMatch(policy, sni="a.example", destination="192.0.2.2", names=("192.0.2.1",))
        self.assertNoMatch(one_rule("a.example"), sni=None, destination="192.0.2.1")

    def test_every_destination(self) -> None:
        policy = one_rule("0.0.0.0/0", "::/0")
        for destination in ("192.0.2.1", "::ffff:192.0.2.1", "2001:db8::1", "::1"):
            self.assertMatches(policy, destination=destination)


class DecideTests(SynchronousTestCase):
    def test_reason(self) -> None:
        policy = parse_policy(EXAMPLE)
        self.assertEqual(
            decide(policy, "www.bank.example").reason,
            "rule 1 (line 14) matched *.bank.example (SNI www.bank.example)",
        )
        self.assertEqual(
            decide(policy, "x.example", destination="::ffff:10.20.1.2").reason,
            "rule 1 (line 14) matched 10.20.0.0/16 (destination 10.20.1.2)",
        )
        self.assertEqual(
            decide(policy, None, names=["x.example", "ads.example"]).reason,
            "rule 2 'ads' (line 20) matched ads.example (certificate name ads.example)",
        )

    def test_first_match_wins(self) -> None:
        broad = '[[rule]]\nmatch = ["*.example"]\naction = "bypass"\n'
        narrow = '[[rule]]\nmatch = ["www.a.example"]\naction = "block"\n'
        network = '[[rule]]\nmatch = ["192.0.2.0/24"]\naction = "intercept"\n'
        cases = [
            (broad + narrow, "bypass", 1),
            (narrow + broad, "block", 1),
            (network + narrow, "intercept", 1),
            (narrow + network, "block", 1),
            (broad + network + narrow, "bypass", 1),
            (network + broad + narrow, "intercept", 1),
        ]
        for text, action, number in cases:
            decision = decide(parse_policy(text), "www.a.example", destination="192.0.2.1")
            self.assertEqual(decision.action, action, text)
            assert decision.rule is not None
            self.assertEqual(decision.rule.number, number)

    def test_ports(self) -> None:
        policy = parse_policy(
            '[[rule]]\nmatch = ["*.example"]\naction = "block"\nports = [8443, 9443]\n'
            '[[rule]]\nmatch = ["*.example"]\naction = "bypass"\n'
        )
        self.assertEqual(decide(policy, "a.example", port=8443).action, "block")
        self.assertEqual(decide(policy, "a.example", port=9443).action, "block")
        decision = decide(policy, "a.example", port=443)
        self.assertEqual(decision.action, "bypass")
        self.assertEqual(decision.rule, policy.rules[1])

    def test_clients(self) -> None:
        policy = parse_policy(
            '[[rule]]\nmatch = ["a.example"]\naction = "bypass"\n'
            'clients = ["192.168.10.0/24", "[2001:db8:c::]/48", "10.9.9.9"]\n'
        )
        for client in ("192.168.10.1", "::ffff:192.168.10.200", "2001:db8:c:1::5", "10.9.9.9"):
            self.assertEqual(decide(policy, "a.example", client=client).action, "bypass", client)
        for client in ("192.168.11.1", "2001:db8:d::1", "10.9.9.8", "::192.168.10.1"):
            self.assertEqual(decide(policy, "a.example", client=client).action, "intercept", client)

    def test_names_without_sni(self) -> None:
        policy = one_rule("*.bank.example", "health.example")
        self.assertEqual(decide(policy, None, names=["a.bank.example"]).action, "bypass")
        self.assertEqual(decide(policy, None, names=["x.example", "HEALTH.example."]).action, "bypass")
        self.assertEqual(decide(policy, None, names=["x.example", "bank.example"]).action, "intercept")
        self.assertEqual(decide(policy, None).action, "intercept")
        # With an SNI, the certificate's names are not consulted.
        self.assertEqual(decide(policy, "x.example", names=["a.bank.example"]).action, "intercept")

    def test_wildcard_certificate_names(self) -> None:
        """A wildcard certificate name is compared literally, like an SNI value."""
        for pattern in ("*.x.example", "*.example"):
            self.assertEqual(decide(one_rule(pattern), None, names=["*.x.example"]).action, "bypass")
        for pattern in ("a.x.example", "x.example", "*.y.example"):
            self.assertEqual(decide(one_rule(pattern), None, names=["*.x.example"]).action, "intercept")

    def test_unusable_names_are_skipped(self) -> None:
        policy = one_rule("a.example")
        self.assertEqual(decide(policy, None, names=["a\u200db.example", "a.example"]).action, "bypass")

    def test_ech(self) -> None:
        cases: list[tuple[str, Action]] = [("bypass", "bypass"), ("close", "block")]
        for mode, action in cases:
            policy = parse_policy(f'[traffic]\nech = "{mode}"\n' + EXAMPLE[EXAMPLE.index("[[rule]]") :])
            decision = decide(policy, "ads.example", ech=True)
            reason = f"encrypted_client_hello with traffic.ech = {mode}"
            self.assertEqual(decision, Decision(action, None, reason))
            self.assertEqual(decide(policy, "ads.example").action, "block")
            self.assertTrue(NeedsNamesTests.needs(policy))
            self.assertFalse(NeedsNamesTests.needs(policy, ech=True))
        # "intercept" applies the rules to the outer SNI.
        policy = parse_policy(EXAMPLE)
        self.assertEqual(decide(policy, "ads.example", ech=True).action, "block")
        self.assertEqual(decide(policy, "other.example", ech=True).action, "intercept")


class NeedsNamesTests(SynchronousTestCase):
    @staticmethod
    def needs(
        policy: Policy,
        sni: str | None = None,
        destination: str = "192.0.2.1",
        port: int = 443,
        client: str = "192.168.10.5",
        ech: bool = False,
    ) -> bool:
        return policy.needs_names(
            sni=sni, destination=ip_address(destination), port=port, client=ip_address(client), ech=ech
        )

    def test_sni_known(self) -> None:
        self.assertFalse(self.needs(one_rule("a.example"), "b.example"))

    def test_no_host_rules(self) -> None:
        self.assertFalse(self.needs(DEFAULT_POLICY))
        self.assertFalse(self.needs(one_rule("10.0.0.0/8", "2001:db8::/32")))

    def test_host_rule_could_apply(self) -> None:
        self.assertTrue(self.needs(one_rule("a.example")))
        # The same rule matches the destination: names cannot change the rule.
        self.assertFalse(self.needs(one_rule("*.example", "192.0.2.1"), destination="192.0.2.1"))
        self.assertTrue(self.needs(one_rule("*.example", "192.0.2.1"), destination="192.0.2.2"))

    def test_address_rule_first(self) -> None:
        policy = parse_policy(
            '[[rule]]\nmatch = ["192.0.2.0/24"]\naction = "block"\n'
            '[[rule]]\nmatch = ["a.example"]\naction = "bypass"\n'
        )
        self.assertFalse(self.needs(policy, destination="192.0.2.9"))
        self.assertTrue(self.needs(policy, destination="198.51.100.1"))

    def test_filters(self) -> None:
        policy = one_rule("a.example", extra='ports = [8443]\nclients = ["192.168.10.0/24"]')
        self.assertFalse(self.needs(policy, port=443))
        self.assertTrue(self.needs(policy, port=8443))
        self.assertFalse(self.needs(policy, port=8443, client="10.0.0.1"))


class ErrorTests(SynchronousTestCase):
    """Each problem gives one line naming the file, the line and the problem."""

    def assertError(self, text: str, message: str) -> None:
        with self.assertRaises(PolicyError) as caught:
            parse_policy(text, "policy.toml")
        self.assertEqual(str(caught.exception), message)

    def assertErrors(self, cases: list[tuple[str, str]]) -> None:
        for text, message in cases:
            self.assertError(text, "policy.toml:" + message)

    def test_toml_syntax(self) -> None:
        self.assertErrors(
            [
                (
                    "[origin]\nuntrusted = block\n",
                    "2: TOML syntax error: Invalid value (column 13)",
                ),
                (
                    "a = 1\n\n[[rule]\n",
                    "3: TOML syntax error: Expected ']]' at the end of an array declaration (column 7)",
                ),
                (
                    '[[rule]]\nmatch = ["a",\n  "b"\n\n',
                    "3: TOML syntax error: Unclosed array (at the end of the file)",
                ),
                (
                    "[origin]\nuntrusted = 'block'\nuntrusted = 'bypass'\n",
                    "3: TOML syntax error: Cannot overwrite a value (column 21)",
                ),
            ]
        )

    def test_huge_integer(self) -> None:
        """tomllib raises a plain ValueError past Python's integer digit limit."""
        self.assertError(
            "[learning]\n\nttl = " + "1" * 5000 + "\n",
            "policy.toml:3: TOML syntax error: Exceeds the limit (4300 digits) "
            "for integer string conversion: value has 5000 digits",
        )

    def test_attributes(self) -> None:
        with self.assertRaises(PolicyError) as caught:
            parse_policy("\n[orgin]\n", "p")
        self.assertEqual((caught.exception.source, caught.exception.line), ("p", 2))
        self.assertEqual(caught.exception.problem, "unknown table [orgin] (did you mean [origin]?)")

    def test_unknown_tables_and_keys(self) -> None:
        tables = "[origin], [traffic], [learning], [inspect], [audit], [icap], [rule] or [list]"
        self.assertErrors(
            [
                ("# x\n[orgin]\nuntrusted = 'block'\n", "2: unknown table [orgin] (did you mean [origin]?)"),
                ("[origin]\n[misc]\n", f"2: unknown table [misc] (expected {tables})"),
                ("\nverbose = true\n", f"2: unknown key 'verbose' (expected {tables})"),
                (
                    "[origin]\n\nuntrustd = 'block'\n",
                    "3: [origin] unknown key 'untrustd' (did you mean 'untrusted'?)",
                ),
                (
                    "[traffic]\nech = 'close'\nnon-tls = 'close'\n",
                    "3: [traffic] unknown key 'non-tls' (did you mean 'non_tls'?)",
                ),
                (
                    "[learning]\nttl = 5\nthreshold = 3\n",
                    "3: [learning] unknown key 'threshold' "
                    "(expected 'enabled', 'failures', 'window', 'ttl', 'max_entries', 'scope' or 'min_clients')",
                ),
                (EXAMPLE + "port = [443]\n", "24: rule 2: unknown key 'port' (did you mean 'ports'?)"),
                ("[origin.extra]\nx = 1\n", "1: [origin] unknown key 'extra' (expected 'untrusted')"),
            ]
        )

    def test_sections_must_be_tables(self) -> None:
        self.assertErrors(
            [
                ('\norigin = "block"\n', "2: origin must be a table, written [origin]"),
                ("[[learning]]\nttl = 5\n", "1: learning must be a table, written [learning]"),
                ("[rule]\nmatch = ['a']\naction = 'block'\n", "1: rules must be written as [[rule]] tables"),
                ("\nrule = [1]\n", "2: rule 1: must be a table, written [[rule]]"),
            ]
        )

    def test_settings_values(self) -> None:
        self.assertErrors(
            [
                (
                    "[origin]\nuntrusted = 'mimic'\n",
                    "2: [origin] untrusted must be block, untrusted or bypass, not 'mimic'",
                ),
                (
                    "[origin]\nuntrusted = 1\n",
                    "2: [origin] untrusted must be block, untrusted or bypass, not 1",
                ),
                ("[traffic]\nnon_tls = true\n", "2: [traffic] non_tls must be passthrough or close, not true"),
                (
                    "[traffic]\n\nech = ['bypass']\n",
                    "3: [traffic] ech must be intercept, bypass or close, not an array",
                ),
            ]
        )

    def test_learning_values(self) -> None:
        count = "must be an integer from 1 to"
        seconds = "must be a positive number of seconds, not"
        cases = [
            ("failures = 0", f"failures {count} 1000, not 0"),
            ("failures = -2", f"failures {count} 1000, not -2"),
            ("failures = 1001", f"failures {count} 1000, not 1001"),
            ("failures = 2.5", f"failures {count} 1000, not 2.5"),
            ("failures = true", f"failures {count} 1000, not true"),
            ("window = 0", f"window {seconds} 0"),
            ("window = -1.5", f"window {seconds} -1.5"),
            ("window = '300'", f"window {seconds} '300'"),
            ("window = inf", f"window {seconds} inf"),
            ("window = nan", f"window {seconds} nan"),
            ("ttl = 0", f"ttl {seconds} 0"),
            ("ttl = 1e400", f"ttl {seconds} inf"),
            ("max_entries = 0", f"max_entries {count} 10000000, not 0"),
            ("max_entries = {}", f"max_entries {count} 10000000, not a table"),
            ("enabled = 'yes'", "enabled must be true or false, not 'yes'"),
            ("scope = 'everyone'", "scope must be client or all, not 'everyone'"),
            ("scope = 'Client'", "scope must be client or all, not 'Client'"),
            ("scope = true", "scope must be client or all, not true"),
            ("min_clients = 0", f"min_clients {count} 1000, not 0"),
            ("min_clients = 1001", f"min_clients {count} 1000, not 1001"),
            ("min_clients = '3'", f"min_clients {count} 1000, not '3'"),
        ]
        self.assertErrors(
            [
                (f"[learning]\n# seconds, counts\n{line}\n", f"3: [learning] {problem}")
                for line, problem in cases
            ]
        )
        self.assertError("\n\nlearning.ttl = -1\n", f"policy.toml:3: [learning] ttl {seconds} -1")

    def test_min_clients_needs_client_scope(self) -> None:
        """With scope = "all" one client teaches all; a min_clients there is a mistake, not ignored."""
        self.assertError(
            "[learning]\nscope = 'all'\n# ...\nmin_clients = 3\n",
            'policy.toml:4: [learning] min_clients applies only with scope = "client"',
        )
        self.assertError(
            "[learning]\nmin_clients = 3\nscope = 'all'\n",
            'policy.toml:2: [learning] min_clients applies only with scope = "client"',
        )

    def test_rule_structure(self) -> None:
        actions = "intercept, bypass or block"
        self.assertErrors(
            [
                (EXAMPLE + "\n[[rule]]\naction = 'block'\n", "25: rule 3: match is missing (or urls or methods, for a request rule)"),
                ("[[rule]]\nmatch = ['a']\n", f"1: rule 1: action is missing ({actions})"),
                (
                    EXAMPLE.replace('action = "block"', 'action = "allow"'),
                    f"23: rule 2: action must be {actions}, not 'allow'",
                ),
                ("[[rule]]\nmatch = ['a']\naction = 3\n", f"3: rule 1: action must be {actions}, not 3"),
                (
                    "[[rule]]\nmatch = ['a']\naction = 'block'\nname = ''\n",
                    "4: rule 1: name must be a non-empty string, not ''",
                ),
            ]
        )

    def test_match_values(self) -> None:
        self.assertErrors(
            [
                ("[[rule]]\naction = 'block'\nmatch = []\n", "3: rule 1: match is empty"),
                (
                    "[[rule]]\naction = 'block'\nmatch = 'a.example'\n",
                    """3: rule 1: match must be an array of strings, like ["..."], not 'a.example'""",
                ),
                ("[[rule]]\naction = 'block'\nmatch = ['a', 3]\n", "3: rule 1: match holds 3, not a string"),
            ]
        )

    def test_bad_patterns(self) -> None:
        """A bad entry of a multi-line array is reported on the line of its key."""
        first_label = "'*' may only be the whole first label, as in '*.example.com'"
        cases = {
            "*.": "'*.' needs a domain after it, as in '*.example.com'",
            "bank.*": first_label,
            "*.*.x": first_label,
            "*bank.example": first_label,
            "*": "'*' alone is not a pattern (to match every destination use 0.0.0.0/0 and ::/0)",
            "": "empty pattern",
            "exa mple.com": "invalid character ' '",
            "a..example": "empty label (two dots in a row, or a leading dot)",
            ".example": "empty label (two dots in a row, or a leading dot)",
            "a.123": "the last label is all digits (write addresses as a.b.c.d)",
            "x" * 64 + ".example": "label 'xxxxxxxxxxxxxxxxxxxx'... is longer than 63 characters",
            "a\u200db.example": "'a\\u200db' is not a valid internationalised label "
            "(Joiner U+200D not allowed at position 2 in 'a\\u200db')",
            "10.0.0.0/33": "prefix length '33' is not in 0-32",
            "10.0.0.0/x": "prefix length 'x' is not in 0-32",
            "a.example/24": "'a.example' is not an IP address",
            "10.0.0": "'10.0.0' is not an IP address",
            "10.0.0.256": "'10.0.0.256' is not an IP address",
            "10.0.0.1/8": "host bits are set (the network is 10.0.0.0/8)",
            "2001:db8::/129": "prefix length '129' is not in 0-128",
            "2001:db8::1/32": "host bits are set (the network is 2001:db8::/32)",
            "[10.0.0.1]": "'10.0.0.1' in brackets is not an IPv6 address",
            "[2001:db8::1": "'[' without a closing ']'",
            "[2001:db8::]32": "unexpected '32' after ']'",
            "fe80::1%eth0": "scoped IPv6 addresses (with '%zone') are not supported",
            "a.example:443": "'a.example:443' is not an IP address",
        }
        self.assertErrors(
            [
                (
                    f'[[rule]]\naction = "block"\n\nmatch = [\n  "ok.example",\n  "{pattern}",\n]\n',
                    f"4: rule 1: bad pattern {pattern!r} in match: {problem}",
                )
                for pattern, problem in cases.items()
            ]
        )

    def test_long_values_are_clipped(self) -> None:
        name = ("a" * 60 + ".") * 5 + "example"
        self.assertError(
            f'[[rule]]\naction = "block"\nmatch = ["{name}"]\n',
            f"policy.toml:3: rule 1: bad pattern '{'a' * 60}.{'a' * 15}... in match: "
            "name is 312 characters long, more than 253",
        )
        self.assertError(
            "[learning]\nfailures = " + "9" * 100 + "\n",
            "policy.toml:2: [learning] failures must be an integer from 1 to 1000, not " + "9" * 77 + "...",
        )

    def test_bad_ports(self) -> None:
        port = "not a port number (1-65535)"
        cases = {
            "[0]": f"ports holds 0, {port}",
            "[443, 70000]": f"ports holds 70000, {port}",
            "[-1]": f"ports holds -1, {port}",
            "['443']": f"ports holds '443', {port}",
            "[true]": f"ports holds true, {port}",
            "[443.0]": f"ports holds 443.0, {port}",
            "443": "ports must be an array, like [443], not 443",
            "[]": "ports is empty (leave it out to match every port)",
        }
        self.assertErrors(
            [
                (f"[[rule]]\nmatch = ['a']\naction = 'block'\nports = {value}\n", f"4: rule 1: {problem}")
                for value, problem in cases.items()
            ]
        )

    def test_bad_clients(self) -> None:
        cases = {
            "['10.0.0.0/33']": "bad client address '10.0.0.0/33' in clients: prefix length '33' is not in 0-32",
            "['laptop.example']": "bad client address 'laptop.example' in clients: "
            "'laptop.example' is not an IP address",
            "['192.168.1.1/16']": "bad client address '192.168.1.1/16' in clients: "
            "host bits are set (the network is 192.168.0.0/16)",
            "[]": "clients is empty",
            "'10.0.0.0/8'": """clients must be an array of strings, like ["..."], not '10.0.0.0/8'""",
            "[10]": "clients holds 10, not a string",
        }
        self.assertErrors(
            [
                (f"[[rule]]\nmatch = ['a']\naction = 'block'\n\nclients = {value}\n", f"5: rule 1: {problem}")
                for value, problem in cases.items()
            ]
        )

    def test_line_finding(self) -> None:
        """Lines are found past comments, strings that look like headers, quoted and dotted keys."""
        text = dedent(
            '''\
            # [[rule]] in a comment
            [[rule]]
            match = ['a']   # action = "allow"
            action = 'block'
            name = "x \\" [ y"

            [[ rule ]]
            match = [
              "b",  # [ is not an array
              'c',  # [[rule]]
            ]
            name = """x
            [[rule]]
            "action" = "allow" """
            "action" = "allow"
            '''
        )
        self.assertError(text, "policy.toml:15: rule 2: action must be intercept, bypass or block, not 'allow'")
        self.assertError(
            "[[rule]]\nmatch = ['a']\naction = 'block'\nrule.x = 1\n",
            "policy.toml:4: rule 1: unknown key 'rule' "
            "(expected 'match', 'urls', 'methods', 'action', 'ports', 'clients' or 'name')",
        )

    def test_inline_rule_falls_back_to_its_key(self) -> None:
        self.assertError(
            "# rules\n\n\nrule = [\n"
            "  {match = ['a'], action = 'block'},\n"
            "  {match = ['*.'], action = 'block'},\n"
            "]\n",
            "policy.toml:4: rule 2: bad pattern '*.' in match: "
            "'*.' needs a domain after it, as in '*.example.com'",
        )

    def test_load_errors(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        path = directory / "policy.toml"
        cases: list[tuple[Path, str]] = [
            (path, f"{path}: cannot read the policy: No such file or directory"),
            (directory, f"{directory}: cannot read the policy: Is a directory"),
        ]
        for where, message in cases:
            with self.assertRaises(PolicyError) as caught:
                load_policy(where)
            self.assertEqual(str(caught.exception), message)
        path.write_bytes(b"[origin]\n# caf\xe9\n")
        with self.assertRaises(PolicyError) as caught:
            load_policy(path)
        self.assertEqual(str(caught.exception), f"{path}:2: not UTF-8 (byte 0xe9)")
        path.write_text("[[rule]]\nmatch = ['a']\naction = 'pass'\n")
        with self.assertRaises(PolicyError) as caught:
            load_policy(path)
        self.assertEqual(
            str(caught.exception), f"{path}:3: rule 1: action must be intercept, bypass or block, not 'pass'"
        )


# -- fuzzing -------------------------------------------------------------------

FRAGMENTS = [
    "[origin]", "[traffic]", "[learning]", "[[rule]]", "[rule]", "[orgin]", "[[rule.x]]",
    'untrusted = "block"', 'untrusted = "bypass"', "untrusted = 1", 'non_tls = "close"',
    'ech = "bypass"', 'ech = "x"', "failures = 3", "failures = 0", "window = 1.5", "ttl = -1",
    "max_entries = 5", "enabled = false", 'match = ["a.example", "*.b.example", "10.0.0.0/8"]',
    'match = ["*.", "[::1]"]', "match = []", 'match = "x"', 'action = "bypass"', 'action = "block"',
    'action = "allow"', "ports = [443]", "ports = [0]", 'clients = ["192.168.0.0/16"]',
    'clients = ["x"]', 'name = "n"', 'name = """\n[[rule]]\n"""', "match = [\n", '"a",', "]",
    "rule = [{}]", 'origin.untrusted = "untrusted"', "# comment", "", "x = 1", "= 1", "[", '"',
]


class FuzzTests(SynchronousTestCase):
    def check(self, text: str) -> None:
        try:
            parse_policy(text)
        except PolicyError as e:
            message = str(e)
            self.assertNotIn("\n", message)
            self.assertTrue(message.startswith("policy"), message)
            if e.line is not None:
                self.assertTrue(message.startswith(f"policy:{e.line}: "), message)
                self.assertTrue(1 <= e.line <= text.count("\n") + 1, (message, text))

    @FUZZ
    @given(st.text(max_size=300))
    def test_arbitrary_text(self, text: str) -> None:
        self.check(text)

    @FUZZ
    @given(st.lists(st.sampled_from(FRAGMENTS), max_size=20))
    def test_policy_like_text(self, lines: list[str]) -> None:
        self.check("\n".join(lines))


# -- decide() against a plain reference --------------------------------------

HOST_PATTERNS = [
    "a.example", "*.a.example", "*.example", "example", "B.A.EXAMPLE.", "bücher.example",
    "*.xn--bcher-kva.example", "c.example",
]
NETWORK_PATTERNS = [
    "10.0.0.0/8", "10.1.0.0/16", "10.1.2.3", "2001:db8::/32", "[2001:db8::]/48", "[2001:db8::1]",
    "::ffff:10.1.0.0/112", "0.0.0.0/0",
]
NAMES = [
    "a.example", "b.a.example", "x.y.a.example", "example", "c.example", "xn--bcher-kva.example",
    "bücher.example", "www.bücher.example", "A.Example.", "*.a.example", "*.y.a.example", "other.test",
]
DESTINATIONS = [
    "10.1.2.3", "10.2.0.1", "192.0.2.1", "::ffff:10.1.2.3", "2001:db8::1", "2001:db8:1::1", "2001:db9::1",
]
CLIENTS = ["192.168.1.5", "192.168.2.5", "::ffff:192.168.1.5", "2001:db8:c::1"]
CLIENT_NETWORKS = ["192.168.1.0/24", "192.168.0.0/16", "2001:db8:c::/48", "[2001:db8:c::1]"]
PORTS = [443, 8443, 80]


@attrs.frozen
class RuleSpec:
    match: list[str]
    action: str
    ports: list[int] | None
    clients: list[str] | None

    def toml(self) -> str:
        text = f"[[rule]]\nmatch = {self.match}\naction = {self.action!r}\n"
        if self.ports is not None:
            text += f"ports = {self.ports}\n"
        if self.clients is not None:
            text += f"clients = {self.clients}\n"
        return text.replace("'", '"')


@attrs.frozen
class Query:
    sni: str | None
    destination: str
    port: int
    client: str
    names: list[str]
    ech: bool

    def decide(self, policy: Policy, names: Sequence[str] | None = None) -> Decision:
        """Ask *policy*; with *names*, as if there were no SNI and these certificate names."""
        if names is None:
            return decide(policy, self.sni, self.destination, self.port, self.client, self.names, self.ech)
        return decide(policy, None, self.destination, self.port, self.client, names)


rule_specs = st.builds(
    RuleSpec,
    match=st.lists(st.sampled_from(HOST_PATTERNS + NETWORK_PATTERNS), min_size=1, max_size=3),
    action=st.sampled_from(["intercept", "bypass", "block"]),
    ports=st.none() | st.lists(st.sampled_from(PORTS), min_size=1, max_size=2),
    clients=st.none() | st.lists(st.sampled_from(CLIENT_NETWORKS), min_size=1, max_size=2),
)
queries = st.builds(
    Query,
    sni=st.none() | st.sampled_from(NAMES),
    destination=st.sampled_from(DESTINATIONS),
    port=st.sampled_from(PORTS),
    client=st.sampled_from(CLIENTS),
    names=st.lists(st.sampled_from(NAMES), max_size=3),
    ech=st.booleans(),
)


def render(rules: list[RuleSpec], ech: str) -> str:
    return f'[traffic]\nech = "{ech}"\n' + "".join(rule.toml() for rule in rules)


def plain_address(text: str) -> Address:
    """An address, IPv4-mapped ones as IPv4."""
    address = ip_address(text)
    if isinstance(address, IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def in_network(address: Address, network: str) -> bool:
    net = ip_network(network.replace("[", "").replace("]", ""))
    if isinstance(address, IPv4Address) and net.version == 6:
        return IPv6Address(f"::ffff:{address}") in net
    return address in net


def plain_name(name: str) -> str:
    name = name.lower().rstrip(".")
    return ".".join(label if label == "*" else label.encode("idna").decode() for label in name.split("."))


def reference(rules: list[RuleSpec], ech_mode: str, query: Query) -> tuple[str, int | None]:
    """What decide() should say: (action, 1-based rule number or None), written plainly."""
    if query.ech and ech_mode != "intercept":
        return ("bypass" if ech_mode == "bypass" else "block"), None
    destination = plain_address(query.destination)
    client = plain_address(query.client)
    subjects = [query.sni] if query.sni is not None else query.names
    names = [plain_name(s) for s in subjects]
    for number, rule in enumerate(rules, 1):
        if rule.ports is not None and query.port not in rule.ports:
            continue
        if rule.clients is not None and not any(in_network(client, c) for c in rule.clients):
            continue
        for pattern in rule.match:
            if pattern in NETWORK_PATTERNS:
                matched = in_network(destination, pattern)
            elif pattern.startswith("*."):
                matched = any(n.endswith(plain_name(pattern)[1:]) for n in names)
            else:
                matched = plain_name(pattern) in names
            if matched:
                return rule.action, number
    return "intercept", None


def witnesses(rules: list[RuleSpec]) -> list[str]:
    """For each host pattern, a name it matches."""
    return [p.replace("*", "w") for rule in rules for p in rule.match if p not in NETWORK_PATTERNS]


class ReferenceTests(SynchronousTestCase):
    @FUZZ
    @given(
        rules=st.lists(rule_specs, max_size=8),
        ech=st.sampled_from(["intercept", "bypass", "close"]),
        query=queries,
    )
    def test_decide_matches_reference(self, rules: list[RuleSpec], ech: str, query: Query) -> None:
        policy = parse_policy(render(rules, ech))
        decision = query.decide(policy)
        number = None if decision.rule is None else decision.rule.number
        self.assertEqual((decision.action, number), reference(rules, ech, query))
        if decision.rule is not None:
            self.assertIs(decision.rule, policy.rules[decision.rule.number - 1])

    @FUZZ
    @given(rules=st.lists(rule_specs, max_size=8), query=queries)
    def test_needs_names(self, rules: list[RuleSpec], query: Query) -> None:
        """needs_names() is False exactly when no certificate names could change the rule."""
        policy = parse_policy(render(rules, "intercept"))
        needs = policy.needs_names(
            sni=None,
            destination=ip_address(query.destination),
            port=query.port,
            client=ip_address(query.client),
        )
        without = query.decide(policy, names=()).rule
        some = query.decide(policy, names=query.names).rule
        every = query.decide(policy, names=witnesses(rules)).rule
        if needs:
            self.assertNotEqual(every, without)
        else:
            self.assertEqual(some, without)
            self.assertEqual(every, without)


class RuleTests(SynchronousTestCase):
    def test_rules_made_in_code(self) -> None:
        rule = Rule(match=(parse_pattern("*.a.example"),), action="block", number=1, line=1)
        policy = Policy(rules=(rule,))
        self.assertEqual(decide(policy, "b.a.example").rule, rule)
        self.assertRaises(ValueError, Rule, match=(), action="allow")
        self.assertRaises(ValueError, Policy, untrusted="mimic")

    def test_policies_compare_by_value(self) -> None:
        self.assertEqual(parse_policy(EXAMPLE), parse_policy(EXAMPLE))
        self.assertNotEqual(parse_policy(EXAMPLE), parse_policy(EXAMPLE.replace("443", "8443")))
