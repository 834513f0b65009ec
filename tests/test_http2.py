"""The HTTP/2 layer in memory: real h2 devices and origins through a whole gateway with real TLS.

See :mod:`tests.corelab` (the gateway) and :mod:`tests.h2peers` (the peers).
"""

from __future__ import annotations

import hashlib
from typing import Any

import attrs
import h2.errors
import h2.events
import h2.settings
import hpack
from hyperframe.frame import PushPromiseFrame

from etpmitm.audit import ConnectionRecord
from etpmitm.gateway._twisted import halfCloseableTLS
from etpmitm.gateway.http2 import CONNECTION_WINDOW, STREAM_WINDOW, HTTP2Layer, http2Layer
from etpmitm.http import ALLOW, RequestHead, RequestVerdict
from tests.corelab import CoreTestCase, _Client
from tests.h2peers import H2Peer

E = h2.errors.ErrorCodes
S = h2.settings.SettingCodes
MiB = 1024 * 1024


def pattern(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


class H2TestCase(CoreTestCase):
    """A gateway whose intercepted connections run the HTTP/2 layer."""

    def setUp(self) -> None:
        super().setUp()
        self.layers: list[HTTP2Layer] = []
        self.settings = attrs.evolve(self.settings, layerFor=self.layerFor)

    def layerFor(self, record: ConnectionRecord) -> HTTP2Layer:
        layer = http2Layer(self.settings, record, judge=self.judge)
        assert isinstance(layer, HTTP2Layer)
        self.layers.append(layer)
        return layer

    def judge(self, head: RequestHead) -> RequestVerdict:
        return ALLOW

    def open(self, device: H2Peer | None = None, origin: H2Peer | None = None) -> tuple[H2Peer, H2Peer]:
        """A device and an origin, both speaking h2 to the gateway's layer."""
        device = device or H2Peer(client=True)
        origin = origin or H2Peer(client=False)
        tls = halfCloseableTLS(_Client(self.deviceContext(), "origin.test", (b"h2", b"http/1.1")), True, device)
        self.connectDevice(device=tls)
        self.acceptTLS(app=origin, alpn=(b"h2", b"http/1.1"))
        self.net.flush()
        self.assertEqual(len(self.layers), 1, "the HTTP/2 layer did not start")
        return device, origin

    @property
    def layer(self) -> HTTP2Layer:
        return self.layers[0]

    def requests(self) -> list[dict[str, Any]]:
        """The per-request audit events, by stream."""
        events = [e for e in self.events if e.get("log_namespace") == "etpmitm.audit.request"]
        return sorted(events, key=lambda e: e["stream"])

    def finish(self, device: H2Peer) -> dict[str, Any]:
        """The device says goodbye (GOAWAY, then close_notify and FIN); the connection's audit event."""
        device.goaway(0)
        device.tls.loseConnection()
        self.net.flush()
        return self.assertDone("intercept", "ok")


def answerWith(origin: H2Peer, **responses: bytes) -> None:
    """The origin answers ``/name`` with ``responses[name]`` once each request has ended."""
    def onRequest(sid: int, log: Any) -> None:
        name = log.header(b":path").decode().strip("/").split("?")[0]
        origin.respond(sid, body=responses[name], extra=[("content-type", "text/plain")])
    origin.onRequest = onRequest


class StreamTests(H2TestCase):
    def test_concurrentStreams(self) -> None:
        """Several requests at once on one connection, each answered on its own stream, each audited."""
        device, origin = self.open()
        answerWith(origin, a=b"alpha", b=b"bravo" * 1000, c=b"")
        ids = [
            device.request("/a", extra=[("user-agent", "test-agent/1")]),
            device.request("/b?q=12345", method="POST", body=b"x" * 300, extra=[("content-type", "text/plain")]),
            device.request("/c"),
        ]
        self.net.flush()
        self.assertEqual(ids, [1, 3, 5])
        self.assertEqual(sorted(log.header(b":path") for log in origin.streams.values()), [b"/a", b"/b?q=12345", b"/c"])
        self.assertEqual([device.streams[i].body for i in ids], [b"alpha", b"bravo" * 1000, b""])
        self.assertTrue(all(device.streams[i].ended and device.streams[i].header(b":status") == b"200" for i in ids))
        event = self.finish(device)
        records = self.requests()
        self.assertEqual([r["stream"] for r in records], ids)
        self.assertEqual({r["connection"] for r in records}, {event["id"]})
        first, second, third = records
        self.assertEqual(first["head"], {
            "method": "GET", "authority": "origin.test", "path": "/a", "query_length": 0,
            "user_agent": "test-agent/1", "content_type": None, "content_length": None,
        })
        self.assertEqual((second["head"]["method"], second["head"]["path"], second["head"]["query_length"]), ("POST", "/b", 7))
        self.assertEqual((second["bytes_up"], second["bytes_down"]), (300, 5000))
        self.assertEqual((first["status"], first["response_content_type"], first["protocol"]), (200, "text/plain", "h2"))
        self.assertEqual((third["bytes_down"], third["action"]), (0, "allow"))
        self.assertTrue(all(r["headers_after"] is not None for r in records))

    def test_requestsBeyondTheOriginsStreamLimitWait(self) -> None:
        """SETTINGS: an origin that takes one stream at a time gets one; the others wait in the gateway."""
        device, origin = self.open(origin=H2Peer(client=False, settings={S.MAX_CONCURRENT_STREAMS: 1}))
        ids = [device.request(f"/{n}") for n in "abc"]
        self.net.flush()
        self.assertEqual(list(origin.streams), [1], "the gateway opened more streams than the origin allows")
        for expected in (1, 3, 5):
            self.assertEqual(max(origin.streams), expected)
            origin.respond(expected, body=b"done")
            self.net.flush()
        self.assertEqual([device.streams[i].body for i in ids], [b"done"] * 3)

    def test_smallWindowAndFramesOfTheDevice(self) -> None:
        """SETTINGS: the device's window of 1000 bytes and the origin's large frames are honoured
        (the device's h2 fails the connection on a flow-control or frame-size violation)."""
        device = H2Peer(client=True, settings={S.INITIAL_WINDOW_SIZE: 1000, S.HEADER_TABLE_SIZE: 0})
        origin = H2Peer(client=False, settings={S.MAX_FRAME_SIZE: 1 << 20})
        device, origin = self.open(device, origin)
        body = pattern(300_000)
        answerWith(origin, big=body)
        sid = device.request("/big")
        self.net.flush()
        self.assertEqual(device.streams[sid].body, body)
        self.assertLessEqual(max(device.streams[sid].chunks), 1000)
        self.finish(device)

    def test_informationalResponse(self) -> None:
        device, origin = self.open()
        origin.onHeaders = lambda sid, log: origin.respond(sid, status=103, extra=[("link", "</s.css>; rel=preload")], end=False)
        sid = device.request("/early")
        self.net.flush()
        self.assertEqual(device.streams[sid].informational, [[(b":status", b"103"), (b"link", b"</s.css>; rel=preload")]])
