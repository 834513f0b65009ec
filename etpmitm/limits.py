"""Process limits the gateway raises at start-up."""

from __future__ import annotations

import resource
from pathlib import Path

__all__ = ["raise_nofile_limit"]

_NR_OPEN = Path("/proc/sys/fs/nr_open")


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return the (soft, hard) in use.

    Each connection holds two descriptors (device and origin), and the
    default soft limit (often 1024) is far below what ``--max-connections``
    needs.  An unlimited hard limit is capped at the kernel's ``nr_open``.  If
    the kernel refuses, the limits stay as they were.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            target = int(_NR_OPEN.read_text())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)
