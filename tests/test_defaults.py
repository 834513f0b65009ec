"""The embedded defaults: a dual-stack listener unless the host cannot."""

from __future__ import annotations

import errno

from twisted.trial.unittest import SynchronousTestCase

from etpmitm.defaults import DEFAULT_BACKLOG, DEFAULT_LISTEN, DEFAULT_LISTEN_IPV4, default_listen
from etpmitm.service import Options


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
