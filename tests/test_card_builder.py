"""Cards from findings: template text, citations, extensions and suggestion wiring."""

from __future__ import annotations

from collections.abc import Callable
from itertools import count

from cds_service.card_builder import build_cards, sources_section
from cds_service.rule_pack import RulePack
from cds_service.rules import Finding


def numbered() -> Callable[[], str]:
    numbers = count(1)
    return lambda: f"00000000-0000-4000-8000-{next(numbers):012d}"


def test_documentation_card(pack: RulePack) -> None:
    """A documentation finding becomes a warning card with its keys in the extension."""
    finding = Finding(
        "documentation-missing",
        pack.template_variables()
        | {"missing_count": "2", "missing_checklist": "- [ ] `a`\n- [ ] `b`"},
        missing_documentation=("a", "b"),
    )
    (card,) = build_cards([finding], pack, numbered())
    assert card["uuid"] == "00000000-0000-4000-8000-000000000001"
    assert card["indicator"] == "warning"
    assert card["summary"] == "+20703 documentation incomplete: 2 element(s) missing"
    assert card["extension"] == {
        "cpt20703.finding": "documentation-missing",
        "cpt20703.missing-documentation": ["a", "b"],
    }
    assert "suggestions" not in card
    assert "selectionBehavior" not in card
    assert {reason["system"] for reason in card["overrideReasons"]} == {
        pack.findings.override_reason_system
    }
    template = pack.findings.findings["documentation-missing"]
    assert card["detail"].endswith(sources_section(pack, template.source.sources))


def test_sources_section_cites_tier_and_caveat(pack: RulePack) -> None:
    """Each cited source shows its label, link, tier, and its caveat when it has one."""
    section = sources_section(pack, ["S10", "S20"])
    assert "[CMS NCCI add-on code edit file AOC_V2026Q3-F-MCR](https://www.cms.gov/" in section
    assert "(tier 1; Read from a public parsed copy" in section
    assert "(tier 3)" in section


def test_update_suggestion_points_at_the_claim(pack: RulePack) -> None:
    """A finding with an updated Claim gets one recommended update suggestion."""
    claim = {"resourceType": "Claim", "id": "c9", "status": "draft"}
    variables = pack.template_variables() | {
        "primary_code": "27722",
        "primary_descriptor": "Repair/graft of tibia",
        "evidence": "- x",
        "note": "n",
        "line_sequence": "2",
    }
    (card,) = build_cards(
        [Finding("add-on-suggested", variables, updated_claim=claim)],
        pack,
        numbered(),
    )
    (suggestion,) = card["suggestions"]
    assert suggestion["uuid"] == "00000000-0000-4000-8000-000000000001"
    assert card["uuid"] == "00000000-0000-4000-8000-000000000002"
    assert suggestion["isRecommended"] is True
    assert suggestion["actions"] == [
        {
            "type": "update",
            "description": "Add a CPT 20703 line (1 unit) to the draft claim, linked like the 27722 line.",
            "resource": claim,
            "resourceId": "Claim/c9",
        }
    ]
    assert card["selectionBehavior"] == "at-most-one"


def orphan_finding(pack: RulePack, note: str) -> Finding:
    variables = pack.template_variables() | {
        "note": "n",
        "primary_code": "27722",
        "primary_descriptor": "Repair/graft of tibia",
        "payer_label": "Medicare",
    }
    return Finding("orphan-add-on", variables, note=note)


def test_detail_states_what_is_unconfirmed(pack: RulePack) -> None:
    """Each unconfirmed item of the finding is listed under an UNCONFIRMED heading, after the
    template text and before the payer and sources sections."""
    template = pack.findings.findings["orphan-add-on"]
    assert template.unconfirmed
    (card,) = build_cards(
        [orphan_finding(pack, "primary-not-on-claim")], pack, numbered(), payer="medicare"
    )
    detail = card["detail"]
    heading = detail.index("**UNCONFIRMED**")
    for item in template.unconfirmed:
        assert f"\n- {item}" in detail
        assert heading < detail.index(item) < detail.index("**Payer: Medicare**")
    assert detail.index("**Payer: Medicare**") < detail.index("**Sources**")


def test_note_unconfirmed_items_follow_the_note(pack: RulePack) -> None:
    """A note's own unconfirmed items appear only when the finding is raised with that note."""
    template = pack.findings.findings["orphan-add-on"]
    (twenty_680,) = template.note_unconfirmed["removal-only"]
    commercial = template.note_unconfirmed["other-procedures-commercial"]
    cards = build_cards(
        [
            orphan_finding(pack, "removal-only"),
            orphan_finding(pack, "primary-not-on-claim"),
            orphan_finding(pack, "other-procedures-commercial"),
        ],
        pack,
        numbered(),
    )
    removal_only, not_on_claim, other_commercial = (card["detail"] for card in cards)
    assert twenty_680 in removal_only
    assert all(item not in removal_only for item in commercial)
    assert twenty_680 not in not_on_claim
    assert all(item not in not_on_claim for item in commercial)
    assert all(item in other_commercial for item in commercial)
    assert twenty_680 not in other_commercial


def test_nothing_unconfirmed_means_no_heading(pack: RulePack) -> None:
    """A finding whose data says `unconfirmed: []` gets no UNCONFIRMED section."""
    assert pack.findings.findings["diagnosis-conflict"].unconfirmed == []
    variables = pack.template_variables() | {
        "conflicting": "T84.615A",
        "conflicting_all": "T84.615A",
    }
    (card,) = build_cards([Finding("diagnosis-conflict", variables)], pack, numbered())
    assert "UNCONFIRMED" not in card["detail"]
