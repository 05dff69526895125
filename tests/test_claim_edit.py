"""Whole-Claim updates: only the intended change, and only when the result is a valid Claim."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

from fhir.resources.R4B.claim import Claim

from cds_service.rules.claim_edit import (
    add_add_on_line,
    is_valid_resource,
    replace_line_code,
    update_line,
    without_lines,
    without_modifiers,
)
from cds_service.rules.claim_facts import ClaimLine

CPT = "http://www.ama-assn.org/go/cpt"
CLAIM: dict[str, Any] = {
    "resourceType": "Claim",
    "id": "c1",
    "status": "draft",
    "type": {
        "coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}
        ]
    },
    "use": "claim",
    "patient": {"reference": "Patient/x"},
    "created": "2026-03-01",
    "provider": {"reference": "Organization/o"},
    "priority": {"coding": [{"code": "normal"}]},
    "insurance": [{"sequence": 1, "focal": True, "coverage": {"reference": "Coverage/c"}}],
    "item": [
        {
            "sequence": 3,
            "productOrService": {"coding": [{"system": CPT, "code": "27470"}]},
            "modifier": [{"coding": [{"code": "RT"}]}, {"coding": [{"code": "51"}]}],
            "servicedPeriod": {"start": "2026-03-01", "end": "2026-03-01"},
            "diagnosisSequence": [2, 1],
            "careTeamSequence": [1],
            "quantity": {"value": 1},
        }
    ],
}
LINE = ClaimLine(0, 3, "27470", frozenset({"RT", "51"}), Decimal(1), "2026-03-01", frozenset())
ADD_ON = {
    "system": CPT,
    "code": "20703",
    "display": "Removal of drug-delivery device(s), intramedullary",
}


def test_add_line_appends_one_linked_unit_and_leaves_the_rest() -> None:
    """The original is untouched; the new line follows the highest sequence."""
    original = copy.deepcopy(CLAIM)
    result = add_add_on_line(CLAIM, LINE, ADD_ON, frozenset({"RT", "LT"}))
    assert result is not None
    updated, sequence = result
    assert original == CLAIM
    assert sequence == 4
    assert updated["item"][0] == CLAIM["item"][0]
    assert updated["item"][1] == {
        "sequence": 4,
        "productOrService": {"coding": [ADD_ON], "text": ADD_ON["display"]},
        "quantity": {"value": 1},
        "servicedPeriod": {"start": "2026-03-01", "end": "2026-03-01"},
        "diagnosisSequence": [2, 1],
        "careTeamSequence": [1],
        "modifier": [{"coding": [{"code": "RT"}]}],
    }
    Claim.model_validate(updated)


def test_add_line_refuses_to_produce_an_invalid_claim() -> None:
    """If the new line would not be a valid Claim item, no update is proposed."""
    broken = copy.deepcopy(CLAIM)
    broken["item"][0]["servicedDate"] = "the first of March"
    assert add_add_on_line(broken, LINE, ADD_ON, frozenset({"RT"})) is None


def test_replace_line_changes_only_the_code() -> None:
    """The replaced line keeps its sequence, pointers and modifiers."""
    standalone = {"system": CPT, "code": "20680", "display": "Removal of implant; deep"}
    updated = replace_line_code(CLAIM, LINE, standalone)
    assert updated is not None
    item = updated["item"][0]
    assert item["productOrService"] == {"coding": [standalone], "text": "Removal of implant; deep"}
    without_display = replace_line_code(CLAIM, LINE, {"system": CPT, "code": "20680"})
    assert without_display is not None
    assert without_display["item"][0]["productOrService"]["text"] == "20680"
    assert {k: v for k, v in item.items() if k != "productOrService"} == {
        k: v for k, v in CLAIM["item"][0].items() if k != "productOrService"
    }


def test_update_line_replaces_and_removes_elements() -> None:
    """Given elements replace the line's; None removes one; the rest of the Claim is shared."""
    updated = update_line(CLAIM, LINE, {"quantity": {"value": 1}, "modifier": None})
    assert updated is not None
    item = updated["item"][0]
    assert item["quantity"] == {"value": 1}
    assert "modifier" not in item
    assert item["diagnosisSequence"] == [2, 1]
    assert updated["insurance"] is CLAIM["insurance"]


def test_without_modifiers_keeps_the_others() -> None:
    """Only the named modifiers leave the line."""
    updated = without_modifiers(CLAIM, LINE, frozenset({"51"}))
    assert updated["item"][0]["modifier"] == [{"coding": [{"code": "RT"}]}]
    Claim.model_validate(updated)


def test_without_lines_drops_only_those_lines() -> None:
    """Dropped lines leave; the others keep their sequence numbers."""
    second = copy.deepcopy(CLAIM["item"][0]) | {"sequence": 7}
    claim = CLAIM | {"item": [CLAIM["item"][0], second]}
    updated = without_lines(claim, [LINE])
    assert [item["sequence"] for item in updated["item"]] == [7]
    Claim.model_validate(updated)


def test_resource_validity_is_that_of_the_named_r4_type() -> None:
    """A resource is valid only as the R4 type named: a Task without status is not."""
    task = {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "for": {"reference": "Patient/x"},
    }
    assert is_valid_resource("Task", task)
    assert not is_valid_resource("Task", {k: v for k, v in task.items() if k != "status"})
    assert not is_valid_resource("NoSuchType", task)


def bare_claim(**item: Any) -> dict[str, Any]:
    """CLAIM whose one line has no modifier, or the given elements instead."""
    line = {k: v for k, v in CLAIM["item"][0].items() if k != "modifier"} | item
    return CLAIM | {"item": [line]}


def test_add_line_from_a_primary_without_modifiers_or_with_text_only_ones() -> None:
    """A primary line with no modifier, or a modifier given only as text, gives a line with no
    modifier; a coding without display names the line by its code."""
    plain = {"system": CPT, "code": "20703"}
    for claim in (bare_claim(), bare_claim(modifier=[{"text": "left"}])):
        result = add_add_on_line(claim, LINE, plain, frozenset({"RT", "LT"}))
        assert result is not None
        new_line = result[0]["item"][-1]
        assert "modifier" not in new_line
        assert new_line["productOrService"] == {"coding": [plain], "text": "20703"}


def test_edits_that_would_make_an_invalid_line_propose_nothing() -> None:
    """A code or an element that R4 refuses makes the edit return None, never a broken Claim."""
    assert replace_line_code(CLAIM, LINE, {"system": CPT, "code": ["20680"]}) is None  # type: ignore[dict-item]
    assert update_line(CLAIM, LINE, {"quantity": {"value": "two"}}) is None


def test_removing_modifiers_from_lines_without_them() -> None:
    """A line with no modifier, or one given only as text, keeps what it has."""
    assert (
        without_modifiers(bare_claim(), LINE, frozenset({"51"}))["item"][0].get("modifier") is None
    )
    text_only = bare_claim(modifier=[{"text": "left"}])
    assert without_modifiers(text_only, LINE, frozenset({"51"}))["item"][0]["modifier"] == [
        {"text": "left"}
    ]
