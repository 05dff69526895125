"""The HTTP surface through Flask's client: discovery, hook calls, status codes, CORS, JSON rules."""

from __future__ import annotations

import copy
import io
import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import sqlalchemy
import yaml
from fhir.resources.R4B.claim import Claim
from fhir.resources.R4B.task import Task
from flask import Flask
from flask.testing import FlaskClient
from helpers.cards import assert_workflow_card, unfilled_placeholders
from helpers.corpus import EXPECTED, FIXTURE_NAMES, icd10cm_diagnoses, load_fixture, without_uuids
from helpers.jwt_tokens import ISSUER, SigningKey, jwk_set, write_trust_file
from helpers.privacy import sensitive_strings
from helpers.suggestion_records import EXPECTED_EDITS, documentation_labels, suggestion_record
from werkzeug.test import TestResponse

from cds_service.engine import hook_call
from cds_service.fhir.json_limits import violations
from cds_service.rulepack.detail_fit import UNCONFIRMED_LINE
from cds_service.rulepack.loading import default_cards_dir
from cds_service.rulepack.models import RulePack
from cds_service.web.app_state import service_state

RESPONSE_SCHEMA = json.loads(
    (Path(__file__).parent / "schemas" / "cds-hooks-2.0-response.schema.json").read_text()
)
DISCHARGE = "/cds-services/cpt20703-encounter-discharge"
ORDER_SIGN = "/cds-services/cpt20703-order-sign"
STANDARD = "encounter-discharge--tibia-nonunion-removal.json"

# SDC's code system for Task codes and inputs (complete-questionnaire, questionnaire).
SDC_TEMP = "http://hl7.org/fhir/uv/sdc/CodeSystem/temp"


def post(client: FlaskClient, fixture: str | dict[str, Any], url: str | None = None) -> Any:
    """POST a fixture (by name) or a body to its service, or to ``url``."""
    if isinstance(fixture, str):
        body = load_fixture(fixture)
        url = url or f"/cds-services/{EXPECTED[fixture]['service']}"
    else:
        body = fixture
        url = url or (DISCHARGE if body.get("hook") == "encounter-discharge" else ORDER_SIGN)
    return client.post(url, data=json.dumps(body), content_type="application/json")


def assert_operation_outcome(response: TestResponse, status: int, *needles: str) -> str:
    """The response is an OperationOutcome error with the status; return its diagnostics."""
    assert response.status_code == status
    assert response.mimetype == "application/fhir+json"
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    issue = body["issue"][0]
    assert issue["severity"] == "error"
    assert issue["code"]
    diagnostics: str = issue["diagnostics"]
    assert diagnostics
    assert "Traceback" not in response.get_data(as_text=True)
    assert response.headers.get("Access-Control-Allow-Origin") == "*"
    for needle in needles:
        assert needle in diagnostics
    return diagnostics


def assert_explained(
    client: FlaskClient, card: dict[str, Any], pack: RulePack, note: str | None, payer: str
) -> None:
    """The card's link opens its finding's explanation (as JSON): every item the finding, with
    the note it was raised with, leaves unconfirmed, and the patient's payer profile."""
    code = card["extension"]["cpt20703.finding"]
    path = urlsplit(card["links"][0]["url"])
    page = client.get(f"{path.path}.json?{path.query}").get_json()
    assert page["finding"] == code
    listed = page["unconfirmed"] + page["unconfirmedInSomeCases"]
    assert set(pack.findings.findings[code].unconfirmed_for(note)) <= set(listed), code
    assert page["unconfirmed"] == pack.findings.findings[code].unconfirmed
    assert page["payer"]["key"] == payer


