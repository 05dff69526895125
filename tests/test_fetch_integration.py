"""Fetching from a real FHIR server (Medplum, in memory, on loopback) gives the prefetched answer."""

from __future__ import annotations

import copy
import itertools
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from helpers.corpus import FIXTURES, load_fixture, without_uuids
from helpers.fault_server import FaultServer, fault_server
from helpers.medplum import MedplumServer, NodeUnavailable, skip_or_fail_without_node

from cds_service.engine.hook_call import handle_hook_call
from cds_service.fhir.client import FetchPolicy, FhirFetcher
from cds_service.rulepack.models import RulePack
from cds_service.web.app_state import service_state

CASES = {
    "encounter-discharge--tibia-nonunion-removal.json": "cpt20703-encounter-discharge",
    "encounter-discharge--missing-documentation.json": "cpt20703-encounter-discharge",
    "encounter-discharge--orphan-removal-only.json": "cpt20703-encounter-discharge",
    "order-sign--planned-removal-reminder.json": "cpt20703-order-sign",
    "order-sign--prior-insertion-only.json": "cpt20703-order-sign",
}
KEYS = sorted(
    {
        (name, key)
        for name in CASES
        for key, value in load_fixture(name)["prefetch"].items()
        if value is not None
    }
)
STANDARD = "encounter-discharge--tibia-nonunion-removal.json"
REMOVAL = "proc-3b90e4"  # the standard fixture's removal Procedure
OPERATIVE_NOTE = "DocumentReference/docref-op-77a0"  # and its operative note
# Seeded on top of the fixtures: the payer Organization the fixtures' Medicare Coverages name (they
# carry its name as payor.display, so nothing else reads it), and a cancelled copy of the standard
# Coverage that names its payer only by reference (no active-Coverage search returns it).
PAYER = {
    "resourceType": "Organization",
    "id": "org-cms",
    "active": True,
    "name": "Centers for Medicare & Medicaid Services",
}
UNNAMED_PAYER_COVERAGE = "cov-unnamed-payer"
MEDICARE = "medicare"  # the payer profile key of the standard fixture's Coverage
# Injected per FHIR request in the timing tests. Large against what does not shrink with it: the
# Medplum server answers on one Node thread, and its in-memory searches (30-90 ms each for the
# standard fixture's nine) run one after another once the delay is over.
DELAY_MS = 1000


def resources_of(value: dict[str, Any]) -> list[dict[str, Any]]:
    """The resources of a prefetch value (a Bundle's entries, or the resource itself)."""
    if value.get("resourceType") == "Bundle":
        return [entry["resource"] for entry in value.get("entry") or []]
    return [value]


def resource(body: dict[str, Any], key: str, resource_id: str | None = None) -> dict[str, Any]:
    """The resource with ``resource_id`` (or the first one) of prefetch ``key``, to change it."""
    return next(
        found
        for found in resources_of(body["prefetch"][key])
        if resource_id is None or found["id"] == resource_id
    )


def without_payer_name(coverage: dict[str, Any]) -> dict[str, Any]:
    """``coverage`` naming its payer only by the Organization reference (no display, no plan)."""
    for plan in ("type", "class"):
        coverage.pop(plan, None)
    coverage["payor"] = [{"reference": f"Organization/{PAYER['id']}"}]
    return coverage


def extra_seed() -> dict[str, Any]:
    """A seed file (request-fixture shaped) holding :data:`PAYER` and the unnamed-payer Coverage."""
    coverage = without_payer_name(copy.deepcopy(resource(load_fixture(STANDARD), "coverage")))
    coverage |= {"id": UNNAMED_PAYER_COVERAGE, "status": "cancelled"}
    return {"context": {}, "prefetch": {"payer": PAYER, "coverage": coverage}}


@pytest.fixture(scope="module")
def medplum(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MedplumServer]:
    extra = tmp_path_factory.mktemp("seed") / "extra--payer-by-reference.json"
    extra.write_text(json.dumps(extra_seed()), encoding="utf-8")
    try:
        with MedplumServer([*sorted(FIXTURES.glob("*--*.json")), extra]) as server:
            yield server
    except NodeUnavailable as exc:
        skip_or_fail_without_node(exc)


