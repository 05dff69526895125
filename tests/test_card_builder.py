"""Cards from findings: template text, citations, extensions and suggestion wiring."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from itertools import count
from typing import Any

import pytest
import yaml
from helpers.cards import assert_workflow_card, card_texts, unfilled_placeholders
from helpers.corpus import EXPECTED, FIXTURE_NAMES, ROOT, load_fixture
from helpers.engine import by_code, findings_for
from helpers.suggestion_records import documentation_labels

from cds_service.rulepack.detail_fit import UNCONFIRMED_LINE
from cds_service.rulepack.models import RulePack
from cds_service.rules.cards import CardContext
from cds_service.rules.cards import build_cards as build_cards_in
from cds_service.rules.findings import Finding

BASE = "https://cds.example.org/base"
DISCHARGE = "encounter-discharge"


def numbered() -> Callable[[], str]:
    numbers = count(1)
    return lambda: f"00000000-0000-4000-8000-{next(numbers):012d}"


def build_cards(
    findings: list[Finding],
    pack: RulePack,
    new_uuid: Callable[[], str],
    *,
    hook: str = DISCHARGE,
    caveats: tuple[tuple[str, str], ...] = (),
    payer: str | None = None,
) -> list[dict[str, Any]]:
    """The cards of ``findings`` for one call on ``hook``."""
    return build_cards_in(findings, pack, new_uuid, CardContext(hook, BASE, caveats, payer))


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
    assert "Not found:\n\n- [ ] `a`\n- [ ] `b`\n\n" in card["detail"]
    assert card["detail"].endswith(f"in the operative note.\n\n{UNCONFIRMED_LINE}")
    assert card["links"] == [
        {
            "label": "Why: sources and caveats",
            "url": f"{BASE}/why/documentation-missing",
            "type": "absolute",
        }
    ]


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


def test_the_unconfirmed_line_comes_last(pack: RulePack) -> None:
    """A finding with unconfirmed items ends its detail with one line pointing to Why, after
    what was not checked; the items themselves are on the explanation page, not in the card."""
    template = pack.findings.findings["orphan-add-on"]
    assert template.unconfirmed
    (card,) = build_cards(
        [orphan_finding(pack, "primary-not-on-claim")],
        pack,
        numbered(),
        caveats=(("coverage", "the FHIR server did not answer in time"),),
        payer="medicare",
    )
    assert card["detail"].endswith(
        "\n\n**Not checked:** `coverage`: the FHIR server did not answer in time."
        f"\n\n{UNCONFIRMED_LINE}"
    )
    assert all(item not in card["detail"] for item in template.unconfirmed)
    assert card["links"][0]["url"] == f"{BASE}/why/orphan-add-on?payer=medicare"


def test_a_note_with_unconfirmed_items_adds_the_line(pack: RulePack) -> None:
    """Where only a note leaves facts unconfirmed, only cards raised with that note say so."""
    orphan = pack.findings.findings["orphan-add-on"].model_copy(update={"unconfirmed": []})
    findings = pack.findings.model_copy(
        update={"findings": pack.findings.findings | {"orphan-add-on": orphan}}
    )
    changed = replace(pack, findings=findings)
    removal_only, not_on_claim = build_cards(
        [orphan_finding(pack, "removal-only"), orphan_finding(pack, "primary-not-on-claim")],
        changed,
        numbered(),
    )
    assert removal_only["detail"].endswith(UNCONFIRMED_LINE)
    assert not not_on_claim["detail"].endswith(UNCONFIRMED_LINE)
    assert "unconfirmed" not in not_on_claim["detail"]


def test_nothing_unconfirmed_means_no_line(pack: RulePack) -> None:
    """A finding whose data says `unconfirmed: []` says nothing of unconfirmed facts."""
    assert pack.findings.findings["diagnosis-conflict"].unconfirmed == []
    variables = pack.template_variables() | {
        "conflicting": "T84.615A",
        "conflicting_all": "T84.615A",
    }
    (card,) = build_cards([Finding("diagnosis-conflict", variables)], pack, numbered())
    assert "unconfirmed" not in card["detail"].lower()


ANSWERED = [name for name in FIXTURE_NAMES if EXPECTED[name]["status"] == 200]


@pytest.mark.parametrize("name", ANSWERED)
def test_every_fixture_card_renders_its_values(pack: RulePack, name: str) -> None:
    """Built without a server, every card of every fixture has every text filled (no
    placeholder, no "None"), the claim topic, a short detail with its Why link, and the action
    its finding calls for."""
    body = load_fixture(name)
    findings = findings_for(body, pack)
    payer = EXPECTED[name]["payer"]
    cards = build_cards(findings, pack, numbered(), hook=body["hook"], payer=payer)
    topic = yaml.safe_load((ROOT / "cards" / "findings.yaml").read_text())["card_topic"]
    for finding, card in zip(findings, cards, strict=True):
        texts = card_texts(card)
        assert unfilled_placeholders(card) == [], finding.code
        assert not any(re.search(r"\bNone\b", text) for text in texts), finding.code
        assert card["source"]["topic"] == topic
        assert_workflow_card(card, pack, body["hook"], finding.note, payer, BASE)
        for suggestion in card.get("suggestions", []):
            (action,) = suggestion["actions"]
            wanted = finding.new_resource if action["type"] == "create" else finding.updated_claim
            assert action["resource"] == wanted


def test_caveats_reach_every_card(pack: RulePack) -> None:
    """Data that could not be checked is named on every card, with its reason when there is one
    reason; several reasons send the reader to the log, and many keys are counted."""
    findings = findings_for(load_fixture("encounter-discharge--missing-documentation.json"), pack)
    one_reason = (("devices", "timed out"), ("coverage", "timed out"))
    for card in build_cards(findings, pack, numbered(), caveats=one_reason):
        assert "\n\n**Not checked:** `devices`, `coverage`: timed out.\n\n" in card["detail"]
    several = (
        ("devices", "timed out"),
        ("coverage", "refused"),
        ("claims", "x"),
        ("encounter", "y"),
    )
    for card in build_cards(findings, pack, numbered(), caveats=several):
        assert (
            "**Not checked:** `devices`, `coverage`, `claims` and 1 more, for several reasons "
            "(see the service log)."
        ) in card["detail"]


def test_documentation_checklist_names_each_missing_element(pack: RulePack) -> None:
    """The documentation card's checklist is one unchecked box per missing element, in order."""
    findings = by_code(
        findings_for(load_fixture("encounter-discharge--missing-documentation.json"), pack)
    )
    labels = documentation_labels(pack)
    missing = findings["documentation-missing"].missing_documentation
    checklist = "\n".join(f"- [ ] `{key}`: {labels[key]}" for key in missing)
    (card,) = build_cards([findings["documentation-missing"]], pack, numbered())
    assert checklist in card["detail"]
    assert card["summary"] == f"+20703 documentation incomplete: {len(missing)} element(s) missing"


