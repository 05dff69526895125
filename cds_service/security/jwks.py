"""JWK Sets: what makes one a usable public key set, and the cache of those fetched from ``jku``.

Trusted-clients files hold sets inline or in a file; a ``jku`` client's set is fetched from its
allowlisted URLs, cached, and fetched again once, rate-limited, for an unknown ``kid``. The fetch
uses the one outbound HTTP configuration (:mod:`cds_service.fhir.http`): nothing from the
environment (proxies, ``.netrc``), no cookies kept, no redirects followed, at most 256 KiB.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import jwt
import requests

from cds_service.errors import KeySetUnavailableError
from cds_service.fhir.http import BodyRefusedError, get_streamed, outbound_session, read_capped
from cds_service.fhir.url_policy import parse_outbound

logger = logging.getLogger(__name__)

_JWKS_MAX_BYTES = 256 * 1024
_FETCH_WORKERS = 2


def jwk_set_keys(jwks: Any) -> dict[str, dict[str, Any]]:
    """kid -> key of a public JWK Set; ValueError when it is not one."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise ValueError("a JWK Set needs a non-empty 'keys' array")
    keys: dict[str, dict[str, Any]] = {}
    for index, key in enumerate(jwks["keys"]):
        if not isinstance(key, dict) or not isinstance(key.get("kid"), str) or not key["kid"]:
            raise ValueError(f"key {index} has no 'kid'")
        if "d" in key or "k" in key:
            raise ValueError(f"key {index} holds private or symmetric key material")
        if key.get("kty") not in ("EC", "RSA"):
            raise ValueError(f"key {index} is not an EC or RSA public key")
        if key["kid"] in keys:
            raise ValueError(f"kid {key['kid']!r} appears twice")
        try:
            jwt.PyJWK(key, _default_algorithm(key))
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            raise ValueError(f"key {index} is not a usable public key") from None
        keys[key["kid"]] = key
    return keys


def _default_algorithm(key: Mapping[str, Any]) -> str:
    if isinstance(key.get("alg"), str):
        return str(key["alg"])
    if key.get("kty") == "EC":
        return {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}.get(str(key.get("crv")), "")
    return "RS384"


@dataclass
class _CachedSet:
    keys: dict[str, dict[str, Any]]
    fetched_at: float


def _fetch_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=_FETCH_WORKERS, thread_name_prefix="jwks-fetch")


def _fetch_session() -> requests.Session:
    return outbound_session(pool_size=_FETCH_WORKERS)


@dataclass
class JwksCache:
    """JWK Sets fetched from allowlisted ``jku`` URLs, cached; refetched on an unknown kid.

    A fetch takes at most ``timeout`` seconds, however slowly the endpoint answers (it runs in
    a small pool; the caller stops waiting). When a refetch fails, the cached set is used for as
    long as it is kept (stale if error); with no set at all, :class:`KeySetUnavailableError`.
    """

    lifespan: float = 300.0
    min_refetch_interval: float = 10.0
    timeout: float = 3.0
    session: requests.Session = field(default_factory=_fetch_session)
    _sets: dict[str, _CachedSet] = field(default_factory=dict)
    _last_fetch: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pool: ThreadPoolExecutor = field(default_factory=_fetch_pool)

    def key(self, url: str, kid: str) -> dict[str, Any] | None:
        """The key ``kid`` of the set at ``url``; fetch when stale, or once more when unknown."""
        now = time.monotonic()
        with self._lock:
            cached = self._sets.get(url)
            wanted = (
                cached is None or now - cached.fetched_at > self.lifespan or kid not in cached.keys
            )
            # Every fetch is rate-limited, so unknown kids cannot make us hammer the client.
            if wanted and now - self._last_fetch.get(url, -1e9) >= self.min_refetch_interval:
                cached = self._fetch(url, now)
            if cached is None:  # never fetched: the token cannot be checked now, nor refused
                next_fetch = self._last_fetch[url] + self.min_refetch_interval
                raise KeySetUnavailableError(max(1, math.ceil(next_fetch - time.monotonic())))
            return cached.keys.get(kid)

    def _fetch(self, url: str, now: float) -> _CachedSet | None:
        self._last_fetch[url] = now
        try:
            body = self._pool.submit(self._download, url).result(timeout=self.timeout)
            keys = jwk_set_keys(json.loads(body))
        except TimeoutError:
            logger.warning("JWK Set not fetched", extra={"jku": url, "reason": "timed out"})
            return self._sets.get(url)
        except (requests.RequestException, BodyRefusedError, ValueError) as exc:
            logger.warning("JWK Set not fetched", extra={"jku": url, "reason": str(exc)[:100]})
            return self._sets.get(url)
        self._sets[url] = _CachedSet(keys, now)
        return self._sets[url]

    def _download(self, url: str) -> bytes:
        """The body at ``url`` (at most ``_JWKS_MAX_BYTES``), given up on after ``timeout``."""
        deadline = time.monotonic() + self.timeout
        outbound = parse_outbound(url)  # an UnsafeUrlError is a ValueError: logged, not fetched
        with get_streamed(self.session, outbound, self.timeout) as response:
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code}")
            return read_capped(response, _JWKS_MAX_BYTES, deadline)
