"""The pipe and the opaque relay, in memory: forwarding, back-pressure, half-close, abort."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from etpmitm.gateway.layers import OpaqueRelay, Pipe, Side
from etpmitm.interfaces import ILayer, ILayerLink


class HalfCloseTransport(StringTransport):
    """A StringTransport that records half-closes."""

    def __init__(self) -> None:
        super().__init__()
        self.writeClosed = 0
        self.aborted = False

    def loseWriteConnection(self) -> None:
        self.writeClosed += 1

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class RecordingRelay(OpaqueRelay):
    """The opaque relay, recording what it saw."""

    def __init__(self) -> None:
        self.events: list[tuple[str, bytes]] = []

    def deviceData(self, data: bytes) -> None:
        self.events.append(("device", data))
        super().deviceData(data)

    def originData(self, data: bytes) -> None:
        self.events.append(("origin", data))
        super().originData(data)

    def closed(self) -> None:
        self.events.append(("closed", b""))


class Owner:
    """Stands in for the connection: routes side events to the pipe once it exists."""

    def __init__(self) -> None:
        self.pipe: Pipe | None = None
        self.closes: list[str] = []
        self.aborts: list[str] = []

    def sideHandshakeDone(self, side: Side) -> None:
        pass

    def sideData(self, side: Side, data: bytes) -> None:
        if self.pipe is not None:
            self.pipe.received(side, data)
        else:
            side.pending.append(data)

    def sideEnded(self, side: Side) -> None:
        if self.pipe is not None:
            self.pipe.ended(side)

    def sideLost(self, side: Side, reason: Failure) -> None:
        assert self.pipe is not None
        self.pipe.lost(side, reason)

    def layerClose(self, reason: str) -> None:
        self.closes.append(reason)

    def layerAbort(self, reason: str) -> None:
        self.aborts.append(reason)


class PipeCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.owner = Owner()
        self.device, self.origin = Side("device", self.owner), Side("origin", self.owner)
        self.device.makeConnection(HalfCloseTransport())
        self.origin.makeConnection(HalfCloseTransport())
        self.layer = RecordingRelay()
        self.pipe = Pipe(self.owner, self.device, self.origin, self.layer, self.clock)

    def start(self) -> None:
        self.owner.pipe = self.pipe
        self.pipe.start()

    def transport(self, side: Side) -> HalfCloseTransport:
        assert isinstance(side.transport, HalfCloseTransport)
        return side.transport


class PipeTests(PipeCase):
    def test_interfaces(self) -> None:
        self.assertTrue(verifyObject(ILayerLink, self.pipe))
        self.assertTrue(verifyObject(ILayer, OpaqueRelay()))

    def test_earlyBytesDeliveredOnStart(self) -> None:
        """Bytes read before the pipe starts are forwarded first, in order."""
        self.device.dataReceived(b"GET / HTTP/1.1\r\n")
        self.origin.dataReceived(b"220 hello\r\n")
        self.assertEqual(self.transport(self.origin).value(), b"")
        self.start()
        self.assertEqual(self.transport(self.origin).value(), b"GET / HTTP/1.1\r\n")
        self.assertEqual(self.transport(self.device).value(), b"220 hello\r\n")
        self.device.dataReceived(b"Host: a\r\n\r\n")
        self.assertEqual(self.transport(self.origin).value(), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(
            self.layer.events,
            [("device", b"GET / HTTP/1.1\r\n"), ("origin", b"220 hello\r\n"), ("device", b"Host: a\r\n\r\n")],
        )
        self.assertEqual((self.device.received, self.origin.received), (27, 11))

    def test_activityIsTimed(self) -> None:
        self.start()
        self.clock.advance(7)
        self.device.dataReceived(b"x")
        self.assertEqual(self.pipe.lastActivity, 7)

    def test_eachSideProducesForTheOther(self) -> None:
        """A full writer pauses the reader on the other side, and resumes it."""
        self.start()
        device, origin = self.transport(self.device), self.transport(self.origin)
        self.assertIs(device.producer, origin)
        self.assertIs(origin.producer, device)
        self.assertTrue(device.streaming)
        device.producer.pauseProducing()
        self.assertEqual(origin.producerState, "paused")
        device.producer.resumeProducing()
        self.assertEqual(origin.producerState, "producing")

    def test_halfClosePassedOn(self) -> None:
        """The device ending its direction ends the same direction to the origin."""
        self.start()
        self.device.readConnectionLost()
        self.assertEqual(self.transport(self.origin).writeClosed, 1)
        self.assertEqual(self.transport(self.device).writeClosed, 0)
        self.origin.dataReceived(b"response")
        self.assertEqual(self.transport(self.device).value(), b"response")

    def test_halfCloseBeforeStart(self) -> None:
        """An end that closed before the pipe started is passed on at start."""
        self.device.dataReceived(b"req")
        self.device.readConnectionLost()
        self.start()
        self.assertEqual(self.transport(self.origin).value(), b"req")
        self.assertEqual(self.transport(self.origin).writeClosed, 1)

    def test_abortAbortsTheOther(self) -> None:
        """A reset on one side aborts the other, and the pipe reports why."""
        self.start()
        self.device.connectionLost(Failure(ConnectionLost("reset")))
        self.assertTrue(self.transport(self.origin).aborted)
        self.assertIn("device connection lost", self.pipe.error or "")
        self.origin.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.layer.events[-1], ("closed", b""))

    def test_resetAfterItsDirectionEndedIsNoError(self) -> None:
        """A device that resets once the origin's whole response and its end
        were passed on (it closed with our close_notify unread) lost nothing:
        noted, not an error.  The origin still sees the reset."""
        self.start()
        self.origin.dataReceived(b"response")
        self.origin.readConnectionLost()
        self.device.connectionLost(Failure(ConnectionLost("reset")))
        self.assertTrue(self.transport(self.origin).aborted)
        self.assertIsNone(self.pipe.error)
        self.assertIn("device connection lost", self.pipe.remark or "")
        self.assertIn("after its direction ended", self.pipe.remark or "")

    def test_resetBeforeItsDirectionEndedIsAnError(self) -> None:
        self.start()
        self.device.readConnectionLost()  # the device finished its request...
        self.origin.dataReceived(b"half a response")
        self.device.connectionLost(Failure(ConnectionLost("reset")))  # ...and reset mid-response
        self.assertIn("device connection lost", self.pipe.error or "")
        self.assertIsNone(self.pipe.remark)

    def test_cleanCloseClosesTheOther(self) -> None:
        self.start()
        self.origin.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(self.transport(self.device).disconnecting)
        self.assertFalse(self.transport(self.device).aborted)
        self.assertIsNone(self.transport(self.device).producer)  # unregistered, so a TLS close can proceed
        self.assertIsNone(self.pipe.error)
        self.assertNotIn(("closed", b""), self.layer.events)
        self.device.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.layer.events[-1], ("closed", b""))

    def test_shutdownClosesBothPolitely(self) -> None:
        """How an idle timeout ends a relay: producers off, then a clean close; a later reset is no error."""
        self.start()
        self.pipe.shutdown()
        for side in (self.device, self.origin):
            self.assertTrue(self.transport(side).disconnecting)
            self.assertFalse(self.transport(side).aborted)
            self.assertIsNone(self.transport(side).producer)
        self.device.connectionLost(Failure(ConnectionLost("reset")))
        self.assertIsNone(self.pipe.error)

    def test_plainTCPClosedOnceBothDirectionsEnd(self) -> None:
        """Each TCP socket is closed when both its directions are done, not before."""
        self.start()
        self.device.readConnectionLost()
        self.assertFalse(self.transport(self.device).disconnecting)
        self.assertFalse(self.transport(self.origin).disconnecting)
        self.origin.readConnectionLost()
        self.assertTrue(self.transport(self.device).disconnecting)
        self.assertTrue(self.transport(self.origin).disconnecting)

    def test_layerMayFailCloseOrAbort(self) -> None:
        self.start()
        self.pipe.fail("first")
        self.pipe.fail("second")
        self.assertEqual(self.pipe.error, "first")
        self.pipe.close("done with it")
        self.pipe.abort("bad input")
        self.assertEqual((self.owner.closes, self.owner.aborts), (["done with it"], ["bad input"]))

    def test_layerMayPauseASide(self) -> None:
        self.start()
        self.pipe.pauseReading("origin")
        self.assertEqual(self.transport(self.origin).producerState, "paused")
        self.pipe.resumeReading("origin")
        self.assertEqual(self.transport(self.origin).producerState, "producing")


class HoldingRelay(RecordingRelay):
    """A relay that asks to be paced and may hold bytes for the device."""

    paced = True
    holding = False

    def holdsFor(self, side: str) -> bool:
        return side == "device" and self.holding


class PacedPipeTests(PipeTests):
    """The drain signal and the held side, for a layer that asks for them (``paced``, ``holdsFor``)."""

    def setUp(self) -> None:
        super().setUp()
        self.layer = HoldingRelay()
        self.pipe = Pipe(self.owner, self.device, self.origin, self.layer, self.clock)

    def test_eachSideProducesForTheOther(self) -> None:
        """A full writer still pauses and resumes the reader on the other side (through its drain)."""
        self.start()
        device, origin = self.transport(self.device), self.transport(self.origin)
        self.assertTrue(device.streaming)
        device.producer.pauseProducing()
        self.assertEqual(origin.producerState, "paused")
        device.producer.resumeProducing()
        self.assertEqual(origin.producerState, "producing")

    def test_whenDrained(self) -> None:
        self.start()
        drained: list[str] = []
        self.assertFalse(self.pipe.whenDrained("device", lambda: drained.append("device")))  # keeping up: send on
        device = self.transport(self.device)
        device.producer.pauseProducing()  # the device's buffer is full
        self.assertTrue(self.pipe.whenDrained("device", lambda: drained.append("device")))
        self.assertFalse(self.pipe.whenDrained("origin", lambda: drained.append("origin")))
        self.assertEqual(drained, [])
        device.producer.resumeProducing()
        self.assertEqual(drained, ["device"])
        device.producer.resumeProducing()  # once only
        self.assertEqual(drained, ["device"])

    def test_heldSideStaysOpenUntilTheLayerEndsIt(self) -> None:
        self.start()
        self.layer.holding = True
        self.origin.connectionLost(Failure(ConnectionDone()))
        self.assertFalse(self.transport(self.device).disconnecting)
        self.pipe.toDevice(b"held response")
        self.pipe.endToDevice()
        self.assertEqual(self.transport(self.device).value(), b"held response")
        self.assertTrue(self.transport(self.device).disconnecting)
        self.assertIsNone(self.transport(self.device).producer)
        self.device.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.layer.events[-1], ("closed", b""))

    def test_resetIsNotHeld(self) -> None:
        self.start()
        self.layer.holding = True
        self.origin.connectionLost(Failure(ConnectionLost("reset")))
        self.assertTrue(self.transport(self.device).aborted)


class UnpacedDrainTests(PipeCase):
    def test_whenDrainedIsFalseForALayerThatDidNotAsk(self) -> None:
        self.start()
        self.transport(self.device).producer.pauseProducing()
        self.assertFalse(self.pipe.whenDrained("device", lambda: None))


class DirectOpaqueRelayTests(PipeCase):
    """With :class:`OpaqueRelay` itself, each side's bytes go to the other
    directly; the counts, timing and half-close stay as the layer's path has them."""

    def setUp(self) -> None:
        super().setUp()
        self.layer = OpaqueRelay()  # type: ignore[assignment]
        self.pipe = Pipe(self.owner, self.device, self.origin, self.layer, self.clock)
        self.routed: list[bytes] = []
        original = self.owner.sideData

        def sideData(side: Side, data: bytes) -> None:
            self.routed.append(data)
            original(side, data)

        self.owner.sideData = sideData  # type: ignore[method-assign]

    def test_bytesGoStraightAcross(self) -> None:
        self.device.dataReceived(b"early ")  # before the pipe: held, as before
        self.start()
        self.assertIsNotNone(self.device.relay)
        self.assertIsNotNone(self.origin.relay)
        self.clock.advance(3)
        self.device.dataReceived(b"request")
        self.origin.dataReceived(b"response")
        self.origin.dataReceived(b" more")
        self.assertEqual(self.transport(self.origin).value(), b"early request")
        self.assertEqual(self.transport(self.device).value(), b"response more")
        self.assertEqual(self.routed, [b"early "])  # only what came before the pipe
        self.assertEqual((self.device.received, self.origin.received), (13, 13))
        self.assertEqual(self.pipe.sentToDevice, 13)
        self.assertEqual(self.pipe.lastActivity, 3)

    def test_nothingToAClosedSide(self) -> None:
        self.start()
        self.origin.connected = False
        self.device.dataReceived(b"lost")
        self.assertEqual(self.transport(self.origin).value(), b"")

    def test_halfCloseStillPassedOn(self) -> None:
        self.start()
        self.device.readConnectionLost()
        self.assertEqual(self.transport(self.origin).writeClosed, 1)

    def test_notForOtherLayers(self) -> None:
        """A subclass or a paced layer sees every chunk."""
        for layer in (RecordingRelay(), HoldingRelay()):
            device, origin = Side("device", self.owner), Side("origin", self.owner)
            device.makeConnection(HalfCloseTransport())
            origin.makeConnection(HalfCloseTransport())
            Pipe(self.owner, device, origin, layer, self.clock).start()
            self.assertEqual((device.relay, origin.relay), (None, None), layer)
