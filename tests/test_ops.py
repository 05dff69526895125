"""Liveness and readiness (cds_service.web.ops): /healthz and /readyz."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

from cds_service.store.database import create_database_engine
from cds_service.web.app_state import service_state


def test_healthz_answers_while_the_process_lives(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_reports_each_check(make_app: Any, database_url: str) -> None:
    """Rule pack loaded and database reachable: ready, on SQLite and PostgreSQL."""
    client = make_app({"DATABASE_URL": database_url}).test_client()
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "ready",
        "checks": {"rulePack": "ok", "database": "ok", "schema": "ok"},
    }


def test_readyz_is_503_naming_the_database_when_it_is_unreachable(client: FlaskClient) -> None:
    """Database gone (nothing listens on its port): 503 OperationOutcome; healthz stays 200."""
    state = service_state(client.application)
    reachable_engine = state.store.engine
    state.store.engine = create_database_engine("postgresql://cds@127.0.0.1:9/gone")
    try:
        response = client.get("/readyz")
        assert response.status_code == 503
        outcome = response.get_json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["diagnostics"] == "Not ready: database unreachable."
        assert client.get("/healthz").status_code == 200
    finally:
        state.store.engine.dispose()
        state.store.engine = reachable_engine
    assert client.get("/readyz").status_code == 200
