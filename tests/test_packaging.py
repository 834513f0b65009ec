"""The package as users get it: the wheel carries the twistd plugin; mypy passes."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from twisted.trial.unittest import TestCase

REPO = Path(__file__).resolve().parent.parent


def run(argv: list[str | Path], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


class WheelTests(TestCase):
    def setUp(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="etpmitm-wheel-"))
        self.addCleanup(subprocess.run, ["rm", "-rf", str(self.work)])
        done = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", self.work, REPO], cwd=self.work)
        self.assertEqual(done.returncode, 0, done.stderr)
        [self.wheel] = self.work.glob("etpmitm-*.whl")

    def test_pluginShipsInWheel(self) -> None:
        """The plugin is in the wheel, and no __init__.py shadows Twisted's packages."""
        names = set(zipfile.ZipFile(self.wheel).namelist())
        self.assertIn("twisted/plugins/etpmitm_plugin.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertIn("etpmitm/py.typed", names)

    def test_twistdListsThePluginAfterPlainInstall(self) -> None:
        """A non-editable install into a fresh virtualenv gives `twistd etpmitm`."""
        venv = self.work / "venv"
        done = run([sys.executable, "-m", "venv", venv], cwd=self.work)
        self.assertEqual(done.returncode, 0, done.stderr)
        done = run([venv / "bin" / "pip", "install", "-q", self.wheel], cwd=self.work)
        self.assertEqual(done.returncode, 0, done.stderr)
        listing = run([venv / "bin" / "twistd", "--help"], cwd=self.work)
        self.assertIn("etpmitm", listing.stdout)
        self.assertIn("Transparent TLS inspection gateway", listing.stdout)
        options = run([venv / "bin" / "twistd", "etpmitm", "--help"], cwd=self.work)
        self.assertEqual(options.returncode, 0, options.stderr)
        for option in ("--listen", "--ca-dir", "--upstream-trust", "--handshake-timeout", "--idle-timeout"):
            self.assertIn(option, options.stdout)
        command = run([venv / "bin" / "etpmitm", "ca", "--help"], cwd=self.work)
        self.assertEqual(command.returncode, 0, command.stderr)
        self.assertIn("install", command.stdout)


class TypeCheckTests(TestCase):
    def test_mypyStrict(self) -> None:
        """mypy --strict (the configuration in pyproject.toml) passes."""
        done = run([sys.executable, "-m", "mypy"], cwd=REPO)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIn("Success", done.stdout)
