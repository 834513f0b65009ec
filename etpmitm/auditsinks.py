"""``--audit-log journald | syslog:ADDRESS | FILE``: the sinks, and choosing one.

Each is an :class:`etpmitm.interfaces.IAuditSink`.  None blocks the reactor:
datagrams go out on non-blocking sockets, and the TCP sink keeps a bounded
queue while the collector is away.  An event that cannot be delivered is
dropped and counted; the first drop of an outage is logged with its reason,
and so is the count when delivery works again.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from etpmitm.auditlog import AuditLogError, AuditLogFile
from etpmitm.interfaces import IAuditSink
from etpmitm.journal import auditFields, encodeEntry
from etpmitm.syslog5424 import (SyslogAddress, SyslogAddressError, formatLocal, formatMessage, octetCounted,
                                parseAddress)

__all__ = ["JOURNAL_SOCKET", "JOURNAL_SOCKET_ENV", "DatagramSyslogSink", "JournalSink", "TCPSyslogSink",
           "openAuditSink"]

log = Logger()

JOURNAL_SOCKET = "/run/systemd/journal/socket"
JOURNAL_SOCKET_ENV = "ETPMITM_JOURNAL_SOCKET"
"""Overrides :data:`JOURNAL_SOCKET` (for tests: a socket the test listens on)."""
QUEUE_BYTES = 4 * 1024 * 1024
"""What the TCP sink holds while its collector is away or slow."""
CLOSE_WAIT = 5.0
"""Seconds the TCP sink waits, when the gateway stops, for its last messages to go out."""


def openAuditSink(value: str, reactor: Any) -> IAuditSink:
    """The sink ``--audit-log value`` names (raises :class:`AuditLogError`, one line)."""
    try:
        if value == "journald":
            return JournalSink(os.environ.get(JOURNAL_SOCKET_ENV) or JOURNAL_SOCKET)
        if value.startswith("syslog:") or value == "syslog":
            address = parseAddress(value.partition(":")[2])
            if address.transport == "tcp":
                return TCPSyslogSink(reactor, address)
            return DatagramSyslogSink(address)
    except SyslogAddressError as e:
        raise AuditLogError(str(e)) from None
    scheme, colon, _ = value.partition(":")
    if colon and scheme.isalpha() and "/" not in scheme:
        raise AuditLogError(f"--audit-log {value}: unknown kind {scheme!r}; use journald, syslog:ADDRESS or a "
                            f"file (./{value} for a file named so)")
    return AuditLogFile(Path(value))


class _Outage:
    """Counts drops; logs the first of an outage and the total when it ends."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.dropped = 0
        """Events dropped since the sink was made."""
        self._since: int | None = None

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped += count
        if self._since is None:
            self._since = self.dropped - count
            log.error("cannot send audit events to {where}: {reason}; dropping them until it works again",
                      where=self.where, reason=reason)

    def delivered(self) -> None:
        if self._since is not None:
            log.info("audit events reach {where} again; {count} dropped meanwhile",
                     where=self.where, count=self.dropped - self._since)
            self._since = None


def _connectUnix(path: str, where: str) -> socket.socket:
    skt = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        skt.connect(path)
    except OSError as e:
        skt.close()
        raise AuditLogError(f"cannot use --audit-log {where}: {path}: {e.strerror}") from None
    return skt


