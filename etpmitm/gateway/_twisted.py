"""The private Twisted internals the gateway depends on, fenced in one place.

Twisted has no TLS half-close upstream: its TLS wrapper answers a peer's
close_notify by closing the whole connection, and it cannot report a bare
FIN.  A relay must pass each direction's end on separately (RFC 8446
section 6.1), so :class:`HalfCloseableTLS` overrides parts of
``TLSMemoryBIOProtocol`` that read its private state.  :func:`writeNow`
reads ``twisted.internet.tcp.Connection``'s write queue to send at once when
nothing is queued.  :data:`INTERNALS` lists every private name used here;
``tests/test_twisted_internals.py`` fails with a clear message when a Twisted
release drops one, and ``pyproject.toml`` pins Twisted to the releases the
suite has passed on.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar, cast

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet.interfaces import IHalfCloseableProtocol, IProtocol, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.tcp import Connection
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

INTERNALS: dict[type, tuple[str, ...]] = {
    TLSMemoryBIOProtocol: (
        "_tlsConnection", "_appSendBuffer", "_connectWrapped", "_checkHandshakeStatus",
        "_lostTLSConnection", "_aborted", "_handshakeDone", "_flushReceiveBIO", "_flushSendBIO",
        "_tlsShutdownFinished", "_shutdownTLS", "_bufferedWrite", "_producer",
    ),
    TLSMemoryBIOFactory: ("_creatorCallable",),
    Connection: ("_writeDisconnected", "_tempDataLen", "offset", "dataBuffer", "socket"),
}
"""Private names per Twisted class; instance attributes are checked on live objects."""

_READ_SIZE = 2**14  # one record's plaintext at most: SSL_read returns one record
_RECORD = 2**14  # the most plaintext one TLS record carries
_BIO_READ = 2**18

T = TypeVar("T")


# -- sending at once ----------------------------------------------------------
#
# Twisted's ``write`` queues the bytes and sends them on the next reactor
# turn, after registering the socket for writability (an ``epoll_ctl``) and
# taking it off again once the queue drains (another).  A relay writes once
# per read, so that is two system calls and a reactor turn per chunk.  When
# the transport's queue is empty, sending straight away keeps the byte order
# and leaves only what the kernel did not take to Twisted's queue.
#
# While one received chunk is handled, sends are held and leave together at
# its end (:func:`holding`): a response and the close_notify after it then
# leave in one segment.  Sent apart, a client that reads the response and
# closes at once finds the close_notify unread, and its kernel resets.

_held: dict[Connection, list[bytes]] = {}
_depth = 0


def writeNow(transport: object, data: bytes) -> None:
    """Write ``data`` to ``transport``, sending it at once where that is safe."""
    if isinstance(transport, Connection):
        if _depth:
            _held.setdefault(transport, []).append(data)
            return
        if _idle(transport):
            try:
                sent = transport.socket.send(data)
            except OSError:
                # EAGAIN, or a broken connection: Twisted's own write path
                # meets the same condition on its next turn and reports it.
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
    transport.write(data)  # type: ignore[attr-defined]


def holding(handle: Callable[[T], None], arg: T) -> None:
    """Call ``handle(arg)``, holding :func:`writeNow` sends until it returns."""
    global _depth
    _depth += 1
    try:
        handle(arg)
    finally:
        _depth -= 1
        if not _depth and _held:
            _flushHeld()


def _flushHeld() -> None:
    while _held:
        transport, chunks = _held.popitem()
        writeNow(transport, chunks[0] if len(chunks) == 1 else b"".join(chunks))


def _idle(tcp: Connection) -> bool:
    """Connected, writable and with nothing queued (Twisted's buffer is
    ``dataBuffer[offset:]`` plus the ``_tempDataBuffer`` list)."""
    return bool(
        tcp.connected
        and not tcp._writeDisconnected
        and not tcp._tempDataLen
        and tcp.offset == len(tcp.dataBuffer)
    )


# -- TLS with half-close ------------------------------------------------------


@implementer(IHalfCloseableProtocol)
class HalfCloseableTLS(TLSMemoryBIOProtocol):
    """TLS transport whose directions close independently.

    The wrapped protocol must provide ``IHalfCloseableProtocol``; it is told
    ``readConnectionLost()`` when the peer ends its direction, and can check
    ``closeNotifyReceived`` to tell a clean end from a truncation.
    ``loseWriteConnection`` sends close_notify then FIN while reading goes on.
    """

    closeNotifyReceived = False
    _readClosed = False
    _writeClosed = False

    def makeConnection(self, transport: object) -> None:
        """Twisted's set-up without copying the transport's interfaces onto
        this protocol (``directlyProvides`` per connection is a large share
        of a new connection's cost; nothing here needs it)."""
        self._tlsConnection = self.factory._creatorCallable(self)
        self._appSendBuffer = []
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        if self._connectWrapped:
            self.wrappedProtocol.makeConnection(self)
        self._checkHandshakeStatus()

    def dataReceived(self, data: bytes) -> None:
        """Bytes from TCP; what they cause to be sent leaves together at the end."""
        holding(super().dataReceived, data)

    def _flushReceiveBIO(self) -> None:
        # Deliver everything one TCP read decrypted to in one call: a relay
        # then forwards it with one write instead of one per 16 KiB record.
        chunks: list[bytes] = []
        ended = False
        failed: Failure | None = None
        while not self._lostTLSConnection and not self._readClosed:
            try:
                chunks.append(self._tlsConnection.recv(_READ_SIZE))
            except WantReadError:
                break
            except ZeroReturnError:
                ended = True
                break
            except Error:
                failed = Failure()
                break
        if chunks and not self._aborted:
            ProtocolWrapper.dataReceived(self, chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if ended and not self._lostTLSConnection:
            self.closeNotifyReceived = True
            self._endOfInput()
        elif failed is not None:
            self._tlsShutdownFinished(failed)
        # Closing a TCP connection whose write side is already shut calls
        # connectionLost at once, which drops the TLS connection.
        if self._tlsConnection is not None:
            self._flushSendBIO()

    def _write(self, data: bytes) -> None:
        """Encrypt all of ``data``, then hand the records to TCP in one write."""
        if self._lostTLSConnection:
            return
        sent = 0
        while sent < len(data):
            try:
                sent += self._tlsConnection.send(data[sent : sent + _RECORD])
            except WantReadError:
                self._bufferedWrite(data[sent:])
                break
            except Error:
                self._tlsShutdownFinished(Failure())
                return
        self._flushSendBIO()

    def _flushSendBIO(self) -> None:
        # A memory BIO hands over all it holds up to the size asked for, so
        # only a full read means there may be more (and an empty BIO costs a
        # raised WantReadError, which is worth avoiding per write).
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self._tlsConnection.bio_read(_BIO_READ)
            except WantReadError:
                break
            chunks.append(chunk)
            if len(chunk) < _BIO_READ:
                break
        if chunks:
            writeNow(self.transport, chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def readConnectionLost(self) -> None:
        """The underlying TCP connection got a FIN."""
        if self._readClosed or self._lostTLSConnection:
            return
        if not self._handshakeDone:
            self._tlsShutdownFinished(None)
            return
        # Every record that arrived was decrypted in dataReceived, so no
        # close_notify came first: this FIN is a truncation.
        self._endOfInput()

    def writeConnectionLost(self) -> None:
        """The underlying TCP write side finished closing."""

    def _endOfInput(self) -> None:
        self._readClosed = True
        wrapped = IHalfCloseableProtocol(self.wrappedProtocol, None)
        if wrapped is None:
            self._shutdownTLS()
            self._tlsShutdownFinished(None)
            return
        wrapped.readConnectionLost()
        if self._writeClosed or self.disconnecting:
            # Our direction has ended too (loseWriteConnection, or a
            # loseConnection whose close_notify now has its answer).
            self._tcp().loseConnection()

    def loseWriteConnection(self, closeNotify: bool = True) -> None:
        """End our direction: close_notify (unless mirroring a truncation), then FIN."""
        if self._writeClosed or self._lostTLSConnection or self.disconnecting:
            return
        if not self._handshakeDone or self._appSendBuffer:
            self.loseConnection()
            return
        self._writeClosed = True
        if closeNotify:
            try:
                self._tlsConnection.shutdown()
            except Error:
                pass
            self._flushSendBIO()
        if self._readClosed:
            self._tcp().loseConnection()
        else:
            self._tcp().loseWriteConnection()

    def _tcp(self) -> ITCPTransport:
        return cast(ITCPTransport, self.transport)


def onlyProtocol(protocol: IProtocol) -> Factory[Any]:
    """A quiet factory whose one product is ``protocol`` (already built)."""
    factory: Factory[Any] = Factory.forProtocol(lambda: protocol)
    factory.noisy = False
    return factory


def halfCloseableTLSFactory(creator: object, isClient: bool, protocol: IProtocol) -> TLSMemoryBIOFactory:
    """A factory of one :class:`HalfCloseableTLS` around ``protocol``, for an endpoint to connect.

    ``creator`` is an ``IOpenSSLClientConnectionCreator`` (``isClient``) or
    ``IOpenSSLServerConnectionCreator``.
    """
    factory = TLSMemoryBIOFactory(creator, isClient, onlyProtocol(protocol))  # type: ignore[arg-type]
    factory.protocol = HalfCloseableTLS
    factory.noisy = False
    return factory


def halfCloseableTLS(creator: object, isClient: bool, protocol: IProtocol) -> HalfCloseableTLS:
    """A :class:`HalfCloseableTLS` around ``protocol``, not yet connected."""
    tls = halfCloseableTLSFactory(creator, isClient, protocol).buildProtocol(None)
    assert isinstance(tls, HalfCloseableTLS)
    return tls


def missingInternals(tls: TLSMemoryBIOProtocol, tcp: Connection) -> list[str]:
    """The names in :data:`INTERNALS` that a connected ``tls`` over ``tcp`` lacks."""
    samples: dict[type, object] = {TLSMemoryBIOProtocol: tls, TLSMemoryBIOFactory: tls.factory, Connection: tcp}
    return [
        f"{cls.__module__}.{cls.__qualname__}.{name}"
        for cls, names in INTERNALS.items()
        for name in names
        if not hasattr(samples[cls], name)
    ]
