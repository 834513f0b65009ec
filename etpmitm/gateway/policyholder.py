"""The policy in force, its learned bypasses, and reloading it on SIGHUP."""

from __future__ import annotations

from pathlib import Path

import attrs
from twisted.logger import Logger

from etpmitm import metrics
from etpmitm.learning import LearnedBypass
from etpmitm.threat.judge import NO_LISTS, ThreatLists
from etpmitm.policy import DEFAULT_POLICY, LearningSettings, Policy, PolicyError, load_policy

log = Logger()


def _learnedFor(settings: LearningSettings) -> LearnedBypass:
    return LearnedBypass.from_settings(settings)


@attrs.define
class PolicyHolder:
    """Hands each new connection the current policy.

    Connections keep the policy they started with; a reload affects only
    connections accepted after it.
    """

    path: Path | None = None
    current: Policy = DEFAULT_POLICY
    learned: LearnedBypass = attrs.field(default=attrs.Factory(lambda self: _learnedFor(self.current.learning), takes_self=True))
    lists: ThreatLists = NO_LISTS
    """The threat lists in force, replaced whole by :mod:`etpmitm.threat.keeper` (or the master)."""

    @classmethod
    def load(cls, path: Path | None) -> PolicyHolder:
        """Read the policy file (raises :class:`PolicyError`), or use the defaults."""
        if path is None:
            return cls()
        return cls(path, load_policy(path))

    def reload(self) -> bool:
        """Re-read the file; on any problem keep the old policy and log why."""
        if self.path is None:
            log.info("SIGHUP: no --policy file; nothing to reload")
            return False
        try:
            policy = load_policy(self.path)
        except PolicyError as e:
            log.error("policy reload failed, keeping the previous policy: {error}", error=str(e))
            metrics.current.policyReloaded(ok=False)
            return False
        if policy.learning != self.current.learning:
            self.learned = _learnedFor(policy.learning)
            metrics.current.bypassesActive(0)
        self.current = policy
        metrics.current.policyReloaded(ok=True)
        log.info(
            "policy reloaded from {path}: {count} rules, untrusted={untrusted}",
            path=str(self.path),
            count=len(policy.rules),
            untrusted=policy.untrusted,
        )
        return True
