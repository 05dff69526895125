"""JWT authentication through HTTP: real keys, real signatures, a JWK Set served on loopback."""

from __future__ import annotations

import base64
import copy
import hmac
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from flask.testing import FlaskClient
from helpers.corpus import load_fixture
from helpers.fault_server import FaultServer, fault_server
from helpers.jwt_tokens import (
    BASE_URL,
    ISSUER,
    SigningKey,
    TokenFactory,
    jwk_set,
    remember,
    write_trust_file,
)

from cds_service.config import Settings
from cds_service.errors import ConfigError
from cds_service.security.trust import SANDBOX_TRUST_FILE
from cds_service.store.database import Store
from cds_service.web.app_state import service_state

DISCOVERY = "/cds-services"
SERVICE = "/cds-services/cpt20703-encounter-discharge"
FEEDBACK = f"{SERVICE}/feedback"
STANDARD = load_fixture("encounter-discharge--tibia-nonunion-removal.json")
FEEDBACK_BODY = {
    "feedback": [
        {"card": "c0ffee00-0000-4000-8000-000000000001", "outcome": "overridden",
         "outcomeTimestamp": "2026-03-02T10:16:00Z"}
    ]
}  # fmt: skip


class JwksServer(ThreadingHTTPServer):
    """Serves a JWK Set at /jwks.json that a test can change, and counts the fetches."""

    daemon_threads = True

    def __init__(self, jwks: dict[str, Any]) -> None:
        super().__init__(("127.0.0.1", 0), _JwksHandler)
        self.jwks = jwks
        self.fetches: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/jwks.json"


class _JwksHandler(BaseHTTPRequestHandler):
    server: JwksServer

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self.server.fetches.append(self.path)
        data = json.dumps(self.server.jwks).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def ec_key() -> SigningKey:
    return SigningKey.ec384()


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return SigningKey.rsa()


@pytest.fixture(scope="module")
def attacker_key() -> SigningKey:
    return SigningKey.ec384()


@pytest.fixture
def jwks_server(rsa_key: SigningKey) -> Iterator[JwksServer]:
    server = JwksServer(jwk_set(rsa_key))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


JKU_ISSUER = "https://other-ehr.example.org"


@pytest.fixture
def trust_file(tmp_path: Path, ec_key: SigningKey, jwks_server: JwksServer) -> Path:
    return write_trust_file(
        tmp_path,
        [
            {"iss": ISSUER, "jwks": jwk_set(ec_key)},
            {"iss": JKU_ISSUER, "jku": [jwks_server.url]},
        ],
    )


def required_auth(database_url: str, trust_file: Path, base_url: str = BASE_URL) -> dict[str, str]:
    """Settings of a development app that requires a token from the trust file's clients."""
    return {
        "DATABASE_URL": database_url,
        "AUTH": "required",
        "TRUSTED_CLIENTS": str(trust_file),
        "PUBLIC_BASE_URL": base_url,
        "JWT_ALGORITHMS": "ES384,RS384",
    }


@pytest.fixture
def secured(make_app: Any, sqlite_url: str, trust_file: Path) -> Flask:
    app: Flask = make_app(required_auth(sqlite_url, trust_file))
    return app


@pytest.fixture
def client(secured: Flask) -> FlaskClient:
    return secured.test_client()


@pytest.fixture
def tokens(ec_key: SigningKey) -> TokenFactory:
    return TokenFactory(ec_key)


