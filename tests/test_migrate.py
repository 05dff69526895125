"""Schema migrations (cds_service.store.migrations, ``cds-service db``), on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from helpers.jwt_tokens import BASE_URL, ISSUER, SigningKey, jwk_set, write_trust_file

from cds_service.cli.main import main
from cds_service.store.database import create_database_engine
from cds_service.store.migrations import (
    MIGRATIONS_DIR,
    current_revision,
    head_revision,
    upgrade_database,
)
from cds_service.store.tables import metadata
from cds_service.web.app_state import service_state


def alembic_config(connection: sa.Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def schema_differences(engine: sa.Engine) -> list[Any]:
    with engine.connect() as connection:
        return list(compare_metadata(MigrationContext.configure(connection), metadata))


def test_the_migrations_build_exactly_the_models(database_url: str) -> None:
    """Every migration run in order gives the schema the code expects (no drift)."""
    engine = create_database_engine(database_url)
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "head")
        assert current_revision(engine) == head_revision()
        assert schema_differences(engine) == []
    finally:
        engine.dispose()


def test_a_new_database_is_created_at_the_newest_revision(database_url: str) -> None:
    engine = create_database_engine(database_url)
    try:
        assert current_revision(engine) is None
        assert upgrade_database(engine) == head_revision()
        assert current_revision(engine) == head_revision()
        assert schema_differences(engine) == []
        assert upgrade_database(engine) == head_revision()  # a second run changes nothing
    finally:
        engine.dispose()


def test_a_database_from_before_migrations_is_upgraded_keeping_its_data(
    database_url: str,
) -> None:
    """The three tables of the first release, no alembic_version: stamped 0001, then upgraded."""
    engine = create_database_engine(database_url)
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "0001")
            connection.execute(sa.text("DROP TABLE alembic_version"))
            connection.execute(
                sa.text("INSERT INTO issued_card VALUES ('c-1', 'svc', 'add-on-suggested', :now)"),
                {"now": datetime.now(UTC)},
            )
        assert "hook_call" not in sa.inspect(engine).get_table_names()
        upgrade_database(engine)
        assert current_revision(engine) == head_revision()
        assert "hook_call" in sa.inspect(engine).get_table_names()
        with engine.connect() as connection:
            kept = connection.execute(sa.text("SELECT card_uuid FROM issued_card")).scalars()
            assert list(kept) == ["c-1"]
    finally:
        engine.dispose()


def test_processes_starting_together_migrate_once(database_url: str) -> None:
    """Four `db upgrade` processes on one new database at the same moment all succeed."""
    environment = os.environ | {"CDS_DATABASE_URL": database_url}
    command_line = [sys.executable, "-m", "cds_service.cli", "db", "upgrade"]
    processes = [
        subprocess.Popen(command_line, env=environment, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    assert [process.returncode for process in processes] == [0] * 4, outputs
    engine = create_database_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT version_num FROM alembic_version")).all()
        assert [row[0] for row in rows] == [head_revision()]
        assert schema_differences(engine) == []
    finally:
        engine.dispose()


def test_development_migrates_at_start_up(make_app: Any, sqlite_url: str) -> None:
    app = make_app({"DATABASE_URL": sqlite_url})
    assert current_revision(service_state(app).store.engine) == head_revision()


def test_production_waits_for_db_upgrade(
    make_app: Any,
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Production never changes the schema by itself: not ready until `db upgrade` has run."""
    trust = write_trust_file(tmp_path, [{"iss": ISSUER, "jwks": jwk_set(SigningKey.ec384())}])
    app = make_app(
        {
            "DATABASE_URL": sqlite_url,
            "PROFILE": "production",
            "PUBLIC_BASE_URL": BASE_URL,
            "TRUSTED_CLIENTS": str(trust),
            "FHIR_SERVER_ALLOWLIST": "https://fhir.invalid/",
        }
    )
    client = app.test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert (
        "schema at revision (none), needs `cds-service db upgrade`"
        in (response.get_json()["issue"][0]["diagnostics"])
    )
    monkeypatch.setenv("CDS_DATABASE_URL", sqlite_url)
    assert main(["db", "current"]) == 1
    assert main(["db", "upgrade"]) == 0
    assert main(["db", "current"]) == 0
    out = capsys.readouterr().out
    assert f"database schema at revision {head_revision()} (current)" in out
    assert "needs upgrade" in out
    assert client.get("/readyz").status_code == 200


def test_db_upgrade_reports_an_unreachable_database(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CDS_DATABASE_URL", "postgresql://cds@127.0.0.1:9/gone")
    assert main(["db", "upgrade"]) == 1
    assert "cannot upgrade the database: OperationalError" in capsys.readouterr().err
