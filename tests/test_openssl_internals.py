"""The relay's OpenSSL calls below pyOpenSSL's API (etpmitm/gateway/_openssl.py).

Two pyOpenSSL connections handshake over memory BIOs with the gateway's own
contexts; the tests then check what the fenced calls report and return
against what pyOpenSSL's public API does with the same bytes.
"""

from __future__ import annotations

from OpenSSL import SSL
from twisted.trial.unittest import SynchronousTestCase

from etpmitm.gateway import _openssl
from etpmitm.gateway._openssl import (
    INTERNALS,
    PIECE,
    RECORD,
    decryptAvailable,
    decryptFed,
    encrypt,
    encryptAll,
    feed,
    incoming,
    outgoing,
    shed,
    takeOutgoing,
)
from tests.memorytls import move, pair


class FencedNamesTests(SynchronousTestCase):
    def test_privateNamesStillExist(self) -> None:
        server, _ = pair()
        owners = {"OpenSSL.SSL": SSL, "OpenSSL.SSL._lib": _openssl._lib, "OpenSSL.SSL.Connection": server}
        missing = [f"{owner}.{name}" for owner, names in INTERNALS.items() for name in names
                   if not hasattr(owners[owner], name)]
        self.assertEqual(missing, [], "this pyOpenSSL/cryptography lacks them: adapt etpmitm/gateway/_openssl.py")


class PendingBytesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server, self.client = pair()

    def test_incomingCountsWhatWaits(self) -> None:
        self.assertEqual(incoming(self.server), 0)
        self.client.send(b"hello")
        records = self.client.bio_read(2**16)
        self.server.bio_write(records)
        self.assertEqual(incoming(self.server), len(records))

    def test_outgoingCountsWhatWaits(self) -> None:
        self.assertEqual((outgoing(self.client), takeOutgoing(self.client)), (0, b""))  # no WantReadError
        self.client.send(b"x" * 100)
        waiting = outgoing(self.client)
        self.assertGreater(waiting, 100)
        records = takeOutgoing(self.client)
        self.assertEqual((len(records), outgoing(self.client)), (waiting, 0))
        self.server.bio_write(records)
        self.assertEqual(self.server.recv(RECORD), b"x" * 100)


class DecryptAvailableTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server, self.client = pair()

    def send(self, *chunks: bytes) -> bytes:
        for chunk in chunks:
            self.client.send(chunk)
        return takeOutgoing(self.client)

    def test_everyWholeRecordAtOnce(self) -> None:
        self.server.bio_write(self.send(b"one ", b"two ", b"three"))
        self.assertEqual(decryptAvailable(self.server), (b"one two three", None))
        self.assertEqual(incoming(self.server), 0)

    def test_nothingWaiting(self) -> None:
        self.assertEqual(decryptAvailable(self.server), (b"", None))

    def test_aPartialRecordWaitsForTheRest(self) -> None:
        records = self.send(b"a" * 1000)
        self.server.bio_write(records[:500])
        self.assertEqual(decryptAvailable(self.server), (b"", None))
        self.server.bio_write(records[500:])
        self.assertEqual(decryptAvailable(self.server), (b"a" * 1000, None))

    def test_dataThenCloseNotify(self) -> None:
        self.client.send(b"last words")
        self.client.shutdown()
        self.server.bio_write(takeOutgoing(self.client))
        data, ended = decryptAvailable(self.server)
        self.assertEqual(data, b"last words")
        self.assertIsInstance(ended, SSL.ZeroReturnError)

    def test_garbageIsAnError(self) -> None:
        self.server.bio_write(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # an application record that does not decrypt
        data, ended = decryptAvailable(self.server)
        self.assertEqual(data, b"")
        self.assertIsInstance(ended, SSL.Error)
        self.assertNotIsInstance(ended, SSL.ZeroReturnError)

    def test_moreThanTheSharedBuffer(self) -> None:
        """Past the shared buffer's size the plaintext still comes whole and in order."""
        payload = bytes(range(256)) * (3 * 2**18 // 256)
        self.server.bio_write(self.send(*(payload[i : i + RECORD] for i in range(0, len(payload), RECORD))))
        self.assertEqual(decryptAvailable(self.server), (payload, None))
        self.assertEqual(incoming(self.server), 0)

    def test_moreThanTheSharedBufferToSend(self) -> None:
        for i in range(0, 2**19, RECORD):
            self.client.send(b"z" * RECORD)
        waiting = outgoing(self.client)
        self.assertGreater(waiting, 2**19)
        self.server.bio_write(takeOutgoing(self.client))
        self.assertEqual((outgoing(self.client), decryptAvailable(self.server)), (0, (b"z" * 2**19, None)))

    def test_theBufferIsCopiedOut(self) -> None:
        """What one call returned does not change when the shared buffer is reused."""
        self.server.bio_write(self.send(b"first"))
        first, _ = decryptAvailable(self.server)
        self.server.bio_write(self.send(b"SECOND"))
        second, _ = decryptAvailable(self.server)
        self.assertEqual((first, second), (b"first", b"SECOND"))


class FeedAndEncryptTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server, self.client = pair()

    def test_encryptTakesOneRecordAtATime(self) -> None:
        """As pyOpenSSL's send in its partial-write mode: a view is taken without a copy."""
        payload = b"y" * (RECORD + 100)
        self.assertEqual(encrypt(self.client, payload), RECORD)
        self.assertEqual(encrypt(self.client, memoryview(payload)[RECORD:]), 100)
        feed(self.server, takeOutgoing(self.client))
        self.assertEqual(decryptAvailable(self.server), (payload, None))

    def test_feedTakesEverything(self) -> None:
        self.client.send(b"fed")
        records = takeOutgoing(self.client)
        feed(self.server, records[:3])
        feed(self.server, b"")
        feed(self.server, records[3:])
        self.assertEqual(incoming(self.server), len(records))
        self.assertEqual(self.server.recv(RECORD), b"fed")

    def test_encryptRaisesAsSendDoes(self) -> None:
        """After close_notify was sent, writing fails the way pyOpenSSL's send fails."""
        self.client.shutdown()
        with self.assertRaises(SSL.Error) as ours:
            encrypt(self.client, b"too late")
        with self.assertRaises(SSL.Error) as theirs:
            self.client.send(b"too late")
        self.assertEqual(type(ours.exception), type(theirs.exception))


class ShedTests(SynchronousTestCase):
    """:func:`shed` swaps an idle connection's memory BIOs for fresh ones."""

    def setUp(self) -> None:
        self.server, self.client = pair()

    def bios(self, connection: SSL.Connection) -> tuple[object, object]:
        return (connection._into_ssl, connection._from_ssl)

    def exchange(self) -> None:
        """Both directions still carry data, through the public API."""
        self.client.sendall(b"ping" * 5000)  # two records
        move(self.client, self.server)
        self.assertEqual(decryptAvailable(self.server), (b"ping" * 5000, None))
        self.server.send(b"pong")
        move(self.server, self.client)
        self.assertEqual(self.client.recv(RECORD), b"pong")

    def test_emptyBIOsAreReplaced(self) -> None:
        for connection in (self.server, self.client):
            old = self.bios(connection)
            self.assertTrue(shed(connection))
            new = self.bios(connection)
            self.assertNotEqual(new[0], old[0])
            self.assertNotEqual(new[1], old[1])
            self.assertEqual((incoming(connection), outgoing(connection)), (0, 0))
        self.exchange()

    def test_notWhileCiphertextWaitsToBeRead(self) -> None:
        self.client.send(b"waiting")
        self.server.bio_write(takeOutgoing(self.client))
        old = self.bios(self.server)
        self.assertFalse(shed(self.server))
        self.assertEqual(self.bios(self.server), old)
        self.assertEqual(decryptAvailable(self.server), (b"waiting", None))

    def test_notWhileRecordsWaitToBeSent(self) -> None:
        self.client.send(b"unsent")
        old = self.bios(self.client)
        self.assertFalse(shed(self.client))
        self.assertEqual(self.bios(self.client), old)
        self.server.bio_write(takeOutgoing(self.client))
        self.assertEqual(decryptAvailable(self.server), (b"unsent", None))

    def test_aPartialRecordSurvives(self) -> None:
        """OpenSSL has taken the first part of a record out of the BIO; the rest completes it."""
        self.client.send(b"a" * 1000)
        records = takeOutgoing(self.client)
        self.server.bio_write(records[:500])
        self.assertEqual(decryptAvailable(self.server), (b"", None))
        self.assertTrue(shed(self.server))
        self.server.bio_write(records[500:])
        self.assertEqual(decryptAvailable(self.server), (b"a" * 1000, None))
        self.exchange()

    def test_closeNotifyAfterShedding(self) -> None:
        self.assertTrue(shed(self.server))
        self.assertTrue(shed(self.client))
        self.client.shutdown()
        self.server.bio_write(takeOutgoing(self.client))
        data, ended = decryptAvailable(self.server)
        self.assertEqual(data, b"")
        self.assertIsInstance(ended, SSL.ZeroReturnError)


class CountingLib:
    """Stands in for ``_openssl._lib``: records the most bytes one memory BIO held."""

    def __init__(self, lib: object) -> None:
        self._lib = lib
        self.mostInBIO = 0
        self.mostWritten = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._lib, name)

    def BIO_write(self, bio: object, data: object, size: int) -> int:
        self.mostWritten = max(self.mostWritten, size)
        written: int = self._lib.BIO_write(bio, data, size)  # type: ignore[attr-defined]
        self.mostInBIO = max(self.mostInBIO, self._lib.BIO_get_mem_data(bio, _openssl._ffi.NULL))  # type: ignore[attr-defined]
        return written


class PiecewiseTests(SynchronousTestCase):
    """:func:`decryptFed` and :func:`encryptAll` keep each memory BIO near
    :data:`PIECE` bytes, and give what feeding and sending whole would."""

    def setUp(self) -> None:
        self.server, self.client = pair()
        self.body = bytes(range(256)) * 1300  # 325 KiB: more than the shared buffer
        self.lib = CountingLib(_openssl._lib)

    def counting(self) -> None:
        self.patch(_openssl, "_lib", self.lib)

    def records(self, data: bytes) -> bytes:
        self.client.sendall(data)
        return takeOutgoing(self.client)

    def test_decryptFedInPieces(self) -> None:
        records = self.records(self.body)
        self.counting()
        self.assertEqual(decryptFed(self.server, records), (self.body, None))
        self.assertTrue(0 < self.lib.mostWritten <= PIECE, self.lib.mostWritten)
        self.assertEqual(incoming(self.server), 0)

    def test_decryptFedKeepsAPartialRecord(self) -> None:
        records = self.records(self.body)
        cut = len(records) - 100
        data, ended = decryptFed(self.server, records[:cut])
        self.assertIsNone(ended)
        rest, ended = decryptFed(self.server, records[cut:])
        self.assertEqual((data + rest, ended), (self.body, None))

    def test_decryptFedNothing(self) -> None:
        self.assertEqual(decryptFed(self.server, b""), (b"", None))

    def test_decryptFedStopsAtCloseNotify(self) -> None:
        self.client.sendall(b"last words")
        self.client.shutdown()
        data, ended = decryptFed(self.server, takeOutgoing(self.client))
        self.assertEqual(data, b"last words")
        self.assertIsInstance(ended, SSL.ZeroReturnError)

    def test_decryptFedReportsGarbage(self) -> None:
        data, ended = decryptFed(self.server, b"\x17\x03\x03\x00\x10" + b"\0" * 16)
        self.assertEqual(data, b"")
        self.assertIsInstance(ended, SSL.Error)

    def test_encryptAllDrainsAsItGoes(self) -> None:
        bio = self.client._from_ssl
        most = 0
        original = _openssl._drain

        def drain(b: object, parts: list[bytes], got: int) -> int:
            nonlocal most
            most = max(most, _openssl._lib.BIO_get_mem_data(bio, _openssl._ffi.NULL))
            return original(b, parts, got)

        self.patch(_openssl, "_drain", drain)
        records, sent, stopped = encryptAll(self.client, self.body)
        self.assertEqual((sent, stopped, outgoing(self.client)), (len(self.body), None, 0))
        self.assertLess(most, PIECE + 2 * RECORD)
        self.assertEqual(decryptFed(self.server, records), (self.body, None))

    def test_encryptAllOfAView(self) -> None:
        records, sent, stopped = encryptAll(self.client, memoryview(self.body)[5:])  # type: ignore[arg-type]
        self.assertEqual((sent, stopped), (len(self.body) - 5, None))
        self.assertEqual(decryptFed(self.server, records), (self.body[5:], None))

    def test_encryptAllNothing(self) -> None:
        self.assertEqual(encryptAll(self.client, b""), (b"", 0, None))

    def test_encryptAllAfterShutdownStops(self) -> None:
        self.client.shutdown()
        takeOutgoing(self.client)
        records, sent, stopped = encryptAll(self.client, b"late")
        self.assertEqual((records, sent), (b"", 0))
        self.assertIsInstance(stopped, SSL.Error)
