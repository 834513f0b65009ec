"""Lab origin: a small threaded HTTPS (and plain HTTP) server for end-to-end tests.

Run it inside the origin namespace (tests.lab.start_origin does that)::

    python tests/origin_server.py --cert C --key K [--chain P] [--port 443]
        [--plain-port 8080] [--alpn h2,http/1.1] [--max-tls 1.2|1.3] [--host ADDR]

By default it listens dual-stack on [::] (IPv4 and IPv6 alike). TLS 1.2+ only.

HTTP/1.1 routes (keep-alive unless "Connection: close"; Content-Length or
chunked request bodies; "Expect: 100-continue" honoured):

    GET  /           "origin ok\\n"
    GET  /bytes/N    N bytes of pattern(N) (byte i is i % 251)
    POST /echo       JSON {"length": n, "sha256": hex} of the request body
    GET  /info       JSON: sni, alpn, version, cipher, peer, local, tls
    GET  /truncate/N N of the 2N bytes its Content-Length promises, then a
                     TCP close without close_notify (an origin that dies)
    GET  /ws         with "Upgrade: websocket": a WebSocket (wsproto) that
                     echoes each text and binary message whole, answers
                     pings, and ends with the close handshake (HTTP/1.1 only)
    GET  /page       an HTML page for browsers (PAGE): its script, run after
                     its stylesheet and image, writes what it saw into the DOM
    GET  /static/... the page's subresources (STATIC): page.css, page.js,
                     picture.png (PICTURE_SIZE) and data.json
    GET  PATH        with --serve PATH=FILE: FILE's bytes

--received FILE appends every request body byte the server gets to FILE
(a log that shows what reached the origin).

If ALPN selects h2 the server speaks real HTTP/2 (the h2 library) with the
same routes, content types and content-length. Many streams run at once on
one connection; response bodies are produced as the peer's flow-control
windows open (so /bytes/N never sits in memory whole) and request bodies are
hashed as they arrive, their window handed back at once. A stream's request
ends before its response starts (it is an origin, not a proxy).
"""

from __future__ import annotations

import argparse
import os
import hashlib
import io
import json
import selectors
import socket
import ssl
import struct
import tempfile
import threading
import weakref
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import wsproto
import wsproto.events
import wsproto.utilities

PERIOD = 251  # prime, so the pattern never lines up with power-of-two buffers
_BLOCK = bytes(i % PERIOD for i in range(PERIOD * 261))  # 65511 bytes, whole periods
MAX_LINE = 65536


def pattern(n: int) -> bytes:
    """The body of GET /bytes/N: byte i is i % 251."""
    return b"".join(_pattern_chunks(n))


def _pattern_chunks(n: int) -> Iterator[bytes]:
    while n > 0:
        chunk = _BLOCK[: min(n, len(_BLOCK))]
        n -= len(chunk)
        yield chunk


def _addr(sockaddr: tuple[str, int] | tuple[str, int, int, int]) -> list[object]:
    """[host, port], with IPv4-mapped IPv6 (dual-stack listener) shown as IPv4."""
    host = sockaddr[0]
    return [host[7:] if host.startswith("::ffff:") and "." in host else host, sockaddr[1]]


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A PNG of one colour (8-bit RGB, no filter), made without an imaging library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(rgb) * width
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


PICTURE_SIZE = (160, 90)
"""The size of /static/picture.png, which the page's script reports."""

