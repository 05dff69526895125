"""Validating what the service emits (cds_service/fhir/validation.py): the verdict is the full
fhir.resources model's, remembered per content, and changed content is judged anew."""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.claim import ClaimItem
from fhir.resources.R4B.task import Task

from cds_service.fhir.validation import VERDICTS, validates

ITEM: dict[str, Any] = {
    "sequence": 2,
    "productOrService": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "20703"}]},
    "quantity": {"value": 1},
}


def test_a_valid_item_is_valid_and_its_verdict_is_kept() -> None:
    VERDICTS.clear()
    assert validates(ClaimItem, ITEM)
    assert len(VERDICTS) == 1
    assert validates(ClaimItem, dict(reversed(ITEM.items())))  # same content, other key order
    assert len(VERDICTS) == 1


def test_changed_content_is_judged_anew() -> None:
    VERDICTS.clear()
    assert validates(ClaimItem, ITEM)
    assert not validates(ClaimItem, ITEM | {"sequence": "two"})
    assert not validates(
        ClaimItem, {key: value for key, value in ITEM.items() if key != "sequence"}
    )
    assert not validates(ClaimItem, ITEM | {"notAnElement": 1})
    assert validates(ClaimItem, ITEM)


def test_the_same_content_gets_each_models_own_verdict() -> None:
    VERDICTS.clear()
    assert validates(ClaimItem, ITEM)
    assert not validates(Task, ITEM)  # a Claim item is no Task


def test_content_orjson_cannot_write_is_still_judged() -> None:
    VERDICTS.clear()
    assert not validates(ClaimItem, ITEM | {"sequence": 2**70})
    assert len(VERDICTS) == 0
