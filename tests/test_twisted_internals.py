"""The private Twisted names the gateway relies on (etpmitm/gateway/_twisted.py) still exist.

When this fails after a Twisted upgrade, the message names what is gone:
adapt ``_twisted.py`` to the new release, then widen the pin in pyproject.toml.
"""

from __future__ import annotations

import socket

from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.protocol import Protocol
from twisted.internet.tcp import Connection
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from etpmitm.gateway._twisted import INTERNALS, halfCloseableTLS, missingInternals
from etpmitm.gateway.device import DeviceTLSCreator


class TwistedInternalsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.tls = halfCloseableTLS(DeviceTLSCreator(SSL.Context(SSL.TLS_METHOD)), False, Protocol())
        self.tls.makeConnection(StringTransport())
        sock = socket.socket()
        self.addCleanup(sock.close)
        self.tcp = Connection(sock, Protocol(), reactor)

    def test_privateNamesStillExist(self) -> None:
        missing = missingInternals(self.tls, self.tcp)
        self.assertEqual(
            missing, [],
            f"this Twisted no longer has {', '.join(missing)}: etpmitm/gateway/_twisted.py needs adapting to it",
        )

    def test_theCheckCanFail(self) -> None:
        """The check reports a name that is not there."""
        cls = next(iter(INTERNALS))
        INTERNALS[cls] = (*INTERNALS[cls], "_noSuchThing")
        self.addCleanup(INTERNALS.__setitem__, cls, INTERNALS[cls][:-1])
        self.assertEqual(missingInternals(self.tls, self.tcp), [f"{cls.__module__}.{cls.__qualname__}._noSuchThing"])
