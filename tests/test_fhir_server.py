"""The Medplum test FHIR server is a faithful stand-in for the EHR the fixtures come from.

One server, seeded with every fixture, must answer each service's prefetch template (tokens
filled from the fixture's context) with exactly the resources the fixture prefetched for it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from helpers.corpus import FIXTURES, ROOT
from helpers.medplum import MedplumServer, NodeUnavailable, skip_or_fail_without_node

FIXTURE_FILES = sorted(FIXTURES.glob("*--*.json"))
SERVICES: list[dict[str, Any]] = yaml.safe_load(
    (ROOT / "cards" / "services.yaml").read_text(encoding="utf-8")
)["services"]
TEMPLATES: dict[str, dict[str, str]] = {
    service["hook"]: {key: spec["template"] for key, spec in service["prefetch"].items()}
    for service in SERVICES
}
TOKEN = re.compile(r"\{\{\s*context\.([A-Za-z0-9_.-]+)\s*\}\}")
FHIR_JSON = "application/fhir+json"
TIMEOUT_S = 10
# The one resource of the fixtures that is invalid on purpose (no Procedure.status; the fixtures'
# README), which a FHIR server would refuse to store.
DELIBERATELY_INVALID = {("order-sign--sandbox-sloppy.json", "Procedure/1288993")}
STANDARD = "encounter-discharge--tibia-nonunion-removal.json"

Key = tuple[str, str]  # (resourceType, id)


def load(path: Path) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return body


def render(template: str, context: dict[str, Any]) -> str:
    """The prefetch template with its ``{{context.x}}`` tokens replaced by the context values."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in context, f"token {match.group(0)} has no value in the fixture's context"
        return str(context[name])

    return TOKEN.sub(value, template)


def resources_of(value: dict[str, Any]) -> list[dict[str, Any]]:
    """The resources of a prefetch value or a FHIR answer: one resource, or a Bundle's entries."""
    if value["resourceType"] == "Bundle":
        return [entry["resource"] for entry in value.get("entry", [])]
    return [value]


def key_of(resource: dict[str, Any]) -> Key:
    return (resource["resourceType"], resource["id"])


def without_meta(resource: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in resource.items() if name != "meta"}


def prefetch_cases() -> Iterator[Any]:
    for path in FIXTURE_FILES:
        request = load(path)
        for key, template in TEMPLATES[request["hook"]].items():
            if request["prefetch"].get(key) is not None:
                yield pytest.param(path.name, key, template, id=f"{path.stem}:{key}")


@pytest.fixture(scope="module")
def fhir() -> Iterator[MedplumServer]:
    try:
        with MedplumServer(FIXTURE_FILES) as server:
            yield server
    except NodeUnavailable as exc:
        skip_or_fail_without_node(exc)


def get(url: str, **kwargs: Any) -> requests.Response:
    return requests.get(url, timeout=TIMEOUT_S, **kwargs)


def test_server_starts_quickly_and_reports_its_seed(fhir: MedplumServer) -> None:
    """The seeded server is up within the startup budget and reports how much it stored."""
    assert fhir.startup_seconds is not None
    assert fhir.startup_seconds < 10
    assert fhir.base_url == f"http://127.0.0.1:{fhir.port}/fhir"
    health = fhir.health()
    assert health["status"] == "ok"
    assert health["resources"] > 100


def test_only_the_deliberately_invalid_resource_is_not_seeded(fhir: MedplumServer) -> None:
    """Every prefetched resource is stored except the one deliberately invalid Procedure."""
    skipped = {(Path(item["file"]).name, item["resource"]) for item in fhir.health()["skipped"]}
    assert skipped == DELIBERATELY_INVALID


