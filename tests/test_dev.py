"""The developer tooling: dev/as-root, the README's test command as CI runs it, shellcheck."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

REPO = Path(__file__).resolve().parent.parent
AS_ROOT = REPO / "dev" / "as-root"
SHELL_SCRIPTS = [REPO / "deploy" / "iptables.sh", REPO / "dev" / "bootstrap.sh", AS_ROOT, REPO / ".ci" / "run",
                 REPO / "dev" / "private-journald.sh"]

FAKE_SUDO = '#!/bin/sh\necho "sudo: $*"\n'


class AsRootTests(SynchronousTestCase):
    """dev/as-root: as root it runs the command itself (no sudo needed); otherwise through sudo."""

    def setUp(self) -> None:
        self.bin = Path(tempfile.mkdtemp(prefix="etpmitm-as-root-"))
        self.addCleanup(shutil.rmtree, self.bin)
        self.bin.chmod(0o755)

    def fake_sudo(self) -> None:
        sudo = self.bin / "sudo"
        sudo.write_text(FAKE_SUDO)
        sudo.chmod(0o755)

    def userCopy(self) -> str:
        """dev/as-root copied where the unprivileged user can read it (a checkout may sit
        in a directory only root can enter, such as one from ``mktemp -d``)."""
        copy = self.bin / "as-root"
        shutil.copyfile(AS_ROOT, copy)
        copy.chmod(0o755)
        return str(copy)

    def run_as_user(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """argv as an unprivileged user, with only self.bin, /usr/bin and /bin on PATH."""
        prefix = [] if os.geteuid() != 0 else ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        env = {"PATH": f"{self.bin}:/usr/bin:/bin"}
        return subprocess.run([*prefix, *argv], capture_output=True, text=True, env=env, timeout=30)

    def test_root_needs_no_sudo(self) -> None:
        if os.geteuid() != 0:
            raise self.skipTest("needs root")
        self.fake_sudo()
        done = subprocess.run([AS_ROOT, "id", "-u"], capture_output=True, text=True, timeout=30,
                              env={"PATH": f"{self.bin}:/usr/bin:/bin"})
        self.assertEqual((done.returncode, done.stdout, done.stderr), (0, "0\n", ""))

    def test_user_goes_through_sudo(self) -> None:
        if os.geteuid() == 0 and shutil.which("setpriv") is None:
            raise self.skipTest("setpriv is needed to run as another user")
        self.fake_sudo()
        done = self.run_as_user(self.userCopy(), ".venv/bin/python", "-m", "twisted.trial", "tests")
        self.assertEqual((done.returncode, done.stdout), (0, "sudo: -- .venv/bin/python -m twisted.trial tests\n"))

    def test_user_without_sudo(self) -> None:
        if os.geteuid() == 0 and shutil.which("setpriv") is None:
            raise self.skipTest("setpriv is needed to run as another user")
        if any(Path(d, "sudo").exists() for d in ("/usr/bin", "/bin")):
            raise self.skipTest("sudo is installed here")
        done = self.run_as_user(self.userCopy(), "true")
        self.assertEqual(done.returncode, 1)
        self.assertEqual(done.stderr, "dev/as-root: true needs root: run it as root, or install sudo\n")


class ReadmeTestCommandTests(SynchronousTestCase):
    def test_ci_runs_the_readme_commands(self) -> None:
        """Each command of the README's test command appears, verbatim, in .ci/run."""
        readme = (REPO / "README.md").read_text()
        blocks = [b for b in re.findall(r"```sh\n(.*?)```", readme, re.DOTALL) if "twisted.trial" in b]
        self.assertEqual(len(blocks), 1, blocks)
        commands = [c.strip() for c in blocks[0].replace("\\\n", " ").split("&&")]
        self.assertEqual(len(commands), 2, commands)
        ci = (REPO / ".ci" / "run").read_text()
        for command in commands:
            self.assertIn(command, ci)


class ShellcheckTests(SynchronousTestCase):
    def test_shell_scripts_pass(self) -> None:
        if shutil.which("shellcheck") is None:
            raise self.skipTest("shellcheck is not installed (dev/bootstrap.sh installs it)")
        done = subprocess.run(["shellcheck", *map(str, SHELL_SCRIPTS)], capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stdout)
