"""A network-namespace lab for end-to-end tests: client -> gateway -> origin.

Topology (one lab = three fresh namespaces, veth pairs created directly inside
them, so the host's root namespace never sees an interface, route or rule)::

    client [eth0] 10.231.1.2/24    fd00:e7:1::2/64
       |  veth, the LAN
    gateway [lan0] 10.231.1.1/24   fd00:e7:1::1/64   forwarding on,
    gateway [wan0] 10.231.2.1/24   fd00:e7:2::1/64   shipped redirect rules
       |  veth, the "internet"
    origin [eth0] 10.231.2.2/24    fd00:e7:2::2/64

Client and origin route by default via the gateway; there is no NAT on the
forwarded path, so the origin sees the client's address.

Concurrency: every lab has its own namespaces (named with the PID and a
counter), so any number of labs, in one process or in parallel processes, can
exist at once with the same addresses: namespaces do not share addresses,
routes or firewall rules. Namespaces left behind by a killed run are reaped by
the next lab (their PID is dead).

Use::

    with Lab() as lab:
        lab.apply_rules(8443, "nft")
        gw = lab.gateway.popen([sys.executable, "-m", "twisted", "etpmitm", ...])
        lab.gateway.wait_for_port(8443, proc=gw)
        lab.client.run(["curl", ...])
"""

from __future__ import annotations

import atexit
import functools
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, overload

Backend = Literal["iptables", "nft"]

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
ORIGIN_SERVER = Path(__file__).resolve().parent / "origin_server.py"

_PREFIX = "etpmitm-lab"
_NAME_RE = re.compile(rf"^{_PREFIX}-(\d+)-\d+-\w+$")
_counter = itertools.count(1)
# Strong references: a lab that was started stays listed until close().
_live_labs: set[Lab] = set()


class LabCommandError(subprocess.CalledProcessError):
    """A command inside a namespace failed; the message carries its output."""

    def __str__(self) -> str:
        def tail(out: str | bytes | None) -> str:
            if out is None:
                return ""
            text = out.decode(errors="replace") if isinstance(out, bytes) else out
            return text[-2000:].strip()

        return (
            f"{super().__str__()}\n"
            f"--- stdout ---\n{tail(self.stdout)}\n--- stderr ---\n{tail(self.stderr)}"
        )


def _host(argv: Sequence[str], *, timeout: float = 30, check: bool = True) -> str:
    """Run a command in the test process's own namespace (only `ip netns ...`)."""
    done = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise LabCommandError(done.returncode, list(argv), done.stdout, done.stderr)
    return done.stdout


def _netns_list() -> set[str]:
    # Lines look like "name" or "name (id: 3)".
    return {line.split()[0] for line in _host(["ip", "netns", "list"]).splitlines() if line.strip()}


def _kill_netns(name: str) -> None:
    """SIGKILL everything still inside a namespace, then delete it."""
    pids = _host(["ip", "netns", "pids", name], check=False).split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    _host(["ip", "netns", "delete", name], check=False)


def reap_stale_namespaces() -> list[str]:
    """Delete lab namespaces (and temp workdirs) whose creating process is gone.

    Returns the names of the namespaces deleted.
    """
    reaped = []
    for name in sorted(_netns_list()):
        m = _NAME_RE.match(name)
        if not m:
            continue
        if _pid_alive(int(m.group(1))):
            continue  # its creator is alive: its lab, not ours to touch
        _kill_netns(name)
        reaped.append(name)
    # Work directories of dead runs (same naming: prefix-PID-counter-random).
    for path in Path(tempfile.gettempdir()).glob(f"{_PREFIX}-*-*-*"):
        m = re.match(rf"^{_PREFIX}-(\d+)-", path.name)
        if m and path.is_dir() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(path, ignore_errors=True)
    return reaped


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, someone else's
    return True


