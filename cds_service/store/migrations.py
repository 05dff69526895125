"""The database schema, kept by Alembic migrations (``cds_service/store/alembic``).

``cds-service db upgrade`` applies them; in the development profile the service applies them at
start-up. A database with none of our tables is created from the models in one step and stamped
with the newest revision (Alembic's recipe for new databases); a test checks that this gives the
same schema as running every migration. A database made before migrations existed (the three
tables of revision 0001, no ``alembic_version``) is stamped 0001 and upgraded from there.
"""

from __future__ import annotations

import logging
import time
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import DBAPIError

from cds_service.store.tables import metadata

MIGRATIONS_DIR = Path(__file__).resolve().parent / "alembic"
BASELINE = "0001"
ADVISORY_LOCK = 20703_0001  # PostgreSQL advisory lock id held while migrating
logger = logging.getLogger(__name__)


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


@cache
def head_revision() -> str:
    """The newest revision this code knows."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:
        raise RuntimeError("no migrations found")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None: not under migrations yet)."""
    with engine.connect() as connection:
        revision: str | None = MigrationContext.configure(connection).get_current_revision()
        return revision


def upgrade_database(engine: Engine, attempts: int = 5) -> str:
    """Bring the schema to the newest revision; return it.

    Several processes may start at once (gunicorn workers, replicas): they queue on a lock
    (PostgreSQL advisory lock; SQLite's write lock, taken by ``BEGIN IMMEDIATE``) and the later
    ones find the work done. A transient failure is retried after a pause. Alembic's module-level
    context is not thread-safe: one migration per process at a time.
    """
    head = head_revision()
    for attempt in range(attempts):
        try:
            if current_revision(engine) == head:
                return head
            with engine.begin() as connection:
                _upgrade(connection)
            logger.info("database schema upgraded", extra={"revision": head})
            return head
        except DBAPIError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    return head  # not reached: the last attempt returns or raises


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":  # one migrating process at a time
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK})
    config = _config(connection)
    tables = set(inspect(connection).get_table_names())
    if "alembic_version" not in tables:
        if not tables & set(metadata.tables):
            metadata.create_all(connection)
            command.stamp(config, "head")
            return
        command.stamp(config, BASELINE)
    command.upgrade(config, "head")
