"""Resuming TLS sessions with origins.

A resumed handshake skips the origin's signature and the gateway's chain
verification.  Only sessions whose full handshake earned a trusted verdict
are kept, per (destination, SNI), in a bounded LRU; OpenSSL's own client
cache is off, since it stores every session and never hands one back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from OpenSSL import SSL

from etpmitm.leafcache import LRUCache

if TYPE_CHECKING:
    from etpmitm.gateway.origin import OriginSession

Key = tuple[str, int, str | None]


class OriginSessions:
    """The newest resumable session per (origin address, port, SNI)."""

    def __init__(self, maxsize: int = 4096) -> None:
        self._sessions: LRUCache[Key, SSL.Session] = LRUCache(maxsize)

    def lookup(self, key: Key) -> SSL.Session | None:
        return self._sessions.get(key)

    def remember(self, origin: OriginSession) -> None:
        """Keep the session of a verified origin once the connection ends.

        TLS 1.3 tickets arrive after the handshake, so the session is taken
        when the connection closes, from the ``SSL.Connection`` kept for it.
        """
        connection, key = origin.connection, origin.key
        origin.end.closed.addCallback(lambda _: self._store(key, connection))

    def _store(self, key: Key, connection: SSL.Connection) -> None:
        # OpenSSL marks the session of a connection freed without a sent
        # close_notify as not resumable (a TLS 1.0 rule; since TLS 1.1 a
        # premature close need not end the session).  The relay mirrors the
        # peers' closes, so say the connection was shut down.
        connection.set_shutdown(SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN)
        session = connection.get_session()
        if session is not None:
            self._sessions.put(key, session)