def post(
    client: FlaskClient,
    path: str,
    token: str | None,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> Any:
    headers = (headers or {}) | ({"Authorization": f"Bearer {token}"} if token is not None else {})
    return client.post(
        path,
        data=json.dumps(body if body is not None else STANDARD),
        content_type="application/json",
        headers=headers,
    )


def assert_401(response: Any, check: str | None) -> None:
    """A 401 OperationOutcome naming the check, with an RFC 6750 challenge, CORS headers on."""
    assert response.status_code == 401, response.get_data(as_text=True)
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "login"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    if check is None:
        assert "error=" not in challenge
    else:
        assert 'error="invalid_token"' in challenge
        assert f"({check})" in body["issue"][0]["diagnostics"]


def feedback_rows(app: Flask) -> list[dict[str, Any]]:
    store: Store = service_state(app).store
    return store.feedback_rows()


# -- accepted --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [DISCOVERY, SERVICE, FEEDBACK])
def test_valid_es384_token_is_accepted_on_every_endpoint(
    client: FlaskClient, tokens: TokenFactory, path: str
) -> None:
    """An ES384 token whose aud is exactly the endpoint URL is accepted."""
    token = tokens.token(path)
    if path == DISCOVERY:
        response = client.get(path, headers={"Authorization": f"Bearer {token}"})
    else:
        response = post(client, path, token, FEEDBACK_BODY if path == FEEDBACK else None)
    assert response.status_code == 200, response.get_data(as_text=True)


def test_rs384_token_from_a_jku_client_is_accepted(
    client: FlaskClient, rsa_key: SigningKey, jwks_server: JwksServer
) -> None:
    """RS384 with keys fetched from the client's allowlisted jku, then cached."""
    factory = TokenFactory(rsa_key, issuer=JKU_ISSUER, headers={"jku": jwks_server.url})
    assert post(client, SERVICE, factory.token(SERVICE)).status_code == 200
    assert post(client, SERVICE, factory.token(SERVICE)).status_code == 200
    assert len(jwks_server.fetches) == 1


def test_aud_as_array_and_iat_slightly_in_the_future(
    client: FlaskClient, tokens: TokenFactory
) -> None:
    """aud may be an array containing the URL; iat 0.5 s ahead is within the leeway."""
    token = tokens.token(
        SERVICE, claims={"aud": [BASE_URL + SERVICE, "x"], "iat": time.time() + 0.5}
    )
    assert post(client, SERVICE, token).status_code == 200


def test_rotated_key_is_found_by_refetching_the_jku(
    make_app: Any, sqlite_url: str, trust_file: Path, rsa_key: SigningKey, jwks_server: JwksServer
) -> None:
    """A new kid at the jku is picked up by one refetch (refetch interval 0 here)."""
    client = make_app(
        {
            "DATABASE_URL": sqlite_url,
            "AUTH": "required",
            "TRUSTED_CLIENTS": str(trust_file),
            "PUBLIC_BASE_URL": BASE_URL,
            "JWKS_MIN_REFETCH_SECONDS": "0",
        }
    ).test_client()
    factory = TokenFactory(rsa_key, issuer=JKU_ISSUER)
    assert post(client, SERVICE, factory.token(SERVICE)).status_code == 200
    rotated = SigningKey.rsa()
    jwks_server.jwks = jwk_set(rsa_key, rotated)
    rotated_factory = TokenFactory(rotated, issuer=JKU_ISSUER)
    assert post(client, SERVICE, rotated_factory.token(SERVICE)).status_code == 200
    assert len(jwks_server.fetches) == 2


def test_unknown_kids_do_not_hammer_the_jku(
    client: FlaskClient, rsa_key: SigningKey, jwks_server: JwksServer
) -> None:
    """Refetching on an unknown kid is rate-limited: two unknown kids, one fetch."""
    stranger = SigningKey.rsa()
    factory = TokenFactory(stranger, issuer=JKU_ISSUER)
    assert_401(post(client, SERVICE, factory.token(SERVICE)), "kid")
    assert_401(post(client, SERVICE, factory.token(SERVICE)), "kid")
    assert len(jwks_server.fetches) == 1


def test_optional_mode_accepts_no_token_but_checks_a_given_one(
    make_app: Any, sqlite_url: str, trust_file: Path, tokens: TokenFactory
) -> None:
    """CDS_AUTH=optional: no token is fine, a bad token is still refused."""
    app = make_app(
        {
            "DATABASE_URL": sqlite_url,
            "AUTH": "optional",
            "TRUSTED_CLIENTS": str(trust_file),
            "PUBLIC_BASE_URL": BASE_URL,
        }
    )
    client = app.test_client()
    assert post(client, SERVICE, None).status_code == 200
    assert_401(post(client, SERVICE, tokens.token("/cds-services")), "aud")


def test_preflight_needs_no_token(client: FlaskClient) -> None:
    """OPTIONS is answered without authentication."""
    response = client.options(
        SERVICE,
        headers={
            "Origin": "https://sandbox.cds-hooks.org",
            "Access-Control-Request-Method": "POST",
        },
    )
    assert response.status_code == 200


# -- refused ---------------------------------------------------------------------------------


def _none_token(path: str) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    now = int(time.time())
    claims = {"iss": ISSUER, "aud": BASE_URL + path, "exp": now + 60, "iat": now, "jti": "x1"}
    return remember(f"{part({'alg': 'none', 'typ': 'JWT', 'kid': 'k'})}.{part(claims)}.")


def _hs256_with_public_key(ec_key: SigningKey, path: str) -> str:
    public = ec_key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": BASE_URL + path, "exp": now + 60, "iat": now, "jti": "x2"}
    header = {"kid": ec_key.kid, "typ": "JWT"}
    signing_input = ".".join(
        base64.urlsafe_b64encode(json.dumps(item).encode()).rstrip(b"=").decode()
        for item in ({"alg": "HS256"} | header, claims)
    )
    digest = hmac.new(public, signing_input.encode(), "sha256").digest()
    return remember(signing_input + "." + base64.urlsafe_b64encode(digest).rstrip(b"=").decode())


def test_hand_built_tokens_are_looked_for_in_the_logs(ec_key: SigningKey) -> None:
    """The log checks (conftest, serving) know the tokens built without TokenFactory too, and
    never an empty string (which any log would 'contain')."""
    from helpers.jwt_tokens import MINTED

    none, hs256 = _none_token(SERVICE), _hs256_with_public_key(ec_key, SERVICE)
    assert {none, none.rstrip("."), hs256, hs256.rsplit(".", 1)[1]} <= MINTED
    assert "" not in MINTED


ES256_KEY = SigningKey(ec.generate_private_key(ec.SECP256R1()), "k256", "ES256")
RSA_SIGNER = SigningKey.rsa("rsa-signer")  # signs RS384 tokens that name the EC key's kid
# A refused token, made from the token factory, the trusted key, the attacker's key and the path.
Refusal = Callable[[TokenFactory, SigningKey, SigningKey, str], str]
REFUSALS: dict[str, Refusal] = {
    "malformed": lambda f, k, a, p: "not.a.jwt",
    "alg none": lambda f, k, a, p: _none_token(p),
    "HS256 with the public key": lambda f, k, a, p: _hs256_with_public_key(k, p),
    "unknown kid": lambda f, k, a, p: f.token(p, headers={"kid": "no-such-kid"}),
    "wrong signature": lambda f, k, a, p: f.token(p, key=SigningKey(a.private, k.kid, "ES384")),
    "untrusted iss": lambda f, k, a, p: f.token(p, claims={"iss": "https://evil.example"}),
    "aud of another endpoint": lambda f, k, a, p: f.token(p, claims={"aud": BASE_URL + DISCOVERY}),
    "aud of another host": lambda f, k, a, p: f.token(p, claims={"aud": "https://evil.example" + p}),
    "aud missing": lambda f, k, a, p: f.token(p, drop=("aud",)),
    "expired": lambda f, k, a, p: f.token(p, claims={"exp": time.time() - 60, "iat": time.time() - 120}),
    "iat in the future": lambda f, k, a, p: f.token(p, claims={"iat": time.time() + 60}),
    "exp too far": lambda f, k, a, p: f.token(p, claims={"exp": time.time() + 7200}),
    "jti missing": lambda f, k, a, p: f.token(p, drop=("jti",)),
    "typ not JWT": lambda f, k, a, p: f.token(p, headers={"typ": "at+jwt"}),
    "alg not allowed": lambda f, k, a, p: f.token(p, key=ES256_KEY, headers={"kid": k.kid}),
    "RS384 with the EC key's kid": lambda f, k, a, p: f.token(p, key=RSA_SIGNER, headers={"kid": k.kid}),
    "exp missing": lambda f, k, a, p: f.token(p, drop=("exp",)),
    "iat missing": lambda f, k, a, p: f.token(p, drop=("iat",)),
}  # fmt: skip
EXPECTED_CHECK = {
    "malformed": "malformed", "alg none": "alg", "HS256 with the public key": "alg",
    "unknown kid": "kid", "wrong signature": "signature", "untrusted iss": "iss",
    "aud of another endpoint": "aud", "aud of another host": "aud", "aud missing": "aud",
    "expired": "exp", "iat in the future": "iat", "exp too far": "exp", "jti missing": "jti",
    "typ not JWT": "typ", "alg not allowed": "alg", "RS384 with the EC key's kid": "alg",
    "exp missing": "exp", "iat missing": "iat",
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSALS))
@pytest.mark.parametrize("path", [SERVICE, FEEDBACK])
def test_bad_token_is_401_and_nothing_is_stored(
    secured: Flask,
    tokens: TokenFactory,
    ec_key: SigningKey,
    attacker_key: SigningKey,
    case: str,
    path: str,
) -> None:
    """Every forged or faulty token is refused with 401 naming the check; feedback is not kept."""
    token = REFUSALS[case](tokens, ec_key, attacker_key, path)
    client = secured.test_client()
    response = post(client, path, token, FEEDBACK_BODY if path == FEEDBACK else None)
    assert_401(response, EXPECTED_CHECK[case])
    assert feedback_rows(secured) == []


