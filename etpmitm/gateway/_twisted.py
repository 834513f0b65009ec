"""The private Twisted internals the gateway depends on, fenced in one place.

Twisted has no TLS half-close upstream: its TLS wrapper answers a peer's
close_notify by closing the whole connection, and it cannot report a bare
FIN.  A relay must pass each direction's end on separately (RFC 8446
section 6.1), so :class:`HalfCloseableTLS` overrides parts of
``TLSMemoryBIOProtocol`` that read its private state.  :func:`writeNow`
reads ``twisted.internet.tcp.Connection``'s write queue to send at once when
nothing is queued.  :func:`quietEvents` lets a relayed socket's reactor
events skip the per-event logging context (it wraps the epoll reactor's
``log`` module reference).  :data:`INTERNALS` lists every private name used here;
``tests/test_twisted_internals.py`` fails with a clear message when a Twisted
release drops one, and ``pyproject.toml`` pins Twisted to the releases the
suite has passed on.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar, cast

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet import epollreactor
from twisted.internet.interfaces import IHalfCloseableProtocol, IProtocol, ITCPTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.tcp import Connection
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python import log as legacyLog
from twisted.python.failure import Failure
from zope.interface import implementer

from etpmitm.gateway._openssl import decryptAvailable, decryptFed, encryptAll, feed, shed, takeOutgoing

INTERNALS: dict[type, tuple[str, ...]] = {
    TLSMemoryBIOProtocol: (
        "_tlsConnection", "_appSendBuffer", "_connectWrapped", "_checkHandshakeStatus",
        "_lostTLSConnection", "_aborted", "_handshakeDone", "_flushReceiveBIO", "_flushSendBIO",
        "_tlsShutdownFinished", "_shutdownTLS", "_bufferedWrite", "_producer", "_unbufferPendingWrites",
    ),
    TLSMemoryBIOFactory: ("_creatorCallable",),
    Connection: ("_writeDisconnected", "_tempDataLen", "offset", "dataBuffer", "socket"),
}
MODULE_INTERNALS: dict[object, tuple[str, ...]] = {
    epollreactor: ("log",),
    epollreactor.EPollReactor: ("doPoll", "_doReadOrWrite"),
}
"""Private module-level names (and methods whose use of them matters) read here."""
"""Private names per Twisted class; instance attributes are checked on live objects."""


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


# -- reactor events without the logging context -----------------------------
#
# The epoll reactor runs every event through ``log.callWithLogger``: the
# selectable's ``logPrefix()``, a new context dictionary copied from the
# last, pushed and popped, so that legacy log lines carry the "system".  The
# gateway logs through ``twisted.logger``, which does not read it; for a
# relayed socket that is about a tenth of an event's cost.  Sockets marked
# by :func:`quietEvents` are dispatched directly; the reactor's
# ``_doReadOrWrite`` still catches and logs what an event raises, and
# anything past it is still logged here.

_QUIET = "_etpmitmQuietEvents"


class _QuietDispatch:
    """Stands in for ``twisted.python.log`` in the epoll reactor's module."""

    def __init__(self, log: Any) -> None:
        self.log = log

    def __getattr__(self, name: str) -> Any:
        return getattr(self.log, name)

    def callWithLogger(self, logger: object, func: Callable[..., T], *args: object, **kw: object) -> T | None:
        if not getattr(logger, _QUIET, False):
            result: T | None = self.log.callWithLogger(logger, func, *args, **kw)
            return result
        try:
            return func(*args, **kw)
        except KeyboardInterrupt:
            raise
        except BaseException:
            self.log.err(system="etpmitm relay")
            return None


def installQuietDispatch() -> bool:
    """Route the epoll reactor's events through :class:`_QuietDispatch` (once)."""
    current = getattr(epollreactor, "log", None)
    if isinstance(current, _QuietDispatch):
        return True
    if current is not legacyLog:
        return False  # someone else replaced it: leave it alone
    setattr(epollreactor, "log", _QuietDispatch(current))
    return True


