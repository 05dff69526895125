"""The demo's signing-day patient: a nonunion repair with the removal of an antibiotic cement rod,
dated the day the demo starts, on the FHIR server rather than in ``draftOrders``.

The CDS Hooks sandbox's order-sign screen sends a draft MedicationRequest and no ``encounterId``;
the service then reads the session of the signing day (the patient's procedures of that day). So
this patient is what a surgeon signing a post-operative order right after surgery looks like, and
the sandbox shows the +20703 cards for it. Built from a fixture (ids suffixed, so that both live
on one FHIR server; the session's date moved to ``today``); pure, no I/O.
"""

from __future__ import annotations

import copy
import json
import re
from datetime import date
from typing import Any

SOURCE_FIXTURE = "order-sign--draft-claim-no-encounter.json"
SEED_NAME = "order-sign--signing-day.json"
ID_SUFFIX = "-today"
# Where each resource type of the source's draftOrders goes on the FHIR server (prefetch key).
PREFETCH_KEYS = {"Procedure": "procedures", "Claim": "claims"}


class SigningDayError(ValueError):
    """The source fixture does not have the shape this seed is built from."""


def signing_day_request(source: dict[str, Any], today: date) -> dict[str, Any]:
    """``source`` (an order-sign request whose draftOrders hold the session's Procedures and draft
    Claim) as the sandbox would send it for a patient operated on ``today``: those resources in
    prefetch (where the demo seeds its FHIR server from), a draft MedicationRequest as the only
    draft order, every id suffixed and the session's date replaced by ``today``."""
    body = copy.deepcopy(source)
    context = body["context"]
    drafts = [entry["resource"] for entry in context["draftOrders"].get("entry", [])]
    claims = [resource for resource in drafts if resource.get("resourceType") == "Claim"]
    if not claims or "encounterId" in context:
        raise SigningDayError(f"{SOURCE_FIXTURE} must send a draft Claim and no encounterId")
    session_day = claims[0]["billablePeriod"]["start"]
    for resource in drafts:
        key = PREFETCH_KEYS.get(resource.get("resourceType", ""))
        if key is None:
            raise SigningDayError(f"no prefetch key for a draft {resource.get('resourceType')}")
        bundle = body["prefetch"].setdefault(key, {"resourceType": "Bundle", "type": "searchset"})
        bundle.setdefault("entry", []).append({"resource": resource})
    patient = context["patientId"]
    context["draftOrders"] = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": _post_operative_order(patient, drafts)}],
    }
    text = json.dumps(body).replace(session_day, today.isoformat())
    for resource_id in sorted(_ids(body), key=len, reverse=True):
        text = re.sub(rf'(?<=["/]){re.escape(resource_id)}(?=")', resource_id + ID_SUFFIX, text)
    renamed: dict[str, Any] = json.loads(text)
    return renamed


def _post_operative_order(patient: str, drafts: list[dict[str, Any]]) -> dict[str, Any]:
    """The order the sandbox's screen signs: a draft antibiotic MedicationRequest."""
    requester = next(
        (draft["recorder"] for draft in drafts if isinstance(draft.get("recorder"), dict)), None
    )
    order: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": "medrx-postop",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {"text": "Cefazolin 2 g IV every 8 hours for 24 hours"},
        "subject": {"reference": f"Patient/{patient}"},
    }
    if requester is not None:
        order["requester"] = requester
    return order


def _ids(body: dict[str, Any]) -> set[str]:
    """The patient's id and the id of every resource the request carries."""
    found = {body["context"]["patientId"]}

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("resourceType"), str) and isinstance(value.get("id"), str):
                found.add(value["id"])
            for child in value.values():
                walk(child)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(body["prefetch"])
    walk(body["context"]["draftOrders"])
    return found
