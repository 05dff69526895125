"""Reading clinical text into device statements (cds_service/rules/statements.py, with the rules of
cards/clinical-text.yaml): each category a coder checks fires on its wording and nearly fires on
the wording that must not count; then the same reading through the hook (operative note only).
"""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest
from flask.testing import FlaskClient
from helpers.corpus import load_fixture
from helpers.engine import by_code, facts_for, findings_for

from cds_service.rulepack.models import RulePack
from cds_service.rules import record
from cds_service.rules.statements import QUOTE_LIMIT, TEXT_LIMIT, DeviceStatement, read_text

STANDARD = "encounter-discharge--tibia-nonunion-removal.json"


def statements(pack: RulePack, text: str) -> tuple[DeviceStatement, ...]:
    return read_text(pack.nlp, pack.clinical_text, text, "DocumentReference/op-1").statements


def counts_as_removal(pack: RulePack, text: str) -> bool:
    return any(s.removal and s.qualifies for s in statements(pack, text))


@pytest.mark.parametrize(
    "text",
    [
        "The hand-made antibiotic cement rod was removed from the left tibial canal.",
        "The vancomycin PMMA nail was withdrawn with a hook from the right femur.",
        "An antibiotic cement rod was removed from the left radius.",  # no word "canal"
        "We explanted the tobramycin-loaded intramedullary rod.",
        "The antibiotic cement rod placed at the first stage was removed from the tibia.",
        "An antibiotic cement rod had been placed at the index surgery. The rod was removed "
        "from the humerus using a T-handle.",
        "Gentamicin-impregnated cement nail extracted intact from the femoral canal.",
        "The antibiotic rod was exchanged for a new one in the left tibia.",
    ],
)
def test_an_affirmed_removal_of_a_qualifying_device_counts(pack: RulePack, text: str) -> None:
    assert counts_as_removal(pack, text)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("The antibiotic cement rod in the left tibia was not removed.", "negated"),
        ("No attempt was made to remove the antibiotic cement rod from the femur.", "negated"),
        ("The antibiotic cement rod was left in situ in the tibial canal.", "left in place"),
        ("The antibiotic rod in the tibia could not be located.", "not found"),
        ("The antibiotic cement rod was removed at an outside hospital in 2024.", "history"),
        ("He is status post removal of an antibiotic rod from the left femur.", "history"),
        ("The antibiotic cement rod will be removed from the tibia at the second stage.", "plan"),
        ("If the infection persists, the antibiotic rod may be removed from the tibia.", "plan"),
        ("Plan: removal of the antibiotic cement rod from the left tibia in six weeks.", "plan"),
        ("History: antibiotic cement rod removed from the femur last year.", "history"),
        ("Cefazolin 2 g IV was given before incision and the IM nail was removed.", "metal"),
        ("The titanium intramedullary nail was removed from the femur.", "metal"),
        (
            "The commercially manufactured gentamicin-coated tibial nail was extracted.",
            "manufactured",
        ),
        ("The antibiotic cement spacer was removed from the knee joint.", "joint tier"),
        ("Antibiotic beads were removed from the subfascial space of the thigh.", "soft tissue"),
        ("Antibiotic cement beads were removed from the spinal canal.", "not a bone's canal"),
        ("The antibiotic cement rod was inserted into the tibial canal.", "insertion"),
    ],
)
def test_what_did_not_happen_or_does_not_qualify_does_not_count(
    pack: RulePack, text: str, why: str
) -> None:
    assert not counts_as_removal(pack, text), why


def test_a_statement_carries_object_action_time_and_certainty(pack: RulePack) -> None:
    (planned,) = statements(
        pack, "Plan: the hand-made vancomycin cement rod in the left femur will be removed."
    )
    assert (planned.form, planned.action, planned.time, planned.certainty) == (
        "rod",
        "remove",
        "plan",
        "hypothetical",
    )
    assert (planned.preparation, planned.tier, planned.bone, planned.side) == (
        "manual",
        "intramedullary",
        "femur",
        "left",
    )
    assert planned.drug
    assert not planned.metal
    assert planned.qualifies
    assert not planned.removal


def test_a_drug_word_counts_only_inside_the_devices_phrase(pack: RulePack) -> None:
    """The drug of another phrase of the sentence does not make the nail a drug device."""
    (nail,) = statements(pack, "The femoral nail was removed after antibiotic irrigation.")
    assert nail.removal
    assert not nail.drug
    (rod,) = statements(pack, "The femoral antibiotic rod was removed after irrigation.")
    assert rod.removal
    assert rod.drug


def test_two_devices_in_one_sentence_keep_their_own_actions(pack: RulePack) -> None:
    nail, rod = statements(
        pack, "The IM nail was removed and the antibiotic cement rod was left in the femur."
    )
    assert (nail.form, nail.action, nail.drug) == ("nail", "remove", False)
    assert (rod.form, rod.action, rod.drug) == ("rod", "leave", True)


