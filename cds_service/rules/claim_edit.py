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

from cds_service.fhir.validation import validates
from cds_service.rules.claim_facts import ClaimLine

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
    return validates(ClaimItem, item)


def update_line(
    claim: dict[str, Any], line: ClaimLine, changes: dict[str, Any]
) -> dict[str, Any] | None:
    """The Claim with ``line``'s elements replaced by ``changes`` (``None`` values removed)."""
    items = list(claim["item"])
    item = {key: value for key, value in items[line.index].items() if key not in changes}
    item |= {key: value for key, value in changes.items() if value is not None}
    items[line.index] = item
    return claim | {"item": items} if is_valid_item(item) else None


def without_modifiers(claim: dict[str, Any], line: ClaimLine, codes: frozenset[str]) -> Any:
    """The Claim with the modifiers ``codes`` removed from ``line``."""
    kept = [
        modifier
        for modifier in claim["item"][line.index].get("modifier", [])
        if not {coding.get("code") for coding in modifier.get("coding", [])} & codes
    ]
    return update_line(claim, line, {"modifier": kept or None})


def without_lines(claim: dict[str, Any], lines: list[ClaimLine]) -> dict[str, Any]:
    """The Claim without ``lines`` (the other items keep their sequence numbers)."""
    dropped = {line.index for line in lines}
    return claim | {"item": [item for i, item in enumerate(claim["item"]) if i not in dropped]}


def is_valid_resource(resource_type: str, resource: dict[str, Any]) -> bool:
    """True when ``resource`` validates as the named R4 resource."""
    from fhir.resources.R4B import get_fhir_model_class

    try:
        model = get_fhir_model_class(resource_type)
    except (KeyError, ValueError):
        return False
    return validates(model, resource)
