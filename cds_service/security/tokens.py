"""Trust only real CDS clients: verify the JWT every CDS Hooks request carries (CDS Hooks 2.0).

A trusted-clients file names each client (``iss``) and where its public keys come from: an inline
JWK Set, a JWK Set file, or an allowlist of ``jku`` URLs. Verification, in order, each failure
naming its check: bearer token present, header readable, ``alg`` on the allowlist (never ``none``
or HS*), ``typ`` JWT, ``kid`` present, ``iss`` trusted, ``jku`` (when present) on that client's
allowlist, the key found (a ``jku`` set is fetched again once, rate-limited, for an unknown ``kid``)
and suited to ``alg``, the signature, ``aud`` equal to this endpoint's public URL, ``exp``/``iat``
within the leeway, a lifetime no longer than the maximum, and ``jti`` not seen before.

For a client whose keys are inline or in a file, a ``jku`` header is ignored: nothing is fetched
and only the configured keys count (the CDS Hooks sandbox sends one that points to the internet).
Tokens are never logged or stored; the replay store keeps a hash of ``iss`` and ``jti``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import requests
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cds_service.errors import AuthenticationError, ConfigError, KeySetUnavailableError

logger = logging.getLogger(__name__)

DEFAULT_ALGORITHMS = ("ES384", "RS384")
# The public CDS Hooks sandbox: its private key is published, so its tokens prove nothing.
SANDBOX_HOST = "sandbox.cds-hooks.org"
SANDBOX_TRUST_FILE = Path(__file__).parent / "trust" / "cds-hooks-sandbox.development.json"
PERMITTED_ALGORITHMS = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_JWKS_MAX_BYTES = 256 * 1024
_JWKS_CHUNK = 16 * 1024


class _ClientEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    iss: str = Field(min_length=1)
    jwks: dict[str, Any] | None = None
    jwks_file: str | None = None
    jku: list[str] | None = None
    tenant: str | None = None
    fhir_servers: list[str] = Field(default_factory=list)
    development_only: bool = False

    @model_validator(mode="after")
    def _one_key_source(self) -> _ClientEntry:
        sources = [name for name in ("jwks", "jwks_file", "jku") if getattr(self, name)]
        if len(sources) != 1:
            raise ValueError("each client needs exactly one of jwks, jwks_file, jku")
        for url in self.jku or []:
            if not url.startswith("https://") and not url.startswith("http://127.0.0.1"):
                raise ValueError("jku URLs must be https (or loopback, for tests)")
        return self


class _TrustFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    clients: list[_ClientEntry] = Field(min_length=1)


@dataclass(frozen=True)
class TrustedClient:
    """A CDS client whose tokens are accepted."""

    iss: str
    keys: dict[str, dict[str, Any]] | None  # kid -> public JWK, for jwks/jwks_file clients
    jku: tuple[str, ...] = ()
    tenant: str | None = None
    fhir_servers: tuple[str, ...] = ()
    development_only: bool = False


def load_trusted_clients(path: Path, production: bool) -> list[TrustedClient]:
    """Read and check a trusted-clients file (JSON, or YAML by extension).

    In production, development-only clients are skipped, and any other entry for the public CDS
    Hooks sandbox (its issuer, a ``jku`` on its host, or its published key) stops start-up.
    """
    variable = "CDS_TRUSTED_CLIENTS"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {path} ({exc.strerror}).") from None
    try:
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{variable}: {path} is not valid JSON/YAML ({exc}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{variable}: {path}: the top level must be an object with 'clients'.")
    try:
        parsed = _TrustFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)
        )
        raise ConfigError(f"{variable}: {path}: {problems}.") from None
    clients: list[TrustedClient] = []
    seen: set[str] = set()
    for index, entry in enumerate(parsed.clients):
        where = f"{variable}: {path}: clients.{index}"
        if entry.iss in seen:
            raise ConfigError(f"{where}: issuer listed twice.")
        seen.add(entry.iss)
        if production and entry.development_only:
            logger.warning(
                "development-only client not trusted in production", extra={"iss": entry.iss}
            )
            continue
        if production and (
            _on_sandbox_host(entry.iss) or any(_on_sandbox_host(url) for url in entry.jku or ())
        ):
            raise ConfigError(
                f"{where}: the public CDS Hooks sandbox ({SANDBOX_HOST}) is never trusted in "
                "production: its private key is published, so anyone can sign its tokens. Mark "
                "the entry development_only: true, or remove it."
            )
        keys = None
        if entry.jwks is not None:
            keys = _static_keys(entry.jwks, where)
        elif entry.jwks_file is not None:
            key_path = (path.parent / entry.jwks_file).resolve()
            try:
                keys = _static_keys(json.loads(key_path.read_text(encoding="utf-8")), where)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{where}.jwks_file: cannot read a JWK Set ({exc}).") from None
        if production and keys is not None and set(map(_key_id, keys.values())) & _sandbox_keys():
            raise ConfigError(
                f"{where}: holds the public CDS Hooks sandbox's key, never trusted in production: "
                "its private key is published, so anyone can sign with it."
            )
        for server in entry.fhir_servers:
            parts = urlsplit(server)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
                raise ConfigError(f"{where}.fhir_servers: {server!r} is not an http(s) base URL.")
        clients.append(
            TrustedClient(
                iss=entry.iss,
                keys=keys,
                jku=tuple(entry.jku or ()),
                tenant=entry.tenant,
                fhir_servers=tuple(server.rstrip("/") + "/" for server in entry.fhir_servers),
                development_only=entry.development_only,
            )
        )
    return clients


def _on_sandbox_host(url: str) -> bool:
    try:
        return urlsplit(url.strip()).hostname == SANDBOX_HOST
    except ValueError:  # not a URL at all (e.g. an unbalanced "[")
        return False


def _key_id(key: Mapping[str, Any]) -> tuple[str, ...]:
    """What identifies a public key: its type and public numbers (not its kid)."""
    return tuple(str(key.get(name, "")) for name in ("kty", "crv", "x", "y", "n", "e"))


@functools.cache
def _sandbox_keys() -> frozenset[tuple[str, ...]]:
    """The public CDS Hooks sandbox's published key(s), from the shipped development trust file."""
    shipped = json.loads(SANDBOX_TRUST_FILE.read_text(encoding="utf-8"))
    return frozenset(
        _key_id(key) for client in shipped["clients"] for key in client["jwks"]["keys"]
    )


