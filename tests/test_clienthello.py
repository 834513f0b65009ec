# trial's assertion methods carry no annotations.
# mypy: disable-error-code="no-untyped-call"
"""Tests for etpmitm.clienthello.

Real ClientHellos are made at test time: by Python's ssl module in memory,
and by openssl s_client and curl against a local listening socket.
Malformed ones are single faults applied to a hello built here, whose
well-formed version is checked first (test_built_hello_parses).
"""

from __future__ import annotations

import random
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from functools import cache

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from etpmitm.clienthello import (
    MAX_SIZE,
    ClientHello,
    ClientHelloError,
    ClientHelloParser,
    NeedMore,
    NotTLS,
)
from tests.hellos import python_client_hello

Result = NeedMore | NotTLS | ClientHello

FUZZ = settings(max_examples=300, deadline=None, database=None)

X25519MLKEM768 = b"\x11\xec"  # the hybrid group's id in supported_groups and key_share


# -- feeding -----------------------------------------------------------------


def feed_chunks(chunks: Iterable[bytes], max_size: int = MAX_SIZE) -> Result:
    """Feed *chunks* to a new parser until it gives a final result."""
    parser = ClientHelloParser(max_size)
    result: Result = NeedMore()
    for chunk in chunks:
        result = parser.feed(chunk)
        if not isinstance(result, NeedMore):
            break
    return result


def feed_bytewise(data: bytes, max_size: int = MAX_SIZE) -> Result:
    return feed_chunks((data[i : i + 1] for i in range(len(data))), max_size)


def split(data: bytes, sizes: Sequence[int]) -> list[bytes]:
    """Cut *data* into chunks whose sizes cycle through *sizes*."""
    chunks = []
    i = k = 0
    while i < len(data):
        n = sizes[k % len(sizes)]
        chunks.append(data[i : i + n])
        i += n
        k += 1
    return chunks


def random_split(data: bytes, rng: random.Random) -> list[bytes]:
    return split(data, [rng.randint(1, 200) for _ in range(16)])


# -- building hellos ---------------------------------------------------------


def vec(width: int, data: bytes) -> bytes:
    return len(data).to_bytes(width, "big") + data


def ext(ext_type: int, data: bytes) -> bytes:
    return struct.pack(">HH", ext_type, len(data)) + data


def sni_ext(*hosts: bytes, name_type: int = 0) -> bytes:
    return ext(0, vec(2, b"".join(bytes([name_type]) + vec(2, h) for h in hosts)))


def alpn_ext(*protocols: bytes) -> bytes:
    return ext(16, vec(2, b"".join(vec(1, p) for p in protocols)))


def versions_ext(*versions: int) -> bytes:
    return ext(43, vec(1, b"".join(struct.pack(">H", v) for v in versions)))


SUITES = (0x1301, 0x1302, 0xC02F)
SUITE_BYTES = struct.pack(f">{len(SUITES)}H", *SUITES)
BASE_EXTENSIONS = sni_ext(b"example.com") + versions_ext(0x0304, 0x0303) + alpn_ext(b"h2", b"http/1.1")


def hello_body(
    *,
    legacy_version: int = 0x0303,
    session_id: bytes = bytes(32),
    suites: bytes = SUITE_BYTES,
    compression: bytes = b"\x00",
    extensions: bytes | None = BASE_EXTENSIONS,
) -> bytes:
    body = (
        struct.pack(">H", legacy_version)
        + bytes(range(32))
        + vec(1, session_id)
        + vec(2, suites)
        + vec(1, compression)
    )
    if extensions is not None:
        body += vec(2, extensions)
    return body


def handshake(body: bytes, msg_type: int = 1) -> bytes:
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def records(message: bytes, size: int = 1 << 14, version: int = 0x0301) -> bytes:
    """Frame a handshake *message* into records of at most *size* bytes."""
    return b"".join(
        struct.pack(">BHH", 0x16, version, len(message[i : i + size])) + message[i : i + size]
        for i in range(0, len(message), size)
    )


def tls(body: bytes) -> bytes:
    return records(handshake(body))


def single_record_message(data: bytes) -> bytes:
    """The handshake message of a hello that is one record, checked to be so."""
    assert data[0] == 0x16 and int.from_bytes(data[3:5], "big") == len(data) - 5, data[:5]
    return data[5:]


