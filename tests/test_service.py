"""``twistd etpmitm`` start-up: embedded defaults, and one-line errors."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import tempfile
import time
from ipaddress import ip_address
from pathlib import Path
from typing import Any, cast

from twisted.internet import reactor
from twisted.internet.interfaces import IReactorTime
from twisted.logger import capturedLogs, formatEvent
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from etpmitm.gateway.policyholder import PolicyHolder
from etpmitm.learnedmessage import to_message
from etpmitm.learning import Learned
from etpmitm.service import Options, _admission, _learnedByAnother, _logDescriptorLimit, _shareLearned, _workerOptions
from etpmitm.workers import MasterLink

REPO = Path(__file__).resolve().parent.parent
TWISTD = Path(sys.executable).parent / "twistd"
ETPMITM = Path(sys.executable).parent / "etpmitm"


# The service as twistd runs it, with a SIGHUP and a SIGUSR1 in the window between
# privilegedStartService (from which the sockets listen) and startService (which
# installs the handlers, once the reactor runs).
EARLY_SIGNALS = """
import os, signal, sys
from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver
from etpmitm.service import Options, makeService
globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
options = Options()
options.parseOptions(sys.argv[1:])
service = makeService(options)
service.privilegedStartService()
os.kill(os.getpid(), signal.SIGHUP)
os.kill(os.getpid(), signal.SIGUSR1)
print("alive after SIGHUP and SIGUSR1", flush=True)
reactor.callWhenRunning(service.startService)
reactor.callLater(5, reactor.stop)
reactor.run()
"""


class StartupTests(TestCase):
    def setUp(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="etpmitm-service-"))
        self.addCleanup(subprocess.run, ["rm", "-rf", str(self.work)])
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "STATE_DIRECTORY": str(self.work / "state")}
        (self.work / "state").mkdir()

    def twistd(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        argv = [str(TWISTD), "-n", "--pidfile=", "etpmitm", *args]
        return subprocess.run(argv, cwd=self.work, env=self.env, capture_output=True, text=True, timeout=timeout)

    def ca(self) -> Path:
        directory = self.work / "ca"
        done = subprocess.run([str(ETPMITM), "ca", "init", "--dir", str(directory)],
                              env=self.env, capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        return directory

    def assertOneLineError(self, done: subprocess.CompletedProcess[str], *fragments: str) -> None:
        self.assertNotEqual(done.returncode, 0)
        # Before logging starts the line goes to stderr; after, into the log.
        errors = [line for line in (done.stderr + done.stdout).splitlines() if "etpmitm: error:" in line]
        self.assertEqual(len(errors), 1, done.stderr + done.stdout)
        self.assertNotIn("Traceback", done.stderr + done.stdout)
        for fragment in fragments:
            self.assertIn(fragment, errors[0])

    def test_missingCADirectory(self) -> None:
        self.assertOneLineError(self.twistd("--ca-dir", str(self.work / "nope")), "cannot use CA directory", "no such directory")

    def test_unreadableCA(self) -> None:
        directory = self.ca()
        (directory / "ca.pem").write_text("not a certificate\n")
        self.assertOneLineError(self.twistd("--ca-dir", str(directory)), "cannot use CA directory")

    def test_keyDoesNotMatch(self) -> None:
        directory = self.ca()
        other = self.work / "other"
        subprocess.run([str(ETPMITM), "ca", "init", "--dir", str(other)], env=self.env, check=True, capture_output=True)
        (directory / "ca.key").write_bytes((other / "ca.key").read_bytes())
        self.assertOneLineError(self.twistd("--ca-dir", str(directory)), "cannot use CA directory")

    def test_badTrustBundle(self) -> None:
        directory = self.ca()
        self.assertOneLineError(
            self.twistd("--ca-dir", str(directory), "--upstream-trust", str(self.work / "missing.pem")),
            "cannot read --upstream-trust",
        )
        garbage = self.work / "garbage.pem"
        garbage.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
        self.assertOneLineError(
            self.twistd("--ca-dir", str(directory), "--upstream-trust", str(garbage)), "cannot load trust bundle"
        )

    def test_badPolicy(self) -> None:
        """A bad policy file ends start-up with its line and the problem."""
        directory = self.ca()
        policy = self.work / "policy.toml"
        policy.write_text('[origin]\nuntrusted = "block"\n\n[[rule]]\nmatch = ["*.bank.example"]\naction = "allow"\n')
        self.assertOneLineError(self.twistd("--ca-dir", str(directory), "--policy", str(policy)), f"{policy}:6:", "allow")
        self.assertOneLineError(self.twistd("--ca-dir", str(directory), "--policy", str(self.work / "none.toml")),
                                "cannot read the policy")

    def test_badListen(self) -> None:
        directory = self.ca()
        self.assertOneLineError(self.twistd("--ca-dir", str(directory), "--listen", "bogus:1"), "bad --listen 'bogus:1'")

    def test_badMetrics(self) -> None:
        """A bad --metrics description or a port in use: one line, with or without workers."""
        directory = self.ca()
        for workers in ("1", "2"):
            done = self.twistd("--ca-dir", str(directory), "--workers", workers, "--listen", "tcp:0", "--metrics", "bogus:1")
            self.assertOneLineError(done, "bad --metrics 'bogus:1'")
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            done = self.twistd("--ca-dir", str(directory), "--listen", "tcp:0", "--metrics", f"tcp:{port}:interface=127.0.0.1")
        self.assertOneLineError(done, f"cannot listen for --metrics on 127.0.0.1:{port}", "Address already in use")

    def test_badProxiedListen(self) -> None:
        """haproxy: wraps a tcp/tcp6 description; the error names the whole --listen."""
        directory = self.ca()
        self.assertOneLineError(self.twistd("--ca-dir", str(directory), "--listen", "haproxy:bogus:1"),
                                "bad --listen 'haproxy:bogus:1'")
        done = self.twistd("--ca-dir", str(directory), "--workers", "2", "--listen", "haproxy:tcp:70000")
        self.assertOneLineError(done, "bad --listen 'haproxy:tcp:70000': port 70000 is not in 0-65535")

    def test_portOutOfRange(self) -> None:
        """One line, not a traceback, with or without workers."""
        directory = self.ca()
        for workers in ("1", "2"):
            done = self.twistd("--ca-dir", str(directory), "--workers", workers, "--listen", "tcp:70000")
            self.assertOneLineError(done, "bad --listen 'tcp:70000': port 70000 is not in 0-65535")

    def test_badBacklog(self) -> None:
        done = self.twistd("--backlog", "0")
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("--backlog must be at least 1", done.stderr + done.stdout)

    def test_badWorkerListen(self) -> None:
        done = self.twistd("--worker-listen", "4")
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("FD:BACKLOG", done.stderr + done.stdout)

    def test_portInUse(self) -> None:
        directory = self.ca()
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            done = self.twistd("--ca-dir", str(directory), "--listen", f"tcp:{port}:interface=127.0.0.1")
        self.assertOneLineError(done, f"cannot listen on 127.0.0.1:{port}", "Address already in use")

    def test_portInUseWithWorkers(self) -> None:
        """With --workers the master binds the sockets: the same one-line error."""
        directory = self.ca()
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            done = self.twistd("--ca-dir", str(directory), "--workers", "2", "--listen", f"tcp:{port}:interface=127.0.0.1")
        self.assertOneLineError(done, f"cannot listen on 127.0.0.1:{port}", "Address already in use")

    def test_workersNeedTCPListeners(self) -> None:
        directory = self.ca()
        done = self.twistd("--ca-dir", str(directory), "--workers", "2", "--listen", f"unix:{self.work / 'sock'}")
        self.assertOneLineError(done, "bad --listen", "--workers needs tcp or tcp6")
        self.assertOneLineError(self.twistd("--ca-dir", str(directory), "--workers", "2", "--listen", "bogus:1"),
                                "bad --listen 'bogus:1'")

    def test_badWorkers(self) -> None:
        for value in ("0", "lots", "-1", "1000"):
            done = self.twistd("--workers", value)
            self.assertNotEqual(done.returncode, 0)
            self.assertIn(f"--workers must be auto or a number from 1 to 256, not {value!r}", done.stderr + done.stdout)

    def test_badOptionValue(self) -> None:
        done = self.twistd("--handshake-timeout", "-1")
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("must be a positive number of seconds", done.stderr + done.stdout)
        done = self.twistd("--leaf-key", "dsa")
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("--leaf-key must be ecdsa or rsa", done.stderr + done.stdout)

    def test_badLimit(self) -> None:
        done = self.twistd("--max-client-rate", "fast")
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("--max-client-rate must be a number from 0 (unlimited) to 999999999, not 'fast'", done.stderr + done.stdout)

    def test_embeddedDefaults(self) -> None:
        """With no options it makes an own-root CA in its data directory and listens."""
        log = self.work / "gateway.log"
        with log.open("w") as out:
            proc = subprocess.Popen([str(TWISTD), "-n", "--pidfile=", "etpmitm", "--listen", "tcp:0:interface=127.0.0.1"],
                                    cwd=self.work, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        self.addCleanup(proc.wait, 30)
        self.addCleanup(proc.terminate)
        deadline = time.monotonic() + 60
        while "starting on" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        text = log.read_text()
        self.assertIsNone(proc.poll(), text)
        ca = self.work / "state" / "ca"
        self.assertIn(f"Created an own-root CA in {ca}; install {ca / 'root.pem'} on devices", text)
        self.assertIn("etpmitm: listen on tcp:0:interface=127.0.0.1", text)
        self.assertIn("REDIRECT --to-ports 0 ", text)
        self.assertIn("file descriptor limit ", text)
        for key in ("ca.key", "root.key", "leaf-ecdsa.key"):
            self.assertEqual(stat.S_IMODE((ca / key).stat().st_mode), 0o600, key)
        self.assertNotIn("PRIVATE KEY", text)

    def signalledDuringStartUp(self, *args: str) -> tuple[Path, str]:
        """Run :data:`EARLY_SIGNALS`; the policy file and the output."""
        policy = self.work / "policy.toml"
        policy.write_text("")
        done = subprocess.run(
            [sys.executable, "-c", EARLY_SIGNALS, "--ca-dir", str(self.ca()), "--policy", str(policy),
             "--listen", "tcp:0:interface=127.0.0.1", "--audit-log", str(self.work / "audit.json"), *args],
            cwd=self.work, env=self.env, capture_output=True, text=True, timeout=60,
        )
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIn("alive after SIGHUP and SIGUSR1", done.stdout)
        self.assertIn(f"reopened the audit log {self.work / 'audit.json'}", done.stdout)
        return policy, done.stdout

    def test_reloadAndReopenDuringStartUp(self) -> None:
        """``systemctl reload`` or logrotate's SIGUSR1 right after the listening socket is up: the
        gateway lives, and reloads once its handler is in (their default action ends a process)."""
        policy, out = self.signalledDuringStartUp()
        self.assertIn(f"policy reloaded from {policy}", out)

    def test_reloadAndReopenDuringStartUpWithWorkers(self) -> None:
        """The same for the master of --workers: its reload (the threat lists, then every worker
        remaps them) runs once its handler is in."""
        _, out = self.signalledDuringStartUp("--workers", "2")
        self.assertEqual(out.count("threat lists remapped: none"), 2, out)


class LearnedBetweenWorkersTests(SynchronousTestCase):
    """A bypass one worker learns reaches the others with the same scope, or not at all."""

    def setUp(self) -> None:
        self.policy = PolicyHolder()
        self.now = cast(IReactorTime, reactor).seconds()

    def receive(self, message: dict[str, Any]) -> list[str]:
        with capturedLogs() as events:
            _learnedByAnother(self.policy, message)
        return [formatEvent(event) for event in events]

    def test_sharedAsTheMessage(self) -> None:
        sent: list[dict[str, Any]] = []
        link = cast(MasterLink, type("Link", (), {"send": staticmethod(sent.append)})())
        learned = Learned(("a.test", "192.0.2.1:443"), "unknown ca", "client", ("10.0.0.1",), 5.0)
        _shareLearned(link)(learned)
        self.assertEqual(sent, [to_message(learned)])
        _shareLearned(None)(learned)  # one process: nobody to tell
        self.assertEqual(len(sent), 1)

    def test_clientScopedStaysClientScoped(self) -> None:
        lines = self.receive(to_message(Learned(("a.test", "192.0.2.1:443"), "unknown ca", "client", ("10.0.0.1",))))
        self.assertEqual(lines, ["learned bypass for ('a.test', '192.0.2.1:443'): unknown ca (client 10.0.0.1 only)"
                                 " (learned by another worker)"])
        self.assertTrue(self.policy.learned.is_bypassed(("a.test", "192.0.2.1:443"), ip_address("10.0.0.1"), self.now))
        self.assertFalse(self.policy.learned.is_bypassed(("a.test", "192.0.2.1:443"), ip_address("10.0.0.2"), self.now))
        self.assertEqual(self.receive(to_message(Learned(("a.test", "192.0.2.1:443"), "again", "client", ("10.0.0.1",)))), [])

    def test_forEveryone(self) -> None:
        lines = self.receive(to_message(Learned(("mtls.test", "192.0.2.2:443"), "origin requests a client certificate", "all")))
        self.assertEqual(len(lines), 1)
        self.assertIn("origin requests a client certificate (learned by another worker)", lines[0])
        self.assertTrue(self.policy.learned.is_bypassed(("mtls.test", "192.0.2.2:443"), ip_address("10.9.9.9"), self.now))

    def test_badMessageIgnoredAndLogged(self) -> None:
        """An old-format message (no scope) widens nothing."""
        lines = self.receive({"learned": ["a.test", "192.0.2.1:443"], "why": "x"})
        self.assertEqual(len(lines), 1)
        self.assertIn("ignored a learned bypass from another worker: fields are", lines[0])
        self.assertEqual(len(self.policy.learned), 0)

    def test_otherMessagesAreNotForIt(self) -> None:
        self.assertEqual(self.receive({"something": "else"}), [])
        self.assertEqual(len(self.policy.learned), 0)


class LimitOptionsTests(SynchronousTestCase):
    """--max-connections, --max-client-connections and --max-client-rate."""

    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_defaults(self) -> None:
        admission = _admission(self.parse())
        self.assertEqual(
            (admission.max_connections, admission.per_client, admission.per_client_rate, admission.burst),
            (10000, 2048, 200.0, 400),
        )

    def test_values(self) -> None:
        options = self.parse("--max-connections=500", "--max-client-connections", "20", "--max-client-rate=2.5")
        admission = _admission(options)
        self.assertEqual(
            (admission.max_connections, admission.per_client, admission.per_client_rate, admission.burst),
            (500, 20, 2.5, 5),
        )

    def test_zero_is_unlimited(self) -> None:
        admission = _admission(self.parse("--max-connections=0", "--max-client-connections=0", "--max-client-rate=0"))
        for _ in range(300):
            self.assertIsNone(admission.admit(ip_address("10.0.0.1"), 0.0))

    def test_bad_values(self) -> None:
        cases = [
            ("--max-connections=-1", "--max-connections must be a whole number from 0 (unlimited) to 999999999, not '-1'"),
            ("--max-connections=lots", "--max-connections must be a whole number from 0 (unlimited) to 999999999, not 'lots'"),
            ("--max-connections=1.5", "--max-connections must be a whole number from 0 (unlimited) to 999999999, not '1.5'"),
            ("--max-client-connections=1e9", "--max-client-connections must be a whole number"),
            ("--max-client-rate=-0.5", "--max-client-rate must be a number from 0 (unlimited) to 999999999, not '-0.5'"),
            ("--max-client-rate=nan", "--max-client-rate must be a number"),
            ("--max-client-rate=inf", "--max-client-rate must be a number"),
        ]
        for argv, message in cases:
            with self.assertRaises(UsageError) as caught:
                self.parse(argv)
            self.assertIn(message, str(caught.exception))
            self.assertEqual(len(str(caught.exception).splitlines()), 1)

    def test_workers_get_them(self) -> None:
        options = self.parse("--max-connections=500", "--max-client-connections=20", "--max-client-rate=2.5")
        argv = _workerOptions(options, Path("/ca"))
        for arg in ("--max-connections=500", "--max-client-connections=20", "--max-client-rate=2.5"):
            self.assertIn(arg, argv)
        # And a worker parses them back to the same values.
        again = self.parse(*argv)
        for name in ("max-connections", "max-client-connections", "max-client-rate"):
            self.assertEqual(again[name], options[name])

    def test_drainTimeout(self) -> None:
        self.assertEqual(self.parse()["drain-timeout"], 10.0)
        argv = _workerOptions(self.parse("--drain-timeout=3"), Path("/ca"))
        self.assertIn("--drain-timeout=3.0", argv)
        self.assertEqual(self.parse(*argv)["drain-timeout"], 3.0)

    def test_drainDelay(self) -> None:
        """Off by default; the master applies it (its workers get SIGTERM after it), so workers are not told."""
        self.assertEqual(self.parse()["drain-delay"], 0.0)
        options = self.parse("--drain-delay=2.5")
        self.assertEqual(options["drain-delay"], 2.5)
        self.assertFalse([a for a in _workerOptions(options, Path("/ca")) if "drain-delay" in a])
        with self.assertRaises(UsageError):
            self.parse("--drain-delay=-1")

    def test_workerProxied(self) -> None:
        """The master tells a worker which inherited sockets take PROXY headers, by index."""
        options = self.parse("--worker-proxied=1", "--worker-proxied=3")
        self.assertEqual(options["worker-proxied"], {1, 3})
        with self.assertRaises(UsageError):
            self.parse("--worker-proxied=x")

    def test_relayBuffer(self) -> None:
        self.assertEqual(self.parse()["relay-buffer"], 256 * 1024)
        options = self.parse("--relay-buffer=65536")
        self.assertIn("--relay-buffer=65536", _workerOptions(options, Path("/ca")))
        for bad in ("1000", "999999999"):
            with self.assertRaises(UsageError) as caught:
                self.parse(f"--relay-buffer={bad}")
            self.assertEqual(str(caught.exception), "--relay-buffer must be from 16384 to 67108864 bytes")

    def test_descriptor_limit_logged(self) -> None:
        with capturedLogs() as events:
            _logDescriptorLimit(self.parse("--max-connections=10000"), 1024, 4096)
        lines = [formatEvent(event) for event in events]
        self.assertEqual(lines[0], "file descriptor limit 1024 (hard 4096)")
        self.assertIn("file descriptor limit 1024 is below the 20064 that --max-connections 10000 needs", lines[1])
        with capturedLogs() as events:
            _logDescriptorLimit(self.parse("--max-connections=10000"), 65536, 65536)
        self.assertEqual([formatEvent(event) for event in events], ["file descriptor limit 65536 (hard 65536)"])
        with capturedLogs() as events:
            _logDescriptorLimit(self.parse("--worker-listen=4:4096"), 1024, 4096)
        self.assertEqual(list(events), [])  # the master logged it


class WorkerLogTests(TestCase):
    """Workers log where the master logs: --logfile, and daemon mode."""

    def setUp(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="etpmitm-workerlog-"))
        self.addCleanup(subprocess.run, ["rm", "-rf", str(self.work)])
        self.env = {**os.environ, "PYTHONPATH": str(REPO)}
        subprocess.run([str(ETPMITM), "ca", "init", "--dir", str(self.work / "ca")],
                       env=self.env, check=True, capture_output=True, timeout=60)
        self.logfile = self.work / "gateway.log"
        self.argv = [f"--logfile={self.logfile}", "etpmitm", "--ca-dir", str(self.work / "ca"),
                     "--workers", "2", "--listen", "tcp:0:interface=127.0.0.1"]

    def waitForWorkers(self, proc: subprocess.Popen[str] | None = None) -> list[str]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (proc is None or proc.poll() is None):
            text = self.logfile.read_text() if self.logfile.exists() else ""
            serving = [line for line in text.splitlines() if "serving the master's sockets" in line]
            if len(serving) == 2:
                return serving
            time.sleep(0.1)
        self.fail(self.logfile.read_text() if self.logfile.exists() else "no log file")

    def test_logfileInTheForeground(self) -> None:
        proc = subprocess.Popen([str(TWISTD), "-n", "--pidfile=", *self.argv], cwd=self.work, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.addCleanup(proc.wait, 30)
        self.addCleanup(proc.terminate)
        self.waitForWorkers(proc)
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
        self.assertEqual(out, "")
        self.assertIn("Server Shut Down.", self.logfile.read_text())

    def test_daemon(self) -> None:
        pidfile = self.work / "twistd.pid"
        done = subprocess.run([str(TWISTD), f"--pidfile={pidfile}", *self.argv], cwd=self.work, env=self.env,
                              capture_output=True, text=True, timeout=60)
        self.assertEqual((done.returncode, done.stdout, done.stderr), (0, "", ""))
        master = int(pidfile.read_text())
        self.addCleanup(self.stop, master)
        self.waitForWorkers()

    def stop(self, pid: int) -> None:
        os.kill(pid, 15)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
