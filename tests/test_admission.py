"""Load shedding (cds_service.web.admission): past capacity, a quick 503 instead of a late answer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from helpers.corpus import load_fixture
from helpers.fault_server import FaultServer, fault_server
from helpers.serving import served

from cds_service.web.admission import AdmissionGate

DISCHARGE = "/cds-services/cpt20703-encounter-discharge"
STANDARD = "encounter-discharge--tibia-nonunion-removal.json"
HOLD_MS = 3000  # how long the FHIR server holds each slow call
QUEUED_HOLD_MS = 1200  # each call of the queueing test: 4 waves on one worker end before 5 s


@pytest.fixture(scope="module")
def fhir_faults() -> Iterator[FaultServer]:
    with fault_server() as server:
        yield server


def slow_body(fhir_faults: FaultServer) -> dict[str, Any]:
    """A call that needs one FHIR search, which the fault server answers after HOLD_MS."""
    body = load_fixture(STANDARD)
    del body["prefetch"]["questionnaireResponses"]
    body["fhirServer"] = f"{fhir_faults.url}/delay-{HOLD_MS}/fhir"
    return body


def timed_post(url: str, body: dict[str, Any]) -> tuple[int, float, requests.Response]:
    started = time.monotonic()
    response = requests.post(url, json=body, timeout=30)
    return response.status_code, time.monotonic() - started, response


def test_surplus_calls_are_refused_at_once_while_admitted_ones_finish(
    make_app: Any, sqlite_url: str, fhir_faults: FaultServer
) -> None:
    """Capacity 1: while one slow call runs, the next is a 503 with Retry-After; probes answer."""
    app = make_app(
        {
            "DATABASE_URL": sqlite_url,
            "FHIR_SERVER_ALLOWLIST": fhir_faults.url,
            "FHIR_DEADLINE_SECONDS": "10",
            "FHIR_READ_TIMEOUT_SECONDS": "10",
            "MAX_CONCURRENT_CALLS": "1",
            "QUEUE_TIMEOUT_SECONDS": "0.1",
        }
    )
    with ThreadPoolExecutor(max_workers=1) as pool:
        slow = pool.submit(app.test_client().post, DISCHARGE, json=slow_body(fhir_faults))
        time.sleep(0.5)  # the slow call holds the only slot (its FHIR search takes 3 s)
        client = app.test_client()
        refused = client.post(DISCHARGE, json=load_fixture(STANDARD))
        probes = [client.get(path).status_code for path in ("/healthz", "/cds-services")]
        assert not slow.done()
        assert slow.result().status_code == 200
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "1"
    outcome = refused.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "transient"
    assert probes == [200, 200]
    assert client.post(DISCHARGE, json=load_fixture(STANDARD)).status_code == 200  # slot freed


def test_overload_under_gunicorn_answers_before_the_admitted_calls(
    tmp_path: Path, fhir_faults: FaultServer
) -> None:
    """One worker, two slots, eight slow calls at once: six 503s, all before either 200."""
    env = {
        "CDS_FHIR_SERVER_ALLOWLIST": fhir_faults.url,
        "CDS_FHIR_DEADLINE_SECONDS": "10",
        "CDS_FHIR_READ_TIMEOUT_SECONDS": "10",
        "CDS_MAX_CONCURRENT_CALLS": "2",
        "CDS_QUEUE_TIMEOUT_SECONDS": "0.2",
    }
    with served(tmp_path, "--workers", "1", "--threads", "8", env=env) as base:
        body = slow_body(fhir_faults)
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda _: timed_post(f"{base}{DISCHARGE}", body), range(8)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200, 200] + [503] * 6
    slowest_refusal = max(elapsed for status, elapsed, _ in results if status == 503)
    fastest_answer = min(elapsed for status, elapsed, _ in results if status == 200)
    assert fastest_answer >= HOLD_MS / 1000
    assert slowest_refusal < fastest_answer  # refused while the admitted calls still ran


def test_with_the_defaults_sixteen_calls_at_once_on_two_workers_queue_and_all_answer(
    tmp_path: Path, fhir_faults: FaultServer
) -> None:
    """The default deadline is for real overload: 16 calls that each hold a slot 1.2 s (a slow
    FHIR server) on 2 workers of 4 slots wait their turn; none is refused. (With the former
    1 s deadline, every call past the first eight slots was a 503.)"""
    env = {
        "CDS_FHIR_SERVER_ALLOWLIST": fhir_faults.url,
        "CDS_FHIR_DEADLINE_SECONDS": "10",
        "CDS_FHIR_READ_TIMEOUT_SECONDS": "10",
    }
    body = load_fixture(STANDARD)
    del body["prefetch"]["questionnaireResponses"]
    body["fhirServer"] = f"{fhir_faults.url}/delay-{QUEUED_HOLD_MS}/fhir"
    with served(tmp_path, "--workers", "2", env=env) as base, ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: timed_post(f"{base}{DISCHARGE}", body), range(16)))
    assert [status for status, _, _ in results] == [200] * 16
    assert max(elapsed for _, elapsed, _ in results) >= 2 * QUEUED_HOLD_MS / 1000  # some queued


def test_the_deadline_counts_from_the_requests_arrival() -> None:
    """A request that already waited most of the deadline gets only the rest of it."""
    gate = AdmissionGate(capacity=1, wait_seconds=1.0)
    assert gate.enter()
    started = time.monotonic()
    assert not gate.enter(waited=0.8)
    assert 0.15 <= time.monotonic() - started < 0.6
    assert not gate.enter(waited=5.0)  # past the deadline already: refused at once
    gate.leave()
    assert gate.enter(waited=0.99)