# -- real clients ------------------------------------------------------------


@cache
def python_hello(server_hostname: str | None, alpn: tuple[str, ...]) -> bytes:
    """The ClientHello that Python's ssl module sends, made without a socket (cached)."""
    return python_client_hello(server_hostname, list(alpn) or None)


class ClientDidNotConnect(Exception):
    pass


def capture(argv_for_port: Callable[[int], list[str]], timeout: float = 10.0) -> bytes:
    """Run a client against a local socket; return its first flight of bytes.

    Reads until the parser has a final result (or EOF or *timeout*), then
    for a short grace period, so that the capture does not depend on the
    parser being right about where the hello ends.
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(0.05)
        port = listener.getsockname()[1]
        deadline = time.monotonic() + timeout
        proc = subprocess.Popen(
            argv_for_port(port),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            while True:
                try:
                    conn, _ = listener.accept()
                    break
                except TimeoutError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise ClientDidNotConnect() from None
            with conn:
                parser = ClientHelloParser()
                data = bytearray()
                while time.monotonic() < deadline:
                    if parser.result is None:
                        conn.settimeout(max(0.01, deadline - time.monotonic()))
                    else:
                        conn.settimeout(0.2)
                    try:
                        chunk = conn.recv(65536)
                    except TimeoutError:
                        break
                    if not chunk:
                        break
                    data += chunk
                    if parser.result is None:
                        parser.feed(chunk)
                return bytes(data)
        except ClientDidNotConnect:
            proc.kill()
            _, stderr = proc.communicate(timeout=10)
            raise ClientDidNotConnect(stderr.decode(errors="replace").strip()) from None
        finally:
            if proc.returncode is None:
                proc.kill()
                proc.communicate(timeout=10)


def s_client(*args: str) -> Callable[[int], list[str]]:
    return lambda port: ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args]


def curl(scheme: str, name: str) -> Callable[[int], list[str]]:
    return lambda port: [
        "curl", "-q", "-sk", "--noproxy", "*", "--max-time", "3",
        "--resolve", f"{name}:{port}:127.0.0.1", f"{scheme}://{name}:{port}/",
    ]  # fmt: skip


def need(binary: str) -> None:
    if shutil.which(binary) is None:
        raise SkipTest(f"{binary} is not installed")


# -- tests -------------------------------------------------------------------


class ParsedTestCase(SynchronousTestCase):
    def parse(self, data: bytes, max_size: int = MAX_SIZE) -> ClientHello:
        """Parse *data*, checking that every chunking gives the same result."""
        result = feed_chunks([data], max_size)
        assert isinstance(result, ClientHello), result
        self.assertEqual(feed_bytewise(data, max_size), result)
        rng = random.Random(len(data))
        for _ in range(10):
            self.assertEqual(feed_chunks(random_split(data, rng), max_size), result)
        return result

    def assertNotTLS(self, data: bytes, reason: str) -> None:
        """*data* gives NotTLS(reason), fed whole and byte by byte."""
        self.assertEqual(feed_chunks([data]), NotTLS(reason))
        self.assertEqual(feed_bytewise(data), NotTLS(reason))


class RealClientTests(ParsedTestCase):
    def test_python_ssl(self) -> None:
        data = python_hello("Example.COM", ("h2", "http/1.1"))
        hello = self.parse(data)
        self.assertEqual(hello.sni, "example.com")
        self.assertEqual(hello.alpn, (b"h2", b"http/1.1"))
        self.assertIn(0x0304, hello.supported_versions)
        self.assertEqual(hello.legacy_version, 0x0303)
        self.assertFalse(hello.has_ech)
        self.assertEqual(hello.length, len(data))
        self.assertEqual(hello.record_version, int.from_bytes(data[1:3], "big"))
        self.assertIn(0x1301, hello.cipher_suites)
        self.assertEqual(hello.extensions[:1], (0,))

    def test_python_ssl_without_sni_or_alpn(self) -> None:
        data = python_hello(None, ())
        hello = self.parse(data)
        self.assertIsNone(hello.sni)
        self.assertEqual(hello.alpn, ())
        self.assertNotIn(0, hello.extensions)
        self.assertNotIn(16, hello.extensions)
        self.assertEqual(hello.length, len(data))

    def test_python_ssl_large_hello(self) -> None:
        """A hello bigger than one MTU (here from a long ALPN list)."""
        protocols = tuple(f"protocol-{i:03d}-{'x' * 12}" for i in range(60))
        data = python_hello("big.example", protocols)
        self.assertGreater(len(data), 1500)
        hello = self.parse(data)
        self.assertEqual(hello.alpn, tuple(p.encode() for p in protocols))
        self.assertEqual(hello.sni, "big.example")
        self.assertEqual(hello.length, len(data))

    def test_openssl_sni_and_alpn(self) -> None:
        need("openssl")
        data = capture(s_client("-servername", "Example.TEST", "-alpn", "h2,http/1.1"))
        hello = self.parse(data)
        self.assertEqual(hello.sni, "example.test")
        self.assertEqual(hello.alpn, (b"h2", b"http/1.1"))
        self.assertIn(0x0304, hello.supported_versions)
        self.assertEqual(hello.length, len(data))

    def test_openssl_without_sni(self) -> None:
        need("openssl")
        data = capture(s_client("-noservername", "-alpn", "http/1.1"))
        hello = self.parse(data)
        self.assertIsNone(hello.sni)
        self.assertNotIn(0, hello.extensions)
        self.assertEqual(hello.alpn, (b"http/1.1",))
        self.assertEqual(hello.length, len(data))

    def test_openssl_without_alpn(self) -> None:
        need("openssl")
        data = capture(s_client("-servername", "no-alpn.example"))
        hello = self.parse(data)
        self.assertEqual(hello.sni, "no-alpn.example")
        self.assertEqual(hello.alpn, ())
        self.assertNotIn(16, hello.extensions)
        self.assertEqual(hello.length, len(data))

    def test_openssl_tls12_only(self) -> None:
        """A TLS 1.2 client sends no supported_versions."""
        need("openssl")
        data = capture(s_client("-servername", "old.example", "-tls1_2"))
        hello = self.parse(data)
        self.assertEqual(hello.supported_versions, ())
        self.assertEqual(hello.legacy_version, 0x0303)
        self.assertEqual(hello.sni, "old.example")
        self.assertEqual(hello.length, len(data))

    def test_post_quantum_key_share(self) -> None:
        """A hybrid post-quantum key share makes the hello larger than one MTU.

        pyOpenSSL's bundled OpenSSL (the library the gateway itself uses)
        offers X25519MLKEM768 by default; the system openssl on Debian 12
        cannot, so the hello comes from a pyOpenSSL client in memory.
        """
        context = SSL.Context(SSL.TLS_METHOD)
        client = SSL.Connection(context, None)
        client.set_connect_state()
        client.set_tlsext_host_name(b"pq.example")
        client.set_alpn_protos([b"h2", b"http/1.1"])
        try:
            client.do_handshake()
        except SSL.WantReadError:
            pass
        data = client.bio_read(65536)
        self.assertIn(X25519MLKEM768, data)
        hello = self.parse(data)
        self.assertEqual(hello.sni, "pq.example")
        self.assertEqual(hello.alpn, (b"h2", b"http/1.1"))
        self.assertGreater(hello.length, 1500)
        self.assertEqual(hello.length, len(data))

    def test_curl(self) -> None:
        need("curl")
        data = capture(curl("https", "curl.example"))
        hello = self.parse(data)
        self.assertEqual(hello.sni, "curl.example")
        self.assertIn(b"http/1.1", hello.alpn)
        self.assertIn(0x0304, hello.supported_versions)
        self.assertEqual(hello.length, len(data))

    def test_malformed_flag(self) -> None:
        """Broken TLS is flagged as such; another protocol is not."""
        hello = bytearray(python_hello("x.example", ()))
        hello[6:9] = (0xFFFFFF).to_bytes(3, "big")
        broken = ClientHelloParser().feed(bytes(hello))
        self.assertIsInstance(broken, NotTLS)
        assert isinstance(broken, NotTLS)
        self.assertTrue(broken.malformed, broken.reason)
        http = ClientHelloParser().feed(b"GET / HTTP/1.1\r\n")
        assert isinstance(http, NotTLS)
        self.assertEqual((http.reason, http.malformed), ("looks like plain HTTP", False))
        oversized = ClientHelloParser().feed(b"\x16\x03\x01\x40\x00\x01\xff\xff\xff")
        assert isinstance(oversized, NotTLS)
        self.assertTrue(oversized.malformed, oversized.reason)

    def test_curl_plain_http(self) -> None:
        need("curl")
        data = capture(curl("http", "curl.example"))
        self.assertTrue(data.startswith(b"GET / HTTP/1.1\r\n"), data[:40])
        self.assertNotTLS(data, "looks like plain HTTP")


class FramingTests(ParsedTestCase):
    def test_split_into_records(self) -> None:
        """A hello split over several records parses the same; length counts them all."""
        data = python_hello("split.example", ("h2", "http/1.1"))
        whole = self.parse(data)
        message = single_record_message(data)
        for size in (1, 3, 100, 257):
            reframed = records(message, size, version=whole.record_version)
            self.assertEqual(len(reframed), len(message) + 5 * -(-len(message) // size))
            self.assertEqual(self.parse(reframed), attrs.evolve(whole, length=len(reframed)))

    def test_trailing_bytes_not_consumed(self) -> None:
        data = python_hello("trail.example", ("h2",))
        ccs = b"\x14\x03\x03\x00\x01\x01"
        early_data = b"\x17\x03\x03\x00\x05hello"
        stream = data + ccs + early_data
        parser = ClientHelloParser()
        result = parser.feed(stream)
        assert isinstance(result, ClientHello), result
        self.assertEqual(result.length, len(data))
        self.assertEqual(parser.buffered, stream)
        self.assertEqual(feed_bytewise(stream), result)
        self.assertEqual(feed_chunks(split(stream, [len(data) - 1, 7])), result)

    def test_truncated_is_need_more(self) -> None:
        data = python_hello("trunc.example", ("h2",))
        parser = ClientHelloParser()
        for i in range(len(data) - 1):
            self.assertEqual(feed_chunks([data[:i]]), NeedMore())
            self.assertEqual(parser.feed(data[i : i + 1]), NeedMore())
            self.assertIsNone(parser.result)
        self.assertIsInstance(parser.feed(data[-1:]), ClientHello)
        self.assertEqual(parser.result, feed_chunks([data]))

    def test_feed_after_final_result_raises(self) -> None:
        for data in (python_hello("x.example", ()), b"GET / HTTP/1.0\r\n\r\n"):
            parser = ClientHelloParser()
            final = parser.feed(data)
            self.assertNotIsInstance(final, NeedMore)
            self.assertRaises(ClientHelloError, parser.feed, b"more")
            self.assertRaises(ClientHelloError, parser.feed, b"")
            self.assertEqual(parser.result, final)

    def test_max_size_bounds(self) -> None:
        self.assertRaises(ValueError, ClientHelloParser, MAX_SIZE + 1)
        self.assertRaises(ValueError, ClientHelloParser, 0)

    def test_max_size_counts_record_headers(self) -> None:
        data = python_hello("cap.example", ("h2",))
        reframed = records(single_record_message(data), 10)
        self.assertEqual(self.parse(reframed, max_size=len(reframed)).length, len(reframed))
        small = len(reframed) - 1
        self.assertEqual(feed_chunks([reframed], small), NotTLS(f"ClientHello exceeds {small} bytes"))
        self.assertEqual(
            feed_chunks([data], len(data) - 1), NotTLS(f"ClientHello exceeds {len(data) - 1} bytes")
        )

    def test_hello_of_exactly_64_kib(self) -> None:
        """The largest hello that fits: 4 full records less 20 bytes of headers."""
        message_size = MAX_SIZE - 4 * 5
        padding = message_size - len(handshake(hello_body())) - 4
        body = hello_body(extensions=BASE_EXTENSIONS + ext(21, bytes(padding)))
        data = tls(body)
        self.assertEqual(len(data), MAX_SIZE)
        hello = feed_chunks([data])
        assert isinstance(hello, ClientHello), hello
        self.assertEqual(hello.length, MAX_SIZE)
        self.assertEqual(hello.extensions, (0, 43, 16, 21))
        # One byte more cannot fit; that is known from the first 9 bytes.
        bigger = tls(hello_body(extensions=BASE_EXTENSIONS + ext(21, bytes(padding + 1))))
        self.assertEqual(feed_chunks([bigger[:9]]), NotTLS("ClientHello exceeds 65536 bytes"))

    def test_oversize_declared_fails_without_waiting(self) -> None:
        data = b"\x16\x03\x01\x40\x00" + b"\x01" + (0xFFFFFF).to_bytes(3, "big")
        self.assertEqual(feed_chunks([data]), NotTLS("ClientHello exceeds 65536 bytes"))
        self.assertEqual(feed_bytewise(data), NotTLS("ClientHello exceeds 65536 bytes"))


class BuiltHelloTests(ParsedTestCase):
    def test_built_hello_parses(self) -> None:
        """The baseline that the error tests below break in one place."""
        data = tls(hello_body())
        self.assertEqual(
            self.parse(data),
            ClientHello(
                sni="example.com",
                alpn=(b"h2", b"http/1.1"),
                supported_versions=(0x0304, 0x0303),
                legacy_version=0x0303,
                has_ech=False,
                length=len(data),
                cipher_suites=SUITES,
                extensions=(0, 43, 16),
                record_version=0x0301,
            ),
        )

    def test_no_extensions(self) -> None:
        hello = self.parse(tls(hello_body(extensions=None)))
        self.assertEqual((hello.sni, hello.alpn, hello.extensions), (None, (), ()))

    def test_ech(self) -> None:
        hello = self.parse(tls(hello_body(extensions=BASE_EXTENSIONS + ext(0xFE0D, b"\x00" * 8))))
        self.assertTrue(hello.has_ech)

    def test_idna_host_name_kept_as_sent(self) -> None:
        hello = self.parse(tls(hello_body(extensions=sni_ext(b"XN--Bcher-kva.Example"))))
        self.assertEqual(hello.sni, "xn--bcher-kva.example")

    def test_pre_shared_key_last(self) -> None:
        hello = self.parse(tls(hello_body(extensions=BASE_EXTENSIONS + ext(41, b"psk"))))
        self.assertEqual(hello.extensions[-1], 41)


class NotTLSTests(ParsedTestCase):
    def test_sslv2_hello(self) -> None:
        specs = b"\x00\x00\x2f\x00\x00\x35"
        challenge = bytes(16)
        msg = b"\x01\x03\x01" + struct.pack(">HHH", len(specs), 0, len(challenge)) + specs + challenge
        self.assertNotTLS(struct.pack(">H", 0x8000 | len(msg)) + msg, "SSLv2-style hello")

    def test_high_bit_garbage(self) -> None:
        self.assertNotTLS(b"\xff\xff\xff\xff", "unknown protocol (first byte 0xff)")

    def test_plain_http(self) -> None:
        self.assertNotTLS(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "looks like plain HTTP")
        self.assertNotTLS(b"OPTIONS * HTTP/1.1\r\n\r\n", "looks like plain HTTP")
        self.assertNotTLS(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "looks like plain HTTP")
        self.assertEqual(feed_chunks([b"GE"]), NeedMore())

    def test_other_protocols(self) -> None:
        self.assertNotTLS(b"GEX / HTTP/1.1\r\n", "unknown protocol (first byte 0x47)")
        self.assertNotTLS(b"SSH-2.0-OpenSSH_9.2\r\n", "unknown protocol (first byte 0x53)")
        self.assertNotTLS(b"\x00\x00\x00\x00\x00", "unknown protocol (first byte 0x00)")

    def test_non_handshake_first_record(self) -> None:
        self.assertNotTLS(b"\x15\x03\x03\x00\x02\x02\x28", "first record is alert (0x15), not handshake")
        self.assertNotTLS(
            b"\x17\x03\x03\x00\x01\x00", "first record is application_data (0x17), not handshake"
        )

    def test_handshake_type_not_client_hello(self) -> None:
        self.assertNotTLS(records(handshake(hello_body(), msg_type=2)), "handshake message type 2 is not ClientHello")

    def test_record_version(self) -> None:
        data = bytearray(tls(hello_body()))
        for version in (0x0203, 0x0305, 0xFEFD):
            data[1:3] = version.to_bytes(2, "big")
            self.assertNotTLS(bytes(data), f"record version 0x{version:04x} is not SSL 3.0/TLS")

    def test_record_length_zero_and_too_big(self) -> None:
        self.assertNotTLS(b"\x16\x03\x01\x00\x00" + tls(hello_body()), "empty handshake record")
        self.assertNotTLS(b"\x16\x03\x01\x40\x01\x01", "record length 16385 exceeds 16384")

    def test_record_length_too_long(self) -> None:
        """A record longer than its hello is caught from the 9-byte headers."""
        data = bytearray(tls(hello_body()))
        data[3:5] = (len(data) - 5 + 6).to_bytes(2, "big")
        stream = bytes(data) + b"\x14\x03\x03\x00\x01\x01"
        reason = "handshake record runs past the end of the ClientHello"
        self.assertNotTLS(stream, reason)
        self.assertEqual(feed_chunks([stream[:9]]), NotTLS(reason))

    def test_record_length_too_short(self) -> None:
        """The last 5 bytes ("p/1.1" of http/1.1) are then read as a record header."""
        data = bytearray(tls(hello_body()))
        self.assertTrue(data.endswith(b"p/1.1"))
        data[3:5] = (len(data) - 5 - 5).to_bytes(2, "big")
        self.assertNotTLS(bytes(data), "unknown record (type 0x70) before the ClientHello is complete")

    def test_handshake_length_too_short(self) -> None:
        data = bytearray(tls(hello_body()))
        data[6:9] = (len(data) - 9 - 1).to_bytes(3, "big")
        self.assertNotTLS(bytes(data), "handshake record runs past the end of the ClientHello")

    def test_handshake_length_too_long(self) -> None:
        """The parser waits for the rest; a non-handshake record then fails it."""
        data = bytearray(tls(hello_body()))
        data[6:9] = (len(data) - 9 + 10).to_bytes(3, "big")
        self.assertEqual(feed_chunks([bytes(data)]), NeedMore())
        self.assertNotTLS(
            bytes(data) + b"\x14\x03\x03\x00\x01\x01",
            "change_cipher_spec record (type 0x14) before the ClientHello is complete",
        )

    def test_body_truncated(self) -> None:
        self.assertNotTLS(tls(b"\x03\x03" + bytes(8)), "random overruns its container (32 > 8 bytes)")
        self.assertNotTLS(tls(b"\x03"), "legacy_version is truncated")

    def test_extensions_length_too_long(self) -> None:
        body = bytearray(hello_body())
        n = len(BASE_EXTENSIONS)
        at = len(body) - n - 2
        body[at : at + 2] = (n + 1).to_bytes(2, "big")
        self.assertNotTLS(tls(bytes(body)), f"extensions overruns its container ({n + 1} > {n} bytes)")

    def test_extensions_length_too_short(self) -> None:
        body = bytearray(hello_body())
        n = len(BASE_EXTENSIONS)
        at = len(body) - n - 2
        body[at : at + 2] = (n - 3).to_bytes(2, "big")
        self.assertNotTLS(tls(bytes(body)), "extensions do not fill the ClientHello (3 left over)")

    def test_extension_length_overruns(self) -> None:
        last = bytearray(alpn_ext(b"h2"))
        last[2:4] = (len(last) - 4 + 1).to_bytes(2, "big")
        body = hello_body(extensions=sni_ext(b"a.example") + bytes(last))
        self.assertNotTLS(tls(body), "extension 0x0010 (ALPN) overruns the extensions (6 > 5 bytes)")

    def test_truncated_extension_header(self) -> None:
        body = hello_body(extensions=sni_ext(b"a.example") + b"\x00\x10\x00")
        self.assertNotTLS(tls(body), "truncated extension header")

    def test_inner_list_lengths(self) -> None:
        cases = [
            (ext(0, b"\x00\x05" + b"\x00\x00\x01a"), "server_name list overruns its container (5 > 4 bytes)"),
            (ext(0, b"\x00\x03" + b"\x00\x00\x01a"), "server_name list does not fill its extension (1 left over)"),
            (ext(16, b"\x00\x04\x02h2"), "ALPN protocol list overruns its container (4 > 3 bytes)"),
            (ext(16, b"\x00\x03\x03h2"), "ALPN protocol name overruns its container (3 > 2 bytes)"),
            (ext(43, b"\x04\x03\x04"), "supported_versions list overruns its container (4 > 2 bytes)"),
        ]  # fmt: skip
        for extension, reason in cases:
            self.assertNotTLS(tls(hello_body(extensions=extension)), reason)

    def test_sni_two_names(self) -> None:
        body = hello_body(extensions=sni_ext(b"a.example", b"b.example"))
        self.assertNotTLS(tls(body), "server_name lists more than one name")

    def test_sni_not_host_name(self) -> None:
        body = hello_body(extensions=sni_ext(b"a.example", name_type=1))
        self.assertNotTLS(tls(body), "server_name type 1 is not host_name")

    def test_sni_empty(self) -> None:
        self.assertNotTLS(tls(hello_body(extensions=sni_ext(b""))), "empty SNI host name")
        self.assertNotTLS(tls(hello_body(extensions=ext(0, b"\x00\x00"))), "server_name list is empty")
        self.assertNotTLS(tls(hello_body(extensions=ext(0, b""))), "server_name list length is truncated")

    def test_sni_invalid_host_names(self) -> None:
        cases = [
            (b"exa mple.com", "SNI host name contains invalid character ' '"),
            (b"a/b.example", "SNI host name contains invalid character '/'"),
            (b"a\x00.example", "SNI host name contains invalid character '\\x00'"),
            (b"a:443", "SNI host name contains invalid character ':'"),
            ("b\u00fccher.de".encode(), "SNI host name is not ASCII"),
            (b"example.com.", "SNI host name ends with a dot"),
            (b"a..example", "SNI host name has an empty label"),
            (b"x" * 64 + b".example", "SNI host name has a label longer than 63 characters"),
            ((b"x" * 63 + b".") * 4 + b"com", "SNI host name is 259 characters, more than 253"),
            (b"192.0.2.1", "SNI host name is an IP address literal"),
        ]
        for host, reason in cases:
            self.assertNotTLS(tls(hello_body(extensions=sni_ext(host))), reason)

    def test_alpn_empty(self) -> None:
        self.assertNotTLS(tls(hello_body(extensions=alpn_ext())), "ALPN protocol list is empty")
        self.assertNotTLS(tls(hello_body(extensions=alpn_ext(b"h2", b""))), "empty ALPN protocol name")

    def test_supported_versions_bad_length(self) -> None:
        bad = ext(43, vec(1, b"\x03\x04\x03"))
        self.assertNotTLS(
            tls(hello_body(extensions=bad)), "supported_versions length 3 is not a positive even number"
        )

    def test_duplicate_extension(self) -> None:
        body = hello_body(extensions=BASE_EXTENSIONS + alpn_ext(b"h2"))
        self.assertNotTLS(tls(body), "duplicate extension 0x0010 (ALPN)")
        body = hello_body(extensions=ext(0x1234, b"") + ext(0x1234, b""))
        self.assertNotTLS(tls(body), "duplicate extension 0x1234")

    def test_pre_shared_key_not_last(self) -> None:
        body = hello_body(extensions=ext(41, b"psk") + BASE_EXTENSIONS)
        self.assertNotTLS(tls(body), "pre_shared_key is not the last extension")

    def test_hello_fields(self) -> None:
        cases = [
            (hello_body(legacy_version=0x0200), "legacy_version 0x0200 is not SSL 3.0/TLS"),
            (hello_body(session_id=bytes(33)), "legacy_session_id is 33 bytes, more than 32"),
            (hello_body(suites=b"\x13\x01\x13"), "cipher_suites length 3 is not a positive even number"),
            (hello_body(suites=b""), "cipher_suites length 0 is not a positive even number"),
            (hello_body(compression=b"\x01"), "compression_methods lacks null (0)"),
            (hello_body(compression=b""), "compression_methods lacks null (0)"),
        ]
        for body, reason in cases:
            self.assertNotTLS(tls(body), reason)


# -- fuzzing -----------------------------------------------------------------

chunk_sizes = st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=8)


def final_result(testcase: SynchronousTestCase, data: bytes, sizes: Sequence[int]) -> Result:
    """Feed *data* whole, byte by byte and in *sizes*; check they agree."""
    parser = ClientHelloParser()
    whole = parser.feed(data)
    testcase.assertIsInstance(whole, (NeedMore, NotTLS, ClientHello))
    if isinstance(whole, NeedMore):
        testcase.assertIsNone(parser.result)
    else:
        testcase.assertRaises(ClientHelloError, parser.feed, b"\x16")
    if isinstance(whole, ClientHello):
        testcase.assertLessEqual(whole.length, len(data))
        testcase.assertEqual(feed_chunks([data[: whole.length]]), whole)
    testcase.assertEqual(feed_bytewise(data), whole)
    testcase.assertEqual(feed_chunks(split(data, sizes)), whole)
    return whole


def mutate(data: bytes, edits: Sequence[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for op, where, value in edits:
        i = where % (len(out) + 1)
        if op == "insert":
            out[i:i] = bytes([value])
        elif i < len(out):
            if op == "delete":
                del out[i]
            else:
                out[i] ^= value or 1
    return bytes(out)


edit_lists = st.lists(
    st.tuples(
        st.sampled_from(["flip", "insert", "delete"]),
        st.integers(min_value=0, max_value=1 << 16),
        st.integers(min_value=0, max_value=255),
    ),
    min_size=1,
    max_size=4,
)

host_names = st.from_regex(r"([a-z0-9_-]{1,20}\.){0,4}[a-z][a-z0-9-]{0,20}", fullmatch=True)


class FuzzTests(SynchronousTestCase):
    @FUZZ
    @given(data=st.binary(max_size=600), sizes=chunk_sizes)
    def test_arbitrary_bytes(self, data: bytes, sizes: list[int]) -> None:
        final_result(self, data, sizes)

    @FUZZ
    @given(data=st.binary(max_size=600), sizes=chunk_sizes)
    def test_arbitrary_bytes_after_a_record_header(self, data: bytes, sizes: list[int]) -> None:
        final_result(self, b"\x16\x03\x01" + data, sizes)

    @FUZZ
    @given(edits=edit_lists, sizes=chunk_sizes)
    def test_mutated_real_hello(self, edits: list[tuple[str, int, int]], sizes: list[int]) -> None:
        data = python_hello("fuzz.example", ("h2", "http/1.1"))
        final_result(self, mutate(data, edits), sizes)

    @FUZZ
    @given(
        edits=edit_lists,
        record_size=st.integers(min_value=1, max_value=300),
        sizes=chunk_sizes,
    )
    def test_mutated_split_hello(
        self, edits: list[tuple[str, int, int]], record_size: int, sizes: list[int]
    ) -> None:
        message = single_record_message(python_hello("fuzz.example", ("h2",)))
        final_result(self, mutate(records(message, record_size), edits), sizes)

    @FUZZ
    @given(record_sizes=st.lists(st.integers(min_value=1, max_value=600), min_size=1, max_size=10))
    def test_any_record_split(self, record_sizes: list[int]) -> None:
        """However the message is cut into records, only length changes."""
        data = python_hello("split.example", ("h2", "http/1.1"))
        expected = feed_chunks([data])
        assert isinstance(expected, ClientHello), expected
        message = single_record_message(data)
        stream = b"".join(
            records(piece, len(piece), version=expected.record_version)
            for piece in split(message, record_sizes)
        )
        result = final_result(self, stream, record_sizes)
        self.assertEqual(result, attrs.evolve(expected, length=len(stream)))

    @FUZZ
    @given(
        host=host_names,
        alpn=st.lists(st.binary(min_size=1, max_size=255), max_size=20),
        versions=st.lists(st.integers(min_value=0, max_value=0xFFFF), min_size=1, max_size=20),
        session_id=st.binary(max_size=32),
    )
    def test_round_trip(
        self, host: str, alpn: list[bytes], versions: list[int], session_id: bytes
    ) -> None:
        extensions = sni_ext(host.upper().encode()) + versions_ext(*versions)
        if alpn:
            extensions += alpn_ext(*alpn)
        data = tls(hello_body(session_id=session_id, extensions=extensions))
        hello = final_result(self, data, [7])
        self.assertEqual(
            (hello.sni, hello.alpn, hello.supported_versions, hello.length)
            if isinstance(hello, ClientHello)
            else hello,
            (host, tuple(alpn), tuple(versions), len(data)),
        )
