# trial's assertion methods carry no annotations.
# mypy: disable-error-code="no-untyped-call"
"""Tests for etpmitm.limits: raising the descriptor limit at start-up."""

from __future__ import annotations

import resource

from twisted.trial.unittest import SynchronousTestCase

from etpmitm import limits
from etpmitm.limits import raise_nofile_limit


class FakeResource:
    """Stands in for the resource module: an RLIMIT_NOFILE the test controls."""

    RLIMIT_NOFILE = resource.RLIMIT_NOFILE
    RLIM_INFINITY = resource.RLIM_INFINITY

    def __init__(self, soft: int, hard: int, refuse: bool = False) -> None:
        self.limit = (soft, hard)
        self.refuse = refuse

    def getrlimit(self, which: int) -> tuple[int, int]:
        assert which == self.RLIMIT_NOFILE
        return self.limit

    def setrlimit(self, which: int, limit: tuple[int, int]) -> None:
        assert which == self.RLIMIT_NOFILE
        if self.refuse:
            raise ValueError("not allowed")
        self.limit = limit


class RaiseNofileTests(SynchronousTestCase):
    def test_soft_raised_to_hard(self) -> None:
        """For real: lower the soft limit, then raise it back to the hard one."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        lower = min(soft, 256)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lower, hard))
        in_use = raise_nofile_limit()
        self.assertEqual(in_use, resource.getrlimit(resource.RLIMIT_NOFILE))
        if hard == resource.RLIM_INFINITY:
            self.assertGreater(in_use[0], lower)
        else:
            self.assertEqual(in_use, (hard, hard))

    def test_already_at_hard(self) -> None:
        self.patch(limits, "resource", FakeResource(4096, 4096))
        self.assertEqual(raise_nofile_limit(), (4096, 4096))

    def test_infinite_hard_is_capped_at_nr_open(self) -> None:
        fake = FakeResource(1024, resource.RLIM_INFINITY)
        self.patch(limits, "resource", fake)
        nr_open = self.mktemp()
        with open(nr_open, "w") as f:
            f.write("1048576\n")
        self.patch(limits, "_NR_OPEN", type(limits._NR_OPEN)(nr_open))
        self.assertEqual(raise_nofile_limit(), (1048576, resource.RLIM_INFINITY))

    def test_refused_keeps_the_limit(self) -> None:
        self.patch(limits, "resource", FakeResource(1024, 65536, refuse=True))
        self.assertEqual(raise_nofile_limit(), (1024, 65536))
