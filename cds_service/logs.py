"""JSON-lines logging for the ``cds_service`` loggers.

Log records carry only what the code put in ``extra``: service ids, hookInstance, finding codes,
counts, timings. Patient identifiers, names, tokens and JWTs are never passed to a logger.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry |= {key: value for key, value in vars(record).items() if key not in _STANDARD}
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    """Attach one JSON handler to the package logger (idempotent)."""
    logger = logging.getLogger("cds_service")
    logger.setLevel(level)
    if not any(isinstance(handler.formatter, JsonFormatter) for handler in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
