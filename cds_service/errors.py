"""Every error the service answers with, and the one place they become HTTP responses.

Hierarchy::

    CdsError                      an error that becomes a FHIR OperationOutcome response
    +-- InvalidRequestError       400  the body is not a valid request for this service
    +-- UnknownServiceError       404  no service with that id
    +-- UnknownResourceError      404  no such Questionnaire
    +-- PrefetchUnavailableError  412  required data is neither prefetched nor obtainable
    +-- UnsupportedMediaTypeError 415  the body is not JSON
    +-- TooManyEntriesError       413  a context or prefetch Bundle has more entries than allowed
    +-- RateLimitedError          429  the client sent more than CDS_RATE_LIMIT_PER_MINUTE
    +-- OverloadedError           503  no processing slot within CDS_QUEUE_TIMEOUT_SECONDS
    +-- KeySetUnavailableError    503  a jku client's JWK Set cannot be fetched and none is cached
    AuthenticationError           401  the JWT is missing or fails a check (security.tokens)
    ConfigError                   start-up: a CDS_* setting is invalid (never an HTTP response)
    sqlalchemy's SQLAlchemyError  503  the database is unavailable; retrying is safe

Werkzeug's HTTP errors (routing 404, 405, 413) and anything unexpected (500) get the same
OperationOutcome body. Diagnostics never contain request values, patient data or stack traces.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from flask import Flask, Response, json, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

logger = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
REALM = "cds-20703"
# HTTPS only for a year, once a browser has seen the service over TLS (never sent over plain HTTP).
HSTS = "max-age=31536000"
_ISSUE_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    412: "processing",
    413: "too-long",
    415: "not-supported",
    429: "throttled",
    503: "transient",
}
DATABASE_RETRY_AFTER_SECONDS = 5


class ConfigError(Exception):
    """A configuration value is invalid; the message names the variable, never its value."""


class AuthenticationError(Exception):
    """The request is not from a trusted client; ``check`` names the check that failed."""

    def __init__(
        self, check: str, message: str, *, token_missing: bool = False, issuer: str | None = None
    ) -> None:
        super().__init__(message)
        self.check = check
        self.message = message
        self.token_missing = token_missing
        self.issuer = issuer  # the unverified iss, for the log (never the token)


class CdsError(Exception):
    """Base for errors that become an OperationOutcome response."""

    status_code = 500
    issue_code = "exception"
    retry_after: int | None = None  # seconds, sent as Retry-After

    def __init__(self, diagnostics: str) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics


class InvalidRequestError(CdsError):
    """The body is malformed or is not a valid request for this service (400)."""

    status_code = 400
    issue_code = "invalid"


class UnknownServiceError(CdsError):
    """No CDS service with the requested id (404)."""

    status_code = 404
    issue_code = "not-found"


class UnknownResourceError(CdsError):
    """No such resource on this server (404)."""

    status_code = 404
    issue_code = "not-found"


class PrefetchUnavailableError(CdsError):
    """Data the service requires is neither in prefetch nor obtainable (CDS Hooks: 412)."""

    status_code = 412
    issue_code = "processing"


class UnsupportedMediaTypeError(CdsError):
    """The request body is not JSON (415)."""

    status_code = 415
    issue_code = "not-supported"


class OverloadedError(CdsError):
    """Every processing slot stayed busy for the queue timeout: answer now, not late (503)."""

    status_code = 503
    issue_code = "transient"
    retry_after = 1


class RateLimitedError(CdsError):
    """The client is over its rate limit: retry after ``retry_after`` seconds (429)."""

    status_code = 429
    issue_code = "throttled"

    def __init__(self, retry_after: int) -> None:
        super().__init__("Too many requests from this client; retry after the Retry-After delay.")
        self.retry_after = retry_after


class KeySetUnavailableError(CdsError):
    """The issuer's JWK Set (``jku``) could not be fetched and no copy is cached (503).

    The token may be perfectly valid, so this is not a 401: the client should retry once the
    set can be fetched again (``retry_after``: when the next fetch is allowed).
    """

    status_code = 503
    issue_code = "transient"

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            "The token could not be checked: the issuer's JWK Set could not be fetched; retry."
        )
        self.retry_after = retry_after


class TooManyEntriesError(CdsError):
    """A context or prefetch Bundle holds more entries than CDS_MAX_BUNDLE_ENTRIES (413)."""

    status_code = 413
    issue_code = "too-long"


def operation_outcome(diagnostics: str, issue_code: str, severity: str = "error") -> dict[str, Any]:
    """A FHIR R4 OperationOutcome with one issue."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": issue_code, "diagnostics": diagnostics}],
    }


