"""Which stage a connection goes to (the policy issue makes this configurable)."""

from __future__ import annotations

from etpmitm.clienthello import ClientHello
from etpmitm.gateway.intake import Intake, Stage
from etpmitm.gateway.intercept import Interception
from etpmitm.gateway.splice import Splice


def decide(intake: Intake, hello: ClientHello | None) -> Stage:
    """Intercept TLS; splice anything that is not TLS."""
    if hello is None:
        return Splice(intake)
    return Interception(intake, hello)
