"""Whether JSON validates as a FHIR R4 model, remembered by content.

The resources the service emits (the Claim line it suggests, the documentation Task) are checked
against their full fhir.resources model before a card carries them. The same content comes back
at every call for the same patient, and validation is deterministic, so a worker remembers the
verdict per content digest instead of validating again.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from cds_service.recent import RecentCache, content_digest

VERDICTS_KEPT = 4096
VERDICTS: RecentCache[bool] = RecentCache(VERDICTS_KEPT)


def validates(model: type[BaseModel], data: Any) -> bool:
    """True when ``data`` validates as ``model`` (computed once per distinct content)."""
    digest = content_digest(data)
    if digest is None:
        return _validate(model, data)
    key = (digest, model.__name__)
    verdict = VERDICTS.get(key)
    if verdict is None:
        verdict = _validate(model, data)
        VERDICTS.put(key, verdict)
    return verdict


def _validate(model: type[BaseModel], data: Any) -> bool:
    try:
        model.model_validate(data)
    except (ValidationError, ValueError, TypeError):
        return False
    return True
