"""Embedded defaults: where the gateway keeps its state and finds its policy when not told."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_LISTEN = "tcp:8443"

DEFAULT_POLICY_FILE = Path("/etc/etpmitm/policy.toml")
"""The policy used when no --policy is given and this file exists (how the systemd unit gets one)."""


def data_directory() -> Path:
    """systemd's StateDirectory (the service: /var/lib/etpmitm), else the user's XDG data directory.

    Root gets no special case: an interactive trial run, even as root, keeps its CA
    apart from the service's.
    """
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0])
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "etpmitm"


def default_ca_directory() -> Path:
    return data_directory() / "ca"


def default_policy_file() -> Path | None:
    """DEFAULT_POLICY_FILE when it exists, else None (the built-in policy)."""
    return DEFAULT_POLICY_FILE if DEFAULT_POLICY_FILE.exists() else None
