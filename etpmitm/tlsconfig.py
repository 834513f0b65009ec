"""TLS hygiene shared by both sides of the gateway.

TLS 1.2 and 1.3 only; for TLS 1.2 only ECDHE key exchange with AEAD ciphers
(Mozilla "intermediate" without DHE); no compression, no renegotiation.
"""

from __future__ import annotations

from OpenSSL import SSL

TLS12_CIPHERS = b":".join(
    [
        b"ECDHE-ECDSA-AES128-GCM-SHA256",
        b"ECDHE-RSA-AES128-GCM-SHA256",
        b"ECDHE-ECDSA-AES256-GCM-SHA384",
        b"ECDHE-RSA-AES256-GCM-SHA384",
        b"ECDHE-ECDSA-CHACHA20-POLY1305",
        b"ECDHE-RSA-CHACHA20-POLY1305",
    ]
)
TLS13_CIPHERSUITES = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

_OPTIONS = SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_CIPHER_SERVER_PREFERENCE


def hardened_context() -> SSL.Context:
    """A fresh context with the protocol floor, suites and options set."""
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(_OPTIONS)
    context.set_cipher_list(TLS12_CIPHERS)
    context.set_tls13_ciphersuites(TLS13_CIPHERSUITES)
    # Free each idle connection's read and write buffers (about a third of
    # a relayed connection's memory) until it has data again.
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    return context
