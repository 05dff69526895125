"""Feedback through HTTP, stored in SQLite and in PostgreSQL."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient
from helpers.corpus import load_fixture

from cds_service.store.database import Store
from cds_service.web.app_state import service_state

DISCHARGE = "/cds-services/cpt20703-encounter-discharge"
FEEDBACK = f"{DISCHARGE}/feedback"


def issue_cards(client: FlaskClient) -> list[dict[str, Any]]:
    """Call the service with the standard fixture and return its cards."""
    response = client.post(
        DISCHARGE,
        data=json.dumps(load_fixture("encounter-discharge--tibia-nonunion-removal.json")),
        content_type="application/json",
    )
    assert response.status_code == 200
    cards: list[dict[str, Any]] = response.get_json()["cards"]
    return cards


def send(client: FlaskClient, entries: list[dict[str, Any]], url: str = FEEDBACK) -> Any:
    return client.post(url, data=json.dumps({"feedback": entries}), content_type="application/json")


def store_of(client: FlaskClient) -> Store:
    store: Store = service_state(client.application).store
    return store


def test_feedback_is_stored_once_on_each_database(make_app: Any, database_url: str) -> None:
    """Accepted and overridden entries are stored; a repeat is counted, not stored again."""
    client = make_app({"DATABASE_URL": database_url}).test_client()
    card = issue_cards(client)[0]
    accepted = {
        "card": card["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
        "outcomeTimestamp": "2026-03-02T10:15:00.123Z",
    }
    overridden = {
        "card": card["uuid"],
        "outcome": "overridden",
        "overrideReason": {
            "reason": {"code": "reported-elsewhere", "system": "https://cds-20703.example/x"},
            "userComment": "Patient Jane Testpatient was billed by the other group",
        },
        "outcomeTimestamp": "2026-03-02T10:16:00Z",
    }
    first = send(client, [accepted, overridden])
    assert first.status_code == 200
    assert first.get_json() == {"stored": 2, "duplicates": 0, "unknownCards": 0}
    again = send(client, [accepted])
    assert again.get_json() == {"stored": 0, "duplicates": 1, "unknownCards": 0}

    rows = store_of(client).feedback_rows()
    assert len(rows) == 2
    assert rows[0]["card_uuid"] == card["uuid"]
    assert rows[0]["outcome"] == "accepted"
    assert json.loads(rows[0]["accepted_suggestions"]) == [card["suggestions"][0]["uuid"]]
    assert rows[0]["card_issued"] is True
    assert rows[1]["override_code"] == "reported-elsewhere"
    assert rows[1]["has_user_comment"] is True
    assert "Jane" not in json.dumps(rows, default=str)


def test_unknown_card_uuids_are_stored_and_counted(make_app: Any, database_url: str) -> None:
    """Feedback on cards this service did not issue is kept, flagged and counted."""
    client = make_app({"DATABASE_URL": database_url}).test_client()
    stranger = str(uuid.uuid4())
    response = send(
        client,
        [
            {
                "card": stranger,
                "outcome": "overridden",
                "outcomeTimestamp": "2026-03-02T10:16:00Z",
            }
        ],
    )
    assert response.get_json() == {"stored": 1, "duplicates": 0, "unknownCards": 1}
    (row,) = store_of(client).feedback_rows()
    assert row["card_uuid"] == stranger
    assert row["card_issued"] is False


def test_same_entry_with_different_timestamp_is_a_new_entry(client: FlaskClient) -> None:
    """Identity includes the outcome time: a later decision on the same card is kept."""
    entry = {"card": str(uuid.uuid4()), "outcome": "overridden"}
    send(client, [entry | {"outcomeTimestamp": "2026-03-02T10:16:00Z"}])
    response = send(client, [entry | {"outcomeTimestamp": "2026-03-02T10:17:00Z"}])
    assert response.get_json()["stored"] == 1
    assert len(store_of(client).feedback_rows()) == 2


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({}, "feedback"),
        ({"feedback": []}, "feedback"),
        ({"feedback": [{"card": "x", "outcome": "ignored", "outcomeTimestamp": "2026-01-01T00:00:00Z"}]}, "outcome"),
        ({"feedback": [{"card": "x", "outcome": "accepted", "outcomeTimestamp": "2026-01-01T00:00:00Z"}]}, "acceptedSuggestions"),
        ({"feedback": [{"card": "x", "outcome": "overridden"}]}, "outcomeTimestamp"),
        ({"feedback": [{"card": "x", "outcome": "overridden", "outcomeTimestamp": "yesterday"}]}, "outcomeTimestamp"),
        ({"feedback": [{"card": "x", "outcome": "overridden", "outcomeTimestamp": "2026-01-01T00:00:00"}]}, "time zone"),
        ({"feedback": [{"card": "x", "outcome": "overridden", "overrideReason": {}, "outcomeTimestamp": "2026-01-01T00:00:00Z"}]}, "reason or a userComment"),
    ],
)  # fmt: skip
def test_invalid_feedback_is_400(client: FlaskClient, body: dict[str, Any], needle: str) -> None:
    """Feedback that breaks the 2.0 rules is a 400 naming the problem; nothing is stored."""
    response = client.post(FEEDBACK, data=json.dumps(body), content_type="application/json")
    assert response.status_code == 400
    assert needle in response.get_json()["issue"][0]["diagnostics"]
    assert store_of(client).feedback_rows() == []


def test_feedback_for_unknown_service_is_404(client: FlaskClient) -> None:
    """Feedback to a service id the server does not host is 404."""
    entry = {"card": "x", "outcome": "overridden", "outcomeTimestamp": "2026-01-01T00:00:00Z"}
    response = send(client, [entry], "/cds-services/nope/feedback")
    assert response.status_code == 404
    assert response.get_json()["resourceType"] == "OperationOutcome"


def test_sandbox_style_feedback_is_accepted(client: FlaskClient) -> None:
    """The sandbox sends reason without display and millisecond UTC timestamps."""
    card = issue_cards(client)[0]
    response = send(
        client,
        [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "overrideReason": {"reason": {"code": "device-prefabricated", "system": "x:y"}},
                "outcomeTimestamp": "2026-11-27T20:00:00.000Z",
            }
        ],
    )
    assert response.get_json() == {"stored": 1, "duplicates": 0, "unknownCards": 0}


def test_issued_cards_are_recorded(client: FlaskClient) -> None:
    """Each card answered is remembered (uuid and finding code only)."""
    cards = issue_cards(client)
    assert store_of(client).count_issued_cards() == len(cards) > 0