class _DatagramSink:
    """A connected, non-blocking datagram socket; reconnected when the peer restarted."""

    def __init__(self, where: str, path: str | None, family: int = socket.AF_UNIX,
                 sockaddr: Any = None) -> None:
        self.where = where
        self._path = path
        self._family = family
        self._sockaddr = sockaddr
        self.outage = _Outage(where)
        self._socket: socket.socket | None = self._connect()

    def _connect(self) -> socket.socket:
        if self._path is not None:
            return _connectUnix(self._path, self.where)
        skt = socket.socket(self._family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            skt.connect(self._sockaddr)
        except OSError as e:
            skt.close()
            raise AuditLogError(f"cannot use --audit-log {self.where}: {e.strerror}") from None
        return skt

    def start(self) -> None:
        """Nothing to do: the socket is connected."""

    def _send(self, datagram: bytes) -> None:
        for attempt in range(2):
            if self._socket is None:
                self.outage.drop("closed")
                return
            try:
                self._socket.send(datagram)
            except BlockingIOError:
                self.outage.drop("its socket's queue is full")
                return
            except OSError as e:
                if e.errno == errno.EMSGSIZE and self._sendLarge(datagram):
                    return
                # The daemon restarted (a new socket at the path), or a port
                # was unreachable: reconnect once, then give up on this one.
                if attempt == 0 and e.errno in (errno.ECONNREFUSED, errno.ENOTCONN, errno.ENOENT):
                    if self.reopen(quiet=True):
                        continue
                self.outage.drop(e.strerror or str(e))
                return
            self.outage.delivered()
            return

    def _sendLarge(self, datagram: bytes) -> bool:
        """A datagram too large for the socket: True if this sent (or dropped) it another way."""
        return False

    def reopen(self, quiet: bool = False) -> bool:
        try:
            skt = self._connect()
        except AuditLogError as e:
            if not quiet:
                log.error("{error}; still using the socket it was", error=str(e))
            return False
        if self._socket is not None:
            self._socket.close()
        self._socket = skt
        if not quiet:
            log.info("reconnected the audit log to {where}", where=self.where)
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


@implementer(IAuditSink)
class JournalSink(_DatagramSink):
    """``--audit-log journald``: one journal entry per event, over the native protocol.

    An entry too large for one datagram goes in a sealed memfd passed with
    SCM_RIGHTS, as systemd's own library does.
    """

    def __init__(self, path: str = JOURNAL_SOCKET) -> None:
        super().__init__(f"journald ({path})" if path != JOURNAL_SOCKET else "journald", path)

    def write(self, record: dict[str, Any], message: str, severity: int) -> None:
        self._send(encodeEntry(auditFields(record, message, severity)))

    def _sendLarge(self, datagram: bytes) -> bool:
        fd = os.memfd_create("etpmitm-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(datagram)
            while view:
                view = view[os.write(fd, view):]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                        fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
            assert self._socket is not None
            socket.send_fds(self._socket, [], [fd])
        except OSError as e:
            self.outage.drop(f"an entry of {len(datagram)} bytes: {e.strerror}")
            return True
        finally:
            os.close(fd)
        self.outage.delivered()
        return True


@implementer(IAuditSink)
class DatagramSyslogSink(_DatagramSink):
    """``--audit-log syslog:unix:PATH`` or ``syslog:udp:HOST:PORT``: one message per datagram.

    RFC 5424 over UDP; syslog(3)'s local format on a unix socket
    (:mod:`etpmitm.syslog5424`).  HOST is resolved once, at start.
    """

    def __init__(self, address: SyslogAddress) -> None:
        self.hostname = socket.gethostname()
        if address.transport == "unix":
            super().__init__(str(address), address.path)
            return
        try:
            [(family, _, _, _, sockaddr), *_] = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_DGRAM)
        except OSError as e:
            raise AuditLogError(f"cannot use --audit-log {address}: {e.strerror}") from None
        super().__init__(str(address), None, family, sockaddr)

    def write(self, record: dict[str, Any], message: str, severity: int) -> None:
        if self._path is not None:
            self._send(formatLocal(record, severity, os.getpid(), time.time()))
        else:
            self._send(formatMessage(record, severity, self.hostname, os.getpid()))


class _Collector(Protocol):
    def __init__(self, sink: TCPSyslogSink) -> None:
        self.sink = sink
        self.closed: Deferred[None] | None = None

    def dataReceived(self, data: bytes) -> None:
        """A collector has nothing to say; ignore it."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.closed is not None:
            self.closed.callback(None)
        self.sink._lost(self, reason)


@implementer(IAuditSink, IPushProducer)
class TCPSyslogSink:
    """``--audit-log syslog:tcp:HOST:PORT``: RFC 5424 messages, octet-counted, over one connection.

    While the collector is away (or reads slower than events come) messages
    wait in a queue of at most ``queueBytes``; beyond that they are dropped.
    It reconnects after ``initialDelay`` seconds, doubling up to ``maxDelay``.
    """

    def __init__(self, reactor: Any, address: SyslogAddress, queueBytes: int = QUEUE_BYTES,
                 initialDelay: float = 1.0, maxDelay: float = 60.0, closeWait: float = CLOSE_WAIT) -> None:
        self.address = address
        self.hostname = socket.gethostname()
        self.outage = _Outage(str(address))
        self._reactor = reactor
        self._endpoint = HostnameEndpoint(reactor, address.host, address.port, timeout=10)
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._queueBytes = queueBytes
        self._initialDelay = self._delay = initialDelay
        self._maxDelay = maxDelay
        self._closeWait = closeWait
        self._protocol: _Collector | None = None
        self._connecting: Deferred[_Collector] | None = None
        self._retry: IDelayedCall | None = None
        self._paused = False
        self._closed = False
        self._unreachableLogged = False
        self.attempts = 0
        """Connection attempts so far."""

    @property
    def connected(self) -> bool:
        return self._protocol is not None

    @property
    def queued(self) -> int:
        """Messages waiting for the collector."""
        return len(self._queue)

    @property
    def queuedBytes(self) -> int:
        """Their bytes, at most ``queueBytes``."""
        return self._queued

    def start(self) -> None:
        self._connect()

    def _connect(self) -> None:
        self._retry = None
        if self._closed or self._protocol is not None or self._connecting is not None:
            return
        self.attempts += 1
        factory = Factory.forProtocol(lambda: _Collector(self))
        factory.noisy = False
        self._connecting = self._endpoint.connect(factory)  # type: ignore[assignment]
        assert self._connecting is not None
        self._connecting.addCallbacks(self._connected, self._failed)

    def _connected(self, protocol: _Collector) -> None:
        self._connecting = None
        if self._closed:
            protocol.transport.loseConnection()  # type: ignore[union-attr]
            return
        self._protocol = protocol
        self._delay = self._initialDelay
        self._unreachableLogged = False
        self._paused = False
        protocol.transport.registerProducer(self, True)  # type: ignore[union-attr]
        log.info("audit log connected to {where}", where=str(self.address))
        self._flush()

    def _failed(self, reason: Failure) -> None:
        self._connecting = None
        if self._closed:
            return
        if not self._unreachableLogged:
            self._unreachableLogged = True
            log.error("cannot connect to the audit log collector {where}: {error}; retrying, "
                      "queueing up to {bytes} bytes", where=str(self.address),
                      error=reason.getErrorMessage(), bytes=self._queueBytes)
        self._schedule()

    def _lost(self, protocol: _Collector, reason: Failure) -> None:
        if protocol is not self._protocol:
            return
        self._protocol = None
        if self._closed:
            return
        log.error("lost the audit log collector {where}: {error}; reconnecting",
                  where=str(self.address), error=reason.getErrorMessage())
        self._schedule()

    def _schedule(self) -> None:
        clock: IReactorTime = self._reactor
        self._retry = clock.callLater(self._delay, self._connect)
        self._delay = min(self._delay * 2, self._maxDelay)

    def write(self, record: dict[str, Any], message: str, severity: int) -> None:
        frame = octetCounted(formatMessage(record, severity, self.hostname, os.getpid()))
        if self._protocol is not None and not self._paused and not self._queue:
            self._protocol.transport.write(frame)  # type: ignore[union-attr]
            self.outage.delivered()
            return
        if self._closed:
            self.outage.drop("closed")
        elif self._queued + len(frame) > self._queueBytes:
            self.outage.drop(f"its queue is full ({self._queueBytes} bytes): the collector is "
                             f"{'slow' if self._protocol is not None else 'unreachable'}")
        else:
            self._queue.append(frame)
            self._queued += len(frame)

    def _flush(self) -> None:
        while self._queue and self._protocol is not None and not self._paused:
            frame = self._queue.popleft()
            self._queued -= len(frame)
            self._protocol.transport.write(frame)  # type: ignore[union-attr]
        if not self._queue and self._protocol is not None:
            self.outage.delivered()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._flush()

    def stopProducing(self) -> None:
        self._paused = True

    def reopen(self) -> bool:
        """Reconnect now if not connected (not waiting out the backoff)."""
        if self._protocol is None and self._connecting is None and not self._closed:
            if self._retry is not None and self._retry.active():
                self._retry.cancel()
            self._delay = self._initialDelay
            self._connect()
        return True

    def close(self) -> Deferred[None] | None:
        """Stop reconnecting; hand the queue to the connection, if any, and close it
        once sent (or ``closeWait`` seconds later): the Deferred fires then.
        Without a connection the queue is dropped (counted)."""
        self._closed = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._connecting is not None:
            self._connecting.cancel()
        protocol, self._protocol = self._protocol, None
        if protocol is None:
            if self._queue:
                self.outage.drop("stopping before the collector was reachable", len(self._queue))
            self._queue.clear()
            self._queued = 0
            return None
        transport: Any = protocol.transport
        transport.unregisterProducer()
        while self._queue:
            transport.write(self._queue.popleft())
        self._queued = 0
        done: Deferred[None] = Deferred()
        protocol.closed = done
        clock: IReactorTime = self._reactor
        timeout = clock.callLater(self._closeWait, transport.abortConnection)
        done.addBoth(lambda result: timeout.cancel() if timeout.active() else None)
        transport.loseConnection()
        return done
