"""Apps on fresh databases, isolated from the developer's CDS_* environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from cds_service import create_app

NO_FHIR_SERVER = "http://127.0.0.1:9/no-fhir-server"
POSTGRES_URL = os.environ.get(
    "CDS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def clear_cds_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CDS_") and name != "CDS_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)


def isolated_app(database: Path, config: dict[str, Any]) -> Flask:
    """create_app for a module-scoped fixture (outside the per-test environment cleaning).

    No CDS_* variable of the shell, a SQLite file at ``database``, FHIR calls refused unless
    ``config`` allows some.
    """
    with pytest.MonkeyPatch.context() as patch:
        clear_cds_variables(patch)
        return create_app(
            {
                "TESTING": True,
                "DATABASE_URL": f"sqlite:///{database}",
                "FHIR_SERVER_ALLOWLIST": NO_FHIR_SERVER,
            }
            | config
        )
