"""The FHIR fetcher against a misbehaving loopback server (every fault is a kind, never a hang),
through the service too, and the CDS_FHIR_* settings that bound it."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from helpers.corpus import load_fixture, without_uuids
from helpers.fault_server import EMPTY_BUNDLE, FaultServer, fault_server
from helpers.jwt_tokens import BASE_URL, ISSUER, SigningKey, TokenFactory, jwk_set, write_trust_file

from cds_service.config import Settings
from cds_service.engine.gather import REASONS
from cds_service.errors import ConfigError
from cds_service.fhir.client import FetchPolicy, FetchStats, FhirFetcher
from cds_service.fhir.queries import references_to_resolve, render_prefetch_template
from cds_service.web.app_state import service_state

POLICY = FetchPolicy(connect_timeout=0.5, read_timeout=0.5, deadline=2.0, max_response_bytes=50_000)
DISCHARGE = "/cds-services/cpt20703-encounter-discharge"
STANDARD = "encounter-discharge--tibia-nonunion-removal.json"
REFUSED = "http://127.0.0.1:9/fhir"  # nothing listens on the discard port: connection refused


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    with fault_server() as running:
        yield running


@pytest.fixture
def fetcher() -> Iterator[FhirFetcher]:
    instance = FhirFetcher(POLICY)
    yield instance
    instance.close()


def fetch_one(fetcher: FhirFetcher, base: str, query: str, token: str | None = None) -> Any:
    stats = FetchStats()
    deadline = time.monotonic() + fetcher.policy.deadline
    return fetcher.fetch_round(base, token, {"key": query}, deadline, stats)["key"], stats


@pytest.mark.parametrize(
    ("scenario", "kind"),
    [
        ("status-401", "http-401"),
        ("status-403", "http-403"),
        ("status-404", "http-404"),
        ("status-429", "http-4xx"),
        ("status-500", "http-5xx"),
        ("status-503", "http-5xx"),
        ("garbage", "not-json"),
        ("html", "not-json"),
        ("outcome", "operation-outcome"),
        ("wrong-type", "not-fhir"),
        ("array", "not-fhir"),
        ("deep", "not-fhir"),  # nested past MAX_JSON_DEPTH: refused before any recursive parsing
        ("huge", "too-large"),
        ("huge-chunked", "too-large"),  # no Content-Length: counted while read
        ("redirect", "redirect"),
        ("reset", "connection"),
        ("delay-1500", "timeout"),
    ],
)
def test_fault_becomes_a_failure_kind(
    server: FaultServer, fetcher: FhirFetcher, scenario: str, kind: str
) -> None:
    """Each fault yields its failure kind, counted in the statistics."""
    fetched, stats = fetch_one(fetcher, f"{server.url}/{scenario}/fhir", "Procedure?patient=p")
    assert fetched.value is None
    assert fetched.failure == kind
    assert stats.failures == {kind: 1}


def test_unreachable_server_is_a_connection_failure(fetcher: FhirFetcher) -> None:
    """Nothing listening on the port: connection failure, quickly."""
    fetched, _ = fetch_one(fetcher, "http://127.0.0.1:9/fhir", "Procedure?patient=p")
    assert fetched.failure == "connection"


def test_endless_body_stops_at_the_deadline(server: FaultServer) -> None:
    """A body that drips forever is abandoned by the deadline, not waited on.

    The bound has two seconds of slack for a busy machine: without the deadline the call would
    never end, since each byte arrives well inside the read timeout.
    """
    fetcher = FhirFetcher(FetchPolicy(read_timeout=5, deadline=1.0))
    started = time.monotonic()
    fetched, _ = fetch_one(fetcher, f"{server.url}/drip/fhir", "Procedure?patient=p")
    elapsed = time.monotonic() - started
    fetcher.close()
    assert fetched.failure == "deadline"
    assert elapsed < 1.0 + 2.0


def test_read_of_a_missing_resource_is_no_data(server: FaultServer, fetcher: FhirFetcher) -> None:
    """A read answered 404 means the resource does not exist: no data, not a failure."""
    fetched, stats = fetch_one(fetcher, f"{server.url}/status-404/fhir", "Encounter/e1")
    assert fetched.value is None
    assert fetched.failure is None
    assert fetched.absent is True
    assert stats.failures == {"not-found": 1}


def test_read_of_one_resource(server: FaultServer, fetcher: FhirFetcher) -> None:
    """A read expects the named resource type; a Bundle answer to a read is not FHIR we asked for."""
    fetched, _ = fetch_one(fetcher, f"{server.url}/ok/fhir", "Encounter/e1")
    assert fetched.failure == "not-fhir"


def test_pages_are_followed_up_to_the_cap(server: FaultServer) -> None:
    """next links below the base are followed until max_pages, then marked truncated."""
    fetcher = FhirFetcher(FetchPolicy(max_pages=3))
    fetched, stats = fetch_one(fetcher, f"{server.url}/pages/fhir", "Procedure?patient=p")
    fetcher.close()
    ids = [entry["resource"]["id"] for entry in fetched.value["entry"]]
    assert ids == ["page-1", "page-2", "page-3"]
    assert fetched.truncated is True
    assert "link" not in fetched.value
    assert stats.failures == {}


def test_next_link_to_another_host_is_not_followed(
    server: FaultServer, fetcher: FhirFetcher
) -> None:
    """A next link outside the FHIR base is never called."""
    before = len(server.received)
    fetched, _ = fetch_one(fetcher, f"{server.url}/foreign-next/fhir", "Procedure?patient=p")
    assert fetched.truncated is True
    assert len(server.received) == before + 1


def test_bearer_token_is_sent_only_when_given(server: FaultServer, fetcher: FhirFetcher) -> None:
    """Authorization: Bearer <token> with a token, no Authorization header without one."""
    server.received.clear()
    fetch_one(fetcher, f"{server.url}/ok/fhir", "Device?patient=p", token="tok-123")
    fetch_one(fetcher, f"{server.url}/ok/fhir", "Device?patient=p")
    assert [auth for _, auth in server.received] == ["Bearer tok-123", None]


def test_cookies_are_never_sent_back(server: FaultServer, fetcher: FhirFetcher) -> None:
    """A cookie set by the FHIR server during one call never rides along on the next."""
    fetch_one(fetcher, f"{server.url}/cookie/fhir", "Device?patient=p1")
    server.cookies.clear()
    fetch_one(fetcher, f"{server.url}/cookie/fhir", "Device?patient=p2")
    assert server.cookies == [None]


def test_round_runs_concurrently(server: FaultServer, fetcher: FhirFetcher) -> None:
    """Four queries held 300 ms each by the server are all open there at the same time."""
    queries = {f"k{i}": f"Procedure?patient=p{i}" for i in range(4)}
    server.most_open = 0
    deadline = time.monotonic() + 2.0
    results = fetcher.fetch_round(
        f"{server.url}/delay-300/fhir", None, queries, deadline, FetchStats()
    )
    assert all(result.value is not None for result in results.values())
    assert server.most_open == 4


@pytest.mark.parametrize(
    ("policy", "base", "refusal"),
    [
        (FetchPolicy(), "http://anything.example/fhir", None),
        (FetchPolicy(https_only=True), "http://ehr.example.org/fhir", "not-allowed"),
        (FetchPolicy(allowlist=("https://ehr.example.org/fhir/",)), "https://ehr.example.org/fhir", None),
        (FetchPolicy(allowlist=("https://ehr.example.org/fhir/",)), "https://ehr.example.org/fhir/", None),
        (FetchPolicy(allowlist=("https://ehr.example.org/fhir/",)), "https://ehr.example.org/fhirx", "not-allowed"),
        (FetchPolicy(allowlist=("https://ehr.example.org/fhir/",)), "https://evil.example/fhir", "not-allowed"),
        (FetchPolicy(refuse_all=True), "https://ehr.example.org/fhir", "not-allowed"),
        (FetchPolicy(), "ftp://ehr.example.org/fhir", "invalid-fhir-server"),
        (FetchPolicy(), "https://ehr.example.org/fhir?x=1", "invalid-fhir-server"),
    ],
)  # fmt: skip
def test_outbound_allowlist(policy: FetchPolicy, base: str, refusal: str | None) -> None:
    """Only allowed FHIR base URLs are called (prefix match on whole path segments)."""
    assert FhirFetcher(policy).refusal(base) == refusal


def test_template_rendering() -> None:
    """Context and user tokens are substituted and percent-encoded; a missing one gives None."""
    context = {"patientId": "p 1&x=y", "encounterId": "e1", "userId": "Practitioner/dr-7"}
    assert (
        render_prefetch_template(
            "Procedure?patient={{context.patientId}}&x={{ context.encounterId }}", context
        )
        == "Procedure?patient=p%201%26x%3Dy&x=e1"
    )
    assert (
        render_prefetch_template("Practitioner/{{userPractitionerId}}", context)
        == "Practitioner/dr-7"
    )
    assert render_prefetch_template("PractitionerRole/{{userPractitionerRoleId}}", context) is None
    assert render_prefetch_template("Encounter/{{context.missing}}", context) is None


def test_references_to_resolve() -> None:
    """Devices, operative notes, coverages and payers are followed; absolute URLs never are."""
    resources: list[dict[str, Any]] = [
        {
            "resourceType": "Procedure",
            "focalDevice": [{"manipulated": {"reference": "Device/d1"}}, {"manipulated": {}}],
            "report": [{"reference": "DocumentReference/n1"}, {"reference": "DiagnosticReport/x"}],
        },
        {"resourceType": "Claim", "insurance": [{"coverage": {"reference": "Coverage/c1"}}]},
        {
            "resourceType": "Coverage",
            "payor": [
                {"reference": "Organization/o1"},
                {"reference": "http://evil/Organization/o2"},
            ],
        },
    ]
    assert references_to_resolve(resources) == {
        "Device/d1",
        "DocumentReference/n1",
        "Coverage/c1",
        "Organization/o1",
    }


# -- through the service -------------------------------------------------------------------


@pytest.fixture
def fault_app(make_app: Callable[..., Flask], sqlite_url: str, server: FaultServer) -> Any:
    """An app allowed to call the fault server (and the refused port); ``settings`` add CDS_*."""

    def make(**settings: str) -> Flask:
        return make_app(
            {
                "DATABASE_URL": sqlite_url,
                "FHIR_SERVER_ALLOWLIST": f"{server.url},{REFUSED}",
                "FHIR_DEADLINE_SECONDS": "1.5",
                "FHIR_READ_TIMEOUT_SECONDS": "0.5",
                "FHIR_MAX_RESPONSE_BYTES": str(POLICY.max_response_bytes),
            }
            | settings
        )

    return make


@pytest.fixture
def fault_client(fault_app: Callable[..., Flask]) -> FlaskClient:
    return fault_app().test_client()


def call(client: FlaskClient, body: dict[str, Any]) -> Any:
    return client.post(DISCHARGE, data=json.dumps(body), content_type="application/json")


def card_details(response: Any) -> list[str]:
    assert response.status_code == 200, response.get_data(as_text=True)
    cards = response.get_json()["cards"]
    assert cards
    return [card["detail"] for card in cards]


@pytest.mark.parametrize(
    ("scenario", "kind"),
    [
        ("status-401", "http-401"),
        ("status-403", "http-403"),
        ("status-404", "http-404"),  # a search answered 404: a failure (a read would be no data)
        ("status-429", "http-4xx"),
        ("status-503", "http-5xx"),
        ("garbage", "not-json"),
        ("html", "not-json"),
        ("outcome", "operation-outcome"),
        ("wrong-type", "not-fhir"),
        ("array", "not-fhir"),
        ("huge", "too-large"),
        ("huge-chunked", "too-large"),
        ("deep", "not-fhir"),
        ("drip", "deadline"),
        ("delay-10000", "timeout"),
        ("redirect", "redirect"),
        ("refused", "connection"),
    ],
)
def test_required_key_unobtainable_is_412_within_the_deadline(
    fault_client: FlaskClient, server: FaultServer, scenario: str, kind: str
) -> None:
    """Required data that cannot be fetched is a 412 naming it and why, in bounded time, without
    the token anywhere in the answer."""
    body = load_fixture(STANDARD)
    del body["prefetch"]["procedures"]
    body["fhirServer"] = REFUSED if scenario == "refused" else f"{server.url}/{scenario}/fhir"
    body["fhirAuthorization"] = {"access_token": "secret-tok", "token_type": "Bearer"}
    started = time.monotonic()
    response = call(fault_client, body)
    elapsed = time.monotonic() - started
    assert response.status_code == 412
    diagnostics = response.get_json()["issue"][0]["diagnostics"]
    assert "'procedures' (Procedure?patient={{context.patientId}}" in diagnostics
    assert REASONS[kind] in diagnostics
    assert "secret-tok" not in response.get_data(as_text=True)
    assert body["context"]["patientId"] not in diagnostics
    assert elapsed < 1.5 + 3.0  # the deadline plus slack for a busy machine; unbounded would hang


def prefetched_then_fetched(
    client: FlaskClient, key: str, prefetched: Any, fhir_server: str
) -> tuple[Any, Any]:
    """The standard call's cards with ``key`` prefetched as ``prefetched`` (uuids removed), and
    the response of the same call with ``key`` left to be fetched from ``fhir_server``."""
    body = load_fixture(STANDARD)
    body["prefetch"][key] = prefetched
    expected = without_uuids(call(client, body).get_json())
    del body["prefetch"][key]
    body["fhirServer"] = fhir_server
    return expected, call(client, body)


def test_read_answered_404_is_no_data(fault_client: FlaskClient, server: FaultServer) -> None:
    """The Encounter read answered 404 means no such Encounter: the same cards as `null`, with
    nothing marked not checked (a search answered 404 is a failure: see above)."""
    server.received.clear()
    expected, response = prefetched_then_fetched(
        fault_client, "encounter", None, f"{server.url}/status-404/fhir"
    )
    assert [path for path, _ in server.received] == ["/status-404/fhir/Encounter/enc-7c31d0"]
    assert "**Not checked:**" not in "".join(card_details(response))
    assert without_uuids(response.get_json()) == expected


def test_plain_json_answers_are_accepted(fault_client: FlaskClient, server: FaultServer) -> None:
    """A FHIR server answering `application/json` (not fhir+json): the data is used, the cards
    are those of the same data prefetched; the Accept header offers both media types."""
    server.accepts.clear()
    expected, response = prefetched_then_fetched(
        fault_client, "conditions", EMPTY_BUNDLE, f"{server.url}/plain-json/fhir"
    )
    assert "**Not checked:**" not in "".join(card_details(response))
    assert without_uuids(response.get_json()) == expected
    [accept] = server.accepts
    assert accept is not None
    offered = [part.split(";")[0].strip() for part in accept.split(",")]
    assert offered[0] == "application/fhir+json"
    assert "application/json" in offered


def test_page_cap_is_said_on_the_cards(
    fault_app: Callable[..., Flask], server: FaultServer
) -> None:
    """A search with more pages than CDS_FHIR_MAX_PAGES=2: two pages are read, and every card
    says only the first pages of that search were read."""
    client = fault_app(FHIR_MAX_PAGES="2").test_client()
    body = load_fixture(STANDARD)
    del body["prefetch"]["conditions"]
    body["fhirServer"] = f"{server.url}/pages/fhir"
    server.received.clear()
    details = card_details(call(client, body))
    assert [path.split("?")[0] for path, _ in server.received] == [
        "/pages/fhir/Condition",
        "/pages/fhir/Procedure",  # the fault server's next link
    ]
    for text in details:
        assert "`conditions`: only the first pages of the search were read" in text


def test_optional_key_unobtainable_gives_cards_that_say_so(
    fault_client: FlaskClient, server: FaultServer
) -> None:
    """Optional data that cannot be fetched: the cards still come, and say what was not checked."""
    body = load_fixture(STANDARD)
    del body["prefetch"]["conditions"]
    body["fhirServer"] = f"{server.url}/status-500/fhir"
    response = call(fault_client, body)
    assert response.status_code == 200
    (card,) = response.get_json()["cards"]
    assert "**Not checked:**" in card["detail"]
    assert "`conditions`: the FHIR server failed (5xx)" in card["detail"]


def test_null_keys_are_not_fetched(fault_client: FlaskClient, server: FaultServer) -> None:
    """A key sent as null means no data: no search is run for it (references may still be read)."""
    body = load_fixture(STANDARD)
    for key in body["prefetch"]:
        if key != "procedures":
            body["prefetch"][key] = None
    body["fhirServer"] = f"{server.url}/ok/fhir"
    server.received.clear()
    assert call(fault_client, body).status_code == 200
    assert [path for path, _ in server.received if "?" in path] == []
    assert [path.split("/")[3] for path, _ in server.received] == ["Device"]


def production_app(
    make_app: Callable[..., Flask], database_url: str, tmp_path: Path, **settings: str
) -> tuple[Flask, SigningKey]:
    """A production-profile app trusting one client, and that client's signing key."""
    key = SigningKey.ec384()
    trust = write_trust_file(tmp_path, [{"iss": ISSUER, "jwks": jwk_set(key)}])
    app = make_app(
        {
            "DATABASE_URL": database_url,
            "PROFILE": "production",
            "PUBLIC_BASE_URL": BASE_URL,
            "TRUSTED_CLIENTS": str(trust),
        }
        | settings
    )
    return app, key


