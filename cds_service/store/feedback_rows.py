"""The stored form of one feedback entry, and the key that makes a re-sent entry a duplicate."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from cds_service.protocol.models import FeedbackEntry


def feedback_row(
    service_id: str, entry: FeedbackEntry, now: datetime, iss: str | None, tenant: str | None
) -> dict[str, Any]:
    """The row of one entry. Its key (what makes a re-sent entry a duplicate) names the client
    too, so that another client sending the same entry first cannot make it a duplicate; without
    a client the key is the one rows had before clients were recorded."""
    accepted = sorted(item.id for item in entry.acceptedSuggestions or [])
    reason = entry.overrideReason.reason if entry.overrideReason else None
    timestamp = entry.outcomeTimestamp.astimezone(UTC)
    identity: dict[str, Any] = {
        "service": service_id,
        "card": entry.card,
        "outcome": entry.outcome,
        "accepted": accepted,
        "reason": [reason.system, reason.code] if reason else None,
        "comment": bool(entry.overrideReason and entry.overrideReason.userComment),
        "timestamp": timestamp.isoformat(),
    }
    if iss is not None:
        identity["client"] = [iss, tenant]
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
        "client_iss": iss,
        "tenant": tenant,
    }