def outcome_response(status: int, diagnostics: str, issue_code: str | None = None) -> Response:
    """An error response whose body is an OperationOutcome."""
    body = operation_outcome(diagnostics, issue_code or _ISSUE_CODES.get(status, "exception"))
    return Response(json.dumps(body), status=status, mimetype=FHIR_JSON)


def register_error_handlers(app: Flask) -> None:
    """Register the handlers on the app (blueprint handlers never see routing errors)."""

    @app.errorhandler(CdsError)
    def _cds_error(error: CdsError) -> Response:
        response = outcome_response(error.status_code, error.diagnostics, error.issue_code)
        if error.retry_after is not None:
            response.headers["Retry-After"] = str(error.retry_after)
        return response

    @app.errorhandler(AuthenticationError)
    def _unauthenticated(error: AuthenticationError) -> Response:
        logger.warning(
            "request not authenticated",
            extra={"check": error.check, "iss": error.issuer, "path": request.path},
        )
        response = outcome_response(401, f"Authentication failed ({error.check}): {error.message}")
        challenge = f'Bearer realm="{REALM}"'
        if not error.token_missing:
            challenge += f', error="invalid_token", error_description="{error.message}"'
        response.headers["WWW-Authenticate"] = challenge
        return response

    @app.after_request
    def _security_headers(response: Response) -> Response:
        # Nothing is cached unless its view says so (the explanation page, the same for everyone).
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers["X-Content-Type-Options"] = "nosniff"
        if request.is_secure:  # served over TLS (--certfile, or a proxy's X-Forwarded-Proto)
            response.headers["Strict-Transport-Security"] = HSTS
        return response

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        response = outcome_response(status, _http_diagnostics(status, error))
        if status == 405 and error.get_response().headers.get("Allow"):
            response.headers["Allow"] = error.get_response().headers["Allow"]
        return response

    @app.errorhandler(SQLAlchemyError)
    def _database_unavailable(error: SQLAlchemyError) -> Response:
        logger.error("database unavailable", extra={"error_type": type(error).__name__})
        response = outcome_response(
            503,
            "The service's database is unavailable; the request may not have been stored. "
            "Retrying is safe (a repeated feedback entry is stored once).",
        )
        response.headers["Retry-After"] = str(DATABASE_RETRY_AFTER_SECONDS)
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        # Log where it failed, not the exception message: messages can quote request data.
        frames = traceback.extract_tb(error.__traceback__)
        where = [f"{frame.filename}:{frame.lineno}:{frame.name}" for frame in frames[-5:]]
        logger.error("unhandled error", extra={"error_type": type(error).__name__, "at": where})
        return outcome_response(500, "Internal error while processing the request.")


def _http_diagnostics(status: int, error: HTTPException) -> str:
    if status == 404:
        return (
            "No such endpoint. CDS services are at /cds-services and /cds-services/{id}; "
            "/openapi.json describes every endpoint."
        )
    if status == 405:
        return "Method not allowed on this endpoint."
    if status == 413:
        return "The request body is larger than the configured limit (CDS_MAX_BODY_BYTES)."
    return error.name
