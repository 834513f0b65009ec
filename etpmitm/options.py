"""``twistd etpmitm``'s command line: the options, their defaults and their checks."""

from __future__ import annotations

import os
from typing import Any

from twisted.python import usage

from etpmitm.admission import DEFAULT_MAX_CONNECTIONS, DEFAULT_PER_CLIENT, DEFAULT_PER_CLIENT_RATE
from etpmitm.defaults import DEFAULT_BACKLOG, DEFAULT_POLICY_FILE, default_ca_directory, default_listen, default_policy_file
from etpmitm.drain import DEFAULT_DELAY, DEFAULT_DRAIN
from etpmitm.gateway.origin import RELAY_BUFFER


def _notNegative(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise ValueError(f"must be 0 or a positive number of seconds, not {value}")
    return number


def _positive(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError(f"must be a positive number of seconds, not {value}")
    return number


class Options(usage.Options):
    """Options for ``twistd etpmitm``."""

    synopsis = "[options]"
    longdesc = (
        "Transparent TLS inspection gateway. Receives TCP connections that "
        "iptables/nftables REDIRECTed to it, intercepts TLS with certificates "
        "minted by the CA in --ca-dir, and relays to the original destination."
    )

    optParameters: list[Any] = [
        ["ca-dir", None, None, f"CA directory (default: {default_ca_directory()}; an own-root CA is made there on first start)"],
        ["upstream-trust", None, "system", "CAs trusted for origins: 'system' or a PEM bundle file"],
        ["handshake-timeout", None, 10.0, "Seconds for the ClientHello and both TLS handshakes", _positive],
        ["connect-timeout", None, 10.0, "Seconds to connect to the origin", _positive],
        ["idle-timeout", None, 300.0, "Seconds without traffic before a relayed connection is closed", _positive],
        ["leaf-key", None, "ecdsa", "Leaf key type: ecdsa (P-256) or rsa (2048)"],
        ["leaf-cache", None, 4096, "How many minted leaves (and their TLS contexts) to keep", int],
        ["passphrase-file", None, None, "File holding the passphrase of the keys at rest"],
        ["policy", None, None, f"Policy file (TOML; default: {DEFAULT_POLICY_FILE} if it exists); SIGHUP reloads it"],
        ["workers", None, "1", "Worker processes sharing the listening sockets: a number, or auto (one per core)"],
        ["max-connections", None, str(DEFAULT_MAX_CONNECTIONS), "Connections open at once, per process; 0: unlimited"],
        ["max-client-connections", None, str(DEFAULT_PER_CLIENT), "Connections open at once from one client address, per process; 0: unlimited"],
        ["max-client-rate", None, f"{DEFAULT_PER_CLIENT_RATE:g}", "New connections per second from one client address, per process (bursts of twice that); 0: unlimited"],
        ["relay-buffer", None, RELAY_BUFFER, "Bytes buffered towards a side before its peer stops being read (a stalled reader holds about 4x this)", int],
        ["backlog", None, DEFAULT_BACKLOG, "Accept queue of each listening socket (capped by net.core.somaxconn)", int],
        ["audit-log", None, None, "Also send the audit events (per connection and per request) to journald, syslog:unix:PATH, syslog:udp:HOST:PORT, syslog:tcp:HOST:PORT, or a FILE of JSON lines; SIGUSR1 reopens it"],
        ["metrics", None, None, "Serve Prometheus metrics at /metrics and a health check at /healthz on this endpoint (strports, e.g. tcp:9180:interface=127.0.0.1)"],
        ["drain-timeout", None, DEFAULT_DRAIN, "On SIGTERM, stop accepting (at once, or after --drain-delay) and give open connections this many seconds to end (0: cut them at once)", _notNegative],
        ["drain-delay", None, DEFAULT_DELAY, "On SIGTERM, keep accepting this many seconds (/healthz answers 503 meanwhile) before the listeners close and the drain begins", _notNegative],
        ["worker-metrics", None, None, "Internal: the master's directory for the metrics of its workers"],
        ["list-interval", None, 5.0, "Seconds between checks of the threat list files for changes (0: only on SIGHUP)", float],
        ["threat-manifest", None, None, "Internal: the threat list tables to map, built by the master (--workers)"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["worker-listen"] = []
        self["worker-proxied"] = set()
        self["listen-note"] = None

    def opt_worker_listen(self, value: str) -> None:
        """Internal: FD:BACKLOG, a listening socket inherited from the master (--workers)."""
        fd, _, backlog = value.partition(":")
        if not (fd.isdigit() and backlog.isdigit()):
            raise usage.UsageError(f"--worker-listen takes a file descriptor and a backlog (FD:BACKLOG), not {value!r}")
        self["worker-listen"].append((int(fd), int(backlog)))

    def opt_worker_proxied(self, value: str) -> None:
        """Internal: INDEX, an inherited socket (by its --worker-listen order) that takes PROXY headers."""
        if not value.isdigit():
            raise usage.UsageError(f"--worker-proxied takes an index, not {value!r}")
        self["worker-proxied"].add(int(value))

    def opt_listen(self, description: str) -> None:
        """Endpoint to listen on (strports syntax; repeatable; default tcp6:8443:interface=\\:\\:, dual-stack).
        haproxy:tcp:PORT takes connections from a load balancer that sends a PROXY header (v1 or v2)."""
        self["listen"].append(description)

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"], self["listen-note"] = default_listen()
        if self["policy"] is None and (policy := default_policy_file()) is not None:
            self["policy"] = str(policy)
        if self["backlog"] < 1:
            raise usage.UsageError("--backlog must be at least 1")
        if not 16384 <= self["relay-buffer"] <= 64 * 1024 * 1024:
            raise usage.UsageError("--relay-buffer must be from 16384 to 67108864 bytes")
        if self["leaf-key"] not in ("ecdsa", "rsa"):
            raise usage.UsageError("--leaf-key must be ecdsa or rsa")
        if not 0 <= self["list-interval"] <= 86400:
            raise usage.UsageError("--list-interval must be from 0 to 86400 seconds")
        if self["leaf-cache"] < 1:
            raise usage.UsageError("--leaf-cache must be at least 1")
        self["workers"] = _workerCount(self["workers"])
        for name in ("max-connections", "max-client-connections"):
            self[name] = _limit(name, self[name], int)
        self["max-client-rate"] = _limit("max-client-rate", self["max-client-rate"], float)


def _limit(name: str, value: object, kind: type[int] | type[float]) -> Any:
    """A limit option: a number from 0 (unlimited) up, else a one-line usage error."""
    try:
        number = kind(str(value))
    except ValueError:
        number = -1
    if not 0 <= number < 1e9:
        what = "a whole number" if kind is int else "a number"
        raise usage.UsageError(f"--{name} must be {what} from 0 (unlimited) to 999999999, not {str(value)!r}")
    return number


def _workerCount(value: str) -> int:
    if value == "auto":
        return os.cpu_count() or 1
    try:
        count = int(value)
    except ValueError:
        count = 0
    if not 1 <= count <= 256:
        raise usage.UsageError(f"--workers must be auto or a number from 1 to 256, not {value!r}")
    return count
