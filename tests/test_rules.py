"""The +20703 rules as pure functions, over the fixture corpus and on targeted variations."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from typing import Any

import pytest
from fhir.resources.R4B.claim import Claim
from helpers.corpus import EXPECTED, FIXTURE_NAMES, icd10cm_diagnoses, load_fixture
from helpers.engine import by_code, facts_for, findings_for
from helpers.suggestion_records import (
    EXPECTED_EDITS,
    documentation_labels,
    sent_claims,
    suggestion_record,
)

from cds_service.fhir.resources import read_resources
from cds_service.rulepack.models import RulePack
from cds_service.rules.facts import derive_facts
from cds_service.rules.findings import Finding, evaluate_rules, missing_documentation

CPT = "http://www.ama-assn.org/go/cpt"

ANSWERED = [name for name in FIXTURE_NAMES if EXPECTED[name]["status"] == 200]


def claim_items(finding: Finding) -> list[dict[str, Any]]:
    assert finding.updated_claim is not None
    items: list[dict[str, Any]] = finding.updated_claim["item"]
    return items


def cpt(item: dict[str, Any]) -> str:
    code: str = item["productOrService"]["coding"][0]["code"]
    return code


@pytest.mark.parametrize("name", ANSWERED)
def test_fixture_raises_expected_findings(name: str, pack: RulePack) -> None:
    """Each fixture raises exactly the findings its README promises."""
    findings = findings_for(load_fixture(name), pack)
    assert sorted(finding.code for finding in findings) == EXPECTED[name]["findings"]


@pytest.mark.parametrize("name", ANSWERED)
def test_fixture_raises_each_finding_with_its_expected_note(name: str, pack: RulePack) -> None:
    """The note each finding is raised with (it picks the card's advice) is the one expected."""
    findings = findings_for(load_fixture(name), pack)
    notes = {finding.code: finding.note for finding in findings if finding.note is not None}
    assert notes == EXPECTED[name].get("notes", {})


def suggestion_record_of(
    finding: Finding, body: dict[str, Any], pack: RulePack
) -> dict[str, Any] | None:
    """What the finding's suggestion would do, as recorded in expected-edits.json."""
    labels = documentation_labels(pack)
    if finding.new_resource is not None:
        return suggestion_record("create", finding.new_resource, body, labels)
    if finding.updated_claim is not None:
        return suggestion_record("update", finding.updated_claim, body, labels)
    return None


@pytest.mark.parametrize("name", ANSWERED)
def test_fixture_suggestions_do_what_the_records_say(name: str, pack: RulePack) -> None:
    """Every claim edit and Task equals its reviewed record: lines added, removed or changed,
    with codes, modifiers, units, dates and pointers; a finding that can carry a suggestion but
    should not (no claim, no mechanical fix) is recorded as null."""
    body = load_fixture(name)
    suggested = {
        finding.code: suggestion_record_of(finding, body, pack)
        for finding in findings_for(body, pack)
        if pack.findings.findings[finding.code].suggestion is not None
    }
    assert suggested == EXPECTED_EDITS.get(name, {})


@pytest.mark.parametrize("name", ANSWERED)
def test_fixture_payer_profile(name: str, pack: RulePack) -> None:
    """Each fixture's payer is recognised as the profile its README names."""
    assert facts_for(load_fixture(name), pack).payer == EXPECTED[name]["payer"]


@pytest.mark.parametrize(
    "name", [name for name in ANSWERED if "documentation-missing" in EXPECTED[name]["findings"]]
)
def test_fixture_lists_expected_missing_documentation(name: str, pack: RulePack) -> None:
    """The documentation card lists exactly the elements the fixture lacks."""
    finding = by_code(findings_for(load_fixture(name), pack))["documentation-missing"]
    assert sorted(finding.missing_documentation) == EXPECTED[name]["missing_documentation"]


def test_rules_are_deterministic(pack: RulePack) -> None:
    """The same facts give the same findings twice (no clock, no randomness in the rules)."""
    body = load_fixture("encounter-discharge--missing-documentation.json")
    assert findings_for(body, pack) == findings_for(copy.deepcopy(body), pack)


def test_suggested_line_is_linked_like_the_primary(pack: RulePack) -> None:
    """The new 20703 line copies date, diagnosis and care-team pointers and laterality."""
    body = load_fixture("encounter-discharge--tibia-nonunion-removal.json")
    finding = by_code(findings_for(body, pack))["add-on-suggested"]
    items = claim_items(finding)
    original = next(
        entry["resource"]
        for entry in body["prefetch"]["claims"]["entry"]
        if entry["resource"]["resourceType"] == "Claim"
    )
    assert items[: len(original["item"])] == original["item"]
    new_line = items[-1]
    primary = next(item for item in original["item"] if cpt(item) == "27722")
    assert cpt(new_line) == "20703"
    assert new_line["quantity"] == {"value": 1}
    assert new_line["sequence"] == max(item["sequence"] for item in original["item"]) + 1
    for element in ("servicedDate", "diagnosisSequence", "careTeamSequence"):
        assert new_line[element] == primary[element]
    laterality = {
        coding["code"]
        for modifier in primary.get("modifier", [])
        for coding in modifier["coding"]
        if coding["code"] in ("RT", "LT")
    }
    assert {m["coding"][0]["code"] for m in new_line.get("modifier", [])} == laterality
    Claim.model_validate(finding.updated_claim)


def test_suggested_line_never_carries_modifier_51(pack: RulePack) -> None:
    """A 51 on the primary line is not copied: add-on codes are exempt from modifier 51."""
    body = load_fixture("encounter-discharge--tibia-nonunion-removal.json")
    claim = body["prefetch"]["claims"]["entry"][0]["resource"]
    primary = next(item for item in claim["item"] if cpt(item) == "27722")
    primary.setdefault("modifier", []).append(
        {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "51"}]}
    )
    finding = by_code(findings_for(body, pack))["add-on-suggested"]
    new_line = claim_items(finding)[-1]
    codes = {coding["code"] for m in new_line.get("modifier", []) for coding in m["coding"]}
    assert "51" not in codes
    assert codes == {"LT"}


def test_no_claim_means_no_action(pack: RulePack) -> None:
    """Without a draft claim the finding still holds but carries no claim update."""
    body = load_fixture("encounter-discharge--tibia-nonunion-removal.json")
    body["prefetch"]["claims"] = None
    finding = by_code(findings_for(body, pack))["add-on-suggested"]
    assert finding.updated_claim is None
    assert "No draft claim was available" in finding.variables["note"]


