"""GET /metrics: Prometheus counters and histograms, with closed label sets (cds_service.web.metrics).

Counters are process-wide, so each test compares values before and after what it does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient
from helpers.corpus import EXPECTED, FIXTURE_NAMES, load_fixture
from helpers.fault_server import FaultServer, fault_server
from helpers.jwt_tokens import BASE_URL, SigningKey, TokenFactory, jwk_set, write_trust_file
from helpers.privacy import sensitive_strings
from helpers.serving import served
from prometheus_client.parser import text_string_to_metric_families

DISCHARGE_ID = "cpt20703-encounter-discharge"
DISCHARGE = f"/cds-services/{DISCHARGE_ID}"
STANDARD = "encounter-discharge--tibia-nonunion-removal.json"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, keyed by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


def scrape(client: FlaskClient) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    return response.get_data(as_text=True)


def post(client: FlaskClient, path: str, body: Any, **headers: str) -> Any:
    return client.post(
        path, data=json.dumps(body), content_type="application/json", headers=headers
    )


def test_hook_calls_count_requests_latency_and_cards(client: FlaskClient) -> None:
    """One answered hook call: +1 request (200), +1 latency observation, +1 card per finding."""
    before = scrape(client)
    assert post(client, DISCHARGE, load_fixture(STANDARD)).status_code == 200
    after = scrape(client)
    labels = {"endpoint": "cds.call_service", "service": DISCHARGE_ID}
    requests_name = "cds_http_requests_total"
    assert value(after, requests_name, **labels, status="200") == (
        value(before, requests_name, **labels, status="200") + 1
    )
    latency = "cds_http_request_duration_seconds_count"
    assert value(after, latency, **labels) == value(before, latency, **labels) + 1
    cards = {"service": DISCHARGE_ID, "finding": "add-on-suggested"}
    assert value(after, "cds_cards_total", **cards) == value(before, "cds_cards_total", **cards) + 1


def test_errors_count_by_status_and_unknown_services_share_one_label(client: FlaskClient) -> None:
    """A 415 counts under its status; an unknown service id never becomes a label value."""
    before = scrape(client)
    client.post(DISCHARGE, data="x", content_type="text/plain")
    post(client, "/cds-services/Jane-Testpatient-1970", load_fixture(STANDARD))
    after = scrape(client)
    name = "cds_http_requests_total"
    refused = {"endpoint": "cds.call_service", "service": DISCHARGE_ID, "status": "415"}
    assert value(after, name, **refused) == value(before, name, **refused) + 1
    unknown = {"endpoint": "cds.call_service", "service": "unknown", "status": "404"}
    assert value(after, name, **unknown) == value(before, name, **unknown) + 1
    assert "Jane" not in after


def test_feedback_counts_by_finding_and_outcome(client: FlaskClient) -> None:
    """Stored feedback is counted under the finding code of its card; duplicates are not."""
    card = post(client, DISCHARGE, load_fixture(STANDARD)).get_json()["cards"][0]
    entry = {
        "card": card["uuid"],
        "outcome": "overridden",
        "overrideReason": {"reason": card["overrideReasons"][0]},
        "outcomeTimestamp": "2026-03-02T10:15:00Z",
    }
    before = scrape(client)
    post(client, f"{DISCHARGE}/feedback", {"feedback": [entry]})
    post(client, f"{DISCHARGE}/feedback", {"feedback": [entry]})  # the same entry again
    after = scrape(client)
    labels = {"service": DISCHARGE_ID, "finding": "add-on-suggested", "outcome": "overridden"}
    name = "cds_feedback_total"
    assert value(after, name, **labels) == value(before, name, **labels) + 1


def test_jwt_failures_count_by_check(make_app: Any, sqlite_url: str, tmp_path: Path) -> None:
    """Refused tokens are counted by the check that failed, never by token or issuer."""
    key = SigningKey.ec384()
    trust = write_trust_file(tmp_path, [{"iss": "https://ehr.example.org", "jwks": jwk_set(key)}])
    app = make_app(
        {
            "DATABASE_URL": sqlite_url,
            "AUTH": "required",
            "TRUSTED_CLIENTS": str(trust),
            "PUBLIC_BASE_URL": BASE_URL,
        }
    )
    client = app.test_client()
    tokens = TokenFactory(key)
    before = scrape(client)
    wrong_audience = tokens.token(DISCHARGE, claims={"aud": "https://elsewhere.example/x"})
    post(client, DISCHARGE, load_fixture(STANDARD), Authorization=f"Bearer {wrong_audience}")
    post(client, DISCHARGE, load_fixture(STANDARD))  # no token at all
    after = scrape(client)
    for reason in ("aud", "token"):
        name = "cds_jwt_failures_total"
        assert value(after, name, reason=reason) == value(before, name, reason=reason) + 1
    assert wrong_audience.split(".")[1] not in after


@pytest.fixture(scope="module")
def fhir_faults() -> Iterator[FaultServer]:
    with fault_server() as server:
        yield server


@pytest.mark.parametrize(("scenario", "outcome"), [("ok", "ok"), ("status-503", "http-5xx")])
def test_fhir_fetches_count_by_outcome_with_latency(
    make_app: Any, sqlite_url: str, fhir_faults: FaultServer, scenario: str, outcome: str
) -> None:
    """Each FHIR query for a missing prefetch key is counted by outcome and timed."""
    app = make_app({"DATABASE_URL": sqlite_url, "FHIR_SERVER_ALLOWLIST": fhir_faults.url})
    client = app.test_client()
    body = load_fixture(STANDARD)
    del body["prefetch"]["questionnaireResponses"]
    body["fhirServer"] = f"{fhir_faults.url}/{scenario}/fhir"
    before = scrape(client)
    assert post(client, DISCHARGE, body).status_code == 200
    after = scrape(client)
    assert value(after, "cds_fhir_fetches_total", outcome=outcome) == (
        value(before, "cds_fhir_fetches_total", outcome=outcome) + 1
    )
    histogram = "cds_fhir_fetch_duration_seconds_count"
    assert value(after, histogram, outcome=outcome) == value(before, histogram, outcome=outcome) + 1


def test_no_patient_data_in_any_label(client: FlaskClient) -> None:
    """After every fixture, the exposition holds none of their names, ids or tokens."""
    for name in FIXTURE_NAMES:
        post(client, f"/cds-services/{EXPECTED[name]['service']}", load_fixture(name))
    text = scrape(client)
    for name in FIXTURE_NAMES:
        assert [s for s in sensitive_strings(load_fixture(name)) if s in text] == [], name


def test_metrics_sum_all_gunicorn_workers(tmp_path: Path) -> None:
    """Under two workers, every scrape reports the requests both workers answered."""
    metrics_dir = tmp_path / "metrics"
    calls = 24
    with served(
        tmp_path, "--workers", "2", env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    ) as base:

        def call(_: int) -> int:
            return requests.post(
                f"{base}{DISCHARGE}", json=load_fixture(STANDARD), timeout=30
            ).status_code

        with ThreadPoolExecutor(max_workers=6) as pool:
            assert set(pool.map(call, range(calls))) == {200}
        worker_files = {path.name.rsplit("_", 1)[-1] for path in metrics_dir.glob("counter_*.db")}
        assert len(worker_files) == 2, "both workers should have answered some calls"
        labels = {"endpoint": "cds.call_service", "service": DISCHARGE_ID, "status": "200"}
        for _ in range(6):
            text = requests.get(f"{base}/metrics", timeout=10).text
            assert value(text, "cds_http_requests_total", **labels) == calls
            cards = {"service": DISCHARGE_ID, "finding": "add-on-suggested"}
            assert value(text, "cds_cards_total", **cards) == calls
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR") is None  # the test process stays single
