"""Payer profiles: each payer is recognised from its Coverage and its note reaches the cards."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from helpers.corpus import load_fixture
from helpers.engine import facts_for

from cds_service.engine.hook_call import handle_hook_call
from cds_service.engine.rule_pack import load_pack
from cds_service.rulepack.explanation import explanation
from cds_service.rulepack.loading import default_cards_dir
from cds_service.rulepack.models import RulePack

STANDARD = "encounter-discharge--tibia-nonunion-removal.json"


def with_payer(display: str | None, type_display: str = "Commercial") -> dict[str, Any]:
    """The standard request with its Coverage's payer (and plan type) replaced."""
    body = copy.deepcopy(load_fixture(STANDARD))
    coverage = body["prefetch"]["coverage"]["entry"][0]["resource"]
    coverage["type"] = {"text": type_display}
    coverage.pop("class", None)
    coverage["payor"] = [
        {"reference": "Organization/org-x"} | ({"display": display} if display else {})
    ]
    return body


@pytest.mark.parametrize(
    ("payer", "profile"),
    [
        ("Centers for Medicare & Medicaid Services", "medicare"),
        ("UnitedHealthcare Insurance Company", "unitedhealthcare"),
        ("Blue Cross and Blue Shield of North Carolina", "bcbs-nc"),
        ("Blue Cross Blue Shield of Illinois", "bcbs-other"),
        ("Anthem Blue Cross", "bcbs-other"),
        ("Aetna Life Insurance Company", "aetna"),
        ("Cigna Health and Life", "cigna"),
        ("Acme Mutual Health", "general"),
        (None, "general"),
    ],
)
def test_payer_is_recognised_and_its_note_is_on_the_card(
    pack: RulePack, payer: str | None, profile: str
) -> None:
    """Each payer maps to its profile; the card's Why link opens that profile's cited notes."""
    body = with_payer(payer)
    assert facts_for(body, pack).payer == profile
    result = handle_hook_call(pack, "cpt20703-encounter-discharge", body)
    (card,) = result.response["cards"]
    assert card["links"][0]["url"].endswith(f"/why/add-on-suggested?payer={profile}")
    page = explanation(pack, "add-on-suggested", profile)["payer"]
    expected = pack.payers.profile(profile)
    assert page["label"] == expected.label
    assert [note["text"] for note in page["notes"]] == [note.text for note in expected.notes]
    assert [note["tier"] for note in page["notes"]] == [note.tier for note in expected.notes]


def test_resolved_organization_name_identifies_the_payer(pack: RulePack) -> None:
    """Without a payor display, the referenced Organization's name is used."""
    body = with_payer(None)
    body["prefetch"]["coverage"]["entry"].append(
        {"resource": {"resourceType": "Organization", "id": "org-x", "name": "Cigna"}}
    )
    assert facts_for(body, pack).payer == "cigna"


def test_no_coverage_is_the_general_profile(pack: RulePack) -> None:
    """No Coverage at all: the general profile, which says the payer is unknown."""
    body = copy.deepcopy(load_fixture(STANDARD))
    body["prefetch"]["coverage"] = None
    assert facts_for(body, pack).payer == "general"
    assert explanation(pack, "add-on-suggested", "general")["payer"]["label"] == (
        "Payer not identified"
    )


def test_every_profile_cites_known_sources(pack: RulePack) -> None:
    """Every payer note names sources of the pack, a read date and a tier."""
    for profile in pack.payers.profiles:
        for note in profile.notes:
            assert note.sources
            assert all(key in pack.sources for key in note.sources)
            assert note.read


def with_coverage(
    payor: str | None,
    type_display: str,
    classes: list[tuple[str, str]] = (),  # type: ignore[assignment]
    fixture: str = STANDARD,
) -> dict[str, Any]:
    """``fixture`` with its Coverage's payor, type text and classes (type code, name) replaced."""
    body = copy.deepcopy(load_fixture(fixture))
    coverage = body["prefetch"]["coverage"]["entry"][0]["resource"]
    coverage["type"] = {"text": type_display}
    coverage["payor"] = [
        {"reference": "Organization/org-x"} | ({"display": payor} if payor else {})
    ]
    coverage.pop("class", None)
    if classes:
        coverage["class"] = [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/coverage-class",
                            "code": kind,
                        }
                    ]
                },
                "value": name.upper().replace(" ", "-"),
                "name": name,
            }
            for kind, name in classes
        ]
    return body


