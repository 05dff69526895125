"""cds-20703: a CDS Hooks 2.0 service for CPT +20703.

WSGI entry point: ``cds_service:create_app()``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from cds_service.config import SETTING_NAMES, Settings
from cds_service.engine.rule_pack import load_pack
from cds_service.errors import ConfigError
from cds_service.fhir.client import FhirFetcher
from cds_service.logs import configure_logging
from cds_service.rulepack.problems import RulePackError
from cds_service.security.jwks import JwksCache
from cds_service.security.tokens import TokenVerifier, replay_key
from cds_service.store.database import Store, create_database_engine
from cds_service.store.migrations import current_revision, head_revision, upgrade_database
from cds_service.web.app_state import ServiceState, attach_state

__all__ = ["create_app"]


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Create the service. ``config`` overrides ``CDS_*`` settings (keys without the prefix)."""
    settings = Settings.load(overrides=config)
    configure_logging(settings.log_level)
    if settings.auth.mode == "off":
        logging.getLogger(__name__).warning(
            "CDS_AUTH is off: requests are NOT authenticated. Any caller can submit patient data "
            "and make this service call FHIR servers. Use CDS_AUTH=required outside development."
        )
    logging.getLogger(__name__).info(
        "settings in force",
        extra={
            "profile": settings.profile,
            "public_base_url": settings.public_base_url,
            "auth": settings.auth.mode,
            "fhir_allowlist": list(settings.fetch.allowlist),
            "loopback_hosts_alike": settings.fetch.loopback_alike,
            "cors_origins": list(settings.cors_origins),
        },
    )
    if settings.fetch.refuse_all:
        logging.getLogger(__name__).warning(
            "CDS_FHIR_SERVER_ALLOWLIST is empty in production: no FHIR server will be called"
        )
    try:
        pack = load_pack(settings.cards_dir)
    except RulePackError as exc:
        raise ConfigError(f"CDS_CARDS_DIR: the rule pack is invalid:\n{exc}") from None
    engine = create_database_engine(settings.database_url)
    _prepare_schema(settings, engine)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["PUBLIC_BASE_URL"] = settings.public_base_url
    for key, value in (config or {}).items():
        if key.removeprefix("CDS_").upper() not in SETTING_NAMES:
            app.config[key] = value
    store = Store(
        engine,
        settings.audit_retention_days,
        unknown_feedback_per_day=settings.unknown_feedback_per_day,
        unknown_feedback_retention_days=settings.unknown_feedback_retention_days,
    )
    attach_state(
        app,
        ServiceState(
            settings, pack, store, FhirFetcher(settings.fetch), _verifier(settings, store)
        ),
    )
    # Deferred on purpose: the HTTP layer imports prometheus-client, which picks its
    # single- or multi-process mode when first imported; `cds-service serve` sets
    # PROMETHEUS_MULTIPROC_DIR after importing this package and before any app is created.
    from cds_service.web.install import install

    install(app, settings)
    return app


def _prepare_schema(settings: Settings, engine: Engine) -> None:
    """Migrate in development; in production only say so when ``db upgrade`` is due.

    A database that cannot be used now does not stop start-up (no crash loop while it is down):
    the failure is logged, /readyz answers 503 and the requests that need the database get 503
    until it is back. A development migration that failed runs again at the next start-up, or
    with ``cds-service db upgrade``.
    """
    try:
        if settings.profile == "development":
            upgrade_database(engine)
            return
        revision = current_revision(engine)
    except SQLAlchemyError as exc:
        message = "database unreachable at start-up"
        if settings.profile == "development":
            message += ": schema not migrated (`cds-service db upgrade` or the next start-up will)"
        logging.getLogger(__name__).error(message, extra={"error_type": type(exc).__name__})
        return
    if revision != head_revision():
        logging.getLogger(__name__).error(
            "database schema is not current: run `cds-service db upgrade`",
            extra={"revision": revision, "needed": head_revision()},
        )


def _verifier(settings: Settings, store: Store) -> TokenVerifier | None:
    auth = settings.auth
    if auth.mode == "off":
        return None
    return TokenVerifier(
        clients=auth.clients,
        algorithms=auth.algorithms,
        leeway=auth.leeway,
        max_lifetime=auth.max_lifetime,
        jwks_cache=JwksCache(
            lifespan=auth.jwks_cache_seconds, min_refetch_interval=auth.jwks_min_refetch_seconds
        ),
        remember_jti=lambda iss, jti, expires: store.remember_token(replay_key(iss, jti), expires),
    )
