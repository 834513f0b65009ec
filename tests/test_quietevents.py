"""Relayed sockets' reactor events skip the per-event logging context (etpmitm/gateway/_twisted.py)."""

from __future__ import annotations

import socket

from twisted.internet import epollreactor, reactor
from twisted.internet.protocol import Protocol
from twisted.internet.tcp import Connection
from twisted.python import context, log
from twisted.trial.unittest import SynchronousTestCase

from etpmitm.gateway import _twisted
from etpmitm.gateway._twisted import MODULE_INTERNALS, installQuietDispatch, missingInternals, quietEvents


class Selectable:
    """Counts the logPrefix calls that the logging context makes."""

    prefixes = 0

    def logPrefix(self) -> str:
        self.prefixes += 1
        return "selectable"


class QuietDispatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        original = epollreactor.log
        self.addCleanup(setattr, epollreactor, "log", original)
        setattr(epollreactor, "log", log)
        self.assertTrue(installQuietDispatch())
        self.dispatch = epollreactor.log

    def tcp(self) -> Connection:
        sock = socket.socket()
        self.addCleanup(sock.close)
        return Connection(sock, Protocol(), reactor)

    def test_installedOnceAndDelegates(self) -> None:
        self.assertIsInstance(self.dispatch, _twisted._QuietDispatch)
        self.assertTrue(installQuietDispatch())
        self.assertIs(epollreactor.log, self.dispatch)  # not wrapped twice
        self.assertIs(self.dispatch.msg, log.msg)

    def test_notInstalledOverSomeoneElses(self) -> None:
        other = object()
        setattr(epollreactor, "log", other)
        self.assertFalse(installQuietDispatch())
        self.assertIs(epollreactor.log, other)

    def test_unmarkedEventsKeepTheContext(self) -> None:
        selectable = Selectable()
        seen = self.dispatch.callWithLogger(selectable, lambda: (context.get(log.ILogContext) or {}).get("system"))
        self.assertEqual((seen, selectable.prefixes), ("selectable", 1))

    def test_markedEventsSkipIt(self) -> None:
        selectable = Selectable()
        setattr(selectable, _twisted._QUIET, True)
        outside = (context.get(log.ILogContext) or {}).get("system")
        seen = self.dispatch.callWithLogger(selectable, lambda: (context.get(log.ILogContext) or {}).get("system"))
        self.assertEqual((seen, selectable.prefixes), (outside, 0))  # no context of its own
        self.assertNotEqual(seen, "selectable")

    def test_aMarkedEventsErrorIsLogged(self) -> None:
        selectable = Selectable()
        setattr(selectable, _twisted._QUIET, True)

        def fail() -> None:
            raise ZeroDivisionError("in an event")

        self.assertIsNone(self.dispatch.callWithLogger(selectable, fail))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_quietEventsMarksTheTCPSocket(self) -> None:
        tcp = self.tcp()
        quietEvents(tcp)
        self.assertTrue(getattr(tcp, _twisted._QUIET))

    def test_quietEventsIgnoresOtherTransports(self) -> None:
        transport = Selectable()
        quietEvents(transport)
        self.assertFalse(hasattr(transport, _twisted._QUIET))


class ModuleInternalsTests(SynchronousTestCase):
    def test_theCheckCoversModuleNames(self) -> None:
        from OpenSSL import SSL

        from etpmitm.gateway._twisted import halfCloseableTLS
        from etpmitm.gateway.device import DeviceTLSCreator
        from twisted.internet.testing import StringTransport

        tls = halfCloseableTLS(DeviceTLSCreator(SSL.Context(SSL.TLS_METHOD)), False, Protocol())
        tls.makeConnection(StringTransport())
        sock = socket.socket()
        self.addCleanup(sock.close)
        tcp = Connection(sock, Protocol(), reactor)
        self.assertEqual(missingInternals(tls, tcp), [])
        MODULE_INTERNALS[epollreactor] = (*MODULE_INTERNALS[epollreactor], "_noSuchThing")
        self.addCleanup(MODULE_INTERNALS.__setitem__, epollreactor, MODULE_INTERNALS[epollreactor][:-1])
        self.assertEqual(missingInternals(tls, tcp), ["twisted.internet.epollreactor._noSuchThing"])
