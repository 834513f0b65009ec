"""Threat lists: the file formats, the hash table, the decision order, reloads (in memory)."""

from __future__ import annotations

import ipaddress
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings, strategies as st
from twisted.internet.defer import Deferred, fail
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from etpmitm.audit import ConnectionRecord
from etpmitm.blockpage import render_html
from etpmitm.gateway.connection import State
from etpmitm.http import RequestHead
from etpmitm.learning import bypass_key
from etpmitm.policy import parse_policy
from etpmitm.policy.listspec import ListSpec
from etpmitm.threat.judge import ThreatList, ThreatLists, decide_connection, decide_request, needs_names
from etpmitm.threat.keeper import ListKeeper
from etpmitm.threat.lists import ListError, parse_list, read_entries
from etpmitm.gateway.policyholder import PolicyHolder
from etpmitm.threat.service import REMAP, mapLists, remap
from etpmitm.threat.store import read_manifest
from etpmitm.threat.table import HashTable, build_table
from tests.corelab import ORIGIN, CoreTestCase
from tests import test_service

ADDRESS = ipaddress.ip_address("192.0.2.10")
CLIENT = ipaddress.ip_address("10.0.0.2")


def table(text: str) -> HashTable:
    parsed = parse_list(text.encode(), "test.txt")
    return HashTable(build_table(parsed.domains, parsed.urls))


def lists(*entries: tuple[str, str, str]) -> ThreatLists:
    """ThreatLists from (name, action, file text) triples, in order."""
    return ThreatLists(tuple(ThreatList(name, action, table(text), f"{name}.txt")  # type: ignore[arg-type]
                             for name, action, text in entries))


class FormatTests(SynchronousTestCase):
    def parse(self, text: str) -> tuple[list[str], list[str], int]:
        parsed = parse_list(text.encode(), "f.txt")
        return [d.decode() for d in parsed.domains], [u.decode() for u in parsed.urls], parsed.skipped

    def test_everyFormat(self) -> None:
        text = (
            "# a comment\n\n"
            "plain.example\n"
            "  Upper.Example.  \n"
            "*.wild.example\n"
            "0.0.0.0 hosts.example\n"
            "127.0.0.1 a.example b.example  # two on one line\n"
            "::1 localhost\n"
            "0.0.0.0 0.0.0.0\n"
            "http://url.example/bad/path?q=1#frag\n"
            "https://user@port.example:8443/x/\n"
            "noscheme.example/p\n"
            "http://whole.example/\n"
            "2001:db8::1\n"
            "bücher.example\n"
        )
        domains, urls, skipped = self.parse(text)
        self.assertEqual(domains, ["plain.example", "upper.example", "wild.example", "hosts.example", "a.example",
                                   "b.example", "whole.example", "2001:db8::1", "xn--bcher-kva.example"])
        self.assertEqual(urls, ["url.example/bad/path", "port.example/x", "noscheme.example/p"])
        self.assertEqual(skipped, 2)

    def test_badLinesFailTheFileWithTheirLine(self) -> None:
        for text, line, problem in [
            ("ok.example\nbad!name.example\n", 2, "invalid character '!'"),
            ("a..b.example\n", 1, "empty label"),
            ("# c\nnot-an-address evil.example\n", 2, "a hosts-file line starts with an address"),
            ("\n\nftp://evil.example/x\n", 3, "only http and https"),
            ("x" * 300 + "\n", 1, "longer than 253"),
        ]:
            with self.assertRaises(ListError) as caught:
                parse_list(text.encode(), "f.txt")
            self.assertEqual((caught.exception.source, caught.exception.line), ("f.txt", line), text)
            self.assertIn(problem, str(caught.exception))
            self.assertTrue(str(caught.exception).startswith(f"f.txt:{line}: "))

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.sampled_from([
        "a.example", "b.example.", "0.0.0.0 c.example", "127.0.0.1 d.example", "", "# note", "localhost",
        "http://e.example/p", "*.f.example", "G.Example", "0.0.0.0 0.0.0.0",
    ]), max_size=40), st.integers(1, 64))
    def test_blocksOfAnySizeReadTheSame(self, lines: list[str], size: int) -> None:
        """The fast path (whole blocks of plain names) and the per-line path agree."""
        data = "".join(f"{line}\n" for line in lines).encode()
        whole = parse_list(data, "f.txt")
        domains: list[bytes] = []
        urls: list[bytes] = []
        skipped = read_entries([data[i:i + size] for i in range(0, len(data), size)], "f.txt", domains, urls)
        self.assertEqual((domains, urls, skipped), (whole.domains, whole.urls, whole.skipped))
        one_by_one = [parse_list(f"{line}\n".encode(), "f.txt") for line in lines]
        self.assertEqual(whole.domains, [d for p in one_by_one for d in p.domains])
        self.assertEqual(whole.skipped, sum(p.skipped for p in one_by_one))

    def test_lineNumbersCountAcrossBlocks(self) -> None:
        data = b"".join(b"n%d.example\n" % i for i in range(5000)) + b"bad name here\n"
        blocks = [data[i:i + 4096] for i in range(0, len(data), 4096)]
        with self.assertRaises(ListError) as caught:
            read_entries(blocks, "f.txt", [], [])
        self.assertEqual(caught.exception.line, 5001)

    def test_emptyAndCommentOnlyFilesAreEmptyLists(self) -> None:
        self.assertEqual(self.parse("# nothing\n\n"), ([], [], 0))


