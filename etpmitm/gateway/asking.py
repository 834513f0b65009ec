"""Asking the policy about one connection."""

from __future__ import annotations

from collections.abc import Sequence

from twisted.logger import Logger

from etpmitm.clienthello import ClientHello
from etpmitm.gateway.intake import Intake
from etpmitm.gateway.origdst import IPAddress, unmap
from etpmitm.learning import Key, bypass_key
from etpmitm.mint import LeafName
from etpmitm.policy import Decision

log = Logger()


def needsNames(intake: Intake, hello: ClientHello) -> bool:
    """Whether the decision has to wait for the origin certificate's names."""
    dst = intake.destination
    assert dst is not None
    return intake.settings.policy.current.needs_names(
        sni=hello.sni, destination=dst.ip, port=dst.port, client=_client(intake), ech=hello.has_ech
    )


def policyDecision(intake: Intake, hello: ClientHello, names: Sequence[str] = ()) -> Decision:
    """The policy's decision, recorded for the audit log."""
    dst = intake.destination
    assert dst is not None
    decision = intake.settings.policy.current.decide(
        sni=hello.sni, destination=dst.ip, port=dst.port, client=_client(intake), names=names, ech=hello.has_ech
    )
    intake.record.policy = decision.reason
    return decision


def _client(intake: Intake) -> IPAddress:
    return unmap(intake.tcp.getPeer().host)


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


def announceLearned(intake: Intake, key: Key, why: str) -> None:
    """Log a bypass just learned, and share it with the other workers."""
    log.info("learned bypass for {key}: {why}", key=key, why=why)
    intake.settings.shareLearned(key, why)
