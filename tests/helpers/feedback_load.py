"""Feedback as the load tests send it, and what the database kept of it."""

from __future__ import annotations

from typing import Any

import requests
import sqlalchemy as sa

from cds_service.store.database import create_database_engine
from cds_service.store.tables import feedback

FEEDBACK = "/cds-services/cpt20703-encounter-discharge/feedback"
OUTCOME_TIMESTAMP = "2026-03-02T10:15:00Z"
# No (complete) HTTP answer: refused, reset, cut off mid-body, or timed out.
LOST_ANSWER = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


def stored_feedback(database_url: str) -> list[Any]:
    """Every feedback row in the database: card, outcome, outcome time, and whether this
    service issued the card to the client that sent it."""
    engine = create_database_engine(database_url)
    try:
        with engine.connect() as connection:
            return list(
                connection.execute(
                    sa.select(
                        feedback.c.card_uuid,
                        feedback.c.outcome,
                        feedback.c.outcome_timestamp,
                        feedback.c.card_issued,
                    )
                ).all()
            )
    finally:
        engine.dispose()
