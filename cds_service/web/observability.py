"""Per-request bookkeeping: request id, one JSON log line, and the HTTP metrics.

Refused requests (``REFUSED_STATUSES``: 401, 403, 413, 415, 429) are all counted in the metrics
but only sampled in the log, one line per status and second at most, the next line carrying how
many were left out (``suppressed``): a flood of strangers cannot flood the log.

Every response carries ``X-Request-ID``: the caller's own id when it is a plain token (so an EHR
can correlate), otherwise a fresh one. The log line and the metric labels hold the endpoint
name, the service id (only ids of the rule pack; anything else is ``unknown``), the status and
the latency, and the authenticated client's ``iss``: nothing from the request body, other
headers or the query string.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections import Counter
from typing import Any

from flask import Flask, Response, g, request

from cds_service.web import metrics
from cds_service.web.app_state import service_state

REQUEST_ID_HEADER = "X-Request-ID"
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,64}$")
access_log = logging.getLogger("cds_service.access")
REFUSED_STATUSES = frozenset({401, 403, 413, 415, 429})


class LogSampler:
    """At most one log line per key and ``interval`` seconds; counts what it leaves out."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._last: dict[int, float] = {}
        self._left_out: Counter[int] = Counter()
        self._lock = threading.Lock()

    def admit(self, key: int, now: float) -> int | None:
        """None when this line is left out; else how many were left out before it."""
        with self._lock:
            if now - self._last.get(key, -self.interval) < self.interval:
                self._left_out[key] += 1
                return None
            self._last[key] = now
            return self._left_out.pop(key, 0)


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
    sampler = LogSampler()

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
        suppressed = 0
        if response.status_code in REFUSED_STATUSES:
            admitted = sampler.admit(response.status_code, time.monotonic())
            if admitted is None:
                return response
            suppressed = admitted
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
                **({"suppressed": suppressed} if suppressed else {}),
            },
        )
        return response