@pytest.mark.parametrize(("fixture", "key", "template"), list(prefetch_cases()))
def test_template_returns_exactly_the_prefetched_resources(
    fhir: MedplumServer, fixture: str, key: str, template: str
) -> None:
    """A prefetch template run against the server yields the fixture's prefetched resources."""
    request = load(FIXTURES / fixture)
    prefetched = resources_of(request["prefetch"][key])
    invalid = {ref for name, ref in DELIBERATELY_INVALID if name == fixture}
    expected = {key_of(r): r for r in prefetched if "/".join(key_of(r)) not in invalid}

    response = get(f"{fhir.base_url}/{render(template, request['context'])}")

    is_read = "?" not in template
    if is_read and response.status_code == 404:
        # A read of an id the EHR does not have (the empty-searchsets fixture sends an empty
        # searchset for `encounter`): nothing, as in the fixture.
        assert response.json()["resourceType"] == "OperationOutcome"
        got: dict[Key, dict[str, Any]] = {}
    else:
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith(FHIR_JSON)
        body = response.json()
        if not is_read:
            assert body["resourceType"] == "Bundle"
            assert body["type"] == "searchset"
            assert body["total"] == len(body.get("entry", []))
        got = {key_of(r): r for r in resources_of(body)}
    assert set(got) == set(expected)
    for ref, resource in got.items():
        assert without_meta(resource) == without_meta(expected[ref]), ref


