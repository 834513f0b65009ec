"""TLSMemoryBIOProtocol with half-close, as a relay needs it.

Twisted's TLS wrapper answers a peer's close_notify by closing the whole
connection.  A relay must instead pass each direction's end on separately
(RFC 8446 section 6.1): a close_notify received ends only the read side, and
``loseWriteConnection`` sends close_notify then FIN while reading goes on.
A bare FIN (no close_notify) is reported too, so that a relay can mirror a
truncation instead of turning it into a clean close.
"""

from __future__ import annotations

from typing import cast

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet.interfaces import IHalfCloseableProtocol, ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from etpmitm.gateway.writenow import holding, writeNow

_READ_SIZE = 2**14  # one record's plaintext at most: SSL_read returns one record
_RECORD = 2**14  # the most plaintext one TLS record carries
_BIO_READ = 2**18


@implementer(IHalfCloseableProtocol)
class HalfCloseableTLS(TLSMemoryBIOProtocol):
    """TLS transport whose directions close independently.

    The wrapped protocol must provide ``IHalfCloseableProtocol``; it is told
    ``readConnectionLost()`` when the peer ends its direction, and can check
    ``closeNotifyReceived`` to tell a clean end from a truncation.
    """

    closeNotifyReceived = False
    closesWhenBothEnd = True  # no need for the relay to close it
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
        if self._writeClosed:
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


def halfCloseableTLSFactory(
    creator: object, isClient: bool, wrappedFactory: object
) -> TLSMemoryBIOFactory:
    """A ``TLSMemoryBIOFactory`` whose protocols are :class:`HalfCloseableTLS`."""
    factory = TLSMemoryBIOFactory(creator, isClient, wrappedFactory)  # type: ignore[arg-type]
    factory.protocol = HalfCloseableTLS
    return factory
