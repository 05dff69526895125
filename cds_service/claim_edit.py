"""Whole-Claim updates proposed by suggestions (pure functions).

CDS Hooks ``update`` actions carry the whole updated resource, not a diff. Each function starts
from the Claim JSON exactly as the client sent it (it already validated as an R4 Claim) and
changes only what the suggestion says: new containers for what changes, shared JSON values for the
rest (nothing here or downstream mutates a request value). It returns ``None`` when the changed
item does not validate as an R4 Claim item, and the card then has no action. Validating the one
item rather than the whole Claim keeps a suggestion cheap; the tests validate every suggested
Claim whole.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.claim import ClaimItem
from pydantic import ValidationError

from cds_service.facts import ClaimLine

# Elements of the primary line that the add-on line shares: same date of service, same diagnosis
# pointers, same rendering provider and the same encounter.
_SHARED_WITH_PRIMARY = (
    "servicedDate",
    "servicedPeriod",
    "diagnosisSequence",
    "careTeamSequence",
    "encounter",
)


def add_add_on_line(
    claim: dict[str, Any],
    primary: ClaimLine,
    coding: dict[str, str],
    laterality_modifiers: frozenset[str],
) -> tuple[dict[str, Any], int] | None:
    """The Claim with a new one-unit line for ``coding`` linked like ``primary``.

    Returns the updated Claim and the new line's sequence. Only RT/LT modifiers are copied from
    the primary line: add-on codes are exempt from modifier 51 and never carry it.
    """
    items: list[dict[str, Any]] = claim.get("item", [])
    primary_item = items[primary.index]
    sequence = max(int(item.get("sequence", 0)) for item in items) + 1
    new_item: dict[str, Any] = {
        "sequence": sequence,
        "productOrService": {"coding": [coding], "text": coding.get("display", coding["code"])},
        "quantity": {"value": 1},
    }
    for element in _SHARED_WITH_PRIMARY:
        if element in primary_item:
            new_item[element] = primary_item[element]
    modifiers = [
        {"coding": [entry]}
        for modifier in primary_item.get("modifier", [])
        for entry in modifier.get("coding", [])
        if entry.get("code") in laterality_modifiers
    ]
    if modifiers:
        new_item["modifier"] = modifiers
    if not is_valid_item(new_item):
        return None
    return claim | {"item": [*items, new_item]}, sequence


def replace_line_code(
    claim: dict[str, Any], line: ClaimLine, coding: dict[str, str]
) -> dict[str, Any] | None:
    """The Claim with ``line`` reporting ``coding`` instead of its current code."""
    items = list(claim["item"])
    item = items[line.index] | {
        "productOrService": {"coding": [coding], "text": coding.get("display", coding["code"])}
    }
    items[line.index] = item
    return claim | {"item": items} if is_valid_item(item) else None


def is_valid_item(item: dict[str, Any]) -> bool:
    """True when ``item`` validates as an R4 Claim.item."""
    try:
        ClaimItem.model_validate(item)
    except (ValidationError, ValueError, TypeError):
        return False
    return True
