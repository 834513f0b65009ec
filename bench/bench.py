"""The gateway against the same load sent directly to the origin, in one lab run.

Run from the repository root, as root (it builds network namespaces)::

    .venv/bin/python bench/bench.py [--quick] [--json OUT] [--profile DIR] [--workers N|auto] [--learning] [--inspect on|off] [--metrics on|off] [--peer sslsplit] [--gateway-arg ARG]

One namespace lab (tests/lab.py, tests/gatewaylab.py): the client namespace
runs the load generators, the gateway namespace runs ``twistd -n etpmitm``
with its defaults behind the shipped redirect rules, and the origin namespace
runs nginx (TLS 1.3, an ECDSA certificate from the lab's public test PKI,
HTTP/2, one worker).  nginx listens on two ports with the same files:

* 443, which the rules redirect to the gateway: the *proxied* path;
* 8444, which they do not: the *direct* path, forwarded by the gateway
  namespace's kernel only.

Every load runs against both paths, alternately, in the same run; the
figures are the ratios proxied/direct (design brief, "Measuring").  See
bench/README.md for the metrics, the targets and the caveats.

``bench.py hold ...`` is an internal helper: it runs in the client namespace
and holds open keep-alive connections while the gateway's memory is read.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import platform
import re
import resource
import select
import shlex
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import peers  # noqa: E402  (bench/peers.py, beside this script)
from tests import pki  # noqa: E402
from tests.gatewaylab import GatewayLab  # noqa: E402
from tests.lab import Lab, Namespace  # noqa: E402

ORIGIN_NAME = "origin.test"
ORIGIN_IP = Lab.origin_ip
PROXIED_PORT = 443  # redirected to the gateway by the shipped rules
DIRECT_PORT = 8444  # not redirected: straight to nginx
SMALL_PATH, SMALL_SIZE = "/1k", 1024
BULK_PATH, BULK_SIZE = "/1g", 2**30
DEFAULT_JSON = REPO / "bench" / "results" / "latest.json"
MB = 1_000_000


# -- settings and results ----------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """How long and how hard each load runs."""

    duration: int = 10  # seconds per load and path
    rounds: int = 3  # direct/proxied pairs per load, order alternating
    connections: int = 16  # wrk concurrency
    ttfb_requests: int = 200  # sequential new connections per path
    hold: int = 1000  # open connections for the memory figure
    slow_seconds: int = 5  # slow reader duration
    profile: Path | None = None  # py-spy the gateway's last proxied runs into this directory
    workers: str = "auto"  # the gateway's --workers, as deploy/etpmitm.service runs it
    gateway_args: tuple[str, ...] = ()  # added to the gateway's command line (default: none)
    learning: bool = False  # keep the gateway's learned bypasses on (see bench_policy)
    inspect: str | None = None  # "on" or "off": the policy's [inspect] http (default: the gateway's)
    metrics: str = "off"  # "on": the gateway serves --metrics (on the gateway's loopback) during the loads
    peers: tuple[str, ...] = ()  # other proxies run after etpmitm in its place (bench/peers.py)

    @classmethod
    def quick(cls) -> Settings:
        return cls(duration=3, rounds=1, ttfb_requests=50, slow_seconds=3)


@dataclass(frozen=True)
class Target:
    """One way to reach the origin's files: direct or through the gateway."""

    name: str  # "direct" | "proxied"
    port: int
    cafile: Path  # what a verifying client must trust on this path

    def url(self, path: str) -> str:
        return f"https://{ORIGIN_NAME}:{self.port}{path}"

    def resolve(self) -> str:
        return f"{ORIGIN_NAME}:{self.port}:{ORIGIN_IP}"


@dataclass
class Comparison:
    """One metric, direct versus proxied, with its target."""

    metric: str
    unit: str
    direct: float
    proxied: float
    target: str = ""
    met: bool | None = None
    samples: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)  # see CpuUse.figures
    events: dict[str, int] = field(default_factory=dict)  # gateway "action/outcome" events, proxied runs
    notes: list[str] = field(default_factory=list)

    @property
    def intercepted(self) -> bool:
        """Whether the gateway intercepted the proxied connections (spliced none).

        "refuse" is not a way around interception: wrk's address probe, a
        connection without a ClientHello, is refused on every run.
        """
        return all(key.split("/")[0] in ("intercept", "refuse") for key in self.events)

    def check_events(self, events: Counter[str]) -> None:
        """Add a proxied run's gateway events; note connections not intercepted."""
        for key, n in events.items():
            self.events[key] = self.events.get(key, 0) + n
        other = {k: n for k, n in events.items() if k.split("/")[0] not in ("intercept", "refuse")}
        if other:
            self.notes.append(f"NOT INTERCEPTED: gateway events {other} (learned bypass? see its log)")

    @property
    def ratio(self) -> float:
        return self.proxied / self.direct if self.direct else float("nan")


