"""Run the app under gunicorn from Python (``cds-service serve``)."""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from wsgiref.types import WSGIApplication

from gunicorn.app.base import BaseApplication
from sqlalchemy.exc import SQLAlchemyError

from cds_service.cli.worker import IntakeLimits, IntakeWorker
from cds_service.config import Settings
from cds_service.logs import configure_logging
from cds_service.store.database import create_database_engine
from cds_service.store.migrations import upgrade_database

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus-client when it is imported


class _Gunicorn(BaseApplication):  # type: ignore[misc]  # gunicorn ships no type hints
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> WSGIApplication:
        from cds_service import create_app

        return create_app()


def serve(
    settings: Settings,
    host: str,
    port: int,
    workers: int,
    timeout: int,
    tls: tuple[Path, Path] | None = None,
    on_ready: Callable[[], None] | None = None,
    threads: int = 16,
    backlog: int = 256,
    max_requests: int = 20_000,
    intake: IntakeLimits | None = None,
    max_connections: int = 1000,
    drain_seconds: float = 0.0,
) -> None:
    """Migrate the schema once (development), then start ``workers`` threaded workers.

    A database that cannot be reached does not stop the service: the failed migration is logged
    and the workers start (they answer 503 where the database is needed until it is back).

    Each worker has ``threads`` threads, more than the admission gate lets work at once
    (CDS_MAX_CONCURRENT_CALLS), so surplus requests reach the gate and get a quick 503 instead
    of waiting unseen in a queue; ``backlog`` bounds the connections waiting to be accepted.

    A worker is replaced after ``max_requests`` requests (plus up to a tenth more, so that the
    workers do not all restart at once; 0: never). spaCy keeps every word it has read in its
    vocabulary for the life of the process (about 3 KB per distinct operative note, measured
    over 5,000 notes), names in the notes among them; a replaced worker starts with the pack's
    words only.

    Requests are read whole by each worker's event loop before a thread sees them, under the
    ``intake`` deadlines and per-source bound (:mod:`cds_service.cli.worker`), so slow or many
    clients cannot hold the threads.

    On SIGTERM each worker drains for ``drain_seconds`` (``/readyz`` 503, calls still served),
    then stops accepting and finishes the requests in flight. gunicorn SIGKILLs workers still
    running ``graceful_timeout`` after the SIGTERM: it is the drain plus ``timeout``, so a call
    that arrives at the end of the drain has its whole ``timeout`` to finish.

    With ``tls`` (certificate and key files) gunicorn serves HTTPS itself. ``on_ready`` runs in
    the master once the socket listens (``cds-service demo`` prints its guide then).
    """
    configure_logging(settings.log_level)
    if settings.profile == "development":  # once here, so the workers find it done
        engine = create_database_engine(settings.database_url)
        try:
            upgrade_database(engine)
        except SQLAlchemyError as exc:
            logging.getLogger(__name__).error(
                "database unreachable at start-up: schema not migrated",
                extra={"error_type": type(exc).__name__},
            )
        finally:
            engine.dispose()  # workers open their own connections after the fork
    prepare_metrics_directory()
    options: dict[str, Any] = {"child_exit": _child_exit}
    if tls is not None:
        options |= {"certfile": str(tls[0]), "keyfile": str(tls[1])}
    if on_ready is not None:
        options["when_ready"] = lambda _arbiter: on_ready()
    _Gunicorn(
        options
        | {
            "bind": f"{host}:{port}",
            "workers": workers,
            "worker_class": _worker_class(
                intake or IntakeLimits(), settings.max_body_bytes, drain_seconds
            ),
            "threads": threads,
            "worker_connections": max_connections,
            "backlog": backlog,
            "max_requests": max_requests,
            "max_requests_jitter": max_requests // 10,
            "timeout": timeout,
            "graceful_timeout": timeout + math.ceil(drain_seconds),
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "warning",
            "proc_name": "cds-service",
        }
    ).run()


def _worker_class(limits: IntakeLimits, max_body: int, drain_seconds: float) -> type[IntakeWorker]:
    """The worker class, carrying the intake limits and the drain period (gunicorn takes a
    class, not an instance)."""
    limits = replace(limits, max_body=max_body)
    return type("CdsWorker", (IntakeWorker,), {"limits": limits, "drain_seconds": drain_seconds})


def prepare_metrics_directory() -> Path:
    """Point prometheus-client at a fresh per-run directory, so ``/metrics`` sums all workers.

    Must run before ``prometheus_client`` is imported (the app imports it after the fork).
    An operator's ``PROMETHEUS_MULTIPROC_DIR`` is used and emptied of the last run's files.
    """
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before the metrics directory was set")
    configured = os.environ.get(MULTIPROC_ENV)
    directory = Path(configured) if configured else Path(tempfile.mkdtemp(prefix="cds-metrics-"))
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(directory)
    return directory


def _child_exit(_server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
