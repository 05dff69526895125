"""The cds-service command: evaluate, check-cards and serve (a real gunicorn over real HTTP)."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from helpers.corpus import EXPECTED, FIXTURES, load_fixture, without_uuids
from helpers.jwt_tokens import ISSUER, SigningKey, TokenFactory, jwk_set, write_trust_file
from helpers.serving import free_port, self_signed, served, serving

from cds_service.cli.main import main
from cds_service.rulepack.loading import default_cards_dir

STANDARD = FIXTURES / "encounter-discharge--tibia-nonunion-removal.json"


def test_evaluate_prints_the_endpoint_response(
    capsys: pytest.CaptureFixture[str], client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """evaluate prints what POST /cds-services/{id} answers, and exits 0."""
    caller_dir = tmp_path / "caller"
    caller_dir.mkdir()
    monkeypatch.chdir(caller_dir)
    assert main(["evaluate", str(STANDARD)]) == 0
    printed = json.loads(capsys.readouterr().out)
    over_http = client.post(
        "/cds-services/cpt20703-encounter-discharge",
        data=STANDARD.read_text(),
        content_type="application/json",
    ).get_json()
    assert without_uuids(printed) == without_uuids(over_http)
    assert printed["cards"]
    assert list(caller_dir.iterdir()) == []  # nothing written beside the caller


def test_evaluate_infers_the_service_and_accepts_an_explicit_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The service comes from the hook, or from --service."""
    name = "order-sign--planned-removal-reminder.json"
    assert main(["evaluate", str(FIXTURES / name), "--service", EXPECTED[name]["service"]]) == 0
    cards = json.loads(capsys.readouterr().out)["cards"]
    assert [card["extension"]["cpt20703.finding"] for card in cards] == EXPECTED[name]["findings"]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "cannot read"),
        ("{not json", "is not valid JSON"),
        ('{"hook": "patient-view"}', "cannot tell the service"),
        (json.dumps({"hook": "encounter-discharge", "hookInstance": "x"}), "HTTP 400"),
    ],
)
def test_evaluate_bad_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, needle: str
) -> None:
    """A file that cannot be evaluated exits 2 with a clear message."""
    path = tmp_path / "request.json"
    if content is not None:
        path.write_text(content)
    assert main(["evaluate", str(path)]) == 2
    assert needle in capsys.readouterr().err


