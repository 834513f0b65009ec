"""twistd wiring: the service that ``twistd etpmitm`` runs (its options: :mod:`etpmitm.options`)."""

from __future__ import annotations

import gc
import math
import os
import re
import resource
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, cast

import attrs
from twisted.application import strports
from twisted.application.service import IService, MultiService
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorProcess, IReactorSocket, IReactorTCP, IReactorTime
from twisted.logger import Logger

from etpmitm import audit, logtime
from etpmitm.memory import TRIM_SETTLE, Trimmer, mallocTrim, tuneMalloc
from etpmitm.admission import Admission
from etpmitm.auditlog import AuditLogError, AuditLogService
from etpmitm.auditsinks import openAuditSink
from etpmitm.ca.directory import CertificateAuthority, LeafKeyKind, load_ca
from etpmitm.ca.errors import CAError
from etpmitm.ca.leafkeys import load_or_create_leaf_key
from etpmitm.ca.ownroot import init_own_root
from etpmitm.ca.untrusted import load_or_create_untrusted_ca
from etpmitm.drain import DrainService, HoldOpen, StopsLast
from etpmitm.defaults import data_directory, default_ca_directory
from etpmitm.gateway.device import CachedLeafContexts
from etpmitm.gateway.inspect import inspectingLayer
from etpmitm.gateway.intake import IntakeFactory
from etpmitm.gateway.policyholder import PolicyHolder
from etpmitm.gateway.proxied import PREFIX, ProxiedIntakeFactory, unwrapProxied
from etpmitm.gateway.scanners import ScannerHolder
from etpmitm.gateway.settings import GatewaySettings
from etpmitm.interfaces import IAuditSink
from etpmitm.gateway.origin import TrustStoreError, system_bundle, upstream_context
from etpmitm.icap.client import IcapScanner
from etpmitm.keyfiles import KeyFileError, read_passphrase_file
from etpmitm.learnedmessage import from_message, to_message
from etpmitm.learning import Learned
from etpmitm.limits import raise_nofile_limit
from etpmitm.options import Options
from etpmitm.policy import PolicyError
from etpmitm.threat.judge import ThreatLists
from etpmitm.threat.keeper import ListKeeper
from etpmitm.threat.lists import ListError
from etpmitm.threat.service import MANIFEST, ThreatListService, listKeeper, mapLists, remap
from etpmitm.sharedports import AdoptedPorts, bindShared, tcpAddress, withBacklog
from etpmitm.workers import STOP_GRACE, MasterLink, WorkerPool

if TYPE_CHECKING:
    from etpmitm import metricssetup

log = Logger()


def _admission(options: Options) -> Admission:
    rate = options["max-client-rate"]
    return Admission(
        max_connections=options["max-connections"],
        per_client=options["max-client-connections"],
        per_client_rate=rate,
        burst=max(1, math.ceil(2 * rate)),
    )


class StartupError(SystemExit):
    """Start-up cannot go on; the message is the one line the operator sees."""

    def __init__(self, message: str) -> None:
        super().__init__(f"etpmitm: error: {message}")


def _passphrase(options: Options) -> bytes | None:
    if options["passphrase-file"] is None:
        return None
    try:
        return read_passphrase_file(Path(options["passphrase-file"]))
    except KeyFileError as e:
        raise StartupError(str(e)) from None


def _certificateAuthority(options: Options, passphrase: bytes | None) -> tuple[Path, CertificateAuthority]:
    explicit = options["ca-dir"] is not None
    directory = Path(options["ca-dir"]) if explicit else default_ca_directory()
    try:
        if not explicit and not (directory / "ca.pem").exists():
            data_directory().mkdir(mode=0o700, parents=True, exist_ok=True)
            ca = init_own_root(directory, passphrase=passphrase)
            log.warn(
                "Created an own-root CA in {directory}; install {root} on devices",
                directory=str(directory),
                root=str(directory / "root.pem"),
            )
            return directory, ca
        return directory, load_ca(directory, passphrase)
    except (CAError, OSError) as e:
        raise StartupError(f"cannot use CA directory {directory}: {e}") from None