NAME = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
DOMAIN = st.lists(NAME, min_size=1, max_size=4).map(".".join)


class TableTests(SynchronousTestCase):
    @settings(max_examples=60, deadline=None)
    @given(st.sets(DOMAIN, min_size=1, max_size=30), st.lists(NAME, max_size=3), st.lists(DOMAIN, max_size=20))
    def test_listedNamesAndTheirSubdomainsMatchOthersDoNot(
        self, listed: set[str], prefix: list[str], others: list[str]
    ) -> None:
        t = table("\n".join(listed))
        for name in listed:
            self.assertEqual(t.domain(name), name)
            below = ".".join([*prefix, name])
            self.assertIsNotNone(t.domain(below))
        for name in others:
            labels = name.split(".")
            suffixes = {".".join(labels[i:]) for i in range(len(labels))}
            self.assertEqual(t.domain(name) is not None, bool(suffixes & listed), name)

    def test_parentsAndLookalikesDoNotMatch(self) -> None:
        t = table("evil.example\n")
        self.assertIsNone(t.domain("example"))
        self.assertIsNone(t.domain("notevil.example"))
        self.assertIsNone(t.domain("evil.example.com"))
        self.assertEqual(t.domain("a.b.evil.example"), "evil.example")

    def test_urlPrefixesAtSlashBoundaries(self) -> None:
        t = table("evil.example/bad/path\n")
        self.assertEqual(t.url("evil.example", "/bad/path"), "evil.example/bad/path")
        self.assertEqual(t.url("evil.example", "/bad/path/"), "evil.example/bad/path")
        self.assertEqual(t.url("evil.example", "/bad/path/more"), "evil.example/bad/path")
        self.assertIsNone(t.url("evil.example", "/bad/pathx"))
        self.assertIsNone(t.url("evil.example", "/bad"))
        self.assertIsNone(t.url("sub.evil.example", "/bad/path"))  # a URL's host is exact
        self.assertIsNone(t.domain("evil.example"))  # and it lists no domain

    def test_aDamagedTableIsRefused(self) -> None:
        data = build_table([b"a.example"])
        for bad in (data[:-1], b"NOTMAGIC" + data[8:], b""):
            self.assertRaises(ValueError, HashTable, bad)


