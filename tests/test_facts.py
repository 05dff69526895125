"""Facts derived from resources: session scope, device identification, diagnosis linkage."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import load_fixture
from fhir.resources.R4B.reference import Reference
from test_rules import facts_for

from cds_service.facts import FactReader, links_diagnosis, reference_id
from cds_service.fhir_input import ResourceSet
from cds_service.rule_pack import RulePack
from cds_service.rules import evaluate


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("Encounter/e1", "e1"),
        ("https://ehr.example.org/fhir/Encounter/e1", "e1"),
        ("Encounter/e1/", "e1"),
        ("Patient/e1", None),
        ("#contained", None),
    ],
)
def test_reference_id(reference: str, expected: str | None) -> None:
    """Relative and absolute references resolve to the id of the right type only."""
    assert reference_id(Reference(reference=reference), "Encounter") == expected


@pytest.mark.parametrize(
    ("code", "links"),
    [
        ("T84.623A", True),
        ("T84.7XXD", True),
        ("T84.50XA", True),
        ("M86.661", True),
        ("S82.202K", True),
        ("S72.301N", True),
        ("S42.001M", True),
        ("S82.202A", False),
        ("T84.11XA", False),
        ("Z47.2", False),
        ("S82.20", False),
        # Claims often send codes without the dot: they compare as the dotted code.
        ("T84622A", True),
        ("T847XXD", True),
        ("M86661", True),
        ("S82202K", True),
        ("t84.623a", True),
        ("S82202A", False),
        ("T8411XA", False),
        ("Z472", False),
        # Not an ICD-10-CM code at all.
        ("T84.6234567", False),
        ("T84 623A", False),
    ],
)
def test_diagnosis_linkage(pack: RulePack, code: str, links: bool) -> None:
    """Device infection, osteomyelitis and nonunion (7th character K/M/N) link to 20703."""
    assert links_diagnosis(code, pack.coding.diagnosis_linkage) is links


@pytest.mark.parametrize(
    ("text", "identified"),
    [
        ("hand-made vancomycin PMMA cement rod, left tibial canal", True),
        ("Antibiotic-loaded cement nail in the medullary canal of the femur", True),
        ("antibiotic beads, intramedullary", True),
        ("gentamicin cement spacer, canal of the humerus", True),
        ("titanium intramedullary nail", False),
        # "canal" with a bone named after "canal of" (article and side optional) or before it.
        ("antibiotic cement rod from the canal of the left femur", True),
        ("vancomycin PMMA rod, femur canal", True),
        ("antibiotic beads, canal of femur", True),
        ("antibiotic cement beads in the spinal canal", False),
        ("antibiotic cement beads in the ear canal", False),
        ("antibiotic cement beads in the nutrient canal of the tibia", False),
        ("antibiotic cement beads, subfascial soft tissue of thigh", False),
        ("vancomycin powder in the tibial canal", False),
    ],
)
def test_intramedullary_drug_device_text(pack: RulePack, text: str, identified: bool) -> None:
    """A drug carrier, a device form and an intramedullary site must all be stated."""
    reader = FactReader(ResourceSet(), pack, "e1")
    assert reader.describes_intramedullary_drug_device(text) is identified


def test_standard_fixture_facts(pack: RulePack) -> None:
    """The standard case: focal-device removal, primary 27722 on the claim, full documentation."""
    facts = facts_for(load_fixture("encounter-discharge--tibia-nonunion-removal.json"), pack)
    assert facts.removal_evidence == ("focal-device-removal", "procedure-text-removal")
    assert facts.session_primaries[0] == "27722"
    assert facts.claim is not None
    assert "removed-device-typed" in facts.evidence
    assert "diagnosis-linkage-code" in facts.evidence
    assert any("EBL" in text or "blood loss" in text.lower() for text in facts.texts)


def test_order_sign_history_facts(pack: RulePack) -> None:
    """A prior 20702 insertion with no later removal counts as a device in place."""
    facts = facts_for(load_fixture("order-sign--prior-insertion-only.json"), pack)
    assert facts.draft_order_primaries
    assert "prior-insertion" in facts.device_in_place
    removed = facts_for(load_fixture("order-sign--device-already-removed.json"), pack)
    assert removed.device_in_place == ()


# -- a prior 20702 insertion and what counts as its later removal --------------------------

PRIOR_INSERTION = "order-sign--prior-insertion-only.json"
INSERTION_DAY = "2025-07-09"
CPT = "http://www.ama-assn.org/go/cpt"


def with_history(procedure: dict[str, Any]) -> dict[str, Any]:
    """The prior-insertion-only request with one more completed Procedure in its history."""
    body = load_fixture(PRIOR_INSERTION)
    resource = {
        "resourceType": "Procedure",
        "id": "proc-history-extra",
        "status": "completed",
        "subject": {"reference": f"Patient/{body['context']['patientId']}"},
        "performedDateTime": "2025-10-14T08:30:00-05:00",
    } | procedure
    body["prefetch"]["procedures"]["entry"].append({"resource": resource})
    body["prefetch"]["procedures"]["total"] += 1
    return body


def coded(code: str, text: str | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {"coding": [{"system": CPT, "code": code}]}
    if text:
        concept["text"] = text
    return concept


TEXT_REMOVAL = {"code": {"text": "Removal of antibiotic cement intramedullary rod, right femur"}}


@pytest.mark.parametrize(
    ("procedure", "still_in_place"),
    [
        # Removal evidence (c): a text stating the removal of such a device, on a later day.
        (TEXT_REMOVAL, False),
        ({"note": [{"text": "Vancomycin PMMA rod extracted from the right femoral canal."}]}, False),
        # (b): a focalDevice removal identified by the Procedure's text, whatever the Device.
        (
            {
                "code": {"text": "Antibiotic cement rod, right femoral canal"},
                "focalDevice": [
                    {
                        "action": {"coding": [{"system": "http://snomed.info/sct", "code": "129303008"}]},
                        "manipulated": {"reference": "Device/dev-not-in-prefetch"},
                    }
                ],
            },
            False,
        ),
        # A 20680 whose text names the drug device, even with no removal verb in it.
        ({"code": coded("20680"), "note": [{"text": "Hand-made antibiotic cement rod, right femoral canal, out in one piece."}]}, False),
        # A 20680 naming the Device the 20702 placed (no action coded).
        ({"code": coded("20680"), "focalDevice": [{"manipulated": {"reference": "Device/dev-abx-rod-11ae"}}]}, False),
        # Near misses: not a drug-device removal, or not later.
        ({"code": {"text": "Removal of titanium intramedullary nail, right femur"}}, True),
        ({"code": coded("20680", "Removal of plate and screws, right femur")}, True),
        ({"code": coded("20680"), "focalDevice": [{"manipulated": {"reference": "Device/dev-plate-9"}}]}, True),
        (TEXT_REMOVAL | {"performedDateTime": "2025-05-02T08:30:00-05:00"}, True),  # before
        (TEXT_REMOVAL | {"performedDateTime": f"{INSERTION_DAY}T08:00:00-05:00"}, True),  # same day
        (TEXT_REMOVAL | {"status": "not-done"}, True),
        # The text of an insertion speaks of the device before it.
        (
            {
                "code": coded("20702", "Exchange: antibiotic cement rod placed in the right femoral canal after removal of the infected cement nail"),
            },
            True,
        ),
    ],
)  # fmt: skip
def test_later_drug_device_removal_ends_the_prior_insertion(
    pack: RulePack, procedure: dict[str, Any], still_in_place: bool
) -> None:
    """A prior 20702 is "in place" until a later Procedure removes an intramedullary drug device
    as the removal evidence shows it, or a 20680 identifies the device."""
    facts = facts_for(with_history(procedure), pack)
    assert ("prior-insertion" in facts.device_in_place) is still_in_place
    codes = [f.code for f in evaluate(facts, pack)]
    assert codes == (["planned-removal-reminder"] if still_in_place else [])


def test_later_removal_does_not_hide_an_active_device(pack: RulePack) -> None:
    """A text removal ends the prior-insertion evidence only: an active Device that is itself
    identified as an intramedullary drug device still keeps the reminder."""
    body = load_fixture("order-sign--planned-removal-reminder.json")
    history = body["prefetch"]["procedures"]
    history["entry"].append(
        {
            "resource": {
                "resourceType": "Procedure",
                "id": "proc-history-extra",
                "status": "completed",
                "subject": {"reference": f"Patient/{body['context']['patientId']}"},
                "performedDateTime": "2025-10-14T08:30:00-05:00",
            }
            | TEXT_REMOVAL
        }
    )
    facts = facts_for(body, pack)
    assert facts.device_in_place == ("active-device",)
    assert [f.code for f in evaluate(facts, pack)] == ["planned-removal-reminder"]
