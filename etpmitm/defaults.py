"""Embedded defaults: where the gateway keeps its state and finds its policy when not told."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Callable

DEFAULT_PORT = 8443
DEFAULT_LISTEN = f"tcp6:{DEFAULT_PORT}:interface=\\:\\:"
"""Dual-stack: IPv6, and IPv4 as v4-mapped addresses (net.ipv6.bindv6only = 0)."""
DEFAULT_LISTEN_IPV4 = f"tcp:{DEFAULT_PORT}"
DEFAULT_BACKLOG = 4096
"""The accept queue asked of listen(); deploy/sysctl.conf sets somaxconn to match."""


def _probe_ipv6() -> None:
    """Raise OSError where this host cannot listen on IPv6."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        probe.bind(("::", 0))


def _bindv6only() -> bool:
    try:
        return Path("/proc/sys/net/ipv6/bindv6only").read_text().strip() == "1"
    except OSError:
        return False


def default_listen(
    probe: Callable[[], None] = _probe_ipv6, bindv6only: Callable[[], bool] = _bindv6only
) -> tuple[list[str], str | None]:
    """The listen descriptions used without --listen, and why they differ
    from the dual-stack default (None when they do not)."""
    try:
        probe()
    except OSError as e:
        return [DEFAULT_LISTEN_IPV4], f"no IPv6 on this host ({e.strerror}); listening on IPv4 only"
    if bindv6only():
        return [DEFAULT_LISTEN, DEFAULT_LISTEN_IPV4], "net.ipv6.bindv6only is 1; listening on IPv6 and IPv4 apart"
    return [DEFAULT_LISTEN], None

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