@pytest.mark.parametrize(
    ("name", "summary"),
    [
        (
            "encounter-discharge--insertion-billed-for-removal.json",
            "The claim reports 20702 but the record shows removal: report 20703",
        ),
        (
            "encounter-discharge--removal-billed-for-insertion.json",
            "The claim reports 20703 but the record shows insertion: report 20702",
        ),
        (
            "encounter-discharge--wrong-tier-soft-tissue.json",
            "The removed drug device was in deep soft tissue: report 20701, not +20703",
        ),
        (
            "encounter-discharge--wrong-tier-intra-articular.json",
            "The removed drug device was in a joint: report 20705, not +20703",
        ),
        (
            "encounter-discharge--assistant-modifier.json",
            "Assistant modifier 80 billed: +20703 pays only with documented medical necessity",
        ),
        (
            "encounter-discharge--units-exceed-mue.json",
            "+20703 billed for more than 1 unit on one date: the MUE is 1 (date-of-service edit)",
        ),
    ],
)
def test_summary_names_the_codes_a_coder_acts_on(pack: RulePack, name: str, summary: str) -> None:
    """The summaries whose words carry the advice say exactly what to report."""
    cards = build_cards(findings_for(load_fixture(name), pack), pack, numbered())
    assert summary in [card["summary"] for card in cards]


def test_mue_card_states_the_edit_it_relies_on(pack: RulePack) -> None:
    """The MUE card names the limit, its adjudication indicator and the CMS file."""
    body = load_fixture("encounter-discharge--units-exceed-mue.json")
    (card,) = build_cards(findings_for(body, pack), pack, numbered())
    mue = pack.coding.mue
    assert f"the\nMedicare MUE is **{mue.units}** (MAI {mue.mai})" in card["detail"]
    assert (mue.units, mue.mai) == (1, 3)