def assert_suggestions_match_the_records(
    name: str, cards: list[dict[str, Any]], pack: RulePack
) -> None:
    """The claim edits and Tasks the cards carry equal expected-edits.json, through HTTP."""
    body = load_fixture(name)
    labels = documentation_labels(pack)
    suggested: dict[str, Any] = {}
    for card in cards:
        code = card["extension"]["cpt20703.finding"]
        if pack.findings.findings[code].suggestion is None:
            assert "suggestions" not in card, code
            continue
        actions = [a for s in card.get("suggestions", []) for a in s["actions"]]
        assert len(actions) <= 1, code
        suggested[code] = (
            suggestion_record(actions[0]["type"], actions[0]["resource"], body, labels)
            if actions
            else None
        )
    assert suggested == EXPECTED_EDITS.get(name, {})


def finding_codes(response: TestResponse) -> list[str]:
    return sorted(card["extension"]["cpt20703.finding"] for card in response.get_json()["cards"])


# -- discovery -------------------------------------------------------------------------------


def test_discovery_lists_the_rule_pack_services(client: FlaskClient) -> None:
    """GET /cds-services returns exactly the services written in cards/services.yaml."""
    response = client.get("/cds-services")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    written = yaml.safe_load((default_cards_dir() / "services.yaml").read_text())["services"]
    expected = [
        {
            "hook": svc["hook"],
            "id": svc["id"],
            "title": svc["title"],
            "description": svc["description"],
            "usageRequirements": svc["usageRequirements"],
            "prefetch": {key: entry["template"] for key, entry in svc["prefetch"].items()},
        }
        for svc in written
    ]
    assert response.get_json() == {"services": expected}
    assert {svc["hook"] for svc in expected} == {"order-sign", "encounter-discharge"}
    assert violations(response.get_json()) == []


# -- hook calls over the fixture corpus ------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_answer_over_http(client: FlaskClient, pack: RulePack, name: str) -> None:
    """Each fixture gets its expected status and cards, in valid CDS Hooks 2.0 JSON."""
    response = post(client, name)
    expected = EXPECTED[name]
    if expected["status"] != 200:
        assert_operation_outcome(response, expected["status"])
        return
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    jsonschema.validate(body, RESPONSE_SCHEMA)
    assert violations(body) == []
    assert finding_codes(response) == expected["findings"]
    uuids = [card["uuid"] for card in body["cards"]]
    uuids += [s["uuid"] for card in body["cards"] for s in card.get("suggestions", [])]
    assert len(uuids) == len(set(uuids))
    notes = dict.fromkeys(expected["findings"]) | expected.get("notes", {})
    assert_suggestions_match_the_records(name, body["cards"], pack)
    base = service_state(client.application).settings.public_base_url
    for card in body["cards"]:
        code = card["extension"]["cpt20703.finding"]
        assert unfilled_placeholders(card) == [], card["extension"]
        assert len(card["summary"]) < 140
        hook = load_fixture(name)["hook"]
        assert_workflow_card(card, pack, hook, notes[code], expected["payer"], base)
        assert_explained(client, card, pack, notes[code], expected["payer"])
        assert card["source"]["topic"]["code"] == "claim"
        missing = card["extension"].get("cpt20703.missing-documentation")
        if card["extension"]["cpt20703.finding"] == "documentation-missing":
            assert sorted(missing) == expected["missing_documentation"]
            for key in missing:
                assert f"`{key}`" in card["detail"]
        for suggestion in card.get("suggestions", []):
            assert card["selectionBehavior"] == "at-most-one"
            for action in suggestion["actions"]:
                if action["type"] == "create":  # the documentation request
                    task = Task.model_validate(action["resource"])
                    assert task.status == "requested"
                    assert task.intent == "order"
                    assert task.code is not None
                    assert task.code.coding is not None
                    assert task.code.coding[0].code == "complete-questionnaire"
                    assert task.input is not None
                    task_input = task.input[0]
                    assert task_input.type.coding is not None
                    (input_type,) = task_input.type.coding
                    assert (input_type.system, input_type.code) == (SDC_TEMP, "questionnaire")
                    assert task_input.valueCanonical is not None
                    assert task_input.valueCanonical.endswith(
                        "/questionnaires/cpt20703-removal-documentation"
                    )
                    continue
                assert action["type"] == "update"
                Claim.model_validate(action["resource"])
                assert action["resourceId"] == f"Claim/{action['resource']['id']}"


