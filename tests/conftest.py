"""Shared test fixtures: the app on a fresh database, the fixture corpus, PostgreSQL."""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hypothesis_profiles  # noqa: F401  (registers and loads the Hypothesis profiles)
import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from jwt_helpers import MINTED

from cds_service import create_app
from cds_service.logs import JsonFormatter
from cds_service.migrate import upgrade_database
from cds_service.rule_pack import RulePack, default_cards_dir, load_rule_pack
from cds_service.storage import create_database_engine

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fhir_fixtures"
EXPECTED: dict[str, dict[str, Any]] = json.loads((FIXTURES / "expected.json").read_text())
FIXTURE_NAMES = sorted(EXPECTED)
NO_FHIR_SERVER = "http://127.0.0.1:9/no-fhir-server"
POSTGRES_URL = os.environ.get(
    "CDS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def sensitive_strings(body: dict[str, Any]) -> set[str]:
    """Patient ids, names and identifiers that appear in a request body."""
    found = {body["context"]["patientId"]}

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if value.get("resourceType") == "Patient":
                for name in value.get("name", []):
                    found.update(name.get("given", []))
                    if name.get("family"):
                        found.add(name["family"])
            for key, child in value.items():
                if key in ("subject", "patient", "beneficiary") and isinstance(child, dict):
                    if child.get("display"):
                        found.add(child["display"])
                    if isinstance(child.get("identifier"), dict):
                        found.add(str(child["identifier"].get("value")))
                if key == "subscriberId":
                    found.add(str(child))
                walk(child)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(body)
    return {text for text in found if text and len(text) >= 4}


# Access tokens the tests put in requests; minted JWTs are added by jwt_helpers.
TEST_ACCESS_TOKENS = {
    "super-secret-access-token",
    "fhir-access-token-xyz",
    "opaque-token-42",
    "secret-tok",
    "tok-123",
}


class _LogCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self.formatter_ = JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.formatter_.format(record))


def log_secrets() -> set[str]:
    """What no log may hold: the tests' access tokens, every JWT they made (so far), and the
    fixtures' patient ids, names and identifiers."""
    secrets = set(TEST_ACCESS_TOKENS) | MINTED
    for name in FIXTURE_NAMES:
        secrets |= sensitive_strings(load_fixture(name))
    return secrets


def assert_no_secret_in(text: str, where: str) -> None:
    """Fail when ``text`` (a log) holds any of :func:`log_secrets`."""
    leaked = sorted(secret for secret in log_secrets() if secret in text)
    assert leaked == [], f"secrets found in {where}: {leaked[:5]}"


@pytest.fixture(scope="session", autouse=True)
def _no_secret_in_any_log() -> Iterator[None]:
    """Everything the service logs during the whole suite holds no token, JWT or patient id.

    (Served subprocesses log elsewhere: tests/serving.py checks their output the same way.)
    """
    collector = _LogCollector()
    logger = logging.getLogger("cds_service")
    logger.addHandler(collector)
    yield
    logger.removeHandler(collector)
    # Empty when a run selects no test that logs.
    assert_no_secret_in("\n".join(collector.lines), "the service's logs")


def without_uuids(document: Any) -> Any:
    """``document`` without its (random) uuid fields, to compare two answers."""
    if isinstance(document, dict):
        return {key: without_uuids(value) for key, value in document.items() if key != "uuid"}
    if isinstance(document, list):
        return [without_uuids(item) for item in document]
    return document


def icd10cm_diagnoses(codes: list[str]) -> list[dict[str, Any]]:
    """Claim.diagnosis entries for ``codes``, numbered from 1."""
    return [
        {
            "sequence": number,
            "diagnosisCodeableConcept": {
                "coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": code}]
            },
        }
        for number, code in enumerate(codes, start=1)
    ]


def load_fixture(name: str) -> dict[str, Any]:
    """A fixture request body, parsed."""
    body: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return body


def _clear_cds_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CDS_") and name != "CDS_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _clean_cds_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CDS_* variable of the developer's shell leaks into a test."""
    _clear_cds_variables(monkeypatch)
    # Tests call no FHIR server but the ones they start on loopback: refuse all others.
    monkeypatch.setenv("CDS_FHIR_SERVER_ALLOWLIST", NO_FHIR_SERVER)


def isolated_app(database: Path, config: dict[str, Any]) -> Flask:
    """create_app for a module-scoped fixture (outside the per-test environment cleaning).

    No CDS_* variable of the shell, a SQLite file at ``database``, FHIR calls refused unless
    ``config`` allows some.
    """
    with pytest.MonkeyPatch.context() as patch:
        _clear_cds_variables(patch)
        return create_app(
            {
                "TESTING": True,
                "DATABASE_URL": f"sqlite:///{database}",
                "FHIR_SERVER_ALLOWLIST": NO_FHIR_SERVER,
            }
            | config
        )


@pytest.fixture(scope="session")
def pack() -> RulePack:
    return load_rule_pack(default_cards_dir())


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
        app.extensions["cds_20703"].store.engine.dispose()


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