@pytest.fixture(scope="module")
def faults() -> Iterator[FaultServer]:
    with fault_server() as server:
        yield server


@pytest.fixture
def service(
    make_app: Callable[..., Flask], sqlite_url: str, medplum: MedplumServer, faults: FaultServer
) -> Callable[..., Flask]:
    """An app allowed to call the Medplum server and the fault server; ``settings`` add CDS_*."""

    def make(**settings: str) -> Flask:
        allowlist = f"{medplum.base_url},{faults.url}"
        return make_app({"DATABASE_URL": sqlite_url, "FHIR_SERVER_ALLOWLIST": allowlist} | settings)

    return make


@pytest.fixture
def client(service: Callable[..., Flask]) -> FlaskClient:
    return service().test_client()


def recorded_fetch_stats(client: FlaskClient) -> dict[str, Any]:
    """The fetch statistics the audit trail recorded for the client's last hook call."""
    app: Any = client.application
    rows: list[dict[str, Any]] = service_state(app).store.hook_call_rows()
    stats: dict[str, Any] = json.loads(rows[-1]["fetch_stats"])
    return stats


def details(result: Any) -> list[str]:
    return [card["detail"] for card in result["cards"]]


def payer_profiles(result: Any) -> set[str]:
    """The payer profiles the cards' Why links name (the payer the service identified)."""
    return {card["links"][0]["url"].split("?payer=")[1] for card in result["cards"]}


def without_meta(document: Any) -> Any:
    """``document`` without ``meta``: the server stamps versionId/lastUpdated on what it stores."""
    if isinstance(document, dict):
        return {key: without_meta(value) for key, value in document.items() if key != "meta"}
    if isinstance(document, list):
        return [without_meta(item) for item in document]
    return document


def answer(client: FlaskClient, name: str, body: dict[str, Any]) -> Any:
    """The cards for ``body``, comparable across calls (no uuids, no server metadata)."""
    response = client.post(
        f"/cds-services/{CASES[name]}", data=json.dumps(body), content_type="application/json"
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return without_meta(without_uuids(response.get_json()))


def pointed_at(body: dict[str, Any], medplum: MedplumServer) -> dict[str, Any]:
    changed = copy.deepcopy(body)
    changed["fhirServer"] = medplum.base_url
    return changed


@pytest.mark.parametrize(("name", "key"), KEYS)
def test_missing_key_is_fetched_with_the_same_result(
    client: FlaskClient, medplum: MedplumServer, name: str, key: str
) -> None:
    """Each prefetch key, left out, is fetched from fhirServer: the cards are the same."""
    full = pointed_at(load_fixture(name), medplum)
    expected = answer(client, name, full)
    partial = copy.deepcopy(full)
    del partial["prefetch"][key]
    medplum.clear_requests()
    assert answer(client, name, partial) == expected
    assert medplum.requests(), "the key was not fetched"


@pytest.mark.parametrize("name", sorted(CASES))
def test_no_prefetch_at_all_gives_the_same_cards(
    client: FlaskClient, medplum: MedplumServer, name: str
) -> None:
    """The sandbox-style flow: no prefetch, a reachable fhirServer, the same cards."""
    full = pointed_at(load_fixture(name), medplum)
    bare = copy.deepcopy(full)
    del bare["prefetch"]
    result = answer(client, name, bare)
    assert result == answer(client, name, full)
    assert result["cards"]


def test_operation_outcome_prefetch_is_refetched(
    client: FlaskClient, medplum: MedplumServer
) -> None:
    """A prefetch value that is an OperationOutcome is fetched again."""
    name = "encounter-discharge--tibia-nonunion-removal.json"
    full = pointed_at(load_fixture(name), medplum)
    failed = copy.deepcopy(full)
    failed["prefetch"]["procedures"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "timeout"}],
    }
    assert answer(client, name, failed) == answer(client, name, full)


