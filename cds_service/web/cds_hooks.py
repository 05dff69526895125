"""The HTTP surface: discovery, hook calls and feedback (one blueprint, thin views)."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, g, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import RequestEntityTooLarge

from cds_service.engine.hook_call import find_service, handle_hook_call, parse_feedback_request
from cds_service.errors import (
    AuthenticationError,
    InvalidRequestError,
    KeySetUnavailableError,
    UnknownResourceError,
    UnsupportedMediaTypeError,
)
from cds_service.fhir.client import FetchStats
from cds_service.fhir.json_limits import MAX_JSON_DEPTH, nested_deeper_than
from cds_service.security.tokens import TokenVerifier, VerifiedClient, endpoint_audiences
from cds_service.store.database import ClientIdentity, HookCallRecord
from cds_service.web import metrics
from cds_service.web.app_state import ServiceState, service_state
from cds_service.web.observability import (
    REFUSED_STATUSES,
    add_log_fields,
    elapsed_ms,
    request_id,
    service_label,
)

logger = logging.getLogger(__name__)
bp = Blueprint("cds", __name__, url_prefix="/cds-services")
_ID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")


def _state() -> ServiceState:
    state: ServiceState = service_state()
    return state


def _json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def _loggable_id(value: Any) -> str:
    """hookInstance as logged: a UUID-like token, or a placeholder for anything else."""
    return value if isinstance(value, str) and _ID.match(value) else "(not an id)"


def _json_body() -> Any:
    """The parsed JSON body: 415 when it is not declared JSON, 400 when it does not parse or
    nests deeper than ``MAX_JSON_DEPTH``."""
    mimetype = request.mimetype
    if not (
        mimetype in ("application/json", "application/fhir+json") or mimetype.endswith("+json")
    ):
        raise UnsupportedMediaTypeError(
            "The request body must be JSON (Content-Type: application/json)."
        )
    data = request.get_data(cache=False)
    if _chunked_body_over_the_limit(data):
        raise RequestEntityTooLarge()
    try:
        # orjson refuses what RFC 8259 does not allow (NaN, Infinity, lone surrogates) and reads
        # an integer beyond 64 bits as a double, as JavaScript clients do (FHIR's are 32-bit).
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise InvalidRequestError("The request body is not well-formed JSON.") from None
    if nested_deeper_than(body):
        raise InvalidRequestError(
            f"The request body nests objects and arrays more than {MAX_JSON_DEPTH} levels deep."
        )
    return body


def _chunked_body_over_the_limit(data: bytes) -> bool:
    """True when a body sent without Content-Length (chunked) went on past the limit.

    Werkzeug stops reading such a body at ``MAX_CONTENT_LENGTH`` without complaint, so a body
    cut there would be parsed as if it were whole (a misleading 400, or worse, a short document
    that parses). One more byte read from the server's stream tells a cut body from a whole one.
    """
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is not None or limit is None or len(data) < limit:
        return False
    return bool(request.environ["wsgi.input"].read(1))


@bp.before_request
def authenticate() -> None:
    """Verify the client's JWT (CDS_AUTH); preflight requests never need one."""
    state = _state()
    if state.verifier is None or request.method == "OPTIONS":
        return
    try:
        g.cds_client = _verified_client(
            state.verifier,
            required=state.settings.auth.mode == "required",
            audience=endpoint_audiences(
                state.settings.public_base_url + request.path,
                loopback_alike=state.settings.profile == "development",
            ),
        )
    except AuthenticationError as exc:
        metrics.JWT_FAILURES.labels(exc.check).inc()
        raise
    except KeySetUnavailableError:  # 503: the token could not be checked, not found wanting
        metrics.JWT_FAILURES.labels("jwks-unavailable").inc()
        raise


def _verified_client(
    verifier: TokenVerifier, *, required: bool, audience: list[str]
) -> VerifiedClient | None:
    header = request.headers.get("Authorization")
    if header is None:
        if required:
            raise AuthenticationError(
                "token", "A bearer token (JWT) is required.", token_missing=True
            )
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("malformed", "The Authorization header must be Bearer <JWT>.")
    return verifier.verify(token.strip(), audience)


