"""The relay, in memory: forwarding, back-pressure, half-close, abort, idle."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from etpmitm.gateway.relay import Relay, RelayEnd


class HalfCloseTransport(StringTransport):
    """A StringTransport that records half-closes."""

    def __init__(self) -> None:
        super().__init__()
        self.writeClosed: list[dict[str, bool]] = []
        self.aborted = False

    def loseWriteConnection(self, **kwargs: bool) -> None:
        self.writeClosed.append(kwargs)

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class Observer:
    def __init__(self) -> None:
        self.events: list[tuple[str, bytes]] = []

    def deviceData(self, data: bytes) -> None:
        self.events.append(("device", data))

    def originData(self, data: bytes) -> None:
        self.events.append(("origin", data))

    def closed(self) -> None:
        self.events.append(("closed", b""))


def makeRelay(idle: float = 30.0) -> tuple[Relay, RelayEnd, RelayEnd, Clock, Observer, list[Relay]]:
    clock = Clock()
    device, origin = RelayEnd("device"), RelayEnd("origin")
    device.makeConnection(HalfCloseTransport())
    origin.makeConnection(HalfCloseTransport())
    observer = Observer()
    done: list[Relay] = []
    relay = Relay(device, origin, clock, idle, observers=(observer,), onDone=done.append)
    return relay, device, origin, clock, observer, done


def transport(end: RelayEnd) -> HalfCloseTransport:
    assert isinstance(end.transport, HalfCloseTransport)
    return end.transport


class RelayTests(SynchronousTestCase):
    def test_earlyBytesDeliveredOnStart(self) -> None:
        """Bytes read before the relay starts are forwarded first, in order."""
        relay, device, origin, _, observer, _ = makeRelay()
        device.dataReceived(b"GET / HTTP/1.1\r\n")
        origin.dataReceived(b"220 hello\r\n")
        self.assertEqual(transport(origin).value(), b"")
        relay.start()
        self.assertEqual(transport(origin).value(), b"GET / HTTP/1.1\r\n")
        self.assertEqual(transport(device).value(), b"220 hello\r\n")
        device.dataReceived(b"Host: a\r\n\r\n")
        self.assertEqual(transport(origin).value(), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(
            observer.events,
            [("device", b"GET / HTTP/1.1\r\n"), ("origin", b"220 hello\r\n"), ("device", b"Host: a\r\n\r\n")],
        )

    def test_eachSideProducesForTheOther(self) -> None:
        """A full writer pauses the reader on the other side, and resumes it."""
        relay, device, origin, _, _, _ = makeRelay()
        relay.start()
        self.assertIs(transport(device).producer, origin.transport)
        self.assertIs(transport(origin).producer, device.transport)
        self.assertTrue(transport(device).streaming)
        transport(device).producer.pauseProducing()
        self.assertEqual(transport(origin).producerState, "paused")
        transport(device).producer.resumeProducing()
        self.assertEqual(transport(origin).producerState, "producing")

    def test_halfClosePassedOn(self) -> None:
        """The device ending its direction ends the same direction to the origin."""
        relay, device, origin, _, _, _ = makeRelay()
        relay.start()
        device.readConnectionLost()
        self.assertEqual(transport(origin).writeClosed, [{}])
        self.assertEqual(transport(device).writeClosed, [])
        origin.dataReceived(b"response")
        self.assertEqual(transport(device).value(), b"response")

    def test_truncationMirrored(self) -> None:
        """A FIN without close_notify is passed on without close_notify."""
        relay, device, origin, _, _, _ = makeRelay()
        relay.start()
        transport(origin).closeNotifyReceived = False  # type: ignore[attr-defined]
        origin.readConnectionLost()
        self.assertEqual(transport(device).writeClosed, [{"closeNotify": False}])

    def test_halfCloseBeforeStart(self) -> None:
        """An end that closed before the relay started is passed on at start."""
        relay, device, origin, _, _, _ = makeRelay()
        device.dataReceived(b"req")
        device.readConnectionLost()
        relay.start()
        self.assertEqual(transport(origin).value(), b"req")
        self.assertEqual(transport(origin).writeClosed, [{}])

    def test_abortAbortsTheOther(self) -> None:
        """A reset on one side aborts the other, and the relay reports why."""
        relay, device, origin, _, observer, done = makeRelay()
        relay.start()
        device.connectionLost(Failure(ConnectionLost("reset")))
        self.assertTrue(transport(origin).aborted)
        self.assertIn("device connection lost", relay.error or "")
        origin.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(done, [relay])
        self.assertEqual(observer.events[-1], ("closed", b""))

    def test_resetAfterItsDirectionEndedIsNoError(self) -> None:
        """A device that resets once the origin's whole response and its end
        were passed on (it closed with our close_notify unread) lost nothing:
        noted, not an error.  The origin still sees the reset."""
        relay, device, origin, _, _, _ = makeRelay()
        relay.start()
        origin.dataReceived(b"response")
        origin.readConnectionLost()
        device.connectionLost(Failure(ConnectionLost("reset")))
        self.assertTrue(transport(origin).aborted)
        self.assertIsNone(relay.error)
        self.assertIn("device connection lost", relay.note or "")
        self.assertIn("after its direction ended", relay.note or "")

    def test_resetBeforeItsDirectionEndedIsAnError(self) -> None:
        relay, device, origin, _, _, _ = makeRelay()
        relay.start()
        device.readConnectionLost()  # the device finished its request...
        origin.dataReceived(b"half a response")
        device.connectionLost(Failure(ConnectionLost("reset")))  # ...and reset mid-response
        self.assertIn("device connection lost", relay.error or "")
        self.assertIsNone(relay.note)

    def test_cleanCloseClosesTheOther(self) -> None:
        relay, device, origin, _, _, done = makeRelay()
        relay.start()
        origin.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(transport(device).disconnecting)
        self.assertFalse(transport(device).aborted)
        self.assertIsNone(relay.error)
        self.assertEqual(done, [])
        device.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(done, [relay])

    def test_idleTimeout(self) -> None:
        """Traffic keeps the relay open; silence for the timeout closes both."""
        relay, device, origin, clock, _, _ = makeRelay(idle=10)
        relay.start()
        clock.advance(8)
        device.dataReceived(b"x")
        clock.advance(8)
        self.assertFalse(transport(device).disconnecting)
        self.assertFalse(relay.idled)
        clock.advance(2.5)
        self.assertTrue(relay.idled)
        self.assertTrue(transport(device).disconnecting)
        self.assertTrue(transport(origin).disconnecting)

    def test_idleTimerStopsWhenDone(self) -> None:
        relay, device, origin, clock, _, _ = makeRelay(idle=10)
        relay.start()
        device.connectionLost(Failure(ConnectionDone()))
        origin.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_plainTCPClosedOnceBothDirectionsEnd(self) -> None:
        """Each TCP socket is closed when both its directions are done, not before."""
        relay, device, origin, _, _, _ = makeRelay()
        relay.start()
        device.readConnectionLost()
        self.assertFalse(transport(device).disconnecting)
        self.assertFalse(transport(origin).disconnecting)
        origin.readConnectionLost()
        self.assertTrue(transport(device).disconnecting)
        self.assertTrue(transport(origin).disconnecting)

    def test_tlsTransportClosesItself(self) -> None:
        """A transport that closes itself once both directions end is left alone."""
        relay, device, origin, _, _, _ = makeRelay()
        for end in (device, origin):
            transport(end).closesWhenBothEnd = True  # type: ignore[attr-defined]
        relay.start()
        device.readConnectionLost()
        origin.readConnectionLost()
        self.assertFalse(transport(device).disconnecting)
        self.assertFalse(transport(origin).disconnecting)
