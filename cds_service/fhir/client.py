"""Fetch what the CDS client did not prefetch, from its FHIR server. All FHIR I/O lives here.

One :class:`FhirFetcher` per process holds a pooled ``requests.Session`` (from
:mod:`cds_service.fhir.http`, the one outbound HTTP configuration) and a bounded thread pool. Each
hook call gets one overall deadline; the fetches of a round run concurrently, every request with
connect and read timeouts no longer than what is left of the deadline. A fetch never raises:
it yields data or a failure *kind* (``timeout``, ``http-404``, ``not-json`` ...), which the caller
turns into a 412 or into a "not checked" note on the cards.

Outbound safety: every URL goes through the one outbound-URL policy
(:mod:`cds_service.fhir.url_policy`): only servers at or below an allowed base URL are called
(``https`` only in production, ``CDS_FHIR_SERVER_ALLOWLIST``), compared by structure after dot
segments are resolved; each query, ``next`` link included, is called only when its normalised URL
is still below the same base; redirects are never followed; bodies are read up to a size cap; the
access token goes into the ``Authorization`` header and nowhere else (never logged, never stored,
never in an error).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any

import requests

from cds_service.fhir.http import (
    BodyTooLargeError,
    BodyTooSlowError,
    get_streamed,
    outbound_session,
    read_capped,
)
from cds_service.fhir.json_limits import nested_deeper_than
from cds_service.fhir.url_policy import (
    OutboundUrl,
    UnsafeUrlError,
    is_allowed,
    parse_base,
    parse_outbound,
)

ACCEPT = "application/fhir+json, application/json;q=0.9"


@dataclass(frozen=True)
class FetchPolicy:
    """Limits and rules for outbound FHIR requests (from ``CDS_FHIR_*`` settings)."""

    allowlist: tuple[str, ...] = ()  # base URLs (url_policy); empty allows any
    https_only: bool = False
    refuse_all: bool = False  # production without an allowlist: no FHIR server is called
    loopback_alike: bool = False  # development: localhost, 127.0.0.1 and ::1 are one host
    connect_timeout: float = 1.0
    read_timeout: float = 2.5
    deadline: float = 3.0
    max_pages: int = 5
    max_response_bytes: int = 10 * 1024 * 1024
    max_concurrency: int = 16


@dataclass
class FetchStats:
    """What one hook call fetched: counts and kinds only, never data, URLs or tokens."""

    keys_requested: int = 0
    keys_fetched: int = 0
    references_requested: int = 0
    references_fetched: int = 0
    rounds: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    elapsed_ms: float = 0.0
    queries: list[tuple[str, float]] = field(default_factory=list)  # (outcome, seconds) each

    def as_log(self) -> dict[str, Any]:
        """A flat, PHI-free summary for the log line and later metrics."""
        return {
            "keys_requested": self.keys_requested,
            "keys_fetched": self.keys_fetched,
            "references_requested": self.references_requested,
            "references_fetched": self.references_fetched,
            "rounds": self.rounds,
            "failures": dict(sorted(self.failures.items())),
            "elapsed_ms": round(self.elapsed_ms, 1),
        }


@dataclass(frozen=True)
class Fetched:
    """The result of one query: a FHIR resource (or merged Bundle), or why there is none."""

    value: dict[str, Any] | None = None
    failure: str | None = None
    truncated: bool = False  # a searchset had more pages than the cap allowed
    absent: bool = False  # a read answered 404: the resource does not exist (no data)
    seconds: float = 0.0  # from sending the query to its last page

    @property
    def outcome(self) -> str:
        """``ok``, ``not-found`` or the failure kind: a closed set, for counting."""
        return self.failure or ("not-found" if self.absent else "ok")


class _Failure(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class FhirFetcher:
    """Runs the queries of one hook call against the client's FHIR server."""

    def __init__(self, policy: FetchPolicy, session: requests.Session | None = None) -> None:
        self.policy = policy
        self.session = session or outbound_session(policy.max_concurrency)
        self._pool: ThreadPoolExecutor | None = None

    def refusal(self, base_url: str, also_allowed: Sequence[str] = ()) -> str | None:
        """Why ``base_url`` may not be called (a failure kind), or None when it may.

        ``also_allowed`` adds base URLs (those of the authenticated client's trust entry) to the
        configured allowlist; https is still required in production.
        """
        try:
            base = parse_base(base_url)
        except UnsafeUrlError:
            return "invalid-fhir-server"
        if self.policy.https_only and base.scheme != "https":
            return "not-allowed"
        alike = self.policy.loopback_alike
        if is_allowed(base, tuple(also_allowed), loopback_alike=alike):
            return None
        allowed = self.policy.allowlist
        if self.policy.refuse_all or (
            allowed and not is_allowed(base, allowed, loopback_alike=alike)
        ):
            return "not-allowed"
        return None

    def fetch_round(
        self,
        base_url: str,
        token: str | None,
        queries: Mapping[str, str],
        deadline: float,
        stats: FetchStats,
    ) -> dict[str, Fetched]:
        """Run ``queries`` (key -> relative FHIR URL) concurrently; stop waiting at ``deadline``."""
        if not queries:
            return {}
        stats.rounds += 1
        base = parse_base(base_url)  # refusal() has passed it
        sent = time.monotonic()
        futures: dict[Future[Fetched], str] = {
            self._executor().submit(self._timed_get, base, query, token, deadline): key
            for key, query in queries.items()
        }
        results: dict[str, Fetched] = {}
        pending = set(futures)
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            done, pending = wait(pending, timeout=remaining, return_when=FIRST_COMPLETED)
            for future in done:
                results[futures[future]] = future.result()
        for future in pending:  # still running at the deadline: abandoned, bounded by timeouts
            future.cancel()
            results[futures[future]] = Fetched(failure="deadline", seconds=deadline - sent)
        for result in results.values():
            stats.queries.append((result.outcome, result.seconds))
            if result.outcome != "ok":
                stats.failures[result.outcome] += 1
        return results

    def close(self) -> None:
        """Release the pool and the connections."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self.session.close()

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self.policy.max_concurrency, thread_name_prefix="fhir-fetch"
            )
        return self._pool

    def _timed_get(
        self, base: OutboundUrl, query: str, token: str | None, deadline: float
    ) -> Fetched:
        started = time.monotonic()
        fetched = self._get(base, query, token, deadline)
        return replace(fetched, seconds=time.monotonic() - started)

    def _get(self, base: OutboundUrl, query: str, token: str | None, deadline: float) -> Fetched:
        """GET a relative query, or an absolute ``next`` link below ``base``."""
        absolute = query.startswith(("http://", "https://"))
        expect_bundle = absolute or "?" in query or "/" not in query.strip("/")
        try:
            url = _below(base, query)
            try:
                document = self._get_json(url, token, deadline)
            except _Failure as failure:
                if failure.kind == "http-404" and not expect_bundle:
                    return Fetched(absent=True)
                raise
            if not expect_bundle:
                return Fetched(_checked_resource(document, query.split("/")[0]))
            return self._collect_pages(base, document, token, deadline)
        except _Failure as failure:
            return Fetched(failure=failure.kind)

    def _collect_pages(
        self, base: OutboundUrl, first: dict[str, Any], token: str | None, deadline: float
    ) -> Fetched:
        bundle = _checked_resource(first, "Bundle")
        entries = list(bundle.get("entry") or [])
        page = bundle
        for _ in range(self.policy.max_pages - 1):
            next_url = next_link(page)
            if next_url is None:
                break
            try:
                url = _below(base, next_url)
            except _Failure:
                return Fetched(_merged(bundle, entries), truncated=True)
            page = _checked_resource(self._get_json(url, token, deadline), "Bundle")
            entries.extend(page.get("entry") or [])
        else:
            if next_link(page) is not None:
                return Fetched(_merged(bundle, entries), truncated=True)
        return Fetched(_merged(bundle, entries))

    def _get_json(self, url: OutboundUrl, token: str | None, deadline: float) -> dict[str, Any]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Failure("deadline")
        headers = {"Accept": ACCEPT}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        timeout = (
            min(self.policy.connect_timeout, remaining),
            min(self.policy.read_timeout, remaining),
        )
        try:
            with get_streamed(self.session, url, timeout, headers) as response:
                body = self._json_body(response, deadline)
        except requests.Timeout:
            raise _Failure("timeout") from None
        except requests.ConnectionError:
            raise _Failure("connection") from None
        except requests.RequestException:
            raise _Failure("request-error") from None
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise _Failure("not-json") from None
        if not isinstance(document, dict) or nested_deeper_than(document):
            raise _Failure("not-fhir")
        return document

    def _json_body(self, response: requests.Response, deadline: float) -> bytes:
        """The body of a 200 answer in JSON, read up to the size cap and the deadline."""
        if response.status_code != 200:
            raise _Failure(_status_kind(response.status_code))
        content_type = response.headers.get("Content-Type", "")
        if "json" not in content_type:
            raise _Failure("not-json")
        try:
            return read_capped(response, self.policy.max_response_bytes, deadline)
        except BodyTooLargeError:
            raise _Failure("too-large") from None
        except BodyTooSlowError:
            raise _Failure("deadline") from None


def _below(base: OutboundUrl, query: str) -> OutboundUrl:
    """The URL of ``query`` (relative to ``base``, or an absolute link), normalised; a
    ``foreign-link`` failure unless it is at or below ``base``."""
    try:
        if query.startswith(("http://", "https://")):
            url = parse_outbound(query)
        else:
            url = base.child(query)
    except UnsafeUrlError:
        raise _Failure("foreign-link") from None
    if not url.is_within(base):
        raise _Failure("foreign-link")
    return url


def _status_kind(status: int) -> str:
    if status in (401, 403, 404):
        return f"http-{status}"
    if 300 <= status < 400:
        return "redirect"
    if 400 <= status < 500:
        return "http-4xx"
    return "http-5xx"


def _checked_resource(document: dict[str, Any], expected_type: str) -> dict[str, Any]:
    resource_type = document.get("resourceType")
    if resource_type == "OperationOutcome":
        raise _Failure("operation-outcome")
    if resource_type != expected_type:
        raise _Failure("not-fhir")
    return document


def next_link(bundle: Mapping[str, Any]) -> str | None:
    """The ``next`` page of a searchset Bundle, if any."""
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next" and link.get("url"):
            return str(link["url"])
    return None


def _merged(first: dict[str, Any], entries: list[Any]) -> dict[str, Any]:
    merged = {key: value for key, value in first.items() if key not in ("entry", "link")}
    if entries:
        merged["entry"] = entries
    return merged