# -- small helpers ------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of non-empty values."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return 0.0
    fields = stat.rpartition(")")[2].split()  # fields[0] is field 3, "state"
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def with_children(pid: int) -> list[int]:
    """pid and its direct children (nginx, or the gateway with --workers: master and workers)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        children = []
    return [pid, *map(int, children)]


def busy_fraction(seconds: float = 2.0) -> float:
    """Share of all CPUs busy over a short sample (/proc/stat)."""
    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values) - idle, sum(values)

    busy0, total0 = sample()
    time.sleep(seconds)
    busy1, total1 = sample()
    return (busy1 - busy0) / max(1, total1 - total0)


def raise_fd_limit(wanted: int = 65536) -> None:
    """Children (gateway, nginx, load generators) inherit this process's limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < new:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def version_of(argv: Sequence[str]) -> str:
    """First output line of a tool's version command, or why there is none."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "?"


def source_fingerprint() -> str:
    """A hash of the gateway's sources measured (the tree may have no commit)."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "etpmitm").rglob("*.py")):
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def machine() -> dict[str, Any]:
    """What the figures were measured on, and which gateway sources."""
    return {
        "etpmitm_sources_sha256": source_fingerprint(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssl_python": ssl.OPENSSL_VERSION,
        "openssl_cli": version_of(["openssl", "version"]),
        "nginx": version_of(["nginx", "-v"]),
        "wrk": version_of(["wrk", "-v"]),
        "curl": version_of(["curl", "--version"]),
    }


# -- the origin: nginx -----------------------------------------------------------

NGINX_CONF = """\
# One worker: the load generator, the gateway and the origin share the cores.
worker_processes 1;
worker_rlimit_nofile 16384;
daemon off;
user root;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    default_type application/octet-stream;
    keepalive_requests 100000;
    keepalive_timeout 600s;
    ssl_protocols TLSv1.3;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    server {{
        listen {proxied} ssl http2;
        listen [::]:{proxied} ssl http2;
        listen {direct} ssl http2;
        listen [::]:{direct} ssl http2;
        server_name {name};
        root {www};
    }}
}}
"""


def write_origin_files(work: Path) -> Path:
    """The docroot: a 1 KB file and a sparse 1 GiB file."""
    www = work / "www"
    www.mkdir()
    (www / SMALL_PATH.lstrip("/")).write_bytes(b"x" * (SMALL_SIZE - 1) + b"\n")
    with (www / BULK_PATH.lstrip("/")).open("wb") as f:
        f.truncate(BULK_SIZE)
    return www


def start_nginx(env: GatewayLab) -> subprocess.Popen[bytes]:
    """nginx in the origin namespace, certificate from the lab's public PKI."""
    work = env.lab.workdir
    cert, key = env.public.issue([ORIGIN_NAME], [Lab.origin_ip, Lab.origin_ip6])
    cert_path, key_path = pki.write_pair(work, "nginx", [cert, env.public.intermediate], key)
    conf = work / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            work=work, cert=cert_path, key=key_path, www=write_origin_files(work),
            proxied=PROXIED_PORT, direct=DIRECT_PORT, name=ORIGIN_NAME,
        )
    )
    argv = ["nginx", "-p", str(work), "-e", str(work / "nginx-error.log"), "-c", str(conf)]
    proc = env.lab.origin.popen(argv)
    for port in (PROXIED_PORT, DIRECT_PORT):
        env.lab.origin.wait_for_port(port, proc=proc)
    return proc


# -- the lab -----------------------------------------------------------------------


def tune(ns: Namespace) -> None:
    """Many short connections: reuse TIME_WAIT ports, widen the port range."""
    ns.run([
        "sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1",
        "net.ipv4.ip_local_port_range=1024 65000", "net.core.somaxconn=4096",
    ])


@contextmanager
def hosts_file(ns: Namespace) -> Iterator[None]:
    """``origin.test`` resolves in ns (``ip netns exec`` mounts /etc/netns/NAME/hosts).

    wrk has no --resolve and sends the URL's host as SNI, so the name must
    resolve for real.
    """
    directory = Path("/etc/netns") / ns.name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hosts").write_text(f"127.0.0.1 localhost\n{ORIGIN_IP} {ORIGIN_NAME}\n")
    try:
        yield
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        try:
            directory.parent.rmdir()  # only if no other lab uses it
        except OSError:
            pass


@dataclass(frozen=True)
class CpuUse:
    """A snapshot: wall clock, gateway CPU seconds, origin (nginx) CPU seconds."""

    wall: float
    gateway: float
    origin: float

    def figures(self, end: CpuUse, requests: int) -> dict[str, float]:
        """CPU per request (microseconds) and CPU share (of one core) from self to end."""
        wall = max(end.wall - self.wall, 1e-9)
        gateway, origin = end.gateway - self.gateway, end.origin - self.origin
        per = 1e6 / max(requests, 1)
        return {
            "gateway_us_per_request": gateway * per,
            "origin_us_per_request": origin * per,
            "gateway_core_share": gateway / wall,
            "origin_core_share": origin / wall,
        }


AUDIT_EVENT = re.compile(r" action=(\w+) outcome=(\w+) ")


