"""The one outbound-URL policy: its rules on their own, and each escape of a multi-tenant FHIR host
tried through the service against a stub host that records what reached it and with which token."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from helpers.corpus import load_fixture
from helpers.fault_server import FaultServer, fault_server
from helpers.jwt_tokens import BASE_URL, ISSUER, SigningKey, TokenFactory, jwk_set, write_trust_file
from hypothesis import given
from hypothesis import strategies as st

from cds_service.config import Settings
from cds_service.errors import ConfigError
from cds_service.fhir.client import FetchPolicy, FetchStats, FhirFetcher
from cds_service.fhir.url_policy import (
    OutboundUrl,
    UnsafeUrlError,
    allowlist_entry,
    is_allowed,
    parse_base,
    parse_outbound,
    remove_dot_segments,
)

DISCHARGE = "/cds-services/cpt20703-encounter-discharge"
STANDARD = "encounter-discharge--tibia-nonunion-removal.json"
TOKEN = "tenant-a-token"
# Each way of climbing from /ok/fhir (tenant A, allowed) to /tenant-b/fhir on the same host.
CLIMBS = {
    "dots": "../..",
    "encoded dots": "%2e%2e/%2E%2E",
    "semicolon dots": "..;/..;",
    "mixed": "./../%2e./..",
}


# -- the rules -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://host/a/fhir/%2e%2e/b", "encoded-dot"),
        ("https://host/a/fhir/.%2E/b", "encoded-dot"),
        ("https://host/a/fhir/..%2fb", "encoded-separator"),
        ("https://host/a/fhir/..%5cb", "encoded-separator"),
        ("https://host/a/fhir/%252e%252e/b", "encoded-separator"),
        ("https://host/a/fhir/..;/..;/b", "path-parameter"),
        ("https://host/a/fhir;jsessionid=1/Patient", "path-parameter"),
        ("https://host/a/fhir/..\\..\\b", "backslash"),
        ("https://host\\@evil.example/fhir", "backslash"),
        ("https://user:pw@host/fhir", "userinfo"),
        ("https://host@evil.example/fhir", "userinfo"),
        ("https://host/fhir#frag", "fragment"),
        ("https://host/fh ir", "not-printable-ascii"),
        ("https://host/fhir\n", "not-printable-ascii"),
        ("https://hóst/fhir", "not-printable-ascii"),
        ("https://host/fhir/%zz", "bad-escape"),
        ("ftp://host/fhir", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("https:///fhir", "no-host"),
        ("https://host:99999/fhir", "malformed"),
        ("https://[::1/fhir", "malformed"),
        ("https://host/" + "a" * 5000, "too-long"),
    ],
)
def test_unsafe_urls_are_refused_naming_the_rule(url: str, reason: str) -> None:
    with pytest.raises(UnsafeUrlError) as refused:
        parse_outbound(url)
    assert refused.value.reason == reason
    assert url not in str(refused.value)  # the reason may be logged; the URL is not in it


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        ("HTTPS://EHR.Example.org/fhir", "https://ehr.example.org/fhir"),
        ("https://ehr.example.org:443/fhir/", "https://ehr.example.org/fhir/"),
        ("http://127.0.0.1:8080/a/fhir/../../b/fhir", "http://127.0.0.1:8080/b/fhir"),
        ("https://h/a/./fhir/x/..", "https://h/a/fhir/"),
        ("https://h/../../fhir", "https://h/fhir"),
        ("https://[::1]:9443/fhir?_count=5", "https://[::1]:9443/fhir?_count=5"),
        ("https://h/fhir/Patient?name=%2e%2e%2Fx", "https://h/fhir/Patient?name=%2e%2e%2Fx"),
    ],
)
def test_urls_are_normalised_before_anything_compares_them(url: str, normalised: str) -> None:
    assert str(parse_outbound(url)) == normalised


@pytest.mark.parametrize(
    ("url", "base", "within"),
    [
        ("https://h/a/fhir", "https://h/a/fhir/", True),
        ("https://h/a/fhir/Patient/1", "https://h/a/fhir", True),
        ("https://h/a/fhirx", "https://h/a/fhir", False),
        ("https://h/a/fhir/../../b/fhir", "https://h/a/fhir", False),
        ("https://h/a/fhir/x/../Patient", "https://h/a/fhir", True),
        ("https://h/a", "https://h/a/fhir", False),
        ("http://h/a/fhir", "https://h/a/fhir", False),
        ("https://h:8443/a/fhir", "https://h/a/fhir", False),
        ("https://h.evil/a/fhir", "https://h/a/fhir", False),
        ("https://H/a/fhir", "https://h:443/a/fhir", True),
    ],
)
def test_allowlist_entries_are_compared_by_structure(url: str, base: str, within: bool) -> None:
    """Same scheme, host and port, and a path at or below the entry's, whole segments only."""
    assert parse_outbound(url).is_within(parse_outbound(base)) is within
    assert is_allowed(parse_outbound(url), ("https://other.example/fhir/", base)) is within


