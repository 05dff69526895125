"""Facts derived from resources: session scope, device identification, diagnosis linkage."""

from __future__ import annotations

import base64
import copy
import json
import re
from typing import Any

import pytest
from fhir.resources.R4B.procedure import Procedure
from fhir.resources.R4B.reference import Reference
from helpers.corpus import load_fixture
from helpers.engine import by_code, facts_for

from cds_service.fhir.resources import ResourceSet
from cds_service.rulepack.models import RulePack
from cds_service.rules.facts import FactReader
from cds_service.rules.findings import evaluate_rules, missing_documentation
from cds_service.rules.record import canonical_url, day_of, links_diagnosis, reference_id
from cds_service.rules.statements import read_text


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
    statements = read_text(pack.nlp, pack.clinical_text, text, "Procedure/p1").statements
    assert any(statement.qualifies for statement in statements) is identified


def test_standard_fixture_facts(pack: RulePack) -> None:
    """The standard case: focal-device removal, primary 27722 on the claim, full documentation."""
    facts = facts_for(load_fixture("encounter-discharge--tibia-nonunion-removal.json"), pack)
    assert facts.removal_evidence == (
        "focal-device-removal",
        "procedure-text-removal",
        "operative-note-removal",
    )
    # Each quote names its resource and is the phrase that states the removal.
    sources = [source for source, _ in facts.quotes]
    assert "DocumentReference/docref-op-77a0" in sources
    assert sources[0].startswith("Procedure/")
    assert all(len(quote) <= 100 for _, quote in facts.quotes)
    assert all(re.search("remov|retriev", quote, re.IGNORECASE) for _, quote in facts.quotes)
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