class Bench:
    """A lab with nginx, a default gateway, and the two paths to the origin."""

    def __init__(self, env: GatewayLab, origin: subprocess.Popen[bytes], gateway: subprocess.Popen[bytes],
                 system: str = "etpmitm", root: Path | None = None) -> None:
        self.env = env
        self.origin = origin
        self.gateway = gateway
        self.system = system
        """"etpmitm", or the peer (bench/peers.py) that runs in its place."""
        self.direct = Target("direct", DIRECT_PORT, env.trust)
        self.proxied = Target("proxied", PROXIED_PORT, env.root if root is None else root)

    def peer(self, name: str) -> Bench:
        """Stop what serves the proxied path now and start peer ``name`` there."""
        peers.stop(self.gateway)
        started = peers.PEERS[name](self.env, self.env.lab.workdir)
        print(f"{name}: {started.describe}", flush=True)
        bench = Bench(self.env, self.origin, started.process, name, started.root)
        bench.curl(bench.proxied, SMALL_PATH, "-w", "%{http_code}")  # verifies: it intercepts
        return bench

    @property
    def client(self) -> Namespace:
        return self.env.lab.client

    def targets(self, round_: int) -> tuple[Target, Target]:
        """Both paths; the order alternates from round to round."""
        pair = (self.direct, self.proxied)
        return pair if round_ % 2 == 0 else (pair[1], pair[0])

    def cpu(self) -> CpuUse:
        """CPU seconds used so far by the gateway and by nginx (all processes)."""
        origin = sum(cpu_seconds(pid) for pid in with_children(self.origin.pid))
        gateway = sum(cpu_seconds(pid) for pid in with_children(self.gateway.pid))
        return CpuUse(time.monotonic(), gateway, origin)

    def rss(self) -> int:
        """The gateway's resident memory, KiB (with --workers: master and workers)."""
        return sum(rss_kib(pid) for pid in with_children(self.gateway.pid))

    def audit(self) -> Counter[str]:
        """The gateway's connection events so far, by "action/outcome" (none for a peer)."""
        if self.system != "etpmitm":
            return Counter()
        return Counter(f"{a}/{o}" for a, o in AUDIT_EVENT.findall(self.env.log()))

    def curl(self, target: Target, path: str, *extra: str, timeout: float = 30) -> str:
        """One verifying curl in the client namespace; its -w output."""
        argv = [
            "curl", "-sS", "-o", "/dev/null", "--max-time", str(int(timeout)),
            "--cacert", str(target.cafile), "--resolve", target.resolve(), *extra, target.url(path),
        ]
        done = self.client.run(argv, check=False, timeout=timeout + 15)
        if done.returncode not in (0, 28):  # 28: --max-time reached (bulk)
            raise RuntimeError(f"curl {target.name} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout


def bench_policy(work: Path, learning: bool, inspect: str | None) -> list[str]:
    """Gateway arguments: a policy file with no learned bypasses (unless
    ``learning``) and ``[inspect] http`` as asked, and no per-client
    admission limits, as far as the gateway has them.

    With its default policy the gateway learns to splice an (SNI,
    destination) after devices hang up during the handshake.  Load
    generators stopped at a deadline do exactly that, and every later
    "proxied" run would then measure splicing.  Nothing else changes.
    """
    from etpmitm.service import Options

    text = ""
    if not learning:
        text += "[learning]\nenabled = false\n"
    if inspect is not None:
        text += f"[inspect]\nhttp = {'true' if inspect == 'on' else 'false'}\n"
    options = Options()
    # The load generator is one address standing for many devices: per-client
    # admission limits would measure the limiter (their defaults cut a burst of
    # 1,000 connections from one address).
    admission = ["--max-client-rate=0", "--max-client-connections=0"] if "max-client-rate" in options else []
    if not text or "policy" not in options:
        return admission
    policy = work / "bench-policy.toml"
    policy.write_text("# bench: the gateway's defaults but for these\n" + text)
    return [f"--policy={policy}", *admission]


@contextmanager
def bench_lab(settings: Settings) -> Iterator[Bench]:
    """Build the lab, start nginx and the gateway, warm both paths.

    The gateway runs with its defaults plus settings.gateway_args and, unless
    settings.learning, a policy without learned bypasses (see bench_policy).
    """
    raise_fd_limit()
    env = GatewayLab(dports=[PROXIED_PORT])
    try:
        for ns in env.lab.namespaces:
            tune(ns)
        with hosts_file(env.lab.client):
            origin = start_nginx(env)
            args = [
                *bench_policy(env.lab.workdir, settings.learning, settings.inspect),
                f"--workers={settings.workers}",
                *(["--metrics=tcp:9180:interface=127.0.0.1"] if settings.metrics == "on" else []),
                *settings.gateway_args,
            ]
            print(f"gateway arguments beyond the lab's: {args}", flush=True)
            bench = Bench(env, origin, env.start_gateway(*args))
            for target in (bench.direct, bench.proxied):
                bench.curl(target, SMALL_PATH, "-w", "%{http_code}")  # mints the leaf
            yield bench
    except BaseException:
        if env.gateway is not None:
            tail = env.log().splitlines()[-40:]
            print("--- the gateway's log, last lines ---", *tail, sep="\n", file=sys.stderr)
        raise
    finally:
        env.close()


# -- loads ---------------------------------------------------------------------------

WRK_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
WRK_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
WRK_REQUESTS = re.compile(r"(\d+) requests in")


@dataclass
class WrkResult:
    """What one wrk run reports."""

    rate: float
    requests: int
    errors: int
    non2xx: int


def wrk(bench: Bench, target: Target, settings: Settings, *headers: str) -> WrkResult:
    """wrk (HTTP/1.1, no certificate check) for settings.duration seconds."""
    argv = ["wrk", "-t1", f"-c{settings.connections}", f"-d{settings.duration}s", "--timeout", "5s"]
    for header in headers:
        argv += ["-H", header]
    done = bench.client.run([*argv, target.url(SMALL_PATH)], timeout=settings.duration + 60)
    rate = WRK_RATE.search(done.stdout)
    if rate is None:
        raise RuntimeError(f"wrk printed no rate:\n{done.stdout}\n{done.stderr}")
    errors = WRK_ERRORS.search(done.stdout)
    non2xx = WRK_NON2XX.search(done.stdout)
    requests = WRK_REQUESTS.search(done.stdout)
    return WrkResult(
        rate=float(rate.group(1)),
        requests=int(requests.group(1)) if requests else 0,
        errors=sum(map(int, errors.groups())) if errors else 0,
        non2xx=int(non2xx.group(1)) if non2xx else 0,
    )


def compare_wrk(bench: Bench, settings: Settings, key: str, metric: str, *headers: str) -> Comparison:
    """A wrk load on both paths, settings.rounds times: median rate, CPU per request."""
    samples: dict[str, list[float]] = {"direct": [], "proxied": []}
    cpu: dict[str, list[float]] = {}
    comparison = Comparison(metric, "req/s", 0.0, 0.0, samples=samples, cpu=cpu)
    for round_ in range(settings.rounds):
        for target in bench.targets(round_):
            profile = settings.profile is not None and target.name == "proxied" and round_ == settings.rounds - 1
            with profiling(bench, settings, key if profile else None):
                before, events_before = bench.cpu(), bench.audit()
                result = wrk(bench, target, settings, *headers)
                after, events = bench.cpu(), bench.audit() - events_before
            samples[target.name].append(result.rate)
            for name, value in before.figures(after, result.requests).items():
                cpu.setdefault(f"{target.name}_{name}", []).append(value)
            if target.name == "proxied":
                comparison.check_events(events)
            # wrk's address probe and the connections it cuts at the end of
            # the run are logged as errors by the gateway: only more is news.
            errors = sum(n for k, n in events.items() if k.endswith("/error"))
            if result.errors or result.non2xx or errors > settings.connections + 1:
                comparison.notes.append(
                    f"{target.name} round {round_}: wrk socket errors {result.errors}, "
                    f"non-2xx {result.non2xx}, gateway error events {errors}"
                )
            print(f"  {metric} {target.name}: {result.rate:.1f}/s", flush=True)
    comparison.direct = statistics.median(samples["direct"])
    comparison.proxied = statistics.median(samples["proxied"])
    return comparison


H2LOAD_RATE = re.compile(r"finished in [\d.]+\w*, ([\d.]+) req/s")
H2LOAD_DONE = re.compile(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored")


def h2load(bench: Bench, settings: Settings) -> Comparison:
    """HTTP/2 requests per second: h2load, 4 connections, 10 streams each (the issue's load)."""
    samples: dict[str, list[float]] = {"direct": [], "proxied": []}
    cpu: dict[str, list[float]] = {}
    comparison = Comparison("HTTP/2 requests/s (h2load -c4 -m10)", "req/s", 0.0, 0.0, samples=samples, cpu=cpu)
    for round_ in range(settings.rounds):
        for target in bench.targets(round_):
            events_before = bench.audit()
            profile = settings.profile is not None and target.name == "proxied" and round_ == settings.rounds - 1
            with profiling(bench, settings, "h2load" if profile else None):
                before = bench.cpu()
                done = bench.client.run(
                    ["h2load", "-c4", "-m10", "-D", str(settings.duration), target.url(SMALL_PATH)],
                    timeout=settings.duration + 60,
                )
                after = bench.cpu()
            rate, counts = H2LOAD_RATE.search(done.stdout), H2LOAD_DONE.search(done.stdout)
            if rate is None or counts is None:
                raise RuntimeError(f"h2load printed no rate:\n{done.stdout}\n{done.stderr}")
            succeeded, failed, errored = int(counts.group(3)), int(counts.group(4)), int(counts.group(5))
            if target.name == "proxied":
                settle(0.2)
                comparison.check_events(bench.audit() - events_before)
            if failed or errored:
                comparison.notes.append(f"{target.name} round {round_}: h2load failed {failed}, errored {errored}")
            samples[target.name].append(float(rate.group(1)))
            for name, value in before.figures(after, succeeded).items():
                cpu.setdefault(f"{target.name}_{name}", []).append(value)
            print(f"  h2load {target.name}: {float(rate.group(1)):.1f}/s", flush=True)
    comparison.direct = statistics.median(samples["direct"])
    comparison.proxied = statistics.median(samples["proxied"])
    return comparison


def new_connections(bench: Bench, settings: Settings) -> Comparison:
    """New TLS connections per second: one request per connection."""
    result = compare_wrk(bench, settings, "new_connections", "new TLS connections/s", "Connection: close")
    result.unit = "conn/s"
    return result


def keepalive(bench: Bench, settings: Settings) -> Comparison:
    """Requests per second over keep-alive connections."""
    return compare_wrk(bench, settings, "keepalive", "keep-alive requests/s")


def bulk(bench: Bench, settings: Settings) -> Comparison:
    """MB/s of a 1 GiB download on one HTTP/1.1 connection (stopped at duration)."""
    samples: dict[str, list[float]] = {"direct": [], "proxied": []}
    cpu: dict[str, list[float]] = {}
    comparison = Comparison("bulk download, 1 connection", "MB/s", 0.0, 0.0, samples=samples, cpu=cpu)
    for round_ in range(settings.rounds):
        for target in bench.targets(round_):
            profile = settings.profile is not None and target.name == "proxied" and round_ == settings.rounds - 1
            events_before = bench.audit()
            with profiling(bench, settings, "bulk" if profile else None):
                before = bench.cpu()
                out = bench.curl(
                    target, BULK_PATH, "--http1.1", "-w", "%{size_download} %{time_total}",
                    timeout=settings.duration,
                )
                after = bench.cpu()
            if target.name == "proxied":
                settle(0.2)  # the event is logged once both sides closed
                comparison.check_events(bench.audit() - events_before)
            size, seconds = (float(v) for v in out.split())
            # "per request" here is per MB: CpuUse.figures divides by the count given.
            for name, value in before.figures(after, max(1, round(size / MB))).items():
                cpu.setdefault(f"{target.name}_{name}", []).append(value)
            samples[target.name].append(size / seconds / MB)
            print(f"  bulk {target.name}: {size / MB:.0f} MB in {seconds:.2f}s", flush=True)
    comparison.direct = statistics.median(samples["direct"])
    comparison.proxied = statistics.median(samples["proxied"])
    return comparison


def ttfb_script(bench: Bench, requests: int) -> str:
    """A bash loop of curls, one new connection each, alternating the paths."""
    lines = []
    for i in range(requests):
        for target in bench.targets(i):
            argv = [
                "curl", "-sS", "-o", "/dev/null", "--max-time", "5", "--cacert", str(target.cafile),
                "--resolve", target.resolve(), "-w", f"{target.name} %{{time_starttransfer}}\\n",
                target.url(SMALL_PATH),
            ]
            lines.append(f"{shlex.join(argv)} || echo {target.name} nan")
    return "\n".join(lines) + "\n"


def ttfb(bench: Bench, settings: Settings) -> tuple[Comparison, Comparison]:
    """Time to first byte on new connections (curl, default ALPN: h2), p50 and p99."""
    script = ttfb_script(bench, settings.ttfb_requests)
    events_before = bench.audit()
    done = bench.client.run(["bash", "-c", script], timeout=settings.ttfb_requests * 12 + 30)
    settle(0.2)
    events = bench.audit() - events_before
    samples: dict[str, list[float]] = {"direct": [], "proxied": []}
    failed = 0
    for line in done.stdout.splitlines():
        name, value = line.split()
        if value == "nan":
            failed += 1
        else:
            samples[name].append(float(value) * 1000)
    notes = [f"{failed} curl requests failed"] if failed else []
    result = []
    for q in (50, 99):
        comparison = Comparison(
            f"TTFB p{q}, new connection", "ms",
            percentile(samples["direct"], q), percentile(samples["proxied"], q),
            samples=samples if q == 50 else {}, notes=list(notes),
        )
        comparison.check_events(events)
        result.append(comparison)
    return result[0], result[1]


# -- profiling -------------------------------------------------------------------------


def py_spy() -> str:
    """The py-spy executable (pip install py-spy), next to this Python or on PATH."""
    found = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    return found


@contextmanager
def profiling(bench: Bench, settings: Settings, key: str | None) -> Iterator[None]:
    """With a key and settings.profile: py-spy records the gateway meanwhile.

    Writes KEY.raw (collapsed stacks, for flamegraph.pl or speedscope) and
    KEY.txt (the top frames, inclusive and self).  --nonblocking: the
    gateway is sampled without being stopped.
    """
    if key is None or settings.profile is None:
        yield
        return
    settings.profile.mkdir(parents=True, exist_ok=True)
    raw = settings.profile / f"{key}.raw"
    argv = [
        py_spy(), "record", "--pid", str(bench.gateway.pid), "--subprocesses", "--nonblocking", "--rate", "200",
        "--format", "raw", "--output", str(raw), "--duration", str(settings.duration + 5),
    ]
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes what it has
        spy.wait(30)
    if raw.exists():
        (settings.profile / f"{key}.txt").write_text(summarize_stacks(raw.read_text()))


def summarize_stacks(collapsed: str, top: int = 40) -> str:
    """Inclusive and self shares of the frames in py-spy's collapsed stacks."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n

    def ranked(counts: dict[str, int]) -> list[str]:
        best = sorted(counts.items(), key=lambda item: -item[1])[:top]
        return [f"{100 * n / max(total, 1):5.1f}%  {frame}" for frame, n in best]

    return "\n".join([f"samples: {total}", "", "inclusive:", *ranked(inclusive), "", "self:", *ranked(own)]) + "\n"


# -- memory ------------------------------------------------------------------------------


def settle(seconds: float = 1.0) -> None:
    """Let the gateway finish closing what the last load left behind."""
    time.sleep(seconds)


def hold_connections(bench: Bench, count: int, timeout: float = 180, alpn: str = "http/1.1") -> tuple[int, int, float]:
    """Open count keep-alive connections (``alpn``: http/1.1 or h2) through the gateway and read its RSS.

    Returns (connections open, RSS KiB while they are open, seconds to open).
    The holder verifies the gateway's certificate: spliced connections fail.
    """
    argv = [
        sys.executable, __file__, "hold", "--host", ORIGIN_IP, "--port", str(PROXIED_PORT),
        "--cafile", str(bench.proxied.cafile), "--count", str(count), "--alpn", alpn,
    ]
    holder = bench.client.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdin is not None
    try:
        ready, _, _ = select.select([holder.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"holder did not report within {timeout}s")
        report = json.loads(holder.stdout.readline() or b"{}")
        if "open" not in report:
            raise RuntimeError(f"holder failed: {bench.env.lab.log(holder)[-2000:]}")
        if report["errors"]:
            print(f"  holder: {count - report['open']} connections failed: {report['errors']}", flush=True)
        settle()
        return int(report["open"]), bench.rss(), float(report["seconds"])
    finally:
        holder.stdin.close()
        holder.wait(30)


def slow_reader(bench: Bench, settings: Settings) -> int:
    """Gateway RSS (KiB) while a client reads the bulk file at 1 MB/s."""
    argv = [
        "curl", "-sS", "-o", "/dev/null", "--http1.1", "--limit-rate", "1M",
        "--max-time", str(settings.slow_seconds + 5), "--cacert", str(bench.proxied.cafile),
        "--resolve", bench.proxied.resolve(), bench.proxied.url(BULK_PATH),
    ]
    reader = bench.client.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(settings.slow_seconds)
        return bench.rss()
    finally:
        reader.terminate()
        reader.wait(10)


AFTER_CLOSE = 6.0
"""Seconds from closing the held connections to reading RSS: the gateway gives
a closed burst's memory back once no connection has ended for a while
(etpmitm.memory, TRIM_SETTLE), not at once."""


def memory(bench: Bench, settings: Settings, idle_start: int) -> dict[str, Any]:
    """Gateway RSS at idle, with settings.hold open connections, under a slow reader.

    The connections are opened and closed twice: what the second cycle adds
    once they are closed again tells retention (allocator) from a leak.
    """
    settle(2)
    idle = bench.rss()
    opened, held, seconds = hold_connections(bench, settings.hold)
    settle(AFTER_CLOSE)
    after = bench.rss()
    opened2, held2, _ = hold_connections(bench, settings.hold)
    settle(AFTER_CLOSE)
    after2 = bench.rss()
    opened_h2, held_h2, _ = hold_connections(bench, settings.hold, alpn="h2")
    settle(2)
    after_h2 = bench.rss()
    slow = slow_reader(bench, settings)
    per_connection = (held - idle) / opened if opened else float("nan")
    # The allocator reuses what the closed keep-alive connections freed, so
    # an h2 connection counts as a keep-alive one plus what 1,000 h2 ones
    # hold beyond 1,000 keep-alive ones (the second cycle's).
    per_h2 = per_connection + (held_h2 - held2) / opened_h2 if opened_h2 and opened2 == opened_h2 else float("nan")
    print(f"  RSS idle {idle} KiB, {opened} open {held} KiB, closed {after} KiB, "
          f"again {held2} / {after2} KiB, {opened_h2} h2 open {held_h2} / closed {after_h2} KiB, "
          f"slow reader {slow} KiB", flush=True)
    return {
        "rss_idle_start_kib": idle_start,
        "rss_idle_kib": idle,
        "open_connections": opened,
        "seconds_to_open": seconds,
        "rss_open_kib": held,
        "rss_per_connection_kib": per_connection,
        "rss_after_close_kib": after,
        "open_connections_second_cycle": opened2,
        "rss_open_second_cycle_kib": held2,
        "rss_after_second_close_kib": after2,
        "rss_growth_per_cycle_kib": after2 - after,
        "open_h2_connections": opened_h2,
        "rss_open_h2_kib": held_h2,
        "rss_per_h2_connection_kib": per_h2,
        "rss_after_h2_close_kib": after_h2,
        "rss_slow_reader_kib": slow,
        "slow_reader_seconds": settings.slow_seconds,
    }


# -- targets and report ---------------------------------------------------------------------


def judge(comparisons: dict[str, Comparison]) -> None:
    """Mark each comparison against the targets of the performance issue."""
    ratios = {"new_connections": 0.15, "keepalive": 0.30, "bulk": 0.60}
    for key, minimum in ratios.items():
        c = comparisons[key]
        c.target, c.met = f"ratio >= {minimum:.2f}", c.ratio >= minimum
    c = comparisons["ttfb_p50"]
    c.target, c.met = "<= direct + 5 ms", c.proxied - c.direct <= 5.0
    comparisons["ttfb_p99"].target = "(none)"
    if "h2load" not in comparisons:
        return
    c = comparisons["h2load"]
    c.target, c.met = "proxied >= 10,000 req/s", c.proxied >= 10_000


def fmt(value: float) -> str:
    return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"


def cpu_line(c: Comparison) -> str:
    """Gateway and origin CPU per request (per MB for bulk) for one comparison."""
    def m(name: str) -> float:
        return statistics.median(c.cpu[name])

    if c.unit == "MB/s":
        return (
            f"  {c.metric}: gateway {m('proxied_gateway_us_per_request') / 1000:,.2f} ms/MB "
            f"({m('proxied_gateway_core_share'):.0%} of a core); origin {m('direct_origin_us_per_request') / 1000:,.2f}"
            f" ms/MB direct, {m('proxied_origin_us_per_request') / 1000:,.2f} ms/MB proxied"
        )
    return (
        f"  {c.metric}: gateway {m('proxied_gateway_us_per_request'):,.0f} us/req "
        f"({m('proxied_gateway_core_share'):.0%} of a core); origin {m('direct_origin_us_per_request'):,.0f}"
        f" us/req direct ({m('direct_origin_core_share'):.0%}), "
        f"{m('proxied_origin_us_per_request'):,.0f} us/req proxied"
    )


def table(comparisons: dict[str, Comparison], mem: dict[str, Any]) -> str:
    """The human-readable result."""
    rows = [("metric", "unit", "direct", "proxied", "proxied/direct", "target", "")]
    for c in comparisons.values():
        ratio = f"{c.ratio:.3f}"
        if c.unit == "ms":
            ratio += f" (+{c.proxied - c.direct:.2f} ms)"
        verdict = "" if c.met is None else ("met" if c.met else "NOT MET")
        if not c.intercepted:
            verdict = "INVALID: not intercepted"
        rows.append((c.metric, c.unit, fmt(c.direct), fmt(c.proxied), ratio, c.target, verdict))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [
        "",
        "proxy memory (VmRSS: twistd with its workers, or the peer in its place)",
        f"  idle, fresh start                  {mem['rss_idle_start_kib'] / 1024:8.1f} MiB",
        f"  idle, after the loads              {mem['rss_idle_kib'] / 1024:8.1f} MiB",
        f"  {mem['open_connections']} open keep-alive connections   {mem['rss_open_kib'] / 1024:8.1f} MiB",
        f"  per open connection                {mem['rss_per_connection_kib']:8.1f} KiB",
        f"  after they closed                  {mem['rss_after_close_kib'] / 1024:8.1f} MiB",
        f"  again: open / closed               {mem['rss_open_second_cycle_kib'] / 1024:8.1f}"
        f" / {mem['rss_after_second_close_kib'] / 1024:.1f} MiB"
        f"  (+{mem['rss_growth_per_cycle_kib'] / 1024:.1f} MiB per {mem['open_connections']}-connection cycle)",
        f"  {mem['open_h2_connections']} open idle h2 connections      {mem['rss_open_h2_kib'] / 1024:8.1f} MiB",
        f"  per open h2 connection             {mem['rss_per_h2_connection_kib']:8.1f} KiB"
        f"  (a keep-alive one + the difference of 1,000 of each; target <= 64 KiB)",
        f"  slow reader (1 MB/s, 1 GiB file)   {mem['rss_slow_reader_kib'] / 1024:8.1f} MiB",
    ]
    lines += ["", "CPU per request, per MB for bulk (median of rounds; core share = CPU seconds / wall seconds)"]
    for c in comparisons.values():
        if c.cpu:
            lines.append(cpu_line(c))
    notes = [f"  {c.metric}: {n}" for c in comparisons.values() for n in c.notes]
    if notes:
        lines += ["", "notes", *notes]
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------


Results = tuple[dict[str, Comparison], dict[str, Any]]
"""One system's comparisons and memory figures."""


def run(settings: Settings) -> dict[str, Results]:
    """Every load, direct and proxied, in one lab: through etpmitm, then
    through each of settings.peers in its place (same origin, same loads)."""
    with bench_lab(settings) as bench:
        if settings.profile is not None:
            py_spy()  # fail now, not after minutes
        results = {"etpmitm": run_loads(bench, settings)}
        for name in settings.peers:
            print(f"--- {name} in the gateway's place ---", flush=True)
            bench = bench.peer(name)
            results[name] = run_loads(bench, replace(settings, profile=None))
    return results


def run_loads(bench: Bench, settings: Settings) -> Results:
    """Every load on both paths, then the memory figures, for bench.system."""
    idle_start = bench.rss()
    steps: list[tuple[str, Callable[[Bench, Settings], Comparison]]] = [
        ("new_connections", new_connections), ("keepalive", keepalive), ("bulk", bulk),
    ]
    if bench.system == "etpmitm":  # SSLsplit negotiates no ALPN: no HTTP/2 through it
        steps.append(("h2load", h2load))
    comparisons: dict[str, Comparison] = {}
    for key, step in steps:
        print(f"{key} ...", flush=True)
        comparisons[key] = step(bench, settings)
        settle()
    print("ttfb ...", flush=True)
    comparisons["ttfb_p50"], comparisons["ttfb_p99"] = ttfb(bench, settings)
    print("memory ...", flush=True)
    mem = memory(bench, settings, idle_start)
    if settings.metrics == "on" and bench.system == "etpmitm":
        print_scrape(bench)
    judge(comparisons)
    return comparisons, mem


def print_scrape(bench: Bench) -> None:
    """--metrics on: one scrape after the loads, to show what was counted."""
    done = bench.env.lab.gateway.run(["curl", "-sS", "--max-time", "10", "http://127.0.0.1:9180/metrics"], check=False)
    totals: dict[str, float] = {}
    for line in done.stdout.splitlines():
        name = line.partition("{")[0].partition(" ")[0]
        if name in ("etpmitm_connections_total", "etpmitm_http_requests_total"):
            totals[name] = totals.get(name, 0.0) + float(line.rpartition(" ")[2])
    print(f"metrics scrape after the loads: {dict(totals)}", flush=True)


def per_unit(comparisons: dict[str, Comparison], mem: dict[str, Any]) -> dict[str, float]:
    """The proxy's CPU per unit of work (median of rounds) and its memory figures."""
    def cpu(key: str) -> float:
        c = comparisons.get(key)
        return statistics.median(c.cpu["proxied_gateway_us_per_request"]) if c and c.cpu else float("nan")

    return {
        "ms_per_new_connection": cpu("new_connections") / 1000,
        "us_per_keepalive_request": cpu("keepalive"),
        "ms_per_MB": cpu("bulk") / 1000,
        "rss_idle_start_mib": mem["rss_idle_start_kib"] / 1024,
        "kib_per_open_connection": mem["rss_per_connection_kib"],
        "rss_open_mib": mem["rss_open_kib"] / 1024,
        "rss_after_close_mib": mem["rss_after_close_kib"] / 1024,
    }


def systems_table(results: dict[str, Results]) -> str:
    """CPU per unit of work and memory, one row per system measured in this run."""
    columns = [
        ("ms_per_new_connection", "new conn ms"), ("us_per_keepalive_request", "keep-alive req us"),
        ("ms_per_MB", "bulk ms/MB"), ("rss_idle_start_mib", "idle RSS MiB"),
        ("kib_per_open_connection", "KiB/open conn"), ("rss_open_mib", "RSS open MiB"),
        ("rss_after_close_mib", "RSS closed MiB"),
    ]
    rows = [("system", *(title for _, title in columns))]
    for name, (comparisons, mem) in results.items():
        units = per_unit(comparisons, mem)
        rows.append((name, *(fmt(units[key]) for key, _ in columns)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "proxy CPU per unit of work (gateway namespace, median of rounds) and memory\n" + "\n".join(lines)


def write_json(path: Path, command: str, host: dict[str, Any], background: dict[str, float],
               settings: Settings, comparisons: dict[str, Comparison], mem: dict[str, Any],
               others: dict[str, Results] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "command": command,
        "machine": host,
        "background_busy": background,
        "settings": asdict(settings),
        "comparisons": {
            key: {**asdict(c), "ratio": c.ratio, "difference": c.proxied - c.direct}
            for key, c in comparisons.items()
        },
        "memory": mem,
        "per_unit": per_unit(comparisons, mem),
        "peers": {
            name: {
                "comparisons": {key: {**asdict(c), "ratio": c.ratio} for key, c in peer_comparisons.items()},
                "memory": peer_mem,
                "per_unit": per_unit(peer_comparisons, peer_mem),
            }
            for name, (peer_comparisons, peer_mem) in (others or {}).items()
        },
    }
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def main_bench(args: argparse.Namespace) -> int:
    settings = replace(
        Settings.quick() if args.quick else Settings(),
        profile=args.profile, gateway_args=tuple(args.gateway_arg), learning=args.learning,
        workers=args.workers, inspect=args.inspect, metrics=args.metrics, peers=tuple(args.peer),
    )
    command = shlex.join([sys.executable, *sys.argv])
    host = machine()
    print(f"command: {command}")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in host.items()))
    print(f"settings: {asdict(settings)}", flush=True)
    background = {"busy_before": busy_fraction()}
    print(f"background CPU busy before the lab: {background['busy_before']:.0%} of all cores", flush=True)
    if background["busy_before"] > 0.10:
        print("WARNING: the machine is busy; ratios will be noisier", flush=True)
    results = run(settings)
    comparisons, mem = results.pop("etpmitm")
    background["busy_after"] = busy_fraction()
    print()
    print(table(comparisons, mem))
    for name, (peer_comparisons, peer_mem) in results.items():
        print(f"\n{name} in the gateway's place\n")
        print(table(peer_comparisons, peer_mem))
    print()
    print(systems_table({"etpmitm": (comparisons, mem), **results}))
    print(f"\nbackground CPU busy: {background['busy_before']:.0%} before, {background['busy_after']:.0%} after")
    if settings.profile is not None:
        print(f"profiles (py-spy, gateway, last proxied round; figures perturbed): {settings.profile}/*.txt, *.raw")
    write_json(args.json, command, host, background, settings, comparisons, mem, results)
    print(f"\nJSON: {args.json}")
    return 0


# -- the connection holder (runs in the client namespace) ---------------------------------------


async def open_one(host: str, port: int, context: ssl.SSLContext) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection with one keep-alive request done (body read whole)."""
    reader, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=ORIGIN_NAME)
    writer.write(f"GET {SMALL_PATH} HTTP/1.1\r\nHost: {ORIGIN_NAME}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"(?i)content-length:\s*(\d+)", head)
    if not head.startswith(b"HTTP/1.1 200") or length is None:
        raise RuntimeError(f"unexpected response {head[:200]!r}")
    await reader.readexactly(int(length.group(1)))
    return reader, writer


async def open_one_h2(host: str, port: int, context: ssl.SSLContext) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An HTTP/2 connection (ALPN h2) with one request done, then idle."""
    import h2.config
    import h2.connection
    import h2.events

    reader, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=ORIGIN_NAME)
    if writer.get_extra_info("ssl_object").selected_alpn_protocol() != "h2":
        raise RuntimeError("the gateway did not negotiate h2")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":authority", ORIGIN_NAME),
                          (":path", SMALL_PATH)], end_stream=True)
    writer.write(conn.data_to_send())
    status = None
    while True:
        data = await reader.read(65536)
        if not data:
            raise RuntimeError("the connection closed before the response ended")
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status = dict(event.headers).get(b":status")
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                if status != b"200":
                    raise RuntimeError(f"unexpected status {status!r}")
                writer.write(conn.data_to_send())
                return reader, writer
        writer.write(conn.data_to_send())