def test_evaluate_412_exits_2_and_prints_the_outcome(capsys: pytest.CaptureFixture[str]) -> None:
    """A request the endpoint refuses exits 2; the OperationOutcome is still printed."""
    path = FIXTURES / "encounter-discharge--missing-required-prefetch.json"
    assert main(["evaluate", str(path)]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["resourceType"] == "OperationOutcome"
    assert "HTTP 412" in captured.err


def test_check_cards_ok(capsys: pytest.CaptureFixture[str]) -> None:
    """check-cards passes on the shipped pack."""
    assert main(["check-cards"]) == 0
    assert "rule pack OK" in capsys.readouterr().out


def test_check_cards_reports_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-cards exits non-zero and prints path:line: message for each problem."""
    for source in default_cards_dir().glob("*.yaml"):
        (tmp_path / source.name).write_text(source.read_text())
    findings = tmp_path / "findings.yaml"
    findings.write_text(findings.read_text().replace("indicator: warning", "indicator: loud", 1))
    assert main(["check-cards", "--cards-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    line = next(
        number
        for number, text in enumerate(findings.read_text().splitlines(), 1)
        if "indicator: loud" in text
    )
    assert f"{findings}:{line}: findings.documentation-missing.indicator" in err


def scratch_cards(target: Path) -> Path:
    """A copy of cards/ (YAML and the Questionnaire) to break on purpose."""
    for source in default_cards_dir().iterdir():
        if source.is_file():
            (target / source.name).write_text(source.read_text())
    return target


@pytest.mark.parametrize(
    ("file", "block", "deleted", "field"),
    [
        # Coding-fact sections need sources and a confidence tier.
        ("coding.yaml", "mue:", "  confidence: 1", "mue.confidence"),
        ("coding.yaml", "mue:", "  sources: [S11, S24]", "mue.sources"),
        ("coding.yaml", "primaries:", "  sources: [S10, S13]", "primaries.sources"),
        ("coding.yaml", "primaries:", "  confidence: 1", "primaries.confidence"),
        ("coding.yaml", "add_on:", "  confidence: 1", "add_on.confidence"),
        ("coding.yaml", "device_actions:", "  sources: [S38]", "device_actions.sources"),
        ("coding.yaml", "diagnosis_linkage:", "  confidence: 2", "diagnosis_linkage.confidence"),
        ("coding.yaml", "  soft-tissue:", "    sources: [S2, S3]", "siblings.soft-tissue.sources"),
        ("coding.yaml", "standalone_removal_code:", "  confidence: 2", "standalone_removal_code.confidence"),
        ("coding.yaml", "fact_sources:", "  invalid_modifiers: {sources: [S9], confidence: 1}", "invalid_modifiers"),
        ("coding.yaml", "  - key: removal-reason", "    confidence: 3", "documentation.3.confidence"),
        # Findings name their sources and confidence.
        ("findings.yaml", "  wrong-tier:", "    confidence: 2", "findings.wrong-tier.confidence"),
        ("findings.yaml", "  wrong-tier:", "      sources: [S2, S3]", "findings.wrong-tier.source.sources"),
        # Payer notes and billing rules carry their tier and the month they were read.
        ("payers.yaml", "  - key: aetna", "        tier: 2", "profiles.4.notes.0.tier"),
        ("payers.yaml", "  - key: aetna", '        read: "2026-11"', "profiles.4.notes.0.read"),
        ("payers.yaml", "  - key: bcbs-nc", "      tier: 1", "profiles.2.add_on_billing.tier"),
        ("payers.yaml", "  - key: bcbs-nc", "      sources: [S33]", "profiles.2.add_on_billing.sources"),
    ],
)  # fmt: skip
def test_check_cards_refuses_a_fact_without_provenance(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    file: str,
    block: str,
    deleted: str,
    field: str,
) -> None:
    """Deleting a source list, a confidence, or a payer note's tier or read date fails
    check-cards with path:line: naming the field, at the line of its block."""
    directory = scratch_cards(tmp_path)
    path = directory / file
    lines = path.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.rstrip("\n") == block)
    removed = next(i for i in range(start, len(lines)) if lines[i].rstrip("\n") == deleted)
    del lines[removed]
    path.write_text("".join(lines))
    assert main(["check-cards", "--cards-dir", str(directory)]) == 1
    err = capsys.readouterr().err
    reported = [
        int(number)
        for number, message in re.findall(rf"^{re.escape(str(path))}:(\d+): (.*)$", err, re.M)
        if field in message
    ]
    assert reported, err
    assert start + 1 <= reported[0] <= removed + 1, err


def test_bad_configuration_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad CDS_* value stops the command with the variable's name."""
    monkeypatch.setenv("CDS_MAX_BODY_BYTES", "many")
    assert main(["check-cards"]) == 2
    assert "CDS_MAX_BODY_BYTES" in capsys.readouterr().err


def test_serve_with_a_bad_trust_file_exits_2_before_gunicorn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """serve checks the trusted-clients file first: a bad one exits 2 naming
    CDS_TRUSTED_CLIENTS, and gunicorn is never started."""
    import cds_service.cli.serve

    def no_gunicorn(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("gunicorn was started despite the bad configuration")

    monkeypatch.setattr(cds_service.cli.serve, "serve", no_gunicorn)
    trust = tmp_path / "trust.json"
    trust.write_text(json.dumps({"clients": [{"iss": "https://ehr.example.org"}]}))
    monkeypatch.setenv("CDS_AUTH", "required")
    monkeypatch.setenv("CDS_TRUSTED_CLIENTS", str(trust))
    assert main(["serve", "--port", str(free_port()), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "configuration error: CDS_TRUSTED_CLIENTS" in err
    assert "exactly one of jwks, jwks_file, jku" in err


def test_serve_with_a_broken_rule_pack_exits_2_before_gunicorn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rule pack that does not load stops serve with exit 2 and the problem, instead of
    workers that crash on boot one after another."""
    import cds_service.cli.serve

    def no_gunicorn(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("gunicorn was started with a broken rule pack")

    monkeypatch.setattr(cds_service.cli.serve, "serve", no_gunicorn)
    monkeypatch.setenv("CDS_CARDS_DIR", str(tmp_path))  # exists, but holds no rule pack
    assert main(["serve", "--port", str(free_port()), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "the rule pack in CDS_CARDS_DIR is invalid" in err
    assert "Traceback" not in err


def test_served_output_is_checked_for_secrets(tmp_path: Path) -> None:
    """When a served process stops, its output is searched for every token the tests made: a
    token found there fails the test (here one is put there on purpose)."""
    token = TokenFactory(SigningKey.ec384()).token("/cds-services")
    with (
        pytest.raises(AssertionError, match="secrets found in the served process's output"),
        serving(tmp_path, "--workers", "1") as server,
        server.log.open("a") as log,
    ):
        log.write(f"a careless log line with {token}\n")


def test_a_worker_is_replaced_after_its_maximum_requests_and_no_request_is_lost(
    tmp_path: Path,
) -> None:
    """A worker's spaCy vocabulary keeps every word it read; ``--max-requests`` replaces the
    worker (by gunicorn's max_requests) before that grows without bound."""
    with serving(tmp_path, "--workers", "1", "--max-requests", "10") as server:
        (first,) = server.wait_for_workers(1)
        answers = [
            requests.get(f"{server.base}/healthz", timeout=30).status_code for _ in range(25)
        ]
        assert answers == [200] * 25
        server.wait_for_workers(1, without=frozenset({first}))


def test_serve_answers_over_real_http(tmp_path: Path) -> None:
    """cds-service serve starts gunicorn workers that answer discovery, hooks and feedback."""
    with served(tmp_path, "--workers", "2") as base:
        discovery = requests.get(f"{base}/cds-services", timeout=30)
        assert discovery.status_code == 200
        assert len(discovery.json()["services"]) == 2
        answer = requests.post(
            f"{base}/cds-services/cpt20703-encounter-discharge",
            json=load_fixture(STANDARD.name),
            timeout=30,
        )
        assert answer.status_code == 200
        card = answer.json()["cards"][0]
        feedback = requests.post(
            f"{base}/cds-services/cpt20703-encounter-discharge/feedback",
            json={
                "feedback": [
                    {
                        "card": card["uuid"],
                        "outcome": "accepted",
                        "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
                        "outcomeTimestamp": "2026-03-02T10:15:00Z",
                    }
                ]
            },
            timeout=30,
        )
        assert feedback.json() == {"stored": 1, "duplicates": 0, "unknownCards": 0}
        refused = requests.post(
            f"{base}/cds-services/cpt20703-encounter-discharge", data="nope", timeout=30
        )
        assert refused.status_code == 415
        assert refused.json()["resourceType"] == "OperationOutcome"


def test_serve_with_tls(tmp_path: Path) -> None:
    """--certfile/--keyfile serve HTTPS with that certificate, and HSTS."""
    cert, key = self_signed(tmp_path)
    with served(
        tmp_path, "--workers", "1", "--certfile", str(cert), "--keyfile", str(key),
        scheme="https", verify=str(cert),
    ) as base:  # fmt: skip
        response = requests.get(f"{base}/cds-services", timeout=30, verify=str(cert))
        assert response.status_code == 200
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Strict-Transport-Security"] == "max-age=31536000"


def test_serve_refuses_a_lone_certfile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--certfile without --keyfile is a usage error, before anything starts."""
    cert, _ = self_signed(tmp_path)
    assert main(["serve", "--certfile", str(cert)]) == 2
    assert "go together" in capsys.readouterr().err


def test_two_workers_accept_a_token_once(tmp_path: Path) -> None:
    """Served by two worker processes, one token sent eight times at once is accepted once."""
    key = SigningKey.ec384()
    trust = write_trust_file(tmp_path, [{"iss": ISSUER, "jwks": jwk_set(key)}])
    auth_env = {
        "CDS_AUTH": "required",
        "CDS_TRUSTED_CLIENTS": str(trust),
    }
    with served(tmp_path, "--workers", "2", env=auth_env) as base:
        path = "/cds-services/cpt20703-encounter-discharge"
        # aud is the public base URL the service is configured with, not its listening port.
        token = TokenFactory(key, base_url="http://127.0.0.1:8080").token(path)
        body = load_fixture(STANDARD.name)

        def send(_: int) -> int:
            response = requests.post(
                base + path, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30
            )
            return response.status_code

        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = sorted(pool.map(send, range(8)))
    assert statuses == [200] + [401] * 7