def test_post_search_with_a_form_body(fhir: MedplumServer) -> None:
    """POST <type>/_search with a form-encoded body finds what the GET search finds."""
    context = load(FIXTURES / STANDARD)["context"]
    response = requests.post(
        f"{fhir.base_url}/Procedure/_search",
        data={"patient": context["patientId"], "encounter": context["encounterId"]},
        timeout=TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith(FHIR_JSON)
    got = {key_of(r) for r in resources_of(response.json())}
    assert got == {("Procedure", "proc-3b90e4"), ("Procedure", "proc-8d21aa")}


@pytest.mark.parametrize(
    ("resource_type", "param", "count"),
    [("Condition", "patient", 2), ("Procedure", "subject", 2), ("Coverage", "beneficiary", 1)],
)
def test_bare_and_full_reference_searches_agree(
    fhir: MedplumServer, resource_type: str, param: str, count: int
) -> None:
    """A bare id (``patient=123``) selects what the full reference (``Patient/123``) selects."""
    url = f"{fhir.base_url}/{resource_type}"
    bare = get(url, params={param: "pat-4f2a91"}).json()
    full = get(url, params={param: "Patient/pat-4f2a91"}).json()
    assert bare["total"] == full["total"] == count
    assert [key_of(r) for r in resources_of(bare)] == [key_of(r) for r in resources_of(full)]


def test_count_pages_with_next_links(fhir: MedplumServer) -> None:
    """``_count`` pages a search; following the ``next`` links yields every match once."""
    url: str | None = f"{fhir.base_url}/Procedure?patient=pat-9f47c0&_count=3"
    pages: list[list[Key]] = []
    while url is not None:
        body = get(url).json()
        assert body["total"] == 4
        pages.append([key_of(r) for r in resources_of(body)])
        url = next((link["url"] for link in body["link"] if link["relation"] == "next"), None)
    assert [len(page) for page in pages] == [3, 1]
    assert len({ref for page in pages for ref in page}) == 4


def test_metadata_is_an_r4_capability_statement(fhir: MedplumServer) -> None:
    """``GET /metadata`` answers an R4 CapabilityStatement as FHIR JSON."""
    response = get(f"{fhir.base_url}/metadata")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith(FHIR_JSON)
    body = response.json()
    assert body["resourceType"] == "CapabilityStatement"
    assert body["fhirVersion"] == "4.0.1"
    types = {resource["type"] for resource in body["rest"][0]["resource"]}
    assert {"Procedure", "Device", "Claim", "Coverage", "DocumentReference"} <= types


@pytest.mark.parametrize(
    "path", ["Procedure/no-such-id", "NoSuchType/1", "NoSuchType?patient=pat-4f2a91"]
)
def test_unknown_type_or_id_is_a_404_operation_outcome(fhir: MedplumServer, path: str) -> None:
    """An unknown resource type or id answers 404 with an OperationOutcome."""
    response = get(f"{fhir.base_url}/{path}")
    assert response.status_code == 404
    assert response.headers["Content-Type"].startswith(FHIR_JSON)
    assert response.json()["resourceType"] == "OperationOutcome"


def test_unknown_search_parameter_is_refused(fhir: MedplumServer) -> None:
    """A search parameter the server cannot evaluate is a 400, not a silently empty result."""
    response = get(f"{fhir.base_url}/Procedure", params={"patient": "pat-4f2a91", "nope": "1"})
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"


def test_draft_orders_are_not_seeded(fhir: MedplumServer) -> None:
    """The unsigned ``context.draftOrders`` of order-sign requests are not on the server."""
    drafts = [
        entry["resource"]
        for path in FIXTURE_FILES
        for entry in load(path)["context"].get("draftOrders", {}).get("entry", [])
        if "id" in entry["resource"]
    ]
    assert drafts
    for resource in drafts:
        response = get(f"{fhir.base_url}/{resource['resourceType']}/{resource['id']}")
        assert response.status_code == 404, resource["id"]


def test_requests_are_recorded_with_their_authorization(fhir: MedplumServer) -> None:
    """Each FHIR request is recorded with its path, query and Authorization header (or null)."""
    fhir.clear_requests()
    get(f"{fhir.base_url}/Device?patient=pat-4f2a91", headers={"Authorization": "Bearer t0k3n"})
    get(f"{fhir.base_url}/Encounter/enc-7c31d0")
    recorded = fhir.requests()
    times = [(request.pop("arrivedMs"), request.pop("answeredMs")) for request in recorded]
    assert times[0][0] <= times[0][1] <= times[1][0] <= times[1][1]
    assert recorded == [
        {
            "method": "GET",
            "path": "/fhir/Device",
            "query": "patient=pat-4f2a91",
            "authorization": "Bearer t0k3n",
            "inFlight": 1,
        },
        {
            "method": "GET",
            "path": "/fhir/Encounter/enc-7c31d0",
            "query": "",
            "authorization": None,
            "inFlight": 1,
        },
    ]
    fhir.clear_requests()
    assert fhir.requests() == []


def test_set_delay_delays_every_answer_without_serializing_them(fhir: MedplumServer) -> None:
    """With a delay set, each answer waits that long; concurrent requests wait in parallel.

    Parallel waiting shows in the server's own count of open requests, not in a wall-clock
    upper bound that a busy machine could break.
    """
    delay_s = 1.0
    url = f"{fhir.base_url}/Encounter/enc-7c31d0"
    fhir.set_delay(delay_s * 1000)
    try:
        started = time.monotonic()
        assert get(url).status_code == 200
        assert time.monotonic() - started >= delay_s

        fhir.clear_requests()
        with ThreadPoolExecutor(max_workers=4) as pool:
            statuses = list(pool.map(lambda _: get(url).status_code, range(4)))
        assert statuses == [200] * 4
        assert max(request["inFlight"] for request in fhir.requests()) == 4
    finally:
        fhir.set_delay(0)
    fhir.clear_requests()
    assert get(url).status_code == 200
    (request,) = fhir.requests()
    assert request["answeredMs"] - request["arrivedMs"] < delay_s * 1000  # the server's clock


def test_error_rate_answers_that_fraction_with_500_and_leaves_the_delay(
    fhir: MedplumServer,
) -> None:
    """errorRate 1 fails every FHIR request (recorded, with an OperationOutcome); 0 none.

    Setting the error rate alone keeps the delay, and the control endpoints are never failed.
    """
    url = f"{fhir.base_url}/Encounter/enc-7c31d0"
    fhir.clear_requests()
    fhir.set_delay(0)
    before = fhir.config()["injectedErrors"]
    fhir.set_error_rate(1)
    try:
        assert fhir.config() == {"delayMs": 0, "errorRate": 1, "injectedErrors": before}
        answers = [get(url) for _ in range(3)]
        assert [answer.status_code for answer in answers] == [500] * 3
        assert {answer.json()["resourceType"] for answer in answers} == {"OperationOutcome"}
        assert fhir.health()["status"] == "ok"
        assert len(fhir.requests()) == 3
        assert fhir.config()["injectedErrors"] == before + 3
        refused = requests.post(f"{fhir.root_url}/__config", json={"errorRate": 2}, timeout=5)
        assert refused.status_code == 400
    finally:
        fhir.set_error_rate(0)
    assert get(url).status_code == 200
    assert fhir.config()["errorRate"] == 0
    fhir.clear_requests()
