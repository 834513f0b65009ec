"""TCP in memory, with half-close, resets and back-pressure, for the core's tests.

Twisted's ``iosim`` treats an abort like a close and cannot half-close, and
``StringTransport`` connects nothing; the connection core needs both ends
of two real-looking TCP connections.  :class:`Wire` joins two protocols;
:meth:`Net.flush` delivers what each side wrote, in order, honouring
``pauseProducing`` (a paused reader receives nothing, and its peer's
registered producer is paused once too much is in flight).  Each transport
behaves as ``twisted.internet.tcp.Connection`` does for the calls the
gateway makes: a FIN reaches an ``IHalfCloseableProtocol`` as
``readConnectionLost``; ``loseConnection`` flushes, then closes both ways;
``abortConnection`` resets (the peer sees ``ConnectionLost``).  A paused
reader still hears its peer's FIN or reset at once, unless its end
``holdsEndsWhilePaused`` as Twisted's sockets do (they read nothing while
paused); ``getHandle()`` offers a non-blocking peek at what waits.
"""

from __future__ import annotations

import socket
from collections import deque
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol, IProtocol, IPushProducer
from twisted.python.failure import Failure

IN_FLIGHT_LIMIT = 64 * 1024
"""Bytes undelivered to a paused reader before the writer's producer is paused."""


class MemoryTCP:
    """One end of an in-memory TCP connection."""

    def __init__(self, net: Net, protocol: IProtocol, host: IPv4Address, peer: IPv4Address) -> None:
        self.net = net
        self.protocol = protocol
        self.host, self.peer = host, peer
        self.other: MemoryTCP
        self.inbox: deque[tuple[str, bytes]] = deque()
        self.connected = True
        self.disconnecting = False
        self.writeEnded = False
        self.readEnded = False
        self.paused = False
        self.producer: IPushProducer | None = None
        self.producerPaused = False
        self.noDelay = False
        self.bufferSize = 65536
        self.aborted = False
        self.written = 0
        self.holdsEndsWhilePaused = False

    # -- ITCPTransport ----------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.writeEnded or not self.connected or not data:
            return
        self.written += len(data)
        self.other.inbox.append(("data", data))
        if self.producer is not None and not self.producerPaused and self.other.pendingBytes() > IN_FLIGHT_LIMIT:
            self.producerPaused = True
            self.producer.pauseProducing()

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseWriteConnection(self) -> None:
        if not self.writeEnded and self.connected:
            self.writeEnded = True
            self.other.inbox.append(("fin", b""))

    def loseConnection(self) -> None:
        if self.disconnecting or not self.connected:
            return
        self.disconnecting = True
        self.loseWriteConnection()
        self.inbox.clear()  # unread input is dropped
        self.inbox.append(("closed", b""))  # completes once the peer has read all we wrote

    def abortConnection(self) -> None:
        if not self.connected:
            return
        self.aborted = True
        self.disconnecting = True
        self.writeEnded = True
        self.inbox.clear()
        self.inbox.append(("aborted", b""))
        if self.other.connected:
            self.other.inbox.clear()
            self.other.inbox.append(("reset", b""))

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.loseConnection()

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError("a producer is already registered")
        self.producer, self.producerPaused = producer, False

    def unregisterProducer(self) -> None:
        self.producer = None

    def getPeer(self) -> IPv4Address:
        return self.peer

    def getHost(self) -> IPv4Address:
        return self.host

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.noDelay = enabled

    def getTcpNoDelay(self) -> bool:
        return self.noDelay

    def getHandle(self) -> Any:
        return MemorySocket(self)

    # -- delivery ----------------------------------------------------------------

    def pendingBytes(self) -> int:
        return sum(len(data) for kind, data in self.inbox if kind == "data")

    def deliverOne(self) -> bool:
        """Deliver the next event queued for this end; False if there was none to deliver."""
        if not self.connected or not self.inbox:
            return False
        kind, data = self.inbox[0]
        if self.paused and (kind == "data" or (self.holdsEndsWhilePaused and kind in ("fin", "reset"))):
            return False
        if kind == "closed" and self.other.connected and self.other.pendingBytes():
            return False
        self.inbox.popleft()
        if kind == "data" and len(data) > self.bufferSize:  # one read takes at most bufferSize
            data, rest = data[: self.bufferSize], data[self.bufferSize :]
            self.inbox.appendleft(("data", rest))
        if kind == "data":
            self.protocol.dataReceived(data)
            self.other.drained()
        elif kind == "fin":
            self.readEnded = True
            halfCloseable = IHalfCloseableProtocol(self.protocol, None)
            if halfCloseable is not None:
                halfCloseable.readConnectionLost()
            else:
                self.lost(ConnectionDone())
        elif kind == "closed":
            self.lost(ConnectionDone())
        elif kind == "aborted":
            self.lost(ConnectionAborted())
        elif kind == "reset":
            self.lost(ConnectionLost("Connection reset by peer"))
        return True

    def drained(self) -> None:
        """The peer read some of what we wrote: resume our producer if it was paused."""
        if self.producer is not None and self.producerPaused and self.other.pendingBytes() <= IN_FLIGHT_LIMIT:
            self.producerPaused = False
            self.producer.resumeProducing()

    def lost(self, reason: Exception) -> None:
        if not self.connected:
            return
        self.connected = False
        self.inbox.clear()
        if not self.writeEnded and self.other.connected and not isinstance(reason, ConnectionLost):
            self.writeEnded = True  # a closed socket sends its FIN
            self.other.inbox.append(("fin", b""))
        self.protocol.connectionLost(Failure(reason))


class MemorySocket:
    """What an end's ``getHandle()`` offers: a non-blocking peek, nothing else."""

    def __init__(self, end: MemoryTCP) -> None:
        self._end = end

    def recv(self, size: int, flags: int = 0) -> bytes:
        if flags != socket.MSG_PEEK | socket.MSG_DONTWAIT:
            raise NotImplementedError("an in-memory socket only peeks")
        if self._end.inbox:
            kind, data = self._end.inbox[0]
            if kind == "data":
                return data[:size]
            if kind == "fin":
                return b""
            if kind == "reset":
                raise ConnectionResetError("Connection reset by peer")
        raise BlockingIOError("nothing waits")


class Net:
    """The in-memory connections of one test."""

    def __init__(self) -> None:
        self.ends: list[MemoryTCP] = []

    def wire(self, server: IProtocol, client: IProtocol, serverAddress: IPv4Address, clientAddress: IPv4Address) -> tuple[MemoryTCP, MemoryTCP]:
        """Connect ``client`` to ``server``; returns (server end, client end)."""
        serverEnd = MemoryTCP(self, server, serverAddress, clientAddress)
        clientEnd = MemoryTCP(self, client, clientAddress, serverAddress)
        serverEnd.other, clientEnd.other = clientEnd, serverEnd
        self.ends += [serverEnd, clientEnd]
        server.makeConnection(serverEnd)  # type: ignore[arg-type]
        client.makeConnection(clientEnd)  # type: ignore[arg-type]
        return serverEnd, clientEnd

    def flush(self, limit: int = 100_000) -> None:
        """Deliver until nothing more can move."""
        for _ in range(limit):
            if not any(end.deliverOne() for end in list(self.ends)):
                return
        raise AssertionError("the in-memory network did not settle")
