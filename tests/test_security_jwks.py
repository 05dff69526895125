"""The JWK Set fetch of ``jku`` clients calls out the way the FHIR client does (``fhir.http``):
nothing from the environment (proxies, ``.netrc``), no cookie kept, the body capped at 256 KiB."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from helpers.jwt_tokens import BASE_URL, SigningKey, TokenFactory, jwk_set, write_trust_file

from cds_service.errors import KeySetUnavailableError
from cds_service.security.jwks import JwksCache

JKU_ISSUER = "https://other-ehr.example.org"
UNREACHABLE_PROXY = "http://127.0.0.1:9"  # nothing listens on the discard port
PROXY_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)


class KeyServer(ThreadingHTTPServer):
    """Serves ``body`` at every path, setting a cookie; records each request's headers."""

    daemon_threads = True

    def __init__(self, body: bytes) -> None:
        super().__init__(("127.0.0.1", 0), _KeyHandler)
        self.body = body
        self.chunked = False  # send the body without Content-Length
        self.headers_seen: list[dict[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/jwks.json"


class _KeyHandler(BaseHTTPRequestHandler):
    server: KeyServer

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self.server.headers_seen.append(dict(self.headers.items()))
        self.protocol_version = "HTTP/1.1"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Set-Cookie", "session=abc; Path=/")
        self.send_header("Connection", "close")
        self.close_connection = True
        body = self.server.body
        if not self.server.chunked:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for start in range(0, len(body), 8192):
                part = body[start : start + 8192]
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client stopped reading at its size cap
            return


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.rsa()


@pytest.fixture
def server(key: SigningKey) -> Iterator[KeyServer]:
    running = KeyServer(json.dumps(jwk_set(key)).encode())
    thread = threading.Thread(target=running.serve_forever, daemon=True)
    thread.start()
    yield running
    running.shutdown()
    running.server_close()


def test_jwk_set_fetch_ignores_proxies_and_netrc_of_the_environment(
    make_app: Callable[..., Flask],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    key: SigningKey,
    server: KeyServer,
) -> None:
    """With an unreachable proxy and a .netrc entry for the jku host in the environment, the
    service still fetches the JWK Set straight from the jku, sends no credentials, and accepts
    the token."""
    for name in PROXY_VARIABLES:
        monkeypatch.setenv(name, UNREACHABLE_PROXY)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login jwks-user password jwks-secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    # The environment is one a default session would follow: through the proxy, with the login.
    with pytest.raises(requests.exceptions.ProxyError):
        requests.Session().get(server.url, timeout=2)
    assert requests.utils.get_netrc_auth(server.url) == ("jwks-user", "jwks-secret")

    trust = write_trust_file(tmp_path, [{"iss": JKU_ISSUER, "jku": [server.url]}])
    app = make_app(
        {
            "DATABASE_URL": f"sqlite:///{tmp_path / 'cds.sqlite3'}",
            "AUTH": "required",
            "TRUSTED_CLIENTS": str(trust),
            "PUBLIC_BASE_URL": BASE_URL,
        }
    )
    token = TokenFactory(key, issuer=JKU_ISSUER, headers={"jku": server.url}).token("/cds-services")
    response = app.test_client().get("/cds-services", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert len(server.headers_seen) == 1
    assert "Authorization" not in server.headers_seen[0]


def test_jwk_set_fetch_sends_no_cookie_back(key: SigningKey, server: KeyServer) -> None:
    """A cookie the jku endpoint sets is not kept: the next fetch of the set carries none."""
    cache = JwksCache(lifespan=0, min_refetch_interval=0)
    assert cache.key(server.url, key.kid) == key.public_jwk()
    assert cache.key(server.url, key.kid) == key.public_jwk()  # stale at once: fetched again
    assert len(server.headers_seen) == 2
    assert [headers.get("Cookie") for headers in server.headers_seen] == [None, None]
    # A session that keeps cookies (requests' default) would have sent it back.
    session = requests.Session()
    session.trust_env = False  # whatever proxy the developer's shell names
    session.get(server.url, timeout=2)
    session.get(server.url, timeout=2)
    assert server.headers_seen[-1].get("Cookie") == "session=abc"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_jwk_set_larger_than_256_kib_is_not_used(
    key: SigningKey, server: KeyServer, caplog: pytest.LogCaptureFixture, chunked: bool
) -> None:
    """A set over 256 KiB (declared, or counted while read) is refused as too large, even
    though its keys are fine: with no set cached, the key is unavailable (503, not 401)."""
    server.body = json.dumps(jwk_set(key) | {"padding": "a" * 300_000}).encode()
    server.chunked = chunked
    cache = JwksCache()
    with (
        caplog.at_level(logging.WARNING, logger="cds_service.security.jwks"),
        pytest.raises(KeySetUnavailableError),
    ):
        cache.key(server.url, key.kid)
    not_fetched = [r for r in caplog.records if r.getMessage() == "JWK Set not fetched"]
    assert [getattr(record, "reason", None) for record in not_fetched] == ["too large"]
    server.body = json.dumps(jwk_set(key)).encode()
    assert JwksCache().key(server.url, key.kid) == key.public_jwk()  # the same set, smaller
