"""Embedded defaults: where the gateway keeps its state when not told."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_LISTEN = "tcp:8443"


def data_directory() -> Path:
    """systemd's StateDirectory, else /var/lib/etpmitm for root, else the XDG data dir."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/etpmitm")
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "etpmitm"


def default_ca_directory() -> Path:
    return data_directory() / "ca"