def test_response_time_field_free_and_cards_empty_when_nothing_applies(
    client: FlaskClient,
) -> None:
    """No advice is 200 with exactly {"cards": []}."""
    response = post(client, "encounter-discharge--no-device.json")
    assert response.status_code == 200
    assert response.get_json() == {"cards": []}


def test_unknown_fields_are_ignored(client: FlaskClient) -> None:
    """Unknown top-level, context and extension fields do not change the answer."""
    body = load_fixture(STANDARD)
    body["extension"] = {"com.example.trace": {"id": 1}}
    body["somethingNew"] = [1, 2]
    body["context"]["com.example.flag"] = True
    response = post(client, body)
    assert response.status_code == 200
    assert finding_codes(response) == ["add-on-suggested"]


def test_null_prefetch_for_a_required_key_means_no_data(client: FlaskClient) -> None:
    """A required key sent as null is "no data": 200 without cards, not 412."""
    body = load_fixture(STANDARD)
    body["prefetch"]["procedures"] = None
    body["prefetch"]["documents"] = None  # the operative note alone would state the removal
    response = post(client, body)
    assert response.status_code == 200
    assert response.get_json() == {"cards": []}


def test_the_operative_note_supports_the_card_when_procedures_are_null(
    client: FlaskClient, pack: RulePack
) -> None:
    """With the Procedures null, the session's operative note still states the removal."""
    body = load_fixture(STANDARD)
    body["prefetch"]["procedures"] = None
    response = post(client, body)
    assert response.status_code == 200
    details = [card["detail"] for card in response.get_json()["cards"]]
    label = pack.findings.evidence_labels["operative-note-removal"]
    assert any(f"- {label}\n" in detail for detail in details)


def test_fhir_json_content_type_is_accepted(client: FlaskClient) -> None:
    """application/fhir+json bodies are JSON too."""
    response = client.post(
        DISCHARGE, data=json.dumps(load_fixture(STANDARD)), content_type="application/fhir+json"
    )
    assert response.status_code == 200


# -- errors ------------------------------------------------------------------------------------


def test_malformed_json_is_400(client: FlaskClient) -> None:
    """A body that does not parse is a 400 OperationOutcome."""
    response = client.post(DISCHARGE, data='{"hook": ', content_type="application/json")
    assert_operation_outcome(response, 400, "not well-formed JSON")


@pytest.mark.parametrize("body", ["[]", '"text"', "42", "NaN"])
def test_non_object_body_is_400(client: FlaskClient, body: str) -> None:
    """JSON that is not an object (or uses NaN) is rejected with 400."""
    response = client.post(DISCHARGE, data=body, content_type="application/json")
    assert_operation_outcome(response, 400)


@pytest.mark.parametrize("field", ["hook", "hookInstance", "context"])
def test_missing_required_field_is_400(client: FlaskClient, field: str) -> None:
    """hook, hookInstance and context are required; the diagnostics name the field."""
    body = load_fixture(STANDARD)
    body.pop(field)
    assert_operation_outcome(post(client, body, DISCHARGE), 400, field)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda body: body.__setitem__("hook", "order-sign"), "encounter-discharge hook"),
        (lambda body: body["context"].pop("encounterId"), "context.encounterId is required"),
        (lambda body: body["context"].pop("patientId"), "context.patientId is required"),
        (lambda body: body["context"].__setitem__("patientId", 12345), "context.patientId must"),
        (lambda body: body["context"].__setitem__("userId", "not a reference"), "Type/id"),
        (lambda body: body.__setitem__("hookInstance", 7), "hookInstance"),
        (lambda body: body.__setitem__("context", []), "context"),
        (lambda body: body.__setitem__("prefetch", "all"), "prefetch"),
        (
            lambda body: (
                body.pop("fhirServer", None),
                body.__setitem__(
                    "fhirAuthorization",
                    {"access_token": "secret-token-value", "token_type": "Bearer"},
                ),
            ),
            "fhirAuthorization requires fhirServer",
        ),
    ],
)
def test_invalid_request_is_400(client: FlaskClient, mutate: Any, needle: str) -> None:
    """Requests that are not valid for the service are 400 with a precise reason."""
    body = load_fixture(STANDARD)
    mutate(body)
    diagnostics = assert_operation_outcome(post(client, body, DISCHARGE), 400, needle)
    assert "secret-token-value" not in diagnostics