class GatewayService(MultiService):
    """The listeners; failing to listen ends start-up with one line.

    SIGHUP reloads the policy file (and swaps the ICAP scanner when its
    ``[icap]`` changed).  Freed memory goes back to the system after
    connections end (:mod:`etpmitm.memory`).
    """

    def __init__(self, policy: PolicyHolder, master: MasterLink | None = None,
                 scanners: ScannerHolder | None = None) -> None:
        super().__init__()
        self.policy = policy
        self.master = master
        self.scanners = scanners
        self.trimmer: Trimmer | None = None
        self.hangupHooks: list[Callable[[], object]] = []
        """Run after each SIGHUP's policy reload (the threat lists')."""

    def reload(self) -> None:
        """SIGHUP: reload the policy and the threat lists; a new scanner for new connections if ``[icap]`` changed."""
        reloaded = self.policy.reload()
        for hook in self.hangupHooks:
            hook()
        if not reloaded or self.scanners is None:
            return
        if self.scanners.update(self.policy.current.icap):
            log.info("ICAP settings changed: new connections use {what}; open connections keep theirs",
                     what="the new scanner" if self.scanners.current is not None else "no scanner")
            self.scanners.probe()

    def startService(self) -> None:
        super().startService()
        from twisted.internet import reactor

        if self.master is not None:
            self.master.start()
        tuneMalloc()
        self.trimmer = Trimmer(cast(IReactorTime, reactor), audit.ended, mallocTrim(), settle=TRIM_SETTLE, collect=gc.collect)
        self.trimmer.start()
        if self.scanners is not None:
            self.scanners.probe()  # a server down is a warning: each scan applies on_error

        def onHangup(signum: int, frame: object) -> None:
            reactor.callFromThread(self.reload)  # type: ignore[attr-defined]

        signal.signal(signal.SIGHUP, onHangup)
        # SIGHUP was blocked from start-up (makeService; a worker inherits it
        # blocked, etpmitm.workers): one that came meanwhile is handled now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


    def stopService(self) -> Any:
        if self.trimmer is not None:
            self.trimmer.stop()
        if self.scanners is not None:
            self.scanners.close()
        return super().stopService()

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise StartupError(f"cannot listen on {e.interface or '*'}:{e.port}: {e.socketError}") from None


