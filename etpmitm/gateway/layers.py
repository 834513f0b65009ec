"""The two decrypted ends of a connection, and the layer between them.

A :class:`Side` is the protocol inside each end's transport (TLS, or plain
TCP for a splice); it reports every event to the connection that owns it.
Once both ends are ready the connection builds a :class:`Pipe`: it couples
the ends (each transport is the streaming producer of the other, so a slow
reader pauses the fast writer), passes each direction's end on separately
(half-close), and hands the bytes to a layer (:class:`~etpmitm.interfaces.ILayer`).
:class:`OpaqueRelay` is the default layer: it passes everything on.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Protocol as TypingProtocol

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from etpmitm.gateway._twisted import HalfCloseableTLS, quietEvents, writeNow
from etpmitm.interfaces import ILayer, ILayerLink

SideName = Literal["device", "origin"]


class SideEvents(TypingProtocol):
    """What a :class:`Side` reports (implemented by the connection)."""

    def sideHandshakeDone(self, side: Side) -> None: ...

    def sideData(self, side: Side, data: bytes) -> None: ...

    def sideEnded(self, side: Side) -> None: ...

    def sideLost(self, side: Side, reason: Failure) -> None: ...


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class Side(Protocol):
    """The protocol inside one end's transport; reports to ``events``.

    ``alpn`` is read by the device context's ALPN callback: the protocol to
    select (the origin's choice).  Bytes that arrive before a pipe takes
    the side wait in ``pending``.
    """

    def __init__(self, name: SideName, events: SideEvents, alpn: bytes | None = None) -> None:
        self.name: SideName = name
        self.events = events
        self.alpn = alpn
        self.pending: list[bytes] = []
        self.received = 0
        self.readEnded = False
        self.writeEnded = False
        self.relay: Callable[[bytes], None] | None = None
        """Where the pipe of an :class:`OpaqueRelay` has this side's bytes go directly."""

    @property
    def clean(self) -> bool:
        """Whether the end of input was clean: close_notify over TLS, any FIN over TCP."""
        return bool(getattr(self.transport, "closeNotifyReceived", True))

    def handshakeCompleted(self) -> None:
        self.events.sideHandshakeDone(self)

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.relay is not None:
            self.relay(data)
        else:
            self.events.sideData(self, data)

    def readConnectionLost(self) -> None:
        self.readEnded = True
        self.events.sideEnded(self)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        self.events.sideLost(self, reason)


class PipeOwner(TypingProtocol):
    """What a :class:`Pipe` asks of the connection that owns it."""

    def layerClose(self, reason: str) -> None: ...

    def layerAbort(self, reason: str) -> None: ...


@implementer(ILayerLink)
class Pipe:
    """Couples two connected sides through a layer."""

    def __init__(self, owner: PipeOwner, device: Side, origin: Side, layer: ILayer, clock: IReactorTime) -> None:
        self.device = device
        self.origin = origin
        self.layer = layer
        self._owner = owner
        self._clock = clock
        self.lastActivity = clock.seconds()
        self.sentToDevice = 0
        """Bytes the layer sent the device (passed on, or its own answers)."""
        self.error: str | None = None
        self.remark: str | None = None
        """Worth auditing, but not an error (the first one is kept)."""
        self._closing = False
        self._coupled = False
        self._drains: dict[str, _Drain] = {}
        self._ending: Side | None = None
        """A side whose peer is gone, left open while the layer passes on what it holds for it."""

    def start(self) -> None:
        """Wire the producers, start the layer, then deliver what arrived early."""
        device, origin = self.device, self.origin
        if getattr(self.layer, "paced", False):  # the layer asks whenDrained: watch each side drain
            self._drains = {"device": _Drain(_transport(origin)), "origin": _Drain(_transport(device))}
            _transport(device).registerProducer(self._drains["device"], True)
            _transport(origin).registerProducer(self._drains["origin"], True)
        else:
            _transport(device).registerProducer(_transport(origin), True)
            _transport(origin).registerProducer(_transport(device), True)
        self._coupled = True
        for side in (device, origin):
            quietEvents(side.transport)  # both handshakes are done: events need no logging context
        self.layer.start(self)
        if type(self.layer) is OpaqueRelay and not self._drains:
            # It passes every byte on as it comes: skip the layer's calls.
            device.relay, origin.relay = self._deviceToOrigin, self._originToDevice
        for side in (device, origin):
            pending, side.pending = side.pending, []
            for data in pending:
                self.received(side, data)
            if side.readEnded:
                self.ended(side)
            if side.connected:
                _transport(side).resumeProducing()

    # -- events from the sides (via the connection) --------------------------

    def received(self, side: Side, data: bytes) -> None:
        self.lastActivity = self._clock.seconds()
        if side is self.device:
            self.layer.deviceData(data)
        else:
            self.layer.originData(data)

    def _deviceToOrigin(self, data: bytes) -> None:
        """``received`` from the device, with :class:`OpaqueRelay`'s ``deviceData`` and ``toOrigin`` inlined."""
        self.lastActivity = self._clock.seconds()
        origin = self.origin
        if origin.connected:
            writeNow(origin.transport, data)

    def _originToDevice(self, data: bytes) -> None:
        """``received`` from the origin, with ``originData`` and ``toDevice`` inlined."""
        self.lastActivity = self._clock.seconds()
        device = self.device
        if device.connected:
            self.sentToDevice += len(data)
            writeNow(device.transport, data)

    def ended(self, side: Side) -> None:
        if side is self.device:
            self.layer.deviceEnded(side.clean)
        else:
            self.layer.originEnded(side.clean)
        self._closeIfBothEnded(side)

    def lost(self, side: Side, reason: Failure) -> None:
        """``side`` is gone: end its peer the same way (FIN after FIN, reset after reset)."""
        peer = self._peer(side)
        if not peer.connected:
            self.layer.closed()
            return
        clean = isinstance(reason.value, ConnectionDone)
        holdsFor = getattr(self.layer, "holdsFor", None)
        if clean and not self._closing and holdsFor is not None and holdsFor(peer.name):
            self._ending = peer  # the layer passes on what it holds for the peer, then ends it
            return
        self._decouple()  # the lost side can produce no more; a TLS close then proceeds
        transport = _transport(peer)
        if clean or self._closing:
            transport.loseConnection()
            return
        lost = f"{side.name} connection lost: {reason.getErrorMessage()}"
        if side.writeEnded:
            # Everything bound for it was sent and ended: a client that
            # closes with our close_notify unread resets, and nothing was lost.
            self.note(f"{lost} (after its direction ended)")
        else:
            self.fail(lost)
        transport.abortConnection()

    # -- what the connection does ---------------------------------------------

    def shutdown(self) -> None:
        """End both sides politely: close_notify and FIN, after what is queued."""
        self._closing = True
        self._decouple()
        for side in (self.device, self.origin):
            if side.connected:
                _transport(side).loseConnection()

    def abortBoth(self) -> None:
        """Reset both sides (the reason is already recorded)."""
        self._closing = True
        for side in (self.device, self.origin):
            if side.connected:
                _transport(side).abortConnection()

    # -- ILayerLink --------------------------------------------------------------

    def toOrigin(self, data: bytes) -> None:
        if self.origin.connected:
            writeNow(self.origin.transport, data)

    def toDevice(self, data: bytes) -> None:
        if self.device.connected:
            self.sentToDevice += len(data)
            writeNow(self.device.transport, data)

    def endToOrigin(self, clean: bool = True) -> None:
        self._endTo(self.origin, clean)

    def endToDevice(self, clean: bool = True) -> None:
        self._endTo(self.device, clean)

    def pauseReading(self, side: str) -> None:
        _transport(self._named(side)).pauseProducing()

    def resumeReading(self, side: str) -> None:
        _transport(self._named(side)).resumeProducing()

    def whenDrained(self, side: str, callback: Callable[[], None]) -> bool:
        drain = self._drains.get(side) if self._coupled else None
        if drain is None or not drain.paused:
            return False
        drain.waiting.append(callback)
        return True

    def fail(self, reason: str) -> None:
        if self.error is None:
            self.error = reason

    def note(self, text: str) -> None:
        if self.remark is None:
            self.remark = text

    def close(self, reason: str) -> None:
        self._owner.layerClose(reason)

    def abort(self, reason: str) -> None:
        self.fail(reason)
        self._owner.layerAbort(reason)

    # -- helpers -------------------------------------------------------------------

    def _decouple(self) -> None:
        """Unregister each side as the other's producer (once)."""
        if self._coupled:
            self._coupled = False
            for side in (self.device, self.origin):
                if side.connected:
                    _transport(side).unregisterProducer()

    def _peer(self, side: Side) -> Side:
        return self.origin if side is self.device else self.device

    def _named(self, name: str) -> Side:
        return self.device if name == "device" else self.origin

    def _endTo(self, side: Side, clean: bool) -> None:
        if side.writeEnded or not side.connected:
            return
        if side is self._ending:  # its peer is gone: close it now, as lost() would have
            self._decouple()
            _transport(side).loseConnection()
            return
        side.writeEnded = True
        transport = _transport(side)
        if isinstance(transport, HalfCloseableTLS):
            transport.loseWriteConnection(closeNotify=clean)
        else:
            transport.loseWriteConnection()
        self._closeIfBothEnded(side)

    @staticmethod
    def _closeIfBothEnded(side: Side) -> None:
        """A plain TCP transport stays open after both of its directions end
        (the TLS transport closes itself)."""
        transport = side.transport
        if side.readEnded and side.writeEnded and side.connected and not isinstance(transport, HalfCloseableTLS):
            transport.loseConnection()  # type: ignore[union-attr]


def _transport(side: Side) -> Any:
    return side.transport


class _Drain:
    """The producer registered with one side: the other side's transport, plus
    whether this side is keeping up, and who waits for it to drain."""

    __slots__ = ("_producer", "paused", "waiting")

    def __init__(self, producer: Any) -> None:
        self._producer = producer
        self.paused = False
        self.waiting: list[Callable[[], None]] = []

    def pauseProducing(self) -> None:
        self.paused = True
        self._producer.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        self._producer.resumeProducing()
        waiting, self.waiting = self.waiting, []
        for callback in waiting:
            callback()

    def stopProducing(self) -> None:
        self.waiting = []
        self._producer.stopProducing()


@implementer(ILayer)
class OpaqueRelay:
    """Passes every byte on unchanged, and each direction's end as it came.

    An origin that ends without close_notify while the device is still
    sending truncated what the device gets: an error.  Once the device has
    ended its own direction, many servers close without answering its
    close_notify; that is noted, not an error.  (A device that half-closes
    and then waits for the rest of a response sees the bare FIN itself; an
    HTTP layer, which knows where a response ends, can tell more.)
    """

    name = "opaque"

    def __init__(self) -> None:
        self._deviceEnded = False

    def start(self, link: ILayerLink) -> None:
        self._link = link

    def deviceData(self, data: bytes) -> None:
        self._link.toOrigin(data)

    def originData(self, data: bytes) -> None:
        self._link.toDevice(data)

    def deviceEnded(self, clean: bool) -> None:
        self._deviceEnded = True
        self._link.endToOrigin(clean)

    def originEnded(self, clean: bool) -> None:
        if not clean and self._deviceEnded:
            self._link.note("the origin closed without close_notify after the device had ended")
        elif not clean:
            self._link.fail("truncated: the origin closed without close_notify")
        self._link.endToDevice(clean)

    def closed(self) -> None:
        pass