@pytest.mark.parametrize("field", ["patientId", "encounterId"])
@pytest.mark.parametrize(
    "value", ["../Patient/other", "Patient/p1", "p 1", "p1\n", "p1;x", "é", "x" * 65, "p%2F1"]
)
def test_a_context_id_that_is_not_a_fhir_id_is_400(
    client: FlaskClient, field: str, value: str
) -> None:
    """patientId and encounterId go into FHIR queries and into the resources a card suggests
    (Task.for): anything but a FHIR id is refused, named, and not echoed."""
    body = load_fixture(STANDARD)
    body["context"][field] = value
    diagnostics = assert_operation_outcome(
        post(client, body, DISCHARGE), 400, f"context.{field} must be a FHIR id"
    )
    assert value not in diagnostics


def test_order_sign_needs_a_draft_orders_bundle(client: FlaskClient) -> None:
    """draftOrders must be a FHIR Bundle."""
    body = load_fixture("order-sign--planned-removal-reminder.json")
    body["context"]["draftOrders"] = {"resourceType": "ServiceRequest"}
    assert_operation_outcome(post(client, body, ORDER_SIGN), 400, "draftOrders must be a FHIR")


def test_diagnostics_do_not_echo_patient_data(client: FlaskClient) -> None:
    """An ill-typed context value is named but never quoted."""
    body = load_fixture(STANDARD)
    body["context"]["patientId"] = ["Jane Testpatient"]
    diagnostics = assert_operation_outcome(post(client, body, DISCHARGE), 400)
    assert "Jane" not in diagnostics


def test_unknown_service_is_404(client: FlaskClient) -> None:
    """POST to an id the server does not host is 404."""
    response = post(client, load_fixture(STANDARD), "/cds-services/no-such-service")
    assert_operation_outcome(response, 404, "Unknown CDS service")


def test_unknown_path_is_404(client: FlaskClient) -> None:
    """Routing errors are OperationOutcomes too."""
    assert_operation_outcome(client.get("/nothing-here"), 404)


@pytest.mark.parametrize(
    ("method", "url"),
    [("get", DISCHARGE), ("put", "/cds-services"), ("delete", f"{DISCHARGE}/feedback")],
)
def test_wrong_method_is_405(client: FlaskClient, method: str, url: str) -> None:
    """Wrong methods are 405 with an Allow header."""
    response = getattr(client, method)(url)
    assert_operation_outcome(response, 405)
    assert "Allow" in response.headers


def test_missing_required_prefetch_is_412(client: FlaskClient) -> None:
    """A required prefetch key that is absent is a 412 naming the key."""
    response = post(client, "encounter-discharge--missing-required-prefetch.json")
    assert_operation_outcome(response, 412, "'procedures'")


def test_operation_outcome_prefetch_value_is_412(client: FlaskClient) -> None:
    """A prefetch that failed (OperationOutcome value) counts as missing."""
    body = load_fixture(STANDARD)
    body["prefetch"]["procedures"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "timeout"}],
    }
    assert_operation_outcome(post(client, body, DISCHARGE), 412, "'procedures'")


def test_body_over_the_limit_is_413(make_app: Any, sqlite_url: str) -> None:
    """A body larger than CDS_MAX_BODY_BYTES is refused with 413."""
    app = make_app({"DATABASE_URL": sqlite_url, "MAX_BODY_BYTES": "2048"})
    body = load_fixture(STANDARD)
    body["padding"] = "x" * 4096
    assert_operation_outcome(post(app.test_client(), body, DISCHARGE), 413, "CDS_MAX_BODY_BYTES")


