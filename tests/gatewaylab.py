"""A running gateway in the namespace lab, with lab origins behind it.

Shared by the end-to-end test modules: one lab and one ``twistd -n etpmitm``
per test class (building them costs seconds).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests import pki
from tests.lab import REPO, Lab, Namespace, start_origin

TWISTD = Path(sys.executable).parent / "twistd"
TLS_CLIENT = Path(__file__).resolve().parent / "tls_client.py"
BURST = Path(__file__).resolve().parent / "burst.py"
GATEWAY_PORT = 8443


def gateway_env() -> dict[str, str]:
    """Run the gateway from this source tree."""
    return {"PYTHONPATH": str(REPO)}


class GatewayLab:
    """A lab with the shipped redirect rules, a gateway, and a public test PKI."""

    def __init__(self, dports: Sequence[int], backend: str = "iptables") -> None:
        self.lab = Lab()
        self.lab.start()
        try:
            self.lab.apply_rules(GATEWAY_PORT, backend, dports=dports)  # type: ignore[arg-type]
            self.public = pki.Authority("Public Test")
            self.trust = self.lab.workdir / "upstream-trust.pem"
            self.trust.write_bytes(pki.pem(self.public.root))
            self.ca_dir = self.lab.workdir / "ca"
            self.policy = self.lab.workdir / "policy.toml"
        except BaseException:
            self.lab.close()
            raise
        self.gateway: subprocess.Popen[bytes] | None = None
        self._origins = 0

    @property
    def audit_log(self) -> Path:
        """Where :func:`inspecting_lab`'s gateway writes its --audit-log."""
        return self.lab.workdir / "audit.json"

    @property
    def root(self) -> Path:
        """The gateway's root, which lab clients trust."""
        return self.ca_dir / "root.pem"

    def start_gateway(self, *extra: str, listen: bool = True, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start the gateway on GATEWAY_PORT; with ``listen=False`` no --listen
        is passed, and it listens where its defaults say.  ``env`` is added to its environment."""
        subprocess.run(
            [Path(sys.executable).parent / "etpmitm", "ca", "init", "--dir", self.ca_dir],
            check=True, capture_output=True, env={**os.environ, **gateway_env()},
        )
        argv: list[str | os.PathLike[str]] = [
            TWISTD, "-n", "--pidfile=", "etpmitm",
            "--ca-dir", self.ca_dir,
            "--upstream-trust", self.trust,
            *(["--listen", f"tcp6:{GATEWAY_PORT}:interface=\\:\\:"] if listen else []),
            *extra,
        ]
        self.gateway = self.lab.gateway.popen(argv, env={**gateway_env(), **(env or {})}, cwd=self.lab.workdir)
        self.lab.gateway.wait_for_port(GATEWAY_PORT, proc=self.gateway, timeout=30)
        return self.gateway

    def origin(
        self,
        port: int,
        chain: Sequence[Any],
        key: Any,
        *,
        alpn: Sequence[str] = ("h2", "http/1.1"),
        extra: Sequence[str] = (),
    ) -> None:
        """Serve ``chain`` (leaf first) on ``port`` in the origin namespace."""
        self._origins += 1
        cert_path, key_path = pki.write_pair(self.lab.workdir, f"origin{self._origins}", chain, key)
        start_origin(self.lab, cert_path, key_path, port=port, alpn=alpn, extra_args=extra)

    def openssl_origin(self, port: int, chain: Sequence[Any], key: Any, *args: str) -> None:
        """``openssl s_server -www`` on ``port``: for origins Python's ssl will not serve
        (SHA-1, TLS 1.0), or that ask for client certificates."""
        self._origins += 1
        cert_path, key_path = pki.write_pair(self.lab.workdir, f"origin{self._origins}", chain, key)
        argv = ["openssl", "s_server", "-accept", str(port), "-cert", str(cert_path),
                "-key", str(key_path), "-www", "-quiet", *args]
        proc = self.lab.origin.popen(argv)
        self.lab.origin.wait_for_port(port, proc=proc)

    def log(self) -> str:
        assert self.gateway is not None
        return self.lab.log(self.gateway)

    def set_policy(self, text: str, *, expect: str = "policy reloaded") -> str:
        """Write the policy file, SIGHUP the gateway and wait for its log line."""
        assert self.gateway is not None
        before = self.log().count(expect)
        self.policy.write_text(text)
        os.kill(self.gateway.pid, signal.SIGHUP)
        deadline = time.monotonic() + 15
        while self.log().count(expect) <= before:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {expect!r} after SIGHUP:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        return [line for line in self.log().splitlines() if expect in line][-1]

    def wait_for_log(self, text: str, timeout: float = 15.0, count: int = 1) -> str:
        """Wait until the gateway's log holds ``text`` (``count`` times); return the last matching line."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.log().splitlines() if text in line]
            if len(lines) >= count:
                return lines[-1]
            if time.monotonic() > deadline:
                raise AssertionError(f"gateway log has no {text!r}:\n{self.log()[-4000:]}")
            time.sleep(0.1)

    def curl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """curl in the client namespace, trusting only the gateway's root."""
        argv = ["curl", "-sS", "--max-time", str(int(timeout)), "--cacert", str(self.root), *args]
        return self.lab.client.run(argv, check=False, timeout=timeout + 10)

    def shell(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.lab.client.run(["bash", "-o", "pipefail", "-c", command], check=False, timeout=timeout)

    def send_raw(self, host: str, port: int, data: bytes, read: int = 64) -> str:
        """Send ``data`` over plain TCP from the client namespace; return the hex
        of the first bytes that come back ("" when the gateway just closes)."""
        script = (
            "import socket\n"
            f"s = socket.create_connection(({host!r}, {port}), timeout=30)\n"
            f"s.sendall(bytes.fromhex({data.hex()!r}))\n"
            f"print(s.recv({read}).hex())\n"
        )
        done = self.lab.client.run(["python3", "-c", script], check=False, timeout=60)
        return done.stdout.strip()

    def python_client(self, *args: str, timeout: float = 120) -> dict[str, Any]:
        argv = [sys.executable, str(TLS_CLIENT), "--cafile", str(self.root), *args]
        done = self.lab.client.run(argv, check=False, timeout=timeout)
        try:
            result: dict[str, Any] = json.loads(done.stdout)
        except json.JSONDecodeError:
            raise AssertionError(f"tls_client printed {done.stdout!r}, stderr {done.stderr!r}") from None
        return result

    def close(self) -> None:
        self.lab.close()


def unit_arguments(ca_dir: Path) -> list[str]:
    """The gateway's arguments in deploy/etpmitm.service's ExecStart (those after
    ``etpmitm``), with the lab's CA directory for the unit's."""
    unit = (REPO / "deploy" / "etpmitm.service").read_text()
    [line] = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    words = shlex.split(line.partition("=")[2])
    args = words[words.index("etpmitm") + 1:]
    at = args.index("--ca-dir")
    args[at + 1] = str(ca_dir)
    return args


def listen_backlogs(namespace: Namespace, port: int) -> list[int]:
    """The backlog of each socket listening on ``port`` (ss shows it as Send-Q)."""
    out = namespace.run(["ss", "-H", "-l", "-t", "-n", f"sport = :{port}"]).stdout
    return [int(line.split()[2]) for line in out.splitlines()]


def listen_overflows(namespace: Namespace) -> int:
    """TcpExtListenOverflows in ``namespace``: connections its accept queues had no room for."""
    out = namespace.run(["nstat", "-saz", "TcpExtListenOverflows"]).stdout
    [count] = [int(line.split()[1]) for line in out.splitlines() if line.startswith("TcpExtListenOverflows")]
    return count


def burst(namespace: Namespace, host: str, port: int, count: int, timeout: float = 10) -> dict[str, Any]:
    """``count`` TCP connects at once from ``namespace`` (tests/burst.py)."""
    done = namespace.run([sys.executable, BURST, host, str(port), str(count), "--timeout", str(timeout)],
                         timeout=timeout + 60)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def inspecting_lab(policy: str, audit_log: str | None = None, env: Mapping[str, str] | None = None,
                   before: Callable[[GatewayLab], None] | None = None) -> GatewayLab:
    """A lab whose origin serves origin.test on 443, and a gateway with ``policy``
    and ``--audit-log`` (:attr:`GatewayLab.audit_log`, or ``audit_log``); ``env`` is
    added to the gateway's environment, and ``before`` runs just before it starts."""
    lab = GatewayLab(dports=[443])
    try:
        cert, key = lab.public.issue(["origin.test"], [Lab.origin_ip])
        lab.origin(443, [cert, lab.public.intermediate], key)
        lab.policy.write_text(policy)
        if before is not None:
            before(lab)
        lab.start_gateway("--policy", str(lab.policy), "--audit-log", audit_log or str(lab.audit_log), env=env)
    except BaseException:
        lab.close()
        raise
    return lab


def quoted(*parts: object) -> str:
    return " ".join(shlex.quote(str(p)) for p in parts)


_shared: dict[str, GatewayLab | BaseException] = {}


def shared_lab(key: str, build: Callable[[], GatewayLab]) -> GatewayLab:
    """One lab per test module, built on first use.

    trial has no per-class fixtures; the lab module's exit hook tears the
    namespaces down when the test run ends.  A build that failed is not
    retried: every test that needs it reports the same error.
    """
    if key not in _shared:
        try:
            _shared[key] = build()
        except BaseException as e:
            _shared[key] = e
    found = _shared[key]
    if isinstance(found, BaseException):
        raise found
    return found
