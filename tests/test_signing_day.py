"""The demo's signing-day patient: the sandbox's order-sign call (a draft MedicationRequest, no
encounter) for a patient operated on the signing day gets the +20703 cards, through the same
engine the endpoint runs; another day gets none."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from helpers.corpus import FIXTURES, load_fixture

from cds_service.cli.demo import write_signing_day_seed
from cds_service.cli.signing_day import (
    ID_SUFFIX,
    SEED_NAME,
    SOURCE_FIXTURE,
    SigningDayError,
    signing_day_request,
)
from cds_service.engine.hook_call import handle_hook_call
from cds_service.rulepack.models import RulePack

TODAY = date(2027, 3, 9)
ORDER_SIGN = "cpt20703-order-sign"


def finding_codes(pack: RulePack, body: dict[str, object], today: date) -> list[str]:
    result = handle_hook_call(pack, ORDER_SIGN, body, today=today.isoformat())
    return sorted(card["extension"]["cpt20703.finding"] for card in result.response["cards"])


def test_the_sandbox_call_on_the_signing_day_gets_the_add_on_cards(pack: RulePack) -> None:
    body = signing_day_request(load_fixture(SOURCE_FIXTURE), TODAY)
    assert finding_codes(pack, body, TODAY) == ["add-on-suggested", "documentation-missing"]
    result = handle_hook_call(pack, ORDER_SIGN, body, today=TODAY.isoformat())
    (claim,) = [
        action["resource"]
        for card in result.response["cards"]
        for suggestion in card.get("suggestions", [])
        for action in suggestion["actions"]
        if action["type"] == "update"
    ]
    assert [item["productOrService"]["coding"][0]["code"] for item in claim["item"]][-1] == "20703"
    assert claim["item"][-1]["servicedDate"] == TODAY.isoformat()


def test_another_day_is_another_session(pack: RulePack) -> None:
    body = signing_day_request(load_fixture(SOURCE_FIXTURE), TODAY)
    assert finding_codes(pack, body, date(2027, 3, 10)) == []


def test_it_is_shaped_as_the_sandbox_sends_order_sign(pack: RulePack) -> None:
    """No encounter; the only draft order a MedicationRequest; the session's Procedures and
    Claim on the FHIR server (prefetch, which the demo seeds from), dated today."""
    source = load_fixture(SOURCE_FIXTURE)
    body = signing_day_request(source, TODAY)
    context = body["context"]
    assert "encounterId" not in context
    assert [e["resource"]["resourceType"] for e in context["draftOrders"]["entry"]] == [
        "MedicationRequest"
    ]
    moved = [e["resource"] for e in source["context"]["draftOrders"]["entry"]]
    ids = {
        e["resource"]["id"]
        for key in ("procedures", "claims")
        for e in body["prefetch"][key]["entry"]
    }
    assert {resource["id"] + ID_SUFFIX for resource in moved} <= ids
    text = json.dumps(body)
    assert "2026-02-10" not in text
    assert TODAY.isoformat() in text


def test_its_ids_do_not_collide_with_the_fixtures() -> None:
    """The demo seeds every fixture and this request on one FHIR server: no id is shared."""
    body = signing_day_request(load_fixture(SOURCE_FIXTURE), TODAY)
    assert (
        body["context"]["patientId"]
        == load_fixture(SOURCE_FIXTURE)["context"]["patientId"] + ID_SUFFIX
    )
    fixture_ids = {
        entry["resource"]["id"]
        for path in FIXTURES.glob("*--*.json")
        for value in json.loads(path.read_text())["prefetch"].values()
        if isinstance(value, dict)
        for entry in value.get("entry", [])
        if "id" in entry.get("resource", {})
    }
    seeded = {
        entry["resource"]["id"]
        for value in body["prefetch"].values()
        if isinstance(value, dict)
        for entry in value.get("entry", [])
    }
    assert seeded
    assert seeded & fixture_ids == set()
    # Every reference follows its resource: none still names an id of the source.
    text = json.dumps(body)
    original = {resource_id.removesuffix(ID_SUFFIX) for resource_id in seeded}
    original.add(load_fixture(SOURCE_FIXTURE)["context"]["patientId"])
    assert all(f'/{resource_id}"' not in text for resource_id in original)
    assert f'"Patient/{body["context"]["patientId"]}"' in text


def test_a_source_of_another_shape_is_refused() -> None:
    body = load_fixture(SOURCE_FIXTURE)
    body["context"]["encounterId"] = "enc-1"
    with pytest.raises(SigningDayError):
        signing_day_request(body, TODAY)


def test_the_demo_writes_the_seed_it_links_the_sandbox_to(tmp_path: Path) -> None:
    path = write_signing_day_seed(FIXTURES, tmp_path, TODAY)
    assert path.name == SEED_NAME
    written = json.loads(path.read_text())
    assert written == signing_day_request(load_fixture(SOURCE_FIXTURE), TODAY)
