"""The HTTP layer: Flask views for discovery, hooks, feedback and questionnaires; token checks and
the audit record around a hook call; ops endpoints (health, readiness, metrics, report, OpenAPI);
the card playground; the explanation page each card links to; the admission gate and the
per-client rate limit; request ids and access logs (refused requests sampled); Prometheus
metrics; and the accessor for the application's state.

The only subpackage that imports Flask. Views stay thin: they parse, call :mod:`cds_service.engine`,
record, and answer. May import every layer below it (engine, rules, config, rulepack, store,
security, protocol, fhir, errors, logs).
"""