def _trustBundle(option: str) -> Path:
    if option == "system":
        return system_bundle()
    bundle = Path(option)
    try:
        bundle.read_bytes()
    except OSError as e:
        raise TrustStoreError(f"cannot read --upstream-trust {bundle}: {e.strerror}") from None
    return bundle


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    logtime.install()
    passphrase = _passphrase(options)
    directory, ca = _certificateAuthority(options, passphrase)
    kind = cast(LeafKeyKind, options["leaf-key"])
    try:
        leafKey = load_or_create_leaf_key(directory, kind, passphrase)
        bundle = _trustBundle(options["upstream-trust"])
        upstream = upstream_context(bundle)
        untrustedCA = load_or_create_untrusted_ca(directory, passphrase)
        policy = PolicyHolder.load(Path(options["policy"]) if options["policy"] else None)
    except (CAError, TrustStoreError, PolicyError) as e:
        raise StartupError(str(e)) from None
    descriptions = _listenDescriptions(options)
    if options["worker-metrics"]:
        from etpmitm.metricssetup import inWorker

        inWorker(options["worker-metrics"])
    accepting: list[Callable[[], str | None]] = []
    metricsSetup = _metricsSetup(options, ca, leafKey, accepting)
    auditLog = _auditLog(options)
    # The sockets listen from privilegedStartService, the handlers go in at
    # startService, once the reactor runs: in between, SIGHUP (systemctl
    # reload) and, with an audit log, SIGUSR1 (logrotate) would end the
    # process, their default. They wait, blocked; the services that handle
    # them unblock them.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP, *([signal.SIGUSR1] if auditLog is not None else [])})

    _logDescriptorLimit(options, *raise_nofile_limit())

    if options["worker-listen"]:
        manifest = options["threat-manifest"]
        keeper = None
        if manifest is not None:
            policy.lists = _mapLists(Path(manifest))
    else:
        keeper = _listKeeper(options, policy)

    if options["workers"] > 1 and not options["worker-listen"]:
        master = _master(options, descriptions, directory, ca, bundle, metricsSetup, keeper)
        accepting.append(lambda: None if master.pool is not None and master.pool.pids else "no worker is running")
        return _withAuditLog(_withMetrics(_withLists(master, keeper, policy, master), metricsSetup), auditLog)

    link: MasterLink | None = None
    if options["worker-listen"]:
        link = MasterLink(reactor, lambda message: _fromMaster(policy, options["threat-manifest"], message))
    scanners = ScannerHolder(lambda icap: IcapScanner(icap, cast(IReactorTime, reactor)))
    scanners.update(policy.current.icap)
    settings = GatewaySettings(
        reactor=cast(IReactorTCP, reactor),
        clock=cast(IReactorTime, reactor),
        upstream=upstream,
        leaves=CachedLeafContexts(ca, leafKey, options["leaf-cache"]),
        untrustedLeaves=CachedLeafContexts(untrustedCA, leafKey, options["leaf-cache"]),
        policy=policy,
        handshakeTimeout=options["handshake-timeout"],
        connectTimeout=options["connect-timeout"],
        idleTimeout=options["idle-timeout"],
        relayBuffer=options["relay-buffer"],
        shareLearned=_shareLearned(link),
        admission=_admission(options),
        scanners=scanners,
    )
    settings = attrs.evolve(settings, layerFor=inspectingLayer(settings))
    factory = IntakeFactory(settings)
    proxiedFactory = ProxiedIntakeFactory(settings)
    top = GatewayService(policy, link, scanners)
    accepting.append(lambda: None if top.running else "not accepting")
    _withLists(top, keeper, policy, None)
    admission = settings.admission
    assert admission is not None
    listening = _heldOpen(top, options["drain-delay"])
    DrainService(cast(IReactorTime, reactor), lambda: admission.open, options["drain-timeout"]).setServiceParent(listening)
    if link is not None:
        inherited = options["worker-listen"]
        for wanted, serving in ((False, factory), (True, proxiedFactory)):
            fds = [fd for i, fd in enumerate(inherited) if (i in options["worker-proxied"]) is wanted]
            if fds:
                AdoptedPorts(cast(IReactorSocket, reactor), fds, serving).setServiceParent(listening)
        log.info("etpmitm worker {pid} serving the master's sockets", pid=os.getpid())
        return top  # no --audit-log here: the master writes its workers' events
    for description in descriptions:
        proxied, inner = unwrapProxied(description)
        try:
            strports.service(inner, proxiedFactory if proxied else factory).setServiceParent(listening)
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise StartupError(f"bad --listen {description!r}: {e}") from None
    _logStart(options, directory, ca, bundle)
    return _withAuditLog(_withMetrics(top, metricsSetup), auditLog)


def _auditLog(options: Options) -> IAuditSink | None:
    """The ``--audit-log`` sink, open; not in a worker (the master writes its events)."""
    if options["audit-log"] is None or options["worker-listen"]:
        return None
    try:
        from twisted.internet import reactor

        return openAuditSink(options["audit-log"], reactor)
    except AuditLogError as e:
        raise StartupError(str(e)) from None


def _metricsSetup(options: Options, ca: CertificateAuthority, leafKey: Any,
                  accepting: list[Callable[[], str | None]]) -> metricssetup.MetricsSetup | None:
    """``--metrics``: installs the metrics, and returns the listener to add (not in a worker)."""
    from twisted.internet import reactor

    description = options["metrics"]
    if description is None or options["worker-listen"]:
        return None
    from etpmitm.metricssetup import setUp  # twisted.web and prometheus_client only with --metrics

    try:
        return setUp(description, options["workers"], ca, leafKey, cast(IReactorTime, reactor).seconds,
                                  lambda: next((p for check in accepting if (p := check()) is not None), None))
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise StartupError(f"bad --metrics {description!r}: {e}") from None


def _heldOpen(top: MultiService, delay: float) -> MultiService:
    """Where the listeners go: ``top``, or with ``--drain-delay`` a :class:`HoldOpen` in it."""
    if delay <= 0:
        return top
    from twisted.internet import reactor

    held = HoldOpen(cast(IReactorTime, reactor), delay)
    held.setServiceParent(top)
    return held


