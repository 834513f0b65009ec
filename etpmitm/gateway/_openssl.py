"""The few OpenSSL calls the relay makes below pyOpenSSL's API, fenced in one place.

pyOpenSSL answers a read of an empty memory BIO with a raised
``WantReadError``, allocates a fresh buffer for every record it decrypts, and
copies each one out; each call also converts and checks its arguments and
asks OpenSSL for an error code even after a success.  A relay reads once per
socket event, so that was two raised exceptions per event, sixteen
allocations per 256 KiB, and a few microseconds per call.  Here the relay
asks how many bytes wait before it reads (:func:`incoming`,
:func:`outgoing`), decrypts everything one socket read brought into one
reused buffer, copied out once (:func:`decryptAvailable`), and hands bytes to
OpenSSL directly (:func:`feed`, :func:`encrypt`), falling back to pyOpenSSL's
error handling only when a call fails.

A memory BIO keeps the largest size it ever held.  So the relay feeds a
socket read in pieces, each decrypted before the next goes in
(:func:`decryptFed`), and takes records out as it encrypts
(:func:`encryptAll`): a 256 KiB read no longer leaves each BIO at 341 KiB for
the connection's life.  :func:`shed` swaps the BIOs for fresh ones after the
handshake (its flights, a few KiB a connection).

These use cryptography's cffi bindings as pyOpenSSL ships them
(``OpenSSL.SSL._lib``, ``_ffi``) and three private attributes of
``OpenSSL.SSL.Connection`` (``_ssl``, ``_into_ssl``, ``_from_ssl``: the
``SSL*`` and its two memory BIOs); errors go through pyOpenSSL's own
``_raise_ssl_error``, so they surface as the exceptions pyOpenSSL raises.
:data:`INTERNALS` lists every private name; ``tests/test_openssl_internals.py``
checks them on a live connection and pins the behaviour.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from OpenSSL.SSL import WantReadError

_lib: Any = getattr(SSL, "_lib")
_ffi: Any = getattr(SSL, "_ffi")

INTERNALS: dict[str, tuple[str, ...]] = {
    "OpenSSL.SSL": ("_lib", "_ffi"),
    "OpenSSL.SSL._lib": (
        "SSL_read", "SSL_write", "SSL_pending", "SSL_set_bio", "SSL_get_error", "SSL_ERROR_WANT_READ",
        "BIO_read", "BIO_write", "BIO_get_mem_data", "BIO_new", "BIO_s_mem", "BIO_free",
    ),
    "OpenSSL.SSL.Connection": ("_ssl", "_into_ssl", "_from_ssl", "_raise_ssl_error", "_handle_bio_errors"),
}
"""Private names used here, per owner."""

RECORD = 2**14
"""The most plaintext one TLS record carries; SSL_read returns at most one record."""

_SIZE = 2**18 + RECORD
_buffer = bytearray(_SIZE)
_view = memoryview(_buffer)
_pointer = _ffi.from_buffer(_buffer)
# One buffer for the whole process: the reactor runs in one thread, and what
# is decrypted into it is copied out before anything else can run.


def incoming(connection: SSL.Connection) -> int:
    """Bytes received and not yet read: ciphertext in the read BIO, and
    plaintext OpenSSL decrypted and still holds."""
    return int(_lib.BIO_get_mem_data(connection._into_ssl, _ffi.NULL) + _lib.SSL_pending(connection._ssl))


def outgoing(connection: SSL.Connection) -> int:
    """Encrypted bytes waiting in the write BIO to be sent."""
    return int(_lib.BIO_get_mem_data(connection._from_ssl, _ffi.NULL))


def takeOutgoing(connection: SSL.Connection) -> bytes:
    """Everything in the write BIO (b"" when it is empty), without an exception."""
    bio = connection._from_ssl
    waiting = int(_lib.BIO_get_mem_data(bio, _ffi.NULL))
    if not waiting:
        return b""
    if waiting > _SIZE:
        return connection.bio_read(waiting)
    _lib.BIO_read(bio, _pointer, waiting)  # a memory BIO hands over all it is asked for
    return bytes(_view[:waiting])


def feed(connection: SSL.Connection, data: bytes) -> None:
    """Give OpenSSL ciphertext that arrived (``bio_write``); a memory BIO takes all of it."""
    if data:
        written = _lib.BIO_write(connection._into_ssl, data, len(data))
        if written <= 0:
            connection._handle_bio_errors(connection._into_ssl, written)


def encrypt(connection: SSL.Connection, data: bytes | memoryview) -> int:
    """Encrypt the start of non-empty ``data`` (``send``): pyOpenSSL's
    partial-write mode takes one record (16 KiB) per call.  Returns how much
    it took; raises what pyOpenSSL's ``send`` raises."""
    ssl = connection._ssl
    taken = int(_lib.SSL_write(ssl, data if isinstance(data, bytes) else _ffi.from_buffer(data), len(data)))
    if taken <= 0:
        connection._raise_ssl_error(ssl, taken)
    return taken


