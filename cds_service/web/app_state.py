"""What one application instance holds (settings, rule pack, store, FHIR fetcher, token verifier),
and the one way to reach it from a view, a test or the command line."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from cds_service.config import Settings
from cds_service.fhir.client import FhirFetcher
from cds_service.rulepack.models import RulePack
from cds_service.security.tokens import TokenVerifier
from cds_service.store.database import Store

_EXTENSION_KEY = "cds_20703"


@dataclass(frozen=True)
class ServiceState:
    """Built once by ``create_app`` and kept on the Flask app."""

    settings: Settings
    pack: RulePack
    store: Store
    fetcher: FhirFetcher
    verifier: TokenVerifier | None  # None when CDS_AUTH is off


def attach_state(app: Flask, state: ServiceState) -> None:
    """Keep ``state`` on ``app`` for :func:`service_state`."""
    app.extensions[_EXTENSION_KEY] = state


def service_state(app: Flask | None = None) -> ServiceState:
    """The state of ``app``, or of the app handling the current request."""
    state: ServiceState = (app or current_app).extensions[_EXTENSION_KEY]
    return state
