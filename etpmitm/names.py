"""Host names as the gateway compares and issues them: one normaliser."""

from __future__ import annotations

import idna


def a_labels(name: str) -> str:
    """``name`` as lower-case IDNA A-labels without a trailing dot; ``*`` labels are kept.

    Raises ``ValueError`` when a label cannot be IDNA-encoded.
    """
    if name.endswith("."):
        name = name[:-1]
    if name.isascii():
        return name.lower()
    try:
        remapped = idna.uts46_remap(name, std3_rules=False, transitional=False)
        return ".".join(label.lower() if label.isascii() else idna.alabel(label).decode("ascii") for label in remapped.split("."))
    except (idna.IDNAError, UnicodeError) as e:
        raise ValueError(f"{name!r} is not a valid internationalised name ({e})") from None
