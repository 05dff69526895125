"""Feedback, issued-card and audit records in a SQL database (SQLite by default, PostgreSQL).

Nothing stored here identifies a patient: card and suggestion uuids, finding codes, outcomes,
override reason codings, hook call metadata (service, hookInstance, client issuer, status,
latency, fetch counts) and timestamps. A clinician's free-text override comment is not stored
(it may name the patient); only whether one was given.
"""

from __future__ import annotations

import contextlib
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
    Engine,
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
from cds_service.store.feedback_rows import feedback_row
from cds_service.store.group_commit import GroupCommit
from cds_service.store.tables import feedback, hook_call, issued_card, jwt_replay

PRUNE_EVERY = 100  # every 100th token also deletes all expired ones
# Seconds to wait for a PostgreSQL connection (libpq waits forever by default): a database host
# that stops answering costs each request this long, never a hang. The URL may set its own.
POSTGRES_CONNECT_TIMEOUT = 3
SQLITE_BUSY_TIMEOUT = 15.0


@dataclass(frozen=True)
class ClientIdentity:
    """Who caused a record: the verified issuer and tenant (None, None without authentication)."""

    iss: str | None = None
    tenant: str | None = None


@dataclass(frozen=True)
class FeedbackResult:
    """What happened to the entries of one feedback call."""

    stored: int
    duplicates: int
    unknown_cards: int
    stored_outcomes: tuple[tuple[str, str], ...] = ()  # (finding code or "unknown", outcome)
    over_quota: int = 0  # entries on unknown cards not stored: the client's daily quota is spent


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
    tenant: str | None = None


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

    def __init__(
        self,
        engine: Engine,
        retention_days: int = 90,
        unknown_feedback_per_day: int = 1000,
        unknown_feedback_retention_days: int = 7,
    ) -> None:
        self.engine = engine
        self.retention = timedelta(days=retention_days)
        self.unknown_feedback_per_day = unknown_feedback_per_day
        self.unknown_feedback_retention = timedelta(days=unknown_feedback_retention_days)
        self._feedback_counter = itertools.count()
        self._prune_counter = itertools.count()
        self._audit_counter = itertools.count()
        # SQLite has one writer at a time, and a writer that finds the file locked polls it with
        # growing sleeps (up to 100 ms each): under load, threads of one worker that queue there
        # wait up to a second. They queue on this lock instead and are woken at once; only the
        # worker processes meet on SQLite's lock. PostgreSQL locks rows, not the database.
        self._sqlite_writer = threading.Lock() if engine.dialect.name == "sqlite" else None
        self._audit_commits = GroupCommit(self.record_hook_calls)

    @contextlib.contextmanager
    def _write(self, flushed: bool = True) -> Iterator[Connection]:
        """A write transaction (one at a time per process on SQLite).

        Not ``flushed`` (PostgreSQL): the commit returns before its WAL reaches the disk. It is
        visible to every other session at once, as any commit, so feedback sent at once finds
        the card; only a crash of the database server itself within its WAL writer delay
        (200 ms by default) can lose it. Feedback is always flushed.
        """
        with self._sqlite_writer or contextlib.nullcontext(), self.engine.begin() as connection:
            if not flushed and self.engine.dialect.name == "postgresql":
                connection.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            yield connection

    def record_hook_call(self, call: HookCallRecord) -> None:
        """Write the audit record and remember the issued card uuids; returns once committed.

        Concurrent calls of one worker share a transaction (:mod:`.group_commit`), which does
        not wait for the disk on PostgreSQL (``_write``): the answer waits for the commit, not
        for its flush, which cost a call more than its rules did.
        """
        self._audit_commits.submit(call)

    def record_hook_calls(self, calls: Sequence[HookCallRecord]) -> None:
        """Write the audit records and issued card uuids of ``calls`` in one transaction.

        Every ``PRUNE_EVERY``-th record also deletes audit records and issued-card uuids older
        than the retention period (feedback is kept).
        """
        now = datetime.now(UTC)
        records = [
            {
                "received_at": now,
                "request_id": call.request_id,
                "service_id": call.service_id,
                "hook": call.hook,
                "hook_instance": call.hook_instance,
                "client_iss": call.client_iss,
                "tenant": call.tenant,
                "status": call.status,
                "latency_ms": call.latency_ms,
                "finding_codes": json.dumps([code for _, code in call.issued]),
                "card_uuids": json.dumps([uuid for uuid, _ in call.issued]),
                "fetch_stats": json.dumps(call.fetch_stats) if call.fetch_stats else None,
            }
            for call in calls
        ]
        cards: list[dict[str, Any]] = [
            {"card_uuid": uuid, "service_id": call.service_id, "finding_code": code}
            | {"issued_at": now, "client_iss": call.client_iss, "tenant": call.tenant}
            for call in calls
            for uuid, code in call.issued
        ]
        with self._write(flushed=False) as connection:  # compiled once, cached by SQLAlchemy
            connection.execute(insert(hook_call), records)
            if cards:
                connection.execute(insert(issued_card), cards)
            counts = [next(self._audit_counter) for _ in calls]
            if any(count % PRUNE_EVERY == 0 for count in counts):
                cutoff = now - self.retention
                connection.execute(delete(hook_call).where(hook_call.c.received_at < cutoff))
                connection.execute(delete(issued_card).where(issued_card.c.issued_at < cutoff))

    def store_feedback(
        self,
        service_id: str,
        entries: Sequence[FeedbackEntry],
        client: ClientIdentity = ClientIdentity(),
    ) -> FeedbackResult:
        """Store each entry once; an identical entry sent again is counted, not stored.

        An entry is about an issued card only when this service issued that card to this same
        client (issuer and tenant). Entries on other cards are kept for
        ``unknown_feedback_retention`` and at most ``unknown_feedback_per_day`` a client a day;
        past the quota they are counted, not stored.
        """
        now = datetime.now(UTC)
        rows: dict[str, dict[str, Any]] = {}
        for entry in entries:
            row = feedback_row(service_id, entry, now, client.iss, client.tenant)
            rows.setdefault(row["entry_key"], row)
        with self._write() as connection:
            issued = _issued_to(connection, service_id, client, rows)
            quota = self.unknown_feedback_per_day - _unknown_stored_today(connection, client, now)
            outcomes: list[tuple[str, str]] = []
            over_quota = 0
            for row in rows.values():
                row["card_issued"] = row["card_uuid"] in issued
                if not row["card_issued"] and quota <= 0:
                    over_quota += 1
                    continue
                inserted = connection.execute(_insert_ignoring_duplicates(self.engine, row))
                if inserted.fetchall():
                    outcomes.append((issued.get(row["card_uuid"], "unknown"), row["outcome"]))
                    quota -= 0 if row["card_issued"] else 1
            if next(self._feedback_counter) % PRUNE_EVERY == 0:
                connection.execute(
                    delete(feedback).where(
                        ~feedback.c.card_issued,
                        feedback.c.received_at < now - self.unknown_feedback_retention,
                    )
                )
        unknown = len([row for row in rows.values() if not row["card_issued"]])
        return FeedbackResult(
            stored=len(outcomes),
            duplicates=len(entries) - len(outcomes) - over_quota,
            unknown_cards=unknown,
            stored_outcomes=tuple(outcomes),
            over_quota=over_quota,
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
            .outerjoin(
                issued_card,
                (issued_card.c.card_uuid == feedback.c.card_uuid)
                & (issued_card.c.service_id == feedback.c.service_id)
                & issued_card.c.client_iss.is_not_distinct_from(feedback.c.client_iss)
                & issued_card.c.tenant.is_not_distinct_from(feedback.c.tenant),
            )
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


def _issued_to(
    connection: Connection,
    service_id: str,
    client: ClientIdentity,
    rows: dict[str, dict[str, Any]],
) -> dict[str, str]:
    """card uuid -> finding code, of the cards among ``rows`` this service issued to ``client``."""
    found = connection.execute(
        select(issued_card.c.card_uuid, issued_card.c.finding_code).where(
            issued_card.c.card_uuid.in_({row["card_uuid"] for row in rows.values()}),
            issued_card.c.service_id == service_id,
            issued_card.c.client_iss.is_not_distinct_from(client.iss),
            issued_card.c.tenant.is_not_distinct_from(client.tenant),
        )
    )
    return {row.card_uuid: row.finding_code for row in found.all()}


def _unknown_stored_today(connection: Connection, client: ClientIdentity, now: datetime) -> int:
    """How many entries on unknown cards ``client`` stored in the last 24 hours."""
    stored = connection.scalar(
        select(func.count())
        .select_from(feedback)
        .where(
            ~feedback.c.card_issued,
            feedback.c.client_iss.is_not_distinct_from(client.iss),
            feedback.c.tenant.is_not_distinct_from(client.tenant),
            feedback.c.received_at >= now - timedelta(days=1),
        )
    )
    return int(stored or 0)


def _insert_ignoring_duplicates(engine: Engine, row: dict[str, Any]) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING id: one row back when the entry was new."""
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    return (
        dialect.insert(feedback)
        .values(**row)
        .on_conflict_do_nothing(index_elements=["entry_key"])
        .returning(feedback.c.id)
    )
