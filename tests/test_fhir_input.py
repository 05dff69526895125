"""Reading resources leniently from prefetch and draftOrders, and keeping the models of the
resources a worker validated most recently."""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest
from helpers.corpus import EXPECTED, FIXTURE_NAMES, load_fixture, without_uuids

from cds_service.engine.hook_call import handle_hook_call
from cds_service.errors import CdsError
from cds_service.fhir.resources import PARSED, iter_resources, read_resources
from cds_service.rulepack.models import RulePack

PROCEDURE: dict[str, Any] = {
    "resourceType": "Procedure",
    "id": "p1",
    "status": "completed",
    "subject": {"reference": "Patient/x"},
}


def bundle(*resources: dict[str, Any], with_type: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {"resourceType": "Bundle", "entry": [{"resource": r} for r in resources]}
    if with_type:
        body["type"] = "searchset"
    return body


def test_bundle_without_type_is_read() -> None:
    """The sandbox sends Bundles with no type; their entries are still read."""
    assert list(iter_resources(bundle(PROCEDURE, with_type=False))) == [PROCEDURE]


@pytest.mark.parametrize("value", [None, "123", 42, [PROCEDURE], {"no": "resourceType"}])
def test_values_that_are_not_resources_are_ignored(value: Any) -> None:
    """Bare strings, lists and objects without resourceType carry no resources."""
    assert list(iter_resources(value)) == []


def test_unknown_fields_are_dropped_and_the_resource_kept() -> None:
    """A field R4 does not define (e.g. from R5) does not cost the whole resource."""
    resource = PROCEDURE | {"futureField": {"x": 1}, "note": [{"text": "n", "newThing": 1}]}
    result = read_resources({"procedures": bundle(resource)})
    assert len(result.procedures) == 1
    note = result.procedures[0].note
    assert note is not None
    assert note[0].text == "n"
    assert result.skipped == 0


def test_invalid_resource_is_skipped_and_logged_without_values(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Procedure without status is skipped; the log names the type and the error, not data."""
    broken = {"resourceType": "Procedure", "id": "p2", "subject": {"display": "Jane Testpatient"}}
    with caplog.at_level(logging.WARNING, logger="cds_service"):
        result = read_resources({"procedures": bundle(broken, PROCEDURE)})
    assert [procedure.id for procedure in result.procedures] == ["p1"]
    assert result.skipped == 1
    (record,) = caplog.records
    assert record.resource_type == "Procedure"  # type: ignore[attr-defined]
    assert "status:model_field_validation.missing" in record.errors  # type: ignore[attr-defined]
    assert "Jane" not in caplog.text + str(vars(record))


def test_duplicates_across_keys_are_read_once() -> None:
    """The same resource under two prefetch keys is one resource."""
    result = read_resources({"a": bundle(PROCEDURE), "b": PROCEDURE})
    assert len(result.procedures) == 1


def test_operation_outcome_entries_and_unused_types_are_ignored() -> None:
    """OperationOutcomes in a Bundle and types the rules never read are not parsed."""
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "x"}]}
    patient = {"resourceType": "Patient", "id": "x", "name": [{"family": "Testpatient"}]}
    result = read_resources({"a": bundle(outcome, patient, PROCEDURE)})
    assert len(result.procedures) == 1
    assert result.skipped == 0


def test_draft_orders_are_kept_apart() -> None:
    """ServiceRequests of draftOrders are the orders being signed, not history."""
    order = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/x"},
    }
    result = read_resources({}, bundle(order, with_type=False))
    assert len(result.draft_orders) == 1
    assert result.service_requests == []


def test_draft_orders_procedures_and_claims_are_the_sessions_own() -> None:
    """A Procedure or Claim sent in draftOrders is read (as the session's own), and the same
    resource prefetched again is not read twice."""
    claim = {
        "resourceType": "Claim",
        "id": "claim-own",
        "status": "draft",
        "type": {"coding": [{"code": "professional"}]},
        "use": "claim",
        "patient": {"reference": "Patient/x"},
        "created": "2026-02-10",
        "provider": {"reference": "Organization/o"},
        "priority": {"coding": [{"code": "normal"}]},
        "insurance": [{"sequence": 1, "focal": True, "coverage": {"reference": "Coverage/c"}}],
    }
    result = read_resources(
        {"procedures": bundle(PROCEDURE), "claims": bundle(claim)}, bundle(PROCEDURE, claim)
    )
    assert result.procedures == result.own_procedures
    assert len(result.procedures) == 1
    assert [c.model for c in result.claims] == [c.model for c in result.own_claims]
    assert len(result.claims) == 1
    assert result.draft_orders == []


def test_a_resource_seen_before_is_not_validated_again_and_reads_the_same() -> None:
    """The second call with the same content takes the kept model; it equals a fresh one."""
    PARSED.clear()
    first = read_resources({"p": bundle(PROCEDURE)})
    assert len(PARSED) == 1
    second = read_resources({"p": bundle(PROCEDURE)})
    assert second.procedures[0] is first.procedures[0]
    PARSED.clear()
    assert read_resources({"p": bundle(PROCEDURE)}).procedures == first.procedures


def test_changed_content_is_validated_anew_even_when_an_earlier_version_was_valid(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Same id, same type, one element changed to something R4 refuses: skipped, not served
    from the cache."""
    PARSED.clear()
    assert len(read_resources({"p": bundle(PROCEDURE)}).procedures) == 1
    changed = PROCEDURE | {"status": ["completed"]}
    with caplog.at_level(logging.WARNING):
        result = read_resources({"p": bundle(changed)})
    assert result.procedures == []
    assert result.skipped == 1
    assert "skipped unreadable FHIR resource" in caplog.text
    with caplog.at_level(logging.WARNING):
        again = read_resources({"p": bundle(changed)})
    assert again.skipped == 1  # unreadable content is never kept: each call logs it


def test_identical_resources_in_one_call_get_models_of_their_own() -> None:
    """The rules tell resources apart by identity: two id-less twins stay two models."""
    twin = {key: value for key, value in PROCEDURE.items() if key != "id"}
    PARSED.clear()
    read_resources({"p": bundle(twin)})
    first, second = read_resources({"p": bundle(twin, twin)}).procedures
    assert first is not second
    assert first == second


def test_a_resource_orjson_cannot_write_is_validated_every_time() -> None:
    """An integer beyond 64 bits has no digest here: it is read, and not kept."""
    huge = PROCEDURE | {"extension": [{"url": "http://x.example/n", "valueInteger": 2**70}]}
    PARSED.clear()
    read_resources({"p": bundle(huge)})
    assert len(PARSED) == 0


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_every_fixture_answers_the_same_from_kept_models_and_leaves_them_unchanged(
    name: str, pack: RulePack
) -> None:
    """Cold cache, then warm: the same cards; and no rule or suggestion changed a kept model
    or the kept Claim JSON a suggestion is built on."""
    body = load_fixture(name)
    service = EXPECTED[name]["service"]
    PARSED.clear()
    try:
        cold = handle_hook_call(pack, service, copy.deepcopy(body), today="2026-12-04").response
    except CdsError as error:  # a fixture that answers 4xx answers so from the cache too
        with pytest.raises(type(error)):
            handle_hook_call(pack, service, copy.deepcopy(body), today="2026-12-04")
        return
    kept = {key: copy.deepcopy(PARSED.get(key)) for key in PARSED.held_keys()}
    warm = handle_hook_call(pack, service, copy.deepcopy(body), today="2026-12-04").response
    assert without_uuids(warm) == without_uuids(cold)
    assert {key: PARSED.get(key) for key in kept} == kept