class ConnectionOrderTests(SynchronousTestCase):
    def decide(self, policy: str, threat: ThreatLists, sni: str | None = "evil.example", names: tuple[str, ...] = ()) -> Any:
        return decide_connection(parse_policy(policy), threat, sni=sni, destination=ADDRESS, port=443,
                                 client=CLIENT, names=names)

    def test_blockListsComeBeforeRules(self) -> None:
        d = self.decide('[[rule]]\nmatch = ["0.0.0.0/0"]\naction = "bypass"\n', lists(("malware", "block", "evil.example")),
                        sni="www.evil.example")
        self.assertEqual((d.action, d.category), ("block", "malware"))
        self.assertIn("listed in 'malware' as evil.example (SNI www.evil.example)", d.reason)

    def test_otherListsNeverOverrideARule(self) -> None:
        threat = lists(("audit", "intercept", "evil.example"), ("banks", "bypass", "evil.example"))
        d = self.decide('[[rule]]\nmatch = ["evil.example"]\naction = "block"\n', threat)
        self.assertEqual((d.action, d.category), ("block", "audit"))
        self.assertIsNotNone(d.rule)

    def test_withoutARuleTheFirstListDecides(self) -> None:
        d = self.decide("", lists(("banks", "bypass", "evil.example"), ("audit", "intercept", "evil.example")))
        self.assertEqual((d.action, d.category), ("bypass", "banks"))
        d = self.decide("", lists(("audit", "intercept", "evil.example"), ("banks", "bypass", "evil.example")))
        self.assertEqual((d.action, d.category), ("intercept", "audit"))

    def test_anECHModeIsNotOverriddenByAnAuditList(self) -> None:
        policy = parse_policy('[traffic]\nech = "bypass"\n')
        threat = lists(("audit", "intercept", "evil.example"))
        d = decide_connection(policy, threat, sni="evil.example", destination=ADDRESS, port=443, client=CLIENT, ech=True)
        self.assertEqual((d.action, d.category), ("bypass", "audit"))
        self.assertFalse(needs_names(policy, threat, sni=None, destination=ADDRESS, port=443, client=CLIENT, ech=True))

    def test_unlistedNamesAreDecidedByThePolicyAlone(self) -> None:
        d = self.decide("", lists(("malware", "block", "evil.example")), sni="good.example")
        self.assertEqual((d.action, d.category, d.reason), ("intercept", None, "no rule matched"))

    def test_certificateNamesWithoutSNIAndTheDestination(self) -> None:
        threat = lists(("malware", "block", "evil.example\n192.0.2.99"))
        d = self.decide("", threat, sni=None, names=("good.example", "*.evil.example"))
        self.assertEqual((d.action, d.category), ("block", "malware"))
        self.assertIn("certificate name *.evil.example", d.reason)
        d = decide_connection(parse_policy(""), threat, sni="x.test", destination=ipaddress.ip_address("192.0.2.99"),
                              port=443, client=CLIENT)
        self.assertEqual((d.action, d.category), ("block", "malware"))
        self.assertTrue(needs_names(parse_policy(""), threat, sni=None, destination=ADDRESS, port=443, client=CLIENT))
        self.assertFalse(needs_names(parse_policy(""), ThreatLists(), sni=None, destination=ADDRESS, port=443, client=CLIENT))


class RequestOrderTests(SynchronousTestCase):
    def judge(self, threat: ThreatLists, authority: str, path: str, policy: str = "") -> Any:
        head = RequestHead("GET", authority, path)
        return decide_request(parse_policy(policy), threat, head, sni="cdn.example", destination=ADDRESS, port=443,
                              client=CLIENT)

    def test_aListedURLBlocksOnlyItself(self) -> None:
        threat = lists(("phishing", "block", "http://cdn.example/login/fake\n"))
        v = self.judge(threat, "cdn.example", "/login/fake/step2")
        self.assertEqual((v.action, v.category), ("block", "phishing"))
        self.assertIn("request URL cdn.example/login/fake/step2", v.reason)
        self.assertEqual(self.judge(threat, "cdn.example", "/login/real").action, "allow")
        self.assertEqual(self.judge(threat, "cdn.example", "/%6cogin/x/../fake").action, "block")  # normalised

    def test_theRequestHostIsChecked(self) -> None:
        threat = lists(("malware", "block", "evil.example"))
        v = self.judge(threat, "www.evil.example:8443", "/")
        self.assertEqual((v.action, v.category), ("block", "malware"))
        self.assertEqual(self.judge(threat, "good.example", "/").category, None)

    def test_auditListsTagAllowedRequests(self) -> None:
        threat = lists(("ads", "intercept", "cdn.example"))
        v = self.judge(threat, "cdn.example", "/x")
        self.assertEqual((v.action, v.category), ("allow", "ads"))
        v = self.judge(threat, "cdn.example", "/x", '[[rule]]\nurls = ["cdn.example/x"]\naction = "block"\n')
        self.assertEqual((v.action, v.category), ("block", "ads"))


