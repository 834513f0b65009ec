"""A small ICAP server for the client's tests, with ways to misbehave.

:class:`IcapServerProtocol` answers OPTIONS (with its ``Preview``), and
REQMOD/RESPMOD: 100 after a preview that is not the whole body, then 204 for a
clean body or a 200 block page naming a threat when the body holds
:data:`MARKER`.  ``behaviour`` makes it stall, answer garbage, send a wrong
``Encapsulated``, truncate its answer, close, or answer 204 right after the
preview.  Everything it received is kept in :class:`ServerLog` for checks.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import attrs
from twisted.internet.protocol import Protocol

MARKER = b"INFECTED-TEST-MARKER"
THREAT = "Test.Marker-1"
ISTAG = "TEST-ISTAG-1"


@attrs.define
class Received:
    method: str
    headers: dict[str, str]
    heads: bytes
    preview: bytes | None = None
    body: bytearray = attrs.Factory(bytearray)
    ieof: bool = False
    complete: bool = False


@attrs.define
class ServerLog:
    connections: int = 0
    requests: list[Received] = attrs.Factory(list)

    def scans(self) -> list[Received]:
        return [r for r in self.requests if r.method != "OPTIONS"]


_BLOCK_PAGE = b"<h1>blocked by the test ICAP server</h1>"


class IcapServerProtocol(Protocol):
    def __init__(self, log: ServerLog, behaviour: str = "ok", preview: int | None = 16) -> None:
        self.log = log
        self.behaviour = behaviour
        self.preview = preview
        self.buffer = bytearray()
        self.current: Received | None = None
        self.state = "head"
        self.remaining = 0
        self.in_preview = False
        self.has_body = False
        self.paused_once = False

    def connectionMade(self) -> None:
        self.log.connections += 1
        if self.behaviour == "close":
            assert self.transport is not None
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while self.step():
            pass

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def step(self) -> bool:
        if self.state == "head":
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return False
            head = bytes(self.buffer[: end + 4])
            del self.buffer[: end + 4]
            lines = head[:-4].decode("latin-1").split("\r\n")
            method = lines[0].split(" ")[0]
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            encapsulated = dict(
                (name, int(offset))
                for name, offset in re.findall(r"([a-z-]+)=([0-9]+)", headers.get("encapsulated", ""))
            )
            self.current = Received(method=method, headers=headers, heads=b"")
            self.log.requests.append(self.current)
            if method == "OPTIONS":
                self.current.complete = True
                self.answer_options()
                return True
            body_name = next(n for n in encapsulated if n.endswith("-body"))
            self.remaining = encapsulated[body_name]
            self.state = "heads"
            self.has_body = body_name != "null-body"
            self.in_preview = "preview" in headers
            return True
        if self.state == "heads":
            if len(self.buffer) < self.remaining:
                return False
            assert self.current is not None
            self.current.heads = bytes(self.buffer[: self.remaining])
            del self.buffer[: self.remaining]
            if not self.has_body:
                self.current.complete = True
                self.state = "head"
                self.final()
                return True
            self.state = "size"
            return True
        if self.state == "size":
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return False
            line = bytes(self.buffer[:end])
            del self.buffer[: end + 2]
            size_text, _, ext = line.partition(b";")
            size = int(size_text, 16)
            assert self.current is not None
            if size == 0:
                del self.buffer[:2]  # the empty trailer
                if self.in_preview:
                    self.in_preview = False
                    self.current.preview = bytes(self.current.body)
                    self.current.ieof = ext.strip() == b"ieof"
                    if self.current.ieof:
                        self.current.complete = True
                        self.state = "head"
                        self.final()
                        return True
                    self.after_preview()
                    return True
                self.current.complete = True
                self.state = "head"
                self.final()
                return True
            self.remaining = size
            self.state = "data"
            return True
        if self.state == "data":
            if not self.buffer:
                return False
            take = min(self.remaining, len(self.buffer))
            assert self.current is not None
            self.current.body += self.buffer[:take]
            del self.buffer[:take]
            if self.behaviour == "slow-reader" and len(self.current.body) >= 256 * 1024 and not self.paused_once:
                self.paused_once = True
                assert self.transport is not None
                self.transport.pauseProducing()  # stop reading: the client must wait
            self.remaining -= take
            if self.remaining == 0:
                del self.buffer[:2]
                self.state = "size"
            return True
        return False

    def answer_options(self) -> None:
        if self.behaviour == "stall-options":
            return
        fields = [f'ISTag: "{ISTAG}"', "Methods: RESPMOD, REQMOD", "Allow: 204", "Options-TTL: 60"]
        if self.preview is not None:
            fields.append(f"Preview: {self.preview}")
        if self.behaviour.startswith("max-connections-"):
            fields.append(f"Max-Connections: {self.behaviour.rpartition('-')[2]}")
        self.send(("ICAP/1.0 200 OK\r\n" + "\r\n".join(fields) + "\r\nEncapsulated: null-body=0\r\n\r\n").encode())

    def after_preview(self) -> None:
        if self.behaviour == "204-after-preview":
            self.state = "head"
            self.send(f'ICAP/1.0 204 No Content\r\nISTag: "{ISTAG}"\r\n\r\n'.encode())
            return
        self.state = "size"
        self.send(b"ICAP/1.0 100 Continue\r\n\r\n")

    def final(self) -> None:
        assert self.current is not None
        behaviour = self.behaviour
        if behaviour == "stall" or behaviour.startswith("max-connections-"):
            return
        if behaviour == "garbage":
            self.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            return
        if behaviour == "error-500":
            self.send(b"ICAP/1.0 500 Server Error\r\nEncapsulated: null-body=0\r\n\r\n")
            return
        infected = MARKER in self.current.body
        if not infected and behaviour not in ("wrong-encapsulated", "truncate", "modify", "big-body"):
            self.send(f'ICAP/1.0 204 No Content\r\nISTag: "{ISTAG}"\r\nEncapsulated: null-body=0\r\n\r\n'.encode())
            if behaviour == "extra-after-204":
                self.send(b"surprise")
            return
        body = _BLOCK_PAGE
        if behaviour == "big-body":
            body = b"x" * (2 << 20)
        res_hdr = b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n" % len(body)
        if behaviour == "modify":
            res_hdr = b"HTTP/1.1 200 OK\r\nX-Modified: yes\r\n\r\n"
        offset = len(res_hdr) + (7 if behaviour == "wrong-encapsulated" else 0)
        fields = f'ISTag: "{ISTAG}"\r\n'
        if infected:
            fields += f"X-Infection-Found: Type=0; Resolution=2; Threat={THREAT};\r\n"
        head = f"ICAP/1.0 200 OK\r\n{fields}Encapsulated: res-hdr=0, res-body={offset}\r\n\r\n".encode()
        chunked = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
        if behaviour == "truncate":
            self.send(head + res_hdr + chunked[: len(chunked) // 2])
            assert self.transport is not None
            self.transport.loseConnection()
            return
        self.send(head + res_hdr + chunked)


def server_factory(log: ServerLog, behaviour: str = "ok", preview: int | None = 16) -> Callable[[], IcapServerProtocol]:
    return lambda: IcapServerProtocol(log, behaviour, preview)
