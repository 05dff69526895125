"""Shared pytest fixtures: the app on a fresh database, the rule pack, PostgreSQL, and the scan
of every log line for secrets. Plain helpers live in ``tests/helpers/``."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helpers.hypothesis_profiles  # noqa: F401  (registers and loads the Hypothesis profiles)
import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from helpers.apps import NO_FHIR_SERVER, POSTGRES_URL, clear_cds_variables
from helpers.privacy import LogCollector, assert_no_secret_in

from cds_service import create_app
from cds_service.engine.rule_pack import load_pack
from cds_service.rulepack.loading import default_cards_dir
from cds_service.rulepack.models import RulePack
from cds_service.store.database import create_database_engine
from cds_service.store.migrations import upgrade_database
from cds_service.web.app_state import service_state


@pytest.fixture(scope="session", autouse=True)
def _no_secret_in_any_log() -> Iterator[None]:
    """Everything the service logs during the whole suite holds no token, JWT or patient id.

    (Served subprocesses log elsewhere: tests/helpers/serving.py checks their output the same way.)
    """
    collector = LogCollector()
    logger = logging.getLogger("cds_service")
    logger.addHandler(collector)
    yield
    logger.removeHandler(collector)
    # Empty when a run selects no test that logs.
    assert_no_secret_in("\n".join(collector.lines), "the service's logs")


@pytest.fixture(autouse=True)
def _clean_cds_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CDS_* variable of the developer's shell leaks into a test."""
    clear_cds_variables(monkeypatch)
    # Tests call no FHIR server but the ones they start on loopback: refuse all others.
    monkeypatch.setenv("CDS_FHIR_SERVER_ALLOWLIST", NO_FHIR_SERVER)


@pytest.fixture(scope="session")
def pack() -> RulePack:
    return load_pack(default_cards_dir())


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cds.sqlite3'}"


@pytest.fixture
def migrated_sqlite_url(sqlite_url: str) -> str:
    """A SQLite database at the current schema, as `cds-service db upgrade` leaves it.

    Production-profile apps never migrate by themselves.
    """
    engine = create_database_engine(sqlite_url)
    upgrade_database(engine)
    engine.dispose()
    return sqlite_url


@pytest.fixture
def make_app() -> Iterator[Callable[..., Flask]]:
    """create_app, with every database engine it opened disposed after the test."""
    apps: list[Flask] = []

    def make(config: dict[str, Any]) -> Flask:
        app = create_app({"TESTING": True} | config)
        apps.append(app)
        return app

    yield make
    for app in apps:
        service_state(app).store.engine.dispose()


@pytest.fixture
def app(make_app: Callable[..., Flask], sqlite_url: str) -> Flask:
    return make_app({"DATABASE_URL": sqlite_url})


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def _postgres_available() -> bool:
    engine = sa.create_engine(POSTGRES_URL)
    try:
        with engine.connect():
            return True
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The PostgreSQL URL; in CI an unreachable server is a failure, not a skip."""
    if not _postgres_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_URL}")
        pytest.skip("PostgreSQL is not reachable (set CDS_TEST_POSTGRES_URL)")
    return POSTGRES_URL


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped after the test."""
    schema = f"cds_test_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(postgres_server)
    with engine.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = sa.engine.make_url(postgres_server).update_query_dict(
        {"options": f"-csearch_path={schema}"}
    )
    yield url.render_as_string(hide_password=False)
    with engine.begin() as connection:
        connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    """Each database the service supports."""
    if request.param == "sqlite":
        return sqlite_url
    url: str = request.getfixturevalue("postgres_url")
    return url
