"""Interfaces where operators plug in their own pieces."""

from __future__ import annotations

from zope.interface import Interface


class IFlowObserver(Interface):
    """Sees the decrypted bytes of one relayed connection, in order.

    Observers must not block and must not raise; the HTTP inspectors
    implement this.
    """

    def deviceData(data: bytes) -> None:
        """Bytes the device sent towards the origin."""

    def originData(data: bytes) -> None:
        """Bytes the origin sent towards the device."""

    def closed() -> None:
        """The relay has ended in both directions."""