@functools.cache
def lab_unavailable(backend: Backend | None = None) -> str | None:
    """Why the lab cannot run here (for trial's ``skip``), or None if it can.

    Checks root, the tools, and that a namespace can really be created and
    given nat rules (containers often lack CAP_SYS_ADMIN or netfilter). With a
    backend, also checks that backend's tool works inside a namespace.
    """
    if not sys.platform.startswith("linux"):
        return "the namespace lab needs Linux"
    if os.geteuid() != 0:
        return "the namespace lab needs root (ip netns, iptables)"
    tools = ["ip", "ss", "sysctl", "bash"]
    tools += {None: [], "iptables": ["iptables", "ip6tables"], "nft": ["nft"]}[backend]
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        return f"the namespace lab needs {', '.join(missing)} on PATH"
    probe = f"{_PREFIX}-{os.getpid()}-0-probe"
    try:
        _host(["ip", "netns", "add", probe], timeout=10)
    except (LabCommandError, subprocess.TimeoutExpired) as e:
        return f"cannot create a network namespace: {e}"
    try:
        checks: list[list[str]] = [["ip", "link", "set", "lo", "up"]]
        if backend == "iptables":
            checks += [["iptables", "-w", "10", "-t", "nat", "-S"], ["ip6tables", "-w", "10", "-t", "nat", "-S"]]
        elif backend == "nft":
            checks += [["nft", "list", "tables"]]
        for argv in checks:
            _host(["ip", "netns", "exec", probe, *argv], timeout=10)
    except (LabCommandError, subprocess.TimeoutExpired) as e:
        return f"namespace probe failed: {e}"
    finally:
        _host(["ip", "netns", "delete", probe], check=False)
    return None


class Namespace:
    """One network namespace of a lab: run commands and processes inside it."""

    def __init__(self, lab: Lab, role: str, name: str) -> None:
        self.lab = lab
        self.role = role
        self.name = name

    def __repr__(self) -> str:
        return f"<Namespace {self.role} {self.name}>"

    def _argv(self, argv: Sequence[str | os.PathLike[str]]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *(os.fspath(a) for a in argv)]

    @overload
    def run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        input: str | None = ...,
        timeout: float = ...,
        check: bool = ...,
        env: Mapping[str, str] | None = ...,
        text: Literal[True] = ...,
    ) -> subprocess.CompletedProcess[str]: ...

    @overload
    def run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        input: bytes | None = ...,
        timeout: float = ...,
        check: bool = ...,
        env: Mapping[str, str] | None = ...,
        text: Literal[False],
    ) -> subprocess.CompletedProcess[bytes]: ...

    def run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        input: str | bytes | None = None,
        timeout: float = 30,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        text: bool = True,
    ) -> subprocess.CompletedProcess[str] | subprocess.CompletedProcess[bytes]:
        """Run argv inside the namespace and wait (at most timeout seconds).

        stdout and stderr are captured (text, or bytes with text=False). env
        is added to the test process's environment. With check, a non-zero
        exit raises LabCommandError, whose message includes the output.
        """
        argv_ = self._argv(argv)
        done = subprocess.run(
            argv_,
            input=input,
            capture_output=True,
            timeout=timeout,
            check=False,
            env=None if env is None else {**os.environ, **env},
            text=text,
            errors="replace" if text else None,
        )
        if check and done.returncode != 0:
            raise LabCommandError(done.returncode, argv_, done.stdout, done.stderr)
        return done

    def popen(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        stdin: int | IO[bytes] | None = subprocess.DEVNULL,
        stdout: int | IO[bytes] | None = None,
        stderr: int | IO[bytes] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start argv in the background inside the namespace.

        The lab kills it (and its process group) on teardown. By default its
        stdout and stderr go to a log file in lab.workdir: read it with
        ``lab.log(proc)``. The process runs in its own session, so signals
        meant for the test runner do not reach it.
        """
        log: IO[bytes] | None = None
        if stdout is None:
            path = self.lab.workdir / f"{self.role}-{next(_counter)}-{Path(os.fspath(argv[0])).name}.log"
            log = path.open("wb")
            stdout = log
            if stderr is None:
                stderr = subprocess.STDOUT
        try:
            proc = subprocess.Popen(
                self._argv(argv),
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                env=None if env is None else {**os.environ, **env},
                cwd=cwd,
                start_new_session=True,
            )
        finally:
            if log is not None:
                log.close()  # the child holds its own copy
        self.lab._track(proc, None if log is None else Path(log.name))
        return proc

    def wait_for_port(
        self,
        port: int,
        host: str | None = None,
        timeout: float = 10,
        *,
        proc: subprocess.Popen[bytes] | None = None,
    ) -> None:
        """Wait until a TCP socket listens on port inside the namespace.

        host restricts the match to listeners bound to that address or to the
        wildcard. If proc exits meanwhile, fail at once with its log.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.listening(port, host):
                return
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"{proc.args!r} exited with {proc.returncode} before listening on "
                    f"{port} in {self.role}:\n{self.lab.log(proc)[-3000:]}"
                )
            if time.monotonic() >= deadline:
                raise TimeoutError(f"nothing listens on {host or '*'}:{port} in {self.role} after {timeout}s")
            time.sleep(0.05)

    def listening(self, port: int, host: str | None = None) -> bool:
        """Whether a TCP listener on port (and host, or a wildcard) exists."""
        out = self.run(["ss", "-H", "-l", "-t", "-n", f"sport = :{port}"], timeout=10).stdout
        for line in out.splitlines():
            fields = line.split()
            if len(fields) < 4:
                continue
            addr = fields[3].rsplit(":", 1)[0].strip("[]").split("%")[0]
            if host is None or addr in (host, "*", "0.0.0.0", "::"):
                return True
        return False