@pytest.mark.parametrize("relative", ["Patient/..", "./Patient", "Device/../../b", "x/./y?q=1"])
def test_a_query_below_a_base_may_not_hold_a_dot_segment(relative: str) -> None:
    with pytest.raises(UnsafeUrlError) as refused:
        parse_outbound("https://h/a/fhir").child(relative)
    assert refused.value.reason == "dot-segment"


def test_a_query_below_a_base_is_joined_on_a_segment() -> None:
    base = parse_outbound("https://h/a/fhir/")
    assert str(base.child("Procedure?patient=p%2F1")) == "https://h/a/fhir/Procedure?patient=p%2F1"
    assert str(base.child("/Device/d-1")) == "https://h/a/fhir/Device/d-1"


SEGMENT = st.sampled_from([".", "..", "a", "fhir", "", "b.c", "..."])


@given(st.lists(SEGMENT, max_size=8))
def test_resolved_paths_hold_no_dot_segment_and_resolve_to_themselves(
    segments: list[str],
) -> None:
    resolved = remove_dot_segments("/" + "/".join(segments))
    assert resolved.startswith("/")
    assert not {".", ".."} & set(resolved.split("/"))
    assert remove_dot_segments(resolved) == resolved


@given(st.lists(SEGMENT, max_size=8), st.lists(SEGMENT, min_size=1, max_size=4))
def test_what_is_within_a_base_is_sent_below_it(base: list[str], rest: list[str]) -> None:
    """Whatever the dots, a URL judged within the base is, as sent, below the base's path."""
    base_url = parse_outbound("https://h/" + "/".join(base))
    candidate = parse_outbound(f"{base_url}/{'/'.join(rest)}")
    sent = str(candidate)
    if candidate.is_within(base_url):
        assert sent == str(base_url).rstrip("/") or sent.startswith(str(base_url).rstrip("/") + "/")
    assert parse_outbound(sent) == candidate


def test_outbound_url_text_round_trips() -> None:
    url = OutboundUrl("https", "ehr.example.org", 8443, "/fhir/Patient", "_id=1")
    assert parse_outbound(str(url)) == url


# -- the fetcher: server-supplied paging links ----------------------------------------------------


@pytest.fixture(scope="module")
def stub() -> Iterator[FaultServer]:
    with fault_server() as running:
        yield running


def reached_outside(stub: FaultServer, base_path: str) -> list[tuple[str, str | None]]:
    """Requests the stub received that are not plainly below ``base_path``: outside it, or with
    anything a server could resolve or decode into a climb."""
    return [
        (path, authorization)
        for path, authorization in stub.received
        if not path.startswith(base_path + "/")
        or any(mark in path.lower() for mark in ("..", "%2e", ";", "\\"))
    ]


@pytest.mark.parametrize("style", ["dots", "encoded", "semicolon"])
def test_a_next_link_climbing_out_of_the_base_is_not_followed(
    stub: FaultServer, style: str
) -> None:
    fetcher = FhirFetcher(FetchPolicy(allowlist=(f"{stub.url}/escaping-next/fhir/",)))
    stub.received.clear()
    deadline = time.monotonic() + 2.0
    result = fetcher.fetch_round(
        f"{stub.url}/escaping-next/fhir",
        TOKEN,
        {"procedures": f"Procedure?escape={style}"},
        deadline,
        FetchStats(),
    )["procedures"]
    fetcher.close()
    assert result.truncated is True
    assert len(stub.received) == 1
    assert reached_outside(stub, "/escaping-next/fhir") == []


# -- through the service --------------------------------------------------------------------------


@pytest.fixture
def tenant_a_app(make_app: Callable[..., Flask], sqlite_url: str, stub: FaultServer) -> Flask:
    """Development profile, allowed to call tenant A's base on the stub host only."""
    return make_app(
        {
            "DATABASE_URL": sqlite_url,
            "FHIR_SERVER_ALLOWLIST": f"{stub.url}/ok/fhir",
            "FHIR_DEADLINE_SECONDS": "1.5",
        }
    )


