# trial's assertion methods carry no annotations.
# mypy: disable-error-code="no-untyped-call"
"""Tests for request rules (urls, methods), Policy.decide_request, and [inspect]/[audit]."""

from __future__ import annotations

import fnmatch
from ipaddress import ip_address
from pathlib import Path
from textwrap import dedent

import attrs
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from etpmitm.http import ALLOW, RequestHead, RequestVerdict
from etpmitm.policy import Policy, PolicyError, Rule, parse_pattern, parse_policy, parse_url_pattern
from etpmitm.policy.patterns import PatternError
from etpmitm.policy.urls import AnyHost, UrlPattern, normalise_path, request_host

FUZZ = settings(max_examples=300, deadline=None, database=None)


def ask(
    policy: Policy,
    url: str = "a.example/",
    method: str = "GET",
    sni: str | None = "a.example",
    destination: str = "192.0.2.1",
    port: int = 443,
    client: str = "192.168.10.5",
) -> RequestVerdict:
    authority, slash, path = url.partition("/")
    head = RequestHead(method=method, authority=authority, path=slash + path)
    return policy.decide_request(
        head, sni=sni, destination=ip_address(destination), port=port, client=ip_address(client)
    )


def rules(*tables: str) -> Policy:
    return parse_policy("".join(dedent(t) for t in tables))


def url_rule(*urls: str, action: str = "block", extra: str = "") -> str:
    listed = ", ".join(f'"{u}"' for u in urls)
    return f'[[rule]]\nurls = [{listed}]\naction = "{action}"\n{extra}'


def blocked(policy: Policy, url: str, **kwargs: object) -> bool:
    verdict = ask(policy, url, **kwargs)  # type: ignore[arg-type]
    return verdict.action == "block"


class ParseTests(SynchronousTestCase):
    def test_request_rule(self) -> None:
        policy = rules(
            """\
            [[rule]]
            name = "uploads"
            urls = ["good.example/private/*", "*.example.com/api/upload"]
            methods = ["POST", "PUT"]
            action = "block"
            """
        )
        rule = policy.rules[0]
        self.assertTrue(rule.is_request_rule)
        self.assertEqual(rule.match, ())
        self.assertEqual(rule.methods, frozenset({"POST", "PUT"}))
        self.assertEqual([u.text for u in rule.urls or ()], ["good.example/private/*", "*.example.com/api/upload"])
        self.assertEqual(rule.describe(), "rule 1 'uploads' (line 1)")

    def test_connection_rule_is_not_a_request_rule(self) -> None:
        self.assertFalse(parse_policy('[[rule]]\nmatch = ["a.example"]\naction = "block"\n').rules[0].is_request_rule)

    def test_methods_alone(self) -> None:
        rule = parse_policy('[[rule]]\nmethods = ["DELETE"]\naction = "block"\n').rules[0]
        self.assertTrue(rule.is_request_rule)
        self.assertIsNone(rule.urls)

    def test_settings_defaults(self) -> None:
        policy = parse_policy("")
        self.assertEqual(
            (policy.inspect_http, policy.strip_quic, policy.max_headers, policy.audit_query), (True, True, 100, False)
        )

    def test_settings(self) -> None:
        policy = parse_policy(
            "[inspect]\nhttp = false\nstrip_quic = false\nmax_headers = 250\n[audit]\nquery = true\n"
        )
        self.assertEqual(
            (policy.inspect_http, policy.strip_quic, policy.max_headers, policy.audit_query), (False, False, 250, True)
        )

    def test_rules_made_in_code(self) -> None:
        url = (parse_url_pattern("a.example/x"),)
        self.assertTrue(Rule(match=(), action="block", urls=url).is_request_rule)
        self.assertRaises(ValueError, Rule, match=(), action="bypass", urls=url)
        self.assertRaises(ValueError, Rule, match=(), action="block")  # a connection rule needs match
        self.assertRaises(ValueError, Rule, match=(), action="bypass", methods=frozenset({"POST"}))


