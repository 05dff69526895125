"""Fetching from a real FHIR server (Medplum, in memory, on loopback) gives the prefetched answer."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import FIXTURES, load_fixture, without_uuids
from flask.testing import FlaskClient
from medplum import MedplumServer, NodeUnavailable, skip_or_fail_without_node

from cds_service.fhir_fetch import FetchPolicy, FhirFetcher
from cds_service.rule_pack import RulePack
from cds_service.service import handle_hook_call

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


@pytest.fixture(scope="module")
def medplum() -> Iterator[MedplumServer]:
    try:
        with MedplumServer(sorted(FIXTURES.glob("*--*.json"))) as server:
            yield server
    except NodeUnavailable as exc:
        skip_or_fail_without_node(exc)


@pytest.fixture
def client(make_app: Any, sqlite_url: str, medplum: MedplumServer) -> FlaskClient:
    app = make_app({"DATABASE_URL": sqlite_url, "FHIR_SERVER_ALLOWLIST": medplum.base_url})
    return app.test_client()


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
