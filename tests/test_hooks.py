"""Hook definitions: prefetch token rules of CDS Hooks 2.0 and context validation."""

from __future__ import annotations

import pytest

from cds_service.protocol.hooks import HOOKS, context_problems, is_valid_prefetch_template

DISCHARGE = HOOKS["encounter-discharge"]
ORDER_SIGN = HOOKS["order-sign"]


@pytest.mark.parametrize(
    ("template", "valid"),
    [
        ("Procedure?patient={{context.patientId}}&encounter={{context.encounterId}}", True),
        ("Practitioner/{{userPractitionerId}}", True),
        ("Encounter/{{ context.encounterId }}", True),
        ("Coverage?status=active", True),
        ("ServiceRequest?_id={{context.draftOrders.ServiceRequest.id}}", False),
        ("Observation?date=gt{{today() - 90 days}}", False),
        ("Patient/{{context.patientId}", False),
        ("Patient/{{context.unknownField}}", False),
    ],
)
def test_prefetch_tokens(template: str, valid: bool) -> None:
    """Only first-level context fields and the four user tokens are 2.0 prefetch tokens."""
    assert is_valid_prefetch_template(template, DISCHARGE) is valid


def test_draft_orders_is_not_a_token() -> None:
    """draftOrders is an object, so it cannot be a token even for order-sign."""
    assert not is_valid_prefetch_template("X?id={{context.draftOrders}}", ORDER_SIGN)
    assert is_valid_prefetch_template("X?patient={{context.patientId}}", ORDER_SIGN)


def test_valid_context_has_no_problems() -> None:
    """A complete context passes; unknown extra fields are allowed."""
    context = {
        "userId": "Practitioner/abc-1",
        "patientId": "p1",
        "encounterId": "e1",
        "com.example.extra": True,
    }
    assert context_problems(DISCHARGE, context) == []


def test_context_problems_are_named_without_values() -> None:
    """Each missing or ill-typed field is named; values are never quoted."""
    problems = context_problems(
        ORDER_SIGN, {"userId": "Dr Jane Smith", "patientId": 7, "draftOrders": "none"}
    )
    assert problems == [
        "context.userId must be a reference of the form Type/id",
        "context.patientId must be a non-empty string",
        "context.draftOrders must be a JSON object (FHIR Bundle)",
    ]
    assert context_problems(DISCHARGE, {"userId": "Practitioner/1", "patientId": "p"}) == [
        "context.encounterId is required for encounter-discharge"
    ]