class Lab:
    """Three namespaces wired client -> gateway -> origin. Context manager.

    __enter__ (or start()) builds it; __exit__ (or close()) always tears it
    down: it kills every process started with popen and everything else left
    in the namespaces, then deletes them. close() is idempotent.
    """

    lan_if = "lan0"
    wan_if = "wan0"

    client_ip = "10.231.1.2"
    gateway_lan_ip = "10.231.1.1"
    gateway_wan_ip = "10.231.2.1"
    origin_ip = "10.231.2.2"
    client_ip6 = "fd00:e7:1::2"
    gateway_lan_ip6 = "fd00:e7:1::1"
    gateway_wan_ip6 = "fd00:e7:2::1"
    origin_ip6 = "fd00:e7:2::2"

    def __init__(self, workdir: str | os.PathLike[str] | None = None) -> None:
        """workdir holds process logs and generated files; by default a
        temporary directory that close() removes."""
        tag = f"{_PREFIX}-{os.getpid()}-{next(_counter)}"
        self.client = Namespace(self, "client", f"{tag}-client")
        self.gateway = Namespace(self, "gateway", f"{tag}-gw")
        self.origin = Namespace(self, "origin", f"{tag}-origin")
        self._tag = tag
        self._workdir = None if workdir is None else Path(workdir)
        self._tmpdir: Path | None = None  # ours to delete; made by start()
        self._procs: list[subprocess.Popen[bytes]] = []
        self._logs: dict[int, Path] = {}
        self._created: list[Namespace] = []
        self._closed = False

    @property
    def workdir(self) -> Path:
        """Directory for process logs and generated files (exists once started)."""
        if self._workdir is None:
            raise RuntimeError("Lab.workdir is created by start() / __enter__")
        return self._workdir

    @property
    def namespaces(self) -> tuple[Namespace, Namespace, Namespace]:
        return (self.client, self.gateway, self.origin)

    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Create and wire the namespaces. On failure, undo and re-raise."""
        _live_labs.add(self)
        try:
            if self._workdir is None:
                self._workdir = self._tmpdir = Path(tempfile.mkdtemp(prefix=f"{self._tag}-"))
            reap_stale_namespaces()
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        for ns in self.namespaces:
            _host(["ip", "netns", "add", ns.name])
            self._created.append(ns)
            # No duplicate address detection: addresses (link-local ones
            # too) are usable at once instead of after ~1s.
            ns.run(
                [
                    "sysctl", "-q", "-w",
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0",
                ]
            )
            ns.run(["ip", "link", "set", "lo", "up"])
        gw, c, o = self.gateway.name, self.client.name, self.origin.name
        # Each veth is born with its two ends already in the two namespaces.
        _host(["ip", "-n", gw, "link", "add", self.lan_if, "type", "veth", "peer", "name", "eth0", "netns", c])
        _host(["ip", "-n", gw, "link", "add", self.wan_if, "type", "veth", "peer", "name", "eth0", "netns", o])
        self.gateway.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])
        plan = [
            (self.client, "eth0", self.client_ip, self.client_ip6, self.gateway_lan_ip, self.gateway_lan_ip6),
            (self.origin, "eth0", self.origin_ip, self.origin_ip6, self.gateway_wan_ip, self.gateway_wan_ip6),
            (self.gateway, self.lan_if, self.gateway_lan_ip, self.gateway_lan_ip6, None, None),
            (self.gateway, self.wan_if, self.gateway_wan_ip, self.gateway_wan_ip6, None, None),
        ]
        for ns, dev, ip4, ip6, via4, via6 in plan:
            ns.run(["ip", "addr", "add", f"{ip4}/24", "dev", dev])
            ns.run(["ip", "-6", "addr", "add", f"{ip6}/64", "dev", dev, "nodad"])
            ns.run(["ip", "link", "set", dev, "up"])
            if via4 is not None and via6 is not None:
                ns.run(["ip", "route", "add", "default", "via", via4])
                ns.run(["ip", "-6", "route", "add", "default", "via", via6])

    def apply_rules(
        self,
        port: int = 8443,
        backend: Backend = "iptables",
        *,
        dports: Sequence[int] = (443,),
    ) -> None:
        """Load the shipped redirect rules in the gateway for lan0 -> port.

        iptables: runs deploy/iptables.sh with flags. nft: loads
        deploy/nftables.conf after setting its ``define`` lines (the only
        parameters the file has; nft cannot override defines from the command
        line), everything else verbatim.
        """
        if backend == "iptables":
            self.gateway.run(
                [
                    "bash", DEPLOY / "iptables.sh",
                    "--lan-if", self.lan_if,
                    "--port", str(port),
                    "--dports", ",".join(map(str, dports)),
                ]
            )
        elif backend == "nft":
            conf = nft_config(
                ETPMITM_LAN_IF=f'"{self.lan_if}"',
                ETPMITM_PORT=str(port),
                ETPMITM_DPORTS="{ " + ", ".join(map(str, dports)) + " }",
            )
            path = self.workdir / "etpmitm.nft"
            path.write_text(conf)
            self.gateway.run(["nft", "-f", path])
        else:
            raise ValueError(f"unknown backend {backend!r}")

    def remove_rules(self, backend: Backend = "iptables") -> None:
        """Undo apply_rules the documented way (iptables.sh --remove / nft delete table)."""
        if backend == "iptables":
            self.gateway.run(["bash", DEPLOY / "iptables.sh", "--remove"])
        else:
            self.gateway.run(["nft", "delete", "table", "inet", "etpmitm"])

    def _track(self, proc: subprocess.Popen[bytes], log: Path | None) -> None:
        self._procs.append(proc)
        if log is not None:
            self._logs[proc.pid] = log

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        """The stdout+stderr log of a process started with popen ("" if none)."""
        path = self._logs.get(proc.pid)
        if path is None or not path.exists():
            return ""
        return path.read_text(errors="replace")

    def close(self) -> None:
        """Kill lab processes, delete the namespaces, remove the temp workdir."""
        if self._closed:
            return
        self._closed = True
        _live_labs.discard(self)
        # SIGTERM every process group first so servers can exit cleanly,
        # then SIGKILL whatever is left after a short grace period.
        for proc in self._procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 3
        for proc in self._procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass  # _kill_netns below is the last word
        # Anything else that entered a namespace (daemons, grandchildren in
        # other sessions) keeps it alive: kill it, then delete.
        for ns in self._created:
            _kill_netns(ns.name)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)


def nft_config(**defines: str) -> str:
    """deploy/nftables.conf with the given ``define NAME = value`` lines replaced."""
    text = (DEPLOY / "nftables.conf").read_text()
    for name, value in defines.items():
        pattern = re.compile(rf"^define {re.escape(name)} = .*$", re.MULTILINE)
        text, n = pattern.subn(lambda _: f"define {name} = {value}", text)
        if n != 1:
            raise ValueError(f"deploy/nftables.conf has {n} 'define {name}' lines, expected 1")
    return text


def make_cert(
    directory: str | os.PathLike[str],
    name: str = "origin",
    *,
    common_name: str = "origin.test",
    dns: Sequence[str] = ("origin.test",),
    ips: Sequence[str] = (Lab.origin_ip, Lab.origin_ip6),
) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 server certificate; returns (cert, key) PEM paths.

    Good enough for lab origins: tests pass the certificate itself as the CA
    (curl --cacert), or trust it however the code under test needs.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory = Path(directory)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def start_origin(
    lab: Lab,
    cert: str | os.PathLike[str],
    key: str | os.PathLike[str],
    *,
    port: int = 443,
    plain_port: int | None = None,
    alpn: Sequence[str] = ("h2", "http/1.1"),
    extra_args: Sequence[str] = (),
    timeout: float = 10,
) -> subprocess.Popen[bytes]:
    """Run tests/origin_server.py in the origin namespace and wait until it listens.

    It serves TLS on port (and plain HTTP on plain_port) on all addresses,
    v4 and v6. See origin_server.py for the routes.
    """
    argv: list[str | os.PathLike[str]] = [
        sys.executable, ORIGIN_SERVER, "--cert", cert, "--key", key,
        "--port", str(port), "--alpn", ",".join(alpn), *extra_args,
    ]
    if plain_port is not None:
        argv += ["--plain-port", str(plain_port)]
    proc = lab.origin.popen(argv)
    lab.origin.wait_for_port(port, timeout=timeout, proc=proc)
    if plain_port is not None:
        lab.origin.wait_for_port(plain_port, timeout=timeout, proc=proc)
    return proc


@atexit.register
def _close_live_labs() -> None:
    # Last resort when a test runner exits without reaching __exit__.
    for lab in list(_live_labs):
        lab.close()
