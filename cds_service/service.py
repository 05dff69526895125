"""One hook call, from parsed JSON to response JSON, without Flask.

The HTTP layer, the ``evaluate`` command and the benchmark all go through :func:`handle_hook_call`,
so they answer identically. Nothing here does I/O: storing issued cards is the caller's business.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from cds_service.card_builder import FINDING_EXTENSION, build_cards
from cds_service.errors import InvalidRequestError, PrefetchUnavailableError, UnknownServiceError
from cds_service.facts import derive_facts
from cds_service.fhir_input import read_resources
from cds_service.hooks import HOOKS, context_problems
from cds_service.protocol import FeedbackRequest, HookRequest
from cds_service.rule_pack import RulePack, ServiceDefinition
from cds_service.rules import evaluate

ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass(frozen=True)
class HookResult:
    """The response body and what the caller may record about it (no patient data)."""

    response: dict[str, Any]
    issued: list[tuple[str, str]]  # (card uuid, finding code)
    skipped_resources: int


def new_uuid() -> str:
    """A random RFC 4122 UUID, as CDS Hooks card and suggestion ids."""
    return str(uuid.uuid4())


def find_service(pack: RulePack, service_id: str) -> ServiceDefinition:
    """The service, or a 404 error."""
    service = pack.service(service_id)
    if service is None:
        raise UnknownServiceError(
            "Unknown CDS service id. GET /cds-services lists the services of this server."
        )
    return service


def handle_hook_call(
    pack: RulePack,
    service_id: str,
    body: Any,
    uuid_factory: Callable[[], str] = new_uuid,
) -> HookResult:
    """Validate a hook request and answer it with cards."""
    service = find_service(pack, service_id)
    request = parse_hook_request(body)
    if request.hook != service.hook:
        raise InvalidRequestError(
            f"This service answers the {service.hook} hook; the request is for another hook."
        )
    hook = HOOKS[service.hook]
    problems = context_problems(hook, request.context)
    if problems:
        raise InvalidRequestError("Invalid context: " + "; ".join(problems) + ".")
    prefetch = usable_prefetch(service, request.prefetch or {})
    resources = read_resources(prefetch, request.context.get("draftOrders"))
    encounter_id = request.context.get("encounterId")
    facts = derive_facts(
        resources, pack, service.hook, encounter_id if isinstance(encounter_id, str) else None
    )
    cards = build_cards(evaluate(facts, pack), pack, uuid_factory)
    issued = [(card["uuid"], card["extension"][FINDING_EXTENSION]) for card in cards]
    return HookResult({"cards": cards}, issued, resources.skipped)


def parse_hook_request(body: Any) -> HookRequest:
    """The request model, or a 400 that names the invalid fields (never their values)."""
    return _parse(HookRequest, body, "request")


def parse_feedback_request(body: Any) -> FeedbackRequest:
    """The feedback model, or a 400 that names the invalid fields."""
    return _parse(FeedbackRequest, body, "feedback")


def _parse(model: type[ModelT], body: Any, what: str) -> ModelT:
    if not isinstance(body, dict):
        raise InvalidRequestError(f"The {what} body must be a JSON object.")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise InvalidRequestError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    """'Invalid request: field: problem; ...' without input values."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False, include_context=False)[:10]:
        location = ".".join(str(part) for part in error["loc"]) or "body"
        parts.append(f"{location}: {error['msg']}")
    return "Invalid request: " + "; ".join(parts) + "."


def usable_prefetch(service: ServiceDefinition, prefetch: Mapping[str, Any]) -> dict[str, Any]:
    """The declared prefetch values that carry data; 412 when a required key is unusable.

    A key sent as ``null`` means "no data" and is fine. An absent key, a value that is not a JSON
    object, or an OperationOutcome (a failed prefetch) means the data is missing; fetching it from
    ``fhirServer`` is not implemented yet, so a required key missing is a 412.
    """
    usable: dict[str, Any] = {}
    unavailable: list[str] = []
    for key, entry in service.prefetch.items():
        if key in prefetch and prefetch[key] is None:
            continue
        value = prefetch.get(key)
        if isinstance(value, dict) and value.get("resourceType") not in (None, "OperationOutcome"):
            usable[key] = value
        elif entry.required:
            unavailable.append(key)
    if unavailable:
        keys = ", ".join(f"'{key}' ({service.prefetch[key].template})" for key in unavailable)
        raise PrefetchUnavailableError(
            f"Required prefetch data is missing or failed: {keys}. This service does not yet "
            "fetch missing prefetch data from fhirServer: send these prefetch keys."
        )
    return usable
