"""``twistd etpmitm`` start-up: embedded defaults, and one-line errors."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted.trial.unittest import TestCase

REPO = Path(__file__).resolve().parent.parent
TWISTD = Path(sys.executable).parent / "twistd"
ETPMITM = Path(sys.executable).parent / "etpmitm"


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
        for key in ("ca.key", "root.key", "leaf-ecdsa.key"):
            self.assertEqual(stat.S_IMODE((ca / key).stat().st_mode), 0o600, key)
        self.assertNotIn("PRIVATE KEY", text)


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
