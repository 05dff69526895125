"""Records owned by the client that caused them: the verified issuer and tenant on issued cards,
feedback and audit rows.

Existing rows are carried over: an issued card takes the issuer of the audited hook call that
issued it (the audit trail named the issuer already; it did not record tenants); feedback and
cards with no audit row left keep no client (they are reported as "client not recorded").

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BATCH = 500


def upgrade() -> None:
    with op.batch_alter_table("issued_card") as table:
        table.add_column(sa.Column("client_iss", sa.String(500), nullable=True))
        table.add_column(sa.Column("tenant", sa.String(200), nullable=True))
    with op.batch_alter_table("feedback") as table:
        table.add_column(sa.Column("client_iss", sa.String(500), nullable=True))
        table.add_column(sa.Column("tenant", sa.String(200), nullable=True))
    with op.batch_alter_table("hook_call") as table:
        table.add_column(sa.Column("tenant", sa.String(200), nullable=True))
    _carry_issuers_over()


def _carry_issuers_over() -> None:
    """Each issued card gets the issuer of the hook call whose audit row lists it."""
    connection = op.get_bind()
    calls = connection.execute(
        sa.text(
            "SELECT client_iss, card_uuids FROM hook_call "
            "WHERE client_iss IS NOT NULL AND card_uuids <> '[]'"
        )
    )
    owners: dict[str, str] = {}
    for client_iss, card_uuids in calls:
        for uuid in json.loads(card_uuids):
            owners[str(uuid)] = str(client_iss)
    update = sa.text("UPDATE issued_card SET client_iss = :client_iss WHERE card_uuid = :uuid")
    pairs = [{"uuid": uuid, "client_iss": iss} for uuid, iss in owners.items()]
    for start in range(0, len(pairs), BATCH):
        connection.execute(update, pairs[start : start + BATCH])


def downgrade() -> None:
    with op.batch_alter_table("hook_call") as table:
        table.drop_column("tenant")
    with op.batch_alter_table("feedback") as table:
        table.drop_column("tenant")
        table.drop_column("client_iss")
    with op.batch_alter_table("issued_card") as table:
        table.drop_column("tenant")
        table.drop_column("client_iss")
