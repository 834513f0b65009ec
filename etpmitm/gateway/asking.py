"""Asking the policy about one connection."""

from __future__ import annotations

from collections.abc import Sequence

from etpmitm.clienthello import ClientHello
from etpmitm.gateway.intake import Intake
from etpmitm.gateway.origdst import unmap
from etpmitm.learning import Key, bypass_key
from etpmitm.mint import LeafName
from etpmitm.policy import Decision


def _facts(intake: Intake, hello: ClientHello) -> dict[str, object]:
    dst = intake.destination
    assert dst is not None
    client = unmap(intake.tcp.getPeer().host)
    return {"sni": hello.sni, "destination": dst.ip, "port": dst.port, "client": client, "ech": hello.has_ech}


def needsNames(intake: Intake, hello: ClientHello) -> bool:
    """Whether the decision has to wait for the origin certificate's names."""
    return intake.settings.policy.current.needs_names(**_facts(intake, hello))  # type: ignore[arg-type]


def policyDecision(intake: Intake, hello: ClientHello, names: Sequence[str] = ()) -> Decision:
    """The policy's decision, recorded for the audit log."""
    decision = intake.settings.policy.current.decide(names=names, **_facts(intake, hello))  # type: ignore[arg-type]
    intake.record.policy = decision.reason
    return decision


LEARNED_BYPASS = "learned bypass (interception failed here before)"


def requestedNames(intake: Intake, hello: ClientHello) -> tuple[str, tuple[LeafName, ...]]:
    """The host the device asked for (for a page) and the names for its leaf:
    the SNI, or the destination address when it sent none."""
    dst = intake.destination
    assert dst is not None
    if hello.sni:
        return hello.sni, (hello.sni,)
    return str(dst.ip), (dst.ip,)


def learnedKey(intake: Intake, hello: ClientHello) -> Key:
    dst = intake.destination
    assert dst is not None
    return bypass_key(hello.sni, dst.ip, dst.port)


def learnedBypass(intake: Intake, hello: ClientHello) -> bool:
    holder = intake.settings.policy
    return holder.learned.is_bypassed(learnedKey(intake, hello), intake.settings.clock.seconds())
