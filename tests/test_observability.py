"""Request ids and the one JSON log line per request (cds_service.web.observability)."""

from __future__ import annotations

import json
import logging
import re

import pytest
from flask.testing import FlaskClient
from helpers.corpus import EXPECTED, FIXTURE_NAMES, load_fixture
from helpers.privacy import sensitive_strings

from cds_service.logs import JsonFormatter

DISCHARGE = "/cds-services/cpt20703-encounter-discharge"
STANDARD = "encounter-discharge--tibia-nonunion-removal.json"


def post(client: FlaskClient, path: str, body: object, **headers: str) -> object:
    return client.post(
        path, data=json.dumps(body), content_type="application/json", headers=headers
    )


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    """The access log records, formatted exactly as the service writes them."""
    formatter = JsonFormatter()
    return [
        json.loads(formatter.format(record))
        for record in caplog.records
        if record.name == "cds_service.access"
    ]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/cds-services", 200),
        ("POST", DISCHARGE, 415),
        ("GET", "/no/such/path", 404),
        ("GET", "/healthz", 200),
    ],
)
def test_every_response_carries_a_fresh_request_id(
    client: FlaskClient, method: str, path: str, status: int
) -> None:
    """Answers and errors alike carry a new random X-Request-ID."""
    first = client.open(path, method=method, data="x")
    second = client.open(path, method=method, data="x")
    assert first.status_code == status
    ids = [first.headers["X-Request-ID"], second.headers["X-Request-ID"]]
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in ids)
    assert ids[0] != ids[1]


def test_a_well_formed_client_request_id_is_echoed(client: FlaskClient) -> None:
    """The EHR's own correlation id comes back, so both sides can find the same call."""
    response = client.get("/cds-services", headers={"X-Request-ID": "ehr-call-000123"})
    assert response.headers["X-Request-ID"] == "ehr-call-000123"


@pytest.mark.parametrize("offered", ["Jane Testpatient", "x", "a" * 65, "id;drop", "ü-12345678"])
def test_an_odd_client_request_id_is_replaced(client: FlaskClient, offered: str) -> None:
    """Anything but a plain token is not echoed (it could carry patient data or inject logs)."""
    response = client.get("/cds-services", headers={"X-Request-ID": offered})
    assert response.headers["X-Request-ID"] != offered
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


def test_one_json_line_per_hook_call_with_its_outcome(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A hook call logs exactly one access line: request id, service, status, latency, findings."""
    with caplog.at_level(logging.INFO, logger="cds_service"):
        response = post(client, DISCHARGE, load_fixture(STANDARD))
    lines = access_lines(caplog)
    assert len(lines) == 1
    line = lines[0]
    assert line["request_id"] == response.headers["X-Request-ID"]  # type: ignore[attr-defined]
    assert line["endpoint"] == "cds.call_service"
    assert line["service"] == "cpt20703-encounter-discharge"
    assert line["status"] == 200
    assert isinstance(line["latency_ms"], float)
    assert line["latency_ms"] > 0
    assert line["findings"] == ["add-on-suggested"]
    assert line["cards"] == 1


def test_refused_requests_log_one_line_with_their_status(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Errors are logged once, with the status and without the body."""
    with caplog.at_level(logging.INFO, logger="cds_service"):
        client.post(DISCHARGE, data="Jane Testpatient", content_type="text/plain")
        post(client, "/cds-services/Jane-Testpatient", load_fixture(STANDARD))
    lines = access_lines(caplog)
    assert [(line["status"], line["service"]) for line in lines] == [
        (415, "cpt20703-encounter-discharge"),
        (404, "unknown"),
    ]
    assert "Jane" not in caplog.text + json.dumps(lines)


def test_no_fixture_puts_patient_data_in_a_log_line(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Every fixture through the endpoint: the formatted log holds no name, id or token."""
    with caplog.at_level(logging.DEBUG, logger="cds_service"):
        for name in FIXTURE_NAMES:
            post(client, f"/cds-services/{EXPECTED[name]['service']}", load_fixture(name))
    formatter = JsonFormatter()
    text = "\n".join(formatter.format(record) for record in caplog.records)
    assert len(access_lines(caplog)) == len(FIXTURE_NAMES)
    for name in FIXTURE_NAMES:
        leaked = [value for value in sensitive_strings(load_fixture(name)) if value in text]
        assert leaked == [], name
