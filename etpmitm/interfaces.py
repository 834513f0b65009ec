"""Interfaces where operators plug in their own pieces."""

from __future__ import annotations

from typing import Callable

from zope.interface import Attribute, Interface


class ILayerLink(Interface):
    """What a layer may do with the two decrypted ends of one connection.

    The core keeps back-pressure (a side whose peer cannot keep up stops
    being read), half-close, the idle timeout, the byte counts and the
    connection's single audit event.
    """

    def toOrigin(data: bytes) -> None:
        """Send ``data`` to the origin."""

    def toDevice(data: bytes) -> None:
        """Send ``data`` to the device (pass the origin's bytes on, or answer)."""

    def endToOrigin(clean: bool = True) -> None:
        """End the direction towards the origin (close_notify then FIN;
        ``clean=False`` mirrors a truncation: FIN only)."""

    def endToDevice(clean: bool = True) -> None:
        """End the direction towards the device."""

    def pauseReading(side: str) -> None:
        """Stop reading from ``"device"`` or ``"origin"`` (a layer that holds bytes)."""

    def resumeReading(side: str) -> None:
        """Read from ``side`` again."""

    def whenDrained(side: str, callback: Callable[[], None]) -> bool:
        """If ``side`` is not keeping up with what it was sent (its peer stopped
        being read), call ``callback()`` once it drains and return True; else
        return False (send on).  A layer that releases held bytes paces itself
        with it; it works only for a layer whose ``paced`` attribute is true
        when the link starts it (others always get False)."""

    def fail(reason: str) -> None:
        """Record why this connection is an error (first reason wins), without closing it."""

    def note(text: str) -> None:
        """Record a remark for the audit reason when nothing failed (first one wins)."""

    def close(reason: str) -> None:
        """End both directions politely now; ``reason`` is audited."""

    def abort(reason: str) -> None:
        """Reset both sides now; the connection is audited as an error with ``reason``."""


class ILayer(Interface):
    """What runs between the device and the origin once both handshakes are done.

    It sees the decrypted bytes of each direction, in order, and may pass
    them on, hold them, answer the device itself, or end the connection,
    through its :class:`ILayerLink`.  The opaque relay is the default layer;
    the HTTP inspectors are others.  Methods must not block.

    A layer may also have ``holdsFor(side) -> bool``: while it is true, a
    side whose peer closed cleanly is left open for the layer to pass on what
    it holds (a message held for a content scan); the layer's
    ``endToDevice``/``endToOrigin`` (or ``close``) then closes it.
    """

    name = Attribute("A short name for the audit log, such as 'opaque'.")

    def start(link: ILayerLink) -> None:
        """Both ends are ready; ``link`` is how the layer acts on them."""

    def deviceData(data: bytes) -> None:
        """Bytes the device sent towards the origin."""

    def originData(data: bytes) -> None:
        """Bytes the origin sent towards the device."""

    def deviceEnded(clean: bool) -> None:
        """The device finished sending (``clean``: close_notify before FIN, or a plain TCP FIN)."""

    def originEnded(clean: bool) -> None:
        """The origin finished sending; ``clean`` is False for a TLS truncation."""

    def closed() -> None:
        """Both sides are gone; release what the layer holds."""


class IAuditSink(Interface):
    """Where ``--audit-log`` sends the audit events: a file, the journal, syslog, or your own.

    The gateway calls these from the reactor thread; they must not block.
    A sink that cannot deliver an event drops it with a logged reason
    (never raises, never buffers without bound).
    """

    def start() -> None:
        """The service starts (the reactor runs next): open network connections here."""

    def write(record: dict[str, object], message: str, severity: int) -> None:
        """Deliver one audit event.

        ``record`` is the JSON object of the README's "Audit events as JSON
        lines" (``event``, ``time`` and the fields); ``message`` is the
        event's one-line text, as in the gateway's log; ``severity`` is the
        syslog severity (6 informational, 4 warning, ...).
        """

    def reopen() -> bool:
        """SIGUSR1: open the destination again (logrotate, a restarted syslog); False if it failed."""

    def close() -> object:
        """The service stops: flush what can be flushed without blocking, and let go.

        It may return a Deferred that fires when that is done (the service
        returns it, so twistd waits for it before the reactor stops); it
        should fire within seconds even if the destination does not answer.
        """
