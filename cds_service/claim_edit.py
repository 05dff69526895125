"""Whole-Claim updates proposed by suggestions (pure functions).

CDS Hooks ``update`` actions carry the whole updated resource, not a diff. Each function starts from
the Claim JSON exactly as the client sent it, changes only what the suggestion says, and returns
``None`` when the result would not validate as an R4 Claim (the card then has no action).
"""

from __future__ import annotations

import copy
from typing import Any

from fhir.resources.R4B.claim import Claim
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
    updated = copy.deepcopy(claim)
    items: list[dict[str, Any]] = updated.get("item", [])
    primary_item = items[primary.index]
    sequence = max(int(item.get("sequence", 0)) for item in items) + 1
    new_item: dict[str, Any] = {
        "sequence": sequence,
        "productOrService": {"coding": [coding], "text": coding.get("display", coding["code"])},
        "quantity": {"value": 1},
    }
    for element in _SHARED_WITH_PRIMARY:
        if element in primary_item:
            new_item[element] = copy.deepcopy(primary_item[element])
    modifiers = [
        {"coding": [copy.deepcopy(entry)]}
        for modifier in primary_item.get("modifier", [])
        for entry in modifier.get("coding", [])
        if entry.get("code") in laterality_modifiers
    ]
    if modifiers:
        new_item["modifier"] = modifiers
    items.append(new_item)
    updated["item"] = items
    return (updated, sequence) if is_valid_claim(updated) else None


def replace_line_code(
    claim: dict[str, Any], line: ClaimLine, coding: dict[str, str]
) -> dict[str, Any] | None:
    """The Claim with ``line`` reporting ``coding`` instead of its current code."""
    updated = copy.deepcopy(claim)
    item = updated["item"][line.index]
    item["productOrService"] = {"coding": [coding], "text": coding.get("display", coding["code"])}
    return updated if is_valid_claim(updated) else None


def is_valid_claim(claim: dict[str, Any]) -> bool:
    """True when ``claim`` validates as an R4 Claim."""
    try:
        Claim.model_validate(claim)
    except (ValidationError, ValueError, TypeError):
        return False
    return True