def signed_call(app: Flask, key: SigningKey, body: dict[str, Any]) -> Any:
    return app.test_client().post(
        DISCHARGE,
        data=json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {TokenFactory(key).token(DISCHARGE)}"},
    )


def test_production_refuses_plain_http_fhir_servers(
    make_app: Any, migrated_sqlite_url: str, server: FaultServer, tmp_path: Path
) -> None:
    """In production only https servers on the allowlist are called."""
    app, key = production_app(
        make_app,
        migrated_sqlite_url,
        tmp_path,
        FHIR_SERVER_ALLOWLIST="https://ehr.example.org/fhir",
    )
    body = load_fixture(STANDARD)
    del body["prefetch"]["procedures"]
    body["fhirServer"] = f"{server.url}/ok/fhir"
    server.received.clear()
    response = signed_call(app, key, body)
    assert response.status_code == 412
    assert "not an allowed FHIR server" in response.get_json()["issue"][0]["diagnostics"]
    assert server.received == []


def test_production_with_an_empty_allowlist_calls_nothing(
    make_app: Callable[..., Flask], migrated_sqlite_url: str, tmp_path: Path
) -> None:
    """Production without CDS_FHIR_SERVER_ALLOWLIST starts, but calls no FHIR server: even an
    https one is refused, no connection is opened, and the 412 says why."""
    app, key = production_app(make_app, migrated_sqlite_url, tmp_path, FHIR_SERVER_ALLOWLIST="")
    assert service_state(app).settings.fetch.refuse_all
    body = load_fixture(STANDARD)
    del body["prefetch"]["procedures"]
    with socket.socket() as listener:  # where the FHIR server would be: any connection queues
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        body["fhirServer"] = f"https://127.0.0.1:{listener.getsockname()[1]}/fhir"
        response = signed_call(app, key, body)
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert response.status_code == 412
    diagnostics = response.get_json()["issue"][0]["diagnostics"]
    assert "'procedures'" in diagnostics
    assert REASONS["not-allowed"] in diagnostics