def test_missing_token_is_401_without_error_code(secured: Flask) -> None:
    """No Authorization header: 401 whose challenge carries no error (RFC 6750)."""
    assert_401(post(secured.test_client(), FEEDBACK, None, FEEDBACK_BODY), None)
    assert_401(secured.test_client().get(DISCOVERY), None)
    assert feedback_rows(secured) == []


def signed_with_header(key: SigningKey, header: dict[str, Any], path: str) -> str:
    """A token, really signed, whose header PyJWT itself would refuse to write."""
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": BASE_URL + path, "exp": now + 300, "iat": now, "jti": "h-1"}
    segments = [
        base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()
        for part in ({"alg": key.algorithm, "typ": "JWT"} | header, claims)
    ]
    algorithm = jwt.get_algorithm_by_name(key.algorithm)
    signature = algorithm.sign(".".join(segments).encode(), algorithm.prepare_key(key.private))
    return remember(
        ".".join([*segments, base64.urlsafe_b64encode(signature).rstrip(b"=").decode()])
    )


@pytest.mark.parametrize(
    ("header", "check"),
    [
        ({"kid": 5}, "kid"),
        ({"kid": ["k1"]}, "kid"),
        ({"kid": "k1", "crit": ["exp"]}, "crit"),
        ({"kid": "k1", "crit": "exp"}, "crit"),
        ({"kid": "k1", "crit": []}, "crit"),
    ],
)
def test_a_header_pyjwt_refuses_is_401_naming_the_check(
    client: FlaskClient, ec_key: SigningKey, header: dict[str, Any], check: str
) -> None:
    assert_401(post(client, SERVICE, signed_with_header(ec_key, header, SERVICE)), check)


@pytest.mark.parametrize(
    ("claim", "value"),
    [("exp", "{exp}"), ("iat", "{now}"), ("nbf", "{now}"), ("exp", True), ("iat", None)],
)
def test_numeric_dates_must_be_json_numbers(
    client: FlaskClient, tokens: TokenFactory, claim: str, value: Any
) -> None:
    """exp, iat and nbf are NumericDates: a string of digits (which PyJWT would take) is 401."""
    now = int(time.time())
    if isinstance(value, str):
        value = value.format(now=now, exp=now + 300)
    token = tokens.token(SERVICE, claims={claim: value})
    assert_401(post(client, SERVICE, token), claim)


def test_basic_authorization_is_malformed(client: FlaskClient) -> None:
    """An Authorization header that is not Bearer is refused."""
    response = client.post(
        SERVICE, data=json.dumps(STANDARD), content_type="application/json",
        headers={"Authorization": "Basic dXNlcjpwYXNz"},
    )  # fmt: skip
    assert_401(response, "malformed")


def test_jku_not_on_the_allowlist_is_never_fetched(
    secured: Flask, rsa_key: SigningKey, jwks_server: JwksServer
) -> None:
    """A jku the client's entry does not list is refused before anything is fetched or stored."""
    client = secured.test_client()
    attacker_url = jwks_server.url.replace("jwks.json", "attacker.json")
    factory = TokenFactory(rsa_key, issuer=JKU_ISSUER, headers={"jku": attacker_url})
    assert_401(post(client, SERVICE, factory.token(SERVICE)), "jku")
    assert_401(post(client, FEEDBACK, factory.token(FEEDBACK), FEEDBACK_BODY), "jku")
    assert jwks_server.fetches == []
    assert feedback_rows(secured) == []


def test_jku_header_of_an_inline_keys_client_is_ignored(
    client: FlaskClient, tokens: TokenFactory, jwks_server: JwksServer
) -> None:
    """For a client with configured keys a jku header fetches nothing; its keys decide."""
    token = tokens.token(SERVICE, headers={"jku": jwks_server.url})
    assert post(client, SERVICE, token).status_code == 200
    assert jwks_server.fetches == []


def test_replayed_token_is_refused_across_workers(
    make_app: Any, database_url: str, trust_file: Path, tokens: TokenFactory
) -> None:
    """Two app instances (two workers) sharing one database: a jti is accepted once."""
    config = {
        "DATABASE_URL": database_url,
        "AUTH": "required",
        "TRUSTED_CLIENTS": str(trust_file),
        "PUBLIC_BASE_URL": BASE_URL,
    }
    first, second = make_app(config).test_client(), make_app(config).test_client()
    token = tokens.token(SERVICE)
    assert post(first, SERVICE, token).status_code == 200
    assert_401(post(second, SERVICE, token), "jti")
    assert_401(post(first, SERVICE, token), "jti")


