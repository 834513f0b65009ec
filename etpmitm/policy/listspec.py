"""``[[list]]``: a threat list file named in the policy (see :mod:`etpmitm.threat`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import attrs

__all__ = ["LIST_ACTIONS", "ListAction", "ListSpec"]

ListAction = Literal["block", "bypass", "intercept"]
LIST_ACTIONS: tuple[ListAction, ...] = ("block", "bypass", "intercept")


@attrs.frozen
class ListSpec:
    """One ``[[list]]`` table: its category, its file and what a match does."""

    name: str
    """The category, shown in audit events and on the block page."""
    file: Path
    action: ListAction = attrs.field(validator=attrs.validators.in_(LIST_ACTIONS))
    line: int = 0
    """Line of the ``[[list]]`` header in the policy file."""