async def hold(host: str, port: int, cafile: str, count: int, parallel: int, alpn: str = "http/1.1") -> None:
    """Open count connections, report on stdout, keep them until stdin closes."""
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols([alpn])
    gate = asyncio.Semaphore(parallel)
    opener = open_one_h2 if alpn == "h2" else open_one

    async def one() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with gate:
            return await asyncio.wait_for(opener(host, port, context), 30)

    started = time.monotonic()
    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    opened = [r for r in results if not isinstance(r, BaseException)]
    errors = sorted({repr(r) for r in results if isinstance(r, BaseException)})[:5]
    report = {"open": len(opened), "seconds": time.monotonic() - started, "errors": errors}
    print(json.dumps(report), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for _, writer in opened:
        writer.close()


def main_hold(args: argparse.Namespace) -> int:
    asyncio.run(hold(args.host, args.port, args.cafile, args.count, args.parallel, args.alpn))
    return 0


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 s loads, one round, fewer TTFB samples")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"results file (default {DEFAULT_JSON})")
    parser.add_argument(
        "--profile", type=Path, metavar="DIR",
        help="py-spy the gateway during the last proxied round of the wrk and bulk loads: DIR/<load>.{raw,txt}",
    )
    parser.add_argument(
        "--gateway-arg", action="append", default=[], metavar="ARG",
        help="add ARG to the gateway's command line (repeatable; e.g. --gateway-arg=--leaf-key=rsa)",
    )
    parser.add_argument(
        "--workers", default="auto",
        help="the gateway's --workers (default auto, as the systemd unit runs it; 1: one process)",
    )
    parser.add_argument(
        "--inspect", choices=("on", "off"),
        help="the policy's [inspect] http: HTTP inspection on or off (default: the gateway's default)",
    )
    parser.add_argument(
        "--metrics", choices=("on", "off"), default="off",
        help="the gateway's --metrics: on serves /metrics (scraped once at the end), off (default) counts nothing",
    )
    parser.add_argument(
        "--peer", action="append", default=[], choices=sorted(peers.PEERS),
        help="after etpmitm, run the same loads through this proxy in its place (repeatable; bench/peers.py)",
    )
    parser.add_argument(
        "--learning", action="store_true",
        help="keep the gateway's learned bypasses on (pure defaults; wrk's hang-ups then teach it to splice)",
    )
    parser.set_defaults(main=main_bench)
    sub = parser.add_subparsers()
    holder = sub.add_parser("hold", help="internal: hold open connections (client namespace)")
    holder.add_argument("--host", required=True)
    holder.add_argument("--port", type=int, required=True)
    holder.add_argument("--cafile", required=True)
    holder.add_argument("--count", type=int, required=True)
    holder.add_argument("--parallel", type=int, default=32)
    holder.add_argument("--alpn", choices=("http/1.1", "h2"), default="http/1.1")
    holder.set_defaults(main=main_hold)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    result: int = args.main(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