# -- configuration of the outbound path ------------------------------------------------------


def test_default_deadline_is_three_seconds(make_app: Callable[..., Flask], sqlite_url: str) -> None:
    """Without CDS_FHIR_DEADLINE_SECONDS each hook call may fetch for 3 s."""
    assert Settings.load(environ={}).fetch.deadline == 3.0
    fetcher = service_state(make_app({"DATABASE_URL": sqlite_url})).fetcher
    assert fetcher.policy.deadline == 3.0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FHIR_DEADLINE_SECONDS", "0.05"),
        ("FHIR_DEADLINE_SECONDS", "61"),
        ("FHIR_DEADLINE_SECONDS", "nan"),
        ("FHIR_DEADLINE_SECONDS", "3s"),
        ("FHIR_CONNECT_TIMEOUT_SECONDS", "0"),
        ("FHIR_CONNECT_TIMEOUT_SECONDS", "61"),
        ("FHIR_READ_TIMEOUT_SECONDS", "-1"),
        ("FHIR_READ_TIMEOUT_SECONDS", "inf"),
        ("FHIR_MAX_PAGES", "0"),
        ("FHIR_MAX_PAGES", "101"),
        ("FHIR_MAX_PAGES", "2.5"),
        ("FHIR_MAX_RESPONSE_BYTES", "1023"),
        ("FHIR_MAX_RESPONSE_BYTES", str(1024**3 + 1)),
        ("FHIR_MAX_CONCURRENCY", "0"),
        ("FHIR_MAX_CONCURRENCY", "65"),
        ("FHIR_SERVER_ALLOWLIST", "ftp://ehr.example.org/fhir"),
        ("FHIR_SERVER_ALLOWLIST", "https://ehr.example.org/fhir?tenant=1"),
    ],
)
def test_bad_fetch_setting_stops_start_up_naming_it(
    make_app: Callable[..., Flask],
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    value: str,
) -> None:
    """An out-of-range CDS_FHIR_* value in the environment stops create_app, naming it."""
    monkeypatch.setenv(f"CDS_{name}", value)
    with pytest.raises(ConfigError, match=f"^CDS_{name} "):
        make_app({"DATABASE_URL": sqlite_url})


def test_production_allowlist_must_be_https(
    make_app: Callable[..., Flask], migrated_sqlite_url: str, tmp_path: Path
) -> None:
    """In production an http:// allowlist entry is a start-up error, not a silently dead entry."""
    https_only = "https://ehr.example.org/fhir"
    app, _ = production_app(
        make_app, migrated_sqlite_url, tmp_path, FHIR_SERVER_ALLOWLIST=https_only
    )
    assert service_state(app).settings.fetch.allowlist == (https_only + "/",)
    with pytest.raises(ConfigError, match="CDS_FHIR_SERVER_ALLOWLIST may list only https URLs"):
        production_app(
            make_app,
            migrated_sqlite_url,
            tmp_path,
            FHIR_SERVER_ALLOWLIST=f"{https_only},http://127.0.0.1:8081/fhir",
        )