@pytest.mark.parametrize(
    ("payor", "type_display", "classes", "profile"),
    [
        # The payer organization decides before the plan's type and class.
        ("UnitedHealthcare", "Medicare Advantage", [("plan", "AARP Medicare Advantage Choice")], "unitedhealthcare"),
        ("Blue Cross and Blue Shield of North Carolina", "Medicare Advantage", [("plan", "Blue Medicare HMO")], "bcbs-nc"),
        ("Cigna Healthcare", "Medicare (Managed Care)", [("plan", "Aetna-compatible PPO")], "cigna"),
        # No organization matches: the plan names the payer.
        ("Harbor Point Employees Benefit Trust", "Commercial", [("group", "Harbor Point"), ("plan", "Aetna Choice POS II")], "aetna"),
        (None, "Medicare Part B", [], "medicare"),
        # Nothing names a profile, or only a Medicare Advantage plan of an unknown organization.
        ("Harbor Point Employees Benefit Trust", "Commercial", [("group", "Harbor Point Employees")], "general"),
        ("Acme Health Plan", "Medicare Advantage", [("plan", "Acme Medicare HMO")], "general"),
        ("Acme Health Plan", "Medicare (Managed Care)", [], "general"),
    ],
)  # fmt: skip
def test_payer_organization_before_plan(
    pack: RulePack,
    payor: str | None,
    type_display: str,
    classes: list[tuple[str, str]],
    profile: str,
) -> None:
    """Coverage.payor (organization) first; Coverage.type and class text only as a fallback."""
    body = with_coverage(payor, type_display, classes)
    assert facts_for(body, pack).payer == profile
    result = handle_hook_call(pack, "cpt20703-encounter-discharge", body)
    (card,) = result.response["cards"]
    assert card["links"][0]["url"].endswith(f"?payer={profile}")


def test_organization_resource_name_and_alias_identify_the_payer(pack: RulePack) -> None:
    """A referenced Organization's name or alias counts as the organization."""
    body = with_coverage(None, "Medicare Advantage")
    entries = body["prefetch"]["coverage"]["entry"]
    entries.append(
        {
            "resource": {
                "resourceType": "Organization",
                "id": "org-x",
                "name": "Acme Holdings",
                "alias": ["UnitedHealthcare of the Midwest"],
            }
        }
    )
    assert facts_for(body, pack).payer == "unitedhealthcare"


def pack_with_identifier_matcher(tmp_path: Path) -> RulePack:
    """A copy of the pack whose Cigna profile also matches an example identifier."""
    for source in default_cards_dir().glob("*.*"):
        if source.is_file():
            (tmp_path / source.name).write_text(source.read_text())
    payers = tmp_path / "payers.yaml"
    text = payers.read_text()
    old = "    names: ['\\bcigna\\b']\n"
    assert old in text
    matcher = (
        "    identifiers: [{system: 'https://payers\\.example\\.org/id', value: 'CIG-\\d+'}]\n"
    )
    payers.write_text(text.replace(old, old + matcher))
    return load_pack(tmp_path)


@pytest.mark.parametrize(
    ("where", "system", "value", "profile"),
    [
        ("payor", "https://payers.example.org/id", "CIG-0042", "cigna"),
        ("organization", "https://payers.example.org/id", "CIG-7", "cigna"),
        ("payor", "https://payers.example.org/id", "CIG-0042-X", "general"),  # fully matched
        ("payor", "https://other.example.org/id", "CIG-0042", "general"),
    ],
)
def test_identifier_matchers_are_data(
    tmp_path: Path, where: str, system: str, value: str, profile: str
) -> None:
    """payers.yaml `identifiers` match the payor's or the Organization's identifier."""
    pack = pack_with_identifier_matcher(tmp_path)
    body = with_coverage(None, "Commercial")
    identifier = {"system": system, "value": value}
    if where == "payor":
        body["prefetch"]["coverage"]["entry"][0]["resource"]["payor"][0]["identifier"] = identifier
    else:
        body["prefetch"]["coverage"]["entry"].append(
            {
                "resource": {
                    "resourceType": "Organization",
                    "id": "org-x",
                    "identifier": [identifier],
                }
            }
        )
    assert facts_for(body, pack).payer == profile


