"""The data of one hook call: what the client prefetched, plus what we fetch ourselves.

CDS Hooks: a prefetch key that is absent (or holds an OperationOutcome, a failed prefetch) means
"go and get it from ``fhirServer``"; a key sent as ``null`` means "no data" and is not fetched.
Round 1 runs the missing templates; round 2 reads the references the rules follow (removed Devices,
operative notes, the Claim's Coverage, the Coverage's payer) that are not in hand. When a required
key cannot be had the call is a 412 naming the key and the reason; optional data that cannot be
had is reported on the cards as "not checked".
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cds_service.errors import PrefetchUnavailableError
from cds_service.fhir.client import Fetched, FetchStats, FhirFetcher, next_link
from cds_service.fhir.queries import references_to_resolve, render_prefetch_template
from cds_service.fhir.resources import MODELS, iter_resources
from cds_service.protocol.models import HookRequest
from cds_service.rulepack.models import ServiceDefinition

# Why data could not be obtained, in words for the 412 diagnostics and the cards.
REASONS: dict[str, str] = {
    "not-prefetched": "not prefetched, and no FHIR access was configured for this call",
    "no-fhir-server": "not prefetched, and the request names no fhirServer",
    "not-allowed": "not prefetched, and fhirServer is not an allowed FHIR server",
    "invalid-fhir-server": "not prefetched, and fhirServer is not a valid URL",
    "unresolved-token": "its query needs a context value the request does not carry",
    "timeout": "the FHIR server did not answer in time",
    "deadline": "the time allowed for fetching ran out",
    "connection": "the FHIR server could not be reached",
    "http-401": "the FHIR server refused the access token (401)",
    "http-403": "the FHIR server denied access (403)",
    "http-404": "the FHIR server did not find it (404)",
    "http-4xx": "the FHIR server rejected the query",
    "http-5xx": "the FHIR server failed (5xx)",
    "redirect": "the FHIR server answered with a redirect, which is not followed",
    "not-json": "the FHIR server's answer was not JSON",
    "not-fhir": "the FHIR server's answer was not the expected FHIR resource",
    "operation-outcome": "the FHIR server answered with an OperationOutcome",
    "too-large": "the FHIR server's answer was larger than allowed",
    "request-error": "the request to the FHIR server failed",
    "foreign-link": "a query or paging link pointed away from the FHIR server, and was not sent",
}
REFERENCES_KEY = "(resolved references)"
# References are read only for resource types the rules read: Device and DocumentReference for the
# removal and documentation findings, Coverage and its payer Organization for the payer note.
# Round 2 is the last: references found in what it read (the payer of a Coverage read by
# reference) are not followed (docs/fetching.md).
RULE_INPUT_TYPES = frozenset(MODELS)
MAX_REFERENCES = 50


@dataclass(frozen=True)
class HookData:
    """Everything the rules may read for one call, and what could not be had."""

    values: dict[str, Any]  # declared prefetch key -> resource or Bundle
    not_checked: dict[str, str]  # name of the missing data -> failure kind
    truncated: tuple[str, ...] = ()  # keys whose search had more pages than allowed
    fetch_stats: FetchStats | None = None


def split_prefetch(
    service: ServiceDefinition, prefetch: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """The usable prefetch values, and the declared keys that must be fetched."""
    usable: dict[str, Any] = {}
    missing: list[str] = []
    for key in service.prefetch:
        if key in prefetch and prefetch[key] is None:
            continue
        value = prefetch.get(key)
        if isinstance(value, dict) and value.get("resourceType") not in (None, "OperationOutcome"):
            usable[key] = value
        else:
            missing.append(key)
    return usable, missing


def gather(
    service: ServiceDefinition,
    request: HookRequest,
    fetcher: FhirFetcher | None,
    also_allowed: Sequence[str] = (),
    stats_to_fill: FetchStats | None = None,
) -> HookData:
    """Prefetched data completed from ``fhirServer``; 412 when required data cannot be had.

    The fetch statistics go into ``stats_to_fill`` when given, so they survive a 412.
    """
    values, missing = split_prefetch(service, request.prefetch or {})
    data = HookData(values, {})
    server = request.fhirServer
    refusal = _refusal(fetcher, server, also_allowed)
    if refusal is not None:
        data = HookData(values, dict.fromkeys(missing, refusal))
    elif fetcher is not None and server is not None:
        stats = stats_to_fill if stats_to_fill is not None else FetchStats()
        data = _completed_from(fetcher, server, service, request, values, missing, stats)
    _require(service, data.not_checked)
    return data


def _completed_from(
    fetcher: FhirFetcher,
    server: str,
    service: ServiceDefinition,
    request: HookRequest,
    values: dict[str, Any],
    missing: Sequence[str],
    stats: FetchStats,
) -> HookData:
    """``values`` completed from ``server`` in two rounds, counted in ``stats``.

    Round 1 fetches the missing keys and the other pages of a paginated prefetch; round 2 reads
    the references the rules follow.
    """
    started = time.monotonic()
    deadline = started + fetcher.policy.deadline
    token = request.fhirAuthorization.access_token if request.fhirAuthorization else None
    queries, continued = _continued_pages(values)
    not_checked: dict[str, str] = {}
    for key in missing:
        query = render_prefetch_template(service.prefetch[key].template, request.context)
        if query is None:
            not_checked[key] = "unresolved-token"
        else:
            queries[key] = query
    stats.keys_requested = len(queries)
    results = fetcher.fetch_round(server, token, queries, deadline, stats)
    truncated = _take_round_one(results, continued, values, not_checked, stats)
    resolved = _resolve_references(fetcher, server, token, values, deadline, stats)
    not_checked |= resolved.not_checked
    if resolved.values:
        values[REFERENCES_KEY] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": resource} for resource in resolved.values.values()],
        }
    stats.elapsed_ms = (time.monotonic() - started) * 1000
    return HookData(values, not_checked, tuple(truncated), stats)


def _continued_pages(
    values: Mapping[str, Any],
) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """The client paginated its prefetch: the ``next`` link of each such key, and its first page."""
    queries: dict[str, str] = {}
    continued: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        link = next_link(value) if value.get("resourceType") == "Bundle" else None
        if link is not None:
            continued[key] = value
            queries[key] = link
    return queries, continued


def _take_round_one(
    results: Mapping[str, Fetched],
    continued: Mapping[str, dict[str, Any]],
    values: dict[str, Any],
    not_checked: dict[str, str],
    stats: FetchStats,
) -> list[str]:
    """Put round 1's results in ``values`` (or ``not_checked``); the keys left truncated."""
    truncated: list[str] = []
    for key, fetched in results.items():
        if fetched.value is not None:
            values[key] = _joined(continued.get(key), fetched.value)
            stats.keys_fetched += 1
            if fetched.truncated:
                truncated.append(key)
        elif key in continued:
            truncated.append(key)
        elif not fetched.absent:  # an absent read is a resource that does not exist: no data
            not_checked[key] = fetched.failure or "request-error"
    return truncated


