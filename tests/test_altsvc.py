"""Alt-Svc without QUIC."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from etpmitm.altsvc import strip_quic


class StripQuicTests(SynchronousTestCase):
    def test_quicAlternativesGoOthersStay(self) -> None:
        self.assertEqual(
            strip_quic(b'h3=":443"; ma=86400, h3-29=":443"; ma=86400, h2="alt.example:443"; ma=60, hq-interop=":443"'),
            b'h2="alt.example:443"; ma=60',
        )

    def test_nothingLeft(self) -> None:
        self.assertIsNone(strip_quic(b'h3=":443"; ma=2592000,h3-Q050=":443", quic=":443"; v="46,43"'))

    def test_percentEncodedProtocolId(self) -> None:
        """RFC 7838 3: the protocol id is percent-encoded (``h%33`` is ``h3``)."""
        self.assertIsNone(strip_quic(b'h%33=":443"'))

    def test_commaInsideAQuotedString(self) -> None:
        self.assertEqual(strip_quic(b'quic=":443"; v="46,43", h2=":8443"'), b'h2=":8443"')
        self.assertEqual(strip_quic(b'h2="a\\",b:443", h3=":443"'), b'h2="a\\",b:443"')

    def test_clearAndNonQuicUntouched(self) -> None:
        self.assertEqual(strip_quic(b"clear"), b"clear")
        self.assertEqual(strip_quic(b'http/1.1="legacy.example:443"'), b'http/1.1="legacy.example:443"')
        self.assertEqual(strip_quic(b'H3=":443", h2=":443"'), b'h2=":443"')
