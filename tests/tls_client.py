"""Lab client: a Python ssl client run inside the client namespace.

    python tests/tls_client.py --host IP --port 443 [--sni NAME] --cafile F
        [--alpn h2,http/1.1] [--path /] [--half-close] [--connections N]

Prints one JSON object: what the handshake negotiated, the peer certificate
and the HTTP/1.1 response (status, body length and sha256).  With
``--half-close`` it sends close_notify and a FIN right after the request and
only then reads the response; ``--stall S`` waits S seconds before reading.  With ``--connections N`` it opens N
connections at once (threads), each doing one request, and prints a summary.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import socket
import ssl
import threading
import time
from typing import Any


def _pump_out(sock: socket.socket, outgoing: ssl.MemoryBIO) -> None:
    data = outgoing.read()
    if data:
        sock.sendall(data)


def _handshake(sock: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> None:
    while True:
        try:
            tls.do_handshake()
            _pump_out(sock, outgoing)
            return
        except ssl.SSLWantReadError:
            _pump_out(sock, outgoing)
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("EOF during handshake")
            incoming.write(data)


def _read_all(sock: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> tuple[bytes, bool]:
    """Read until the peer's close_notify (clean=True) or a bare EOF."""
    chunks: list[bytes] = []
    while True:
        try:
            chunk = tls.read(65536)
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)
            continue
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            return b"".join(chunks), True
        _pump_out(sock, outgoing)
        data = sock.recv(262144)
        if not data:
            return b"".join(chunks), False
        incoming.write(data)


def _issuer_cn(der: bytes | None) -> str | None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    if not der:
        return None
    names = x509.load_der_x509_certificate(der).issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def one_request(args: argparse.Namespace) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=args.cafile)
    if args.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if args.legacy:
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    if args.alpn:
        context.set_alpn_protocols(args.alpn.split(","))
    if args.sni is None:
        context.check_hostname = False  # the IP is checked below
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=args.sni)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(args.timeout)
        sock.connect((args.host, args.port))
        _handshake(sock, tls, incoming, outgoing)
        cert = tls.getpeercert()
        der = tls.getpeercert(binary_form=True)
        if args.sni is None and not args.insecure:
            sans = [ipaddress.ip_address(v.strip()) for k, v in cert.get("subjectAltName", ()) if k == "IP Address"]
            if ipaddress.ip_address(args.host) not in sans:
                raise ssl.SSLCertVerificationError(f"{args.host} not in {sans}")
        request = f"GET {args.path} HTTP/1.1\r\nHost: {args.sni or args.host}\r\nConnection: close\r\n\r\n"
        tls.write(request.encode())
        _pump_out(sock, outgoing)
        if args.stall:
            time.sleep(args.stall)  # a slow reader: the response backs up meanwhile
        half_closed = False
        if args.half_close:
            try:
                tls.unwrap()  # sends close_notify; the peer's comes later
            except ssl.SSLWantReadError:
                pass
            _pump_out(sock, outgoing)
            sock.shutdown(socket.SHUT_WR)
            half_closed = True
        raw, clean = _read_all(sock, tls, incoming, outgoing)
    head, _, body = raw.partition(b"\r\n\r\n")
    return {
        "alpn": tls.selected_alpn_protocol(),
        "version": tls.version(),
        "issuer": dict(x[0] for x in cert["issuer"]) if cert else {},
        "issuer_cn": _issuer_cn(der),
        "subject": dict(x[0] for x in cert["subject"]) if cert else {},
        "san": [list(x) for x in cert.get("subjectAltName", ())] if cert else [],
        "status": head.split(b"\r\n", 1)[0].decode("latin-1"),
        "body": body[:4096].decode("utf-8", "replace"),
        "length": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "half_closed": half_closed,
        "clean_close": clean,
    }


def many(args: argparse.Namespace) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    errors: list[str] = []
    barrier = threading.Barrier(args.connections)
    lock = threading.Lock()

    def worker() -> None:
        try:
            barrier.wait(args.timeout)
            result = one_request(args)
            with lock:
                results.append(result)
        except Exception as e:
            with lock:
                errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker) for _ in range(args.connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "ok": len(results),
        "errors": errors,
        "statuses": sorted({r["status"] for r in results}),
        "digests": sorted({r["sha256"] for r in results}),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=443)
    p.add_argument("--sni")
    p.add_argument("--cafile", required=True)
    p.add_argument("--alpn", default="")
    p.add_argument("--path", default="/")
    p.add_argument("--half-close", action="store_true")
    p.add_argument("--connections", type=int, default=0)
    p.add_argument("--stall", type=float, default=0.0, help="seconds to wait before reading the response")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--insecure", action="store_true", help="do not verify (a user who clicks through a warning)")
    p.add_argument("--legacy", action="store_true", help="allow TLS 1.0 and weak suites (an old device)")
    args = p.parse_args()
    try:
        out = many(args) if args.connections else one_request(args)
    except Exception as e:
        out = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