def test_claim_without_primary_line_gets_no_action(pack: RulePack) -> None:
    """A claim that lacks the primary line is not given an orphan 20703 line."""
    body = load_fixture("encounter-discharge--tibia-nonunion-removal.json")
    claim = body["prefetch"]["claims"]["entry"][0]["resource"]
    for item in claim["item"]:
        item["productOrService"]["coding"][0]["code"] = "99213"
    finding = by_code(findings_for(body, pack))["add-on-suggested"]
    assert finding.updated_claim is None
    assert "has no 27722 line" in finding.variables["note"]


def test_orphan_removal_only_replaces_line_with_20680(pack: RulePack) -> None:
    """When removal is the only procedure, the 20703 line becomes 20680, nothing else changes."""
    body = load_fixture("encounter-discharge--orphan-removal-only.json")
    finding = by_code(findings_for(body, pack))["orphan-add-on"]
    items = claim_items(finding)
    assert [cpt(item) for item in items].count("20703") == 0
    assert [cpt(item) for item in items].count("20680") == 1
    Claim.model_validate(finding.updated_claim)


def test_orphan_with_other_procedure_has_no_mechanical_fix(pack: RulePack) -> None:
    """With another (unlisted) procedure on the claim, no replacement is suggested."""
    body = load_fixture("encounter-discharge--orphan-with-debridement.json")
    finding = by_code(findings_for(body, pack))["orphan-add-on"]
    assert finding.updated_claim is None
    assert "deny 20703 with an unlisted primary (CARC B15)" in finding.variables["note"]


def test_removal_without_encounter_context_raises_no_claim_finding(pack: RulePack) -> None:
    """Claim findings need the session: without an encounter id they are not evaluated.

    (encounter-discharge requires encounterId, so the fact reader is called directly.)"""
    body = load_fixture("encounter-discharge--tibia-nonunion-removal.json")
    resources = read_resources(body["prefetch"])
    facts = derive_facts(resources, pack, body["hook"], None, body["context"]["patientId"])
    assert facts.removal_evidence == ()
    assert evaluate_rules(facts, pack) == []


def test_procedure_in_other_encounter_is_not_session_evidence(pack: RulePack) -> None:
    """A removal documented in another encounter does not support this encounter's claim."""
    body = load_fixture("encounter-discharge--tibia-nonunion-removal.json")
    for entry in body["prefetch"]["procedures"]["entry"]:
        entry["resource"]["encounter"] = {"reference": "Encounter/some-other-visit"}
    # The operative note is evidence on its own: it moves with the procedures.
    for entry in body["prefetch"]["documents"]["entry"]:
        entry["resource"]["context"]["encounter"] = [{"reference": "Encounter/some-other-visit"}]
    assert findings_for(body, pack) == []


def test_assistant_role_is_checked_only_with_an_assistant_modifier(pack: RulePack) -> None:
    """assistant-role is missing with modifier 80 and not applicable without it."""
    body = load_fixture("encounter-discharge--assistant-modifier.json")
    assert "assistant-role" in missing_documentation(facts_for(body, pack), pack)
    for entry in body["prefetch"]["claims"]["entry"]:
        for item in entry["resource"].get("item", []):
            item.pop("modifier", None)
    assert "assistant-role" not in missing_documentation(facts_for(body, pack), pack)


def test_text_evidence_needs_intramedullary_site(pack: RulePack) -> None:
    """Removing antibiotic beads from soft tissue is not 20703; in the canal it is."""
    body = without_operative_note(load_fixture("encounter-discharge--text-only-evidence.json"))
    assert "add-on-suggested" in by_code(findings_for(body, pack))
    for entry in body["prefetch"]["procedures"]["entry"]:
        code = entry["resource"].get("code", {})
        if "text" in code and "canal" in code["text"]:
            code["text"] = "Removal of antibiotic cement beads, subfascial soft tissue of thigh"
    assert "add-on-suggested" not in by_code(findings_for(body, pack))


def without_operative_note(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with its operative note gone, so that the Procedure's own text is read alone (the
    note states the removal too, and is evidence on its own)."""
    body["prefetch"]["documents"] = {"resourceType": "Bundle", "type": "searchset", "total": 0}
    return body


def test_reminder_needs_a_device_in_place(pack: RulePack) -> None:
    """The order-sign reminder disappears once the device is no longer active."""
    body = load_fixture("order-sign--planned-removal-reminder.json")
    assert [f.code for f in findings_for(body, pack)] == ["planned-removal-reminder"]
    body["prefetch"]["devices"] = None
    body["prefetch"]["procedures"] = None
    assert findings_for(body, pack) == []


def claim_of(body: dict[str, Any]) -> dict[str, Any]:
    claim: dict[str, Any] = body["prefetch"]["claims"]["entry"][0]["resource"]
    return claim


def test_removal_billed_for_insertion_asks_for_no_removal_documentation(pack: RulePack) -> None:
    """20703 billed on an insertion: the documentation rule would list removal elements, but
    insertion-instead-of-removal suppresses it, so no Task asks for a removal that did not happen."""
    body = load_fixture("encounter-discharge--removal-billed-for-insertion.json")
    facts = facts_for(body, pack)
    assert {"anatomic-site", "implants-removed"} <= set(missing_documentation(facts, pack))
    findings = by_code(evaluate_rules(facts, pack))
    assert set(findings) == {"insertion-instead-of-removal"}
    assert findings["insertion-instead-of-removal"].note == "removal-code-billed"
    assert (
        "no +20703 removal documentation"
        in findings["insertion-instead-of-removal"].variables["note"]
    )


def test_insertion_billed_for_removal_keeps_the_documentation_request(pack: RulePack) -> None:
    """The reverse case (20702 billed for a removal) still asks for the removal documentation."""
    body = load_fixture("encounter-discharge--insertion-billed-for-removal.json")
    body["prefetch"]["documents"] = None
    findings = by_code(findings_for(body, pack))
    assert set(findings) == {"insertion-instead-of-removal", "documentation-missing"}
    assert findings["insertion-instead-of-removal"].note == "insertion-code-billed"
    assert findings["documentation-missing"].new_resource is not None


def with_diagnoses(body: dict[str, Any], codes: list[str], add_on_pointers: list[int]) -> None:
    """Replace the claim's diagnoses by ``codes``; point the 20703 line to ``add_on_pointers``."""
    claim = claim_of(body)
    claim["diagnosis"] = icd10cm_diagnoses(codes)
    for item in claim["item"]:
        item["diagnosisSequence"] = add_on_pointers if cpt(item) == "20703" else [1]


