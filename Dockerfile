# Multi-stage image: build the wheel (it carries the rule pack), install it into a slim runtime,
# run as a non-root user. Configure with CDS_* variables (see README).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cds_service ./cds_service
COPY cards ./cards
RUN python -m pip install --no-cache-dir build \
    && python -m build --wheel --outdir /dist .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CDS_PROFILE=production \
    CDS_DATABASE_URL=sqlite:////var/lib/cds-service/cds_service.sqlite3
COPY --from=build /dist/*.whl /tmp/
RUN python -m pip install --no-cache-dir /tmp/*.whl \
    && rm /tmp/*.whl \
    && useradd --system --home-dir /var/lib/cds-service --create-home cds
USER cds
WORKDIR /var/lib/cds-service
EXPOSE 8080
# CDS_PUBLIC_BASE_URL (https) must be set at run time in the production profile.
CMD ["cds-service", "serve", "--host", "0.0.0.0", "--port", "8080", "--workers", "2"]