def _withMetrics(top: MultiService, setup: metricssetup.MetricsSetup | None) -> MultiService:
    if setup is not None:
        setup.service.setServiceParent(top)
    return top


def _withAuditLog(top: MultiService, auditLog: IAuditSink | None) -> MultiService:
    if auditLog is not None:
        return StopsLast(top, AuditLogService(auditLog))  # open until the last drained connection's event
    return top


def _logDescriptorLimit(options: Options, soft: int, hard: int) -> None:
    """Log the descriptor limit in use (not in workers: the master did), and whether it is too low."""
    if options["worker-listen"]:
        return
    log.info("file descriptor limit {soft} (hard {hard})", soft=soft, hard=hard)
    # Two per connection (device and origin), and some for listeners, CA files, logs.
    need = 2 * options["max-connections"] + 64
    if options["max-connections"] and soft != resource.RLIM_INFINITY and soft < need:
        log.warn(
            "file descriptor limit {soft} is below the {need} that --max-connections {limit} needs; "
            "raise LimitNOFILE or lower --max-connections",
            soft=soft,
            need=need,
            limit=options["max-connections"],
        )


def _listenDescriptions(options: Options) -> list[str]:
    """The --listen descriptions, each with --backlog unless it names its own."""
    descriptions = []
    for description in options["listen"]:
        proxied, inner = unwrapProxied(description)
        try:
            descriptions.append((PREFIX if proxied else "") + withBacklog(inner, options["backlog"]))
        except (ValueError, KeyError, TypeError) as e:
            raise StartupError(f"bad --listen {description!r}: {e}") from None
    return descriptions


def _logStart(options: Options, directory: Path, ca: CertificateAuthority, bundle: Path) -> None:
    subject = ca.certificate.subject.rfc4514_string()
    log.info(
        "etpmitm: listen on {listen} (backlog {backlog}); sign with {subject} from {directory}; "
        "verify origins against {bundle}; policy {policy}; workers {workers}",
        listen=", ".join(options["listen"]),
        backlog=options["backlog"],
        subject=subject,
        directory=str(directory),
        bundle=str(bundle),
        policy=options["policy"] or "(built-in: intercept all, block untrusted origins)",
        workers=options["workers"],
    )
    if options["listen-note"]:
        log.warn("etpmitm: {note}", note=options["listen-note"])
    for port in _listenPorts(options["listen"]):
        log.info(
            "Send traffic here with: iptables -t nat -A PREROUTING -i <lan-if> -p tcp --dport 443 -m addrtype ! --dst-type LOCAL "
            "-j REDIRECT --to-ports {port} (and ip6tables; or deploy/iptables.sh --lan-if <lan-if> --port {port})",
            port=port,
        )


def _shareLearned(link: MasterLink | None) -> Callable[[Learned], None]:
    """How a worker tells the others (through the master) what it learned."""
    if link is None:
        return lambda learned: None
    master = link
    return lambda learned: master.send(to_message(learned))


def _listKeeper(options: Options, policy: PolicyHolder) -> ListKeeper | None:
    """The threat lists, built now (a problem is a start-up error); see etpmitm.threat.service."""
    try:
        return listKeeper(policy, options["list-interval"])
    except ListError as e:
        raise StartupError(str(e)) from None


def _withLists(top: MultiService, keeper: ListKeeper | None, policy: PolicyHolder,
               master: MasterService | None) -> MultiService:
    """Reload the lists on SIGHUP too, and remove their tables at the end."""
    if keeper is not None:
        ThreatListService(keeper, policy, lambda: None if master is None else master.pool).setServiceParent(top)
        if isinstance(top, GatewayService):
            top.hangupHooks.append(lambda: keeper.reload(policy.current.lists))
    return top


def _mapLists(manifest: Path) -> ThreatLists:
    try:
        return mapLists(manifest)
    except (OSError, ValueError) as e:
        raise StartupError(f"cannot map the threat lists named in {manifest}: {e}") from None


def _fromMaster(policy: PolicyHolder, manifest: str | None, message: dict[str, Any]) -> None:
    """A message from the master: new threat list tables, or a bypass another worker learned."""
    if not remap(policy, manifest, message):
        _learnedByAnother(policy, message)