def test_replayed_feedback_token_stores_nothing_more(
    make_app: Any, database_url: str, trust_file: Path, tokens: TokenFactory
) -> None:
    """A feedback token is accepted once (stored); replayed to another worker it is 401 and the
    feedback it carries (about another card, so it would be a new row) is not stored."""
    config = {
        "DATABASE_URL": database_url,
        "AUTH": "required",
        "TRUSTED_CLIENTS": str(trust_file),
        "PUBLIC_BASE_URL": BASE_URL,
    }
    first, second = make_app(config), make_app(config)
    token = tokens.token(FEEDBACK)
    accepted = post(first.test_client(), FEEDBACK, token, FEEDBACK_BODY)
    assert accepted.status_code == 200, accepted.get_data(as_text=True)
    assert accepted.get_json()["stored"] == 1
    assert len(feedback_rows(first)) == 1
    replayed_body = copy.deepcopy(FEEDBACK_BODY)
    replayed_body["feedback"][0]["card"] = "c0ffee00-0000-4000-8000-000000000002"
    assert_401(post(second.test_client(), FEEDBACK, token, replayed_body), "jti")
    assert len(feedback_rows(second)) == 1
    assert len(feedback_rows(first)) == 1


def production_app(make_app: Any, database_url: str, trust: Path, **settings: str) -> Flask:
    """A production-profile app (its FHIR allowlist https, as production demands)."""
    app: Flask = make_app(
        {
            "DATABASE_URL": database_url,
            "PROFILE": "production",
            "PUBLIC_BASE_URL": BASE_URL,
            "TRUSTED_CLIENTS": str(trust),
            "FHIR_SERVER_ALLOWLIST": "https://ehr.example.org/fhir",
        }
        | settings
    )
    return app


def test_development_only_client_is_refused_in_production(
    make_app: Any, migrated_sqlite_url: str, tmp_path: Path, ec_key: SigningKey
) -> None:
    """In production a development-only client's valid token is refused (untrusted issuer)."""
    other = SigningKey.ec384()
    trust = write_trust_file(
        tmp_path,
        [
            {"iss": "https://sandbox.cds-hooks.org", "jwks": jwk_set(ec_key), "development_only": True},
            {"iss": ISSUER, "jwks": jwk_set(other)},
        ],
        name="production-trust.json",
    )  # fmt: skip
    app = production_app(
        make_app, migrated_sqlite_url, trust, CORS_ORIGINS="https://ehr.example.org"
    )
    sandbox = TokenFactory(ec_key, issuer="https://sandbox.cds-hooks.org")
    for path, body in ((SERVICE, None), (FEEDBACK, FEEDBACK_BODY)):
        response = post(app.test_client(), path, sandbox.token(path), body)
        assert response.status_code == 401
        assert "(iss)" in response.get_json()["issue"][0]["diagnostics"]
    assert feedback_rows(app) == []
    trusted = TokenFactory(other)
    assert post(app.test_client(), SERVICE, trusted.token(SERVICE)).status_code == 200
    stored = post(app.test_client(), FEEDBACK, trusted.token(FEEDBACK), FEEDBACK_BODY)
    assert stored.status_code == 200
    assert len(feedback_rows(app)) == 1  # the store works: the refusals above stored nothing


SANDBOX_ISSUER = "https://sandbox.cds-hooks.org"


@pytest.mark.parametrize(
    "case", ["sandbox issuer", "sandbox issuer spelled differently", "sandbox key", "sandbox jku"]
)
def test_production_refuses_the_public_sandbox_even_without_development_only(
    make_app: Any, migrated_sqlite_url: str, tmp_path: Path, ec_key: SigningKey, case: str
) -> None:
    """The sandbox's private key is published: in production an entry for it (by issuer, by its
    key under another issuer, or by a jku on its host) stops start-up; development accepts it."""
    published = json.loads(SANDBOX_TRUST_FILE.read_text())["clients"][0]["jwks"]
    entry: dict[str, Any] = {
        "sandbox issuer": {"iss": SANDBOX_ISSUER, "jwks": jwk_set(ec_key)},
        "sandbox issuer spelled differently": {
            "iss": "HTTPS://Sandbox.CDS-Hooks.org/",
            "jwks": jwk_set(ec_key),
        },
        "sandbox key": {"iss": "https://my-ehr.example.org", "jwks": published},
        "sandbox jku": {
            "iss": "https://my-ehr.example.org",
            "jku": ["https://sandbox.cds-hooks.org/.well-known/jwks.json"],
        },
    }[case]
    trust = write_trust_file(
        tmp_path, [{"iss": ISSUER, "jwks": jwk_set(SigningKey.ec384())}, entry]
    )
    with pytest.raises(ConfigError) as error:
        production_app(make_app, migrated_sqlite_url, trust)
    message = str(error.value)
    assert message.startswith("CDS_TRUSTED_CLIENTS")
    assert "clients.1" in message
    assert "CDS Hooks sandbox" in message
    assert "private key is published" in message
    development = Settings.load(environ={"CDS_AUTH": "required", "CDS_TRUSTED_CLIENTS": str(trust)})
    assert len(development.auth.clients) == 2


def test_production_still_skips_a_development_only_sandbox_entry(
    make_app: Any, migrated_sqlite_url: str, tmp_path: Path
) -> None:
    """The shipped development trust file's entry next to a real client: production starts."""
    shipped = json.loads(SANDBOX_TRUST_FILE.read_text())["clients"][0]
    trust = write_trust_file(
        tmp_path, [shipped, {"iss": ISSUER, "jwks": jwk_set(SigningKey.ec384())}]
    )
    app = production_app(make_app, migrated_sqlite_url, trust)
    clients = service_state(app).settings.auth.clients
    assert [client.iss for client in clients] == [ISSUER]


