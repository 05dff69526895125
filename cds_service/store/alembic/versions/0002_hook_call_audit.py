"""The hook call audit trail.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hook_call",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("service_id", sa.String(100), nullable=False),
        sa.Column("hook", sa.String(100), nullable=True),
        sa.Column("hook_instance", sa.String(100), nullable=True),
        sa.Column("client_iss", sa.String(500), nullable=True),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("finding_codes", sa.Text, nullable=False),
        sa.Column("card_uuids", sa.Text, nullable=False),
        sa.Column("fetch_stats", sa.Text, nullable=True),
    )
    op.create_index("ix_hook_call_received_at", "hook_call", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_hook_call_received_at", table_name="hook_call")
    op.drop_table("hook_call")
