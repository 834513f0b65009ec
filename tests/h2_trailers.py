"""A gRPC-style exchange for the lab: an h2 client and server that both send trailers.

    python tests/h2_trailers.py server --cert C --key K --port P
    python tests/h2_trailers.py client --cafile ROOT --host IP --port P --sni NAME --size N

The client POSTs N bytes (content-type application/grpc, ``te: trailers``)
followed by the trailer ``x-request-sha256``.  The server answers with the
sha256 it computed as the body, then the trailers ``grpc-status: 0`` and
``x-request-trailer`` (the request trailer it got).  The client prints JSON:
status, body, trailers, and the ALPN it negotiated.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import ssl
from typing import Any

import h2.config
import h2.connection
import h2.events


def _pump(sock: ssl.SSLSocket, conn: h2.connection.H2Connection) -> list[h2.events.Event] | None:
    """Send what h2 has queued, then read one chunk and return its events (None at EOF)."""
    sock.sendall(conn.data_to_send())
    data = sock.recv(65536)
    return conn.receive_data(data) if data else None


def _send_body(sock: ssl.SSLSocket, conn: h2.connection.H2Connection, sid: int, body: bytes) -> None:
    """Send ``body`` on ``sid`` as the peer's windows allow (reading its WINDOW_UPDATEs meanwhile)."""
    view = memoryview(body)
    while view:
        size = min(len(view), conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
        if size <= 0:
            if _pump(sock, conn) is None:
                raise ConnectionError("peer closed while we were sending")
            continue
        conn.send_data(sid, view[:size].tobytes())
        view = view[size:]
        sock.sendall(conn.data_to_send())


def serve(args: argparse.Namespace) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    context.set_alpn_protocols(["h2"])
    listener = socket.create_server(("::", args.port), family=socket.AF_INET6, dualstack_ipv6=True)
    while True:
        raw, _ = listener.accept()
        try:
            with context.wrap_socket(raw, server_side=True) as sock:
                _serve_one(sock)
        except (OSError, ssl.SSLError, h2.exceptions.ProtocolError):
            continue


def _serve_one(sock: ssl.SSLSocket) -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    digest, trailers = hashlib.sha256(), {}
    while True:
        events = _pump(sock, conn)
        if events is None:
            return
        for event in events:
            if isinstance(event, h2.events.DataReceived) and event.data is not None:
                digest.update(event.data)
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                trailers = dict(event.headers)
            elif isinstance(event, h2.events.StreamEnded):
                sid = event.stream_id
                conn.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
                _send_body(sock, conn, sid, digest.hexdigest().encode())
                conn.send_headers(sid, [
                    ("grpc-status", "0"), ("x-request-trailer", str(trailers.get("x-request-sha256"))),
                ], end_stream=True)
                digest, trailers = hashlib.sha256(), {}
            elif isinstance(event, h2.events.ConnectionTerminated):
                sock.sendall(conn.data_to_send())
                return


def call(args: argparse.Namespace) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=args.cafile)
    context.set_alpn_protocols(["h2"])
    body = bytes(range(256)) * (args.size // 256) + bytes(args.size % 256)
    with socket.create_connection((args.host, args.port), timeout=60) as raw:
        with context.wrap_socket(raw, server_hostname=args.sni) as sock:
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
            conn.initiate_connection()
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, [
                (":method", "POST"), (":scheme", "https"), (":authority", args.sni), (":path", "/pkg.Echo/Digest"),
                ("content-type", "application/grpc"), ("te", "trailers"),
            ])
            _send_body(sock, conn, sid, body)
            conn.send_headers(sid, [("x-request-sha256", hashlib.sha256(body).hexdigest())], end_stream=True)
            result: dict[str, Any] = {"alpn": sock.selected_alpn_protocol(), "body": ""}
            while "trailers" not in result:
                events = _pump(sock, conn)
                if events is None:
                    result["error"] = "connection ended before the trailers"
                    break
                for event in events:
                    if isinstance(event, h2.events.ResponseReceived):
                        result["status"] = dict(event.headers).get(":status")
                    elif isinstance(event, h2.events.DataReceived) and event.data is not None:
                        result["body"] += event.data.decode()
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.TrailersReceived):
                        result["trailers"] = dict(event.headers)
                    elif isinstance(event, h2.events.StreamReset):
                        result["error"] = f"stream reset: {event.error_code!r}"
                        return result
            conn.close_connection()
            sock.sendall(conn.data_to_send())
    result["sent_sha256"] = hashlib.sha256(body).hexdigest()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    server = sub.add_parser("server")
    server.add_argument("--cert", required=True)
    server.add_argument("--key", required=True)
    server.add_argument("--port", type=int, required=True)
    client = sub.add_parser("client")
    client.add_argument("--cafile", required=True)
    client.add_argument("--host", required=True)
    client.add_argument("--port", type=int, required=True)
    client.add_argument("--sni", required=True)
    client.add_argument("--size", type=int, default=1 << 20)
    args = parser.parse_args()
    if args.mode == "server":
        serve(args)
    else:
        print(json.dumps(call(args)))


if __name__ == "__main__":
    main()
