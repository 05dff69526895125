"""Read the FHIR R4 resources a hook call carries, leniently.

Resources come from ``context.draftOrders`` and from prefetch values (single resources or Bundles).
Only the resource types the rules read are parsed (validation is most of a hook call's cost); each
is parsed with the ``fhir.resources`` R4B models (R4B is the
closest to R4 4.0.1; the package's default is R5). Real clients are sloppy: fields unknown to R4
are dropped and the resource parsed again, and a resource that still fails validation is skipped
and logged by type and error kind only, never by value, so no patient data reaches the log.

Validation is most of a hook call's CPU time, and an EHR sends the same resources again and again
(every order signed for a patient prefetches that patient's Procedures, Claim and Conditions), so
a worker keeps the models of the resources it validated most recently (:data:`PARSED`), keyed by
a digest of their JSON: a resource is validated in full the first time its exact content comes,
and a changed element is new content. Unreadable resources are never kept (each call logs them).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from fhir.resources.R4B.claim import Claim
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.coverage import Coverage
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.organization import Organization
from fhir.resources.R4B.procedure import Procedure
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import BaseModel, ValidationError

from cds_service.fhir.json_limits import prune_empty
from cds_service.recent import RecentCache, content_digest

logger = logging.getLogger(__name__)

MODELS: dict[str, type[BaseModel]] = {
    "Procedure": Procedure,
    "ServiceRequest": ServiceRequest,
    "Claim": Claim,
    "Device": Device,
    "Condition": Condition,
    "DocumentReference": DocumentReference,
    "Coverage": Coverage,
    "Organization": Organization,
    "QuestionnaireResponse": QuestionnaireResponse,
}


# How many validated resources a worker keeps: 38 KB each on average (model and JSON, measured
# on the standard fixtures), so about 40 MB at most per worker: the records of about 90 patients
# (the standard discharge call brings 11 resources).
PARSED_KEPT = 1024
Parsed = tuple[BaseModel, dict[str, Any]]
PARSED: RecentCache[Parsed] = RecentCache(PARSED_KEPT)


@dataclass(frozen=True)
class ClaimInput:
    """A Claim as parsed, plus the JSON the client sent (the base of any update we suggest)."""

    model: Claim
    raw: dict[str, Any]


@dataclass
class ResourceSet:
    """The readable resources of one hook call, by type, without duplicates."""

    procedures: list[Procedure] = field(default_factory=list)
    service_requests: list[ServiceRequest] = field(default_factory=list)
    draft_orders: list[ServiceRequest] = field(default_factory=list)
    # Procedures and Claims sent in context.draftOrders: the session's own (they are also in
    # ``procedures`` and ``claims``, and a prefetched copy with the same id is left out).
    own_procedures: list[Procedure] = field(default_factory=list)
    own_claims: list[ClaimInput] = field(default_factory=list)
    claims: list[ClaimInput] = field(default_factory=list)
    devices: list[Device] = field(default_factory=list)
    conditions: list[Condition] = field(default_factory=list)
    documents: list[DocumentReference] = field(default_factory=list)
    coverages: list[Coverage] = field(default_factory=list)
    organizations: list[Organization] = field(default_factory=list)
    questionnaire_responses: list[QuestionnaireResponse] = field(default_factory=list)
    skipped: int = 0


def iter_resources(value: Any) -> Iterator[dict[str, Any]]:
    """Yield the resources in a prefetch value or context Bundle (a Bundle may lack ``type``)."""
    if not isinstance(value, dict):
        return
    if value.get("resourceType") == "Bundle":
        entries = value.get("entry")
        if isinstance(entries, list):
            for entry in entries:
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if isinstance(resource, dict):
                    yield resource
    elif isinstance(value.get("resourceType"), str):
        yield value


def read_resources(prefetch: Mapping[str, Any], draft_orders: Any = None) -> ResourceSet:
    """Parse every resource the rules can use; skip and log the unreadable ones."""
    result = ResourceSet()
    seen: set[tuple[str, str]] = set()
    reused: set[bytes] = set()
    for resource in iter_resources(draft_orders):
        parsed = _parse(resource, "context.draftOrders", result, reused)
        if parsed is None:
            continue
        if isinstance(parsed[0], ServiceRequest):
            result.draft_orders.append(parsed[0])
        elif isinstance(parsed[0], Procedure | Claim):
            seen.add((str(resource.get("resourceType")), str(resource.get("id", ""))))
            _file(*parsed, result)
            if isinstance(parsed[0], Procedure):
                result.own_procedures.append(parsed[0])
            else:
                result.own_claims.append(result.claims[-1])
    for key, value in prefetch.items():
        for resource in iter_resources(value):
            identity = (str(resource.get("resourceType")), str(resource.get("id", "")))
            if identity[1] and identity in seen:
                continue
            seen.add(identity)
            parsed = _parse(resource, f"prefetch.{key}", result, reused)
            if parsed is not None:
                _file(*parsed, result)
    return result


# Which list of the ResourceSet each parsed type goes to (Claims keep their JSON too).
_LISTS: dict[type[BaseModel], str] = {
    Procedure: "procedures",
    ServiceRequest: "service_requests",
    Device: "devices",
    Condition: "conditions",
    DocumentReference: "documents",
    Coverage: "coverages",
    Organization: "organizations",
    QuestionnaireResponse: "questionnaire_responses",
}


def _file(parsed: BaseModel, raw: dict[str, Any], result: ResourceSet) -> None:
    if isinstance(parsed, Claim):
        result.claims.append(ClaimInput(parsed, raw))
    else:
        getattr(result, _LISTS[type(parsed)]).append(parsed)


def _parse(
    resource: dict[str, Any], origin: str, result: ResourceSet, reused: set[bytes]
) -> Parsed | None:
    """The model, and the JSON it was read from, from :data:`PARSED` when this content was
    validated before. Models and JSON are shared between calls and never changed: the rules
    read them, and a suggested Claim is a new dict. Within one call each resource gets its own
    model (``reused``: the digests this call took from the cache), as the rules tell resources
    apart by identity."""
    resource_type = resource.get("resourceType")
    model = MODELS.get(resource_type) if isinstance(resource_type, str) else None
    if model is None:
        return None  # a type the rules never read (Patient, MedicationRequest, ...)
    key = _content_key(resource, model.__name__)
    if key is not None and key[0] not in reused:
        reused.add(key[0])
        cached = PARSED.get(key)
        if cached is None:
            cached = _validate(model, resource, origin, result)
            if cached is not None:
                PARSED.put(key, cached)
        return cached
    return _validate(model, resource, origin, result)


def _content_key(resource: dict[str, Any], resource_type: str) -> tuple[bytes, str] | None:
    """The resource's content digest and type; None (validated at every call) when it has none."""
    digest = content_digest(resource)
    return None if digest is None else (digest, resource_type)