class ReadmeTests(SynchronousTestCase):
    def test_inspection_examples(self) -> None:
        """The README's request rules and settings are a valid policy, with the documented defaults."""
        readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
        section = readme.split("\n## Inspection\n", 1)[1].split("\n## ", 1)[0]
        rules_text, settings_text = [block.split("```", 1)[0] for block in section.split("```toml\n")[1:]]
        policy = parse_policy(rules_text, "README.md")
        self.assertEqual([r.action for r in policy.rules], ["block", "intercept", "block"])
        self.assertEqual(ask(policy, "www.share.example/api/upload", method="PUT").rule,
                         "rule 1 'no uploads to file shares' (line 1)")
        self.assertEqual(ask(policy, "intranet.example/public/a", client="10.50.1.1").action, "allow")
        self.assertEqual(ask(policy, "intranet.example/private", client="10.50.1.1").action, "block")
        defaults = parse_policy(settings_text, "README.md")
        self.assertEqual(
            (defaults.inspect_http, defaults.strip_quic, defaults.max_headers, defaults.audit_query),
            (Policy().inspect_http, Policy().strip_quic, Policy().max_headers, Policy().audit_query),
        )


class ErrorTests(SynchronousTestCase):
    """Each problem is one line: file, line, rule, problem."""

    def assertError(self, text: str, message: str) -> None:
        with self.assertRaises(PolicyError) as caught:
            parse_policy(dedent(text), "policy.toml")
        self.assertEqual(str(caught.exception), message)

    def test_bypass_is_connection_level(self) -> None:
        self.assertError(
            """\
            [[rule]]
            match = ["a.example"]
            action = "block"

            [[rule]]
            urls = ["a.example/x"]
            action = "bypass"
            """,
            "policy.toml:7: rule 2: bypass applies to whole connections, not to requests: "
            "a rule with urls or methods can only block or intercept (allow)",
        )
        self.assertError(
            '[[rule]]\nmethods = ["GET"]\n\naction = "bypass"\n',
            "policy.toml:4: rule 1: bypass applies to whole connections, not to requests: "
            "a rule with urls or methods can only block or intercept (allow)",
        )

    def test_bad_urls(self) -> None:
        cases = [
            ("https://a.example/x", "write URL patterns without a scheme, as in 'good.example/path/*'"),
            ("a.example:8443/x", "a port is not allowed (use the rule's ports); write IPv6 addresses in brackets"),
            ("a.example/x?y=1", "'?' is not allowed: the query and fragment are never matched"),
            ("a.example/x#top", "'#' is not allowed: the query and fragment are never matched"),
            ("", "empty URL pattern"),
            ("/x", "the host is missing (use '*' for any host)"),
            ("a b.example/", "whitespace is not allowed"),
            ("a*.example/x", "'*' may only be the whole first label, as in '*.example.com'"),
            ("10.0.0.0/8", "'10.0.0.0/8' looks like a network: networks go in match, URLs here"),
            ("[2001:db8::1]x", "unexpected 'x' after the host (no port: use the rule's ports)"),
            ("[2001:db8::1/x", "'[' without a closing ']'"),
        ]
        for url, problem in cases:
            self.assertError(
                f'[[rule]]\naction = "block"\nurls = ["{url}"]\n',
                f"policy.toml:3: rule 1: bad URL pattern {url!r} in urls: {problem}",
            )

    def test_urls_shape(self) -> None:
        self.assertError('[[rule]]\naction = "block"\nurls = []\n', "policy.toml:3: rule 1: urls is empty")
        self.assertError(
            '[[rule]]\naction = "block"\nurls = "a.example/x"\n',
            "policy.toml:3: rule 1: urls must be an array of strings, like [\"...\"], not 'a.example/x'",
        )
        self.assertError('[[rule]]\naction = "block"\nurls = [1]\n', "policy.toml:3: rule 1: urls holds 1, not a string")

    def test_bad_methods(self) -> None:
        self.assertError(
            '[[rule]]\naction = "block"\nmethods = ["post"]\n',
            "policy.toml:3: rule 1: methods are case-sensitive and upper case: write 'POST', not 'post'",
        )
        self.assertError(
            '[[rule]]\naction = "block"\nmethods = ["PO ST"]\n',
            "policy.toml:3: rule 1: methods holds 'PO ST', not an HTTP method (a token such as \"POST\")",
        )
        self.assertError('[[rule]]\naction = "block"\nmethods = []\n', "policy.toml:3: rule 1: methods is empty")

    def test_connection_rule_still_needs_match(self) -> None:
        self.assertError(
            '[[rule]]\naction = "block"\n', "policy.toml:1: rule 1: match is missing (or urls or methods, for a request rule)"
        )

    def test_settings_values(self) -> None:
        self.assertError("[inspect]\nhttp = 1\n", "policy.toml:2: [inspect] http must be true or false, not 1")
        self.assertError(
            '[inspect]\nstrip_quic = "yes"\n', "policy.toml:2: [inspect] strip_quic must be true or false, not 'yes'"
        )
        self.assertError("[audit]\n\nquery = 0\n", "policy.toml:3: [audit] query must be true or false, not 0")
        for value in ("0", "10001", "true", "1.5"):
            self.assertError(
                f"[inspect]\nmax_headers = {value}\n",
                f"policy.toml:2: [inspect] max_headers must be an integer from 1 to 10000, not {value}",
            )
        self.assertError(
            "[inspect]\nhtp = true\n", "policy.toml:2: [inspect] unknown key 'htp' (did you mean 'http'?)"
        )
        self.assertError("[audit]\nquerry = true\n", "policy.toml:2: [audit] unknown key 'querry' (did you mean 'query'?)")


