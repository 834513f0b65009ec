"""The private h2 behaviours the HTTP/2 layer changes, fenced here.

h2 ends a connection's life the moment a GOAWAY arrives or leaves: its state
machine refuses every later frame, so streams still in flight fail.  RFC 9113
6.8 says they go on (nginx sends GOAWAY after ``keepalive_requests`` and then
finishes the streams it listed).  :class:`GracefulH2Connection` reports a
received GOAWAY as h2's ``ConnectionTerminated`` event and stays open; the
layer sends its own GOAWAYs as bytes (:func:`goaway_frame`), so they close
nothing either.

h2 keeps each setting's values (the current one first, then those not yet
acknowledged) in a ``collections.deque``, which allocates a 64-slot block: the
four Settings of a layer's two connections hold some 20 KiB that way, the
bulk of an idle HTTP/2 connection's Python memory.  :meth:`GracefulH2Connection.compact`
swaps them for lists that do what h2 asks of them (``[0]``, ``append``,
``popleft``, ``len``).

h2 logs every frame it receives with ``logger.trace("Received frame: %s",
repr(frame))``, so it builds the frame's repr (its payload's bytes in hex)
even when the logger is h2's do-nothing one (4% of the layer's time under cProfile).
:func:`_as_is` shadows ``repr`` in ``h2.connection``, where that line is its
only use: the frame itself goes to the logger, and a logger that does write
the line formats it with ``%s``, which gives the same text (hyperframe frames
have a ``__repr__`` and no ``__str__``).

hpack logs each header it encodes or decodes at debug level, some 50 calls of
``logging.Logger.debug`` a request through the gateway (about 2% of its instructions) for
lines the gateway never writes: it routes no stdlib logging anywhere.
:class:`_NoDebugLines` stands in for ``hpack.hpack``'s logger and drops them.

h2 gathers a header block (HEADERS, then CONTINUATIONs) in its frame buffer
and gives up only after 64 frames, with PROTOCOL_ERROR.  :class:`CappedFrameBuffer`
stops one earlier, at a count of frames or of bytes
(:meth:`GracefulH2Connection.capHeaderBlocks`), with :class:`HeaderBlockFlood`:
h2 answers it with GOAWAY(ENHANCE_YOUR_CALM), the error's code.

``tests/test_h2_internals.py`` checks that all of these still hold for the installed h2 and hpack.
"""

from __future__ import annotations

from typing import Any

import h2.connection
import h2.errors
import h2.events
import h2.settings
import hpack.hpack
import h2.exceptions
import h2.frame_buffer
from hyperframe.frame import ContinuationFrame, Frame, GoAwayFrame


def _as_is(value: object) -> object:
    """``repr`` for ``h2.connection``'s frame log line: the frame, formatted only if the line is written."""
    return value


setattr(h2.connection, "repr", _as_is)


class _NoDebugLines:
    """hpack's module logger, but for its debug lines, which are dropped unformatted."""

    debug = "".format
    """A call in C that ignores its arguments (the lines take some 100 logging calls a request)."""

    def __init__(self, logger: Any) -> None:
        self._logger = logger

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)


hpack.hpack.log = _NoDebugLines(hpack.hpack.log)  # type: ignore[assignment]


class GracefulH2Connection(h2.connection.H2Connection):
    """An ``H2Connection`` that keeps its open streams after receiving GOAWAY."""

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[h2.events.Event]]:
        event = h2.events.ConnectionTerminated()
        event.error_code = _error_code(frame.error_code)
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]

    def capHeaderBlocks(self, frames: int, size: int) -> None:
        """Refuse a header block of more than ``frames`` CONTINUATIONs or ``size`` encoded bytes
        (call before any data is received)."""
        self.incoming_buffer = CappedFrameBuffer(server=not self.config.client_side, frames=frames, size=size)

    def compact(self) -> None:
        """Hold the local and remote settings' values in small lists (see the module's docstring)."""
        for settings in (self.local_settings, self.remote_settings):
            compact_settings(settings)


class HeaderBlockFlood(h2.exceptions.ProtocolError):
    """A header block over the limits of :class:`CappedFrameBuffer` (h2 sends GOAWAY with this code)."""

    error_code = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


class CappedFrameBuffer(h2.frame_buffer.FrameBuffer):
    """h2's frame buffer, with a tighter bound on one header block's CONTINUATION frames and bytes."""

    def __init__(self, server: bool, frames: int, size: int) -> None:
        super().__init__(server=server)
        self._maxFrames = frames
        self._maxSize = size

    def _update_header_buffer(self, f: Frame | None) -> Frame | None:
        pending = self._headers_buffer
        if pending and isinstance(f, ContinuationFrame):
            if len(pending) > self._maxFrames:  # the HEADERS frame, then more than the CONTINUATIONs allowed
                raise HeaderBlockFlood(f"CONTINUATION flood: a header block of over {self._maxFrames} CONTINUATION frames")
            size = len(f.data) + sum(len(frame.data) for frame in pending)
            if size > self._maxSize:
                raise HeaderBlockFlood(f"CONTINUATION flood: a header block of over {self._maxSize} bytes")
        return super()._update_header_buffer(f)


class _Values(list):  # type: ignore[type-arg]
    """One setting's values, current first, as h2's deque of them is used."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


def compact_settings(settings: h2.settings.Settings) -> None:
    """Swap h2's deque of values of each setting for a :class:`_Values` list."""
    values = settings._settings
    for key, history in list(values.items()):
        values[key] = _Values(history)  # type: ignore[assignment]


def goaway_frame(last_stream_id: int, error_code: int = h2.errors.ErrorCodes.NO_ERROR) -> bytes:
    """A serialised GOAWAY frame, sent beside h2 so that its connection stays usable."""
    frame = GoAwayFrame(0)
    frame.last_stream_id = last_stream_id
    frame.error_code = int(error_code)
    return bytes(frame.serialize())


def _error_code(code: int) -> h2.errors.ErrorCodes | int:
    try:
        return h2.errors.ErrorCodes(code)
    except ValueError:
        return code
