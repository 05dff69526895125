"""Endpoints for operators and integrators: liveness, readiness, metrics, the API description.

None of them needs a JWT: they carry no patient data. Restrict ``/metrics`` at the network edge
when its counts must not be public.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from flask import Blueprint, Response
from sqlalchemy.exc import SQLAlchemyError

from cds_service.errors import outcome_response
from cds_service.store.migrations import current_revision, head_revision
from cds_service.web import draining, metrics
from cds_service.web.app_state import ServiceState, service_state

bp = Blueprint("ops", __name__)
OPENAPI_PATH = Path(__file__).resolve().parent / "openapi.yaml"


def _state() -> ServiceState:
    state: ServiceState = service_state()
    return state


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the process answers HTTP."""
    return Response(json.dumps({"status": "ok"}), mimetype="application/json")


@bp.get("/readyz")
def readyz() -> Response:
    """Readiness: rule pack loaded, database answering at the current schema, not stopping;
    503 otherwise. A stopping instance still serves for its drain period (``serve
    --drain-seconds``): this 503 tells the load balancer to stop sending it new calls first."""
    if draining.is_draining():
        return outcome_response(503, "Not ready: draining (this instance is stopping).")
    state = _state()
    checks = {"rulePack": "ok" if state.pack.services else "not loaded"}
    try:
        revision = current_revision(state.store.engine)
    except SQLAlchemyError:
        checks["database"] = "unreachable"
    else:
        checks["database"] = "ok"
        checks["schema"] = (
            "ok"
            if revision == head_revision()
            else f"at revision {revision or '(none)'}, needs `cds-service db upgrade`"
        )
    failing = [name for name, result in checks.items() if result != "ok"]
    if failing:
        return outcome_response(
            503, "Not ready: " + ", ".join(f"{name} {checks[name]}" for name in failing) + "."
        )
    return Response(json.dumps({"status": "ready", "checks": checks}), mimetype="application/json")


@bp.get("/metrics")
def prometheus_metrics() -> Response:
    """Prometheus text exposition of all workers' counters and histograms."""
    body, content_type = metrics.exposition()
    return Response(body, content_type=content_type)


@cache
def _openapi_template() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(OPENAPI_PATH.read_text(encoding="utf-8"))
    return document


def openapi_document(public_base_url: str, service_ids: list[str]) -> dict[str, Any]:
    """The OpenAPI 3.1 description, with this deployment's URL and service ids filled in."""
    document = copy.deepcopy(_openapi_template())
    document["servers"] = [{"url": public_base_url}]
    document["components"]["schemas"]["ServiceId"]["enum"] = service_ids
    return document


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 description of every endpoint of this service."""
    state = _state()
    document = openapi_document(
        state.settings.public_base_url, [service.id for service in state.pack.services]
    )
    return Response(json.dumps(document), mimetype="application/json")
