"""The audit line: fixed words, and no field a peer controls can forge a line."""

from __future__ import annotations

from typing import Any

from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from etpmitm.audit import ConnectionRecord, token
from tests.corelab import CoreTestCase


class TokenTests(SynchronousTestCase):
    def test_plainWordsStay(self) -> None:
        for word in ("origin.test", "h2", "http/1.1", "xn--bcher-kva.example"):
            self.assertEqual(token(word), word)
        self.assertEqual(token(None), "None")

    def test_controlAndSeparatorsEscaped(self) -> None:
        self.assertEqual(token("h2\r\nforged"), "h2\\x0d\\x0aforged")
        self.assertEqual(token("a b'c\"d\\e"), "a\\x20b\\x27c\\x22d\\x5ce")
        self.assertEqual(token("\x1b[31m\u202e\U0001f600"), "\\x1b[31m\\u202e\\U0001f600")


class RecordTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def line(self, **fields: Any) -> str:
        record = ConnectionRecord(client="10.0.0.2:5", destination="192.0.2.1:443", started=0.0, **fields)
        record.emit(1.0)
        [event] = [e for e in self.events if e.get("log_namespace") == "etpmitm.audit"]
        text = formatEvent(event)
        self.assertEqual(len(text.splitlines()), 1, text)
        return text

    def test_peerControlledFieldsCannotForgeALine(self) -> None:
        text = self.line(
            sni="a.example\nforged", alpn="h2\r\n10.0.0.9:1 -> x action=splice outcome=ok",
            reason="certificate does not match evil\n.example: \x1b[2J", policy="rule 1 matched 'x\r'",
            action="intercept", outcome="error",
        )
        self.assertIn("sni=a.example\\x0aforged ", text)
        self.assertIn("alpn=h2\\x0d\\x0a10.0.0.9:1\\x20->", text)
        self.assertIn("\\x1b[2J", text)
        self.assertTrue(text.isprintable())

    def test_defaultsWhenNothingHappened(self) -> None:
        text = self.line()
        self.assertIn("action=refuse outcome=ok", text)

    def test_firstFailureWinsAndRefusalNeverHidesOne(self) -> None:
        record = ConnectionRecord(client="c", destination="d", started=0.0)
        record.fail("first")
        record.fail("second")
        record.refused("by policy")
        self.assertEqual((record.outcome, record.reason), ("error", "first"))


class NegotiatedALPNTests(CoreTestCase):
    def test_anALPNTheOriginSelectsIsEscaped(self) -> None:
        """A device offers an ALPN name with a newline, an origin selects it: one audit line still."""
        forged = b"x\n10.9.9.9:1 -> 192.0.2.10:443 sni=forged action=splice outcome=ok"
        device = self.connectDevice(alpn=(forged,))
        origin = self.acceptTLS(alpn=(forged,))
        self.assertEqual(device.tls.negotiatedProtocol, forged)
        device.tls.loseWriteConnection()
        self.net.flush()
        origin.tls.loseWriteConnection()
        self.net.flush()
        text = formatEvent(self.audit())
        self.assertEqual(len(text.splitlines()), 1, text)
        self.assertIn("alpn=x\\x0a10.9.9.9:1\\x20->", text)


class ThroughJSONTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def test_aWorkersLineReadsTheSameAtTheMaster(self) -> None:
        """Workers send their events to the master as JSON; the line must not change on the way."""
        from twisted.logger import eventAsJSON, eventFromJSON

        record = ConnectionRecord(client="10.0.0.2:5", destination="192.0.2.1:443", started=0.0)
        record.emit(0.0123456)
        [event] = [e for e in self.events if e.get("log_namespace") == "etpmitm.audit"]
        self.assertIn("duration=0.012s", formatEvent(event))
        self.assertEqual(formatEvent(eventFromJSON(eventAsJSON(event))), formatEvent(event))