PAGE = b"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>etpmitm lab page</title>
<link rel="stylesheet" href="/static/page.css">
<script src="/static/page.js" defer></script>
</head>
<body>
<h1 id="title">etpmitm lab page</h1>
<p id="styled">This paragraph is green if page.css loaded.</p>
<img id="picture" src="/static/picture.png" alt="a blue rectangle">
<ul id="results"></ul>
</body>
</html>
"""

PAGE_JS = b"""// Reports into #results what the page's subresources gave, then adds #done.
(async () => {
  const results = document.getElementById("results");
  const report = (key, value) => {
    const item = document.createElement("li");
    item.id = key;
    item.textContent = key + "=" + value;
    results.appendChild(item);
  };
  report("script", "ran");
  report("css", getComputedStyle(document.getElementById("styled")).color);
  const picture = document.getElementById("picture");
  if (!picture.complete) {
    await new Promise((done) => { picture.onload = picture.onerror = done; });
  }
  report("picture", picture.naturalWidth + "x" + picture.naturalHeight);
  try {
    const data = await (await fetch("/static/data.json")).json();
    report("data", data.message);
  } catch (e) {
    report("data", "error " + e);
  }
  try {
    const blocked = await fetch("/blocked/secret");
    const page = new DOMParser().parseFromString(await blocked.text(), "text/html");
    report("blocked", blocked.status + " " + page.querySelector("h1").textContent);
  } catch (e) {
    report("blocked", "error " + e);
  }
  report("done", "yes");
})();
"""

STATIC: dict[str, tuple[str, bytes]] = {
    "/page": ("text/html; charset=utf-8", PAGE),
    "/static/page.css": (
        "text/css",
        b"body { font-family: sans-serif; margin: 2em; }\n#styled { color: rgb(0, 128, 0); }\n",
    ),
    "/static/page.js": ("text/javascript", PAGE_JS),
    "/static/picture.png": ("image/png", png(*PICTURE_SIZE, (37, 99, 235))),
    "/static/data.json": ("application/json", b'{"message": "fetched over the gateway"}\n'),
}


class BadRequest(Exception):
    pass


class Response:
    """What a route answers: status, content type and body.

    The body is either fixed bytes or, for /bytes/N, pattern(N) produced on
    demand (stream_length set, body empty).
    """

    def __init__(
        self, status: int, reason: str, ctype: str, body: bytes = b"", stream_length: int | None = None
    ) -> None:
        self.status, self.reason, self.ctype = status, reason, ctype
        self.body, self.stream_length = body, stream_length

    @property
    def length(self) -> int:
        return len(self.body) if self.stream_length is None else self.stream_length

    def chunks(self) -> bytes | Iterator[bytes]:
        return self.body if self.stream_length is None else _pattern_chunks(self.stream_length)


class _Outgoing:
    """A response body being sent on one h2 stream, cut as the windows open."""

    def __init__(self, response: Response) -> None:
        self.response = response
        self.offset = 0

    @property
    def remaining(self) -> int:
        return self.response.length - self.offset

    def take(self, n: int) -> bytes:
        """The next at most n bytes (fewer for very large n)."""
        n = min(n, self.remaining)
        if self.response.stream_length is None:
            data = self.response.body[self.offset : self.offset + n]
        else:
            # _BLOCK is whole periods, so slicing from offset % PERIOD continues
            # the pattern; leave room for that start within the block.
            start = self.offset % PERIOD
            data = _BLOCK[start : start + min(n, len(_BLOCK) - PERIOD)]
        self.offset += len(data)
        return data


class _Request:
    """An h2 request stream whose body is still arriving."""

    def __init__(self, method: str, target: str) -> None:
        self.method, self.target = method, target
        self.digest = hashlib.sha256()
        self.length = 0


def _read_body(rfile: BinaryIO, headers: dict[str, str]) -> Iterator[bytes]:
    """Yield the request body (Content-Length or chunked) without buffering it."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = rfile.readline(MAX_LINE)
            if not size_line:
                raise BadRequest("eof in chunk size")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while rfile.readline(MAX_LINE) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            yield from _read_exact(rfile, size)
            rfile.readline(MAX_LINE)  # CRLF after the chunk
    else:
        yield from _read_exact(rfile, int(headers.get("content-length", "0")))


def _read_exact(rfile: BinaryIO, n: int) -> Iterator[bytes]:
    while n > 0:
        data = rfile.read(min(n, 65536))
        if not data:
            raise BadRequest("eof in body")
        n -= len(data)
        yield data