def post_chunked(client: FlaskClient, body: bytes, url: str) -> Any:
    """POST ``body`` without Content-Length, as gunicorn hands a chunked request to the app."""
    return client.post(
        url,
        input_stream=io.BytesIO(body),
        content_type="application/json",
        environ_overrides={"wsgi.input_terminated": True},
    )


@pytest.mark.parametrize("url", [DISCHARGE, DISCHARGE + "/feedback"])
def test_chunked_body_over_the_limit_is_413(make_app: Any, sqlite_url: str, url: str) -> None:
    """A chunked body longer than CDS_MAX_BODY_BYTES is 413, not parsed cut at the limit."""
    app = make_app({"DATABASE_URL": sqlite_url, "MAX_BODY_BYTES": "2048"})
    body = json.dumps(load_fixture(STANDARD) | {"padding": "x" * 4096}).encode()
    response = post_chunked(app.test_client(), body, url)
    assert_operation_outcome(response, 413, "CDS_MAX_BODY_BYTES")


def test_chunked_body_at_the_limit_is_read_whole(make_app: Any, sqlite_url: str) -> None:
    """A chunked body of exactly CDS_MAX_BODY_BYTES is answered like the same body with a length."""
    body = json.dumps(load_fixture(STANDARD)).encode()
    app = make_app({"DATABASE_URL": sqlite_url, "MAX_BODY_BYTES": str(len(body))})
    client = app.test_client()
    chunked = post_chunked(client, body, DISCHARGE)
    assert chunked.status_code == 200
    assert chunked.get_json()["cards"]
    assert post_chunked(client, body + b" ", DISCHARGE).status_code == 413


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_non_json_body_is_415(client: FlaskClient, content_type: str | None) -> None:
    """Bodies not declared as JSON are 415."""
    data = json.dumps(load_fixture(STANDARD))
    response = client.post(DISCHARGE, data=data, content_type=content_type)
    assert_operation_outcome(response, 415, "must be JSON")