def test_bearer_token_reaches_the_fhir_server(client: FlaskClient, medplum: MedplumServer) -> None:
    """With fhirAuthorization every FHIR request carries its bearer token."""
    name = "encounter-discharge--tibia-nonunion-removal.json"
    body = pointed_at(load_fixture(name), medplum)
    del body["prefetch"]
    body["fhirAuthorization"] = {
        "access_token": "opaque-token-42",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "user/*.read",
        "subject": "cds-20703",
    }
    medplum.clear_requests()
    answer(client, name, body)
    received = medplum.requests()
    assert received
    assert {request["authorization"] for request in received} == {"Bearer opaque-token-42"}


def test_no_token_means_no_authorization_header(
    client: FlaskClient, medplum: MedplumServer
) -> None:
    """Without fhirAuthorization the FHIR requests carry no Authorization header."""
    name = "order-sign--planned-removal-reminder.json"
    body = pointed_at(load_fixture(name), medplum)
    del body["prefetch"]
    medplum.clear_requests()
    answer(client, name, body)
    assert {request["authorization"] for request in medplum.requests()} == {None}


def test_null_values_are_not_fetched(client: FlaskClient, medplum: MedplumServer) -> None:
    """Keys sent as null are not searched for."""
    name = "encounter-discharge--tibia-nonunion-removal.json"
    body = pointed_at(load_fixture(name), medplum)
    body["prefetch"] = dict.fromkeys(body["prefetch"])
    medplum.clear_requests()
    answer(client, name, body)
    assert [request for request in medplum.requests() if request["query"]] == []


def test_rounds_run_concurrently(pack: RulePack, medplum: MedplumServer) -> None:
    """With N keys missing and every answer held for D, all N searches are open at the same time.

    The server counts the requests open when each one arrives; fetched one after another that
    count would stay at 1. No wall-clock bound: timings on a shared CI machine are noise.
    """
    name = "encounter-discharge--tibia-nonunion-removal.json"
    body = pointed_at(load_fixture(name), medplum)
    missing = len(body.pop("prefetch"))
    fetcher = FhirFetcher(FetchPolicy(deadline=20, read_timeout=10, max_concurrency=16))
    medplum.clear_requests()
    medplum.set_delay(1000)
    try:
        result = handle_hook_call(pack, CASES[name], body, fetcher=fetcher)
    finally:
        medplum.set_delay(0)
        fetcher.close()
    assert result.fetch_stats is not None
    assert result.fetch_stats.keys_fetched == missing >= 4
    assert result.fetch_stats.rounds in (1, 2)
    assert max(request["inFlight"] for request in medplum.requests()) == missing


# -- round 2: references the rules follow, read from the FHIR server ------------------------


@pytest.mark.parametrize("documents", ["null", "absent"])
def test_operative_note_is_read_by_reference(
    client: FlaskClient, medplum: MedplumServer, documents: str
) -> None:
    """No `documents` data, but the removal names its operative note in `report`: round 2 reads
    it, and the cards equal those of the fully prefetched request."""
    full = pointed_at(load_fixture(STANDARD), medplum)
    resource(full, "procedures", REMOVAL)["report"] = [{"reference": OPERATIVE_NOTE}]
    expected = answer(client, STANDARD, full)
    partial = copy.deepcopy(full)
    if documents == "null":
        partial["prefetch"]["documents"] = None
    else:  # absent: the search runs in round 1 and finds the note; the reference is then in hand
        del partial["prefetch"]["documents"]
    unreferenced = copy.deepcopy(partial)
    del resource(unreferenced, "procedures", REMOVAL)["report"]
    unreferenced["prefetch"]["documents"] = None
    assert answer(client, STANDARD, unreferenced) != expected  # the note changes the cards
    medplum.clear_requests()
    assert answer(client, STANDARD, partial) == expected
    reads = [request["path"] for request in medplum.requests() if not request["query"]]
    stats = recorded_fetch_stats(client)
    if documents == "null":
        assert reads == [f"/fhir/{OPERATIVE_NOTE}"]
        assert (stats["keys_requested"], stats["references_fetched"]) == (0, 1)
    else:
        assert reads == []
        assert (stats["keys_fetched"], stats["references_requested"]) == (1, 0)