class Connection:
    """One accepted connection, served on its own thread."""

    def __init__(self, server: OriginServer, sock: socket.socket, tls: bool) -> None:
        self.server = server
        self.sock = sock
        self.tls = tls

    def info(self) -> dict[str, object]:
        s = self.sock
        out: dict[str, object] = {
            "tls": self.tls,
            "peer": _addr(s.getpeername()),
            "local": _addr(s.getsockname()),
        }
        if isinstance(s, ssl.SSLSocket):
            cipher = s.cipher()
            out.update(
                sni=self.server.sni.get(s),
                alpn=s.selected_alpn_protocol(),
                version=s.version(),
                cipher=cipher[0] if cipher else None,
                session_reused=s.session_reused,
            )
        return out

    def serve(self) -> None:
        try:
            self.sock.settimeout(self.server.idle_timeout)
            if isinstance(self.sock, ssl.SSLSocket):
                self.sock.do_handshake()
                if self.sock.selected_alpn_protocol() == "h2":
                    self.serve_h2()
                    return
            self.serve_http1()
        except (OSError, BadRequest, ValueError, h2.exceptions.H2Error) as e:
            if self.server.verbose:
                print(f"connection error: {e!r}", flush=True)
        finally:
            self.close()

    truncated = False

    def close(self) -> None:
        if isinstance(self.sock, ssl.SSLSocket) and not self.truncated:
            try:
                # Send close_notify; wait briefly for the peer's.
                self.sock.settimeout(1)
                self.sock.unwrap()
            except (OSError, ValueError):
                pass
        try:
            self.sock.close()
        except OSError:
            pass

    def send_response(
        self, status: str, body: bytes | Iterator[bytes], length: int, ctype: str, keep_alive: bool
    ) -> None:
        head = (
            f"HTTP/1.1 {status}\r\n"
            f"Server: etpmitm-lab-origin\r\n"
            f"Content-Type: {ctype}\r\n"
            f"Content-Length: {length}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
        ).encode()
        if isinstance(body, bytes):
            self.sock.sendall(head + body)
        else:
            self.sock.sendall(head)
            for chunk in body:
                self.sock.sendall(chunk)

    def serve_http1(self) -> None:
        rfile = self.sock.makefile("rb")
        while True:
            line = rfile.readline(MAX_LINE)
            if not line:
                return
            if line in (b"\r\n", b"\n"):
                continue
            parts = line.decode("latin-1").split()
            if len(parts) != 3:
                raise BadRequest(f"bad request line {line!r}")
            method, target, version = parts
            headers: dict[str, str] = {}
            head = [line]
            while True:
                h = rfile.readline(MAX_LINE)
                head.append(h)
                if h in (b"\r\n", b"\n", b""):
                    break
                name, _, value = h.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            conn_hdr = headers.get("connection", "").lower()
            keep_alive = (version == "HTTP/1.1" and "close" not in conn_hdr) or (
                version == "HTTP/1.0" and "keep-alive" in conn_hdr
            )
            if headers.get("expect", "").lower() == "100-continue":
                self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            digest, length = hashlib.sha256(), 0
            for data in _read_body(rfile, headers):
                digest.update(data)
                length += len(data)
                self.server.received(data)
            if method == "GET" and target.split("?", 1)[0] == "/ws" and "websocket" in headers.get("upgrade", "").lower():
                self.serve_websocket(rfile, b"".join(head))
                return
            if method == "GET" and target.startswith("/truncate/") and target[10:].isdigit():
                self.truncate(int(target[10:]))
                return
            r = self.route(method, target, length, digest.hexdigest())
            self.send_response(f"{r.status} {r.reason}", r.chunks(), r.length, r.ctype, keep_alive)
            if not keep_alive:
                return

    def serve_websocket(self, rfile: io.BufferedReader, head: bytes) -> None:
        """GET /ws: wsproto answers the handshake (101), then each message is echoed whole.

        ``head`` is the request as received; what the client sent after it may
        already sit in rfile's buffer, so the connection is read through rfile.
        """
        ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        try:
            ws.receive_data(head)
            [request] = ws.events()
        except (wsproto.utilities.RemoteProtocolError, ValueError) as e:
            self.send_response("400 Bad Request", f"{e}\n".encode(), len(f"{e}\n"), "text/plain", False)
            return
        assert isinstance(request, wsproto.events.Request), request
        self.sock.sendall(ws.send(wsproto.events.AcceptConnection()))
        text: list[str] = []
        binary: list[bytes] = []
        while True:
            data = rfile.read1(65536)
            ws.receive_data(data or None)  # None: the peer closed
            out = b""
            for event in ws.events():
                if isinstance(event, wsproto.events.TextMessage):
                    text.append(event.data)
                    if event.message_finished:
                        out += ws.send(wsproto.events.TextMessage(data="".join(text)))
                        text.clear()
                elif isinstance(event, wsproto.events.BytesMessage):
                    binary.append(bytes(event.data))
                    if event.message_finished:
                        out += ws.send(wsproto.events.BytesMessage(data=b"".join(binary)))
                        binary.clear()
                elif isinstance(event, wsproto.events.Ping):
                    out += ws.send(event.response())
                elif isinstance(event, wsproto.events.CloseConnection):
                    # Answer the close; the server then closes the connection first (RFC 6455 7.1.1).
                    self.sock.sendall(out + ws.send(event.response()))
                    return
            if out:
                self.sock.sendall(out)
            if not data:
                raise BadRequest("the WebSocket ended without a close handshake")

    def truncate(self, size: int) -> None:
        """Promise 2 * size bytes, send size, then close TCP under TLS: no close_notify."""
        self.sock.sendall(
            f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {2 * size}\r\n\r\n".encode()
            + pattern(size)
        )
        raw = socket.socket(fileno=os.dup(self.sock.fileno()))
        raw.shutdown(socket.SHUT_RDWR)  # the FIN goes out with no TLS alert before it
        raw.close()
        self.truncated = True  # close() must not try close_notify on the shut socket

    def route(self, method: str, target: str, length: int, sha: str) -> Response:
        """The response to a request whose body had length bytes with digest sha."""
        path = target.split("?", 1)[0]
        if method == "GET" and path == "/":
            return Response(200, "OK", "text/plain", b"origin ok\n")
        if method == "GET" and path.startswith("/bytes/") and path[7:].isdigit():
            return Response(200, "OK", "application/octet-stream", stream_length=int(path[7:]))
        if method in ("POST", "PUT") and path == "/echo":
            body = json.dumps({"length": length, "sha256": sha}).encode() + b"\n"
            return Response(200, "OK", "application/json", body)
        if method == "GET" and path in self.server.files:
            return Response(200, "OK", "application/octet-stream", self.server.files[path].read_bytes())
        if method == "GET" and path in STATIC:
            ctype, body = STATIC[path]
            return Response(200, "OK", ctype, body)
        if method == "GET" and path == "/info":
            return Response(200, "OK", "application/json", json.dumps(self.info()).encode() + b"\n")
        return Response(404, "Not Found", "text/plain", b"not found\n")

    # --- HTTP/2 ---------------------------------------------------------------

    H2_SEND_BUDGET = 1 << 20  # DATA bytes sent between two looks at the socket

    def serve_h2(self) -> None:
        """Serve one h2 connection: a blocking loop over this socket alone.

        Reading never stops while responses wait for window: when nothing can
        be sent the loop blocks on the socket (WINDOW_UPDATE, new requests,
        request bodies); when something can, it sends up to H2_SEND_BUDGET and
        then only polls the socket before sending more.
        """
        conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
        conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 256,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 65536,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20,
            },
        )
        conn.initiate_connection()
        conn.increment_flow_control_window((16 << 20) - 65535)  # connection window: 16 MiB
        requests: dict[int, _Request] = {}
        outgoing: dict[int, _Outgoing] = {}  # insertion order = round-robin order
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        try:
            self._flush(conn)
            more = False
            while True:
                if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
                    readable = True  # decrypted bytes already buffered: select would not see them
                else:
                    readable = bool(sel.select(0 if more else self.server.idle_timeout))
                if readable:
                    data = self.sock.recv(65536)
                    if not data:
                        return  # peer closed (close_notify or FIN)
                    try:
                        events = conn.receive_data(data)
                    except h2.exceptions.ProtocolError as e:
                        self._flush(conn)  # h2 queued a GOAWAY with the error code
                        raise BadRequest(f"h2 protocol error: {e!r}") from e
                    for event in events:
                        if isinstance(event, h2.events.ConnectionTerminated):
                            self._flush(conn)
                            return
                        self._h2_event(conn, event, requests, outgoing)
                    self._flush(conn)
                elif not more:
                    conn.close_connection()  # idle: GOAWAY, then close
                    self._flush(conn)
                    return
                more = self._h2_pump(conn, outgoing)
        finally:
            sel.close()

    def _flush(self, conn: h2.connection.H2Connection) -> None:
        data = conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def _h2_event(
        self,
        conn: h2.connection.H2Connection,
        event: h2.events.Event,
        requests: dict[int, _Request],
        outgoing: dict[int, _Outgoing],
    ) -> None:
        if isinstance(event, h2.events.RequestReceived):
            headers = {_text(k).lower(): _text(v) for k, v in event.headers}
            requests[event.stream_id] = _Request(headers.get(":method", ""), headers.get(":path", "/"))
            if headers.get("expect", "").lower() == "100-continue" and event.stream_ended is None:
                conn.send_headers(event.stream_id, [(":status", "100")])
        elif isinstance(event, h2.events.DataReceived):
            req = requests.get(event.stream_id)
            if req is not None:
                req.digest.update(event.data)
                req.length += len(event.data)
                self.server.received(event.data)
            # Hand the window back at once (h2 batches the WINDOW_UPDATEs).
            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            req = requests.pop(event.stream_id, None)
            if req is not None:
                self._h2_respond(conn, event.stream_id, req, outgoing)
        elif isinstance(event, h2.events.StreamReset):
            requests.pop(event.stream_id, None)
            outgoing.pop(event.stream_id, None)
        # WindowUpdated: the pump looks at the windows after every read.
        # SETTINGS and PING are acknowledged by h2 itself.

    def _h2_respond(
        self, conn: h2.connection.H2Connection, stream_id: int, req: _Request, outgoing: dict[int, _Outgoing]
    ) -> None:
        r = self.route(req.method, req.target, req.length, req.digest.hexdigest())
        bodyless = req.method == "HEAD" or r.length == 0
        conn.send_headers(
            stream_id,
            [
                (":status", str(r.status)),
                ("server", "etpmitm-lab-origin"),
                ("content-type", r.ctype),
                ("content-length", str(r.length)),
            ],
            end_stream=bodyless,
        )
        if not bodyless:
            outgoing[stream_id] = _Outgoing(r)

    def _h2_pump(self, conn: h2.connection.H2Connection, outgoing: dict[int, _Outgoing]) -> bool:
        """Send DATA round-robin as the windows allow, up to H2_SEND_BUDGET bytes.

        Returns whether more could be sent right now (budget spent with window
        left); False when every pending stream waits for a WINDOW_UPDATE.
        """
        sent = 0
        while outgoing:
            progressed = False
            for stream_id in list(outgoing):
                body = outgoing[stream_id]
                try:
                    window = conn.local_flow_control_window(stream_id)
                except h2.exceptions.StreamClosedError:
                    del outgoing[stream_id]
                    continue
                n = min(window, conn.max_outbound_frame_size, body.remaining)
                if n <= 0:
                    continue
                data = body.take(n)
                conn.send_data(stream_id, data, end_stream=body.remaining == 0)
                if body.remaining == 0:
                    del outgoing[stream_id]
                self._flush(conn)
                sent += len(data)
                progressed = True
            if not progressed:
                return False
            if sent >= self.H2_SEND_BUDGET:
                return bool(outgoing)
        return False


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class OriginServer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.verbose: bool = args.verbose
        self.files = {url: Path(file) for url, _, file in (item.partition("=") for item in args.serve)}
        self._received = open(args.received, "ab", buffering=0) if args.received else None
        self._receivedLock = threading.Lock()
        self.idle_timeout: float = args.idle_timeout
        # SNI seen on each TLS socket, filled by the servername callback.
        self.sni: weakref.WeakKeyDictionary[ssl.SSLSocket, str | None] = weakref.WeakKeyDictionary()
        self.context = self._context(args)
        self.listeners: list[tuple[socket.socket, bool]] = [(self._listen(args.host, args.port), True)]
        if args.plain_port is not None:
            self.listeners.append((self._listen(args.host, args.plain_port), False))

    def received(self, data: bytes) -> None:
        """Log request body bytes to --received, if given."""
        if self._received is not None:
            with self._receivedLock:
                self._received.write(data)

    def _context(self, args: argparse.Namespace) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if args.max_tls == "1.2":
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
        # A peer that closes TCP without close_notify (curl does after HTTP/2)
        # is a close, not an error: without this OpenSSL 3 answers it with a
        # fatal decode_error alert, which the other side then reports.
        ctx.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
        if args.chain:
            # load_cert_chain wants leaf + chain in one file.
            with tempfile.NamedTemporaryFile("wb", suffix=".pem") as f:
                for path in (args.cert, args.chain):
                    with open(path, "rb") as src:
                        f.write(src.read().rstrip(b"\n") + b"\n")
                f.flush()
                ctx.load_cert_chain(f.name, args.key)
        else:
            ctx.load_cert_chain(args.cert, args.key)
        alpn = [p for p in args.alpn.split(",") if p]
        if alpn:
            ctx.set_alpn_protocols(alpn)

        def on_sni(sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: ssl.SSLContext) -> None:
            if isinstance(sock, ssl.SSLSocket):
                self.sni[sock] = name

        ctx.sni_callback = on_sni
        return ctx

    @staticmethod
    def _listen(host: str | None, port: int) -> socket.socket:
        if host is None:
            if socket.has_ipv6:
                sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # v4 too
                addr: tuple[str, int] = ("::", port)
            else:
                sock, addr = socket.socket(socket.AF_INET, socket.SOCK_STREAM), ("0.0.0.0", port)
        else:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock, addr = socket.socket(family, socket.SOCK_STREAM), (host, port)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(1024)
        return sock

    def serve_forever(self) -> None:
        sel = selectors.DefaultSelector()
        for sock, tls in self.listeners:
            sel.register(sock, selectors.EVENT_READ, tls)
            print(f"listening on {sock.getsockname()[:2]} tls={tls}", flush=True)
        while True:
            for key, _ in sel.select():
                lsock = key.fileobj
                assert isinstance(lsock, socket.socket)
                try:
                    conn, _addr = lsock.accept()
                except OSError:
                    continue
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if key.data:
                    # Handshake on the connection's own thread, not here.
                    conn = self.context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
                threading.Thread(target=Connection(self, conn, bool(key.data)).serve, daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cert", required=True, help="PEM certificate (may include the chain)")
    p.add_argument("--key", required=True, help="PEM private key")
    p.add_argument("--chain", help="PEM intermediates sent after the certificate")
    p.add_argument("--port", type=int, default=443, help="TLS port (443)")
    p.add_argument("--plain-port", type=int, help="also serve plain HTTP here")
    p.add_argument("--host", help="bind only this address (default: dual-stack [::])")
    p.add_argument("--alpn", default="h2,http/1.1", help="ALPN protocols, in preference order; '' for none")
    p.add_argument("--max-tls", choices=("1.2", "1.3"), default="1.3")
    p.add_argument("--idle-timeout", type=float, default=60.0)
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--serve", action="append", default=[], metavar="PATH=FILE",
                   help="answer GET PATH with FILE's bytes (repeatable)")
    p.add_argument("--received", metavar="FILE", help="append every request body byte received to FILE")
    args = p.parse_args(argv)
    server = OriginServer(args)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    # SIGTERM keeps its default action (exit at once): the lab stops us with it.
    raise SystemExit(main())
