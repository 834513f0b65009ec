"""Listening sockets bound by the master and adopted by the workers."""

from __future__ import annotations

import os
import socket
from typing import Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorSocket
from twisted.internet.protocol import Factory


def bindShared(description: str, count: int) -> list[socket.socket]:
    """``count`` listening sockets on one strports ``tcp``/``tcp6`` address,
    in one ``SO_REUSEPORT`` group: the kernel spreads new connections over
    them by their addresses, one socket per worker.

    Raises ``ValueError`` for another kind of description and
    ``CannotListenError`` when the address cannot be bound.
    """
    endpoint = serverFromString(None, description)
    if not isinstance(endpoint, (TCP4ServerEndpoint, TCP6ServerEndpoint)):
        raise ValueError("--workers needs tcp or tcp6 listen descriptions")
    family = socket.AF_INET6 if isinstance(endpoint, TCP6ServerEndpoint) else socket.AF_INET
    interface: str = endpoint._interface
    port: int = endpoint._port
    backlog: int = endpoint._backlog
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            skt = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(skt)
            skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            skt.bind((interface, port))
            port = skt.getsockname()[1]  # port 0: the others join the one the first got
            skt.listen(backlog)
            skt.setblocking(False)
    except OSError as e:
        for skt in sockets:
            skt.close()
        raise CannotListenError(interface, port, e) from None
    return sockets


class AdoptedPorts(Service):
    """A worker's listeners: the sockets it inherited, serving ``factory``."""

    def __init__(self, reactor: IReactorSocket, fds: Sequence[int], factory: Factory) -> None:
        self._reactor = reactor
        self._fds = list(fds)
        self._factory = factory
        self.ports: list[IListeningPort] = []

    def startService(self) -> None:
        super().startService()
        for fd in self._fds:
            probe = socket.socket(fileno=fd)
            try:
                family = probe.family
            finally:
                probe.detach()
            self.ports.append(self._reactor.adoptStreamPort(fd, family, self._factory))  # type: ignore[arg-type]
            os.close(fd)  # the port holds its own duplicate
        self._fds = []

    def stopService(self) -> Deferred[object]:
        super().stopService()
        ports, self.ports = self.ports, []
        return DeferredList([maybeDeferred(port.stopListening) for port in ports])  # type: ignore[return-value]