@pytest.mark.parametrize(
    ("codes", "pointers", "expected"),
    [
        (["Z472", "T84615A"], [1, 2], ["diagnosis-conflict"]),
        (["z47.2", "T84.11XA"], [1, 2], ["diagnosis-conflict", "diagnosis-unsupported"]),
        (["Z47.2", "T84623A"], [2], ["diagnosis-conflict"]),
        (["Z472", "T8484XA", "M86661"], [1, 3], []),
        (["Z4720", "T84615A"], [2], []),  # Z47.20 does not exist: not Z47.2
    ],
)
def test_diagnosis_codes_compare_without_their_dot(
    pack: RulePack, codes: list[str], pointers: list[int], expected: list[str]
) -> None:
    """Dot-less codes (T84615A) are the dotted ones (T84.615A) for conflict and linkage."""
    body = load_fixture("encounter-discharge--diagnosis-conflict.json")
    with_diagnoses(body, codes, pointers)
    found = [f.code for f in findings_for(body, pack) if f.code.startswith("diagnosis-")]
    assert sorted(found) == expected


def test_diagnosis_conflict_summary_counts_the_codes_it_does_not_list(pack: RulePack) -> None:
    """Nine conflicting codes: the summary names two and counts seven; the detail lists all."""
    body = load_fixture("encounter-discharge--diagnosis-conflict.json")
    conflicting = [f"T84.61{n}A" for n in range(10)][:9]
    with_diagnoses(body, ["Z47.2", *conflicting], [1])
    finding = by_code(findings_for(body, pack))["diagnosis-conflict"]
    assert finding.variables["conflicting"] == "T84.610A, T84.611A and 7 more"
    assert finding.variables["conflicting_all"] == ", ".join(conflicting)


def with_laterality(body: dict[str, Any], code: str, modifiers: list[str]) -> None:
    for item in claim_of(body)["item"]:
        if cpt(item) == code:
            item.pop("modifier", None)
            if modifiers:
                item["modifier"] = [
                    {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": m}]}
                    for m in modifiers
                ]


@pytest.mark.parametrize(
    ("hardware", "removal", "fires"),
    [
        (["RT"], ["LT"], False),
        (["LT"], ["RT"], False),
        (["LT"], ["LT"], True),
        ([], ["LT"], True),
        (["RT"], [], True),
        (["RT", "LT"], ["LT"], True),
        (["RT", "51"], ["LT"], False),
    ],
)
def test_duplicate_hardware_removal_skips_opposite_sides(
    pack: RulePack, hardware: list[str], removal: list[str], fires: bool
) -> None:
    """20680 and 20703 on one date are a duplicate unless RT/LT show opposite sides."""
    body = load_fixture("encounter-discharge--duplicate-hardware-removal.json")
    with_laterality(body, "20680", hardware)
    with_laterality(body, "20703", removal)
    assert ("duplicate-hardware-removal" in by_code(findings_for(body, pack))) is fires


@pytest.mark.parametrize(
    ("name", "note"),
    [
        ("encounter-discharge--wrong-tier-intra-articular.json", "other-procedures-medicare"),
        ("encounter-discharge--orphan-with-debridement.json", "other-procedures-commercial"),
    ],
)
def test_orphan_with_unlisted_primary_depends_on_the_payer(
    pack: RulePack, name: str, note: str
) -> None:
    """With other procedures on the claim, Medicare gets the contractor-discretion note."""
    finding = by_code(findings_for(load_fixture(name), pack))["orphan-add-on"]
    assert finding.note == note
    assert finding.updated_claim is None


def test_a_code_sent_with_and_without_its_dot_counts_once(pack: RulePack) -> None:
    """T84.615A and T84615A on one claim are one conflicting code, not two."""
    body = load_fixture("encounter-discharge--diagnosis-conflict.json")
    with_diagnoses(body, ["Z47.2", "T84.615A", "T84615A", "T84.110A"], [2])
    finding = by_code(findings_for(body, pack))["diagnosis-conflict"]
    assert finding.variables["conflicting"] == "T84.110A, T84.615A"


# -- the primary found by its date of service ------------------------------------------------

SAME_DAY = "encounter-discharge--primary-same-day-no-encounter.json"
OTHER_DAY = "encounter-discharge--primary-other-day-no-encounter.json"


def procedure_coded(body: dict[str, Any], code: str) -> dict[str, Any]:
    return next(
        entry["resource"]
        for entry in body["prefetch"]["procedures"]["entry"]
        if any(c.get("code") == code for c in entry["resource"]["code"].get("coding", []))
    )


def test_primary_procedure_without_encounter_counts_on_a_session_day(pack: RulePack) -> None:
    """A 27722 Procedure naming no encounter, dated on the removal's day, is the eligible primary
    and documents `primary-procedure`; moved to another day it is neither."""
    body = load_fixture(SAME_DAY)
    assert "encounter" not in procedure_coded(body, "27722")
    facts = facts_for(body, pack)
    assert facts.session_primaries == ("27722",)
    assert "primary-procedure-documented" in facts.evidence
    assert [f.code for f in evaluate_rules(facts, pack)] == ["add-on-suggested"]
    procedure_coded(body, "27722")["performedDateTime"] = "2026-05-20T08:42:00-06:00"
    facts = facts_for(body, pack)
    assert facts.session_primaries == ()
    assert "primary-procedure-documented" not in facts.evidence
    assert evaluate_rules(facts, pack) == []


def test_other_day_primary_becomes_eligible_on_the_session_day(pack: RulePack) -> None:
    """The near miss differs from the firing case only by the date of the primary."""
    body = load_fixture(OTHER_DAY)
    assert findings_for(body, pack) == []
    procedure_coded(body, "27722")["performedDateTime"] = "2026-06-02T10:15:00-06:00"
    assert [f.code for f in findings_for(body, pack)] == ["add-on-suggested"]


def test_primary_procedure_of_another_encounter_does_not_count(pack: RulePack) -> None:
    """A same-day Procedure that names another encounter belongs to that other session."""
    body = load_fixture(SAME_DAY)
    procedure_coded(body, "27722")["encounter"] = {"reference": "Encounter/enc-other-clinic"}
    assert facts_for(body, pack).session_primaries == ()
    assert findings_for(body, pack) == []


def test_primary_procedure_without_a_date_does_not_count(pack: RulePack) -> None:
    """Without an encounter and without a performed date, nothing ties the Procedure to the day."""
    body = load_fixture(SAME_DAY)
    del procedure_coded(body, "27722")["performedDateTime"]
    assert facts_for(body, pack).session_primaries == ()


@pytest.mark.parametrize(
    ("occurrence", "eligible"),
    [
        ({"occurrenceDateTime": "2025-09-30"}, True),
        ({"occurrenceDateTime": "2025-09-30T07:00:00-05:00"}, True),
        ({"occurrencePeriod": {"start": "2025-09-30T07:00:00-05:00"}}, True),
        ({"occurrenceDateTime": "2025-10-01"}, False),
        ({}, False),  # no date of service: the order cannot be placed on the session's day
    ],
)
def test_service_request_without_encounter_counts_by_its_date(
    pack: RulePack, occurrence: dict[str, Any], eligible: bool
) -> None:
    """The text-only case, whose only primary is a ServiceRequest: without its encounter it is
    still the primary when its occurrence falls on the session's day (2025-09-30)."""
    body = load_fixture("encounter-discharge--text-only-evidence.json")
    request = body["prefetch"]["serviceRequests"]["entry"][0]["resource"]
    del request["encounter"]
    del request["occurrenceDateTime"]
    request.update(occurrence)
    assert ("add-on-suggested" in by_code(findings_for(body, pack))) is eligible


# -- "canal" with a bone name ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "identified"),
    [
        ("Removal of antibiotic cement rod from the canal of the left femur", True),
        ("Removal of vancomycin PMMA rod, femur canal", True),
        ("Removal of antibiotic beads, canal of femur", True),
        ("Removal of antibiotic cement nail from the canal of femur", True),
        ("Removal of antibiotic cement rod from the canal of the right distal tibia", True),
        ("Removal of gentamicin cement rod from the tibia canal", True),
        ("Removal of antibiotic cement rod from the humerus's canal", True),
        # Canals that are not the medullary canal of a long bone.
        ("Removal of antibiotic cement beads from the spinal canal", False),
        ("Removal of antibiotic beads near the ear canal", False),
        ("Removal of antibiotic cement beads from the carpal canal", False),
        ("Removal of antibiotic cement beads from the adductor canal of the left thigh", False),
        ("Removal of antibiotic beads from Guyon's canal", False),
        ("Removal of antibiotic cement beads from the nutrient canal of the tibia", False),
        ("Removal of antibiotic beads, Haversian canal of the femur", False),
        ("Removal of antibiotic cement beads from the canal, left femur", False),
    ],
)
def test_canal_with_a_bone_name_is_intramedullary_evidence(
    pack: RulePack, text: str, identified: bool
) -> None:
    """A removal stated only in text: "canal" counts next to a long bone's name, not elsewhere."""
    body = without_operative_note(load_fixture("encounter-discharge--text-only-evidence.json"))
    removal = body["prefetch"]["procedures"]["entry"][0]["resource"]
    assert "canal" in removal["code"]["text"]
    removal["code"]["text"] = text
    findings = by_code(findings_for(body, pack))
    assert ("add-on-suggested" in findings) is identified
    assert "wrong-tier" not in findings