def _static_keys(jwks: Any, where: str) -> dict[str, dict[str, Any]]:
    try:
        return jwk_set_keys(jwks)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def jwk_set_keys(jwks: Any) -> dict[str, dict[str, Any]]:
    """kid -> key of a public JWK Set; ValueError when it is not one."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise ValueError("a JWK Set needs a non-empty 'keys' array")
    keys: dict[str, dict[str, Any]] = {}
    for index, key in enumerate(jwks["keys"]):
        if not isinstance(key, dict) or not isinstance(key.get("kid"), str) or not key["kid"]:
            raise ValueError(f"key {index} has no 'kid'")
        if "d" in key or "k" in key:
            raise ValueError(f"key {index} holds private or symmetric key material")
        if key.get("kty") not in ("EC", "RSA"):
            raise ValueError(f"key {index} is not an EC or RSA public key")
        if key["kid"] in keys:
            raise ValueError(f"kid {key['kid']!r} appears twice")
        try:
            jwt.PyJWK(key, _default_algorithm(key))
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            raise ValueError(f"key {index} is not a usable public key") from None
        keys[key["kid"]] = key
    return keys


def _default_algorithm(key: Mapping[str, Any]) -> str:
    if isinstance(key.get("alg"), str):
        return str(key["alg"])
    if key.get("kty") == "EC":
        return {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}.get(str(key.get("crv")), "")
    return "RS384"


@dataclass
class _CachedSet:
    keys: dict[str, dict[str, Any]]
    fetched_at: float


def _fetch_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="jwks-fetch")


@dataclass
class JwksCache:
    """JWK Sets fetched from allowlisted ``jku`` URLs, cached; refetched on an unknown kid.

    A fetch takes at most ``timeout`` seconds, however slowly the endpoint answers (it runs in
    a small pool; the caller stops waiting). When a refetch fails, the cached set is used for as
    long as it is kept (stale if error); with no set at all, :class:`KeySetUnavailableError`.
    """

    lifespan: float = 300.0
    min_refetch_interval: float = 10.0
    timeout: float = 3.0
    session: requests.Session = field(default_factory=requests.Session)
    _sets: dict[str, _CachedSet] = field(default_factory=dict)
    _last_fetch: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pool: ThreadPoolExecutor = field(default_factory=_fetch_pool)

    def key(self, url: str, kid: str) -> dict[str, Any] | None:
        """The key ``kid`` of the set at ``url``; fetch when stale, or once more when unknown."""
        now = time.monotonic()
        with self._lock:
            cached = self._sets.get(url)
            wanted = (
                cached is None or now - cached.fetched_at > self.lifespan or kid not in cached.keys
            )
            # Every fetch is rate-limited, so unknown kids cannot make us hammer the client.
            if wanted and now - self._last_fetch.get(url, -1e9) >= self.min_refetch_interval:
                cached = self._fetch(url, now)
            if cached is None:  # never fetched: the token cannot be checked now, nor refused
                next_fetch = self._last_fetch[url] + self.min_refetch_interval
                raise KeySetUnavailableError(max(1, math.ceil(next_fetch - time.monotonic())))
            return cached.keys.get(kid)

    def _fetch(self, url: str, now: float) -> _CachedSet | None:
        self._last_fetch[url] = now
        try:
            body = self._pool.submit(self._download, url).result(timeout=self.timeout)
            keys = jwk_set_keys(json.loads(body))
        except TimeoutError:
            logger.warning("JWK Set not fetched", extra={"jku": url, "reason": "timed out"})
            return self._sets.get(url)
        except (requests.RequestException, ValueError) as exc:
            logger.warning("JWK Set not fetched", extra={"jku": url, "reason": str(exc)[:100]})
            return self._sets.get(url)
        self._sets[url] = _CachedSet(keys, now)
        return self._sets[url]

    def _download(self, url: str) -> bytes:
        """The body at ``url`` (at most ``_JWKS_MAX_BYTES``), given up on after ``timeout``."""
        deadline = time.monotonic() + self.timeout
        with self.session.get(
            url, timeout=self.timeout, allow_redirects=False, stream=True
        ) as response:
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code}")
            body = b""
            for chunk in response.iter_content(_JWKS_CHUNK):
                body += chunk
                if len(body) > _JWKS_MAX_BYTES:
                    raise ValueError("too large")
                if time.monotonic() > deadline:
                    raise ValueError("too slow")
            return body


@dataclass(frozen=True)
class VerifiedClient:
    """Who sent a verified request."""

    iss: str
    tenant: str | None
    fhir_servers: tuple[str, ...]


ReplayCheck = Callable[[str, str, float], bool]  # (iss, jti, exp) -> True when first seen


class TokenVerifier:
    """Checks bearer tokens against the trusted clients."""

    def __init__(
        self,
        clients: Sequence[TrustedClient],
        algorithms: Sequence[str],
        leeway: float,
        max_lifetime: float,
        jwks_cache: JwksCache,
        remember_jti: ReplayCheck,
    ) -> None:
        self.clients = {client.iss: client for client in clients}
        self.algorithms = frozenset(algorithms)
        self.leeway = leeway
        self.max_lifetime = max_lifetime
        self.jwks_cache = jwks_cache
        self.remember_jti = remember_jti

    def verify(self, token: str, audience: str) -> VerifiedClient:
        """The client that signed ``token`` for ``audience``; AuthenticationError otherwise."""
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.DecodeError:
            raise AuthenticationError("malformed", "The bearer token is not a JWT.") from None
        try:
            return self._verify(token, audience, header, claims)
        except AuthenticationError as error:
            issuer = claims.get("iss")
            error.issuer = issuer[:200] if isinstance(issuer, str) else None
            raise

    def _verify(
        self, token: str, audience: str, header: Mapping[str, Any], claims: Mapping[str, Any]
    ) -> VerifiedClient:
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            raise AuthenticationError("alg", "The token's signing algorithm is not accepted.")
        if str(header.get("typ", "")).upper() != "JWT":
            raise AuthenticationError("typ", "The token's typ header must be JWT.")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthenticationError("kid", "The token has no kid header.")
        issuer = claims.get("iss")
        client = self.clients.get(issuer) if isinstance(issuer, str) else None
        if client is None:
            raise AuthenticationError("iss", "The token's issuer is not a trusted CDS client.")
        key = self._key(client, header, kid)
        if not isinstance(algorithm, str) or not _suits(key, algorithm):
            raise AuthenticationError("alg", "The token's algorithm does not match its key.")
        try:
            verified = jwt.decode(
                token,
                jwt.PyJWK(key, algorithm),
                algorithms=[algorithm],
                audience=audience,
                issuer=client.iss,
                leeway=self.leeway,
                options={"require": ["iss", "aud", "exp", "iat", "jti"]},
            )
        except jwt.MissingRequiredClaimError as exc:
            raise AuthenticationError(exc.claim, f"The token has no {exc.claim} claim.") from None
        except jwt.InvalidSignatureError:
            raise AuthenticationError("signature", "The token's signature is not valid.") from None
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("exp", "The token has expired.") from None
        except jwt.ImmatureSignatureError:
            raise AuthenticationError("iat", "The token is issued in the future.") from None
        except jwt.InvalidAudienceError:
            raise AuthenticationError(
                "aud", "The token's audience (aud) is not this endpoint's URL."
            ) from None
        except jwt.InvalidTokenError:
            raise AuthenticationError("malformed", "The token is not valid.") from None
        lifetime = float(verified["exp"]) - float(verified["iat"])
        if lifetime > self.max_lifetime:
            raise AuthenticationError("exp", "The token's lifetime (exp - iat) is too long.")
        jti = verified["jti"]
        if not isinstance(jti, str) or not jti:
            raise AuthenticationError("jti", "The token has no usable jti claim.")
        if not self.remember_jti(client.iss, jti, float(verified["exp"]) + self.leeway):
            raise AuthenticationError("jti", "The token was used before (jti replay).")
        tenant = verified.get("tenant")
        if client.tenant is not None and tenant != client.tenant:
            raise AuthenticationError("tenant", "The token's tenant is not the trusted one.")
        return VerifiedClient(client.iss, client.tenant, client.fhir_servers)

    def _key(self, client: TrustedClient, header: Mapping[str, Any], kid: str) -> dict[str, Any]:
        if client.keys is not None:
            key = client.keys.get(kid)  # a jku header is ignored: only configured keys count
        else:
            jku = header.get("jku")
            if jku is not None and jku not in client.jku:
                raise AuthenticationError("jku", "The token's jku is not allowed for its issuer.")
            key = None
            for url in [jku] if jku else client.jku:
                key = self.jwks_cache.key(url, kid)
                if key is not None:
                    break
        if key is None:
            raise AuthenticationError("kid", "The token's kid is not a key of its issuer.")
        return key


def _suits(key: Mapping[str, Any], algorithm: str) -> bool:
    if isinstance(key.get("alg"), str) and key["alg"] != algorithm:
        return False
    if key.get("kty") == "EC":
        return _EC_CURVES.get(algorithm) == key.get("crv")
    return key.get("kty") == "RSA" and algorithm[:2] in ("RS", "PS")


def replay_key(iss: str, jti: str) -> str:
    """What the replay store keeps of a token: a hash, not the token or its claims."""
    return hashlib.sha256(f"{iss}\n{jti}".encode()).hexdigest()