def test_claim_coverage_is_read_by_reference(
    client: FlaskClient, medplum: MedplumServer, pack: RulePack
) -> None:
    """`coverage` null, the draft Claim's `insurance` names the Coverage: round 2 reads it, and
    the payer note is the one of the fully prefetched request."""
    full = pointed_at(load_fixture(STANDARD), medplum)
    expected = answer(client, STANDARD, full)
    partial = copy.deepcopy(full)
    partial["prefetch"]["coverage"] = None
    medplum.clear_requests()
    result = answer(client, STANDARD, partial)
    assert result == expected
    assert [request["path"] for request in medplum.requests()] == ["/fhir/Coverage/cov-mcr-2291"]
    assert payer_profiles(result) == {MEDICARE}
    assert recorded_fetch_stats(client)["references_fetched"] == 1


def test_coverage_payer_is_read_by_reference(
    client: FlaskClient, medplum: MedplumServer, pack: RulePack
) -> None:
    """A Coverage that names its payer only by reference: round 2 reads the Organization, and the
    payer note is the one of the request whose Coverage names the payer."""
    full = pointed_at(load_fixture(STANDARD), medplum)
    expected = answer(client, STANDARD, full)
    partial = copy.deepcopy(full)
    without_payer_name(resource(partial, "coverage"))
    offline = copy.deepcopy(partial)
    del offline["fhirServer"]  # nothing can be read: the payer is not identified
    assert payer_profiles(answer(client, STANDARD, offline)) == {"general"}
    medplum.clear_requests()
    result = answer(client, STANDARD, partial)
    assert result == expected
    assert [request["path"] for request in medplum.requests()] == ["/fhir/Organization/org-cms"]
    assert payer_profiles(result) == {MEDICARE}


def test_payer_of_a_coverage_read_by_reference_is_not_followed(
    client: FlaskClient, medplum: MedplumServer, pack: RulePack
) -> None:
    """The documented limit of two rounds: a Coverage that arrives only in round 2 gets no payer
    Organization read, so a payer named only by reference is not identified (README)."""
    body = pointed_at(load_fixture(STANDARD), medplum)
    claim = resource(body, "claims")
    claim["insurance"][0]["coverage"] = {"reference": f"Coverage/{UNNAMED_PAYER_COVERAGE}"}
    body["prefetch"]["coverage"] = None
    medplum.clear_requests()
    result = answer(client, STANDARD, body)
    paths = [request["path"] for request in medplum.requests()]
    assert paths == [f"/fhir/Coverage/{UNNAMED_PAYER_COVERAGE}"]
    assert recorded_fetch_stats(client)["rounds"] == 1
    assert payer_profiles(result) == {"general"}


def test_failed_reference_read_is_noted_on_the_cards(
    client: FlaskClient, faults: FaultServer
) -> None:
    """The removed Device cannot be read (the server fails): the cards still come, and say that
    the referenced Device could not be checked."""
    body = load_fixture(STANDARD)
    body["prefetch"]["devices"] = None
    body["fhirServer"] = f"{faults.url}/status-500/fhir"
    faults.received.clear()
    result = answer(client, STANDARD, body)
    assert [path for path, _ in faults.received] == ["/status-500/fhir/Device/dev-abx-rod-1f9e"]
    assert result["cards"]
    for text in details(result):
        assert "**Not checked:** `referenced Device`: the FHIR server failed (5xx)." in text


def test_missing_referenced_resource_is_noted_on_the_cards(
    client: FlaskClient, medplum: MedplumServer
) -> None:
    """A `report` pointing at a note the server does not have (404): noted as not checked."""
    body = pointed_at(load_fixture(STANDARD), medplum)
    resource(body, "procedures", REMOVAL)["report"] = [
        {"reference": "DocumentReference/no-such-note"}
    ]
    body["prefetch"]["documents"] = None
    result = answer(client, STANDARD, body)
    assert result["cards"]
    for text in details(result):
        assert "`referenced DocumentReference`: the FHIR server did not find it (404)" in text