FRAGMENTS = [
    "[[rule]]", "[inspect]", "[audit]", 'urls = ["a.example/x/*", "*/y"]', 'urls = ["http://a/"]', "urls = []",
    'methods = ["POST"]', 'methods = ["post"]', 'match = ["a.example"]', 'action = "bypass"', 'action = "block"',
    'action = "intercept"', "http = false", "strip_quic = 1", "max_headers = 0", "max_headers = 50", "query = true",
    "ports = [443]", "", "# c",
]


class FuzzTests(SynchronousTestCase):
    @FUZZ
    @given(st.lists(st.sampled_from(FRAGMENTS), max_size=20))
    def test_errors_are_one_line_with_their_line(self, lines: list[str]) -> None:
        text = "\n".join(lines)
        try:
            parse_policy(text)
        except PolicyError as e:
            message = str(e)
            self.assertNotIn("\n", message)
            if e.line is not None:
                self.assertTrue(message.startswith(f"policy:{e.line}: "), message)
                self.assertTrue(1 <= e.line <= text.count("\n") + 1, (message, text))


class MatchTests(SynchronousTestCase):
    def test_path_glob(self) -> None:
        policy = rules(url_rule("good.example/private/*"))
        self.assertTrue(blocked(policy, "good.example/private/"))
        self.assertTrue(blocked(policy, "good.example/private/a"))
        self.assertTrue(blocked(policy, "good.example/private/a/b/c.html"))
        self.assertFalse(blocked(policy, "good.example/private"))
        self.assertFalse(blocked(policy, "good.example/Private/a"))  # paths are case-sensitive
        self.assertFalse(blocked(policy, "good.example/public/private/a"))
        self.assertFalse(blocked(policy, "other.example/private/a"))

    def test_star_within_a_segment(self) -> None:
        policy = rules(url_rule("a.example/files/*.zip"))
        self.assertTrue(blocked(policy, "a.example/files/x.zip"))
        self.assertTrue(blocked(policy, "a.example/files/sub/x.zip"))
        self.assertFalse(blocked(policy, "a.example/files/x.zip.txt"))

    def test_exact_path(self) -> None:
        policy = rules(url_rule("*.example.com/api/upload"))
        self.assertTrue(blocked(policy, "www.example.com/api/upload"))
        self.assertTrue(blocked(policy, "a.b.example.com/api/upload"))
        self.assertFalse(blocked(policy, "example.com/api/upload"))
        self.assertFalse(blocked(policy, "www.example.com/api/upload/"))

    def test_host_only_is_every_path(self) -> None:
        policy = rules(url_rule("a.example"))
        self.assertTrue(blocked(policy, "a.example/"))
        self.assertTrue(blocked(policy, "a.example/x/y"))
        self.assertFalse(blocked(policy, "b.example/"))
        root = rules(url_rule("a.example/"))
        self.assertTrue(blocked(root, "a.example/"))
        self.assertFalse(blocked(root, "a.example/x"))

    def test_any_host(self) -> None:
        policy = rules(url_rule("*/upload/*"))
        self.assertTrue(blocked(policy, "a.example/upload/1"))
        self.assertTrue(blocked(policy, "192.0.2.9/upload/1"))
        self.assertTrue(blocked(policy, "/upload/1", sni=None))
        self.assertFalse(blocked(policy, "a.example/download/1"))

    def test_address_hosts(self) -> None:
        policy = rules(url_rule("192.0.2.7/admin*", "[2001:db8::1]/admin*"))
        self.assertTrue(blocked(policy, "192.0.2.7/admin"))
        self.assertTrue(blocked(policy, "192.0.2.7:8080/admin/x"))
        self.assertTrue(blocked(policy, "[2001:db8::1]/admin"))
        self.assertTrue(blocked(policy, "[::ffff:192.0.2.7]:443/admin"))
        self.assertFalse(blocked(policy, "192.0.2.8/admin"))
        self.assertFalse(blocked(policy, "a.example/admin", destination="192.0.2.7"))  # the URL's host, not the destination

    def test_host_is_case_insensitive_and_port_free(self) -> None:
        policy = rules(url_rule("A.Example./x"))
        self.assertTrue(blocked(policy, "a.example/x"))
        self.assertTrue(blocked(policy, "A.EXAMPLE:8443/x"))
        self.assertTrue(blocked(policy, "a.example./x"))

    def test_idna(self) -> None:
        for pattern in ("bücher.example/x", "xn--bcher-kva.example/x", "BÜCHER.example/x"):
            policy = rules(url_rule(pattern))
            for authority in ("xn--bcher-kva.example", "bücher.example", "BÜCHER.EXAMPLE", "XN--BCHER-KVA.example"):
                self.assertTrue(blocked(policy, f"{authority}/x"), (pattern, authority))
        wildcard = rules(url_rule("*.bücher.example/*"))
        self.assertTrue(blocked(wildcard, "www.xn--bcher-kva.example/a"))

    def test_no_authority_uses_the_sni(self) -> None:
        policy = rules(url_rule("a.example/x"))
        self.assertTrue(blocked(policy, "/x", sni="a.example"))
        self.assertFalse(blocked(policy, "/x", sni="b.example"))
        self.assertFalse(blocked(policy, "/x", sni=None))
        self.assertFalse(blocked(policy, "b.example/x", sni="a.example"))  # the Host wins over the SNI

    def test_normalised_paths(self) -> None:
        policy = rules(url_rule("a.example/private/*"))
        self.assertTrue(blocked(policy, "a.example/%70rivate/x"))
        self.assertTrue(blocked(policy, "a.example/public/../private/x"))
        self.assertTrue(blocked(policy, "a.example/./private/./x"))
        self.assertTrue(blocked(policy, "a.example/public/%2E%2E/private/x"))
        self.assertFalse(blocked(policy, "a.example/private%2Fx"))  # an encoded slash is not a slash
        encoded = rules(url_rule("a.example/a%2fb"))
        self.assertTrue(blocked(encoded, "a.example/a%2Fb"))

    def test_absolute_form(self) -> None:
        policy = rules(url_rule("a.example/x"))
        head = RequestHead(method="GET", authority="b.example", path="http://a.example/x")
        verdict = policy.decide_request(
            head, sni="b.example", destination=ip_address("192.0.2.1"), port=443, client=ip_address("10.0.0.1")
        )
        self.assertEqual(verdict.action, "block")

    def test_methods(self) -> None:
        policy = rules(url_rule("a.example/up/*", extra='methods = ["POST", "PUT"]\n'))
        self.assertTrue(blocked(policy, "a.example/up/1", method="POST"))
        self.assertTrue(blocked(policy, "a.example/up/1", method="PUT"))
        self.assertFalse(blocked(policy, "a.example/up/1", method="GET"))
        self.assertFalse(blocked(policy, "a.example/up/1", method="post"))  # methods are case-sensitive
        self.assertFalse(blocked(policy, "a.example/down/1", method="POST"))
        everywhere = rules('[[rule]]\nmethods = ["DELETE"]\naction = "block"\n')
        self.assertTrue(blocked(everywhere, "any.example/x", method="DELETE"))
        self.assertFalse(blocked(everywhere, "any.example/x", method="GET"))

    def test_match_on_a_request_rule(self) -> None:
        policy = rules('[[rule]]\nmatch = ["*.a.example", "10.0.0.0/8"]\nmethods = ["POST"]\naction = "block"\n')
        self.assertTrue(blocked(policy, "x.a.example/", method="POST"))
        self.assertTrue(blocked(policy, "b.example/", method="POST", destination="10.1.2.3"))
        self.assertFalse(blocked(policy, "b.example/", method="POST"))
        self.assertFalse(blocked(policy, "x.a.example/", method="GET"))

    def test_ports_and_clients(self) -> None:
        policy = rules(url_rule("a.example/*", extra='ports = [8443]\nclients = ["10.0.0.0/8"]\n'))
        self.assertTrue(blocked(policy, "a.example/x", port=8443, client="10.1.1.1"))
        self.assertTrue(blocked(policy, "a.example/x", port=8443, client="::ffff:10.1.1.1"))
        self.assertFalse(blocked(policy, "a.example/x", port=443, client="10.1.1.1"))
        self.assertFalse(blocked(policy, "a.example/x", port=8443, client="192.168.1.1"))

    def test_first_match_wins(self) -> None:
        policy = rules(
            url_rule("a.example/private/open/*", action="intercept"),
            url_rule("a.example/private/*"),
        )
        self.assertEqual(ask(policy, "a.example/private/open/x").action, "allow")
        self.assertEqual(ask(policy, "a.example/private/open/x").rule, "rule 1 (line 1)")
        self.assertEqual(ask(policy, "a.example/private/x").action, "block")
        reversed_ = rules(url_rule("a.example/private/*"), url_rule("a.example/private/open/*", action="intercept"))
        self.assertEqual(ask(reversed_, "a.example/private/open/x").action, "block")

    def test_verdict(self) -> None:
        policy = rules(
            '[[rule]]\nmatch = ["z.example"]\naction = "bypass"\n\n',
            '[[rule]]\nname = "no uploads"\nurls = ["*.a.example/up/*"]\nmethods = ["POST"]\naction = "block"\n',
        )
        self.assertEqual(
            ask(policy, "www.a.example:8443/up/f", method="POST"),
            RequestVerdict(
                "block",
                "rule 2 'no uploads' (line 5) matched POST *.a.example/up/* (request POST www.a.example/up/f)",
                "rule 2 'no uploads' (line 5)",
            ),
        )

    def test_no_match_is_allow(self) -> None:
        self.assertIs(ask(parse_policy("")), ALLOW)
        self.assertIs(ask(rules(url_rule("b.example/x")), "a.example/x"), ALLOW)

    def test_connection_block_rules_cover_requests(self) -> None:
        """A blocked host stays blocked on a connection opened for another name (HTTP/2 reuse)."""
        policy = rules('[[rule]]\nname = "ads"\nmatch = ["*.ads.example", "10.9.0.0/16"]\naction = "block"\n')
        verdict = ask(policy, "x.ads.example/banner", sni="www.example")
        self.assertEqual(
            verdict,
            RequestVerdict(
                "block",
                "rule 1 'ads' (line 1) matched *.ads.example (request GET x.ads.example/banner)",
                "rule 1 'ads' (line 1)",
            ),
        )
        # Its networks were the connection's to decide: not per request.
        self.assertEqual(ask(policy, "www.example/", destination="10.9.1.1").action, "allow")

    def test_other_connection_rules_do_not_apply_to_requests(self) -> None:
        policy = rules(
            '[[rule]]\nmatch = ["a.example"]\naction = "intercept"\n',
            '[[rule]]\nmatch = ["a.example"]\naction = "bypass"\n',
            url_rule("a.example/x"),
        )
        self.assertEqual(ask(policy, "a.example/x").action, "block")
        self.assertIs(ask(policy, "a.example/y"), ALLOW)

    def test_request_rules_never_decide_connections(self) -> None:
        policy = rules(url_rule("a.example/*"), '[[rule]]\nmethods = ["POST"]\naction = "block"\n')
        decision = policy.decide(sni="a.example", destination=ip_address("192.0.2.1"), port=443,
                                 client=ip_address("10.0.0.1"))
        self.assertEqual((decision.action, decision.rule), ("intercept", None))
        self.assertFalse(policy.needs_names(sni=None, destination=ip_address("192.0.2.1"), port=443,
                                            client=ip_address("10.0.0.1")))


