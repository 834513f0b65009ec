"""bindShared: one SO_REUSEPORT group per listen description."""

from __future__ import annotations

import socket

from twisted.internet.error import CannotListenError
from twisted.trial.unittest import SynchronousTestCase

from etpmitm.sharedports import bindShared


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
