"""The master-worker message lines, and worker command lines, in memory."""

from __future__ import annotations

import sys

from twisted.trial.unittest import SynchronousTestCase

from etpmitm.workers import FIRST_LISTEN_FD, _Messages, workerCommand


class MessagesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.got: list[dict[str, object]] = []
        self.messages = _Messages(self.got.append)

    def test_linesSplitAnywhere(self) -> None:
        data = b'{"learned": ["a.test", "192.0.2.1:443"], "why": "x"}\n{"n": 2}\n'
        for i in range(len(data)):
            self.got.clear()
            messages = _Messages(self.got.append)
            messages.dataReceived(data[:i])
            messages.dataReceived(data[i:])
            self.assertEqual(self.got, [{"learned": ["a.test", "192.0.2.1:443"], "why": "x"}, {"n": 2}])

    def test_malformedAndNonObjectLinesIgnored(self) -> None:
        self.messages.dataReceived(b'not json\n[1, 2]\n"text"\n{"ok": true}\n')
        self.assertEqual(self.got, [{"ok": True}])

    def test_overlongLineDropped(self) -> None:
        self.messages.dataReceived(b"x" * (_Messages.MAX_LENGTH + 1))
        self.messages.dataReceived(b'tail of it\n{"ok": 1}\n')
        self.assertEqual(self.got, [{"ok": 1}])


class CommandTests(SynchronousTestCase):
    def test_workerCommand(self) -> None:
        argv = workerCommand(["--ca-dir=/ca", "--policy=/p.toml"], 2)
        self.assertEqual(argv, [sys.executable, "-m", "etpmitm.worker", "--ca-dir=/ca", "--policy=/p.toml",
                                f"--worker-listen={FIRST_LISTEN_FD}", f"--worker-listen={FIRST_LISTEN_FD + 1}"])
