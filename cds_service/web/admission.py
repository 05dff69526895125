"""Load shedding: a bounded number of hook calls and feedback posts run at once per process.

A CDS client waits for cards inside the clinician's signing workflow and gives up after a few
seconds, so a request that would sit in a queue past that point is worth less than a fast 503
with ``Retry-After``: the EHR shows nothing and moves on, and the service catches up. Requests
wait at most ``CDS_QUEUE_TIMEOUT_SECONDS`` for one of ``CDS_MAX_CONCURRENT_CALLS`` slots.
Health, readiness, metrics and discovery are never held back, so probes see the truth.
"""

from __future__ import annotations

import threading

from flask import Flask, g, request

from cds_service.errors import OverloadedError
from cds_service.web import metrics

GUARDED_ENDPOINTS = frozenset({"cds.call_service", "cds.feedback"})


class AdmissionGate:
    """At most ``capacity`` holders; others wait up to ``wait_seconds`` and are then refused."""

    def __init__(self, capacity: int, wait_seconds: float) -> None:
        self.capacity = capacity
        self.wait_seconds = wait_seconds
        self._slots = threading.BoundedSemaphore(capacity)

    def enter(self) -> bool:
        """Take a slot; False when none freed up in time."""
        return self._slots.acquire(timeout=self.wait_seconds)

    def leave(self) -> None:
        self._slots.release()


def init_app(app: Flask, gate: AdmissionGate) -> None:
    """Guard the hook call and feedback endpoints of ``app`` with ``gate``."""

    @app.before_request
    def _admit() -> None:
        if request.endpoint not in GUARDED_ENDPOINTS:
            return
        if not gate.enter():
            metrics.SHED.labels(request.endpoint).inc()
            raise OverloadedError(
                "The service is at capacity; the request was not processed. Retry shortly."
            )
        g.admitted = True

    @app.teardown_request
    def _release(_error: BaseException | None) -> None:
        if g.pop("admitted", False):
            gate.leave()
