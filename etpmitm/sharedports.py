"""Listening sockets bound by the master and adopted by the workers."""

from __future__ import annotations

import re
import socket
from typing import Sequence

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorSocket
from twisted.internet.protocol import Factory

_TAKES_BACKLOG = {"tcp", "tcp6", "ssl", "unix"}
"""strports kinds with a ``backlog`` keyword."""


@attrs.frozen
class TCPAddress:
    """What a ``tcp``/``tcp6`` listen description asks for."""

    family: socket.AddressFamily
    interface: str
    port: int
    backlog: int


def tcpAddress(description: str) -> TCPAddress:
    """The address in a strports ``tcp``/``tcp6`` description.

    Raises ``ValueError`` for another kind, or a port out of range.
    """
    endpoint = serverFromString(None, description)
    if not isinstance(endpoint, (TCP4ServerEndpoint, TCP6ServerEndpoint)):
        raise ValueError("--workers needs tcp or tcp6 listen descriptions")
    family = socket.AF_INET6 if isinstance(endpoint, TCP6ServerEndpoint) else socket.AF_INET
    # Private attributes: Twisted's server endpoints have no public accessors.
    address = TCPAddress(family, endpoint._interface, endpoint._port, endpoint._backlog)
    if not 0 <= address.port <= 65535:
        raise ValueError(f"port {address.port} is not in 0-65535")
    return address


def withBacklog(description: str, backlog: int) -> str:
    """``description`` listening with ``backlog``, unless it names its own.

    Raises ``ValueError`` (or ``KeyError``/``TypeError`` from strports) for a
    ``tcp``/``tcp6`` description that does not parse or has a port out of
    range; other kinds are checked when they are used.
    """
    parts = re.split(r"(?<!\\):", description)
    kind = parts[0].lower()
    if kind in _TAKES_BACKLOG and not any(part.startswith("backlog=") for part in parts[1:]):
        description = f"{description}:backlog={backlog}"
    if kind in ("tcp", "tcp6"):
        tcpAddress(description)
    return description


def bindShared(description: str, count: int) -> list[socket.socket]:
    """``count`` listening sockets on one strports ``tcp``/``tcp6`` address,
    in one ``SO_REUSEPORT`` group: the kernel spreads new connections over
    them by their addresses, one socket per worker.

    Raises ``ValueError`` for another kind of description and
    ``CannotListenError`` when the address cannot be bound.
    """
    address = tcpAddress(description)
    port = address.port
    sockets: list[socket.socket] = []
    try:
        if port == 0:
            # Bind every socket to an explicit port, so that each keeps it
            # while it is out of its group (stopListening).
            sockets.append(_reusePortSocket(address.family, address.interface, 0))
            port = sockets[0].getsockname()[1]
        for _ in range(count):
            skt = _reusePortSocket(address.family, address.interface, port)
            sockets.append(skt)
            skt.listen(address.backlog)
            skt.setblocking(False)
    except OSError as e:
        for skt in sockets:
            skt.close()
        raise CannotListenError(address.interface, port, e) from None
    if address.port == 0:
        sockets.pop(0).close()
    return sockets


def _reusePortSocket(family: socket.AddressFamily, interface: str, port: int) -> socket.socket:
    skt = socket.socket(family, socket.SOCK_STREAM)
    try:
        skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        skt.bind((interface, port))
    except OSError:
        skt.close()
        raise
    return skt


def stopListening(skt: socket.socket) -> None:
    """Take ``skt`` out of its ``SO_REUSEPORT`` group; it stays bound.

    New connections go to the group's other sockets (or are refused when
    none is left).  Connections already in its queue are reset, or moved
    to another socket of the group where ``net.ipv4.tcp_migrate_req`` is 1.
    ``listen()`` puts it back in the group, with no new ``bind()``.

    A socket that is not listening (its worker died before it listened) is
    left alone: Linux fails ``shutdown(SHUT_RD)`` on it with ``ENOTCONN``
    but still marks it shut for reading, a mark that ``listen()`` keeps and
    every connection it accepts inherits, so each would read end-of-file at
    once.
    """
    if not skt.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        return
    skt.shutdown(socket.SHUT_RD)


class AdoptedPorts(Service):
    """A worker's listeners: the sockets it inherited, serving ``factory``.

    Each inherited socket comes with its backlog: the worker listens on it
    again (the master stops it listening while its worker is down), then
    accepts on it.
    """

    def __init__(self, reactor: IReactorSocket, fds: Sequence[tuple[int, int]], factory: Factory) -> None:
        self._reactor = reactor
        self._fds = list(fds)
        self._factory = factory
        self.ports: list[IListeningPort] = []
        self._sockets: list[socket.socket] = []

    def startService(self) -> None:
        super().startService()
        for fd, backlog in self._fds:
            probe = socket.socket(fileno=fd)
            try:
                family = probe.family
                probe.listen(backlog)
            finally:
                probe.detach()
            self.ports.append(self._reactor.adoptStreamPort(fd, family, self._factory))  # type: ignore[arg-type]
            # The port holds its own duplicate; this one takes the socket out
            # of its group when the worker stops (the master holds it too).
            self._sockets.append(socket.socket(fileno=fd))
        self._fds = []

    def stopService(self) -> Deferred[object]:
        super().stopService()
        ports, self.ports = self.ports, []
        stopped = DeferredList([maybeDeferred(port.stopListening) for port in ports])
        # A stopping worker accepts no more; without this the master's copy
        # would keep queueing connections that nobody accepts.
        sockets, self._sockets = self._sockets, []
        for skt in sockets:
            stopListening(skt)
            skt.close()
        return stopped  # type: ignore[return-value]
