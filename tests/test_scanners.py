"""The scanner of the policy in force (etpmitm.gateway.scanners) and its reload (etpmitm.service)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from etpmitm.audit import ConnectionRecord
from etpmitm.gateway.inspect import inspectingLayer
from etpmitm.gateway.policyholder import PolicyHolder
from etpmitm.gateway.scanhttp1 import ScanningHTTP1Layer
from etpmitm.gateway.scanners import ScannerHolder
from etpmitm.gateway.settings import GatewaySettings
from etpmitm.icap.settings import IcapSettings, parse_service_url
from etpmitm.scanning import IContentScanner, Message, ScanJob
from etpmitm.service import GatewayService
from tests.scanfake import FakeScanner

URL = parse_service_url("icap://127.0.0.1:1344/avscan")
ONE = IcapSettings(respmod=URL, reqmod=URL)
TWO = IcapSettings(respmod=URL, reqmod=URL, on_error="allow")
JOB = ScanJob("respmod", "https://a.test/", Message(b"GET / HTTP/1.1", ()), Message(b"HTTP/1.1 200 OK", ()), None)


class Closable(FakeScanner):
    """A fake scanner that counts closes and answers probes as told."""

    def __init__(self, settings: IcapSettings, problems: list[str]) -> None:
        super().__init__()
        self.settings = settings
        self.problems = problems
        self.closed = 0

    def close(self) -> None:
        self.closed += 1

    def probe(self) -> Deferred[list[str]]:
        return succeed(self.problems)


class HolderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.built: list[Closable] = []
        self.problems: list[str] = []
        self.holder = ScannerHolder(self.build)

    def build(self, settings: IcapSettings) -> Closable:
        scanner = Closable(settings, self.problems)
        self.built.append(scanner)
        return scanner

    def test_noIcapNoScanner(self) -> None:
        self.assertFalse(self.holder.update(None))
        self.assertIsNone(self.holder.current)
        self.assertEqual(self.built, [])

    def test_builtOnceForTheSameSettings(self) -> None:
        self.assertTrue(self.holder.update(ONE))
        scanner = self.holder.current
        self.assertTrue(IContentScanner.providedBy(scanner))
        self.assertFalse(self.holder.update(IcapSettings(respmod=URL, reqmod=URL)))  # equal settings
        self.assertIs(self.holder.current, scanner)
        self.assertEqual(len(self.built), 1)

    def test_changedSettingsRetireTheOldWhenIdle(self) -> None:
        self.holder.update(ONE)
        old = self.holder.current
        assert old is not None
        scan = old.scan(JOB)  # a connection that started before the reload is scanning
        self.assertTrue(self.holder.update(TWO))
        self.assertIsNot(self.holder.current, old)
        self.assertEqual(self.built[1].settings, TWO)
        self.assertEqual(self.built[0].closed, 0)  # not while a scan is in flight
        self.built[0].scans_[0].passes()
        self.assertEqual(self.successResultOf(scan).verdict, "pass")
        self.assertEqual(self.built[0].closed, 1)
        # the old connection scans again: its pool is closed again once that scan is over
        again = old.scan(JOB)
        self.built[0].scans_[1].passes()
        self.successResultOf(again)
        self.assertEqual(self.built[0].closed, 2)
        self.assertEqual(self.built[1].closed, 0)

    def test_idleOldScannerClosesAtOnce(self) -> None:
        self.holder.update(ONE)
        self.holder.update(None)
        self.assertIsNone(self.holder.current)
        self.assertEqual(self.built[0].closed, 1)

    def test_closeClosesAll(self) -> None:
        self.holder.update(ONE)
        old = self.holder.current
        assert old is not None
        old.scan(JOB)
        self.holder.update(TWO)
        self.holder.close()
        self.assertEqual([s.closed for s in self.built], [1, 1])

    def test_probeWarnsPerProblem(self) -> None:
        self.holder.update(ONE)
        self.problems.append("respmod icap://127.0.0.1:1344/avscan: ConnectionRefusedError: refused")
        with capturedLogs() as events:
            self.holder.probe()
        [line] = [formatEvent(e) for e in events]
        self.assertIn("ICAP service respmod icap://127.0.0.1:1344/avscan: ConnectionRefusedError", line)
        self.assertIn("on_error = block", line)
        self.problems.clear()
        with capturedLogs() as events:
            self.holder.probe()
        self.assertIn("answer OPTIONS", formatEvent(events[0]))


class ConnectionsKeepTheirScannerTests(SynchronousTestCase):
    def test_layerGetsTheScannerInForceWhenItStarts(self) -> None:
        holder = ScannerHolder(lambda settings: Closable(settings, []))
        holder.update(ONE)
        reactor = MemoryReactorClock()
        settings = GatewaySettings(reactor=reactor, clock=reactor, upstream=None, leaves=None,  # type: ignore[arg-type]
                                   scanners=holder)
        layerFor = inspectingLayer(settings)
        record = ConnectionRecord(client="10.0.0.2", destination="192.0.2.1:443", started=0.0, alpn="http/1.1")
        first = layerFor(record, lambda head: None)  # type: ignore[arg-type,return-value]
        self.assertIsInstance(first, ScanningHTTP1Layer)
        firstScanner = cast(ScanningHTTP1Layer, first)._scanner
        self.assertIs(firstScanner, holder.current)
        holder.update(TWO)
        self.assertIs(cast(ScanningHTTP1Layer, first)._scanner, firstScanner)  # kept
        second = cast(ScanningHTTP1Layer, layerFor(record, lambda head: None))  # type: ignore[arg-type,return-value]
        self.assertIs(second._scanner, holder.current)
        self.assertIsNot(second._scanner, firstScanner)
        holder.update(None)
        self.assertNotIsInstance(layerFor(record, lambda head: None), ScanningHTTP1Layer)  # type: ignore[arg-type,return-value]


class ReloadTests(SynchronousTestCase):
    def setUp(self) -> None:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        self.path = Path(directory) / "policy.toml"
        self.path.write_text('[icap]\nrespmod = "icap://127.0.0.1:1344/avscan"\n')
        self.built: list[Closable] = []
        self.holder = ScannerHolder(self.build)
        self.policy = PolicyHolder.load(self.path)
        self.holder.update(self.policy.current.icap)
        self.service = GatewayService(self.policy, None, self.holder)

    def build(self, settings: IcapSettings) -> Closable:
        self.built.append(Closable(settings, []))
        return self.built[-1]

    def reload(self, text: str) -> list[str]:
        self.path.write_text(text)
        with capturedLogs() as events:
            self.service.reload()
        return [formatEvent(e) for e in events]

    def test_unchangedIcapKeepsTheScanner(self) -> None:
        scanner = self.holder.current
        lines = self.reload('[icap]\nrespmod = "icap://127.0.0.1:1344/avscan"\n\n[[rule]]\nmatch = ["a.test"]\naction = "block"\n')
        self.assertTrue(any("policy reloaded" in line for line in lines), lines)
        self.assertIs(self.holder.current, scanner)
        self.assertEqual(len(self.built), 1)

    def test_changedIcapBuildsANewScanner(self) -> None:
        lines = self.reload('[icap]\nrespmod = "icap://127.0.0.1:1344/avscan"\ntimeout = 3\n')
        self.assertEqual(len(self.built), 2)
        self.assertEqual(self.built[1].settings.timeout, 3.0)
        self.assertEqual(self.built[0].closed, 1)
        self.assertTrue(any("ICAP settings changed: new connections use the new scanner" in line for line in lines))
        self.assertTrue(any("answer OPTIONS" in line for line in lines), lines)  # probed

    def test_failedReloadKeepsTheScanner(self) -> None:
        scanner = self.holder.current
        lines = self.reload('[icap]\nrespmod = "http://not-icap/"\n')
        self.assertTrue(any("policy reload failed" in line for line in lines), lines)
        self.assertIs(self.holder.current, scanner)
        self.assertEqual((len(self.built), self.built[0].closed), (1, 0))

    def test_icapRemoved(self) -> None:
        self.reload("")
        self.assertIsNone(self.holder.current)
        self.assertEqual(self.built[0].closed, 1)
