"""Load shedding: a bounded number of hook calls and feedback posts run at once per process.

Bursts queue: a call waits for one of ``CDS_MAX_CONCURRENT_CALLS`` slots, and is refused (503
with ``Retry-After``) only when it could not start within ``CDS_QUEUE_TIMEOUT_SECONDS`` of its
arrival. A CDS client that does not retry shows the clinician nothing for a 503, so the deadline
is set for real overload (the service cannot keep up for seconds), not for a burst that a few
milliseconds of queueing absorb. Health, readiness, metrics and discovery are never held back,
so probes see the truth.
"""

from __future__ import annotations

import threading

from flask import Flask, g, request

from cds_service.errors import OverloadedError
from cds_service.web import metrics
from cds_service.web.observability import elapsed_ms

GUARDED_ENDPOINTS = frozenset({"cds.call_service", "cds.feedback"})


class AdmissionGate:
    """At most ``capacity`` holders; others wait up to ``wait_seconds`` and are then refused."""

    def __init__(self, capacity: int, wait_seconds: float) -> None:
        self.capacity = capacity
        self.wait_seconds = wait_seconds
        self._slots = threading.BoundedSemaphore(capacity)

    def enter(self, waited: float = 0.0) -> bool:
        """Take a slot; False when none freed up by the deadline (``waited``: seconds the
        request has already spent since it arrived)."""
        return self._slots.acquire(timeout=max(self.wait_seconds - waited, 0.0))

    def leave(self) -> None:
        self._slots.release()


def init_app(app: Flask, gate: AdmissionGate) -> None:
    """Guard the hook call and feedback endpoints of ``app`` with ``gate``."""

    @app.before_request
    def _admit() -> None:
        if request.endpoint not in GUARDED_ENDPOINTS:
            return
        if not gate.enter(elapsed_ms() / 1000):
            metrics.SHED.labels(request.endpoint).inc()
            raise OverloadedError(
                "The service is at capacity; the request was not processed. Retry shortly."
            )
        g.admitted = True

    @app.teardown_request
    def _release(_error: BaseException | None) -> None:
        if g.pop("admitted", False):
            gate.leave()