def decryptAvailable(connection: SSL.Connection) -> tuple[bytes, BaseException | None]:
    """Decrypt every whole record waiting.

    Returns the plaintext (b"" if none) and what ended the reading, if not
    the lack of input: pyOpenSSL's ``ZeroReturnError`` for a close_notify, or
    another ``SSL.Error``.  A partial record stays in OpenSSL for the next
    call.  Each ``SSL_read`` returns one record, 16 KiB of plaintext at most,
    so nothing is left decrypted and unread once the read BIO is empty.
    """
    ssl, bio = connection._ssl, connection._into_ssl
    parts: list[bytes] = []
    got = 0
    ended: BaseException | None = None
    while True:
        if got + RECORD > _SIZE:
            parts.append(bytes(_view[:got]))
            got = 0
        n = _lib.SSL_read(ssl, _pointer + got, RECORD)
        if n <= 0:
            try:
                connection._raise_ssl_error(ssl, n)
            except WantReadError:
                pass
            except SSL.Error as e:
                # Without its traceback: the traceback holds this frame,
                # which holds the error, a cycle that would keep both
                # connections (and their OpenSSL state) until a full GC.
                ended = e.with_traceback(None)
            break
        got += n
        if not _lib.BIO_get_mem_data(bio, _ffi.NULL):
            break
    if got:
        parts.append(bytes(_view[:got]))
    return (parts[0] if len(parts) == 1 else b"".join(parts)), ended


PIECE = 2**15
"""The most ciphertext :func:`decryptFed` puts in the read BIO at once, and
plaintext :func:`encryptAll` encrypts into the write BIO before emptying it."""


def decryptFed(connection: SSL.Connection, data: bytes) -> tuple[bytes, BaseException | None]:
    """:func:`feed` ``data``, then :func:`decryptAvailable`, the same result,
    but the read BIO is given at most :data:`PIECE` bytes at a time, the
    next piece once it is empty.

    A memory BIO keeps the largest size it ever held: fed whole, a 256 KiB
    socket read left a 341 KiB buffer on every connection that once had
    one.  What follows an end (close_notify) or an error is not fed.
    """
    ssl, bio = connection._ssl, connection._into_ssl
    source = memoryview(data)
    size, fed = len(data), 0
    parts: list[bytes] = []
    got = 0
    ended: BaseException | None = None
    while True:
        if fed < size and not _lib.BIO_get_mem_data(bio, _ffi.NULL):
            # Only once it is empty: a BIO written while it holds unread
            # bytes first moves them to its start.
            piece = source[fed : fed + PIECE]
            written = _lib.BIO_write(bio, _ffi.from_buffer(piece), len(piece))
            if written <= 0:
                connection._handle_bio_errors(bio, written)
            fed += len(piece)
        if got + RECORD > _SIZE:
            parts.append(bytes(_view[:got]))
            got = 0
        n = _lib.SSL_read(ssl, _pointer + got, RECORD)
        if n <= 0:
            if fed < size and _lib.SSL_get_error(ssl, n) == _lib.SSL_ERROR_WANT_READ:
                # A record cut at the piece's end: feed the next, without
                # pyOpenSSL's raised WantReadError (its callback checks
                # matter in a handshake only).
                continue
            try:
                connection._raise_ssl_error(ssl, n)
            except WantReadError:
                if fed < size:
                    if not _lib.BIO_get_mem_data(bio, _ffi.NULL):
                        continue  # the piece ended inside a record: the next completes it
                    feed(connection, data[fed:])  # not expected (AUTO_RETRY): keep every byte
            except SSL.Error as e:
                ended = e.with_traceback(None)  # as in decryptAvailable
            break
        got += n
        if fed >= size and not _lib.BIO_get_mem_data(bio, _ffi.NULL):
            break
    if got:
        parts.append(bytes(_view[:got]))
    return (parts[0] if len(parts) == 1 else b"".join(parts)), ended


