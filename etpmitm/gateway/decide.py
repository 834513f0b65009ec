"""Which stage a connection goes to: the policy, learned bypasses, ECH and non-TLS."""

from __future__ import annotations

from twisted.logger import Logger

from etpmitm.clienthello import ClientHello
from etpmitm.gateway.asking import LEARNED_BYPASS, learnedBypass, needsNames, policyDecision
from etpmitm.gateway.blockstage import PolicyBlock, Refusal
from etpmitm.gateway.intake import Intake, Stage
from etpmitm.gateway.intercept import Interception
from etpmitm.gateway.splice import Splice

log = Logger()

def decide(intake: Intake, hello: ClientHello | None) -> Stage:
    """Pick the stage for a connection whose first bytes have been judged.

    When the policy can only decide with the origin certificate's names (no
    SNI, host-pattern rules), interception starts and decides after the
    origin handshake, before the device sees anything.
    """
    policy = intake.settings.policy.current
    record = intake.record
    if hello is None:
        if policy.non_tls == "close":
            return Refusal(intake, f"{record.reason}; closed by policy (traffic.non_tls = close)")
        return Splice(intake)
    if hello.has_ech:
        log.info("ech: {client} -> {dst} outer SNI {sni}", client=record.client, dst=record.destination, sni=hello.sni)
        if policy.ech == "close":
            return Refusal(intake, "encrypted_client_hello; closed by policy (traffic.ech = close)")
    if needsNames(intake, hello):
        return Interception(intake, hello, decided=False)
    decision = policyDecision(intake, hello)
    if decision.action == "bypass":
        return Splice(intake, "bypassed by policy")
    if decision.action == "block":
        return PolicyBlock(intake, hello, f"blocked by policy: {decision.reason}")
    if learnedBypass(intake, hello):
        return Splice(intake, LEARNED_BYPASS)
    return Interception(intake, hello, decided=True)
