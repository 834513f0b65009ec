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

``tests/test_h2_internals.py`` checks that both still hold for the installed h2.
"""

from __future__ import annotations

from typing import Any

import h2.connection
import h2.errors
import h2.events
import h2.settings
from hyperframe.frame import Frame, GoAwayFrame


class GracefulH2Connection(h2.connection.H2Connection):
    """An ``H2Connection`` that keeps its open streams after receiving GOAWAY."""

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[h2.events.Event]]:
        event = h2.events.ConnectionTerminated()
        event.error_code = _error_code(frame.error_code)
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]

    def compact(self) -> None:
        """Hold the local and remote settings' values in small lists (see the module's docstring)."""
        for settings in (self.local_settings, self.remote_settings):
            compact_settings(settings)


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
