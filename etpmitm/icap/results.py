"""From an ICAP answer to a :class:`ScanResult` (sans-IO)."""

from __future__ import annotations

from etpmitm.icap.codec import IcapError, IcapResponse
from etpmitm.scanning import Kind, Replacement, ScanResult, Verdict

__all__ = ["interpret"]


def interpret(kind: Kind, service: str, response: IcapResponse, duration: float) -> ScanResult:
    """The verdict for a final ICAP response (204 or 200); IcapError if it
    makes no sense for *kind*."""
    istag, threat = response.istag, response.threat
    if response.status == 204:
        return ScanResult(
            verdict="pass", outcome="clean", service=service, istag=istag, threat=threat,
            reason="204 no modification", duration=duration,
        )
    if response.status != 200:
        raise IcapError(f"the ICAP server answered {response.status} {response.reason}".strip())
    body = response.body if response.body is not None else b""
    if response.response is not None:
        replacement = Replacement(head=response.response, body=body, is_response=True)
    elif kind == "reqmod" and response.request is not None:
        replacement = Replacement(head=response.request, body=body, is_response=False)
    else:
        raise IcapError(f"ICAP 200 to {kind.upper()} without an HTTP message to use")
    verdict: Verdict = "replace"
    if threat is not None:
        if not replacement.is_response:
            verdict = "block"  # a threat, and still the request: do not forward it
        return ScanResult(
            verdict=verdict, outcome="infected", service=service, istag=istag, threat=threat,
            reason=f"threat {threat}", duration=duration,
            replacement=replacement if verdict == "replace" else None,
        )
    start = replacement.head.start_line.decode("latin-1")
    return ScanResult(
        verdict=verdict, outcome="modified", service=service, istag=istag,
        reason=f"modified by the ICAP server: {start}", duration=duration, replacement=replacement,
    )
