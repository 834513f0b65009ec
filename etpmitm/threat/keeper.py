"""Keeping the threat lists in force up to date (thin Twisted glue).

:class:`ListKeeper` builds every list at start-up (a problem ends start-up
with one line), then rebuilds a list when its file's modification time, size
or inode changes (checked every ``interval`` seconds) and all of them on
:meth:`reload` (SIGHUP, with the policy's new ``[[list]]`` tables).  Builds
after start-up run in a thread, one at a time.  Each success replaces the
lists in force whole (``publish``): connections and requests judged after it
see the new lists, a failure keeps the old list and logs the file, line and
reason.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from etpmitm.policy.listspec import ListSpec
from etpmitm.threat.judge import ThreatLists
from etpmitm.threat.lists import ListError
from etpmitm.threat.store import MANIFEST, Built, build, stamp, write_manifest

log = Logger()
T = TypeVar("T")
Runner = Callable[[Callable[[], T]], "Deferred[T]"]


def inline(f: Callable[[], T]) -> Deferred[T]:
    """Run *f* now (tests, and start-up)."""
    return succeed(f())


class ListKeeper:
    """See the module's docstring."""

    def __init__(
        self,
        specs: Sequence[ListSpec],
        directory: Path,
        publish: Callable[[ThreatLists], None],
        clock: IReactorTime,
        interval: float = 5.0,
        run: Runner[Any] = inline,
    ) -> None:
        self.specs = tuple(specs)
        self.directory = directory
        self.publish = publish
        """Called with the new lists after each swap."""
        self._clock = clock
        self._interval = interval
        self._run = run
        self._built: dict[ListSpec, Built] = {}
        self._serial = itertools.count(1)
        self._busy = False
        self._again: tuple[ListSpec, ...] | None = None
        self._timer: IDelayedCall | None = None
        self._kept: set[str] = set()
        self.lists = ThreatLists()

    def start(self) -> ThreatLists:
        """Build every list now; raises :class:`ListError` at the first that cannot be."""
        for spec in self.specs:
            built = build(spec, self.directory, next(self._serial))
            log.info("{built}", built=built.describe())
            self._built[spec] = built
        self._swap()
        self._schedule()
        return self.lists

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def reload(self, specs: Sequence[ListSpec] | None = None) -> Deferred[None]:
        """Rebuild every list (SIGHUP), with *specs* if the policy's lists changed."""
        if specs is not None:
            self.specs = tuple(specs)
        return self._rebuild(self.specs)

    def check(self) -> Deferred[None]:
        """Rebuild the lists whose files changed since they were built."""
        changed = []
        for spec in self.specs:
            built = self._built.get(spec)
            try:
                now = stamp(spec.file)
            except OSError:
                now = None
            if built is None or now != built.stamp:
                changed.append(spec)
        return self._rebuild(tuple(changed)) if changed else succeed(None)

    # -- inside --------------------------------------------------------------------------

    def _rebuild(self, specs: tuple[ListSpec, ...]) -> Deferred[None]:
        if self._busy:
            self._again = tuple(dict.fromkeys((*(self._again or ()), *specs)))
            return succeed(None)
        self._busy = True
        serials = [next(self._serial) for _ in specs]
        directory = self.directory

        def work() -> list[Built | ListError]:
            results: list[Built | ListError] = []
            for spec, serial in zip(specs, serials):
                try:
                    results.append(build(spec, directory, serial))
                except ListError as e:
                    results.append(e)
            return results

        done: Deferred[list[Built | ListError]] = self._run(work)
        return done.addCallbacks(lambda results: self._built_(specs, results), self._failed)

    def _built_(self, specs: tuple[ListSpec, ...], results: list[Built | ListError]) -> None:
        for spec, result in zip(specs, results):
            if isinstance(result, ListError):
                old = self._built.get(spec)
                keeping = "keeping the previous version" if old is not None and spec in self.specs else "not in force"
                log.error("threat list {name!r} reload failed, {keeping}: {error}",
                          name=spec.name, keeping=keeping, error=str(result))
                if old is not None:
                    try:  # do not retry an unchanged bad file on every tick
                        self._built[spec] = _restamped(old, stamp(spec.file))
                    except OSError:
                        pass
            else:
                log.info("{built}", built=result.describe())
                self._built[spec] = result
        self._swap()
        self._finish()

    def _failed(self, failure: Any) -> None:
        log.failure("threat list reload failed", failure)
        self._finish()

    def _finish(self) -> None:
        self._busy = False
        again, self._again = self._again, None
        if again:
            self._rebuild(again)

    def _swap(self) -> None:
        for spec in list(self._built):
            if spec not in self.specs:
                del self._built[spec]
        built = [self._built[s] for s in self.specs if s in self._built]
        write_manifest(self.directory, built)
        self.lists = ThreatLists(tuple(b.loaded for b in built))
        self.publish(self.lists)
        self._tidy({b.table.name for b in built})

    def _tidy(self, current: set[str]) -> None:
        """Remove tables neither in force nor in force just before (a worker may be mapping those)."""
        for path in self.directory.glob("*.table"):
            if path.name not in current and path.name not in self._kept:
                path.unlink(missing_ok=True)
        self._kept = current

    def _schedule(self) -> None:
        if self._interval > 0:
            self._timer = self._clock.callLater(self._interval, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.check().addBoth(lambda _: self._schedule())


def _restamped(built: Built, now: tuple[int, int, int]) -> Built:
    return attrs.evolve(built, stamp=now)


__all__ = ["MANIFEST", "ListKeeper", "inline"]
