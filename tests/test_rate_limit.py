"""The per-client rate limit on hook calls and feedback (cds_service.web.rate_limit)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from helpers.corpus import load_fixture
from helpers.jwt_tokens import BASE_URL, ISSUER, SigningKey, TokenFactory, jwk_set, write_trust_file

from cds_service.config import Settings
from cds_service.errors import ConfigError
from cds_service.web import metrics, rate_limit
from cds_service.web.rate_limit import RateLimiter

DISCHARGE = "/cds-services/cpt20703-encounter-discharge"
FEEDBACK = DISCHARGE + "/feedback"
STANDARD = "encounter-discharge--tibia-nonunion-removal.json"
OTHER_ISSUER = "https://other-ehr.example.org"
FEEDBACK_BODY = {
    "feedback": [
        {
            "card": "9368d37b-283f-44a0-93ea-547cebab93ed",
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": "0f7d3b1e-3b0a-4a4f-9d55-cf3b6d2c9a11"}],
            "outcomeTimestamp": "2026-02-12T10:15:00Z",
        }
    ]
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_one_request_per_interval() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=60, burst=3, clock=clock)
    assert [limiter.wait_seconds("a") for _ in range(4)] == [0, 0, 0, 1]
    assert limiter.wait_seconds("b") == 0  # another client has its own bucket
    clock.now += 0.5
    assert limiter.wait_seconds("a") == 1  # half a token back: still a second to wait
    clock.now += 0.5
    assert limiter.wait_seconds("a") == 0
    clock.now += 3600
    assert [limiter.wait_seconds("a") for _ in range(4)] == [0, 0, 0, 1]  # never above the burst


def test_the_wait_is_the_time_until_a_token_is_back() -> None:
    limiter = RateLimiter(per_minute=6, burst=1, clock=Clock())
    assert limiter.wait_seconds("a") == 0
    assert limiter.wait_seconds("a") == 10


def test_many_clients_cannot_grow_the_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rate_limit, "MAX_TRACKED_CLIENTS", 3)
    clock = Clock()
    limiter = RateLimiter(per_minute=1, burst=1, clock=clock)
    assert limiter.wait_seconds("a") == 0
    assert limiter.wait_seconds("a") > 0
    for name in ("b", "c", "d"):  # "a" is the least recently seen: forgotten
        limiter.wait_seconds(name)
    assert limiter.wait_seconds("a") == 0


def limited_app(make_app: Callable[..., Flask], sqlite_url: str, **settings: str) -> Flask:
    return make_app(
        {"DATABASE_URL": sqlite_url, "RATE_LIMIT_PER_MINUTE": "1", "RATE_LIMIT_BURST": "2"}
        | settings
    )


def post(app: Flask, path: str, body: Any, token: str | None = None, address: str = "") -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    environ = {"REMOTE_ADDR": address} if address else {}
    return app.test_client().post(
        path,
        data=json.dumps(body),
        content_type="application/json",
        headers=headers,
        environ_base=environ,
    )


def assert_429(response: Any) -> None:
    assert response.status_code == 429, response.get_data(as_text=True)
    assert int(response.headers["Retry-After"]) >= 30  # a token a minute: about a minute away
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "throttled"


def test_a_client_over_its_limit_is_429_and_others_are_not(
    make_app: Callable[..., Flask], sqlite_url: str, tmp_path: Path
) -> None:
    """Limited by verified issuer: the third hook call of one client in a minute is 429 (and
    counted); another client, and the same client's feedback budget shared with its calls."""
    key, other_key = SigningKey.ec384(), SigningKey.ec384()
    trust = write_trust_file(
        tmp_path,
        [{"iss": ISSUER, "jwks": jwk_set(key)}, {"iss": OTHER_ISSUER, "jwks": jwk_set(other_key)}],
    )
    app = limited_app(
        make_app,
        sqlite_url,
        AUTH="required",
        TRUSTED_CLIENTS=str(trust),
        PUBLIC_BASE_URL=BASE_URL,
    )
    tokens, other = TokenFactory(key), TokenFactory(other_key, issuer=OTHER_ISSUER)
    body = load_fixture(STANDARD)
    before = metrics.LIMITED.labels("cds.call_service")._value.get()
    assert post(app, DISCHARGE, body, tokens.token(DISCHARGE)).status_code == 200
    assert post(app, DISCHARGE, body, tokens.token(DISCHARGE)).status_code == 200
    assert_429(post(app, DISCHARGE, body, tokens.token(DISCHARGE)))
    assert_429(post(app, FEEDBACK, FEEDBACK_BODY, tokens.token(FEEDBACK)))
    assert metrics.LIMITED.labels("cds.call_service")._value.get() == before + 1
    assert post(app, DISCHARGE, body, other.token(DISCHARGE)).status_code == 200
    assert post(app, FEEDBACK, FEEDBACK_BODY, other.token(FEEDBACK)).status_code == 200


def test_a_refused_token_is_401_not_a_spent_token(
    make_app: Callable[..., Flask], sqlite_url: str, tmp_path: Path
) -> None:
    """Authentication runs first: a stranger's calls are 401 and cost the issuer nothing."""
    key = SigningKey.ec384()
    trust = write_trust_file(tmp_path, [{"iss": ISSUER, "jwks": jwk_set(key)}])
    app = limited_app(
        make_app, sqlite_url, AUTH="required", TRUSTED_CLIENTS=str(trust), PUBLIC_BASE_URL=BASE_URL
    )
    forged = TokenFactory(SigningKey.ec384(kid=TokenFactory(key).key.kid))
    body = load_fixture(STANDARD)
    for _ in range(3):
        assert post(app, DISCHARGE, body, forged.token(DISCHARGE)).status_code == 401
    assert post(app, DISCHARGE, body, TokenFactory(key).token(DISCHARGE)).status_code == 200


def test_without_a_token_the_limit_is_per_address(
    make_app: Callable[..., Flask], sqlite_url: str
) -> None:
    app = limited_app(make_app, sqlite_url)  # development: CDS_AUTH off
    body = load_fixture(STANDARD)
    assert post(app, DISCHARGE, body, address="10.0.0.1").status_code == 200
    assert post(app, DISCHARGE, body, address="10.0.0.1").status_code == 200
    assert_429(post(app, DISCHARGE, body, address="10.0.0.1"))
    assert post(app, DISCHARGE, body, address="10.0.0.2").status_code == 200
    assert app.test_client().get("/healthz").status_code == 200  # never limited


def test_zero_turns_the_limit_off(make_app: Callable[..., Flask], sqlite_url: str) -> None:
    app = limited_app(make_app, sqlite_url, RATE_LIMIT_PER_MINUTE="0")
    body = load_fixture(STANDARD)
    assert {post(app, DISCHARGE, body).status_code for _ in range(5)} == {200}


@pytest.mark.parametrize(
    ("name", "value"),
    [("RATE_LIMIT_PER_MINUTE", "-1"), ("RATE_LIMIT_PER_MINUTE", "x"), ("RATE_LIMIT_BURST", "0")],
)
def test_a_bad_rate_limit_setting_stops_start_up_naming_it(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.load(environ={f"CDS_{name}": value})
    assert f"CDS_{name}" in str(error.value)
