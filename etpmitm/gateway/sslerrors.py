"""Readable reasons from pyOpenSSL errors."""

from __future__ import annotations

from OpenSSL import SSL
from twisted.python.failure import Failure


def sslReason(failure: Failure) -> str:
    """The last OpenSSL reason string of a failure, else its message."""
    value = failure.value
    if isinstance(value, SSL.Error) and value.args and isinstance(value.args[0], list):
        queue = value.args[0]
        if queue and isinstance(queue[-1], tuple):
            return str(queue[-1][-1])
    return failure.getErrorMessage()