# -- timing structure and bounded concurrency, through HTTP ---------------------------------


def waves(requests: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The FHIR requests grouped as the server saw them: a new wave starts with a request that
    arrived after an answer of the wave before it was sent. Times are the server's own clock."""
    grouped: list[list[dict[str, Any]]] = []
    for request in sorted(requests, key=lambda r: r["arrivedMs"]):
        current = grouped[-1] if grouped else []
        if current and request["arrivedMs"] < min(r["answeredMs"] for r in current):
            current.append(request)
        else:
            grouped.append([request])
    return grouped


@pytest.mark.parametrize(("null_keys", "rounds"), [((), 1), (("devices",), 2)])
def test_each_fetch_round_is_one_concurrent_wave(
    service: Callable[..., Flask],
    medplum: MedplumServer,
    null_keys: tuple[str, ...],
    rounds: int,
) -> None:
    """Every key missing and each FHIR answer held DELAY_MS: the FHIR server sees the requests
    in R waves, R being the fetch rounds the audit trail recorded, every request of a wave
    arriving before any answer of that wave was sent (concurrent, not one after another), and
    each wave after the answers it depends on. `devices` null forces round 2 (the removed Device
    is then read by reference). The proof is the server's record of arrivals and answers, not
    the caller's wall clock, which a busy machine stretches."""
    client = service(FHIR_DEADLINE_SECONDS="20", FHIR_READ_TIMEOUT_SECONDS="10").test_client()
    body = pointed_at(load_fixture(STANDARD), medplum)
    body["prefetch"] = dict.fromkeys(null_keys)
    expected = answer(client, STANDARD, body)  # warm: connections, parsers, rule indexes
    medplum.clear_requests()
    medplum.set_delay(DELAY_MS)
    try:
        started = time.monotonic()
        result = answer(client, STANDARD, body)
        elapsed_ms = (time.monotonic() - started) * 1000
    finally:
        medplum.set_delay(0)
    stats = recorded_fetch_stats(client)
    assert result == expected
    assert stats["rounds"] == rounds
    assert stats["failures"] == {}
    assert stats["keys_fetched"] == len(load_fixture(STANDARD)["prefetch"]) - len(null_keys) >= 4
    seen = waves(medplum.requests())
    assert len(seen[0]) == stats["keys_fetched"]
    assert len(seen) == rounds, [[r["path"] for r in wave] for wave in seen]
    for earlier, later in itertools.pairwise(seen):
        assert min(r["arrivedMs"] for r in later) >= max(r["answeredMs"] for r in earlier) - 1
    # The physical floor (each round waits for its answers) cannot be broken by noise; the
    # ceiling is a deadline with seconds of slack, far below fetching one after another.
    requests_sent = sum(len(wave) for wave in seen)
    assert rounds * DELAY_MS <= elapsed_ms < max(requests_sent, rounds + 3) * DELAY_MS


def test_open_requests_never_exceed_the_configured_concurrency(
    service: Callable[..., Flask], medplum: MedplumServer
) -> None:
    """Nine searches with CDS_FHIR_MAX_CONCURRENCY=3: the server never sees more than three
    open at once, and does see three (the pool is used, not serialised)."""
    client = service(
        FHIR_MAX_CONCURRENCY="3", FHIR_DEADLINE_SECONDS="20", FHIR_READ_TIMEOUT_SECONDS="10"
    ).test_client()
    body = pointed_at(load_fixture(STANDARD), medplum)
    missing = len(body.pop("prefetch"))
    medplum.clear_requests()
    medplum.set_delay(150)
    try:
        answer(client, STANDARD, body)
    finally:
        medplum.set_delay(0)
    open_counts = [request["inFlight"] for request in medplum.requests()]
    assert len(open_counts) == missing > 3
    assert max(open_counts) == 3
