"""Log time stamps at a fraction of Twisted's cost: each second is formatted once.

twistd's log observer (``twisted.logger.textFileLogObserver``) stamps every
line with ``twisted.logger.formatTime``, which builds a time zone and a
``datetime`` and calls ``strftime``: about 11 us a line, a tenth of the cost
of a keep-alive request through the gateway, whose audit event is a line.
:func:`formatTime` gives the same text and reuses the last second's: a
stamp without ``%f`` names only the second, and the local offset of that
second.  :func:`install` puts it where the observer looks it up (the name
``formatTime`` in ``twisted.logger._file``); ``tests/test_logtime.py``
checks both the text and that the observer uses it.
"""

from __future__ import annotations

import math

from twisted.logger import _file
from twisted.logger._format import formatTime as twistedFormatTime, timeFormatRFC3339

_ROUNDS_UP = 1 - 5e-7
"""From here on ``datetime.fromtimestamp`` rounds a time to the next second."""

_last: tuple[int, str, str] | None = None
"""The last second formatted: (second, format, text)."""


def formatTime(when: float | None, timeFormat: str | None = timeFormatRFC3339, default: str = "-") -> str:
    """``twisted.logger.formatTime``, remembering the last second's text."""
    global _last
    if timeFormat is None or when is None:
        return default
    second = math.floor(when)
    if when - second >= _ROUNDS_UP or "%f" in timeFormat or second < 0:
        return twistedFormatTime(when, timeFormat, default)
    last = _last
    if last is not None and last[0] == second and last[1] == timeFormat:
        return last[2]
    text = twistedFormatTime(second, timeFormat, default)
    _last = (second, timeFormat, text)
    return text


def install() -> None:
    """Have twistd's text log observers stamp their lines with :func:`formatTime`."""
    setattr(_file, "formatTime", formatTime)