def _validate(
    model: type[BaseModel], resource: dict[str, Any], origin: str, result: ResourceSet
) -> Parsed | None:
    """The model, and the JSON it was read from: a Claim's is the base of the whole Claim an
    update suggestion carries, so it is read as a card carries it (without empty values, which
    FHIR JSON forbids and cards never hold) and without elements unknown to R4."""
    resource_type = resource["resourceType"]
    if model is Claim:
        resource = prune_empty(resource)
    try:
        return model.model_validate(resource), resource
    except (ValidationError, ValueError, TypeError) as first_error:
        errors = _errors(first_error)
        unknown = [error["loc"] for error in errors if error["type"] == "extra_forbidden"]
        if unknown and len(unknown) == len(errors):
            trimmed = _without(resource, unknown)
            if model is Claim:
                trimmed = prune_empty(trimmed)
            try:
                return model.model_validate(trimmed), trimmed
            except (ValidationError, ValueError, TypeError) as second_error:
                errors = _errors(second_error)
        result.skipped += 1
        logger.warning(
            "skipped unreadable FHIR resource",
            extra={
                "resource_type": resource_type,
                "origin": origin,
                "error_count": len(errors),
                "errors": sorted({f"{_path(error['loc'])}:{error['type']}" for error in errors}),
            },
        )
        return None


def _errors(exc: Exception) -> list[dict[str, Any]]:
    if isinstance(exc, ValidationError):
        return [
            {"loc": tuple(error["loc"]), "type": error["type"]}
            for error in exc.errors(include_input=False, include_url=False, include_context=False)
        ]
    return [{"loc": (), "type": type(exc).__name__}]


def _path(loc: Iterable[Any]) -> str:
    return ".".join(str(part) for part in loc) or "(resource)"


def _without(resource: dict[str, Any], paths: list[tuple[Any, ...]]) -> dict[str, Any]:
    """A copy of ``resource`` with the elements at ``paths`` removed."""
    trimmed = copy.deepcopy(resource)
    for path in paths:
        container: Any = trimmed
        for part in path[:-1]:
            try:
                container = container[part]
            except (KeyError, IndexError, TypeError):
                container = None
                break
        if isinstance(container, dict):
            container.pop(path[-1], None)
    return trimmed