# -- boundaries and branches the fixtures do not reach (each found by a surviving mutant) ------


def redated(name: str, day: str) -> dict[str, Any]:
    """A fixture with every date of its session moved to ``day`` (one operative day)."""
    body = load_fixture(name)
    session_day = next(
        value[:10]
        for entry in body["prefetch"]["procedures"]["entry"]
        if (value := entry["resource"].get("performedDateTime"))
    )
    return dict(json.loads(json.dumps(body).replace(session_day, day)))


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        ("2023-01-01", ["add-on-suggested"]),  # the CMS primary list's first day
        ("2022-12-31", []),
    ],
)
def test_findings_on_the_first_day_they_apply(
    pack: RulePack, day: str, expected: list[str]
) -> None:
    """A finding applies from its effective date inclusive, and not the day before."""
    body = redated("encounter-discharge--tibia-nonunion-removal.json", day)
    assert [finding.code for finding in findings_for(body, pack)] == expected


@pytest.mark.parametrize(("day", "expected"), [("2020-01-01", True), ("2019-12-31", False)])
def test_the_family_applies_from_its_first_day(pack: RulePack, day: str, expected: bool) -> None:
    """The 20700 family exists from 2020-01-01: no advice at all for a date before it."""
    body = redated("encounter-discharge--units-exceed-mue.json", day)
    assert ("units-exceed-mue" in by_code(findings_for(body, pack))) is expected


def test_orphan_with_another_claim_line_but_no_other_procedure(pack: RulePack) -> None:
    """An orphan 20703 beside another (unlisted) claim line is not "removal only": the claim
    reports more than the removal, so 20680 is not proposed."""
    body = load_fixture("encounter-discharge--orphan-removal-only.json")
    claim = body["prefetch"]["claims"]["entry"][0]["resource"]
    visit = copy.deepcopy(claim["item"][0]) | {"sequence": 9}
    visit["productOrService"] = {"coding": [{"system": CPT, "code": "99024"}]}
    visit.pop("modifier", None)
    claim["item"].append(visit)
    finding = by_code(findings_for(body, pack))["orphan-add-on"]
    assert finding.note == "other-procedures-medicare"
    assert finding.updated_claim is None


def test_no_documentation_task_without_a_patient(pack: RulePack) -> None:
    """Without the patient's id the Task cannot say whom it is for: no Task is proposed.

    (Both hooks require patientId, so the fact reader is called directly.)"""
    body = load_fixture("encounter-discharge--missing-documentation.json")
    resources = read_resources(body["prefetch"])
    facts = derive_facts(resources, pack, body["hook"], body["context"]["encounterId"], None)
    finding = by_code(evaluate_rules(facts, pack))["documentation-missing"]
    assert finding.new_resource is None