def quietEvents(transport: object) -> None:
    """Dispatch the events of the TCP socket under ``transport`` (a TCP
    transport, or a TLS protocol over one) without the logging context."""
    tcp = transport.transport if isinstance(transport, TLSMemoryBIOProtocol) else transport
    if isinstance(tcp, Connection) and installQuietDispatch():
        setattr(tcp, _QUIET, True)


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
    _inputShut = False

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
        """Bytes from TCP; what they cause to be sent leaves together at the end.

        :func:`holding` written out, and after the handshake
        ``TLSMemoryBIOProtocol.dataReceived`` too: this runs once per socket
        read of every relayed connection."""
        global _depth
        _depth += 1
        try:
            if not self._handshakeDone:
                super().dataReceived(data)
                if self._handshakeDone:
                    self._shed()  # the handshake's flights
            elif self._appSendBuffer or self._lostTLSConnection or self._readClosed:
                feed(self._tlsConnection, data)
                if self._appSendBuffer:
                    self._unbufferPendingWrites()
                self._flushReceiveBIO()
            else:
                try:
                    decrypted, stop = decryptFed(self._tlsConnection, data)
                except Error as e:  # raised by a pyOpenSSL callback's helper
                    decrypted, stop = b"", e
                self._deliver(decrypted, stop)
        finally:
            _depth -= 1
            if not _depth and _held:
                _flushHeld()

    def _shed(self) -> None:
        """Give back the memory BIOs' grown buffers (:func:`~etpmitm.gateway._openssl.shed`)."""
        if self._tlsConnection is not None and not (self._lostTLSConnection or self._inputShut):
            shed(self._tlsConnection)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Twisted ends the read BIO (bio_shutdown) and then reads what is
        # left, which can write: a fresh BIO would lose that end.
        self._inputShut = True
        super().connectionLost(reason)

    def _flushReceiveBIO(self) -> None:
        # Deliver everything one TCP read decrypted to in one call: a relay
        # then forwards it with one write instead of one per 16 KiB record.
        # Reading stops when no input is left, not at a raised WantReadError.
        if self._lostTLSConnection or self._readClosed:
            data, stop = b"", None
        else:
            try:
                data, stop = decryptAvailable(self._tlsConnection)
            except Error as e:  # raised by a pyOpenSSL callback's helper
                data, stop = b"", e
        self._deliver(data, stop)

    def _deliver(self, data: bytes, stop: BaseException | None) -> None:
        """Pass on what a read decrypted, then what ended it, then send what that caused."""
        if data and not self._aborted:
            ProtocolWrapper.dataReceived(self, data)
        if isinstance(stop, ZeroReturnError):
            if not self._lostTLSConnection:
                self.closeNotifyReceived = True
                self._endOfInput()
        elif stop is not None:
            self._tlsShutdownFinished(Failure(stop))
        # Closing a TCP connection whose write side is already shut calls
        # connectionLost at once, which drops the TLS connection.
        if self._tlsConnection is not None:
            self._flushSendBIO()

    def _write(self, data: bytes) -> None:
        """Encrypt all of ``data``, then hand the records to TCP in one write
        (:func:`~etpmitm.gateway._openssl.encryptAll`: one record per call, the
        rest passed as a view, the write BIO emptied as it goes)."""
        if self._lostTLSConnection:
            return
        records, sent, stopped = encryptAll(self._tlsConnection, data)
        if records:
            writeNow(self.transport, records)
        if isinstance(stopped, WantReadError):
            self._bufferedWrite(data[sent:])
        elif stopped is not None:
            self._tlsShutdownFinished(Failure(stopped))
            return
        self._flushSendBIO()

    def _flushSendBIO(self) -> None:
        # Read the memory BIO's exact size: one read, and no raised
        # WantReadError when it is empty.
        records = takeOutgoing(self._tlsConnection)
        if records:
            writeNow(self.transport, records)

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
    """The names in :data:`INTERNALS` that a connected ``tls`` over ``tcp`` lacks,
    and those of :data:`MODULE_INTERNALS` that are gone."""
    samples: dict[type, object] = {TLSMemoryBIOProtocol: tls, TLSMemoryBIOFactory: tls.factory, Connection: tcp}
    missing = [
        f"{cls.__module__}.{cls.__qualname__}.{name}"
        for cls, names in INTERNALS.items()
        for name in names
        if not hasattr(samples[cls], name)
    ]
    missing += [
        f"{getattr(owner, '__module__', None) or getattr(owner, '__name__', '')}."
        f"{getattr(owner, '__qualname__', '') + '.' if isinstance(owner, type) else ''}{name}"
        for owner, names in MODULE_INTERNALS.items()
        for name in names
        if not hasattr(owner, name)
    ]
    return missing
