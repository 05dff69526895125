"""The one outbound HTTP configuration: every call the service makes goes through it.

Two callers share it, the FHIR fetch (:mod:`cds_service.fhir.client`) and the JWK Set fetch
(:mod:`cds_service.security.jwks`), so both call out the same way: nothing is taken from the
environment (no proxies, no ``.netrc`` credentials, no CA bundle variables), no cookie is ever
kept, no retries, redirects are never followed, and a body is read only up to a size cap and a
deadline. Each caller keeps its own timeouts and limits; every URL has passed the one outbound-URL
policy (:mod:`cds_service.fhir.url_policy`) first.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from http.cookiejar import DefaultCookiePolicy

import requests
from requests.adapters import HTTPAdapter

from cds_service.fhir.url_policy import OutboundUrl

CHUNK_BYTES = 16 * 1024


class BodyRefusedError(Exception):
    """A response body that :func:`read_capped` stopped reading."""


class BodyTooLargeError(BodyRefusedError):
    """The body is larger than the cap (by its Content-Length, or as it was read)."""

    def __init__(self) -> None:
        super().__init__("too large")


class BodyTooSlowError(BodyRefusedError):
    """The body was still arriving when the deadline passed."""

    def __init__(self) -> None:
        super().__init__("too slow")


def outbound_session(pool_size: int) -> requests.Session:
    """A session that keeps up to ``pool_size`` connections per host for reuse."""
    session = requests.Session()
    session.trust_env = False  # no proxy or .netrc credentials picked up from the environment
    # A session serves every hook call of the process: a cookie set during one patient's call
    # must never ride along on another's, so cookies are refused outright.
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def get_streamed(
    session: requests.Session,
    url: OutboundUrl,
    timeout: float | tuple[float, float],
    headers: Mapping[str, str] | None = None,
) -> requests.Response:
    """GET ``url`` without following a redirect; the body is left for :func:`read_capped`.

    Only an :class:`OutboundUrl` is taken: every call has passed the outbound-URL policy, and the
    text sent is its normalised form."""
    return session.get(
        str(url), headers=headers, timeout=timeout, allow_redirects=False, stream=True
    )


def read_capped(response: requests.Response, max_bytes: int, deadline: float) -> bytes:
    """The body of ``response``: at most ``max_bytes``, read before ``deadline`` (monotonic).

    :class:`BodyTooLargeError` when it is larger (a declared Content-Length is believed, so such a
    body is not read at all), :class:`BodyTooSlowError` when it is still arriving at the deadline.
    """
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLargeError
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(CHUNK_BYTES):
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLargeError
        if time.monotonic() > deadline:
            raise BodyTooSlowError
        chunks.append(chunk)
    return b"".join(chunks)
