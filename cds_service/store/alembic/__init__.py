"""Alembic migrations of the service's database (``cds-service db upgrade``)."""
