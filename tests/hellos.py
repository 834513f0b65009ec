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
