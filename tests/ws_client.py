"""Lab client: a WebSocket (wsproto) over Python ssl, run inside the client namespace.

    python tests/ws_client.py --host IP --port 443 --sni NAME --cafile F [--path /ws]

It offers ALPN http/1.1 only and no extensions (so no compression: every
message crosses the gateway as it was sent), opens the WebSocket, and sends
MESSAGES: the small ones at once (several frames in one write, one text
message in two fragments, and a ping among them), then the large ones one at a
time.  Each echo must equal what was sent; then it closes with code 1000 and
reads to the end of the TLS stream.

Prints one JSON object: ``accepted`` (the 101), ``echoes`` (kind, length and
sha256 of each message received, in order), ``mismatches`` (indexes whose echo
differs from what was sent), ``pongs``, the ``close`` code and reason the
origin answered with, ``tls_end`` (``close_notify`` or what ended it instead)
and the connection's ``local`` port (to find its audit events).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import ssl
from typing import Any, Union

import wsproto
import wsproto.events

Message = Union[str, bytes]

# Text and binary, small and large; 1 MiB of every byte value, and text outside ASCII.
MESSAGES: list[Message] = [
    "hello",
    b"\x00\x01\x02\xff",
    "h\u00e9llo \u2713 \U0001f600",
    b"",
    "fragmented " * 100,
    bytes(range(256)) * 4096,  # 1 MiB
    "x" * 70000,  # over 65535: a frame with a 64-bit length
    b"\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",  # an HTTP look-alike, after the upgrade
]
SMALL = 5  # MESSAGES[:SMALL] are sent in one write; MESSAGES[4] in two fragments


def digest(message: Message) -> dict[str, Any]:
    data = message.encode() if isinstance(message, str) else message
    return {"kind": "text" if isinstance(message, str) else "bytes", "length": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


class Client:
    def __init__(self, sock: ssl.SSLSocket, ws: wsproto.WSConnection) -> None:
        self.sock, self.ws = sock, ws
        self.received: list[Message] = []
        self.pongs = 0
        self.close: wsproto.events.CloseConnection | None = None
        self._text: list[str] = []
        self._binary: list[bytes] = []

    def send(self, *events: wsproto.events.Event) -> None:
        self.sock.sendall(b"".join(self.ws.send(e) for e in events))

    def read(self) -> bool:
        """Read once and handle the events; False at the end of the stream."""
        data = self.sock.recv(65536)
        self.ws.receive_data(data or None)
        for event in self.ws.events():
            if isinstance(event, wsproto.events.TextMessage):
                self._text.append(event.data)
                if event.message_finished:
                    self.received.append("".join(self._text))
                    self._text.clear()
            elif isinstance(event, wsproto.events.BytesMessage):
                self._binary.append(bytes(event.data))
                if event.message_finished:
                    self.received.append(b"".join(self._binary))
                    self._binary.clear()
            elif isinstance(event, wsproto.events.Pong):
                self.pongs += 1
            elif isinstance(event, wsproto.events.CloseConnection) and self.close is None:
                self.close = event  # (wsproto adds a 1006 at the end of the stream)
        return bool(data)

    def until(self, received: int) -> None:
        while len(self.received) < received:
            if not self.read():
                raise ConnectionError(f"the stream ended after {len(self.received)} messages")


def run(args: argparse.Namespace) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=args.cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    raw = socket.create_connection((args.host, args.port), timeout=args.timeout)
    with ctx.wrap_socket(raw, server_hostname=args.sni) as sock:
        result: dict[str, Any] = {"alpn": sock.selected_alpn_protocol(), "local": sock.getsockname()[1]}
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        client = Client(sock, ws)
        client.send(wsproto.events.Request(host=args.sni, target=args.path))
        accepted = None
        while accepted is None:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the stream ended before the handshake's answer")
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, (wsproto.events.AcceptConnection, wsproto.events.RejectConnection)):
                    accepted = isinstance(event, wsproto.events.AcceptConnection)
                    if not accepted:
                        result["rejected"] = getattr(event, "status_code", None)
                    break
        result["accepted"] = accepted
        if not accepted:
            return result

        fragmented = MESSAGES[4]
        assert isinstance(fragmented, str)
        half = len(fragmented) // 2
        client.send(
            *(_message(m) for m in MESSAGES[:4]),
            wsproto.events.Ping(payload=b"are you there"),
            wsproto.events.TextMessage(data=fragmented[:half], message_finished=False),
            wsproto.events.TextMessage(data=fragmented[half:], message_finished=True),
        )
        client.until(SMALL)
        for i, message in enumerate(MESSAGES[SMALL:], SMALL):
            client.send(_message(message))
            client.until(i + 1)

        result["echoes"] = [digest(m) for m in client.received]
        result["mismatches"] = [i for i, (a, b) in enumerate(zip(MESSAGES, client.received)) if a != b]
        result["pongs"] = client.pongs
        client.send(wsproto.events.CloseConnection(code=1000, reason="done"))
        try:
            while client.read():
                pass
            result["tls_end"] = "close_notify"
            sock.unwrap()  # ours back: both directions end cleanly
        except (ssl.SSLError, OSError) as e:
            result["tls_end"] = repr(e)
        if client.close is not None:
            result["close"] = [client.close.code, client.close.reason]
        result["state"] = ws.state.name
        return result


def _message(message: Message) -> wsproto.events.Event:
    if isinstance(message, str):
        return wsproto.events.TextMessage(data=message)
    return wsproto.events.BytesMessage(data=message)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=443)
    p.add_argument("--sni", required=True, help="server name, and the handshake's Host")
    p.add_argument("--cafile", required=True)
    p.add_argument("--path", default="/ws")
    p.add_argument("--timeout", type=float, default=30.0)
    print(json.dumps(run(p.parse_args())))


if __name__ == "__main__":
    main()