class AuditAndPageTests(SynchronousTestCase):
    def test_theCategoryIsInTheLineBeforeIdAndPid(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        record = ConnectionRecord("10.0.0.2:1", "192.0.2.10:443", 0.0, category="malware")
        record.emit(1.0)
        from twisted.logger import formatEvent

        line = formatEvent(events[-1])
        self.assertRegex(line, r" category=malware id=\S+ pid=\d+$")
        self.assertEqual(events[-1]["category"], "malware")

    def test_thePageNamesTheCategory(self) -> None:
        page = render_html("evil.example", "listed", "policy", "<mal>ware")
        self.assertIn(b"<dt>Category</dt><dd>&lt;mal&gt;ware</dd>", page)
        self.assertNotIn(b"Category", render_html("evil.example", "listed", "policy"))


class KeeperTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="etpmitm-threat-"))
        self.tables = self.work / "tables"
        self.tables.mkdir(mode=0o700)
        self.file = self.work / "malware.txt"
        self.file.write_text("evil.example\n")
        self.spec = ListSpec("malware", self.file, "block", 3)
        self.clock = MemoryReactorClock()
        self.published: list[ThreatLists] = []
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.keeper = ListKeeper([self.spec], self.tables, self.published.append, self.clock, interval=5.0)

    def rewrite(self, text: str) -> None:
        self.file.write_text(text)
        os.utime(self.file, ns=(0, os.stat(self.file).st_mtime_ns + 10**9))

    def listed(self, name: str) -> bool:
        return self.published[-1].first(("block",), [(name, name)]) is not None

    def test_aChangedFileIsReloadedOnTheTimer(self) -> None:
        self.keeper.start()
        self.assertTrue(self.listed("evil.example"))
        self.rewrite("other.example\n")
        self.clock.advance(5)
        self.assertFalse(self.listed("evil.example"))
        self.assertTrue(self.listed("www.other.example"))
        self.assertEqual(len(self.published), 2)
        self.clock.advance(5)  # unchanged: no rebuild
        self.assertEqual(len(self.published), 2)

    def test_aBadFileKeepsTheOldListAndSaysWhere(self) -> None:
        self.keeper.start()
        self.rewrite("fine.example\nbad!line\n")
        self.clock.advance(5)
        self.assertTrue(self.listed("evil.example"))
        self.assertFalse(self.listed("fine.example"))
        errors = [e for e in self.events if e.get("log_level") is not None and e["log_level"].name == "error"]
        self.assertEqual(len(errors), 1)
        self.assertIn(f"{self.file}:2: invalid character '!'", errors[0]["error"])
        self.assertIn("keeping the previous version", errors[0]["log_format"].format(**errors[0]))
        self.clock.advance(5)  # the same bad file is not retried on every tick
        self.assertEqual(len([e for e in self.events if e.get("error")]), 1)
        self.rewrite("fine.example\n")
        self.clock.advance(5)
        self.assertTrue(self.listed("fine.example"))

    def test_aMissingFileAtStartIsOneLine(self) -> None:
        self.file.unlink()
        with self.assertRaises(ListError) as caught:
            self.keeper.start()
        self.assertEqual(str(caught.exception).count("\n"), 0)
        self.assertIn(f"{self.file}: cannot read threat list 'malware': No such file", str(caught.exception))

    def test_reloadTakesTheNewSpecsAndTheManifestFollows(self) -> None:
        self.keeper.start()
        ads = self.work / "ads.txt"
        ads.write_text("ads.example\n")
        spec = ListSpec("ads", ads, "intercept", 9)
        self.keeper.reload([spec])
        self.assertEqual([t.name for t in self.published[-1].lists], ["ads"])
        mapped = read_manifest(self.tables / "manifest.json")
        self.assertEqual([(t.name, t.action) for t in mapped.lists], [("ads", "intercept")])
        self.assertEqual(mapped.first(("intercept",), [("x.ads.example", "")]).entry, "ads.example")  # type: ignore[union-attr]
        self.assertEqual(sorted(p.name for p in self.tables.glob("*.table")), ["1.table", "2.table"])
        self.assertEqual(os.stat(self.tables / "2.table").st_mode & 0o777, 0o600)

    def test_aFailedThreadKeepsTheOldLists(self) -> None:
        keeper = ListKeeper([self.spec], self.tables, self.published.append, self.clock,
                            run=lambda f: fail(RuntimeError("boom")))
        keeper.start()
        keeper.reload()
        self.assertEqual(len(self.published), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_aBuildUnderWayQueuesTheNext(self) -> None:
        pending: list[tuple[Deferred[Any], Any]] = []

        def later(f: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            pending.append((d, f))
            return d

        keeper = ListKeeper([self.spec], self.tables, self.published.append, self.clock, run=later)
        keeper.start()
        keeper.reload()
        keeper.reload()  # while the first is building
        self.assertEqual(len(pending), 1)
        d, f = pending.pop()
        d.callback(f())
        self.assertEqual(len(pending), 1)  # the queued one starts now
        d, f = pending.pop()
        d.callback(f())
        self.assertEqual(len(self.published), 3)


class WorkerRemapTests(SynchronousTestCase):
    """A worker maps what the master built; a manifest it cannot read keeps the lists it has."""

    def setUp(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="etpmitm-threat-"))
        listed = self.work / "m.txt"
        listed.write_text("evil.example\n")
        self.published: list[ThreatLists] = []
        ListKeeper([ListSpec("malware", listed, "block")], self.work, self.published.append, MemoryReactorClock(),
                   interval=0).start()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def test_remapReplacesTheLists(self) -> None:
        holder = PolicyHolder()
        self.assertTrue(remap(holder, str(self.work / "manifest.json"), REMAP))
        self.assertEqual([t.name for t in holder.lists.lists], ["malware"])
        self.assertFalse(remap(holder, str(self.work / "manifest.json"), {"learned": ["a.example", "192.0.2.1:443"]}))

    def test_anUnreadableManifestKeepsTheOldLists(self) -> None:
        holder = PolicyHolder()
        holder.lists = kept = lists(("old", "block", "old.example"))
        (self.work / "manifest.json").write_text("[{]")
        self.assertTrue(remap(holder, str(self.work / "manifest.json"), REMAP))
        self.assertIs(holder.lists, kept)
        [error] = [e for e in self.events if "error" in e]
        self.assertIn("keeping the previous ones", error["log_format"])
        self.assertRaises(ValueError, mapLists, self.work / "manifest.json")
        self.assertRaises(OSError, mapLists, self.work / "missing.json")


class BadManifestTests(SynchronousTestCase):
    def test_aManifestNamingAPathOutsideIsRefused(self) -> None:
        work = Path(tempfile.mkdtemp(prefix="etpmitm-threat-"))
        (work / "manifest.json").write_text(json.dumps([{"name": "x", "action": "block", "source": "s",
                                                          "table": "../etc/passwd"}]))
        self.assertRaises(ValueError, read_manifest, work / "manifest.json")


class GatewayTests(CoreTestCase):
    """The connection with lists in force (in memory)."""

    def setUp(self) -> None:
        super().setUp()
        self.policy.lists = lists(("malware", "block", "origin.test\nblocked.test"), ("audit", "intercept", "audited.test"))

    def test_aListedSNIGetsTheBlockPageWithItsCategory(self) -> None:
        device = self.connectDevice(sni="www.origin.test")
        self.assertEqual(self.reactor.tcpClients, [])  # decided on the SNI: no origin connection
        device.tls.write(b"GET / HTTP/1.1\r\nHost: www.origin.test\r\n\r\n")
        self.net.flush()
        self.assertTrue(device.received.startswith(b"HTTP/1.1 403 "))
        self.assertIn(b"<dt>Category</dt><dd>malware</dd>", device.received)
        device.tls.loseWriteConnection()
        self.net.flush()
        event = self.assertDone("block", "refused", "listed in 'malware' as origin.test")
        self.assertEqual(event["category"], "malware")

    def test_aListedNameIsNeverSplicedBecauseItWasLearned(self) -> None:
        self.policy.lists = lists(("audit", "intercept", "origin.test"))
        key = bypass_key("origin.test", ORIGIN.ip, ORIGIN.port)
        self.assertIsNotNone(self.policy.learned.learn(key, self.reactor.seconds(), "origin requests a client certificate"))
        self.connectDevice()
        self.assertIs(self.connection.state, State.CONNECTING_ORIGIN)  # intercepted, not spliced
        self.assertEqual(self.connection.record.category, "audit")
        self.policy.lists = ThreatLists()
        self.connectDevice()
        self.assertIs(self.connection.state, State.SPLICING)  # the same name, unlisted: the learned bypass

    def test_withoutSNITheCertificatesNamesAreChecked(self) -> None:
        device = self.connectDevice(sni=None)
        self.assertIs(self.connection.state, State.CONNECTING_ORIGIN)
        self.acceptTLS(names=("blocked.test",))
        self.assertIs(self.connection.state, State.REFUSING)
        device.tls.write(b"GET / HTTP/1.1\r\nHost: 192.0.2.10\r\n\r\n")
        self.net.flush()
        self.assertIn(b"<dt>Category</dt><dd>malware</dd>", device.received)
        device.tls.loseWriteConnection()
        self.net.flush()
        event = self.assertDone("block", "refused", "certificate name blocked.test")
        self.assertEqual(event["category"], "malware")

    def test_anUnlistedNameIsIntercepted(self) -> None:
        self.connectDevice(sni="fine.test")
        self.assertIs(self.connection.state, State.CONNECTING_ORIGIN)
        self.assertIsNone(self.connection.record.category)


class ListStartupTests(TestCase):
    """A list that cannot be loaded ends ``twistd etpmitm`` start-up with one line."""

    setUp = test_service.StartupTests.setUp
    twistd = test_service.StartupTests.twistd
    ca = test_service.StartupTests.ca
    assertOneLineError = test_service.StartupTests.assertOneLineError

    def policyFor(self, listFile: Path) -> Path:
        policy = self.work / "policy.toml"
        policy.write_text(f'[[list]]\nname = "malware"\nfile = "{listFile}"\naction = "block"\n')
        return policy

    def test_missingListFile(self) -> None:
        directory = self.ca()
        missing = self.work / "missing.txt"
        for workers in ("1", "2"):
            done = self.twistd("--ca-dir", str(directory), "--workers", workers, "--policy", str(self.policyFor(missing)))
            self.assertOneLineError(done, f"{missing}: cannot read threat list 'malware': No such file or directory")

    def test_badLineInAListFile(self) -> None:
        directory = self.ca()
        bad = self.work / "bad.txt"
        bad.write_text("evil.example\n# fine\nnot a line\n")
        done = self.twistd("--ca-dir", str(directory), "--policy", str(self.policyFor(bad)))
        self.assertOneLineError(done, f"{bad}:3: ", "a hosts-file line starts with an address")
