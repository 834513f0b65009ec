"""Reloading the policy: good files replace it, bad ones are refused and logged."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from etpmitm.gateway.policyholder import PolicyHolder
from etpmitm.policy import DEFAULT_POLICY, PolicyError


class PolicyHolderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = Path(tempfile.mkdtemp()) / "policy.toml"
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def test_defaults(self) -> None:
        holder = PolicyHolder.load(None)
        self.assertIs(holder.current, DEFAULT_POLICY)
        self.assertFalse(holder.reload())

    def test_badFileAtStart(self) -> None:
        self.path.write_text('[origin]\nuntrusted = "maybe"\n')
        error = self.assertRaises(PolicyError, PolicyHolder.load, self.path)
        self.assertIn(f"{self.path}:2:", str(error))

    def test_reloadGoodThenBad(self) -> None:
        self.path.write_text('[origin]\nuntrusted = "block"\n')
        holder = PolicyHolder.load(self.path)
        self.path.write_text('[origin]\nuntrusted = "bypass"\n')
        self.assertTrue(holder.reload())
        self.assertEqual(holder.current.untrusted, "bypass")
        self.path.write_text('[origin]\nuntrusted = "sometimes"\n')
        self.assertFalse(holder.reload())
        self.assertEqual(holder.current.untrusted, "bypass")
        errors = [e for e in self.events if "policy reload failed" in e.get("log_format", "")]
        self.assertEqual(len(errors), 1)
        self.assertIn(f"{self.path}:2:", errors[0]["error"])

    def test_learningFollowsTheFile(self) -> None:
        """Learned entries survive a reload that keeps [learning]; new settings start afresh."""
        self.path.write_text("[learning]\nfailures = 3\n")
        holder = PolicyHolder.load(self.path)
        self.assertEqual(holder.learned.failures, 3)
        holder.learned.learn(("a.example", "192.0.2.1:443"), 0.0, "test")
        self.path.write_text("[learning]\nfailures = 3\n\n[[rule]]\nmatch = ['b.example']\naction = 'block'\n")
        holder.reload()
        self.assertEqual(len(holder.learned), 1)
        self.path.write_text("[learning]\nenabled = false\n")
        holder.reload()
        self.assertEqual(len(holder.learned), 0)
        self.assertFalse(holder.learned.learn(("a.example", "192.0.2.1:443"), 0.0, "test"))