def _learnedByAnother(policy: PolicyHolder, message: dict[str, Any]) -> None:
    """A bypass another worker learned: apply it here too, for the same clients."""
    from twisted.internet import reactor

    if "learned" not in message:
        return
    try:
        learned = from_message(message)
    except ValueError as e:
        log.warn("ignored a learned bypass from another worker: {error}", error=str(e))
        return
    applied = policy.learned.adopt(learned, cast(IReactorTime, reactor).seconds())
    if applied is not None:
        log.info("{learned} (learned by another worker)", learned=applied.describe())


def _master(options: Options, descriptions: list[str], directory: Path, ca: CertificateAuthority,
            bundle: Path, metricsSetup: metricssetup.MetricsSetup | None = None,
            keeper: ListKeeper | None = None) -> MasterService:
    """The master of ``--workers N``: binds the sockets, runs the workers."""
    workerOptions = _workerOptions(options, directory)
    if metricsSetup is not None:
        workerOptions += metricsSetup.workerOptions()
    if keeper is not None:
        workerOptions.append(f"--threat-manifest={keeper.directory / MANIFEST}")
    top = MasterService(descriptions, options["workers"], workerOptions, options["drain-timeout"], options["drain-delay"])
    _logStart(options, directory, ca, bundle)
    return top


def _workerOptions(options: Options, directory: Path) -> list[str]:
    """The master's options, as each worker is given them."""
    argv = [f"--ca-dir={directory.resolve()}"]
    trust = options["upstream-trust"]
    argv.append(f"--upstream-trust={trust if trust == 'system' else Path(trust).resolve()}")
    for name in ("handshake-timeout", "connect-timeout", "idle-timeout", "drain-timeout", "relay-buffer", "leaf-key", "leaf-cache",
                 "max-connections", "max-client-connections", "max-client-rate"):
        argv.append(f"--{name}={options[name]}")
    for name in ("passphrase-file", "policy"):
        if options[name] is not None:
            argv.append(f"--{name}={Path(options[name]).resolve()}")
    return argv


class MasterService(MultiService):
    """Binds every ``--listen`` socket, then hands them to a :class:`WorkerPool`."""

    def __init__(self, descriptions: list[str], workers: int, workerOptions: list[str], drain: float = 0.0,
                 delay: float = 0.0) -> None:
        super().__init__()
        self._drain = drain
        self._listening = _heldOpen(self, delay)  # the workers get SIGTERM after --drain-delay
        self._descriptions = descriptions
        self._workers = workers
        self._workerOptions = workerOptions
        self.pool: WorkerPool | None = None

    def privilegedStartService(self) -> None:
        from twisted.internet import reactor

        groups = []
        inners = [unwrapProxied(description)[1] for description in self._descriptions]
        for description in inners:
            try:
                groups.append(bindShared(description, self._workers))
            except CannotListenError as e:
                raise StartupError(f"cannot listen on {e.interface or '*'}:{e.port}: {e.socketError}") from None
            except (ValueError, KeyError, TypeError) as e:
                raise StartupError(f"bad --listen {description!r}: {e}") from None
        # Worker i gets socket i of every group.
        sockets = [[group[i] for group in groups] for i in range(self._workers)]
        backlogs = [tcpAddress(description).backlog for description in inners]
        proxied = [f"--worker-proxied={i}" for i, d in enumerate(self._descriptions) if unwrapProxied(d)[0]]
        self.pool = WorkerPool(cast(IReactorProcess, reactor), sockets, backlogs, self._workerOptions + proxied,
                               stopGrace=max(STOP_GRACE, self._drain + 5.0))
        self.pool.setServiceParent(self._listening)
        super().privilegedStartService()


def _listenPorts(descriptions: list[str]) -> list[str]:
    """The TCP ports in strports descriptions such as ``tcp:8443`` or ``tcp6:port=8443``."""
    ports = []
    for description in descriptions:
        match = re.match(r"^tcp6?:(?:port=)?(\d+)", description)
        if match and match.group(1) not in ports:
            ports.append(match.group(1))
    return ports
