"""Payer profiles: each payer is recognised from its Coverage and its note reaches the cards."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from conftest import load_fixture
from test_rules import facts_for

from cds_service.card_builder import payer_section
from cds_service.rule_pack import RulePack
from cds_service.service import handle_hook_call

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
    """Each payer maps to its profile; the card detail carries that profile's cited note."""
    body = with_payer(payer)
    assert facts_for(body, pack).payer == profile
    result = handle_hook_call(pack, "cpt20703-encounter-discharge", body)
    (card,) = result.response["cards"]
    expected = pack.payers.profile(profile)
    assert f"**Payer: {expected.label}**" in card["detail"]
    assert expected.notes[0].text[:60] in card["detail"]
    assert f"tier {expected.notes[0].tier}" in card["detail"]


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
    assert "Payer not identified" in payer_section(pack, "general")


def test_every_profile_cites_known_sources(pack: RulePack) -> None:
    """Every payer note names sources of the pack, a read date and a tier."""
    for profile in pack.payers.profiles:
        for note in profile.notes:
            assert note.sources
            assert all(key in pack.sources for key in note.sources)
            assert note.read
