"""TLS clients for the fleet lab (tests/test_fleet_e2e.py), run in the client namespace.

    fleet_client.py load HOST SNI CAFILE SECONDS CONCURRENCY
        New connections for SECONDS, CONCURRENCY at a time: each one a TLS
        handshake and ``GET /`` with ``Connection: close``.  Prints a JSON list
        of [start, end, ok, error] (wall-clock seconds) per connection.
    fleet_client.py hold HOST SNI CAFILE
        One connection: handshake, half a request, prints "ready"; on a line
        on stdin sends the rest; prints the response's status line.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import threading
import time

TIMEOUT = 10.0


def _connect(host: str, sni: str, cafile: str) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=cafile)
    raw = socket.create_connection((host, 443), timeout=TIMEOUT)
    return context.wrap_socket(raw, server_hostname=sni)


def _response(tls: ssl.SSLSocket) -> bytes:
    data = b""
    while chunk := tls.recv(65536):
        data += chunk
    return data


def one(host: str, sni: str, cafile: str) -> tuple[bool, str]:
    try:
        with _connect(host, sni, cafile) as tls:
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
            data = _response(tls)
    except (OSError, ssl.SSLError) as e:
        return False, f"{type(e).__name__}: {e}"
    if not (data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"origin ok\n")):
        return False, f"unexpected response {data[:80]!r}"
    return True, ""


def load(host: str, sni: str, cafile: str, seconds: float, concurrency: int) -> None:
    results: list[list[object]] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def run() -> None:
        while time.monotonic() < stop:
            start = time.time()
            ok, error = one(host, sni, cafile)
            with lock:
                results.append([start, time.time(), ok, error])

    threads = [threading.Thread(target=run) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps(sorted(results)))


def hold(host: str, sni: str, cafile: str) -> None:
    with _connect(host, sni, cafile) as tls:
        tls.settimeout(120)
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {sni}\r\n".encode())
        print("ready", flush=True)
        sys.stdin.readline()
        tls.sendall(b"Connection: close\r\n\r\n")
        data = _response(tls)
    print(data.split(b"\r\n", 1)[0].decode(errors="replace"), flush=True)


if __name__ == "__main__":
    mode, host, sni, cafile, *rest = sys.argv[1:]
    if mode == "load":
        load(host, sni, cafile, float(rest[0]), int(rest[1]))
    else:
        hold(host, sni, cafile)
