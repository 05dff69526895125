"""Whether this process is draining: told to stop, still serving, no longer ready.

A load balancer (or Kubernetes) needs a while to stop sending traffic to an instance that is
leaving. The serving worker (:mod:`cds_service.cli.worker`) marks its process draining when
gunicorn passes on a SIGTERM and keeps serving for the drain period; ``/readyz`` answers 503
meanwhile, so health checks take the instance out before it stops accepting connections.

A module-level flag, not Flask state: the worker's signal handler sets it before any request
asks, and each worker process is told (and drains) on its own.
"""

from __future__ import annotations

import threading

_draining = threading.Event()


def begin() -> None:
    """Mark this process draining (it never becomes ready again: it is stopping)."""
    _draining.set()


def is_draining() -> bool:
    """True once this process was told to stop."""
    return _draining.is_set()
