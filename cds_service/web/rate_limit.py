"""A per-client rate limit on hook calls and feedback (``CDS_RATE_LIMIT_PER_MINUTE``).

A token bucket per client: the verified issuer (and tenant) when the request carried a good JWT,
else the address it came from. A request that finds the bucket empty is answered 429 with
``Retry-After`` (the seconds until a token is back) and counted in ``cds_requests_limited_total``.
Buckets live in the worker process (each worker limits on its own, so a client may reach the limit
times the number of workers); at most ``MAX_TRACKED_CLIENTS`` are kept, the least recently seen
going first, so many addresses cannot grow the memory.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask, g, request

from cds_service.errors import RateLimitedError
from cds_service.web import metrics

LIMITED_ENDPOINTS = frozenset({"cds.call_service", "cds.feedback"})
MAX_TRACKED_CLIENTS = 10_000


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """``per_minute`` requests a minute per client, in bursts of at most ``burst``."""

    def __init__(
        self, per_minute: int, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def wait_seconds(self, client: str) -> int:
        """0 when ``client`` may go on now (a token is taken); else whole seconds to wait."""
        now = self.clock()
        with self._lock:
            bucket = self._buckets.pop(client, None) or _Bucket(self.burst, now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            self._buckets[client] = bucket
            if len(self._buckets) > MAX_TRACKED_CLIENTS:
                self._buckets.popitem(last=False)
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0
            return max(1, math.ceil((1.0 - bucket.tokens) / self.rate))


def init_app(app: Flask, blueprint: str, limiter: RateLimiter) -> None:
    """Limit the hook call and feedback endpoints of ``app``: after the ``blueprint``'s own
    before-request functions (authentication), so a verified client is limited by its issuer."""

    def _limit() -> None:
        if request.endpoint not in LIMITED_ENDPOINTS:
            return
        client = g.get("cds_client")
        key = f"iss:{client.iss}|{client.tenant or ''}" if client else f"addr:{request.remote_addr}"
        wait = limiter.wait_seconds(key)
        if wait:
            metrics.LIMITED.labels(request.endpoint).inc()
            raise RateLimitedError(wait)

    app.before_request_funcs.setdefault(blueprint, []).append(_limit)
