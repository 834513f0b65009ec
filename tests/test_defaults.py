"""Embedded defaults: the data directory, the policy file the service picks up by
itself, and a dual-stack listener unless the host cannot."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from etpmitm import defaults
from etpmitm.defaults import DEFAULT_BACKLOG, DEFAULT_LISTEN, DEFAULT_LISTEN_IPV4, default_listen
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


def noIPv6() -> None:
    raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")


class DefaultListenTests(SynchronousTestCase):
    def test_dualStack(self) -> None:
        self.assertEqual(DEFAULT_LISTEN, "tcp6:8443:interface=\\:\\:")
        self.assertEqual(default_listen(lambda: None, lambda: False), ([DEFAULT_LISTEN], None))

    def test_noIPv6(self) -> None:
        self.assertEqual(default_listen(noIPv6, lambda: False),
                         (["tcp:8443"], "no IPv6 on this host (Address family not supported by protocol); "
                                        "listening on IPv4 only"))

    def test_bindv6only(self) -> None:
        """An IPv6 socket takes no IPv4 there: listen on both."""
        listen, note = default_listen(lambda: None, lambda: True)
        self.assertEqual(listen, [DEFAULT_LISTEN, DEFAULT_LISTEN_IPV4])
        self.assertIn("bindv6only", note or "")

    def test_options(self) -> None:
        options = Options()
        options.parseOptions([])
        self.assertEqual(options["listen"], default_listen()[0])
        self.assertEqual(options["backlog"], DEFAULT_BACKLOG)
        self.assertEqual(DEFAULT_BACKLOG, 4096)
        options = Options()
        options.parseOptions(["--listen", "tcp:1", "--backlog", "100"])
        self.assertEqual((options["listen"], options["backlog"], options["listen-note"]), (["tcp:1"], 100, None))