@bp.get("")
def discovery() -> Response:
    """List the services (CDS Hooks discovery)."""
    return _json_response(_state().pack.discovery_document())


@bp.post("/<service_id>")
def call_service(service_id: str) -> Response:
    """Answer a hook call with cards."""
    state = _state()
    find_service(state.pack, service_id)
    body = _json_body()
    if isinstance(body, dict):
        g.hook_instance = _loggable_id(body.get("hookInstance"))
    client = g.get("cds_client")
    result = handle_hook_call(
        state.pack,
        service_id,
        body,
        fetcher=state.fetcher,
        max_bundle_entries=state.settings.max_bundle_entries,
        client_fhir_servers=client.fhir_servers if client else (),
        public_base_url=state.settings.public_base_url,
        fetch_stats=g.setdefault("fetch_stats", FetchStats()),
    )
    g.issued = result.issued
    for _, code in result.issued:
        metrics.CARDS.labels(service_id, code).inc()
    add_log_fields(
        cards=len(result.issued),
        findings=sorted({code for _, code in result.issued}),
        skipped_resources=result.skipped_resources,
    )
    return _json_response(result.response)


@bp.after_request
def audit_hook_call(response: Response) -> Response:
    """Record every hook call the service worked on in the audit trail (metadata only); refused
    ones (REFUSED_STATUSES) are counted in metrics and sampled in the log, never written: a
    stranger's load must not grow the database."""
    if request.endpoint != "cds.call_service" or response.status_code in REFUSED_STATUSES:
        return response
    state = _state()
    service = service_label()
    stats: FetchStats | None = g.get("fetch_stats")
    if stats is not None and stats.rounds:
        metrics.observe_fetches(stats)
        add_log_fields(fetch=stats.as_log())
    client = g.get("cds_client")
    pack_service = state.pack.service(service)
    record = HookCallRecord(
        request_id=request_id(),
        service_id=service,
        hook=pack_service.hook if pack_service else None,
        hook_instance=g.get("hook_instance"),
        client_iss=client.iss if client else None,
        tenant=client.tenant if client else None,
        status=response.status_code,
        latency_ms=round(elapsed_ms(), 2),
        issued=g.get("issued", ()),
        fetch_stats=stats.as_log() if stats is not None and stats.rounds else None,
    )
    try:
        state.store.record_hook_call(record)
    except SQLAlchemyError as exc:
        # The cards are still right; feedback on them will count as "unknown".
        metrics.AUDIT_FAILURES.inc()
        logger.warning("hook call not recorded", extra={"error_type": type(exc).__name__})
    return response


@bp.post("/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    """Store card outcomes reported by the client."""
    state = _state()
    find_service(state.pack, service_id)
    entries = parse_feedback_request(_json_body()).feedback
    client = g.get("cds_client")
    identity = ClientIdentity(client.iss, client.tenant) if client else ClientIdentity()
    result = state.store.store_feedback(service_id, entries, identity)
    for finding, outcome in result.stored_outcomes:
        metrics.FEEDBACK.labels(service_id, finding, outcome).inc()
    add_log_fields(
        stored=result.stored,
        duplicates=result.duplicates,
        unknown_cards=result.unknown_cards,
        over_quota=result.over_quota,
    )
    answer = {
        "stored": result.stored,
        "duplicates": result.duplicates,
        "unknownCards": result.unknown_cards,
    }
    if result.over_quota:
        answer["notStoredOverQuota"] = result.over_quota
    return _json_response(answer)


questionnaires = Blueprint("questionnaires", __name__, url_prefix="/questionnaires")


@questionnaires.get("/<questionnaire_id>")
def questionnaire(questionnaire_id: str) -> Response:
    """Serve the documentation Questionnaire, so its canonical URL resolves."""
    state = _state()
    document = state.pack.questionnaire(state.settings.public_base_url)
    if questionnaire_id != document["id"]:
        raise UnknownResourceError("No Questionnaire with that id on this server.")
    return Response(json.dumps(document), mimetype="application/fhir+json")