def encryptAll(connection: SSL.Connection, data: bytes) -> tuple[bytes, int, BaseException | None]:
    """Encrypt all of ``data`` (:func:`encrypt`, record by record)
    and take the records out of the write BIO every :data:`PIECE` bytes, so
    that it never grows past about that.

    Returns the records, how much of ``data`` they carry, and what stopped
    the encryption early (pyOpenSSL's ``WantReadError`` or another
    ``SSL.Error``), if anything did.
    """
    ssl, bio = connection._ssl, connection._from_ssl
    source = memoryview(data)
    size, sent, inBIO = len(data), 0, 0
    parts: list[bytes] = []
    got = 0
    stopped: BaseException | None = None
    while sent < size:
        rest = data if not sent and isinstance(data, bytes) else _ffi.from_buffer(source[sent:])
        taken = int(_lib.SSL_write(ssl, rest, size - sent))
        if taken <= 0:
            try:
                connection._raise_ssl_error(ssl, taken)
            except SSL.Error as e:
                stopped = e.with_traceback(None)
            break
        sent += taken
        inBIO += taken
        if inBIO >= PIECE:
            got = _drain(bio, parts, got)
            inBIO = 0
    got = _drain(bio, parts, got)
    if got:
        parts.append(bytes(_view[:got]))
    return (parts[0] if len(parts) == 1 else b"".join(parts)), sent, stopped


def _drain(bio: Any, parts: list[bytes], got: int) -> int:
    """Move the write BIO's records into the shared buffer after ``got`` bytes
    (first into ``parts`` what would not fit); returns the new fill."""
    waiting = int(_lib.BIO_get_mem_data(bio, _ffi.NULL))
    if not waiting:
        return got
    if got + waiting > _SIZE:
        if got:
            parts.append(bytes(_view[:got]))
            got = 0
        if waiting > _SIZE:
            chunk = _ffi.new("char[]", waiting)
            _lib.BIO_read(bio, chunk, waiting)
            parts.append(_ffi.buffer(chunk, waiting)[:])
            return 0
    _lib.BIO_read(bio, _pointer + got, waiting)
    return got + waiting


def shed(connection: SSL.Connection) -> bool:
    """Swap ``connection``'s two memory BIOs for new, empty ones, if both are empty.

    A memory BIO grows to hold what is written into it and keeps that size
    when it is read empty, so an idle connection held the handshake's
    flights (about 4 KiB each end), and one that relayed a large read,
    hundreds of KiB.  ``SSL_set_bio`` frees the old pair.  OpenSSL keeps a
    partial record in its own read buffer, not in the BIO, so nothing is
    lost.  False (nothing done) while either BIO holds bytes.  Not for a
    connection whose read BIO pyOpenSSL ended (``bio_shutdown``, which the
    relay never calls): a fresh one would not report that end.
    """
    into, out = connection._into_ssl, connection._from_ssl
    if into is None or _lib.BIO_get_mem_data(into, _ffi.NULL) or _lib.BIO_get_mem_data(out, _ffi.NULL):
        return False
    fresh = _lib.BIO_new(_lib.BIO_s_mem())
    if fresh == _ffi.NULL:
        return False
    freshOut = _lib.BIO_new(_lib.BIO_s_mem())
    if freshOut == _ffi.NULL:
        _lib.BIO_free(fresh)
        return False
    _lib.SSL_set_bio(connection._ssl, fresh, freshOut)  # frees ``into`` and ``out``
    connection._into_ssl, connection._from_ssl = fresh, freshOut
    return True
