"""Whether the gateway is fit to take connections (``/healthz``), sans-IO.

Healthy means: not stopping, accepting connections, and able to mint leaves
with its CA.  Minting is checked at most once per ``every`` seconds (a real
signature with the CA and the leaf key), so a probe every second costs a
signature a minute.
"""

from __future__ import annotations

import datetime
from typing import Callable

import attrs

from etpmitm.ca.directory import CertificateAuthority
from etpmitm.keyfiles import PrivateKey
from etpmitm.mint import LeafIssuer

PROBE_NAME = "healthz.etpmitm.invalid"
"""The name of the leaf a mint check signs (a reserved TLD: never a real host)."""

Check = Callable[[], "str | None"]
"""A check: None when fine, else why not (one short line)."""


@attrs.define
class MintCheck:
    """Can this CA mint a leaf now?  Cached for ``every`` seconds."""

    ca: CertificateAuthority
    key: PrivateKey = attrs.field(repr=False)
    clock: Callable[[], float]
    every: float = 60.0
    _checked: float | None = None
    _problem: str | None = None

    def __call__(self) -> str | None:
        now = self.clock()
        if self._checked is None or now - self._checked >= self.every or now < self._checked:
            self._checked = now
            self._problem = self._mint(now)
        return self._problem

    def _mint(self, now: float) -> str | None:
        when = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
        certificate = self.ca.certificate
        if not certificate.not_valid_before_utc <= when < certificate.not_valid_after_utc:
            return f"cannot mint: the CA certificate is not valid now (valid {certificate.not_valid_before_utc:%Y-%m-%d} to {certificate.not_valid_after_utc:%Y-%m-%d})"
        try:
            LeafIssuer(self.ca, self.key).mint((PROBE_NAME,), now=when)
        except Exception as e:  # any failure to sign is the answer, not a crash
            return f"cannot mint: {e}"
        return None


@attrs.define
class Health:
    """``stopping`` (set when shutdown begins), then each check in order."""

    checks: list[Check] = attrs.Factory(list)
    stopping: bool = False

    def status(self) -> tuple[bool, str]:
        """(healthy, the reason in a few words)."""
        if self.stopping:
            return False, "stopping"
        for check in self.checks:
            problem = check()
            if problem is not None:
                return False, problem
        return True, "ok"
