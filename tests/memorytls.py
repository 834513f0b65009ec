"""Two pyOpenSSL connections over memory BIOs, with the gateway's contexts.

Used by ``tests/test_openssl_internals.py`` and ``bench/crypto_bench.py``: no
sockets, so what is measured or checked is OpenSSL and the calls around it.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto

from etpmitm.gateway._openssl import RECORD
from etpmitm.tlsconfig import hardened_context


def self_signed_context() -> SSL.Context:
    """The gateway's hardened context with a fresh self-signed P-256 certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "memory.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256())
    )
    context = hardened_context()
    context.use_certificate(crypto.X509.from_cryptography(cert))
    context.use_privatekey(crypto.PKey.from_cryptography_key(key))
    return context


def move(source: SSL.Connection, sink: SSL.Connection) -> int:
    """Hand everything ``source`` has written to ``sink``; the bytes moved."""
    moved = 0
    while True:
        try:
            data = source.bio_read(2**20)
        except SSL.WantReadError:
            return moved
        sink.bio_write(data)
        moved += len(data)


def pair(server: SSL.Context | None = None, client: SSL.Context | None = None) -> tuple[SSL.Connection, SSL.Connection]:
    """(server, client), handshaken, the server's TLS 1.3 tickets read by the client."""
    serverEnd = SSL.Connection(server or self_signed_context(), None)
    serverEnd.set_accept_state()
    clientEnd = SSL.Connection(client or hardened_context(), None)
    clientEnd.set_connect_state()
    for _ in range(10):
        for a, b in ((clientEnd, serverEnd), (serverEnd, clientEnd)):
            try:
                a.do_handshake()
            except SSL.WantReadError:
                pass
            move(a, b)
    move(serverEnd, clientEnd)
    try:
        clientEnd.recv(RECORD)
    except SSL.WantReadError:
        pass
    return serverEnd, clientEnd