class NormaliseTests(SynchronousTestCase):
    def test_normalise_path(self) -> None:
        cases = {
            "/a/b": "/a/b",
            "/%7euser/%41": "/~user/A",
            "/a%2fb%3f": "/a%2Fb%3F",
            "/a/%zz/%4": "/a/%zz/%4",
            "/a/./b/../c": "/a/c",
            "/a/b/..": "/a/",
            "/..": "/",
            "/a/.": "/a/",
            "*": "*",
            "": "",
        }
        for path, expected in cases.items():
            self.assertEqual(normalise_path(path), expected, path)

    def test_request_host(self) -> None:
        self.assertEqual(request_host("A.Example:443", None), "a.example")
        self.assertEqual(request_host("", "b.example"), "b.example")
        self.assertEqual(request_host("[2001:db8::1]:8443", None), ip_address("2001:db8::1"))
        self.assertEqual(request_host("192.0.2.1", None), ip_address("192.0.2.1"))
        self.assertEqual(request_host("bücher.example", None), "xn--bcher-kva.example")
        self.assertIsNone(request_host("", None))
        self.assertIsNone(request_host("\udcff.example", None))

    @FUZZ
    @given(st.text(alphabet="/.%2eEfF7aAb~", max_size=30))
    def test_normalising_is_idempotent(self, path: str) -> None:
        once = normalise_path(path)
        self.assertEqual(normalise_path(once), once)