def _yaml(name: str) -> Any:
    return yaml.safe_load((ROOT / "cards" / name).read_text())


def test_card_detail_is_exactly_its_parts_in_order(pack: RulePack) -> None:
    """The medicare card of the MUE fixture, rebuilt from the YAML files: the template's detail,
    what was not checked, then the unconfirmed line, each after a blank line; the source, its link
    and the override reasons as written."""
    findings = findings_for(load_fixture("encounter-discharge--units-exceed-mue.json"), pack)
    (card,) = build_cards(
        findings, pack, numbered(), caveats=(("coverage", "not found"),), payer="medicare"
    )
    template = _yaml("findings.yaml")["findings"]["units-exceed-mue"]
    mue = _yaml("coding.yaml")["mue"]
    values = {"mue_units": mue["units"], "mue_mai": mue["mai"], "mue_file": mue["file"]}
    assert template["unconfirmed"]
    assert card["detail"] == (
        template["detail"].format(**values).strip()
        + "\n\n**Not checked:** `coverage`: not found."
        + "\n\nSome facts are unconfirmed: see Why."
    )
    assert card["source"] == {
        "label": template["source"]["label"],
        "url": template["source"]["url"],
        "topic": _yaml("findings.yaml")["card_topic"],
    }
    system = _yaml("findings.yaml")["override_reason_system"]
    assert card["overrideReasons"] == [
        {"system": system, "code": reason["code"], "display": reason["display"]}
        for reason in template["override_reasons"]
    ]


def test_a_card_with_nothing_unconfirmed_or_unchecked_adds_nothing_for_them(pack: RulePack) -> None:
    """Without UNCONFIRMED items or caveats, the detail is exactly the template."""
    findings = findings_for(load_fixture("encounter-discharge--diagnosis-conflict.json"), pack)
    (card,) = build_cards(findings, pack, numbered())
    detail_template = _yaml("findings.yaml")["findings"]["diagnosis-conflict"]["detail"]
    assert card["detail"] == detail_template.format(**findings[0].variables).strip()


def test_an_update_of_a_claim_without_id_names_no_resource(pack: RulePack) -> None:
    """A draft Claim sent without an id is updated without a resourceId (nothing to name)."""
    body = load_fixture("encounter-discharge--units-exceed-mue.json")
    (finding,) = findings_for(body, pack)
    assert finding.updated_claim is not None
    anonymous = Finding(
        finding.code,
        finding.variables,
        updated_claim={k: v for k, v in finding.updated_claim.items() if k != "id"},
    )
    (card,) = build_cards([anonymous], pack, numbered())
    (action,) = card["suggestions"][0]["actions"]
    assert "resourceId" not in action
    assert action["resource"] == anonymous.updated_claim


@pytest.mark.parametrize(
    ("name", "words"),
    [
        (
            "encounter-discharge--insertion-billed-for-removal.json",
            "device removal and no insertion",
        ),
        (
            "encounter-discharge--removal-billed-for-insertion.json",
            "device insertion and no removal",
        ),
    ],
)
def test_insertion_card_says_what_the_record_shows_and_lacks(
    pack: RulePack, name: str, words: str
) -> None:
    """The detail states which action the record shows and which it does not."""
    (card,) = build_cards(findings_for(load_fixture(name), pack), pack, numbered())
    assert words in " ".join(card["detail"].split())


def test_add_on_card_lists_each_kind_of_evidence_on_its_own_line(pack: RulePack) -> None:
    """The standard card lists the evidence found as one bullet per kind, as findings.yaml
    labels them, then at most two quoted phrases."""
    (card,) = build_cards(
        findings_for(load_fixture("encounter-discharge--tibia-nonunion-removal.json"), pack),
        pack,
        numbered(),
    )
    labels = _yaml("findings.yaml")["evidence_labels"]
    kinds = ("focal-device-removal", "procedure-text-removal", "operative-note-removal")
    bullets = "\n".join(f"- {labels[kind]}" for kind in kinds)
    assert f"Found in the record:\n{bullets}\n- Procedure/proc-3b90e4: " in card["detail"]
    # Then the phrases that state the removal, quoted with their resource, at most two.
    quoted = re.findall(r"^- (\w+/[\w-]+): \"(.+)\"$", card["detail"], re.MULTILINE)
    assert len(quoted) == 2
    assert all(len(quote) <= 100 and "rod" in quote for _, quote in quoted)
