# Multi-stage image: the build stage makes the wheel (it carries the rule pack and the fixtures),
# the runtime stage installs only that wheel and its dependencies and runs as a non-root user in
# the production profile. Configure with CDS_* variables (docs/configuration.md, docs/container.md).
#
# Both stages use the same exact Python tag. For reproducible builds, pin the digest too:
#   FROM python:3.11.14-slim-bookworm@sha256:<digest>
# (the digest printed by `docker buildx imagetools inspect python:3.11.14-slim-bookworm`).
#
# tests/test_container.py replays the RUN steps of both stages in fresh virtualenvs, so they use
# paths relative to WORKDIR and each RUN of the runtime stage does one thing.

FROM python:3.11.14-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cds_service ./cds_service
COPY cards ./cards
COPY fhir_fixtures ./fhir_fixtures
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir dist .

FROM python:3.11.14-slim-bookworm AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CDS_PROFILE=production \
    CDS_DATABASE_URL=sqlite:////var/lib/cds-service/cds_service.sqlite3
COPY --from=build /src/dist/ /tmp/wheels/
RUN python -m pip install --no-cache-dir /tmp/wheels/*.whl && rm -rf /tmp/wheels
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/cds-service --create-home \
    --shell /usr/sbin/nologin cds
USER 10001:10001
WORKDIR /var/lib/cds-service
EXPOSE 8080
# Liveness only (/readyz also checks the database). slim images have no curl: Python's urllib.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"]
# CDS_PUBLIC_BASE_URL (https) and CDS_TRUSTED_CLIENTS must be set at run time (production profile);
# `cds-service db upgrade` creates or migrates the schema before the first start.
CMD ["cds-service", "serve", "--host", "0.0.0.0", "--port", "8080", "--workers", "2"]
