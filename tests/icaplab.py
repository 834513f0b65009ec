"""c-icap with ClamAV in a lab namespace, for end-to-end scanning tests.

:class:`IcapLab` starts Debian's ``clamd`` (clamav-daemon) and ``c-icap``
with its ``virus_scan`` service (libc-icap-mod-virus-scan, engine module
``clamd_mod`` talking to clamd's local socket) inside one namespace of a
:class:`tests.lab.Lab`.  Everything it needs is written into its own work
directory: no system configuration is read or changed (except c-icap's
shipped magic file), there is no network update and no freshclam.  clamd's
only signature is made at run time with ``sigtool --hex-dump`` from the EICAR
test string, which :func:`eicar` assembles from pieces so that no file in
the repository is itself flagged.

Use::

    with Lab() as lab, IcapLab(lab.gateway, lab.workdir / "icap") as icap:
        icap.url            # icap://127.0.0.1:1344/avscan (REQMOD and RESPMOD)
        icap.threat         # the name clamd reports for EICAR
        icap.server_log, icap.access_log, icap.clamd_log
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from tests.lab import Namespace, lab_unavailable

__all__ = ["IcapLab", "eicar", "icap_unavailable"]

SIGNATURE = "Etpmitm-Test-EICAR"
MODULES = Path("/usr/lib/x86_64-linux-gnu/c_icap")
MAGIC = Path("/etc/c-icap/c-icap.magic")
TEMPLATES = Path("/usr/share/c_icap/templates")


def eicar() -> bytes:
    """The 68-byte EICAR anti-virus test file."""
    parts = ["X5O!P%@AP[4\\PZX54(P^)7CC)7}$", "EICAR-STANDARD-", "ANTIVIRUS-", "TEST-FILE!$H+H*"]
    return "".join(parts).encode("ascii")


def icap_unavailable() -> str | None:
    """Why the c-icap lab cannot run here, or None."""
    why = lab_unavailable()
    if why is not None:
        return why
    for tool in ("c-icap", "clamd", "sigtool"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install c-icap libc-icap-mod-virus-scan clamav-daemon clamav)"
    for path in (MODULES / "virus_scan.so", MODULES / "clamd_mod.so", MAGIC):
        if not path.exists():
            return f"{path} is missing (apt-get install c-icap libc-icap-mod-virus-scan)"
    return None


class IcapLab:
    """clamd + c-icap in *ns*, configured in *workdir*; a context manager."""

    service = "avscan"

    def __init__(self, ns: Namespace, workdir: Path, address: str = "127.0.0.1", port: int = 1344,
                 max_size: str = "200M") -> None:
        self.ns = ns
        self.max_size = max_size
        """clamd's MaxFileSize, MaxScanSize, StreamMaxLength and c-icap's
        virus_scan.MaxObjectSize: bodies above it are not scanned."""
        self.dir = Path(workdir)
        self.address = address
        self.port = port
        self.clamd: subprocess.Popen[bytes] | None = None
        self.cicap: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The service URL, for both REQMOD and RESPMOD."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"icap://{host}:{self.port}/{self.service}"

    @property
    def threat(self) -> str:
        """What clamd calls EICAR with this lab's signature (unofficial: not from a signed CVD)."""
        return f"{SIGNATURE}.UNOFFICIAL"

    @property
    def server_log(self) -> Path:
        return self.dir / "server.log"

    @property
    def access_log(self) -> Path:
        return self.dir / "access.log"

    @property
    def clamd_log(self) -> Path:
        return self.dir / "clamd.log"

    @property
    def clamd_socket(self) -> Path:
        return self.dir / "clamd.sock"

    def __enter__(self) -> IcapLab:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for sub in ("db", "tmp"):
            (self.dir / sub).mkdir(exist_ok=True)
        self._signatures()
        self._start_clamd()
        self.start_icap()

    def _signatures(self) -> None:
        """An .ndb body signature (any file type, any offset) for EICAR, via sigtool."""
        dump = subprocess.run(["sigtool", "--hex-dump"], input=eicar(), capture_output=True, check=True, timeout=30)
        hex_ = dump.stdout.decode("ascii").strip()
        if not hex_ or len(hex_) != 2 * len(eicar()):
            raise RuntimeError(f"sigtool --hex-dump gave {hex_[:80]!r}")
        (self.dir / "db" / "etpmitm-test.ndb").write_text(f"{SIGNATURE}:0:*:{hex_}\n")

    def _start_clamd(self) -> None:
        conf = self.dir / "clamd.conf"
        conf.write_text(
            f"LocalSocket {self.clamd_socket}\n"
            f"DatabaseDirectory {self.dir / 'db'}\n"
            f"TemporaryDirectory {self.dir / 'tmp'}\n"
            f"LogFile {self.clamd_log}\n"
            f"PidFile {self.dir / 'clamd.pid'}\n"
            "Foreground yes\n"
            "User root\n"
            "LogTime yes\n"
            "SelfCheck 0\n"
            f"MaxFileSize {self.max_size}\n"
            f"MaxScanSize {self.max_size}\n"
            f"StreamMaxLength {self.max_size}\n"
        )
        self.clamd = self.ns.popen(["clamd", "--config-file", conf])
        deadline = time.monotonic() + 60
        while not self._clamd_ready():
            if self.clamd.poll() is not None:
                raise RuntimeError(f"clamd exited with {self.clamd.returncode}:\n{self.ns.lab.log(self.clamd)[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"clamd did not answer PING on {self.clamd_socket} in 60s")
            time.sleep(0.1)

    def _clamd_ready(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(str(self.clamd_socket))
                s.sendall(b"zPING\0")
                return s.recv(16).startswith(b"PONG")
        except OSError:
            return False

    def start_icap(self) -> None:
        """Start c-icap (again, after :meth:`stop_icap`)."""
        conf = self.dir / "c-icap.conf"
        conf.write_text(
            f"PidFile {self.dir / 'c-icap.pid'}\n"
            f"CommandsSocket {self.dir / 'c-icap.ctl'}\n"
            "Timeout 60\n"
            "MaxKeepAliveRequests 0\n"
            "KeepAliveTimeout 600\n"
            "StartServers 1\n"
            "MaxServers 2\n"
            "MinSpareThreads 4\n"
            "MaxSpareThreads 20\n"
            "ThreadsPerChild 20\n"
            f"Port {self.address}:{self.port}\n"
            f"TmpDir {self.dir / 'tmp'}\n"
            "MaxMemObject 131072\n"
            "DebugLevel 1\n"
            f"ModulesDir {MODULES}\n"
            f"ServicesDir {MODULES}\n"
            f"TemplateDir {TEMPLATES}/\n"
            "TemplateDefaultLanguage en\n"
            f"LoadMagicFile {MAGIC}\n"
            f"ServerLog {self.server_log}\n"
            f"AccessLog {self.access_log}\n"
            "Module common clamd_mod.so\n"
            f"clamd_mod.ClamdSocket {self.clamd_socket}\n"
            "Service virus_scan virus_scan.so\n"
            # simple mode: no early (partial) answers, so a clean body gets a 204
            f"ServiceAlias {self.service} virus_scan?allow204=on&sizelimit=off&mode=simple\n"
            "virus_scan.ScanFileTypes TEXT DATA EXECUTABLE ARCHIVE GIF JPEG MSOFFICE\n"
            "virus_scan.SendPercentData 0\n"
            "virus_scan.StartSendPercentDataAfter 0\n"
            "virus_scan.Allow204Responces on\n"
            "virus_scan.PassOnError off\n"
            f"virus_scan.MaxObjectSize {self.max_size}\n"
            "virus_scan.DefaultEngine clamd\n"
        )
        self.cicap = self.ns.popen(["c-icap", "-N", "-D", "-d", "1", "-f", conf])
        self.ns.wait_for_port(self.port, self.address, timeout=30, proc=self.cicap)

    def stop_icap(self) -> None:
        """Stop c-icap (clamd keeps running): the ICAP server is down."""
        if self.cicap is not None:
            _stop(self.cicap)
            self.cicap = None
        deadline = time.monotonic() + 10
        while self.ns.listening(self.port, self.address) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        self.stop_icap()
        if self.clamd is not None:
            _stop(self.clamd)
            self.clamd = None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process the lab started (its own session: the whole group)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
