"""Facts derived from resources: session scope, device identification, diagnosis linkage."""

from __future__ import annotations

import pytest
from conftest import load_fixture
from fhir.resources.R4B.reference import Reference
from test_rules import facts_for

from cds_service.facts import FactReader, links_diagnosis, reference_id
from cds_service.fhir_input import ResourceSet
from cds_service.rule_pack import RulePack


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
