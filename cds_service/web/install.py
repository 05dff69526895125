"""Everything the HTTP layer adds to a new Flask app: request ids and access logs, the admission
gate, error handlers, CORS, the blueprints, and the per-client rate limit."""

from __future__ import annotations

from flask import Flask
from flask_cors import CORS

from cds_service.config import Settings
from cds_service.errors import register_error_handlers
from cds_service.web import (
    admission,
    cds_hooks,
    explanation_page,
    observability,
    ops,
    playground,
    rate_limit,
)


def install(app: Flask, settings: Settings) -> None:
    """Register the service's handlers and views on ``app``."""
    observability.init_app(app)
    admission.init_app(
        app, admission.AdmissionGate(settings.max_concurrent_calls, settings.queue_timeout)
    )
    register_error_handlers(app)
    if settings.cors_origins:
        CORS(
            app,
            resources={r"/*": {"origins": list(settings.cors_origins)}},
            send_wildcard=settings.cors_origins == ("*",),
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["X-Request-ID"],
            methods=["GET", "POST", "OPTIONS"],
            allow_private_network=settings.profile == "development",
            max_age=86400,
        )
    app.register_blueprint(cds_hooks.bp)
    app.register_blueprint(cds_hooks.questionnaires)
    app.register_blueprint(ops.bp)
    app.register_blueprint(playground.bp)
    app.register_blueprint(explanation_page.bp)
    if settings.rate_limit_per_minute:
        limiter = rate_limit.RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
        rate_limit.init_app(app, cds_hooks.bp.name, limiter)
