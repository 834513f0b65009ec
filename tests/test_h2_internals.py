"""The private h2 behaviour the HTTP/2 layer changes (etpmitm/gateway/_h2.py) still holds."""

from __future__ import annotations

import inspect
import logging
import sys

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import hpack
import hpack.hpack
import hyperframe.frame
from twisted.trial.unittest import SynchronousTestCase

from etpmitm.gateway import _h2
from etpmitm.gateway._h2 import GracefulH2Connection, compact_settings, goaway_frame


def pair() -> tuple[h2.connection.H2Connection, GracefulH2Connection]:
    """A plain h2 server and a graceful client, connected."""
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client = GracefulH2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return server, client


class GracefulGoawayTests(SynchronousTestCase):
    def test_streamsGoOnAfterGoaway(self) -> None:
        server, client = pair()
        client.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":authority", "a"), (":path", "/")], end_stream=True)
        server.receive_data(client.data_to_send())
        server.send_headers(1, [(":status", "200")])
        data = server.data_to_send() + goaway_frame(1, h2.errors.ErrorCodes.NO_ERROR)
        server.send_data(1, b"after the goaway", end_stream=True)
        events = client.receive_data(data + server.data_to_send())
        kinds = [type(e) for e in events]
        self.assertEqual(kinds, [
            h2.events.ResponseReceived, h2.events.ConnectionTerminated, h2.events.DataReceived, h2.events.StreamEnded,
        ])
        terminated = events[1]
        assert isinstance(terminated, h2.events.ConnectionTerminated)
        self.assertEqual((terminated.error_code, terminated.last_stream_id), (h2.errors.ErrorCodes.NO_ERROR, 1))

    def test_plainH2StillClosesOnGoaway(self) -> None:
        """If h2 ever keeps streams after GOAWAY itself, the override can go."""
        server, _ = pair()
        plain = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        plain.initiate_connection()
        plain.receive_data(server.data_to_send() + goaway_frame(0))
        self.assertIs(plain.state_machine.state, h2.connection.ConnectionState.CLOSED)

    def test_unknownErrorCodeKept(self) -> None:
        _, client = pair()
        [event] = client.receive_data(goaway_frame(0, 0xABC))
        assert isinstance(event, h2.events.ConnectionTerminated)
        self.assertEqual(event.error_code, 0xABC)


class CompactSettingsTests(SynchronousTestCase):
    def test_settingsStillWork(self) -> None:
        """Compacted settings take changes and acknowledgements both ways as h2's own do."""
        server, client = pair()
        client.compact()
        S = h2.settings.SettingCodes
        client.update_settings({S.MAX_CONCURRENT_STREAMS: 7, S.INITIAL_WINDOW_SIZE: 1000})
        self.assertEqual(client.local_settings.initial_window_size, 65535)  # until the peer acknowledges
        server.receive_data(client.data_to_send())
        client.receive_data(server.data_to_send())  # the ACK
        self.assertEqual((client.local_settings.max_concurrent_streams, client.local_settings.initial_window_size),
                         (7, 1000))
        server.update_settings({S.MAX_FRAME_SIZE: 32768, S.HEADER_TABLE_SIZE: 1024})
        events = client.receive_data(server.data_to_send())
        [changed] = [e for e in events if isinstance(e, h2.events.RemoteSettingsChanged)]
        self.assertEqual(changed.changed_settings[S.MAX_FRAME_SIZE].new_value, 32768)
        self.assertEqual((client.remote_settings.max_frame_size, client.remote_settings.header_table_size),
                         (32768, 1024))
        server.receive_data(client.data_to_send())
        self.assertEqual(server.local_settings.max_frame_size, 32768)

    def test_smallerThanH2sDeques(self) -> None:
        """h2 keeps a dict of per-setting deques (the private shape compact_settings relies on)."""
        settings = h2.settings.Settings(client=True)
        values = settings._settings
        self.assertIsInstance(values, dict)
        self.assertTrue(all(hasattr(v, "popleft") and hasattr(v, "append") for v in values.values()))
        before = sum(sys.getsizeof(v) for v in values.values())
        compact_settings(settings)
        after = sum(sys.getsizeof(v) for v in settings._settings.values())
        self.assertLess(after * 4, before)
        self.assertEqual(settings.initial_window_size, 65535)