def test_unexpected_error_is_500_without_details(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash becomes a 500 OperationOutcome that says nothing about the failure."""

    def explode(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("Jane Testpatient broke it")

    monkeypatch.setattr("cds_service.web.cds_hooks.handle_hook_call", explode)
    with caplog.at_level(logging.ERROR, logger="cds_service"):
        response = post(client, STANDARD)
    diagnostics = assert_operation_outcome(response, 500)
    assert "Jane" not in diagnostics
    assert "RuntimeError" not in diagnostics
    assert "Jane" not in caplog.text
    assert any(getattr(r, "error_type", None) == "RuntimeError" for r in caplog.records)


def test_cards_are_answered_when_recording_them_fails(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A database fault while recording issued cards does not cost the clinician the cards."""
    store = service_state(client.application).store

    def unavailable(*_args: Any) -> None:
        raise sqlalchemy.exc.OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(store, "record_hook_call", unavailable)
    with caplog.at_level(logging.WARNING, logger="cds_service"):
        response = post(client, STANDARD)
    assert response.status_code == 200
    assert finding_codes(response) == ["add-on-suggested"]
    assert "hook call not recorded" in caplog.text


def test_odd_hook_instance_is_not_logged_verbatim(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Only id-like hookInstance values reach the log."""
    body = load_fixture(STANDARD)
    body["hookInstance"] = "Jane Testpatient 1970-01-01"
    with caplog.at_level(logging.INFO, logger="cds_service"):
        assert post(client, body).status_code == 200
    assert "Jane" not in caplog.text + str([vars(r) for r in caplog.records])


# -- CORS ----------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/cds-services", DISCHARGE, f"{DISCHARGE}/feedback"])
def test_cors_preflight(client: FlaskClient, url: str) -> None:
    """Preflight is answered without a token, allowing Authorization and Content-Type."""
    response = client.options(
        url,
        headers={
            "Origin": "https://sandbox.cds-hooks.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    allowed_headers = response.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed_headers
    assert "content-type" in allowed_headers
    assert "POST" in response.headers["Access-Control-Allow-Methods"]


def test_cors_on_success_and_restricted_origins(make_app: Any, sqlite_url: str) -> None:
    """Configured origins are echoed to allowed origins only."""
    app = make_app({"DATABASE_URL": sqlite_url, "CORS_ORIGINS": "https://sandbox.cds-hooks.org"})
    client = app.test_client()
    allowed = client.get("/cds-services", headers={"Origin": "https://sandbox.cds-hooks.org"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://sandbox.cds-hooks.org"
    other = client.get("/cds-services", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_browser_clients_can_read_the_request_id(client: FlaskClient) -> None:
    """A browser client (the sandbox) may read X-Request-ID, on answers and on errors, to quote
    it when asking for the service log."""
    origin = {"Origin": "https://sandbox.cds-hooks.org"}
    for response in (
        client.post(DISCHARGE, json=load_fixture(STANDARD), headers=origin),
        client.post(DISCHARGE, data="{not json", content_type="application/json", headers=origin),
    ):
        exposed = response.headers["Access-Control-Expose-Headers"].lower().split(", ")
        assert "x-request-id" in exposed
        assert response.headers["X-Request-ID"]


PRIVATE_NETWORK_PREFLIGHT = {
    "Origin": "https://sandbox.cds-hooks.org",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Private-Network": "true",
}


def test_private_network_preflight_is_allowed_in_development(client: FlaskClient) -> None:
    """Chromium asks before a public page (the hosted sandbox) calls a loopback service; in
    development the service says yes."""
    response = client.options(DISCHARGE, headers=PRIVATE_NETWORK_PREFLIGHT)
    assert response.headers["Access-Control-Allow-Private-Network"] == "true"
    plain = {k: v for k, v in PRIVATE_NETWORK_PREFLIGHT.items() if "Private" not in k}
    assert (
        "Access-Control-Allow-Private-Network"
        not in client.options(DISCHARGE, headers=plain).headers
    )


def test_private_network_preflight_is_not_allowed_in_production(
    make_app: Any, sqlite_url: str, tmp_path: Path
) -> None:
    trust = write_trust_file(tmp_path, [{"iss": ISSUER, "jwks": jwk_set(SigningKey.ec384())}])
    app = make_app(
        {
            "DATABASE_URL": sqlite_url,
            "PROFILE": "production",
            "PUBLIC_BASE_URL": "https://cds.example.org",
            "TRUSTED_CLIENTS": str(trust),
            "FHIR_SERVER_ALLOWLIST": "https://ehr.example.org/fhir",
            "CORS_ORIGINS": "https://sandbox.cds-hooks.org",
        }
    )
    response = app.test_client().options(DISCHARGE, headers=PRIVATE_NETWORK_PREFLIGHT)
    assert response.headers["Access-Control-Allow-Origin"] == "https://sandbox.cds-hooks.org"
    assert response.headers.get("Access-Control-Allow-Private-Network") != "true"


# -- privacy -----------------------------------------------------------------------------------


def test_logs_hold_no_patient_data_or_tokens(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Across every fixture (one with a bearer token), the logs never name the patient."""
    sensitive: set[str] = {"super-secret-access-token"}
    with caplog.at_level(logging.DEBUG):
        for name in FIXTURE_NAMES:
            body = load_fixture(name)
            sensitive |= sensitive_strings(body)
            if body.get("fhirServer"):
                body["fhirAuthorization"] = {
                    "access_token": "super-secret-access-token",
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "scope": "user/*.read",
                    "subject": "cds-20703",
                }
            post(client, body, f"/cds-services/{EXPECTED[name]['service']}")
    assert len(sensitive) > 10
    assert any(record.name.startswith("cds_service") for record in caplog.records)
    text = caplog.text + "".join(json.dumps(vars(record), default=str) for record in caplog.records)
    leaked = sorted(value for value in sensitive if value in text)
    assert leaked == []


def test_skipped_resources_are_logged_without_values(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    """An invalid resource is skipped and logged by type and error kind only."""
    with caplog.at_level(logging.WARNING, logger="cds_service"):
        response = post(client, "order-sign--sandbox-sloppy.json")
    assert response.status_code == 200
    skipped = [r for r in caplog.records if r.getMessage() == "skipped unreadable FHIR resource"]
    assert skipped
    assert skipped[0].resource_type == "Procedure"  # type: ignore[attr-defined]


def test_evaluation_matches_pure_service_call(app: Flask, pack: RulePack) -> None:
    """The HTTP answer and the pure service function agree, card for card (uuids aside)."""
    body = load_fixture("encounter-discharge--missing-documentation.json")
    counter = iter(range(1000))
    pure = hook_call.handle_hook_call(
        pack, "cpt20703-encounter-discharge", copy.deepcopy(body), lambda: f"id-{next(counter)}"
    )
    over_http = post(app.test_client(), body, DISCHARGE).get_json()
    assert without_uuids(pure.response) == without_uuids(over_http)


def test_many_conflicting_diagnoses_still_give_a_short_summary(client: FlaskClient) -> None:
    """Z47.2 with twelve T84.6-/T84.1- codes: 200, the summary names two and counts the rest."""
    body = load_fixture("encounter-discharge--diagnosis-conflict.json")
    claim = body["prefetch"]["claims"]["entry"][0]["resource"]
    codes = ["Z47.2"] + [f"T84.61{n}A" for n in range(6)] + [f"T84.62{n}A" for n in range(4)]
    codes += ["T84.110A", "T84.111A"]
    claim["diagnosis"] = icd10cm_diagnoses(codes)
    for item in claim["item"]:
        item["diagnosisSequence"] = [2, 3]
    response = post(client, body)
    assert response.status_code == 200, response.get_data(as_text=True)
    (card,) = [
        card
        for card in response.get_json()["cards"]
        if card["extension"]["cpt20703.finding"] == "diagnosis-conflict"
    ]
    assert len(card["summary"]) < 140
    assert card["summary"].startswith("Z47.2 with T84.110A, T84.111A and 10 more:")
    assert all(code in card["detail"] for code in codes)


@pytest.mark.parametrize(
    "name", ["encounter-discharge--orphan-removal-only.json", "encounter-discharge--orphan-with-debridement.json"]
)  # fmt: skip
def test_orphan_card_points_to_its_unconfirmed_items(
    client: FlaskClient, pack: RulePack, name: str
) -> None:
    """Over HTTP, the orphan card says some facts are unconfirmed, and its page lists the
    finding's own items first, then the items only some of its notes raise."""
    (card,) = post(client, name).get_json()["cards"]
    assert card["detail"].endswith("\n\nSome facts are unconfirmed: see Why.")
    template = pack.findings.findings["orphan-add-on"]
    path = urlsplit(card["links"][0]["url"]).path
    page = client.get(path, headers={"Accept": "application/json"}).get_json()
    assert page["unconfirmed"] == template.unconfirmed
    note_items = {item for items in template.note_unconfirmed.values() for item in items}
    assert set(page["unconfirmedInSomeCases"]) == note_items - set(template.unconfirmed)
    assert len(page["unconfirmedInSomeCases"]) == 3


def test_every_fixture_card_with_unconfirmed_items_says_so(
    client: FlaskClient, pack: RulePack
) -> None:
    """Across the corpus over HTTP both kinds of card occur: findings with unconfirmed items show
    the UNCONFIRMED section, and a finding whose data says `unconfirmed: []` shows none."""
    with_items: set[str] = set()
    without: set[str] = set()
    for name in FIXTURE_NAMES:
        if EXPECTED[name]["status"] != 200:
            continue
        for card in post(client, name).get_json()["cards"]:
            code = card["extension"]["cpt20703.finding"]
            says_so = card["detail"].endswith(UNCONFIRMED_LINE)
            (with_items if says_so else without).add(code)
    assert {"add-on-suggested", "documentation-missing", "planned-removal-reminder"} <= with_items
    assert "diagnosis-conflict" in without
    for code in without:
        assert pack.findings.findings[code].unconfirmed == [], code