# -- properties ------------------------------------------------------------

LABELS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12).filter(
    lambda s: not s.startswith("-") and not s.endswith("-")
)
HOSTS = st.lists(LABELS, min_size=1, max_size=4).map(lambda labels: ".".join([*labels, "example"]))
# Path segments as a TOML string can hold them; no dot segments, which a request resolves.
SEGMENTS = st.text(
    alphabet=st.characters(blacklist_characters='/?#*%"\\', blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")),
    max_size=8,
).filter(lambda s: s not in (".", ".."))
PATHS = st.lists(SEGMENTS, max_size=5).map(lambda segments: "/" + "/".join(segments))


class PropertyTests(SynchronousTestCase):
    @FUZZ
    @given(
        method=st.text(max_size=10),
        authority=st.text(max_size=40),
        path=st.text(max_size=60),
        sni=st.none() | st.text(max_size=30),
    )
    def test_never_raises(self, method: str, authority: str, path: str, sni: str | None) -> None:
        policy = rules(
            url_rule("a.example/x/*", "*/up/*", "[2001:db8::1]/*", "*.b.example"),
            '[[rule]]\nmethods = ["POST"]\nmatch = ["c.example", "10.0.0.0/8"]\naction = "block"\n',
            '[[rule]]\nmatch = ["*.d.example"]\naction = "block"\n',
        )
        head = RequestHead(method=method, authority=authority, path=path)
        verdict = policy.decide_request(
            head, sni=sni, destination=ip_address("10.0.0.1"), port=443, client=ip_address("192.168.0.1")
        )
        self.assertIn(verdict.action, ("allow", "block"))

    @FUZZ
    @given(host=HOSTS, path=PATHS, upper=st.booleans(), port=st.none() | st.integers(1, 65535))
    def test_a_url_matches_its_own_rule(self, host: str, path: str, upper: bool, port: int | None) -> None:
        policy = rules(url_rule(host + path))
        authority = (host.upper() if upper else host) + ("" if port is None else f":{port}")
        self.assertTrue(blocked(policy, authority + path))

    @FUZZ
    @given(host=HOSTS, path=PATHS, data=st.data())
    def test_a_star_for_any_segment_still_matches(self, host: str, path: str, data: st.DataObject) -> None:
        segments = path.split("/")
        index = data.draw(st.integers(1, len(segments) - 1)) if len(segments) > 1 else 0
        assume(index)
        globbed = "/".join([*segments[:index], "*", *segments[index + 1 :]])
        self.assertTrue(blocked(rules(url_rule(host + globbed)), host + path))
        self.assertTrue(blocked(rules(url_rule("*." + host.partition(".")[2] + "/*")), host + path))


@attrs.frozen
class Spec:
    host: str
    path: str
    methods: tuple[str, ...] | None
    action: str

    def toml(self) -> str:
        text = url_rule(self.host + self.path, action=self.action)
        if self.methods is not None:
            text += "methods = [" + ", ".join(f'"{m}"' for m in self.methods) + "]\n"
        return text


REF_HOSTS = ["a.example", "*.a.example", "*.example", "b.example", "*"]
REF_PATHS = ["", "/", "/x", "/x/*", "/*/y", "/x/y", "/*"]
REF_METHODS = ["GET", "POST", "PUT"]
specs = st.builds(
    Spec,
    host=st.sampled_from(REF_HOSTS),
    path=st.sampled_from(REF_PATHS),
    methods=st.none() | st.lists(st.sampled_from(REF_METHODS), min_size=1, max_size=2).map(tuple),
    action=st.sampled_from(["block", "intercept"]),
)


def reference(specs: list[Spec], method: str, host: str, path: str) -> tuple[str, int | None]:
    """What decide_request should say, written plainly: (action, 1-based rule number)."""
    for number, spec in enumerate(specs, 1):
        if spec.methods is not None and method not in spec.methods:
            continue
        if spec.host == "*":
            host_ok = True
        elif spec.host.startswith("*."):
            host_ok = host.endswith(spec.host[1:])
        else:
            host_ok = host == spec.host
        if host_ok and (not spec.path or fnmatch.fnmatchcase(path, spec.path)):
            return ("block" if spec.action == "block" else "allow"), number
    return "allow", None


class ReferenceTests(SynchronousTestCase):
    @FUZZ
    @given(
        specs=st.lists(specs, max_size=8),
        method=st.sampled_from(REF_METHODS),
        host=st.sampled_from(["a.example", "w.a.example", "b.example", "c.test"]),
        path=st.sampled_from(["/", "/x", "/x/", "/x/y", "/z/y", "/x/y/z", ""]),
    )
    def test_first_match_against_reference(self, specs: list[Spec], method: str, host: str, path: str) -> None:
        policy = parse_policy("".join(spec.toml() for spec in specs))
        verdict = ask(policy, host + path, method=method, sni=None)
        number = None if verdict.rule is None else int(verdict.rule.split()[1])
        self.assertEqual((verdict.action, number), reference(specs, method, host, path))


class PatternTests(SynchronousTestCase):
    def test_url_hosts_are_the_match_patterns(self) -> None:
        self.assertEqual(parse_url_pattern("*.Bücher.example/x").host, parse_pattern("*.Bücher.example"))
        self.assertEqual(parse_url_pattern("*"), UrlPattern("*", AnyHost(), None))
        self.assertEqual(parse_url_pattern("a.example").path, None)
        for text in ("*.*.example/", "a.example/x y", "http:/a.example/"):
            self.assertRaises(PatternError, parse_url_pattern, text)
