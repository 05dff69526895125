"""Run the app under gunicorn from Python (``cds-service serve``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from cds_service.config import Settings
from cds_service.storage import create_database_engine, create_schema


class _Gunicorn(BaseApplication):  # type: ignore[misc]  # gunicorn ships no type hints
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        from cds_service import create_app

        return create_app()


def serve(
    settings: Settings,
    host: str,
    port: int,
    workers: int,
    timeout: int,
    tls: tuple[Path, Path] | None = None,
) -> None:
    """Create the schema once, then start ``workers`` sync workers, each with its own app.

    With ``tls`` (certificate and key files) gunicorn serves HTTPS itself.
    """
    engine = create_database_engine(settings.database_url)
    create_schema(engine)
    engine.dispose()  # workers open their own connections after the fork
    options: dict[str, Any] = {}
    if tls is not None:
        options = {"certfile": str(tls[0]), "keyfile": str(tls[1])}
    _Gunicorn(
        options
        | {
            "bind": f"{host}:{port}",
            "workers": workers,
            "worker_class": "sync",
            "timeout": timeout,
            "graceful_timeout": timeout,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "warning",
            "proc_name": "cds-service",
        }
    ).run()
