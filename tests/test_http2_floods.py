"""The HTTP/2 layer against floods (etpmitm/h2abuse.py): real h2 devices through the in-memory gateway.

Each flood ends the connection with GOAWAY(ENHANCE_YOUR_CALM) to the device, its
reason in the connection's audit, the origin's streams cancelled and a GOAWAY to
the origin; a browser-like device that cancels some requests is not cut.
"""

from __future__ import annotations

from typing import Any

import attrs
import h2.errors
import h2.events
import h2.settings
import hpack
from hyperframe.frame import ContinuationFrame, HeadersFrame

from etpmitm.h2abuse import Budget, H2Limits
from tests.h2peers import H2Peer
from tests.test_http2 import H2TestCase

E = h2.errors.ErrorCodes
S = h2.settings.SettingCodes
LIMITS = H2Limits()


class FloodTestCase(H2TestCase):
    limits = LIMITS
    held: list[int] = []
    """The device streams the origin held when the flood began."""

    def setUp(self) -> None:
        super().setUp()
        self.settings = attrs.evolve(self.settings, h2Limits=self.limits)

    def openWithOriginStreams(self, count: int = 3) -> tuple[H2Peer, H2Peer, list[int]]:
        """A device with ``count`` requests the origin holds unanswered."""
        device, origin = self.open()
        ids = [device.request(f"/held/{n}") for n in range(count)]
        self.net.flush()
        self.assertEqual(len(origin.streams), count)
        self.held = ids
        return device, origin, ids

    def assertCalmed(self, device: H2Peer, origin: H2Peer, reason: str) -> dict[str, Any]:
        """GOAWAY(ENHANCE_YOUR_CALM) to the device, the origin's streams cancelled and a GOAWAY to
        it, the connection closed and audited as an error with ``reason``."""
        goaways = device.eventsOf(h2.events.ConnectionTerminated)
        self.assertEqual([g.error_code for g in goaways], [E.ENHANCE_YOUR_CALM])
        for sid, log in origin.streams.items():
            self.assertEqual(log.reset, E.CANCEL, f"origin stream {sid} was not cancelled")
        self.assertEqual([g.error_code for g in origin.eventsOf(h2.events.ConnectionTerminated)], [E.NO_ERROR])
        self.assertTrue(device.readEnded, "the gateway did not close the device's connection")
        self.assertEqual(self.layer.buffered(), 0)
        event = self.assertDone("intercept", "error", reason)
        for record in self.requests():
            if record["stream"] in self.held:
                self.assertIn(reason, record["reason"])
        return event


class RapidResetTests(FloodTestCase):
    def test_rapidResetIsCut(self) -> None:
        """CVE-2023-44487: streams opened and reset at once, past the burst, in one write."""
        device, origin, held = self.openWithOriginStreams()
        for _ in range(LIMITS.resets.burst + 1):
            sid = device.conn.get_next_available_stream_id()
            device.conn.send_headers(sid, [(":method", "GET"), (":scheme", "https"), (":authority", "origin.test"),
                                           (":path", "/x")], end_stream=True)
            device.conn.reset_stream(sid, E.CANCEL)
        device.flush()
        self.net.flush()
        event = self.assertCalmed(device, origin, "HTTP/2 rapid reset (CVE-2023-44487)")
        self.assertIn("more than 200 stream resets", event["reason"])
        self.assertEqual(len(origin.streams), len(held), "a reset stream reached the origin")

    def test_browserCancellingSomeRequestsIsNotCut(self) -> None:
        """900 requests, a third of them cancelled before their answer (300 resets, more than the
        burst): the completed ones earn the resets back, so the connection goes on."""
        device, origin = self.open()

        def onHeaders(sid: int, log: Any) -> None:
            if not log.header(b":path").startswith(b"/cancel"):  # type: ignore[union-attr]
                origin.respond(sid, body=b"ok")
        origin.onHeaders = onHeaders
        cancelled = answered = 0
        for round in range(300):
            ids = [device.request(f"/a/{round}"), device.request(f"/cancel/{round}"), device.request(f"/b/{round}")]
            self.net.flush()
            device.reset(ids[1], E.CANCEL)
            cancelled += 1
            self.net.flush()
            answered += sum(device.streams[i].body == b"ok" for i in (ids[0], ids[2]))
        self.assertEqual((cancelled, answered), (300, 600))
        self.assertEqual(device.eventsOf(h2.events.ConnectionTerminated), [])
        self.finish(device)
        records = self.requests()
        self.assertEqual(len(records), 900)
        self.assertEqual(sum("reset by the device (CANCEL)" in (r["reason"] or "") for r in records), 300)

    def test_resetsOverTimeAreNotCut(self) -> None:
        """Resets at no more than the budget's rate go on for ever (here 3 bursts of 150, 10 s apart)."""
        device, origin = self.open()
        for _ in range(3):
            for _ in range(150):
                sid = device.request("/x")
                device.reset(sid, E.CANCEL)
            self.net.flush()
            self.advance(10.0)
        self.assertEqual(device.eventsOf(h2.events.ConnectionTerminated), [])
        self.finish(device)


