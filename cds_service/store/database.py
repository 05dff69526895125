"""Feedback, issued-card and audit records in a SQL database (SQLite by default, PostgreSQL).

Nothing stored here identifies a patient: card and suggestion uuids, finding codes, outcomes,
override reason codings, hook call metadata (service, hookInstance, client issuer, status,
latency, fetch counts) and timestamps. A clinician's free-text override comment is not stored
(it may name the patient); only whether one was given.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.pool import StaticPool

from cds_service.protocol.models import FeedbackEntry

metadata = MetaData()
PRUNE_EVERY = 100  # every 100th token also deletes all expired ones
# Seconds to wait for a PostgreSQL connection (libpq waits forever by default): a database host
# that stops answering costs each request this long, never a hang. The URL may set its own.
POSTGRES_CONNECT_TIMEOUT = 3
SQLITE_BUSY_TIMEOUT = 15.0

issued_card = Table(
    "issued_card",
    metadata,
    Column("card_uuid", String(36), primary_key=True),
    Column("service_id", String(100), nullable=False),
    Column("finding_code", String(100), nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("entry_key", String(64), nullable=False, unique=True),
    Column("service_id", String(100), nullable=False),
    Column("card_uuid", String(200), nullable=False),
    Column("card_issued", Boolean, nullable=False),
    Column("outcome", String(20), nullable=False),
    Column("accepted_suggestions", Text, nullable=True),
    Column("override_code", String(200), nullable=True),
    Column("override_system", String(500), nullable=True),
    Column("has_user_comment", Boolean, nullable=False),
    Column("outcome_timestamp", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
)


hook_call = Table(
    "hook_call",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("received_at", DateTime(timezone=True), nullable=False, index=True),
    Column("request_id", String(64), nullable=False),
    Column("service_id", String(100), nullable=False),
    Column("hook", String(100), nullable=True),
    Column("hook_instance", String(100), nullable=True),
    Column("client_iss", String(500), nullable=True),
    Column("status", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("finding_codes", Text, nullable=False),  # JSON list, one per card
    Column("card_uuids", Text, nullable=False),  # JSON list, same order
    Column("fetch_stats", Text, nullable=True),  # JSON object: counts and kinds only
)

jwt_replay = Table(
    "jwt_replay",
    metadata,
    Column("token_key", String(64), primary_key=True),
    Column("expires_at", Float, nullable=False, index=True),
)


@dataclass(frozen=True)
class FeedbackResult:
    """What happened to the entries of one feedback call."""

    stored: int
    duplicates: int
    unknown_cards: int
    stored_outcomes: tuple[tuple[str, str], ...] = ()  # (finding code or "unknown", outcome)


@dataclass(frozen=True)
class HookCallRecord:
    """The audit record of one hook call: metadata only, never request content."""

    request_id: str
    service_id: str
    hook: str | None
    hook_instance: str | None
    client_iss: str | None
    status: int
    latency_ms: float
    issued: Sequence[tuple[str, str]] = ()  # (card uuid, finding code)
    fetch_stats: dict[str, Any] | None = None


def create_database_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and real transactions.

    Python's sqlite3 module opens transactions lazily and commits before DDL, so a transaction
    that reads and then writes can fail at once with "database is locked" when another worker
    writes, and a migration is not atomic. Every SQLite transaction here starts with
    ``BEGIN IMMEDIATE`` instead: writers queue on the busy timeout and DDL is transactional.

    No connection is opened here: a database that is unreachable now is an error of the requests
    that need it (503), not of start-up. The SQLite file's directory is created when a connection
    is opened, so a volume mounted late is used once it is there.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() != "sqlite":
        connect_args: dict[str, Any] = {}
        if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
            connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT
        return create_engine(
            parsed, pool_pre_ping=True, pool_size=5, max_overflow=5, connect_args=connect_args
        )
    if parsed.database in (None, "", ":memory:"):
        engine = create_engine(
            parsed, poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    else:
        # The busy timeout: how long a writer waits for another process's write; a URL may set
        # it (``?timeout=seconds``).
        connect_args = {} if "timeout" in parsed.query else {"timeout": SQLITE_BUSY_TIMEOUT}
        engine = create_engine(parsed, connect_args=connect_args)
        directory = Path(parsed.database).parent

        @event.listens_for(engine, "do_connect")
        def _make_directory(*_args: Any) -> None:
            with contextlib.suppress(OSError):  # if impossible now, opening the file fails (503)
                directory.mkdir(parents=True, exist_ok=True)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(connection: Any, _record: Any) -> None:
        connection.isolation_level = None  # no implicit transactions: we begin them ourselves
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")  # acknowledged means on disk, even on power loss
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class Store:
    """Reads and writes the service's records."""

    def __init__(self, engine: Engine, retention_days: int = 90) -> None:
        self.engine = engine
        self.retention = timedelta(days=retention_days)
        self._prune_counter = itertools.count()
        self._audit_counter = itertools.count()
        # SQLite has one writer at a time, and a writer that finds the file locked polls it with
        # growing sleeps (up to 100 ms each): under load, threads of one worker that queue there
        # wait up to a second. They queue on this lock instead and are woken at once; only the
        # worker processes meet on SQLite's lock. PostgreSQL locks rows, not the database.
        self._sqlite_writer = threading.Lock() if engine.dialect.name == "sqlite" else None

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction (one at a time per process on SQLite)."""
        with self._sqlite_writer or contextlib.nullcontext(), self.engine.begin() as connection:
            yield connection

    def record_hook_call(self, call: HookCallRecord) -> None:
        """Write the audit record and remember the issued card uuids, in one transaction.

        Every ``PRUNE_EVERY``-th call also deletes audit records and issued-card uuids older
        than the retention period (feedback is kept).
        """
        now = datetime.now(UTC)
        cards = [
            {"card_uuid": uuid, "service_id": call.service_id, "finding_code": code}
            | {"issued_at": now}
            for uuid, code in call.issued
        ]
        with self._write() as connection:
            connection.execute(
                insert(hook_call).values(
                    received_at=now,
                    request_id=call.request_id,
                    service_id=call.service_id,
                    hook=call.hook,
                    hook_instance=call.hook_instance,
                    client_iss=call.client_iss,
                    status=call.status,
                    latency_ms=call.latency_ms,
                    finding_codes=json.dumps([code for _, code in call.issued]),
                    card_uuids=json.dumps([uuid for uuid, _ in call.issued]),
                    fetch_stats=json.dumps(call.fetch_stats) if call.fetch_stats else None,
                )
            )
            if cards:
                connection.execute(insert(issued_card), cards)
            if next(self._audit_counter) % PRUNE_EVERY == 0:
                cutoff = now - self.retention
                connection.execute(delete(hook_call).where(hook_call.c.received_at < cutoff))
                connection.execute(delete(issued_card).where(issued_card.c.issued_at < cutoff))

    def store_feedback(self, service_id: str, entries: Sequence[FeedbackEntry]) -> FeedbackResult:
        """Store each entry once; an identical entry sent again is counted, not stored."""
        now = datetime.now(UTC)
        rows: dict[str, dict[str, Any]] = {}
        for entry in entries:
            row = _feedback_row(service_id, entry, now)
            rows.setdefault(row["entry_key"], row)
        with self._write() as connection:
            found = connection.execute(
                select(issued_card.c.card_uuid, issued_card.c.finding_code).where(
                    issued_card.c.card_uuid.in_({row["card_uuid"] for row in rows.values()})
                )
            )
            issued: dict[str, str] = {row.card_uuid: row.finding_code for row in found.all()}
            outcomes: list[tuple[str, str]] = []
            for row in rows.values():
                row["card_issued"] = row["card_uuid"] in issued
                inserted = connection.execute(_insert_ignoring_duplicates(self.engine, row))
                if inserted.fetchall():
                    outcomes.append((issued.get(row["card_uuid"], "unknown"), row["outcome"]))
        unknown = len([row for row in rows.values() if not row["card_issued"]])
        return FeedbackResult(
            stored=len(outcomes),
            duplicates=len(entries) - len(outcomes),
            unknown_cards=unknown,
            stored_outcomes=tuple(outcomes),
        )

    def remember_token(self, token_key: str, expires_at: float) -> bool:
        """Record a token id until it expires; False when it is already recorded (a replay).

        The store is the database, so every worker process sees every other's tokens.
        """
        now = time.time()
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        with self._write() as connection:
            expired = jwt_replay.c.expires_at < now
            if next(self._prune_counter) % PRUNE_EVERY != 0:
                expired = expired & (jwt_replay.c.token_key == token_key)
            connection.execute(delete(jwt_replay).where(expired))
            inserted = connection.execute(
                dialect.insert(jwt_replay)
                .values(token_key=token_key, expires_at=expires_at)
                .on_conflict_do_nothing(index_elements=["token_key"])
                .returning(jwt_replay.c.token_key)
            )
            return len(inserted.fetchall()) == 1

    def feedback_rows(self) -> list[dict[str, Any]]:
        """All stored feedback, oldest first (for reports and tests)."""
        with self.engine.connect() as connection:
            result = connection.execute(select(feedback).order_by(feedback.c.id))
            return [dict(row._mapping) for row in result]

    def feedback_for_report(self, since: datetime | None = None) -> list[dict[str, Any]]:
        """Feedback rows with the finding code of their card (None when it is not known)."""
        query = (
            select(feedback, issued_card.c.finding_code)
            .outerjoin(issued_card, issued_card.c.card_uuid == feedback.c.card_uuid)
            .order_by(feedback.c.id)
        )
        if since is not None:
            query = query.where(feedback.c.received_at >= since)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def hook_call_rows(self, since: datetime | None = None) -> list[dict[str, Any]]:
        """Audit records, oldest first, optionally from ``since`` on."""
        query = select(hook_call).order_by(hook_call.c.id)
        if since is not None:
            query = query.where(hook_call.c.received_at >= since)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def count_issued_cards(self) -> int:
        """How many card uuids have been recorded."""
        with self.engine.connect() as connection:
            return int(connection.scalar(select(func.count()).select_from(issued_card)) or 0)


def _feedback_row(service_id: str, entry: FeedbackEntry, now: datetime) -> dict[str, Any]:
    accepted = sorted(item.id for item in entry.acceptedSuggestions or [])
    reason = entry.overrideReason.reason if entry.overrideReason else None
    timestamp = entry.outcomeTimestamp.astimezone(UTC)
    identity = {
        "service": service_id,
        "card": entry.card,
        "outcome": entry.outcome,
        "accepted": accepted,
        "reason": [reason.system, reason.code] if reason else None,
        "comment": bool(entry.overrideReason and entry.overrideReason.userComment),
        "timestamp": timestamp.isoformat(),
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return {
        "entry_key": key,
        "service_id": service_id,
        "card_uuid": entry.card,
        "card_issued": False,
        "outcome": entry.outcome,
        "accepted_suggestions": json.dumps(accepted) if accepted else None,
        "override_code": reason.code if reason else None,
        "override_system": reason.system if reason else None,
        "has_user_comment": identity["comment"],
        "outcome_timestamp": timestamp,
        "received_at": now,
    }


def _insert_ignoring_duplicates(engine: Engine, row: dict[str, Any]) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING id: one row back when the entry was new."""
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    return (
        dialect.insert(feedback)
        .values(**row)
        .on_conflict_do_nothing(index_elements=["entry_key"])
        .returning(feedback.c.id)
    )
