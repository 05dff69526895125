"""Records owned by the client that caused them, and no durable writes from strangers: issued
cards, feedback and audit rows carry the verified issuer and tenant; feedback counts as "issued"
only from the client that received the card from the same service; the report is cut per client;
refused requests write nothing; feedback on unknown cards has a quota and its own retention."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from flask import Flask
from helpers.corpus import load_fixture
from helpers.jwt_tokens import BASE_URL, ISSUER, SigningKey, TokenFactory, jwk_set, write_trust_file

from cds_service.cli.main import main
from cds_service.store import database
from cds_service.store.database import create_database_engine
from cds_service.store.migrations import MIGRATIONS_DIR, head_revision
from cds_service.store.tables import feedback, hook_call, issued_card
from cds_service.web import metrics
from cds_service.web.app_state import service_state

DISCHARGE = "/cds-services/cpt20703-encounter-discharge"
ORDER_SIGN = "/cds-services/cpt20703-order-sign"
STANDARD = "encounter-discharge--tibia-nonunion-removal.json"
CLIENT_B = "https://second-ehr.example.org"


@dataclass(frozen=True)
class Caller:
    """A trusted client: its token factory and the claims its tokens carry (the tenant)."""

    tokens: TokenFactory
    claims: dict[str, Any]

    def token(self, path: str) -> str:
        return self.tokens.token(path, claims=self.claims)


class Clients:
    """An app trusting client A (tenant hospital-a) and client B (no tenant)."""

    def __init__(self, app: Flask, a: Caller, b: Caller) -> None:
        self.app, self.a, self.b = app, a, b

    def post(self, path: str, body: Any, caller: Caller | None) -> Any:
        headers = {"Authorization": f"Bearer {caller.token(path)}"} if caller else {}
        return self.app.test_client().post(
            path, data=json.dumps(body), content_type="application/json", headers=headers
        )

    def rows(self, table: sa.Table) -> list[dict[str, Any]]:
        with service_state(self.app).store.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(sa.select(table))]


@pytest.fixture
def clients(make_app: Callable[..., Flask], database_url: str, tmp_path: Path) -> Clients:
    key_a, key_b = SigningKey.ec384(), SigningKey.ec384()
    trust = write_trust_file(
        tmp_path,
        [
            {"iss": ISSUER, "jwks": jwk_set(key_a), "tenant": "hospital-a"},
            {"iss": CLIENT_B, "jwks": jwk_set(key_b)},
        ],
    )
    app = make_app(
        {
            "DATABASE_URL": database_url,
            "AUTH": "required",
            "TRUSTED_CLIENTS": str(trust),
            "PUBLIC_BASE_URL": BASE_URL,
            "UNKNOWN_FEEDBACK_PER_DAY": "3",
        }
    )
    return Clients(
        app,
        Caller(TokenFactory(key_a), {"tenant": "hospital-a"}),
        Caller(TokenFactory(key_b, issuer=CLIENT_B), {}),
    )


def accepted(card: dict[str, Any], minute: int = 15) -> dict[str, Any]:
    return {
        "card": card["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
        "outcomeTimestamp": f"2026-03-02T10:{minute:02d}:00Z",
    }


def test_records_carry_the_verified_client_and_tenant(clients: Clients) -> None:
    response = clients.post(DISCHARGE, load_fixture(STANDARD), clients.a)
    [card] = response.get_json()["cards"]
    clients.post(DISCHARGE + "/feedback", {"feedback": [accepted(card)]}, clients.a)
    [call] = clients.rows(hook_call)
    assert (call["client_iss"], call["tenant"]) == (ISSUER, "hospital-a")
    [issued] = clients.rows(issued_card)
    assert (issued["client_iss"], issued["tenant"]) == (ISSUER, "hospital-a")
    [entry] = clients.rows(feedback)
    assert (entry["client_iss"], entry["tenant"], entry["card_issued"]) == (
        ISSUER,
        "hospital-a",
        True,
    )


def test_feedback_counts_as_issued_only_from_the_client_and_service_that_got_the_card(
    clients: Clients,
) -> None:
    """Client B's feedback on A's card, and A's feedback sent to the wrong service, are
    feedback on unknown cards: they do not count in A's figures."""
    [card] = clients.post(DISCHARGE, load_fixture(STANDARD), clients.a).get_json()["cards"]
    from_b = clients.post(DISCHARGE + "/feedback", {"feedback": [accepted(card)]}, clients.b)
    assert from_b.get_json() == {"stored": 1, "duplicates": 0, "unknownCards": 1}
    wrong_service = clients.post(
        ORDER_SIGN + "/feedback", {"feedback": [accepted(card, 16)]}, clients.a
    )
    assert wrong_service.get_json()["unknownCards"] == 1
    right = clients.post(DISCHARGE + "/feedback", {"feedback": [accepted(card, 17)]}, clients.a)
    assert right.get_json()["unknownCards"] == 0
    rows = clients.rows(feedback)
    assert [(row["client_iss"], row["service_id"], row["card_issued"]) for row in rows] == [
        (CLIENT_B, "cpt20703-encounter-discharge", False),
        (ISSUER, "cpt20703-order-sign", False),
        (ISSUER, "cpt20703-encounter-discharge", True),
    ]


