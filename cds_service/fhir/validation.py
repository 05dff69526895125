"""Whether JSON validates as a FHIR R4 model, remembered by content.

The resources the service emits (the Claim line it suggests, the documentation Task) are checked
against their full fhir.resources model before a card carries them. The same content comes back
at every call for the same patient, and validation is deterministic, so a worker remembers the
verdict per content digest instead of validating again.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from cds_service.recent import RecentCache

VERDICTS_KEPT = 4096
VERDICTS: RecentCache[bool] = RecentCache(VERDICTS_KEPT)


def validates(model: type[BaseModel], data: Any) -> bool:
    """True when ``data`` validates as ``model`` (computed once per distinct content)."""
    try:
        digest = hashlib.blake2b(orjson.dumps(data, option=orjson.OPT_SORT_KEYS), digest_size=16)
    except orjson.JSONEncodeError:  # not JSON orjson can write: validate without remembering
        return _validate(model, data)
    key = (digest.digest(), model.__name__)
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