def test_documentation_order_in_the_pack_does_not_change_what_is_missing(pack: RulePack) -> None:
    """An element that does not apply (assistant-role without an assistant modifier) is skipped,
    wherever it stands in the pack."""
    facts = facts_for(load_fixture("encounter-discharge--missing-documentation.json"), pack)
    reordered = dataclasses.replace(
        pack,
        coding=pack.coding.model_copy(
            update={"documentation": list(reversed(pack.coding.documentation))}
        ),
    )
    assert sorted(missing_documentation(facts, reordered)) == sorted(
        missing_documentation(facts, pack)
    )


def test_reminder_counts_the_always_elements(pack: RulePack) -> None:
    """The order-sign reminder counts every documentation element that always applies, and not
    the assistant's role (no assistant modifier at order-sign); the Why page lists them."""
    body = load_fixture("order-sign--planned-removal-reminder.json")
    finding = by_code(findings_for(body, pack))["planned-removal-reminder"]
    always = [e for e in pack.coding.documentation if e.applies_when == "always"]
    assert len(always) == len(pack.coding.documentation) - 1 == 9
    assert finding.variables["documentation_count"] == "9"


@pytest.mark.parametrize(
    ("modifiers", "summary"),
    [
        (["62"], "Modifier 62 is not valid on +20703"),
        (["62", "50"], "Modifier 50, 62 is not valid on +20703"),
    ],
)
def test_invalid_modifier_names_exactly_the_modifiers_found(
    pack: RulePack, modifiers: list[str], summary: str
) -> None:
    """The card names the invalid modifiers on the line, and only those."""
    body = load_fixture("encounter-discharge--invalid-modifier.json")
    claim = body["prefetch"]["claims"]["entry"][0]["resource"]
    add_on = next(item for item in claim["item"] if cpt(item) == "20703")
    add_on["modifier"] = [{"coding": [{"system": CPT, "code": code}]} for code in modifiers]
    finding = by_code(findings_for(body, pack))["invalid-modifier"]
    assert finding.variables["modifiers"] == summary.removeprefix("Modifier ").split(" is")[0]


def test_assistant_modifier_on_the_add_on_line_only(pack: RulePack) -> None:
    """An assistant modifier on the 20703 line alone is found, and two are both named."""
    body = load_fixture("encounter-discharge--assistant-documentation.json")
    claim = body["prefetch"]["claims"]["entry"][0]["resource"]
    for item in claim["item"]:
        codes = {c["code"] for m in item.get("modifier", []) for c in m["coding"]}
        keep = {"RT", "80"} if cpt(item) == "20703" else {"RT"}
        item["modifier"] = [m for m in item["modifier"] if m["coding"][0]["code"] in keep]
        if cpt(item) == "20703" and "80" not in codes:
            item["modifier"].append({"coding": [{"system": CPT, "code": "80"}]})
            item["modifier"].append({"coding": [{"system": CPT, "code": "82"}]})
    finding = by_code(findings_for(body, pack))["assistant-documentation"]
    assert finding.variables["modifiers"] == "80, 82"


def test_prefabricated_device_without_a_claim(pack: RulePack) -> None:
    """With no draft claim, a prefabricated device removal still says not to add +20703."""
    body = load_fixture("encounter-discharge--prefabricated-device-not-billed.json")
    body["prefetch"]["claims"] = None
    finding = by_code(findings_for(body, pack))["prefabricated-device"]
    assert finding.note == "not-billed"


def test_diagnosis_pointers_are_capped_at_four(pack: RulePack) -> None:
    """A claim line takes at most four diagnosis pointers (the 837P/CMS-1500 limit)."""
    body = load_fixture("encounter-discharge--diagnosis-unsupported.json")
    claim = body["prefetch"]["claims"]["entry"][0]["resource"]
    supporting = next(
        d
        for d in claim["diagnosis"]
        if d["diagnosisCodeableConcept"]["coding"][0]["code"].startswith("T84")
    )
    start = max(d["sequence"] for d in claim["diagnosis"]) + 1
    claim["diagnosis"] += [copy.deepcopy(supporting) | {"sequence": start + i} for i in range(4)]
    finding = by_code(findings_for(body, pack))["diagnosis-unsupported"]
    (line,) = [item for item in claim_items(finding) if cpt(item) == "20703"]
    assert len(line["diagnosisSequence"]) == 4


def test_suggested_lines_carry_the_codes_display(pack: RulePack) -> None:
    """Every line a suggestion adds or recodes names its code with the pack's display."""
    coding = pack.coding
    displays = {
        coding.add_on.code: coding.add_on.display,
        coding.standalone_removal_code.code: coding.standalone_removal_code.display,
        coding.insertion_code: "Insertion of drug-delivery device(s), intramedullary",
    } | {sibling.code: sibling.display for sibling in coding.siblings.values()}
    checked = 0
    for name in ANSWERED:
        body = load_fixture(name)
        for finding in findings_for(body, pack):
            if finding.updated_claim is None:
                continue
            sent = sent_claims(body)[finding.updated_claim["id"]]["item"]
            codes_before = {item["sequence"]: cpt(item) for item in sent}
            for item in finding.updated_claim["item"]:
                if codes_before.get(item["sequence"]) == cpt(item):
                    continue
                (entry,) = item["productOrService"]["coding"]
                if entry["code"] in displays:
                    assert entry["display"] == displays[entry["code"]], (name, finding.code)
                    assert item["productOrService"]["text"] == entry["display"]
                    checked += 1
    assert checked >= 10


def test_a_prefabricated_metal_nail_removal_raises_nothing(pack: RulePack) -> None:
    """A commercially made implant that is not a drug-delivery device, removed and not billed as
    20703, is none of this service's business: no card at all."""
    body = load_fixture("encounter-discharge--metal-nail-removal.json")
    (device,) = [entry["resource"] for entry in body["prefetch"]["devices"]["entry"]]
    device["note"] = [{"text": "Commercially manufactured titanium nail, right femoral canal."}]
    assert findings_for(body, pack) == []


def test_assistant_documentation_with_a_pack_that_asks_no_assistant_role(pack: RulePack) -> None:
    """A pack without the assistant-role element still flags the modifier (role unknown)."""
    without_role = dataclasses.replace(
        pack,
        coding=pack.coding.model_copy(
            update={
                "documentation": [
                    element
                    for element in pack.coding.documentation
                    if element.key != "assistant-role"
                ]
            }
        ),
    )
    body = load_fixture("encounter-discharge--assistant-documentation.json")
    finding = by_code(findings_for(body, without_role))["assistant-documentation"]
    assert finding.note == "role-missing"


# -- one session: add-on and primary matched by date, provider and claim (issue 13, part 3) ----

