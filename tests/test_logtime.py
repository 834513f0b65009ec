"""Log time stamps formatted once a second (:mod:`etpmitm.logtime`)."""

from __future__ import annotations

import io
import random

from twisted.logger import _file, formatTime as twistedFormatTime, textFileLogObserver
from twisted.trial.unittest import SynchronousTestCase

from etpmitm import logtime

FORMATS = ["%Y-%m-%dT%H:%M:%S%z", "%d/%b/%Y %H:%M:%S", "%H:%M:%S.%f", "%s"]


class FormatTimeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.patch(logtime, "_last", None)

    def test_sameTextAsTwisted(self) -> None:
        rng = random.Random(5)
        base = 1_795_000_000.0
        times = [base + rng.random() * 86400 * 365 for _ in range(500)]
        # around second boundaries, where rounding to microseconds carries over
        for second in (base, base + 1, 0.0, 59.0):
            times += [second, second + 1e-7, second + 0.5, second + 0.9999994, second + 0.9999996, second + 0.99999999]
        times.sort()  # each second once, then reused
        for fmt in FORMATS:
            for when in times:
                self.assertEqual(logtime.formatTime(when, fmt), twistedFormatTime(when, fmt), (when, fmt))
            for when in reversed(times):
                self.assertEqual(logtime.formatTime(when, fmt), twistedFormatTime(when, fmt), (when, fmt))

    def test_noTimeOrFormat(self) -> None:
        self.assertEqual(logtime.formatTime(None), "-")
        self.assertEqual(logtime.formatTime(1.0, None, default="?"), "?")

    def test_aSecondIsFormattedOnce(self) -> None:
        calls: list[float] = []
        real = logtime.twistedFormatTime

        def counting(when: float | None, timeFormat: str | None = None, default: str = "-") -> str:
            calls.append(when or 0.0)
            return real(when, timeFormat, default)

        self.patch(logtime, "twistedFormatTime", counting)
        for when in (100.1, 100.5, 100.9, 101.0, 101.2):
            logtime.formatTime(when)
        self.assertEqual(calls, [100, 101])


class InstallTests(SynchronousTestCase):
    def test_twistdsObserverStampsWithIt(self) -> None:
        self.patch(_file, "formatTime", _file.formatTime)  # undone after the test
        logtime.install()
        self.patch(logtime, "_last", (1000, "%Y-%m-%dT%H:%M:%S%z", "STAMP"))
        out = io.StringIO()
        textFileLogObserver(out)({"log_format": "hello", "log_time": 1000.25, "log_system": "s"})
        self.assertEqual(out.getvalue(), "STAMP [s] hello\n")