def hook_call(app: Flask, body: dict[str, Any], token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return app.test_client().post(
        DISCHARGE, data=json.dumps(body), content_type="application/json", headers=headers
    )


def without_procedures(stub_base: str) -> dict[str, Any]:
    body = load_fixture(STANDARD)
    del body["prefetch"]["procedures"]  # required: the service must fetch it
    body["fhirServer"] = stub_base
    body["fhirAuthorization"] = {"access_token": TOKEN, "token_type": "Bearer"}
    return body


@pytest.mark.parametrize("climb", sorted(CLIMBS))
def test_a_fhir_server_climbing_out_of_the_allowed_base_is_refused(
    tenant_a_app: Flask, stub: FaultServer, climb: str
) -> None:
    """``…/ok/fhir/../../tenant-b/fhir`` (and its encoded and ``;`` forms) is not tenant A's
    server: 412, and nothing reaches the host, tenant A's token least of all."""
    stub.received.clear()
    response = hook_call(
        tenant_a_app, without_procedures(f"{stub.url}/ok/fhir/{CLIMBS[climb]}/tenant-b/fhir")
    )
    assert response.status_code == 412, response.get_data(as_text=True)
    diagnostics = response.get_json()["issue"][0]["diagnostics"]
    assert "'procedures'" in diagnostics
    assert "not an allowed FHIR server" in diagnostics or "not a valid URL" in diagnostics
    assert stub.received == []


def test_the_allowed_base_itself_is_called_with_the_token(
    tenant_a_app: Flask, stub: FaultServer
) -> None:
    """The control: the same call to tenant A's own base is answered from it, token attached."""
    stub.received.clear()
    response = hook_call(tenant_a_app, without_procedures(f"{stub.url}/ok/fhir/"))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert any(path.startswith("/ok/fhir/Procedure?") for path, _ in stub.received)
    assert {authorization for _, authorization in stub.received} == {f"Bearer {TOKEN}"}
    assert reached_outside(stub, "/ok/fhir") == []


@pytest.mark.parametrize("climb", sorted(CLIMBS))
def test_a_prefetched_next_link_climbing_out_of_the_base_is_not_followed(
    tenant_a_app: Flask, stub: FaultServer, climb: str
) -> None:
    """A client-paginated prefetch whose next link climbs to tenant B: the link is not
    called, and the cards say the procedures were not all read."""
    body = load_fixture(STANDARD)
    body["fhirServer"] = f"{stub.url}/ok/fhir"
    body["fhirAuthorization"] = {"access_token": TOKEN, "token_type": "Bearer"}
    body["prefetch"]["procedures"]["link"] = [
        {
            "relation": "next",
            "url": f"{stub.url}/ok/fhir/{CLIMBS[climb]}/tenant-b/fhir/Procedure?page=2",
        }
    ]
    stub.received.clear()
    response = hook_call(tenant_a_app, body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert reached_outside(stub, "/ok/fhir") == []


def test_a_server_supplied_next_link_climbing_out_is_not_followed(
    make_app: Callable[..., Flask], sqlite_url: str, stub: FaultServer
) -> None:
    app = make_app(
        {"DATABASE_URL": sqlite_url, "FHIR_SERVER_ALLOWLIST": f"{stub.url}/escaping-next/fhir"}
    )
    stub.received.clear()
    response = hook_call(app, without_procedures(f"{stub.url}/escaping-next/fhir"))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert stub.received  # the first page was read
    assert reached_outside(stub, "/escaping-next/fhir") == []


def test_a_reference_with_a_dot_segment_id_is_not_read(
    tenant_a_app: Flask, stub: FaultServer
) -> None:
    """``Device/..`` is a well-formed reference whose read would be the base itself."""
    body = load_fixture(STANDARD)
    body["fhirServer"] = f"{stub.url}/ok/fhir"
    procedure = body["prefetch"]["procedures"]["entry"][0]["resource"]
    procedure["focalDevice"] = [{"manipulated": {"reference": "Device/.."}}]
    stub.received.clear()
    response = hook_call(tenant_a_app, body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert all(path != "/ok/fhir/" and ".." not in path for path, _ in stub.received)


def test_a_client_trust_entry_base_is_compared_by_structure(
    make_app: Callable[..., Flask], sqlite_url: str, tmp_path: Path, stub: FaultServer
) -> None:
    """A FHIR server a client's trust entry lists is escaped no more easily than the allowlist."""
    key = SigningKey.ec384()
    trust = write_trust_file(
        tmp_path, [{"iss": ISSUER, "jwks": jwk_set(key), "fhir_servers": [f"{stub.url}/ok/fhir"]}]
    )
    app = make_app(
        {
            "DATABASE_URL": sqlite_url,
            "AUTH": "required",
            "TRUSTED_CLIENTS": str(trust),
            "PUBLIC_BASE_URL": BASE_URL,
        }
    )
    tokens = TokenFactory(key)
    stub.received.clear()
    escape = without_procedures(f"{stub.url}/ok/fhir/../../tenant-b/fhir")
    refused = hook_call(app, escape, tokens.token(DISCHARGE))
    assert refused.status_code == 412
    assert stub.received == []
    allowed = hook_call(app, without_procedures(f"{stub.url}/ok/fhir"), tokens.token(DISCHARGE))
    assert allowed.status_code == 200, allowed.get_data(as_text=True)
    assert stub.received
    assert reached_outside(stub, "/ok/fhir") == []


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry",
    ["https://user@ehr.example.org/fhir", "https://ehr.example.org/a/%2e%2e/fhir", "https://e/f;x"],
)
def test_an_allowlist_entry_breaking_the_rules_stops_start_up(entry: str) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.load(environ={"CDS_FHIR_SERVER_ALLOWLIST": entry})
    assert "CDS_FHIR_SERVER_ALLOWLIST" in str(error.value)


def test_allowlist_entries_are_kept_normalised() -> None:
    settings = Settings.load(
        environ={"CDS_FHIR_SERVER_ALLOWLIST": "HTTPS://EHR.example.org:443/x/../fhir"}
    )
    assert settings.fetch.allowlist == ("https://ehr.example.org/fhir/",)


@pytest.mark.parametrize(
    ("jku", "message"),
    [
        ("http://127.0.0.1.evil.example/jwks.json", "must be https"),
        ("https://user@keys.example.org/jwks.json", "userinfo"),
        ("https://keys.example.org/a/%2e%2e/jwks.json", "encoded-dot"),
    ],
)
def test_a_jku_breaking_the_rules_stops_start_up(tmp_path: Path, jku: str, message: str) -> None:
    trust = write_trust_file(tmp_path, [{"iss": ISSUER, "jku": [jku]}])
    with pytest.raises(ConfigError) as error:
        Settings.load(environ={"CDS_AUTH": "required", "CDS_TRUSTED_CLIENTS": str(trust)})
    assert message in str(error.value)


def test_a_loopback_jku_is_allowed_for_tests(tmp_path: Path) -> None:
    trust = write_trust_file(tmp_path, [{"iss": ISSUER, "jku": ["http://127.0.0.1:9/jwks.json"]}])
    settings = Settings.load(environ={"CDS_AUTH": "required", "CDS_TRUSTED_CLIENTS": str(trust)})
    assert settings.auth.clients[0].jku == ("http://127.0.0.1:9/jwks.json",)


def test_loopback_spellings_are_one_host_only_where_asked() -> None:
    """Development folds localhost, 127.0.0.1 and [::1] into one host for the allowlist; the
    port and path still count, a public host is never folded, and production folds nothing."""
    allowlist = (allowlist_entry("http://127.0.0.1:8081/fhir"),)
    for spelling in (
        "http://localhost:8081/fhir",
        "http://[::1]:8081/fhir/Patient/p1",
        "http://LOCALHOST:8081/fhir/",
        "http://127.0.0.1:8081/fhir",
    ):
        assert is_allowed(parse_base(spelling), allowlist, loopback_alike=True), spelling
    assert not is_allowed(parse_base("http://localhost:8081/fhir"), allowlist)
    for outside in (
        "http://localhost:8082/fhir",
        "http://localhost:8081/other",
        "http://localhost.example.org:8081/fhir",
        "http://127.0.0.2:8081/fhir",
    ):
        assert not is_allowed(parse_base(outside), allowlist, loopback_alike=True), outside
    public = (allowlist_entry("http://ehr.example.org/fhir"),)
    assert not is_allowed(parse_base("http://localhost/fhir"), public, loopback_alike=True)


def test_development_calls_an_allowlisted_loopback_server_by_its_other_name(
    tenant_a_app: Flask, stub: FaultServer
) -> None:
    """The allowlist says 127.0.0.1 and the sandbox says localhost: in development the service
    calls the server (the failure would be silent: cards that say the data was not checked)."""
    assert stub.url.startswith("http://127.0.0.1:")
    spelled = stub.url.replace("127.0.0.1", "localhost") + "/ok/fhir"
    stub.received.clear()
    response = hook_call(tenant_a_app, without_procedures(spelled))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert any(path.startswith("/ok/fhir/Procedure") for path, _ in stub.received)
    assert "Not checked" not in json.dumps(response.get_json())
