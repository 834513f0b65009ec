"""bindShared: one SO_REUSEPORT group per listen description; backlogs;
taking a socket out of its group and back."""

from __future__ import annotations

import errno
import shutil
import socket
import subprocess
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.trial.unittest import SynchronousTestCase

from etpmitm.sharedports import AdoptedPorts, bindShared, stopListening, withBacklog


def listenBacklog(port: int) -> list[int]:
    """The backlog of each socket listening on 127.0.0.1:port, as ss shows it (Send-Q)."""
    out = subprocess.run(["ss", "-H", "-l", "-t", "-n", f"sport = :{port}"],
                         capture_output=True, text=True, check=True).stdout
    return [int(line.split()[2]) for line in out.splitlines()]


def accepted(skt: socket.socket) -> int:
    """How many connections wait in skt's queue (accepts and closes them)."""
    skt.setblocking(False)
    count = 0
    while True:
        try:
            skt.accept()[0].close()
        except BlockingIOError:
            return count
        count += 1


class BindSharedTests(SynchronousTestCase):
    def group(self, description: str, count: int) -> list[socket.socket]:
        sockets = bindShared(description, count)
        for skt in sockets:
            self.addCleanup(skt.close)
        return sockets

    def test_portZeroGroupSharesOnePort(self) -> None:
        sockets = self.group("tcp:0:interface=127.0.0.1", 3)
        self.assertEqual(len({skt.getsockname() for skt in sockets}), 1)
        for skt in sockets:
            self.assertEqual(skt.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT), 1)
            self.assertFalse(skt.getblocking())

    def test_connectionsReachTheGroup(self) -> None:
        sockets = self.group("tcp:0:interface=127.0.0.1", 2)
        port = sockets[0].getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(32)]
        for client in clients:
            self.addCleanup(client.close)
        accepted = []
        for skt in sockets:
            skt.setblocking(True)
            skt.settimeout(0.5)
            count = 0
            try:
                while True:
                    skt.accept()[0].close()
                    count += 1
            except socket.timeout:
                pass
            accepted.append(count)
        self.assertEqual(sum(accepted), 32)
        self.assertTrue(all(accepted), f"the kernel gave every socket some: {accepted}")

    def test_ipv6(self) -> None:
        sockets = self.group("tcp6:0:interface=\\:\\:1", 2)
        self.assertEqual(sockets[0].family, socket.AF_INET6)

    def test_portInUse(self) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with self.assertRaises(CannotListenError) as caught:
                bindShared(f"tcp:{port}:interface=127.0.0.1", 2)
        self.assertEqual((caught.exception.interface, caught.exception.port), ("127.0.0.1", port))

    def test_onlyTCP(self) -> None:
        with self.assertRaises(ValueError):
            bindShared("unix:/tmp/nowhere.sock", 2)


class BacklogTests(SynchronousTestCase):
    def test_addedUnlessNamed(self) -> None:
        self.assertEqual(withBacklog("tcp:8443", 4096), "tcp:8443:backlog=4096")
        self.assertEqual(withBacklog("tcp6:8443:interface=\\:\\:", 7), "tcp6:8443:interface=\\:\\::backlog=7")
        self.assertEqual(withBacklog("tcp:8443:backlog=10", 4096), "tcp:8443:backlog=10")
        self.assertEqual(withBacklog("unix:/run/x.sock", 5), "unix:/run/x.sock:backlog=5")

    def test_otherKindsUnchanged(self) -> None:
        self.assertEqual(withBacklog("systemd:domain=INET:index=0", 4096), "systemd:domain=INET:index=0")

    def test_badDescriptions(self) -> None:
        for description in ("tcp:70000", "tcp6:-1", "tcp:port=x", "tcp:8443:nokey=1"):
            with self.assertRaises((ValueError, KeyError, TypeError), msg=description):
                withBacklog(description, 4096)
        with self.assertRaises(ValueError) as caught:
            withBacklog("tcp:70000", 4096)
        self.assertEqual(str(caught.exception), "port 70000 is not in 0-65535")

    def test_groupListensWithTheBacklog(self) -> None:
        if shutil.which("ss") is None:
            raise self.skipTest("needs ss (iproute2)")
        sockets = bindShared(withBacklog("tcp:0:interface=127.0.0.1", 1234), 2)
        for skt in sockets:
            self.addCleanup(skt.close)
        self.assertEqual(listenBacklog(sockets[0].getsockname()[1]), [1234, 1234])


class StopListeningTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sockets = bindShared("tcp:0:interface=127.0.0.1:backlog=64", 2)
        for skt in self.sockets:
            self.addCleanup(skt.close)
        self.address = self.sockets[0].getsockname()

    def connect(self, count: int) -> None:
        for _ in range(count):
            client = socket.create_connection(self.address, timeout=5)
            self.addCleanup(client.close)

    def test_connectionsGoToTheOthers(self) -> None:
        stopListening(self.sockets[0])
        self.connect(20)
        self.assertEqual(self.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN), 0)
        self.assertEqual(accepted(self.sockets[1]), 20)

    def test_refusedWhenNoneListens(self) -> None:
        for skt in self.sockets:
            stopListening(skt)
            stopListening(skt)  # twice: no error
        with self.assertRaises(ConnectionRefusedError):
            self.connect(1)

    def test_listenAgainRejoins(self) -> None:
        for skt in self.sockets:
            stopListening(skt)
        self.sockets[0].listen(64)
        self.assertEqual(self.sockets[0].getsockname(), self.address)
        self.connect(3)
        self.assertEqual(accepted(self.sockets[0]), 3)

    def test_stoppedTwiceThenListeningReadsWhatClientsSend(self) -> None:
        """A worker that died before it listened is stopped a second time: the
        socket must come back whole, its connections not at end-of-file."""
        for skt in self.sockets:
            stopListening(skt)
            stopListening(skt)
        self.sockets[0].listen(64)
        client = socket.create_connection(self.address, timeout=5)
        self.addCleanup(client.close)
        server, _ = self.sockets[0].accept()
        self.addCleanup(server.close)
        server.setblocking(False)
        with self.assertRaises(BlockingIOError):  # nothing sent yet: no end-of-file either
            server.recv(1)
        client.sendall(b"hello")
        server.settimeout(5)
        self.assertEqual(server.recv(5), b"hello")

    def test_queuedConnectionsAreReset(self) -> None:
        """Not left hanging: reset (or moved, with net.ipv4.tcp_migrate_req)."""
        stopListening(self.sockets[1])
        client = socket.create_connection(self.address, timeout=5)
        self.addCleanup(client.close)
        stopListening(self.sockets[0])
        with self.assertRaises(ConnectionResetError):
            client.recv(1)


class FakeReactor:
    def __init__(self) -> None:
        self.adopted: list[tuple[int, socket.AddressFamily, bool]] = []

    def adoptStreamPort(self, fd: int, family: socket.AddressFamily, factory: Any) -> object:
        probe = socket.socket(fileno=fd)
        try:
            self.adopted.append((fd, family, bool(probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))))
        finally:
            probe.detach()
        return _FakePort()


class _FakePort:
    stopped = False

    def stopListening(self) -> None:
        self.stopped = True


class AdoptedPortsTests(SynchronousTestCase):
    def test_listensAgainThenAdopts(self) -> None:
        """The worker puts the socket back in its group, with its backlog, before accepting."""
        [skt] = bindShared("tcp:0:interface=127.0.0.1", 1)
        self.addCleanup(skt.close)
        stopListening(skt)
        fd = skt.dup().detach()
        reactor = FakeReactor()
        ports = AdoptedPorts(reactor, [(fd, 321)], None)  # type: ignore[arg-type]
        ports.startService()
        self.assertEqual(reactor.adopted, [(fd, socket.AF_INET, True)])
        if shutil.which("ss") is not None:
            self.assertEqual(listenBacklog(skt.getsockname()[1]), [321])

    def test_stopTakesTheSocketOutOfItsGroup(self) -> None:
        """A stopping worker stops the socket it shares with the master listening
        (a balancer's check of the port then fails), and closes its descriptor."""
        [skt] = bindShared("tcp:0:interface=127.0.0.1", 1)
        self.addCleanup(skt.close)
        fd = skt.dup().detach()
        ports = AdoptedPorts(FakeReactor(), [(fd, 64)], None)  # type: ignore[arg-type]
        ports.startService()
        self.assertEqual(skt.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN), 1)
        [port] = ports.ports
        ports.stopService()
        self.assertTrue(port.stopped)  # type: ignore[attr-defined]
        self.assertEqual(skt.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN), 0)
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(skt.getsockname(), timeout=5)
        with self.assertRaises(OSError) as caught:
            socket.socket(fileno=fd)
        self.assertEqual(caught.exception.errno, errno.EBADF)