def entries(body: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return [entry["resource"] for entry in body["prefetch"][key].get("entry", [])]


def add_entry(
    body: dict[str, Any], key: str, resource: dict[str, Any], first: bool = False
) -> None:
    bundle = body["prefetch"][key]
    entry = {"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource}
    bundle["entry"] = (
        [entry, *bundle.get("entry", [])] if first else [*bundle.get("entry", []), entry]
    )
    bundle["total"] = len(bundle["entry"])


def history_procedure(body: dict[str, Any], procedure: dict[str, Any]) -> dict[str, Any]:
    """A completed Procedure of the patient's history (2025-10-14), with ``procedure``'s elements."""
    return {
        "resourceType": "Procedure",
        "id": "proc-history-extra",
        "status": "completed",
        "subject": {"reference": f"Patient/{body['context']['patientId']}"},
        "performedDateTime": "2025-10-14T08:30:00-05:00",
    } | procedure


def with_history(procedure: dict[str, Any]) -> dict[str, Any]:
    """The prior-insertion-only request with one more completed Procedure in its history."""
    body = load_fixture(PRIOR_INSERTION)
    add_entry(body, "procedures", history_procedure(body, procedure))
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
    codes = [f.code for f in evaluate_rules(facts, pack)]
    assert codes == (["planned-removal-reminder"] if still_in_place else [])


def test_later_removal_does_not_hide_an_active_device(pack: RulePack) -> None:
    """A text removal ends the prior-insertion evidence only: an active Device that is itself
    identified as an intramedullary drug device still keeps the reminder."""
    body = load_fixture("order-sign--planned-removal-reminder.json")
    add_entry(body, "procedures", history_procedure(body, TEXT_REMOVAL))
    facts = facts_for(body, pack)
    assert facts.device_in_place == ("active-device",)
    assert [f.code for f in evaluate_rules(facts, pack)] == ["planned-removal-reminder"]


# -- edge cases the fixtures do not reach (each found by a surviving mutant) -----------------

STANDARD = "encounter-discharge--tibia-nonunion-removal.json"


def test_day_of_a_plain_date_string_and_a_partial_one() -> None:
    """A ten-character date is a day; a year-month is not."""
    assert day_of("2026-02-10") == "2026-02-10"
    assert day_of("2026-02-10T08:05:00-06:00") == "2026-02-10"
    assert day_of("2026-02") is None


def test_canonical_url_drops_only_the_version() -> None:
    """Everything after the first bar is the version, even when it holds a bar itself."""
    assert canonical_url("http://x/q|1|draft") == "http://x/q"
    assert canonical_url("http://x/q") == "http://x/q"


def test_payer_is_the_claims_coverage_not_the_first_active_one(pack: RulePack) -> None:
    """With two active Coverages, the payer is the one the draft Claim's insurance names."""
    body = load_fixture(STANDARD)
    (coverage,) = entries(body, "coverage")
    other = coverage | {"id": "cov-aetna-extra", "payor": [{"display": "Aetna"}]}
    add_entry(body, "coverage", other, first=True)
    assert facts_for(body, pack).payer == "medicare"


def test_orphan_with_another_session_procedure_is_not_removal_only(pack: RulePack) -> None:
    """A session procedure besides the removal (not on the claim) means 20680 is not the fix."""
    body = load_fixture("encounter-discharge--orphan-removal-only.json")
    removal = entries(body, "procedures")[0]
    debridement = {
        key: value for key, value in removal.items() if key not in ("focalDevice", "note")
    } | {
        "id": "proc-extra-debridement",
        "code": {"coding": [{"system": CPT, "code": "27360"}], "text": "Sequestrectomy, femur"},
    }
    add_entry(body, "procedures", debridement)
    finding = by_code(evaluate_rules(facts_for(body, pack), pack))["orphan-add-on"]
    assert finding.note == "other-procedures-medicare"
    assert finding.updated_claim is None


def test_same_day_removal_of_the_inserted_device_takes_it_out(pack: RulePack) -> None:
    """An insertion whose own device is removed on the same day leaves nothing in place."""
    body = load_fixture("order-sign--device-already-removed.json")
    insertion, removal = sorted(
        (p for p in entries(body, "procedures") if p.get("focalDevice")),
        key=lambda p: p["performedDateTime"],
    )
    removal["performedDateTime"] = insertion["performedDateTime"]
    assert facts_for(body, pack).device_in_place == ()


def test_removal_without_a_date_counts_as_later(pack: RulePack) -> None:
    """A coded removal on record with no date, naming no device, still ends the insertion (it
    cannot be shown to be earlier)."""
    body = load_fixture("order-sign--device-already-removed.json")
    for procedure in entries(body, "procedures"):
        if "20703" in json.dumps(procedure.get("code")):
            del procedure["performedDateTime"]
            del procedure["focalDevice"]
    assert facts_for(body, pack).device_in_place == ()


def test_prefabricated_wording_in_the_removed_devices_note(pack: RulePack) -> None:
    """The removed Device's own note can say it was commercially manufactured."""
    body = load_fixture(STANDARD)
    (device,) = entries(body, "devices")
    device["deviceName"] = [{"name": "Commercially manufactured rod", "type": "model-name"}]
    assert facts_for(body, pack).prefabricated


def test_focal_device_removal_after_another_focal_device(pack: RulePack) -> None:
    """A removal listed after an implantation on the same Procedure is still a removal."""
    body = load_fixture(STANDARD)
    removal = entries(body, "procedures")[0]
    implanted = copy.deepcopy(removal["focalDevice"][0])
    implanted["action"]["coding"][0]["code"] = "129336009"
    implanted["manipulated"] = {"reference": "Device/dev-not-in-prefetch"}
    removal["focalDevice"].insert(0, implanted)
    assert "focal-device-removal" in facts_for(body, pack).removal_evidence


def test_other_document_types_are_not_operative_notes(pack: RulePack) -> None:
    """A discharge summary of the encounter is not searched for operative-note elements."""
    body = load_fixture("encounter-discharge--missing-documentation.json")
    (note,) = entries(body, "documents")
    summary = copy.deepcopy(note) | {
        "id": "docref-discharge-extra",
        "type": {"coding": [{"system": "http://loinc.org", "code": "18842-5"}]},
    }
    summary["content"][0]["attachment"]["data"] = base64.b64encode(
        b"Estimated blood loss: 50 mL. Complications: none."
    ).decode()
    add_entry(body, "documents", summary)
    linked_only = copy.deepcopy(note) | {"id": "docref-linked-extra"}
    linked_only["content"] = [
        {"attachment": {"contentType": "text/plain", "url": "https://ehr.example.org/n/1"}}
    ]
    add_entry(body, "documents", linked_only)
    missing = missing_documentation(facts_for(body, pack), pack)
    assert {"estimated-blood-loss", "complications"} <= set(missing)


def test_a_procedures_report_is_read_whatever_its_type(pack: RulePack) -> None:
    """A DocumentReference the removal Procedure names as its report is read even when it is not
    typed as an operative note."""
    body = load_fixture(STANDARD)
    (note,) = entries(body, "documents")
    note["type"] = {"coding": [{"system": "http://loinc.org", "code": "34109-9"}]}
    assert missing_documentation(facts_for(body, pack), pack) != []
    entries(body, "procedures")[0]["report"] = [{"reference": f"DocumentReference/{note['id']}"}]
    assert missing_documentation(facts_for(body, pack), pack) == []


def test_session_date_comes_from_the_claim_without_procedures(pack: RulePack) -> None:
    """With no session Procedure, the date of service is the claim's earliest line."""
    body = load_fixture(STANDARD)
    body["prefetch"]["procedures"] = {"resourceType": "Bundle", "type": "searchset", "total": 0}
    assert facts_for(body, pack).session_date == "2026-02-10"


def test_soft_tissue_tier_from_the_removed_device_without_a_removal_verb(pack: RulePack) -> None:
    """The focalDevice removal action alone marks a removal; the tier words may be only on the
    removed Device."""
    body = load_fixture("encounter-discharge--soft-tissue-beads.json")
    removal = next(p for p in entries(body, "procedures") if p.get("focalDevice"))
    removal["code"] = {"text": "Antibiotic bead chain"}
    removal.pop("note", None)
    assert facts_for(body, pack).other_tiers == frozenset({"soft-tissue"})


def test_questionnaire_answers_of_another_encounter_do_not_count(pack: RulePack) -> None:
    """Answers given for another encounter document nothing here; amended ones do count."""
    body = load_fixture("encounter-discharge--questionnaire-answers.json")
    (response,) = entries(body, "questionnaireResponses")
    response["status"] = "amended"
    answered = facts_for(body, pack).answered
    assert "removal-reason" in answered
    response["encounter"] = {"reference": "Encounter/enc-of-another-visit"}
    assert facts_for(body, pack).answered == frozenset()
    own_visit = {"reference": f"Encounter/{body['context']['encounterId']}"}
    own = copy.deepcopy(response) | {"id": "qr-own-visit", "encounter": own_visit}
    add_entry(body, "questionnaireResponses", own)
    assert "removal-reason" in facts_for(body, pack).answered


def test_an_answer_with_only_an_extension_documents_nothing(pack: RulePack) -> None:
    """An answer that carries no value, only an extension, does not count as documented."""
    body = load_fixture("encounter-discharge--questionnaire-answers.json")
    (response,) = entries(body, "questionnaireResponses")
    for item in response["item"]:
        item["answer"] = [{"extension": [{"url": "https://ehr.example.org/x", "valueString": "y"}]}]
    assert facts_for(body, pack).answered == frozenset()


def test_device_identified_by_its_20702_implantation(pack: RulePack) -> None:
    """An active Device whose own text has no intramedullary words is one when a prior 20702
    Procedure implanted it."""
    facts = facts_for(load_fixture("order-sign--planned-removal-humerus.json"), pack)
    assert "active-device" in facts.device_in_place


def test_device_words_across_its_type_and_name(pack: RulePack) -> None:
    """A Device's type, names and notes are read as one text: the form word may open its name."""
    body = load_fixture("order-sign--planned-removal-reminder.json")
    (device,) = entries(body, "devices")
    device["type"] = {"text": "Tobramycin PMMA cement"}
    device["deviceName"] = [{"name": "rod for the left tibial canal", "type": "model-name"}]
    device.pop("note")
    assert "active-device" in facts_for(body, pack).device_in_place


def test_unlisted_surgery_without_a_removal_raises_nothing(pack: RulePack) -> None:
    """primary-not-listed needs a removal: an unlisted surgery alone is no +20703 question."""
    body = load_fixture("encounter-discharge--primary-not-listed.json")
    bundle = body["prefetch"]["procedures"]
    bundle["entry"] = [e for e in bundle["entry"] if "coding" in e["resource"]["code"]]
    bundle["total"] = len(bundle["entry"])
    # The operative note states the removal, and is evidence on its own: it goes too.
    body["prefetch"]["documents"] = {"resourceType": "Bundle", "type": "searchset", "total": 0}
    assert evaluate_rules(facts_for(body, pack), pack) == []


def test_the_first_surgery_code_counts_as_surgery(pack: RulePack) -> None:
    """The CPT surgery range includes its first code."""
    body = load_fixture("encounter-discharge--primary-not-listed.json")
    low, _ = pack.coding.surgical_code_range
    for procedure in entries(body, "procedures"):
        for coding in procedure["code"].get("coding", []):
            coding["code"] = low
    for claim in entries(body, "claims"):
        for item in claim["item"]:
            item["productOrService"]["coding"][0]["code"] = low
    assert facts_for(body, pack).other_surgery


@pytest.mark.parametrize(
    ("text", "tier"),
    [
        ("tobramycin beads removed from the subfascial space", "soft-tissue"),
        ("vancomycin-soaked collagen sponge removed from the subfascial space", None),
        ("metal beads removed from the subfascial space", None),
        ("antibiotic cement rod removed from the tibial canal", "intramedullary"),
    ],
)
def test_a_tier_needs_both_a_drug_carrier_and_a_device_form(
    pack: RulePack, text: str, tier: str | None
) -> None:
    """A drug without a device form, or a form without a drug, is no drug-delivery device."""
    statements = read_text(pack.nlp, pack.clinical_text, text, "Procedure/p1").statements
    devices = [statement for statement in statements if statement.drug_device]
    assert (devices[0].tier if devices else None) == tier


@pytest.mark.parametrize(
    ("answer", "counts"),
    [
        ({"valueBoolean": True}, True),
        ({"valueBoolean": False}, False),
        ({"valueString": ""}, False),
        ({"id": "a1"}, False),
        (
            {"modifierExtension": [{"url": "https://ehr.example.org/m", "valueBoolean": True}]},
            False,
        ),
        ({"item": [{"linkId": "nested", "answer": [{"valueString": "yes"}]}]}, False),
    ],
)
def test_which_questionnaire_answers_document_an_element(
    pack: RulePack, answer: dict[str, Any], counts: bool
) -> None:
    """Only an answer with a value that says something documents its item; an empty string,
    false, an id, a modifier extension or a nested item alone do not."""
    body = load_fixture("encounter-discharge--questionnaire-answers.json")
    (response,) = entries(body, "questionnaireResponses")
    response["item"] = [{"linkId": "removal-reason", "answer": [answer]}]
    assert ("removal-reason" in facts_for(body, pack).answered) is counts


@pytest.mark.parametrize("keep", ["code", "focalDevice"])
def test_insertion_is_the_20702_code_or_an_implantation(pack: RulePack, keep: str) -> None:
    """Either the CPT 20702 code or a focalDevice implantation marks an insertion."""
    body = load_fixture("encounter-discharge--removal-billed-for-insertion.json")
    insertion = entries(body, "procedures")[0]
    if keep == "code":
        del insertion["focalDevice"]
    else:
        insertion["code"] = {"text": "Hand-made antibiotic cement-coated nail, left femur"}
    assert facts_for(body, pack).insertion_evidence


def test_a_focal_removal_without_code_is_no_insertion(pack: RulePack) -> None:
    """A focalDevice with the removal action is not an implantation; with the implantation
    action it is."""
    body = load_fixture("encounter-discharge--removal-billed-for-insertion.json")
    insertion = entries(body, "procedures")[0]
    insertion["code"] = {"text": "Hand-made antibiotic cement-coated nail, left femur"}
    reader = FactReader(ResourceSet(), pack, "e1")
    assert reader.is_insertion(Procedure.model_validate(insertion))
    insertion["focalDevice"][0]["action"]["coding"][0]["code"] = "129303008"
    assert not reader.is_insertion(Procedure.model_validate(insertion))


def insertion_of(body: dict[str, Any]) -> dict[str, Any]:
    return next(p for p in entries(body, "procedures") if p.get("focalDevice"))


def later_procedure(insertion: dict[str, Any], procedure_id: str, **changes: Any) -> dict[str, Any]:
    """A copy of ``insertion`` on a later day, with ``changes``."""
    later = copy.deepcopy(insertion) | {
        "id": procedure_id,
        "performedDateTime": "2025-10-01T09:00:00-05:00",
    }
    return later | changes


def test_a_later_20680_of_the_inserted_device_takes_it_out(pack: RulePack) -> None:
    """A later 20680 whose focalDevice is the device a 20702 implanted is a removal of the drug
    device, even when its text names none: it ends that insertion, and, being a removal on a
    later day, also one recorded without naming its device."""
    body = load_fixture(PRIOR_INSERTION)
    insertion = insertion_of(body)
    assert facts_for(body, pack).device_in_place == ("prior-insertion",)
    unnamed = copy.deepcopy(insertion) | {"id": "proc-insertion-unnamed"}
    del unnamed["focalDevice"]
    add_entry(body, "procedures", unnamed)
    removal = later_procedure(
        insertion,
        "proc-later-20680",
        code={"coding": [{"system": CPT, "code": "20680"}], "text": "Removal of implant, deep"},
    )
    removal["focalDevice"][0].pop("action", None)
    add_entry(body, "procedures", removal)
    assert facts_for(body, pack).device_in_place == ()


def test_a_same_day_20680_of_the_inserted_device_takes_it_out(pack: RulePack) -> None:
    """A 20680 naming the inserted device removes it, even on the insertion's day."""
    body = load_fixture(PRIOR_INSERTION)
    insertion = insertion_of(body)
    removal = copy.deepcopy(insertion) | {
        "id": "proc-same-day-20680",
        "code": {"coding": [{"system": CPT, "code": "20680"}], "text": "Removal of implant, deep"},
    }
    removal["focalDevice"][0].pop("action", None)
    add_entry(body, "procedures", removal)
    assert facts_for(body, pack).device_in_place == ()


def test_an_exchange_text_is_not_a_removal_of_the_earlier_device(pack: RulePack) -> None:
    """A later implantation whose text tells of removing the old rod is an insertion, not a
    removal on record: the 20702 device before it is not taken as removed by those words."""
    body = load_fixture(PRIOR_INSERTION)
    insertion = insertion_of(body)
    exchange = later_procedure(
        insertion,
        "proc-later-exchange",
        code={"text": "Antibiotic cement intramedullary rod placed in the right femoral canal"},
        note=[
            {"text": "Placed after removal of the previous antibiotic cement rod from the canal."}
        ],
    )
    exchange["focalDevice"][0]["manipulated"] = {"reference": "Device/dev-not-in-prefetch-2"}
    add_entry(body, "procedures", exchange)
    assert facts_for(body, pack).device_in_place == ("prior-insertion",)


def test_every_insertion_is_checked(pack: RulePack) -> None:
    """A procedure not done, or an insertion whose device was removed, does not stop the check of
    a further insertion still in place."""
    body = load_fixture(PRIOR_INSERTION)
    insertion = insertion_of(body)
    not_done = copy.deepcopy(insertion) | {"id": "proc-not-done", "status": "not-done"}
    removed_first = copy.deepcopy(insertion) | {"id": "proc-insertion-removed"}
    removed_first["focalDevice"][0]["manipulated"] = {"reference": "Device/dev-removed-one"}
    removal = later_procedure(
        removed_first,
        "proc-removal-of-first",
        code={"coding": [{"system": CPT, "code": "20703"}], "text": "Removal"},
    )
    removal["focalDevice"][0]["action"]["coding"][0]["code"] = "129303008"
    bundle = body["prefetch"]["procedures"]
    bundle["entry"] = [
        {"fullUrl": f"urn:uuid:{p['id']}", "resource": p}
        for p in (not_done, removed_first, removal)
    ] + bundle["entry"]
    removal["performedDateTime"] = insertion["performedDateTime"]
    bundle["total"] = len(bundle["entry"])
    assert facts_for(body, pack).device_in_place == ("prior-insertion",)


def test_only_a_draft_professional_claim_of_the_session_is_read(pack: RulePack) -> None:
    """A non-draft Claim, or one of another encounter, listed first does not hide the session's
    draft Claim; a draft Claim matched by date (its lines name no encounter) is read."""
    body = load_fixture(STANDARD)
    (claim,) = entries(body, "claims")
    active = copy.deepcopy(claim) | {"id": "claim-active-extra", "status": "active"}
    elsewhere = copy.deepcopy(claim) | {"id": "claim-other-visit"}
    for item in elsewhere["item"]:
        item["encounter"] = [{"reference": "Encounter/enc-of-another-visit"}]
    add_entry(body, "claims", elsewhere, first=True)
    add_entry(body, "claims", active, first=True)
    read = facts_for(body, pack).claim
    assert read is not None
    assert read.source.model.id == claim["id"]
    for item in claim["item"]:
        del item["encounter"]
    read = facts_for(body, pack).claim
    assert read is not None
    assert read.source.model.id == claim["id"]
    body["prefetch"]["claims"]["entry"] = [{"resource": active}]
    assert facts_for(body, pack).claim is None


def test_claim_lines_with_a_period_no_quantity_or_no_coding(pack: RulePack) -> None:
    """A line dated by a period has the period's first day; a line without quantity or CPT
    coding is read without them, not refused."""
    body = load_fixture(STANDARD)
    (claim,) = entries(body, "claims")
    line = claim["item"][0]
    day = line.pop("servicedDate")
    line["servicedPeriod"] = {"start": day, "end": day}
    extra = copy.deepcopy(line) | {"sequence": 9, "productOrService": {"text": "Supplies"}}
    extra.pop("quantity")
    claim["item"].append(extra)
    read = facts_for(body, pack).claim
    assert read is not None
    lines = read.lines
    assert [(line.code, line.serviced_date, line.quantity) for line in lines] == [
        ("27722", day, 1),
        (None, day, None),
    ]


def test_a_procedure_complication_documents_complications(pack: RulePack) -> None:
    """Procedure.complication on a session procedure documents the complications element."""
    body = load_fixture("encounter-discharge--missing-documentation.json")
    assert "complications" in missing_documentation(facts_for(body, pack), pack)
    entries(body, "procedures")[0]["complication"] = [{"text": "None"}]
    assert "complications" not in missing_documentation(facts_for(body, pack), pack)


@pytest.mark.parametrize("where", ["reasonCode", "claim"])
def test_diagnosis_linkage_from_a_reason_or_the_claim(pack: RulePack, where: str) -> None:
    """A supporting diagnosis as a session procedure's reason, or on the claim, documents the
    diagnosis linkage."""
    body = load_fixture("encounter-discharge--already-billed-missing-docs.json")
    assert "diagnosis-linkage" in missing_documentation(facts_for(body, pack), pack)
    icd = "http://hl7.org/fhir/sid/icd-10-cm"
    coding = {"system": icd, "code": "T84.610A"}
    if where == "reasonCode":
        entries(body, "procedures")[0]["reasonCode"] = [{"coding": [coding]}]
    else:
        (claim,) = entries(body, "claims")
        sequence = max(d["sequence"] for d in claim["diagnosis"]) + 1
        claim["diagnosis"].append(
            {"sequence": sequence, "diagnosisCodeableConcept": {"coding": [coding]}}
        )
    assert "diagnosis-linkage" not in missing_documentation(facts_for(body, pack), pack)


def test_a_superseded_or_unlinked_operative_note_is_not_read(pack: RulePack) -> None:
    """An operative note that is superseded, or names no encounter, does not document this
    session."""
    for change in ({"status": "superseded"}, {"context": None}):
        body = load_fixture(STANDARD)
        (note,) = entries(body, "documents")
        note.update(change)
        if note["context"] is None:
            del note["context"]
        assert missing_documentation(facts_for(body, pack), pack) != [], change


def test_operative_note_bytes_that_are_not_utf8_and_several_contents(pack: RulePack) -> None:
    """A note's bytes are read as UTF-8 with bad bytes replaced, and every text/plain content
    is read, after one that is not text."""
    body = load_fixture(STANDARD)
    (note,) = entries(body, "documents")
    text = note["content"][0]["attachment"]["data"]
    note["content"] = [
        {"attachment": {"contentType": "text/plain", "url": "https://ehr.example.org/n/2"}},
        {"attachment": {"contentType": "application/pdf", "data": text}},
        {
            "attachment": {
                "contentType": "text/plain",
                "data": base64.b64encode(b"\xff\xfe").decode(),
            }
        },
        {"attachment": {"contentType": "text/plain", "data": text}},
    ]
    assert missing_documentation(facts_for(body, pack), pack) == []


def test_an_entered_in_error_condition_does_not_link_a_diagnosis(pack: RulePack) -> None:
    """A session Condition entered in error documents nothing; a valid one after it does."""
    body = load_fixture("encounter-discharge--already-billed-missing-docs.json")
    (condition, _) = entries(body, "conditions")
    in_error = copy.deepcopy(condition) | {"id": "cond-in-error"}
    in_error["code"] = {
        "coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "T84.610A"}]
    }
    in_error["verificationStatus"]["coding"][0] |= {"code": "entered-in-error"}
    add_entry(body, "conditions", in_error, first=True)
    assert "diagnosis-linkage" in missing_documentation(facts_for(body, pack), pack)
    valid = copy.deepcopy(in_error) | {
        "id": "cond-valid",
        "verificationStatus": condition["verificationStatus"],
    }
    add_entry(body, "conditions", valid)
    assert "diagnosis-linkage" not in missing_documentation(facts_for(body, pack), pack)


def test_the_removed_devices_note_is_read(pack: RulePack) -> None:
    """A documentation element stated only in the removed Device's note counts."""
    body = load_fixture("encounter-discharge--missing-documentation.json")
    assert "estimated-blood-loss" in missing_documentation(facts_for(body, pack), pack)
    (device,) = entries(body, "devices")
    device["note"] = [*device.get("note", []), {"text": "Estimated blood loss 20 mL."}]
    assert "estimated-blood-loss" not in missing_documentation(facts_for(body, pack), pack)


def test_a_device_identified_by_its_note(pack: RulePack) -> None:
    """The canal may be named only in the Device's note."""
    body = load_fixture("order-sign--planned-removal-reminder.json")
    for procedure in entries(body, "procedures"):
        procedure.pop("focalDevice", None)  # no 20702 names the Device: its text must
    (device,) = entries(body, "devices")
    device["type"] = {"text": "Tobramycin PMMA cement rod"}
    device.pop("deviceName")
    device["note"] = [{"text": "Placed in the left tibial canal."}]
    assert "active-device" in facts_for(body, pack).device_in_place
    device.pop("note")
    assert "active-device" not in facts_for(body, pack).device_in_place


def test_the_claim_with_most_session_lines_is_read(pack: RulePack) -> None:
    """Of two draft claims of the session, the one with more lines in it is the claim read,
    whether its lines name the encounter or only the date."""
    body = load_fixture(STANDARD)
    (claim,) = entries(body, "claims")
    claim["item"].append(copy.deepcopy(claim["item"][0]) | {"sequence": 9})
    by_date = copy.deepcopy(claim) | {"id": "claim-by-date"}
    by_date["item"] = [{k: v for k, v in by_date["item"][0].items() if k != "encounter"}]
    add_entry(body, "claims", by_date, first=True)
    read = facts_for(body, pack).claim
    assert read is not None
    assert read.source.model.id == claim["id"]
