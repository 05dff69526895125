"""One hook call, from parsed JSON to response JSON, without Flask.

The HTTP layer, the ``evaluate`` command, the benchmark and the rule tests all go through
:func:`handle_hook_call`, so they answer identically. The only I/O is the optional ``fetcher``
(FHIR reads of data the client did not prefetch); without one the call is a pure function, and
the rules are reached through :func:`cds_service.engine.evaluate.evaluate`. Storing issued cards is
the caller's business.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from cds_service.engine.evaluate import DEFAULT_PUBLIC_BASE_URL, Evaluation, evaluate, new_uuid
from cds_service.engine.gather import gather
from cds_service.errors import InvalidRequestError, TooManyEntriesError, UnknownServiceError
from cds_service.fhir.client import FetchStats, FhirFetcher
from cds_service.protocol.hooks import HOOKS, context_problems
from cds_service.protocol.models import FeedbackRequest, HookRequest
from cds_service.rulepack.models import RulePack, ServiceDefinition

ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass(frozen=True)
class HookResult:
    """The response body and what the caller may record about it (no patient data)."""

    evaluation: Evaluation
    fetch_stats: FetchStats | None = None

    @property
    def response(self) -> dict[str, Any]:
        """The CDS Hooks response body."""
        return {"cards": self.evaluation.cards}

    @property
    def issued(self) -> list[tuple[str, str]]:
        """(card uuid, finding code) of each card."""
        return self.evaluation.issued

    @property
    def skipped_resources(self) -> int:
        """Input resources left out because they were not valid FHIR R4."""
        return self.evaluation.skipped_resources


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
    fetcher: FhirFetcher | None = None,
    max_bundle_entries: int | None = None,
    client_fhir_servers: Sequence[str] = (),
    public_base_url: str = DEFAULT_PUBLIC_BASE_URL,
    fetch_stats: FetchStats | None = None,
    today: str | None = None,
) -> HookResult:
    """Validate a hook request, complete its data, and answer it with cards.

    ``client_fhir_servers`` are FHIR base URLs the authenticated client's trust entry allows,
    on top of the configured outbound allowlist. ``fetch_stats``, when given, is filled in even
    when the call ends in an error (the audit trail records it). ``today`` (YYYY-MM-DD), the day
    the hook fires, defaults to the server's local date: the only clock read of a hook call.
    """
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
    if max_bundle_entries is not None:
        _check_size(request, max_bundle_entries)
    data = gather(service, request, fetcher, client_fhir_servers, fetch_stats)
    signing_day = today if today is not None else date.today().isoformat()
    evaluation = evaluate(pack, service, request, data, uuid_factory, public_base_url, signing_day)
    return HookResult(evaluation, data.fetch_stats)


def _check_size(request: HookRequest, limit: int) -> None:
    values = [request.context.get("draftOrders"), *(request.prefetch or {}).values()]
    for value in values:
        entries = value.get("entry") if isinstance(value, dict) else None
        if isinstance(entries, list) and len(entries) > limit:
            raise TooManyEntriesError(
                f"A context or prefetch Bundle has more than {limit} entries "
                "(CDS_MAX_BUNDLE_ENTRIES)."
            )


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