OTHER_DATE = "encounter-discharge--primary-other-date.json"
OTHER_SURGEON = "encounter-discharge--add-on-other-surgeon-claim.json"


def claims_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        entry["resource"]
        for entry in body["prefetch"]["claims"]["entry"]
        if entry["resource"]["resourceType"] == "Claim"
    ]


def test_primary_on_another_date_of_service_is_an_orphan(pack: RulePack) -> None:
    """A 20703 line whose only listed primary is dated another day is an orphan; dated with its
    primary it is not."""
    body = load_fixture(OTHER_DATE)
    finding = by_code(findings_for(body, pack))["orphan-add-on"]
    assert finding.note == "primary-other-date"
    assert "dated 2025-11-18 and the 20703 line 2025-11-19" in finding.variables["note"]
    for item in claim_of(body)["item"]:
        item["servicedDate"] = "2025-11-18"
    assert findings_for(body, pack) == []


def test_an_undated_line_is_not_held_against_its_primary(pack: RulePack) -> None:
    """A 20703 line without a date of service is not called an orphan for its date."""
    body = load_fixture(OTHER_DATE)
    for item in claim_of(body)["item"]:
        if cpt(item) == "20703":
            del item["servicedDate"]
    assert "orphan-add-on" not in by_code(findings_for(body, pack))


def test_no_second_20703_for_a_removal_billed_on_another_claim(pack: RulePack) -> None:
    """The claim that reports 20703 is the session's claim, and no 20703 is proposed for the
    primary's claim; without the 20703 claim, +20703 is suggested on the primary's claim."""
    body = load_fixture(OTHER_SURGEON)
    facts = facts_for(body, pack)
    assert facts.claim is not None
    assert [line.code for line in facts.claim.lines] == ["20703"]
    assert [line.code for line in facts.other_claims[0].lines] == ["27470", "99024"]
    assert "add-on-suggested" not in by_code(evaluate_rules(facts, pack))
    bundle = body["prefetch"]["claims"]
    bundle["entry"] = [
        entry
        for entry in bundle["entry"]
        if not any(cpt(item) == "20703" for item in entry["resource"]["item"])
    ]
    bundle["total"] = len(bundle["entry"])
    finding = by_code(findings_for(body, pack))["add-on-suggested"]
    assert finding.note == "claim-updated"


@pytest.mark.parametrize(
    ("payer", "note"),
    [
        ("Blue Cross and Blue Shield of North Carolina", "other-provider-group-tin"),
        ("UnitedHealthcare", "other-provider"),
        ("Centers for Medicare & Medicaid Services", "other-provider"),
    ],
)
def test_primary_on_another_surgeons_claim_depends_on_the_payer(
    pack: RulePack, payer: str, note: str
) -> None:
    """The primary on another provider's claim: a warning, except where the payer accepts a
    same-specialty group under one TIN; with the same provider it is the other-claim note."""
    body = load_fixture(OTHER_SURGEON)
    coverage = body["prefetch"]["coverage"]["entry"][0]["resource"]
    coverage["payor"] = [{"display": payer}]
    finding = by_code(findings_for(body, pack))["provider-mismatch"]
    assert finding.note == note
    assert finding.updated_claim is None
    primary_claim = next(c for c in claims_of(body) if cpt(c["item"][0]) == "27470")
    adding = next(c for c in claims_of(body) if cpt(c["item"][0]) == "20703")
    primary_claim["careTeam"] = copy.deepcopy(adding["careTeam"])
    finding = by_code(findings_for(body, pack))["provider-mismatch"]
    assert finding.note in ("other-claim", "other-claim-required")


def test_care_team_is_compared_with_the_primary_of_the_same_date(pack: RulePack) -> None:
    """Two dates, each with its primary: the care team of a 20703 line is compared with the
    primary of its own date, not with the first primary of the claim."""
    body = load_fixture("encounter-discharge--units-two-dates.json")
    claim = claim_of(body)
    claim["careTeam"].append(copy.deepcopy(claim["careTeam"][0]) | {"sequence": 2})
    dates = sorted({item["servicedDate"] for item in claim["item"]})
    for item in claim["item"]:
        if item["servicedDate"] == dates[1]:
            item["careTeamSequence"] = [2]
    assert "provider-mismatch" not in by_code(findings_for(body, pack))
    for item in claim["item"]:
        if item["servicedDate"] == dates[1] and cpt(item) != "20703":
            item["careTeamSequence"] = [1]
    assert by_code(findings_for(body, pack))["provider-mismatch"].note == "care-team"


# -- laterality from the documented site --------------------------------------------------------


def removal_procedure(body: dict[str, Any]) -> dict[str, Any]:
    return next(
        entry["resource"]
        for entry in body["prefetch"]["procedures"]["entry"]
        if "Removal" in entry["resource"]["code"].get("text", "")
    )


def new_line_sides(finding: Finding) -> set[str]:
    line = claim_items(finding)[-1]
    return {c["code"] for m in line.get("modifier", []) for c in m["coding"]}


