"""The audit trail: every hook call recorded in the database, metadata only."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from helpers.corpus import EXPECTED, FIXTURE_NAMES, load_fixture
from helpers.fault_server import FaultServer, fault_server
from helpers.jwt_tokens import BASE_URL, ISSUER, SigningKey, TokenFactory, jwk_set, write_trust_file
from helpers.privacy import sensitive_strings

from cds_service.engine.hook_call import parse_feedback_request
from cds_service.store.database import (
    ClientIdentity,
    HookCallRecord,
    Store,
    create_database_engine,
)
from cds_service.store.migrations import upgrade_database
from cds_service.web.app_state import service_state

DISCHARGE_ID = "cpt20703-encounter-discharge"
DISCHARGE = f"/cds-services/{DISCHARGE_ID}"
STANDARD = "encounter-discharge--tibia-nonunion-removal.json"


def post(app: Flask, path: str, body: Any, **headers: str) -> Any:
    return app.test_client().post(
        path, data=json.dumps(body), content_type="application/json", headers=headers
    )


def audit_rows(app: Flask) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = service_state(app).store.hook_call_rows()
    return rows


def test_an_answered_call_is_recorded_with_its_cards(make_app: Any, database_url: str) -> None:
    """Service, hook, hookInstance, status, latency, request id, finding codes and card uuids."""
    app = make_app({"DATABASE_URL": database_url})
    body = load_fixture(STANDARD)
    response = post(app, DISCHARGE, body)
    [row] = audit_rows(app)
    cards = response.get_json()["cards"]
    assert row["service_id"] == DISCHARGE_ID
    assert row["hook"] == "encounter-discharge"
    assert row["hook_instance"] == body["hookInstance"]
    assert row["status"] == 200
    assert row["request_id"] == response.headers["X-Request-ID"]
    assert row["latency_ms"] > 0
    assert json.loads(row["finding_codes"]) == ["add-on-suggested"]
    assert json.loads(row["card_uuids"]) == [card["uuid"] for card in cards]
    assert row["client_iss"] is None
    assert row["fetch_stats"] is None  # everything was prefetched
    assert row["received_at"] is not None


def test_refused_calls_are_recorded_with_their_status(make_app: Any, sqlite_url: str) -> None:
    """400 and 404 calls leave a record too, without cards; a 415 (refused before any work)
    leaves none."""
    app = make_app({"DATABASE_URL": sqlite_url})
    bad_context = load_fixture(STANDARD)
    del bad_context["context"]["encounterId"]
    post(app, DISCHARGE, bad_context)
    app.test_client().post(DISCHARGE, data="x", content_type="text/plain")
    post(app, "/cds-services/Jane-Testpatient", load_fixture(STANDARD))
    rows = audit_rows(app)
    assert [(row["status"], row["service_id"], row["hook"]) for row in rows] == [
        (400, DISCHARGE_ID, "encounter-discharge"),
        (404, "unknown", None),
    ]
    assert all(json.loads(row["card_uuids"]) == [] for row in rows)


@pytest.fixture(scope="module")
def fhir_faults() -> Iterator[FaultServer]:
    with fault_server() as server:
        yield server


def test_a_412_keeps_its_fetch_statistics(
    make_app: Any, sqlite_url: str, fhir_faults: FaultServer
) -> None:
    """Required data the FHIR server would not give: the record says what failed, by kind."""
    app = make_app({"DATABASE_URL": sqlite_url, "FHIR_SERVER_ALLOWLIST": fhir_faults.url})
    body = load_fixture(STANDARD)
    del body["prefetch"]["procedures"]
    body["fhirServer"] = f"{fhir_faults.url}/status-503/fhir"
    body["fhirAuthorization"] = {"access_token": "audit-secret-token", "token_type": "Bearer"}
    assert post(app, DISCHARGE, body).status_code == 412
    [row] = audit_rows(app)
    assert row["status"] == 412
    stats = json.loads(row["fetch_stats"])
    assert stats["keys_requested"] == 1
    assert stats["failures"] == {"http-5xx": 1}
    assert "audit-secret-token" not in json.dumps(row, default=str)


def test_the_client_issuer_is_recorded(make_app: Any, sqlite_url: str, tmp_path: Path) -> None:
    key = SigningKey.ec384()
    trust = write_trust_file(tmp_path, [{"iss": ISSUER, "jwks": jwk_set(key)}])
    app = make_app(
        {
            "DATABASE_URL": sqlite_url,
            "AUTH": "required",
            "TRUSTED_CLIENTS": str(trust),
            "PUBLIC_BASE_URL": BASE_URL,
        }
    )
    token = TokenFactory(key).token(DISCHARGE)
    assert (
        post(app, DISCHARGE, load_fixture(STANDARD), Authorization=f"Bearer {token}").status_code
        == 200
    )
    refused = post(app, DISCHARGE, load_fixture(STANDARD))  # no token: 401, not recorded
    assert refused.status_code == 401
    rows = audit_rows(app)
    assert [(row["status"], row["client_iss"]) for row in rows] == [(200, ISSUER)]
    assert token not in json.dumps(rows, default=str)


def test_no_patient_data_is_stored_for_any_fixture(make_app: Any, sqlite_url: str) -> None:
    """Every fixture through the endpoint: no name, id, MRN or token in any audit column."""
    app = make_app({"DATABASE_URL": sqlite_url})
    for name in FIXTURE_NAMES:
        post(app, f"/cds-services/{EXPECTED[name]['service']}", load_fixture(name))
    rows = audit_rows(app)
    assert len(rows) == len(FIXTURE_NAMES)
    stored = json.dumps(rows, default=str)
    for name in FIXTURE_NAMES:
        assert [s for s in sensitive_strings(load_fixture(name)) if s in stored] == [], name


def record(store: Store, finding: str = "add-on-suggested") -> None:
    store.record_hook_call(
        HookCallRecord(
            request_id="r" * 32,
            service_id=DISCHARGE_ID,
            hook="encounter-discharge",
            hook_instance=None,
            client_iss=None,
            status=200,
            latency_ms=3.0,
            issued=[(f"card-{datetime.now(UTC).timestamp()}", finding)],
        )
    )


def test_records_older_than_the_retention_are_pruned(database_url: str) -> None:
    """Audit records and issued-card ids past CDS_AUDIT_RETENTION_DAYS go; feedback stays."""
    engine = create_database_engine(database_url)
    upgrade_database(engine)
    try:
        record(Store(engine, retention_days=30), "old-finding")
        with engine.begin() as connection:
            long_ago = datetime.now(UTC) - timedelta(days=31)
            connection.execute(sa.text("UPDATE hook_call SET received_at = :t"), {"t": long_ago})
            connection.execute(sa.text("UPDATE issued_card SET issued_at = :t"), {"t": long_ago})
        record(Store(engine, retention_days=30), "new-finding")  # a fresh store prunes first
        rows = Store(engine).hook_call_rows()
        assert [json.loads(row["finding_codes"]) for row in rows] == [["new-finding"]]
        with engine.connect() as connection:
            codes = connection.execute(sa.text("SELECT finding_code FROM issued_card")).scalars()
            assert list(codes) == ["new-finding"]
    finally:
        engine.dispose()


def test_threads_of_one_worker_write_in_turn_on_sqlite(migrated_sqlite_url: str) -> None:
    """Sixteen threads (a gthread worker's) recording at once never meet SQLite's lock, so none
    fails or waits on SQLite's sleeping busy handler, even with a 1 ms busy timeout."""
    store = Store(create_database_engine(migrated_sqlite_url + "?timeout=0.001"))
    threads, calls = 16, 25
    barrier = threading.Barrier(threads)
    failures: list[BaseException] = []

    def record(thread: int) -> None:
        barrier.wait()
        for call in range(calls):
            try:
                store.record_hook_call(
                    HookCallRecord(
                        request_id=f"t{thread}-{call}",
                        service_id="cpt20703-encounter-discharge",
                        hook="encounter-discharge",
                        hook_instance=None,
                        client_iss=None,
                        status=200,
                        latency_ms=1.0,
                        issued=[(f"card-{thread}-{call}", "add-on-suggested")],
                    )
                )
            except sa.exc.OperationalError as exc:  # "database is locked"
                failures.append(exc)

    workers = [threading.Thread(target=record, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    store.engine.dispose()
    assert failures == []
    engine = sa.create_engine(migrated_sqlite_url)
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT count(*) FROM hook_call")).scalar_one()
    engine.dispose()
    assert rows == threads * calls


def test_on_postgresql_only_the_audit_commit_skips_the_flush_and_is_seen_at_once(
    postgres_url: str,
) -> None:
    """The audit transaction sets synchronous_commit off for itself; feedback keeps the flush;
    and another session sees the issued card as soon as record_hook_call returns."""
    engine = create_database_engine(postgres_url)
    upgrade_database(engine)
    statements: list[str] = []
    sa.event.listen(
        engine, "before_cursor_execute", lambda *args: statements.append(args[2].strip())
    )
    try:
        store = Store(engine)
        record(store, "add-on-suggested")
        assert "SET LOCAL synchronous_commit TO OFF" in statements
        other = create_database_engine(postgres_url)
        with other.connect() as connection:
            issued = connection.execute(sa.text("SELECT finding_code FROM issued_card"))
            assert list(issued.scalars()) == ["add-on-suggested"]
        other.dispose()
        statements.clear()
        card = store.hook_call_rows()[0]["card_uuids"]
        store.store_feedback(
            DISCHARGE_ID,
            parse_feedback_request(
                {
                    "feedback": [
                        {
                            "card": json.loads(card)[0],
                            "outcome": "overridden",
                            "outcomeTimestamp": "2026-12-04T10:16:00Z",
                        }
                    ]
                }
            ).feedback,
            ClientIdentity(),
        )
        assert statements
        assert not [text for text in statements if "synchronous_commit" in text]
    finally:
        engine.dispose()