def _joined(first_page: dict[str, Any] | None, rest: dict[str, Any]) -> dict[str, Any]:
    """A prefetched first page followed by the pages fetched after it."""
    if first_page is None:
        return rest
    entries = [*(first_page.get("entry") or []), *(rest.get("entry") or [])]
    joined = {key: value for key, value in first_page.items() if key not in ("entry", "link")}
    return joined | ({"entry": entries} if entries else {})


def _refusal(
    fetcher: FhirFetcher | None, server: str | None, also_allowed: Sequence[str]
) -> str | None:
    if fetcher is None:
        return "not-prefetched"
    if not server:
        return "no-fhir-server"
    return fetcher.refusal(server, also_allowed)


def _resolve_references(
    fetcher: FhirFetcher,
    server: str,
    token: str | None,
    values: Mapping[str, Any],
    deadline: float,
    stats: FetchStats,
) -> HookData:
    """Round 2: read the referenced resources the rules need that are not in hand."""
    in_hand = [resource for value in values.values() for resource in iter_resources(value)]
    have = {f"{resource.get('resourceType')}/{resource.get('id')}" for resource in in_hand}
    wanted = sorted(
        reference
        for reference in references_to_resolve(in_hand) - have
        if reference.split("/")[0] in RULE_INPUT_TYPES
    )[:MAX_REFERENCES]
    stats.references_requested = len(wanted)
    results: dict[str, Fetched] = fetcher.fetch_round(
        server, token, {reference: reference for reference in wanted}, deadline, stats
    )
    found: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for reference, fetched in sorted(results.items()):
        if fetched.value is not None:
            found[reference] = fetched.value
        else:
            # Named by type only: a resource id can be an identifier worth keeping out of cards.
            kind = "http-404" if fetched.absent else fetched.failure or "request-error"
            failed.setdefault(f"referenced {reference.split('/')[0]}", kind)
    stats.references_fetched = len(found)
    return HookData(found, failed)


def _require(service: ServiceDefinition, not_checked: Mapping[str, str]) -> None:
    problems = [
        f"'{key}' ({entry.template}): {REASONS.get(not_checked[key], not_checked[key])}"
        for key, entry in service.prefetch.items()
        if entry.required and key in not_checked
    ]
    if problems:
        raise PrefetchUnavailableError(
            "Required data could not be obtained: " + "; ".join(problems) + "."
        )
