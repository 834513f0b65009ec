"""Real ClientHello bytes made at test time by Python's ssl module (no network)."""

from __future__ import annotations

import ssl


def python_client_hello(sni: str | None = "example.test", alpn: list[str] | None = None) -> bytes:
    """The first flight of a Python ssl client, from a memory BIO."""
    context = ssl.create_default_context()
    if sni is None:
        context.check_hostname = False
    if alpn:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=sni)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def with_extension(hello: bytes, ext_type: int, payload: bytes) -> bytes:
    """``hello`` (one record holding one ClientHello) with an extension appended.

    Fixes the extensions, handshake and record lengths, so the result is a
    well-formed ClientHello that a real client could have sent.
    """
    record, body = hello[:5], hello[5:]
    assert record[0] == 0x16 and body[0] == 1, "not a single-record ClientHello"
    pos = 4 + 2 + 32  # handshake header, legacy_version, random
    pos += 1 + body[pos]  # session id
    pos += 2 + int.from_bytes(body[pos : pos + 2], "big")  # cipher suites
    pos += 1 + body[pos]  # compression methods
    extensions_length = int.from_bytes(body[pos : pos + 2], "big")
    extension = ext_type.to_bytes(2, "big") + len(payload).to_bytes(2, "big") + payload
    extensions = body[pos + 2 : pos + 2 + extensions_length] + extension
    message = body[4:pos] + len(extensions).to_bytes(2, "big") + extensions
    handshake = b"\x01" + len(message).to_bytes(3, "big") + message
    return record[:3] + len(handshake).to_bytes(2, "big") + handshake


ENCRYPTED_CLIENT_HELLO = 0xFE0D


def ech_client_hello(sni: str = "public.example") -> bytes:
    """A ClientHello that carries an (outer) encrypted_client_hello extension."""
    # ECHClientHello: type outer(0), cipher suite (HKDF-SHA256, AES-128-GCM),
    # config id, an encapsulated key and an opaque payload.
    payload = b"\x00" + b"\x00\x01\x00\x01" + b"\x2a" + b"\x00\x20" + bytes(32) + b"\x00\x40" + bytes(64)
    return with_extension(python_client_hello(sni), ENCRYPTED_CLIENT_HELLO, payload)