def test_tenant_claim_must_match_the_trust_entry(
    make_app: Any, sqlite_url: str, tmp_path: Path, ec_key: SigningKey
) -> None:
    """A client entry with a tenant accepts only tokens whose tenant claim is that tenant."""
    trust = write_trust_file(
        tmp_path, [{"iss": ISSUER, "jwks": jwk_set(ec_key), "tenant": "hosp-a"}], "tenant.json"
    )
    app: Flask = make_app(
        {
            "DATABASE_URL": sqlite_url,
            "AUTH": "required",
            "TRUSTED_CLIENTS": str(trust),
            "PUBLIC_BASE_URL": BASE_URL,
        }
    )
    client, tokens = app.test_client(), TokenFactory(ec_key)
    matching = post(client, SERVICE, tokens.token(SERVICE, claims={"tenant": "hosp-a"}))
    assert matching.status_code == 200, matching.get_data(as_text=True)
    assert_401(post(client, SERVICE, tokens.token(SERVICE, claims={"tenant": "hosp-b"})), "tenant")
    assert_401(post(client, SERVICE, tokens.token(SERVICE)), "tenant")
    wrong = tokens.token(FEEDBACK, claims={"tenant": "hosp-b"})
    assert_401(post(client, FEEDBACK, wrong, FEEDBACK_BODY), "tenant")
    assert feedback_rows(app) == []


