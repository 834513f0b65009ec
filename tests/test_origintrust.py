"""Verdicts on origin certificates from recorded verification errors."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from etpmitm.origintrust import ChainError, judge


class JudgeTests(SynchronousTestCase):
    def test_trusted(self) -> None:
        verdict = judge([], None)
        self.assertTrue(verdict.trusted)

    def test_kinds(self) -> None:
        cases = {
            (10, 0): "expired",
            (9, 0): "not-yet-valid",
            (18, 0): "self-signed",
            (19, 1): "unknown-root",
            (20, 0): "incomplete-chain",
            (20, 1): "unknown-root",
            (21, 0): "incomplete-chain",
            (999, 0): "chain-error",
        }
        for (code, depth), kind in cases.items():
            verdict = judge([ChainError(depth=depth, code=code)], None)
            self.assertFalse(verdict.trusted)
            self.assertEqual(verdict.kind, kind, (code, depth))
            self.assertIn(f"depth {depth}", verdict.reason)

    def test_chainBeforeName(self) -> None:
        """The first chain error wins over later ones and over the name."""
        verdict = judge([ChainError(0, 10), ChainError(0, 18)], "wrong name")
        self.assertEqual(verdict.kind, "expired")

    def test_wrongHost(self) -> None:
        verdict = judge([], "certificate does not match a.example")
        self.assertEqual((verdict.trusted, verdict.kind), (False, "wrong-host"))
        self.assertEqual(verdict.reason, "certificate does not match a.example")