class FrameLogTests(SynchronousTestCase):
    """h2 no longer builds each received frame's repr for its trace line (``_h2._as_is``)."""

    def test_reprOnlyInTheFrameLogLine(self) -> None:
        """``repr`` is shadowed in ``h2.connection``: its one use must be that log line."""
        source = inspect.getsource(h2.connection)
        self.assertEqual(source.count("repr("), 1)
        self.assertIn('trace("Received frame: %s", repr(frame))', inspect.getsource(h2.connection.H2Connection._receive_frame))
        self.assertIs(vars(h2.connection)["repr"], _h2._as_is)

    def test_aLoggerThatWritesGetsTheSameLine(self) -> None:
        lines: list[str] = []

        class Writing:
            def debug(self, msg: str, *args: object) -> None:
                pass

            def trace(self, msg: str, *args: object) -> None:
                lines.append(msg % args)

        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, logger=Writing()))
        client.initiate_connection()
        frame = hyperframe.frame.PingFrame(0)
        frame.opaque_data = b"12345678"
        client.receive_data(frame.serialize())
        self.assertIn(f"Received frame: {frame!r}", lines)
        self.assertIn("PingFrame(stream_id=0", repr(frame))


class HpackDebugLinesTests(SynchronousTestCase):
    """hpack's debug lines are dropped (``_h2._NoDebugLines``); its logger is otherwise the same."""

    def test_hpackLogsThroughItsModuleLogger(self) -> None:
        """The shape relied on: hpack.hpack logs only debug lines, through its module global ``log``."""
        source = inspect.getsource(hpack.hpack)
        self.assertIn("log = logging.getLogger(__name__)", source)
        self.assertGreater(source.count("log.debug("), 5)
        self.assertEqual(source.count("log."), source.count("log.debug("))
        self.assertIsInstance(hpack.hpack.log, _h2._NoDebugLines)
        self.assertEqual(hpack.hpack.log.name, "hpack.hpack")

    def test_noDebugLineReachesTheLogger(self) -> None:
        records: list[logging.LogRecord] = []
        handler = logging.Handler(logging.DEBUG)
        handler.emit = records.append  # type: ignore[method-assign]
        real = logging.getLogger("hpack.hpack")
        level = real.level
        real.addHandler(handler)
        real.setLevel(logging.DEBUG)
        self.addCleanup(real.removeHandler, handler)
        self.addCleanup(real.setLevel, level)
        block = hpack.Encoder().encode([(b":path", b"/x"), (b"x-a", b"b")])
        self.assertEqual(hpack.Decoder().decode(block, raw=True), [(b":path", b"/x"), (b"x-a", b"b")])
        real.debug("written: %s", "by the real logger")
        self.assertEqual([r.getMessage() for r in records], ["written: by the real logger"])


class CappedHeaderBlockTests(SynchronousTestCase):
    """h2 still gathers a header block in ``FrameBuffer._headers_buffer`` through ``_update_header_buffer``."""

    def server(self) -> GracefulH2Connection:
        server = GracefulH2Connection(h2.config.H2Configuration(client_side=False))
        server.capHeaderBlocks(frames=3, size=100)
        server.initiate_connection()
        server.receive_data(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + hyperframe.frame.SettingsFrame(0).serialize())
        server.data_to_send()
        return server

    def block(self, *continuations: bytes, end: bool = False) -> bytes:
        fields = hpack.Encoder().encode([(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a"), (b":path", b"/")])
        frames = [hyperframe.frame.HeadersFrame(1, fields, flags=["END_STREAM"]).serialize()]
        for n, data in enumerate(continuations):
            flags = ["END_HEADERS"] if end and n == len(continuations) - 1 else []
            frames.append(hyperframe.frame.ContinuationFrame(1, data, flags=flags).serialize())
        return b"".join(frames)

    def assertCalm(self, server: GracefulH2Connection, data: bytes, message: str) -> None:
        with self.assertRaises(_h2.HeaderBlockFlood) as raised:
            server.receive_data(data)
        self.assertIn(message, str(raised.exception))
        sent = server.data_to_send()
        frame, length = hyperframe.frame.Frame.parse_frame_header(sent[:9])
        frame.parse_body(memoryview(sent[9:9 + length]))
        assert isinstance(frame, hyperframe.frame.GoAwayFrame)
        self.assertEqual(frame.error_code, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)

    def test_tooManyContinuations(self) -> None:
        self.assertCalm(self.server(), self.block(b"", b"", b"", b""), "over 3 CONTINUATION frames")

    def test_tooManyBytes(self) -> None:
        self.assertCalm(self.server(), self.block(b"\x00" * 60, b"\x00" * 60), "over 100 bytes")

    def test_blockWithinTheLimits(self) -> None:
        events = self.server().receive_data(self.block(b"", b"", b"", end=True))
        self.assertEqual([type(e) for e in events], [h2.events.RequestReceived, h2.events.StreamEnded])
