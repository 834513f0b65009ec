"""Which protocol a block page is served in."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from etpmitm.clienthello import ClientHello, ClientHelloParser
from etpmitm.gateway.refuse import blockALPN
from tests.hellos import python_client_hello


def hello(alpn: list[str] | None) -> ClientHello:
    result = ClientHelloParser().feed(python_client_hello("x.example", alpn))
    assert isinstance(result, ClientHello)
    return result


class BlockALPNTests(SynchronousTestCase):
    def test_choices(self) -> None:
        self.assertEqual(blockALPN(hello(None)), (True, None))  # no ALPN: HTTP/1.1
        self.assertEqual(blockALPN(hello(["h2", "http/1.1"])), (True, b"h2"))  # the device's preference
        self.assertEqual(blockALPN(hello(["http/1.1", "h2"])), (True, b"http/1.1"))
        self.assertEqual(blockALPN(hello(["spdy/3", "http/1.1"])), (True, b"http/1.1"))
        self.assertEqual(blockALPN(hello(["imap", "smtp"])), (False, None))