def test_development_default_is_off_with_a_loud_warning(
    make_app: Any, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """No CDS_AUTH in development: authentication is off, start-up warns, no token is needed."""
    with caplog.at_level(logging.WARNING, logger="cds_service"):
        app: Flask = make_app({"DATABASE_URL": sqlite_url})
    warnings = [
        record
        for record in caplog.records
        if record.levelno == logging.WARNING and record.getMessage().startswith("CDS_AUTH is off")
    ]
    assert len(warnings) == 1
    assert "NOT authenticated" in warnings[0].getMessage()
    client = app.test_client()
    assert client.get(DISCOVERY).status_code == 200
    assert post(client, SERVICE, None).status_code == 200
    assert post(client, FEEDBACK, None, FEEDBACK_BODY).status_code == 200


def test_required_auth_does_not_warn(
    make_app: Any, sqlite_url: str, trust_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The warning is about authentication being off, not printed whatever the mode."""
    with caplog.at_level(logging.WARNING, logger="cds_service"):
        make_app(
            {
                "DATABASE_URL": sqlite_url,
                "AUTH": "required",
                "TRUSTED_CLIENTS": str(trust_file),
                "PUBLIC_BASE_URL": BASE_URL,
            }
        )
    assert "CDS_AUTH is off" not in caplog.text


UNLISTED_ORIGIN = "https://unlisted.example.org"
LISTED_ORIGIN = "https://ehr-ui.example.org"


def preflight(client: FlaskClient, origin: str) -> Any:
    return client.options(
        SERVICE,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization, Content-Type",
        },
    )


@pytest.fixture
def production_trust(tmp_path: Path, ec_key: SigningKey) -> Path:
    return write_trust_file(tmp_path, [{"iss": ISSUER, "jwks": jwk_set(ec_key)}], "prod.json")


def test_production_cors_allows_no_origin_by_default(
    make_app: Any, migrated_sqlite_url: str, production_trust: Path
) -> None:
    """Production without CDS_CORS_ORIGINS: no Access-Control-Allow-Origin, on a 401 or a
    preflight; the preflight still needs no token."""
    client = production_app(make_app, migrated_sqlite_url, production_trust).test_client()
    refused = post(client, SERVICE, None, headers={"Origin": UNLISTED_ORIGIN})
    assert refused.status_code == 401
    assert "Access-Control-Allow-Origin" not in refused.headers
    answer = preflight(client, UNLISTED_ORIGIN)
    assert answer.status_code == 200
    assert "Access-Control-Allow-Origin" not in answer.headers


def test_production_cors_echoes_a_listed_origin(
    make_app: Any, migrated_sqlite_url: str, production_trust: Path
) -> None:
    """CDS_CORS_ORIGINS names an origin: it is echoed on a 401 and on the preflight (which
    allows the Authorization header); another origin still gets nothing."""
    client = production_app(
        make_app, migrated_sqlite_url, production_trust, CORS_ORIGINS=LISTED_ORIGIN
    ).test_client()
    refused = post(client, SERVICE, None, headers={"Origin": LISTED_ORIGIN})
    assert refused.status_code == 401
    assert refused.headers["Access-Control-Allow-Origin"] == LISTED_ORIGIN
    answer = preflight(client, LISTED_ORIGIN)
    assert answer.status_code == 200
    assert answer.headers["Access-Control-Allow-Origin"] == LISTED_ORIGIN
    allowed = answer.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in re.split(r"\s*,\s*", allowed)
    other = post(client, SERVICE, None, headers={"Origin": UNLISTED_ORIGIN})
    assert other.status_code == 401
    assert "Access-Control-Allow-Origin" not in other.headers
    assert "Access-Control-Allow-Origin" not in preflight(client, UNLISTED_ORIGIN).headers


# -- a client's fhir_servers -----------------------------------------------------------------

OTHER_ISSUER = "https://third-ehr.example.org"


@pytest.fixture(scope="module")
def fhir() -> Iterator[FaultServer]:
    with fault_server() as server:
        yield server


def fhir_client(make_app: Any, sqlite_url: str, trust: Path) -> FlaskClient:
    """An app whose configured FHIR allowlist (conftest) names no server the tests start."""
    app: Flask = make_app(
        {
            "DATABASE_URL": sqlite_url,
            "AUTH": "required",
            "TRUSTED_CLIENTS": str(trust),
            "PUBLIC_BASE_URL": BASE_URL,
        }
    )
    return app.test_client()


def assert_not_allowed(response: Any) -> None:
    """412: the required 'procedures' was not prefetched and fhirServer may not be called."""
    assert response.status_code == 412, response.get_data(as_text=True)
    diagnostics = response.get_json()["issue"][0]["diagnostics"]
    assert "'procedures'" in diagnostics
    assert "not an allowed FHIR server" in diagnostics


def test_client_fhir_servers_join_the_outbound_allowlist(
    make_app: Any, sqlite_url: str, tmp_path: Path, ec_key: SigningKey, fhir: FaultServer
) -> None:
    """A FHIR server listed only in a client's trust entry is called for that client's
    requests; not for another client's, and not when the entry does not list it."""
    base = f"{fhir.url}/ok/fhir"
    body = copy.deepcopy(STANDARD)
    del body["prefetch"]["procedures"]  # required: it must be fetched
    body["fhirServer"] = base
    other_key = SigningKey.ec384()
    listed = fhir_client(
        make_app,
        sqlite_url,
        write_trust_file(
            tmp_path,
            [
                {"iss": ISSUER, "jwks": jwk_set(ec_key), "fhir_servers": [base]},
                {"iss": OTHER_ISSUER, "jwks": jwk_set(other_key)},
            ],
            "listed.json",
        ),
    )
    fhir.received.clear()
    response = post(listed, SERVICE, TokenFactory(ec_key).token(SERVICE), body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert any(path.startswith("/ok/fhir/Procedure?") for path, _ in fhir.received)

    fhir.received.clear()
    other = TokenFactory(other_key, issuer=OTHER_ISSUER)
    assert_not_allowed(post(listed, SERVICE, other.token(SERVICE), body))
    assert fhir.received == []

    unlisted = fhir_client(
        make_app,
        sqlite_url,
        write_trust_file(tmp_path, [{"iss": ISSUER, "jwks": jwk_set(ec_key)}], "unlisted.json"),
    )
    assert_not_allowed(post(unlisted, SERVICE, TokenFactory(ec_key).token(SERVICE), body))
    assert fhir.received == []


def test_shipped_sandbox_trust_file_accepts_sandbox_style_tokens(
    make_app: Any, sqlite_url: str
) -> None:
    """The packaged development trust file holds the sandbox's public key, development-only."""
    from cds_service.security.trust import load_trusted_clients

    path = (
        Path(__file__).resolve().parents[1]
        / "cds_service/security/trust/cds-hooks-sandbox.development.json"
    )
    (client,) = load_trusted_clients(path, production=False)
    assert client.iss == "https://sandbox.cds-hooks.org"
    assert client.development_only is True
    assert client.keys is not None
    assert set(client.keys) == {"44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"}
    assert load_trusted_clients(path, production=True) == []


def test_security_headers_on_every_response(client: FlaskClient, tokens: TokenFactory) -> None:
    """no-store and nosniff on successes and on 401s; HSTS only over TLS (a browser ignores it
    over plain HTTP, and it would pin a development host to HTTPS)."""
    for response in (post(client, SERVICE, tokens.token(SERVICE)), post(client, SERVICE, None)):
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "Strict-Transport-Security" not in response.headers


def test_too_many_bundle_entries_is_413(make_app: Any, sqlite_url: str) -> None:
    """A prefetch Bundle over CDS_MAX_BUNDLE_ENTRIES is refused with 413."""
    app = make_app({"DATABASE_URL": sqlite_url, "MAX_BUNDLE_ENTRIES": "3"})
    body = json.loads(json.dumps(STANDARD))
    body["prefetch"]["conditions"]["entry"] = body["prefetch"]["conditions"]["entry"] * 4
    response = post(app.test_client(), SERVICE, None, body)
    assert response.status_code == 413
    assert "CDS_MAX_BUNDLE_ENTRIES" in response.get_json()["issue"][0]["diagnostics"]


def test_logs_name_the_check_and_issuer_but_never_the_token(
    client: FlaskClient, tokens: TokenFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused token is logged by check and iss; the token itself never appears."""
    token = tokens.token(SERVICE, claims={"aud": "https://evil.example/x"})
    with caplog.at_level(logging.INFO, logger="cds_service"):
        post(client, SERVICE, token)
        good = tokens.token(SERVICE)
        post(client, SERVICE, good)
    refused = [r for r in caplog.records if r.getMessage() == "request not authenticated"]
    assert refused
    assert refused[0].check == "aud"  # type: ignore[attr-defined]
    assert refused[0].iss == ISSUER  # type: ignore[attr-defined]
    everything = caplog.text + json.dumps([vars(r) for r in caplog.records], default=str)
    for secret in (token, good, token.split(".")[2], good.split(".")[2]):
        assert secret not in everything
    answered = [r for r in caplog.records if getattr(r, "endpoint", "") == "cds.call_service"]
    assert answered[-1].client == ISSUER  # type: ignore[attr-defined]
    assert jwt.get_unverified_header(good)["alg"] == "ES384"


def test_every_fixture_with_real_tokens_leaves_no_secret_in_the_logs(
    client: FlaskClient, tokens: TokenFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """All fixtures, each with a fresh JWT and a FHIR token: no JWT, token or patient id logged."""
    from helpers.corpus import EXPECTED, FIXTURE_NAMES
    from helpers.privacy import sensitive_strings

    secrets: set[str] = {"fhir-access-token-xyz"}
    with caplog.at_level(logging.DEBUG):
        for name in FIXTURE_NAMES:
            body = load_fixture(name)
            secrets |= sensitive_strings(body)
            body["fhirAuthorization"] = {
                "access_token": "fhir-access-token-xyz",
                "token_type": "Bearer",
                "expires_in": 300,
                "scope": "user/*.read",
                "subject": "cds-20703",
            }
            path = f"/cds-services/{EXPECTED[name]['service']}"
            token = tokens.token(path)
            secrets |= {token, token.split(".")[2]}
            response = post(client, path, token, body)
            assert response.status_code == EXPECTED[name]["status"]
    text = caplog.text + json.dumps([vars(r) for r in caplog.records], default=str)
    assert [secret for secret in secrets if secret in text] == []


def trust_problem(tmp_path: Path, content: Any, name: str = "trust.json") -> str:
    from cds_service.errors import ConfigError
    from cds_service.security.trust import load_trusted_clients

    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ConfigError) as error:
        load_trusted_clients(path, production=False)
    message = str(error.value)
    assert message.startswith("CDS_TRUSTED_CLIENTS")
    return message


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{not json", "not valid JSON"),
        ({"clients": []}, "clients"),
        ({"clients": [{"iss": "x"}]}, "exactly one of jwks, jwks_file, jku"),
        ({"clients": [{"iss": "x", "jku": ["https://a/j"], "jwks": {"keys": []}}]}, "exactly one"),
        ({"clients": [{"iss": "x", "jku": ["http://keys.example/j"]}]}, "https"),
        ({"clients": [{"iss": "x", "jwks": {"keys": []}}]}, "non-empty 'keys'"),
        ({"clients": [{"iss": "x", "jwks": {"keys": [{"kty": "EC"}]}}]}, "no 'kid'"),
        ({"clients": [{"iss": "x", "jwks": {"keys": [{"kty": "oct", "kid": "a", "k": "c2VjcmV0"}]}}]}, "private or symmetric"),
        ({"clients": [{"iss": "x", "jwks_file": "missing.json"}]}, "cannot read a JWK Set"),
        ({"clients": [{"iss": "x", "jku": ["https://a/j"], "colour": "red"}]}, "colour"),
    ],
)  # fmt: skip
def test_bad_trusted_clients_file_stops_start_up(tmp_path: Path, content: Any, needle: str) -> None:
    """Each mistake in the trusted-clients file is a start-up error saying what is wrong."""
    assert needle in trust_problem(tmp_path, content)


def test_private_key_and_duplicate_issuer_are_refused(tmp_path: Path, ec_key: SigningKey) -> None:
    """A JWK with private material, or one issuer twice, stops start-up."""
    from jwt.algorithms import ECAlgorithm

    private = json.loads(ECAlgorithm.to_jwk(ec_key.private)) | {"kid": "p"}
    assert "private or symmetric" in trust_problem(
        tmp_path, {"clients": [{"iss": "x", "jwks": {"keys": [private]}}]}
    )
    twice = {"iss": "x", "jwks": jwk_set(ec_key)}
    assert "issuer listed twice" in trust_problem(tmp_path, {"clients": [twice, twice]})


def test_yaml_trust_file_and_jwks_file(tmp_path: Path, ec_key: SigningKey) -> None:
    """YAML is read by extension; jwks_file is relative to the trust file."""
    from cds_service.security.trust import load_trusted_clients

    (tmp_path / "keys.json").write_text(json.dumps(jwk_set(ec_key)))
    path = tmp_path / "trust.yaml"
    path.write_text(
        "clients:\n  - iss: https://ehr.example.org\n    jwks_file: keys.json\n"
        "    fhir_servers: [https://ehr.example.org/fhir]\n"
    )
    (client,) = load_trusted_clients(path, production=False)
    assert client.keys is not None
    assert list(client.keys) == [ec_key.kid]
    assert client.fhir_servers == ("https://ehr.example.org/fhir/",)


VALID_KEY = ES256_KEY.public_jwk()
# id: (environment, files written to tmp_path (the first is the trust file), variable, message)
BAD_AUTH_SETTINGS: dict[str, tuple[dict[str, str], dict[str, Any], str, str]] = {
    "CDS_AUTH unknown": ({"CDS_AUTH": "sometimes"}, {}, "CDS_AUTH", "'required', 'optional' or 'off'"),
    "CDS_AUTH off in production": (
        {"CDS_PROFILE": "production", "CDS_AUTH": "off"}, {}, "CDS_AUTH",
        "'required' in the production profile",
    ),
    "required without clients": (
        {"CDS_AUTH": "required"}, {}, "CDS_TRUSTED_CLIENTS", "at least one trusted client",
    ),
    "HS256": ({"CDS_JWT_ALGORITHMS": "HS256"}, {}, "CDS_JWT_ALGORITHMS", "asymmetric algorithms"),
    "none": ({"CDS_JWT_ALGORITHMS": "none"}, {}, "CDS_JWT_ALGORITHMS", "asymmetric algorithms"),
    "leeway negative": ({"CDS_JWT_LEEWAY_SECONDS": "-1"}, {}, "CDS_JWT_LEEWAY_SECONDS", "from 0 to 300"),
    "lifetime not a number": (
        {"CDS_JWT_MAX_LIFETIME_SECONDS": "forever"}, {}, "CDS_JWT_MAX_LIFETIME_SECONDS", "a number",
    ),
    "jwks cache not a number": (
        {"CDS_JWKS_CACHE_SECONDS": "soon"}, {}, "CDS_JWKS_CACHE_SECONDS", "from 0 to 86400",
    ),
    "jwks refetch negative": (
        {"CDS_JWKS_MIN_REFETCH_SECONDS": "-5"}, {}, "CDS_JWKS_MIN_REFETCH_SECONDS", "from 0 to 3600",
    ),
    "bundle entries zero": (
        {"CDS_MAX_BUNDLE_ENTRIES": "0"}, {}, "CDS_MAX_BUNDLE_ENTRIES", "a whole number from 1",
    ),
    "bundle entries fractional": (
        {"CDS_MAX_BUNDLE_ENTRIES": "2.5"}, {}, "CDS_MAX_BUNDLE_ENTRIES", "a whole number from 1",
    ),
    "trust file missing": (
        {"CDS_TRUSTED_CLIENTS": "/no/such/trust.json"}, {}, "CDS_TRUSTED_CLIENTS", "cannot read",
    ),
    "trust file YAML syntax error": (
        {}, {"trust.yaml": "clients: [unclosed\n"}, "CDS_TRUSTED_CLIENTS", "not valid JSON/YAML",
    ),
    "trust file top level not an object": (
        {}, {"trust.json": ["clients"]}, "CDS_TRUSTED_CLIENTS", "top level must be an object",
    ),
    "trust file YAML top level not an object": (
        {}, {"trust.yml": "- iss: x\n"}, "CDS_TRUSTED_CLIENTS", "top level must be an object",
    ),
    "empty iss": (
        {}, {"trust.json": {"clients": [{"iss": "", "jwks": {"keys": [VALID_KEY]}}]}},
        "CDS_TRUSTED_CLIENTS", "clients.0.iss: String should have at least 1 character",
    ),
    "duplicate kid": (
        {}, {"trust.json": {"clients": [{"iss": "x", "jwks": {"keys": [VALID_KEY, VALID_KEY]}}]}},
        "CDS_TRUSTED_CLIENTS", "kid 'k256' appears twice",
    ),
    "kty not EC or RSA": (
        {}, {"trust.json": {"clients": [{"iss": "x", "jwks": {"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed",
             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}}]}},
        "CDS_TRUSTED_CLIENTS", "key 0 is not an EC or RSA public key",
    ),
    "unusable key": (
        {}, {"trust.json": {"clients": [{"iss": "x", "jwks": {"keys": [
            {"kty": "EC", "crv": "P-384", "kid": "bad", "x": "AAAA", "y": "AAAA"}]}}]}},
        "CDS_TRUSTED_CLIENTS", "key 0 is not a usable public key",
    ),
    "fhir_servers entry not a URL": (
        {}, {"trust.json": {"clients": [{"iss": "x", "jwks": {"keys": [VALID_KEY]},
                                         "fhir_servers": ["ehr.example.org/fhir"]}]}},
        "CDS_TRUSTED_CLIENTS", "clients.0.fhir_servers: 'ehr.example.org/fhir' is not",
    ),
    "jwks_file not a JWK Set": (
        {}, {"trust.json": {"clients": [{"iss": "x", "jwks_file": "keys.json"}]},
             "keys.json": {"keys": "k256"}},
        "CDS_TRUSTED_CLIENTS", "a JWK Set needs a non-empty 'keys' array",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_AUTH_SETTINGS))
def test_bad_auth_setting_names_the_variable(tmp_path: Path, case: str) -> None:
    """Each bad authentication setting stops start-up with a message that begins with the one
    variable to fix and says what is wrong."""
    environ, files, variable, problem = BAD_AUTH_SETTINGS[case]
    environ = dict(environ)
    for name, content in files.items():
        (tmp_path / name).write_text(content if isinstance(content, str) else json.dumps(content))
    if files:
        environ |= {
            "CDS_AUTH": "required",
            "CDS_TRUSTED_CLIENTS": str(tmp_path / next(iter(files))),
        }
    with pytest.raises(ConfigError) as error:
        Settings.load(environ=environ)
    message = str(error.value)
    assert re.findall(r"^CDS_[A-Z_]+", message) == [variable], message
    assert problem in message


def test_replay_store_forgets_expired_tokens(make_app: Any, database_url: str) -> None:
    """A token id is kept until it expires, then pruned, so the table does not grow forever."""
    from cds_service.store.database import PRUNE_EVERY
    from cds_service.store.tables import jwt_replay

    store: Store = service_state(make_app({"DATABASE_URL": database_url})).store
    now = time.time()
    assert store.remember_token("a" * 64, now + 60) is True
    assert store.remember_token("a" * 64, now + 60) is False
    assert store.remember_token("b" * 64, now - 1) is True  # already expired
    assert store.remember_token("b" * 64, now + 60) is True  # its expired row was replaced
    for index in range(PRUNE_EVERY):
        store.remember_token(f"{index:064d}", now - 1)
    with store.engine.connect() as connection:
        left = connection.execute(jwt_replay.select()).all()
    assert {row.token_key for row in left} >= {"a" * 64, "b" * 64}
    assert len(left) < PRUNE_EVERY


@pytest.mark.parametrize("spelling", ["http://localhost:8080", "http://[::1]:8080"])
def test_development_takes_any_loopback_spelling_of_the_public_url(
    make_app: Any, sqlite_url: str, trust_file: Path, ec_key: SigningKey, spelling: str
) -> None:
    """A sandbox that calls http://localhost:8080 signs that URL as the audience; a development
    service configured as http://127.0.0.1:8080 accepts it. Another port or host still fails."""
    client = make_app(required_auth(sqlite_url, trust_file, "http://127.0.0.1:8080")).test_client()
    assert (
        post(client, SERVICE, TokenFactory(ec_key, base_url=spelling).token(SERVICE)).status_code
        == 200
    )
    for other in ("http://127.0.0.1:8081", "http://cds.example.org:8080"):
        response = post(client, SERVICE, TokenFactory(ec_key, base_url=other).token(SERVICE))
        assert_401(response, "aud")


def test_production_audience_is_the_exact_public_url(
    make_app: Any, migrated_sqlite_url: str, trust_file: Path, ec_key: SigningKey
) -> None:
    """In production the loopback spellings are not folded: the audience must match exactly."""
    config = {
        "DATABASE_URL": migrated_sqlite_url,
        "PROFILE": "production",
        "TRUSTED_CLIENTS": str(trust_file),
        "PUBLIC_BASE_URL": "https://127.0.0.1:8443",
        "JWT_ALGORITHMS": "ES384,RS384",
        "FHIR_SERVER_ALLOWLIST": "https://ehr.example.org/fhir",
    }
    client = make_app(config).test_client()
    exact = TokenFactory(ec_key, base_url="https://127.0.0.1:8443").token(SERVICE)
    assert post(client, SERVICE, exact).status_code == 200
    folded = TokenFactory(ec_key, base_url="https://localhost:8443").token(SERVICE)
    response = post(client, SERVICE, folded)
    assert response.status_code == 401
    assert "(aud)" in response.get_json()["issue"][0]["diagnostics"]