# -- provider-mismatch: the indicator follows what the payer's checked policy requires ----------

OTHER_CLAIM = "encounter-discharge--primary-on-other-claim.json"
CARE_TEAM = "encounter-discharge--provider-mismatch.json"


@pytest.mark.parametrize(
    ("fixture", "payor", "note", "indicator"),
    [
        # Only NGS (Medicare) requires the primary on the same claim.
        (
            OTHER_CLAIM,
            "Centers for Medicare & Medicaid Services",
            "other-claim-required",
            "warning",
        ),
        (OTHER_CLAIM, "Blue Cross and Blue Shield of North Carolina", "other-claim", "info"),
        (OTHER_CLAIM, "UnitedHealthcare", "other-claim", "info"),
        (OTHER_CLAIM, "Aetna", "other-claim", "info"),
        # UnitedHealthcare requires the same individual; Blue Cross NC accepts a same-specialty
        # group under one TIN.
        (CARE_TEAM, "UnitedHealthcare", "care-team", "warning"),
        (CARE_TEAM, "Blue Cross and Blue Shield of North Carolina", "care-team-group-tin", "info"),
        (CARE_TEAM, "Centers for Medicare & Medicaid Services", "care-team", "warning"),
    ],
)
def test_provider_mismatch_follows_the_payer_policy(
    pack: RulePack, fixture: str, payor: str, note: str, indicator: str
) -> None:
    """Same claim is a warning only under Medicare; a group under one TIN is info for BCNC."""
    body = with_coverage(payor, "Commercial", fixture=fixture)
    template = pack.findings.findings["provider-mismatch"]
    result = handle_hook_call(pack, "cpt20703-encounter-discharge", body)
    (card,) = [
        card
        for card in result.response["cards"]
        if card["extension"]["cpt20703.finding"] == "provider-mismatch"
    ]
    assert card["indicator"] == indicator
    detail = " ".join(card["detail"].split())
    assert template.notes[note].split("{", 1)[0] in detail
    # Only NGS is said to require the same claim; Blue Cross NC's policy names the date and TIN.
    page = explanation(pack, "provider-mismatch")
    why = " ".join(page["why"].split())
    assert "NGS (a Medicare contractor): add-on codes must be reported on the same claim" in why
    assert "names the same date of service and TIN, not the same claim" in why
    assert any("Smart Edit ADODN" in item for item in page["unconfirmed"])


@pytest.mark.parametrize(
    ("payor", "indicator", "wording"),
    [
        (
            "Centers for Medicare & Medicaid Services",
            "info",
            "For Medicare the contractor may accept an unlisted primary",
        ),
        (
            "UnitedHealthcare",
            "warning",
            "The payer (UnitedHealthcare) may deny 20703 with an unlisted",
        ),
        (
            "Cigna Healthcare",
            "warning",
            "The payer (Cigna) may deny 20703 with an unlisted primary",
        ),
        (None, "warning", "The payer (Payer not identified) may deny 20703 with an unlisted"),
    ],
)
def test_orphan_add_on_with_unlisted_primary_is_payer_specific(
    pack: RulePack, payor: str | None, indicator: str, wording: str
) -> None:
    """20703 with only an unlisted primary: info for Medicare (contractor discretion), a warning
    where a commercial payer following the CPT list may deny."""
    body = with_coverage(
        payor, "Commercial", fixture="encounter-discharge--orphan-with-debridement.json"
    )
    result = handle_hook_call(pack, "cpt20703-encounter-discharge", body)
    (card,) = result.response["cards"]
    assert card["extension"]["cpt20703.finding"] == "orphan-add-on"
    assert card["indicator"] == indicator
    assert wording in " ".join(card["detail"].split())
    assert "suggestions" not in card


def test_medicare_advantage_plan_gets_its_organizations_note(pack: RulePack) -> None:
    """The Blue Cross NC Medicare Advantage fixture is bcbs-nc, with the commercial note."""
    body = load_fixture("encounter-discharge--medicare-advantage-bcbs-nc.json")
    result = handle_hook_call(pack, "cpt20703-encounter-discharge", body)
    (card,) = result.response["cards"]
    assert card["links"][0]["url"].endswith("?payer=bcbs-nc")
    assert "The payer (Blue Cross NC) may follow the CPT list strictly" in card["detail"]
