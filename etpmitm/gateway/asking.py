"""Asking the policy about one connection."""

from __future__ import annotations

from collections.abc import Sequence

from etpmitm.clienthello import ClientHello
from etpmitm.gateway.intake import Intake
from etpmitm.gateway.origdst import unmap
from etpmitm.learning import Key, bypass_key
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


def learnedKey(intake: Intake, hello: ClientHello) -> Key:
    dst = intake.destination
    assert dst is not None
    return bypass_key(hello.sni, dst.ip, dst.port)


def learnedBypass(intake: Intake, hello: ClientHello) -> bool:
    holder = intake.settings.policy
    return holder.learned.is_bypassed(learnedKey(intake, hello), intake.settings.clock.seconds())