def test_a_long_sentence_is_quoted_around_the_removal(pack: RulePack) -> None:
    text = (
        "After thorough irrigation with nine litres of saline and excision of the sinus tract "
        "down to bleeding bone, the hand-made vancomycin cement rod was removed from the left "
        "tibial canal with a hook, and the canal was reamed to 12 mm."
    )
    (rod,) = statements(pack, text)
    assert len(rod.quote) <= QUOTE_LIMIT
    assert "rod was removed" in rod.quote
    assert rod.source == "DocumentReference/op-1"


# -- through the hook -------------------------------------------------------------------------


def operative_note_only(body: dict[str, Any], note: str) -> dict[str, Any]:
    """The standard case with the removal stated only in its operative note: the removal
    Procedure, its Device and every text that names the rod are gone."""
    body = copy.deepcopy(body)
    bundle = body["prefetch"]["procedures"]
    bundle["entry"] = [entry for entry in bundle["entry"] if "focalDevice" not in entry["resource"]]
    bundle["total"] = len(bundle["entry"])
    body["prefetch"]["devices"] = {"resourceType": "Bundle", "type": "searchset", "total": 0}
    (document,) = [entry["resource"] for entry in body["prefetch"]["documents"]["entry"]]
    document["content"][0]["attachment"]["data"] = base64.b64encode(note.encode()).decode()
    return body


NOTE = (
    "PROCEDURE: Repair of left tibial nonunion with autograft.\n"
    "DESCRIPTION OF PROCEDURE: The hand-made vancomycin cement rod was withdrawn from the left "
    "tibia with a hook. The nonunion was prepared and grafted.\n"
    "Estimated blood loss: 150 mL. Complications: none.\n"
)


def test_a_removal_stated_only_in_the_operative_note_is_suggested(pack: RulePack) -> None:
    body = operative_note_only(load_fixture(STANDARD), NOTE)
    facts = facts_for(body, pack)
    assert facts.removal_evidence == ("operative-note-removal",)
    (quote,) = facts.quotes
    assert quote[0].startswith("DocumentReference/")
    assert "rod was withdrawn" in quote[1]
    assert "add-on-suggested" in by_code(findings_for(body, pack))


@pytest.mark.parametrize(
    "sentence",
    [
        "The hand-made vancomycin cement rod was not removed from the left tibia.",
        "The hand-made vancomycin cement rod will be removed from the left tibia later.",
        "The hand-made vancomycin cement rod was removed from the left tibia in 2024.",
    ],
)
def test_an_operative_note_that_does_not_state_a_removal_suggests_nothing(
    pack: RulePack, sentence: str
) -> None:
    note = NOTE.replace(
        "The hand-made vancomycin cement rod was withdrawn from the left tibia with a hook.",
        sentence,
    )
    body = operative_note_only(load_fixture(STANDARD), note)
    assert facts_for(body, pack).removal_evidence == ()
    assert "add-on-suggested" not in by_code(findings_for(body, pack))


def test_a_worker_reads_a_text_once_and_again_when_it_changes(
    pack: RulePack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Order-sign re-reads the same notes at each signing: the pack keeps their readings, keyed
    by the text and its source, so a changed note is read anew and never answered from an old
    reading."""
    reads: list[str] = []
    real = read_text

    def counting(nlp: Any, rules: Any, text: str, source: str) -> Any:
        reads.append(source)
        return real(nlp, rules, text, source)

    monkeypatch.setattr(record, "read_text", counting)
    pack.readings.clear()
    body = operative_note_only(load_fixture(STANDARD), NOTE)
    first = facts_for(body, pack)
    assert any(source.startswith("DocumentReference/") for source in reads)
    assert len(pack.readings) == len(set(reads))
    reads.clear()
    assert facts_for(copy.deepcopy(body), pack) == first
    assert reads == []

    negated = NOTE.replace("rod was withdrawn", "rod was not withdrawn")
    facts = facts_for(operative_note_only(load_fixture(STANDARD), negated), pack)
    assert [source.split("/")[0] for source in reads] == ["DocumentReference"]
    assert facts.removal_evidence == ()
    assert first.removal_evidence == ("operative-note-removal",)


def test_the_card_quotes_the_operative_note_over_http(client: FlaskClient) -> None:
    body = operative_note_only(load_fixture(STANDARD), NOTE)
    response = client.post("/cds-services/cpt20703-encounter-discharge", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    (card,) = [
        card
        for card in response.get_json()["cards"]
        if "the operative note states the removal" in card["detail"]
    ]
    assert "rod was withdrawn from the left tibia" in card["detail"]


def test_a_text_is_read_up_to_its_limit(pack: RulePack) -> None:
    """A client's megabyte of text costs a bounded read: what lies past the limit is not read."""
    removal = " The hand-made antibiotic cement rod was removed from the left tibia."
    assert counts_as_removal(pack, "Note." + removal)
    assert not counts_as_removal(pack, "x" * TEXT_LIMIT + removal)
    assert statements(pack, "word " * 300_000) == ()
