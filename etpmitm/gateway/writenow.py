"""Send to a TCP socket at once when nothing is queued ahead.

Twisted's ``write`` queues the bytes and sends them on the next reactor turn,
after registering the socket for writability (an ``epoll_ctl``) and taking
it off again once the queue drains (another).  A relay writes once per read,
so that is two system calls and a reactor turn per chunk forwarded.  When
the transport's queue is empty, the kernel's send buffer almost always has
room: sending straight away keeps the byte order (nothing is ahead of us)
and leaves only the part the kernel did not take to Twisted's queue.

While one received chunk is being handled, sends are held and go out
together at its end (:func:`holding`): a response and the close_notify
after it then leave in one segment, as they did with Twisted's queue.  Sent
apart, a client that reads the response and closes at once finds the
close_notify unread and its kernel answers with a reset.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from twisted.internet.tcp import Connection

_held: dict[Connection, list[bytes]] = {}
_depth = 0

T = TypeVar("T")


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
