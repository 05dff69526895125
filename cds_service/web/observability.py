"""Per-request bookkeeping: request id, one JSON log line, and the HTTP metrics.

Every response carries ``X-Request-ID``: the caller's own id when it is a plain token (so an EHR
can correlate), otherwise a fresh one. The log line and the metric labels hold the endpoint
name, the service id (only ids of the rule pack; anything else is ``unknown``), the status and
the latency, and the authenticated client's ``iss``: nothing from the request body, other
headers or the query string.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from flask import Flask, Response, g, request

from cds_service.web import metrics
from cds_service.web.app_state import service_state

REQUEST_ID_HEADER = "X-Request-ID"
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,64}$")
access_log = logging.getLogger("cds_service.access")


def request_id() -> str:
    """This request's id (set before any view runs)."""
    value: str = g.request_id
    return value


def add_log_fields(**fields: Any) -> None:
    """Add PHI-free fields to this request's log line (counts, codes, timings)."""
    g.setdefault("log_fields", {}).update(fields)


def service_label() -> str:
    """The service id for labels and records: a rule-pack id, ``unknown``, or empty."""
    service_id = (request.view_args or {}).get("service_id")
    if service_id is None:
        return ""
    pack = service_state().pack
    return str(service_id) if pack.service(service_id) is not None else "unknown"


def elapsed_ms() -> float:
    """Milliseconds since this request arrived."""
    started: float = g.started
    return (time.perf_counter() - started) * 1000


def init_app(app: Flask) -> None:
    """Install the request hooks on ``app``."""

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()
        offered = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = offered if _CLIENT_REQUEST_ID.match(offered) else uuid.uuid4().hex

    @app.after_request
    def _finish(response: Response) -> Response:
        if "started" not in g:  # a request that failed before the hooks ran
            _start()
        endpoint = request.endpoint or "unmatched"
        service = service_label()
        latency = elapsed_ms()
        client = g.get("cds_client")
        response.headers[REQUEST_ID_HEADER] = request_id()
        metrics.REQUESTS.labels(endpoint, service, str(response.status_code)).inc()
        metrics.REQUEST_LATENCY.labels(endpoint, service).observe(latency / 1000)
        access_log.info(
            "request",
            extra={
                "request_id": request_id(),
                "method": request.method,
                "endpoint": endpoint,
                "service": service or None,
                "client": client.iss if client else None,
                "status": response.status_code,
                "latency_ms": round(latency, 2),
                **g.get("log_fields", {}),
            },
        )
        return response
