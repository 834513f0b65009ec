"""The threat lists in ``twistd etpmitm`` (thin glue for :mod:`etpmitm.service`).

Without workers the gateway builds and maps the tables itself.  With
``--workers`` the master builds them, passes the manifest's path to each
worker (``--threat-manifest``), and after each swap tells every worker, over
the pipe that carries learned bypasses, to map the new tables.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from etpmitm.gateway.policyholder import PolicyHolder
from etpmitm.policy import PolicyError, load_policy
from etpmitm.threat.judge import ThreatLists
from etpmitm.threat.keeper import ListKeeper
from etpmitm.threat.store import MANIFEST, read_manifest
from etpmitm.workers import WorkerPool

__all__ = ["MANIFEST", "ThreatListService", "listKeeper", "mapLists", "remap"]

log = Logger()
REMAP = {"threat": "remap"}
"""The master's message: map the tables the manifest names now."""


def listKeeper(policy: PolicyHolder, interval: float) -> ListKeeper | None:
    """Build the policy's lists now (raises :class:`~etpmitm.threat.lists.ListError`).

    None without a policy file; with one the keeper runs even with no
    ``[[list]]``, since a SIGHUP may add some.
    """
    from twisted.internet import reactor

    if policy.path is None:
        return None
    directory = Path(tempfile.mkdtemp(prefix="etpmitm-lists-", dir=os.environ.get("RUNTIME_DIRECTORY")))

    def publish(lists: ThreatLists) -> None:
        policy.lists = lists

    keeper = ListKeeper(policy.current.lists, directory, publish, cast(IReactorTime, reactor), interval,
                        run=deferToThread)
    try:
        keeper.start()
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return keeper


class ThreatListService(Service):
    """The keeper's life: its timer, SIGHUP with workers, and its tables removed at the end."""

    def __init__(self, keeper: ListKeeper, policy: PolicyHolder, pool: Callable[[], WorkerPool | None]) -> None:
        self.keeper = keeper
        self._policy = policy
        self._pool = pool

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        pool = self._pool()
        if pool is not None:
            self.keeper.publish = lambda lists: pool.broadcast(REMAP)
            pool.hangup = self._masterHangup

    def _masterHangup(self) -> None:
        """The master has no policy in force: it reads the file's ``[[list]]`` tables again."""
        specs = self.keeper.specs
        if self._policy.path is not None:
            try:
                specs = load_policy(self._policy.path).lists
            except PolicyError as e:
                log.error("policy reload failed, keeping the previous threat lists: {error}", error=str(e))
        self.keeper.reload(specs)

    def stopService(self) -> Any:
        super().stopService()  # type: ignore[no-untyped-call]
        self.keeper.stop()
        shutil.rmtree(self.keeper.directory, ignore_errors=True)
        return None


def mapLists(manifest: Path) -> ThreatLists:
    """The tables a worker's master built (raises OSError or ValueError)."""
    return read_manifest(manifest)


def remap(policy: PolicyHolder, manifest: str | None, message: dict[str, Any]) -> bool:
    """Handle the master's :data:`REMAP`; False for any other message."""
    if message != REMAP:
        return False
    if manifest is None:
        return True
    try:
        policy.lists = read_manifest(Path(manifest))
    except (OSError, ValueError) as e:
        log.error("could not map the new threat lists, keeping the previous ones: {error}", error=str(e))
        return True
    log.info("threat lists remapped: {names}", names=", ".join(t.name for t in policy.lists.lists) or "none")
    return True