def without_sides_in_text(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with no side named in the removal's texts or an operative note, so that only its
    bodySite can document a side (the sentences stating the removal count when it names none)."""
    removal = removal_procedure(body)
    removal["code"]["text"] = re.sub(r"(?i)\b(left|right) ", "", removal["code"].get("text", ""))
    for note in removal.get("note", []):
        note["text"] = re.sub(r"(?i)\b(left|right) ", "", note["text"])
    body["prefetch"]["documents"] = {"resourceType": "Bundle", "type": "searchset", "total": 0}
    return body


@pytest.mark.parametrize(
    ("site", "sides", "conflict"),
    [
        ("Left tibia, medullary canal", {"LT"}, False),
        ("Right tibia, medullary canal", {"RT"}, True),
        ("Tibia, medullary canal", set(), False),
        ("Left and right tibiae", set(), False),
    ],
)
def test_suggested_line_takes_the_side_of_the_documented_site(
    pack: RulePack, site: str, sides: set[str], conflict: bool
) -> None:
    """The new 20703 line takes RT/LT from the removal's bodySite, none when it names no side
    (or both); a primary line on another side than the site is reported."""
    body = without_sides_in_text(load_fixture("encounter-discharge--tibia-nonunion-removal.json"))
    removal_procedure(body)["bodySite"] = [{"text": site}]
    findings = by_code(findings_for(body, pack))
    assert new_line_sides(findings["add-on-suggested"]) == sides
    assert ("laterality-conflict" in findings) is conflict
    if sides:
        assert f"modifier {min(sides)}" in findings["add-on-suggested"].variables["note"]
    else:
        assert "no RT/LT modifier" in findings["add-on-suggested"].variables["note"]


def test_side_is_read_from_the_body_site_coding_display(pack: RulePack) -> None:
    """A bodySite coded with a display that names the side documents it."""
    body = load_fixture("encounter-discharge--tibia-nonunion-removal.json")
    removal_procedure(body)["bodySite"] = [
        {"coding": [{"system": "http://snomed.info/sct", "code": "12611008", "display": "Right"}]}
    ]
    findings = by_code(findings_for(body, pack))
    assert new_line_sides(findings["add-on-suggested"]) == {"RT"}
    assert findings["laterality-conflict"].note == "primary-line"


@pytest.mark.parametrize(
    ("modifiers", "fires", "after"),
    [
        (["LT"], True, ["RT"]),
        (["LT", "51"], True, ["51", "RT"]),
        (["RT"], False, None),
        ([], False, None),
        (["RT", "LT"], True, ["RT"]),
    ],
)
def test_laterality_conflict_on_the_add_on_line(
    pack: RulePack, modifiers: list[str], fires: bool, after: list[str] | None
) -> None:
    """A 20703 line with a side the record does not document is reported, and the suggestion
    keeps its other modifiers and gives it the documented side."""
    body = load_fixture("encounter-discharge--laterality-conflict.json")
    with_laterality(body, "20703", modifiers)
    findings = by_code(findings_for(body, pack))
    assert ("laterality-conflict" in findings) is fires
    if after is not None:
        finding = findings["laterality-conflict"]
        assert finding.note == "add-on"
        (line,) = [item for item in claim_items(finding) if cpt(item) == "20703"]
        assert sorted(c["code"] for m in line["modifier"] for c in m["coding"]) == after


def test_no_laterality_conflict_without_a_documented_side(pack: RulePack) -> None:
    """When the removal's site names no side, the claim's side cannot conflict with it."""
    body = without_sides_in_text(load_fixture("encounter-discharge--laterality-conflict.json"))
    removal_procedure(body)["bodySite"] = [{"text": "Tibia, medullary canal"}]
    assert "laterality-conflict" not in by_code(findings_for(body, pack))


def test_the_sentence_stating_the_removal_documents_a_side_the_site_does_not_name(
    pack: RulePack,
) -> None:
    """With no side in the bodySite, the removal's own text ("… left tibia") gives the side."""
    body = load_fixture("encounter-discharge--tibia-nonunion-removal.json")
    removal_procedure(body)["bodySite"] = [{"text": "Tibia, medullary canal"}]
    findings = by_code(findings_for(body, pack))
    assert new_line_sides(findings["add-on-suggested"]) == {"LT"}


def test_two_documented_sides_give_a_conflict_without_a_fix(pack: RulePack) -> None:
    """Removals documented on both sides: a 20703 line naming either side agrees with the
    record, so nothing is reported."""
    body = load_fixture("encounter-discharge--laterality-conflict.json")
    removal_procedure(body)["bodySite"] = [{"text": "Right and left tibia"}]
    assert "laterality-conflict" not in by_code(findings_for(body, pack))


# -- code effective dates ---------------------------------------------------------------------


@pytest.mark.parametrize(("day", "fires"), [("2019-12-31", True), ("2020-01-01", False)])
def test_a_20703_before_the_code_existed_is_a_warning(
    pack: RulePack, day: str, fires: bool
) -> None:
    """A 20703 line dated before 2020-01-01 raises code-not-effective (the only advice then)."""
    body = redated("encounter-discharge--already-billed.json", day)
    findings = by_code(findings_for(body, pack))
    assert ("code-not-effective" in findings) is fires
    if fires:
        assert list(findings) == ["code-not-effective"]
        assert findings["code-not-effective"].variables["service_date"] == day
        assert pack.findings.findings["code-not-effective"].indicator == "warning"


def test_code_not_effective_reads_the_20703_line_not_the_session(pack: RulePack) -> None:
    """Only a 20703 line dated before the family counts: a 2019 primary line alone does not."""
    body = load_fixture("encounter-discharge--before-2020.json")
    for item in claim_of(body)["item"]:
        if cpt(item) == "20703":
            item["productOrService"]["coding"][0]["code"] = "27722"
    assert "code-not-effective" not in by_code(findings_for(body, pack))


# -- 20670/20680 for the same device ---------------------------------------------------------

SAME_DEVICE = "encounter-discharge--hardware-removal-same-device.json"
OTHER_SITE = "encounter-discharge--hardware-removal-other-site.json"


def recode(body: dict[str, Any], old: str, new: str) -> None:
    """Every claim line and Procedure coded ``old`` coded ``new`` instead."""
    for item in claim_of(body)["item"]:
        if cpt(item) == old:
            item["productOrService"]["coding"][0]["code"] = new
    for entry in body["prefetch"]["procedures"]["entry"]:
        for coding in entry["resource"]["code"].get("coding", []):
            if coding.get("code") == old:
                coding["code"] = new


def test_20670_for_the_same_device_is_duplicate_reporting(pack: RulePack) -> None:
    """20670 (superficial) for the drug device itself is judged like 20680."""
    body = load_fixture(SAME_DEVICE)
    recode(body, "20680", "20670")
    finding = by_code(findings_for(body, pack))["duplicate-hardware-removal"]
    assert finding.note == "same-device"
    assert finding.variables["hardware_code"] == "20670"
    assert [cpt(item) for item in claim_items(finding)] == ["27722", "20703"]


def test_hardware_removal_of_the_drug_device_by_its_text(pack: RulePack) -> None:
    """Without a focalDevice, a 20680 whose text names the drug device is the same device."""
    body = load_fixture(SAME_DEVICE)
    hardware = procedure_coded(body, "20680")
    del hardware["focalDevice"]
    assert by_code(findings_for(body, pack))["duplicate-hardware-removal"].note == "same-device"
    hardware["note"] = [{"text": "Guide wire removed from the left tibia."}]
    hardware["code"]["text"] = "Removal of implant, deep: guide wire, left tibia"
    assert "duplicate-hardware-removal" not in by_code(findings_for(body, pack))


@pytest.mark.parametrize(
    ("site", "fires"),
    [
        ("Left distal femur", False),
        ("Right tibia", False),
        ("Left tibia, proximal", True),
        ("Distal femur", False),
        ("Left side", True),
    ],
)
def test_other_hardware_at_another_documented_site(pack: RulePack, site: str, fires: bool) -> None:
    """A 20680 whose Procedure documents another bone or side than the removal is other
    hardware; at the same site (or a site that cannot be told apart) it is a duplicate."""
    body = load_fixture(OTHER_SITE)
    procedure_coded(body, "20680")["bodySite"] = [{"text": site}]
    assert ("duplicate-hardware-removal" in by_code(findings_for(body, pack))) is fires


def test_hardware_removal_on_another_date_is_not_compared(pack: RulePack) -> None:
    """A same-device 20680 on a date without 20703 is not duplicate reporting of it."""
    body = load_fixture(SAME_DEVICE)
    for item in claim_of(body)["item"]:
        if cpt(item) == "20680":
            item["servicedDate"] = "2026-10-09"
    assert "duplicate-hardware-removal" not in by_code(findings_for(body, pack))


# -- order-sign with what the EHR sends (issue 13, part 5) ------------------------------------

NO_ENCOUNTER = "order-sign--draft-claim-no-encounter.json"
CLAIM_OTHER_DAY = "order-sign--draft-claim-other-day.json"


def draft_orders(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [entry["resource"] for entry in body["context"]["draftOrders"]["entry"]]


def without_draft_claim(body: dict[str, Any]) -> None:
    bundle = body["context"]["draftOrders"]
    bundle["entry"] = [e for e in bundle["entry"] if e["resource"]["resourceType"] != "Claim"]


def test_draft_orders_procedures_and_claim_are_the_sessions(pack: RulePack) -> None:
    """Without encounterId the session is the draftOrders Claim's date: its Procedures are the
    session's, the Claim is its claim, and the suggestion updates that Claim."""
    body = load_fixture(NO_ENCOUNTER)
    assert "encounterId" not in body["context"]
    facts = facts_for(body, pack, today="2030-01-01")
    assert facts.claim is not None
    assert facts.claim.own
    assert facts.session_date == "2026-02-10"
    finding = by_code(evaluate_rules(facts, pack))["add-on-suggested"]
    assert finding.updated_claim is not None
    assert finding.updated_claim["id"] == next(
        r["id"] for r in draft_orders(body) if r["resourceType"] == "Claim"
    )


def test_without_a_claim_the_session_is_the_signing_day(pack: RulePack) -> None:
    """No Claim in draftOrders: the session is the day the hook fires; a removal in prefetch
    counts on that day only."""
    body = load_fixture(CLAIM_OTHER_DAY)
    without_draft_claim(body)
    on_removal_day = by_code(findings_for(body, pack, today="2026-02-18"))
    assert on_removal_day["add-on-suggested"].note == "no-claim"
    assert findings_for(body, pack, today="2026-03-04") == []


def test_draft_claim_other_day_fires_once_the_removal_is_on_its_day(pack: RulePack) -> None:
    """The near miss differs from a firing case only by the removal's date."""
    body = load_fixture(CLAIM_OTHER_DAY)
    assert findings_for(body, pack) == []
    (removal,) = [entry["resource"] for entry in body["prefetch"]["procedures"]["entry"]]
    removal["performedDateTime"] = "2026-03-04" + removal["performedDateTime"][10:]
    assert "add-on-suggested" in by_code(findings_for(body, pack))


def test_claim_checks_run_at_order_sign_on_the_draft_claim(pack: RulePack) -> None:
    """The claim checks run at order-sign as at discharge: a 20703 already on the draftOrders
    Claim with modifier 51 is caught, and no second 20703 is proposed."""
    body = load_fixture(NO_ENCOUNTER)
    claim = next(r for r in draft_orders(body) if r["resourceType"] == "Claim")
    add_on = copy.deepcopy(claim["item"][0]) | {"sequence": 2}
    add_on["productOrService"] = {"coding": [{"system": CPT, "code": "20703"}]}
    add_on["modifier"] = [{"coding": [{"system": CPT, "code": "51"}]}]
    claim["item"].append(add_on)
    findings = by_code(findings_for(body, pack))
    assert "modifier-51-on-add-on" in findings
    assert "add-on-suggested" not in findings


def test_a_draft_order_procedure_of_another_encounter_is_still_the_sessions(
    pack: RulePack,
) -> None:
    """With an encounterId, a Procedure sent in draftOrders is the session's whatever encounter
    it names; in prefetch only, it would not be."""
    body = load_fixture(NO_ENCOUNTER)
    body["context"]["encounterId"] = "enc-signing-visit"
    assert "add-on-suggested" in by_code(findings_for(body, pack))
    moved = body["context"]["draftOrders"]["entry"]
    body["context"]["draftOrders"]["entry"] = [
        e for e in moved if e["resource"]["resourceType"] == "ServiceRequest"
    ]
    procedures = body["prefetch"]["procedures"]
    procedures["entry"] = [
        {"fullUrl": f"urn:uuid:{e['resource']['id']}", "resource": e["resource"]}
        for e in moved
        if e["resource"]["resourceType"] == "Procedure"
    ]
    procedures["total"] = len(procedures["entry"])
    assert findings_for(body, pack) == []


def test_hardware_removal_of_the_drug_device_by_its_focal_device(pack: RulePack) -> None:
    """A 20680 whose text names no drug device is the same device when its focalDevice is the
    removed drug rod; the card names the line's code."""
    body = load_fixture(SAME_DEVICE)
    hardware = procedure_coded(body, "20680")
    hardware["note"] = [{"text": "Guide wire removed from the left tibia."}]
    hardware["code"]["text"] = "Removal of implant, deep: guide wire, left tibia"
    finding = by_code(findings_for(body, pack))["duplicate-hardware-removal"]
    assert finding.note == "same-device"
    assert finding.variables["hardware_code"] == "20680"


def test_laterality_conflict_names_the_line_and_the_sides(pack: RulePack) -> None:
    """The card says which line carries which side, and which side the record documents."""
    finding = by_code(
        findings_for(load_fixture("encounter-discharge--laterality-conflict.json"), pack)
    )["laterality-conflict"]
    assert (finding.variables["line_code"], finding.variables["claim_side"]) == ("20703", "LT")
    assert finding.variables["documented_side"] == "RT"
