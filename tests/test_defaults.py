"""Embedded defaults: the data directory, and the policy file the service picks up by itself."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from etpmitm import defaults
from etpmitm.service import Options


class DataDirectoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.saved = {name: os.environ.get(name) for name in ("STATE_DIRECTORY", "XDG_DATA_HOME", "HOME")}
        self.addCleanup(self.restore)
        for name in self.saved:
            os.environ.pop(name, None)
        os.environ["HOME"] = "/home/someone"

    def restore(self) -> None:
        for name, value in self.saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    def test_systemdStateDirectory(self) -> None:
        os.environ["STATE_DIRECTORY"] = "/var/lib/etpmitm:/var/lib/other"
        self.assertEqual(defaults.default_ca_directory(), Path("/var/lib/etpmitm/ca"))

    def test_interactiveRunsUseTheUsersDirectory(self) -> None:
        """Root included: a trial run never writes the service's CA in /var/lib/etpmitm."""
        self.patch(os, "geteuid", lambda: 0)
        self.assertEqual(defaults.default_ca_directory(), Path("/home/someone/.local/share/etpmitm/ca"))
        os.environ["XDG_DATA_HOME"] = "/data"
        self.assertEqual(defaults.default_ca_directory(), Path("/data/etpmitm/ca"))


class DefaultPolicyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.file = Path(self.mktemp())
        self.patch(defaults, "DEFAULT_POLICY_FILE", self.file)

    def options(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_usedWhenPresent(self) -> None:
        self.file.write_text("[origin]\nuntrusted = 'block'\n")
        self.assertEqual(self.options()["policy"], str(self.file))

    def test_absentMeansBuiltIn(self) -> None:
        self.assertIsNone(self.options()["policy"])

    def test_explicitPolicyWins(self) -> None:
        self.file.write_text("")
        self.assertEqual(self.options("--policy", "/srv/other.toml")["policy"], "/srv/other.toml")