def test_another_client_sending_the_same_entry_first_cannot_make_it_a_duplicate(
    clients: Clients,
) -> None:
    """B copies A's feedback entry (card, outcome, suggestion, timestamp) and sends it first:
    A's own entry is still stored, as feedback on A's card."""
    [card] = clients.post(DISCHARGE, load_fixture(STANDARD), clients.a).get_json()["cards"]
    first = clients.post(DISCHARGE + "/feedback", {"feedback": [accepted(card)]}, clients.b)
    assert first.get_json()["stored"] == 1
    own = clients.post(DISCHARGE + "/feedback", {"feedback": [accepted(card)]}, clients.a)
    assert own.get_json() == {"stored": 1, "duplicates": 0, "unknownCards": 0}
    again = clients.post(DISCHARGE + "/feedback", {"feedback": [accepted(card)]}, clients.a)
    assert again.get_json() == {"stored": 0, "duplicates": 1, "unknownCards": 0}


def run_report(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    status = main(["report", "--json", *args])
    printed = capsys.readouterr()
    return status, json.loads(printed.out) if status == 0 else printed.err


def test_the_report_is_cut_per_client_and_never_mixes_them(
    clients: Clients,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    [card] = clients.post(DISCHARGE, load_fixture(STANDARD), clients.a).get_json()["cards"]
    clients.post(DISCHARGE, load_fixture(STANDARD), clients.b)
    clients.post(DISCHARGE + "/feedback", {"feedback": [accepted(card)]}, clients.b)
    monkeypatch.setenv("CDS_DATABASE_URL", database_url)
    _, document = run_report(capsys)
    reports = {(item["client"], item["tenant"]): item["findings"] for item in document["clients"]}
    assert set(reports) == {(ISSUER, "hospital-a"), (CLIENT_B, None)}
    add_on_a = {row["finding"]: row for row in reports[(ISSUER, "hospital-a")]}["add-on-suggested"]
    assert (add_on_a["cards_issued"], add_on_a["feedback"]) == (1, 0)  # B's feedback is not A's
    by_b = {row["finding"]: row for row in reports[(CLIENT_B, None)]}
    assert by_b["(card not recognised)"]["feedback"] == 1
    _, only_a = run_report(capsys, "--client", ISSUER, "--tenant", "hospital-a")
    assert [(item["client"], item["tenant"]) for item in only_a["clients"]] == [
        (ISSUER, "hospital-a")
    ]
    status, message = run_report(capsys, "--tenant", "hospital-a")
    assert status == 2
    assert "--tenant goes with --client" in message


def test_refused_requests_write_nothing_and_are_sampled_in_the_log(
    clients: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    """Fifty unauthenticated hook calls and feedback posts: no row, counted in metrics, and at
    most a line a second in the access log, the next one saying how many were left out."""
    before = metrics.REQUESTS.labels("cds.call_service", "cpt20703-encounter-discharge", "401")
    counted = before._value.get()
    body = load_fixture(STANDARD)
    with caplog.at_level(logging.INFO, logger="cds_service.access"):
        for _ in range(50):
            assert clients.post(DISCHARGE, body, None).status_code == 401
            assert clients.post(DISCHARGE + "/feedback", {"feedback": []}, None).status_code == 401
    assert clients.rows(hook_call) == []
    assert clients.rows(feedback) == []
    assert before._value.get() == counted + 50
    logged = [record for record in caplog.records if record.name == "cds_service.access"]
    assert 1 <= len(logged) <= 5  # a second of requests, or a little more on a slow machine
    assert sum(getattr(record, "suppressed", 0) for record in logged) < 100


def test_feedback_on_unknown_cards_has_a_daily_quota_per_client(clients: Clients) -> None:
    unknown = [
        {"card": f"00000000-0000-4000-8000-00000000000{i}", "outcome": "overridden"}
        | {"outcomeTimestamp": "2026-03-02T10:15:00Z"}
        for i in range(5)
    ]
    answer = clients.post(DISCHARGE + "/feedback", {"feedback": unknown}, clients.b).get_json()
    assert answer == {"stored": 3, "duplicates": 0, "unknownCards": 5, "notStoredOverQuota": 2}
    again = clients.post(DISCHARGE + "/feedback", {"feedback": unknown[4:]}, clients.b).get_json()
    assert again["notStoredOverQuota"] == 1
    other = clients.post(DISCHARGE + "/feedback", {"feedback": unknown[4:]}, clients.a).get_json()
    assert other["stored"] == 1  # another client's quota is its own
    [card] = clients.post(DISCHARGE, load_fixture(STANDARD), clients.b).get_json()["cards"]
    known = clients.post(DISCHARGE + "/feedback", {"feedback": [accepted(card)]}, clients.b)
    assert known.get_json() == {"stored": 1, "duplicates": 0, "unknownCards": 0}


def test_feedback_on_unknown_cards_has_its_own_retention(
    clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight days on, feedback on an unknown card is deleted; feedback on issued cards stays."""
    monkeypatch.setattr(database, "PRUNE_EVERY", 1)  # every feedback call prunes
    [card] = clients.post(DISCHARGE, load_fixture(STANDARD), clients.a).get_json()["cards"]
    stray = {"card": "00000000-0000-4000-8000-000000000009", "outcome": "overridden"}
    stray["outcomeTimestamp"] = "2026-03-02T10:15:00Z"
    clients.post(DISCHARGE + "/feedback", {"feedback": [accepted(card), stray]}, clients.a)
    with service_state(clients.app).store.engine.begin() as connection:
        connection.execute(sa.update(feedback).values(received_at=datetime.now(UTC) - timedelta(8)))
    clients.post(DISCHARGE + "/feedback", {"feedback": [accepted(card, 20)]}, clients.a)
    kept = [(row["card_uuid"], row["card_issued"]) for row in clients.rows(feedback)]
    assert kept == [(card["uuid"], True), (card["uuid"], True)]


def test_the_migration_carries_issuers_over(sqlite_url: str) -> None:
    """Rows written before 0003: each issued card takes the issuer its audited call names."""
    engine = create_database_engine(sqlite_url)
    with engine.begin() as connection:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = connection
        command.upgrade(config, "0002")
        now = datetime.now(UTC)
        connection.execute(
            sa.text(
                "INSERT INTO hook_call (received_at, request_id, service_id, client_iss, status,"
                " latency_ms, finding_codes, card_uuids) VALUES (:now, 'r1', 's', :iss, 200, 1.0,"
                " '[\"add-on-suggested\"]', '[\"c-1\"]'), (:now, 'r2', 's', NULL, 200, 1.0,"
                " '[\"add-on-suggested\"]', '[\"c-2\"]')"
            ),
            {"now": now, "iss": ISSUER},
        )
        connection.execute(
            sa.text(
                "INSERT INTO issued_card (card_uuid, service_id, finding_code, issued_at) VALUES"
                " ('c-1', 's', 'add-on-suggested', :now), ('c-2', 's', 'add-on-suggested', :now)"
            ),
            {"now": now},
        )
        command.upgrade(config, head_revision())
        selected = connection.execute(sa.text("SELECT card_uuid, client_iss FROM issued_card"))
        owners: dict[str, str | None] = {row.card_uuid: row.client_iss for row in selected}
    engine.dispose()
    assert owners == {"c-1": ISSUER, "c-2": None}
