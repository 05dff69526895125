"""Prometheus metrics: what the service does, counted without patient data.

Labels take values from closed sets only: endpoint names, service ids of the rule pack (anything
else is ``unknown``), HTTP status codes, finding codes, feedback outcomes, fetch outcome kinds and
JWT check names. Under gunicorn (``cds-service serve``) ``PROMETHEUS_MULTIPROC_DIR`` is set before
this module is imported, so each worker writes its samples to files there and ``/metrics``
aggregates all workers.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

if TYPE_CHECKING:
    from cds_service.fhir.client import FetchStats

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter(
    "cds_http_requests_total",
    "HTTP requests answered, by endpoint, CDS service and status code.",
    ["endpoint", "service", "status"],
)
REQUEST_LATENCY = Histogram(
    "cds_http_request_duration_seconds",
    "Time to answer an HTTP request, by endpoint and CDS service.",
    ["endpoint", "service"],
    buckets=LATENCY_BUCKETS,
)
CARDS = Counter(
    "cds_cards_total", "Cards returned, by CDS service and finding code.", ["service", "finding"]
)
FEEDBACK = Counter(
    "cds_feedback_total",
    "Feedback entries stored, by CDS service, finding code of the card and outcome.",
    ["service", "finding", "outcome"],
)
FHIR_FETCHES = Counter(
    "cds_fhir_fetches_total",
    "FHIR queries sent for data the client did not prefetch, by outcome.",
    ["outcome"],
)
FHIR_FETCH_LATENCY = Histogram(
    "cds_fhir_fetch_duration_seconds",
    "Time of one FHIR query (all pages), by outcome.",
    ["outcome"],
    buckets=LATENCY_BUCKETS,
)
JWT_FAILURES = Counter(
    "cds_jwt_failures_total",
    "Requests refused by JWT authentication, by failed check (jwks-unavailable: answered 503).",
    ["reason"],
)
SHED = Counter(
    "cds_requests_shed_total",
    "Requests answered 503 at once because every processing slot was busy, by endpoint.",
    ["endpoint"],
)
LIMITED = Counter(
    "cds_requests_limited_total",
    "Requests answered 429 because their client was over CDS_RATE_LIMIT_PER_MINUTE, by endpoint.",
    ["endpoint"],
)
CONNECTIONS_CLOSED = Counter(
    "cds_connections_closed_total",
    "Connections the server closed before their request reached the service, by reason "
    "(head-timeout, body-timeout, per-source-limit).",
    ["reason"],
)
AUDIT_FAILURES = Counter(
    "cds_audit_write_failures_total", "Hook calls whose audit record could not be written."
)


def observe_fetches(stats: FetchStats) -> None:
    """Count each FHIR query of one hook call and its latency."""
    for outcome, seconds in stats.queries:
        FHIR_FETCHES.labels(outcome).inc()
        FHIR_FETCH_LATENCY.labels(outcome).observe(seconds)


def exposition() -> tuple[bytes, str]:
    """The metrics text and its content type; all workers' samples in multiprocess mode."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