class ControlFloodTests(FloodTestCase):
    def test_pingFlood(self) -> None:
        """CVE-2019-9512: PINGs past the burst; the gateway answered no more than the burst."""
        device, origin, _ = self.openWithOriginStreams()
        for n in range(LIMITS.pings.burst + 50):
            device.conn.ping(n.to_bytes(8, "big"))
        device.flush()
        self.net.flush()
        self.assertCalmed(device, origin, "HTTP/2 PING flood (CVE-2019-9512)")
        self.assertLessEqual(len(device.eventsOf(h2.events.PingAckReceived)), LIMITS.pings.burst)

    def test_settingsFlood(self) -> None:
        """CVE-2019-9515: SETTINGS frames past the burst."""
        device, origin, _ = self.openWithOriginStreams()
        for n in range(LIMITS.settings.burst + 1):
            device.conn.update_settings({S.INITIAL_WINDOW_SIZE: 65535 + n})
        device.flush()
        self.net.flush()
        self.assertCalmed(device, origin, "HTTP/2 SETTINGS flood (CVE-2019-9515)")

    def test_fewPingsAndSettingsAreAnswered(self) -> None:
        device, origin = self.open()
        for n in range(20):
            device.conn.ping(n.to_bytes(8, "big"))
            device.conn.update_settings({S.INITIAL_WINDOW_SIZE: 65535 + n})
        device.flush()
        self.net.flush()
        self.assertEqual(len(device.eventsOf(h2.events.PingAckReceived)), 20)
        self.assertEqual(len(device.eventsOf(h2.events.SettingsAcknowledged)), 20 + 1)  # and the first
        self.finish(device)


class EmptyFrameTests(FloodTestCase):
    def test_emptyDataFlood(self) -> None:
        """CVE-2019-9518: DATA frames without data or END_STREAM on an upload."""
        device, origin, _ = self.openWithOriginStreams()
        sid = device.request("/upload", method="POST", end=False)
        for _ in range(LIMITS.empty.burst + 1):
            device.conn.send_data(sid, b"")
        device.flush()
        self.net.flush()
        self.assertCalmed(device, origin, "HTTP/2 empty frame flood (CVE-2019-9518)")

    def test_priorityFlood(self) -> None:
        device, origin, held = self.openWithOriginStreams()
        for _ in range(LIMITS.empty.burst + 1):
            device.conn.prioritize(held[0], weight=16)
        device.flush()
        self.net.flush()
        self.assertCalmed(device, origin, "HTTP/2 empty frame flood (CVE-2019-9518)")

    def test_prioritiesInRequestHeadersAreNotCounted(self) -> None:
        """Browsers put a priority on every request's HEADERS: that is no flood."""
        device, origin = self.open()
        origin.onRequest = lambda sid, log: origin.respond(sid, body=b"ok")
        for n in range(LIMITS.empty.burst + 50):
            sid = device.conn.get_next_available_stream_id()
            device.conn.send_headers(sid, [(":method", "GET"), (":scheme", "https"), (":authority", "origin.test"),
                                           (":path", f"/{n}")], end_stream=True, priority_weight=200)
            device.flush()
            self.net.flush()
            self.assertEqual(device.streams[sid].body, b"ok")
        self.finish(device)


def headerBlock(sid: int, continuations: list[bytes], end: bool = False) -> bytes:
    """A HEADERS frame without END_HEADERS, then CONTINUATIONs (the last with END_HEADERS if ``end``)."""
    block = hpack.Encoder().encode([(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"origin.test"),
                                    (b":path", b"/")])
    frames = [HeadersFrame(sid, block, flags=["END_STREAM"]).serialize()]
    for n, data in enumerate(continuations):
        flags = ["END_HEADERS"] if end and n == len(continuations) - 1 else []
        frames.append(ContinuationFrame(sid, data, flags=flags).serialize())
    return b"".join(frames)


class ContinuationTests(FloodTestCase):
    def test_endlessEmptyContinuations(self) -> None:
        """The 2024 CONTINUATION flood: a header block that never ends."""
        device, origin, _ = self.openWithOriginStreams()
        device.tls.write(headerBlock(101, [b""] * (LIMITS.continuationFrames + 1)))
        self.net.flush()
        self.assertCalmed(device, origin, "CONTINUATION flood: a header block of over 32 CONTINUATION frames")

    def test_continuationsPastTheByteLimit(self) -> None:
        device, origin, _ = self.openWithOriginStreams()
        device.tls.write(headerBlock(101, [b"\x00" * 16384] * 17))
        self.net.flush()
        self.assertCalmed(device, origin, "CONTINUATION flood: a header block of over 262144 bytes")

    def test_blockInAFewContinuationsPasses(self) -> None:
        device, origin = self.open()
        cookie = hpack.Encoder().encode([(b"cookie", b"c" * 30_000)])
        pieces = [cookie[i:i + 8000] for i in range(0, len(cookie), 8000)]
        device.tls.write(headerBlock(1, pieces, end=True))
        self.net.flush()
        self.assertEqual(origin.streams[1].header(b"cookie"), b"c" * 30_000)
        self.assertEqual(device.eventsOf(h2.events.ConnectionTerminated), [])
        self.assertFalse(device.readEnded)


class UnreadDeviceTests(FloodTestCase):
    limits = H2Limits(pings=Budget(0, 0.0))  # no PING limit: only back-pressure bounds the ACKs

    def test_deviceThatDoesNotReadIsNotReadEither(self) -> None:
        """A device that sends PINGs and reads nothing: the gateway stops reading it once its
        buffer towards the device is full, so the ACKs queued stay bounded; once the device reads
        again, every PING is answered."""
        device, origin = self.open()
        device.tcp.pauseProducing()
        total = 0
        for _ in range(40):
            for _ in range(1000):
                device.conn.ping(total.to_bytes(8, "big"))
                total += 1
            device.flush()
            self.net.flush()
        ackBytes = 17 * total
        self.assertLess(self.deviceSocket.written, ackBytes // 4, "the gateway queued an ACK for every PING")
        device.tcp.resumeProducing()
        self.net.flush()
        self.assertEqual(len(device.eventsOf(h2.events.PingAckReceived)), total)
        self.finish(device)
