"""The service's tables: issued cards, feedback, the hook call audit trail and the JWT replay
store (SQLAlchemy Core). Alembic's migrations build exactly these (a test compares them)."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, Float, Integer, MetaData, String, Table, Text

metadata = MetaData()

issued_card = Table(
    "issued_card",
    metadata,
    Column("card_uuid", String(36), primary_key=True),
    Column("service_id", String(100), nullable=False),
    Column("finding_code", String(100), nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("client_iss", String(500), nullable=True),  # the verified client it was issued to
    Column("tenant", String(200), nullable=True),
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
    Column("client_iss", String(500), nullable=True),  # the verified client that sent it
    Column("tenant", String(200), nullable=True),
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
    Column("tenant", String(200), nullable=True),
)

jwt_replay = Table(
    "jwt_replay",
    metadata,
    Column("token_key", String(64), primary_key=True),
    Column("expires_at", Float, nullable=False, index=True),
)
