"""Trust only real CDS clients: verify the JWT every CDS Hooks request carries (CDS Hooks 2.0).

Verification, in order, each failure naming its check: bearer token present, header readable
(a header PyJWT refuses is a ``kid``, ``crit`` or ``malformed`` failure, never an error),
``alg`` on the allowlist (never ``none`` or HS*), ``typ`` JWT, ``kid`` present, ``exp``/``iat``/
``nbf`` JSON numbers, ``iss`` trusted
(:mod:`cds_service.security.trust`), ``jku`` (when present) on that client's allowlist, the key
found (a ``jku`` set is fetched again once, rate-limited, for an unknown ``kid``:
:mod:`cds_service.security.jwks`) and suited to ``alg``, the signature, ``aud`` equal to this
endpoint's public URL, ``exp``/``iat`` within the leeway, a lifetime no longer than the maximum,
and ``jti`` not seen before.

For a client whose keys are inline or in a file, a ``jku`` header is ignored: nothing is fetched
and only the configured keys count (the CDS Hooks sandbox sends one that points to the internet).
Tokens are never logged or stored; the replay store keeps a hash of ``iss`` and ``jti``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from cds_service.errors import AuthenticationError
from cds_service.fhir.url_policy import UnsafeUrlError, loopback_spellings, parse_outbound
from cds_service.security.jwks import JwksCache
from cds_service.security.trust import TrustedClient

DEFAULT_ALGORITHMS = ("ES384", "RS384")
PERMITTED_ALGORITHMS = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}


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

    def verify(self, token: str, audience: str | Sequence[str]) -> VerifiedClient:
        """The client that signed ``token`` for ``audience`` (one of them, when several spell
        this endpoint's URL); AuthenticationError otherwise."""
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.DecodeError:
            raise AuthenticationError("malformed", "The bearer token is not a JWT.") from None
        except jwt.InvalidTokenError:  # a header PyJWT refuses: a kid that is not a string, crit
            raise _header_refusal(token) from None
        try:
            return self._verify(token, audience, header, claims)
        except AuthenticationError as error:
            issuer = claims.get("iss")
            error.issuer = issuer[:200] if isinstance(issuer, str) else None
            raise

    def _verify(
        self,
        token: str,
        audience: str | Sequence[str],
        header: Mapping[str, Any],
        claims: Mapping[str, Any],
    ) -> VerifiedClient:
        algorithm, kid = self._checked_header(header)
        _check_numeric_dates(claims)
        client = self._trusted_issuer(claims)
        key = self._key(client, header, kid)
        if not isinstance(algorithm, str) or not _suits(key, algorithm):
            raise AuthenticationError("alg", "The token's algorithm does not match its key.")
        verified = self._signed_claims(token, key, algorithm, audience, client)
        self._check_lifetime(verified)
        self._check_first_use(client, verified)
        tenant = verified.get("tenant")
        if client.tenant is not None and tenant != client.tenant:
            raise AuthenticationError("tenant", "The token's tenant is not the trusted one.")
        return VerifiedClient(client.iss, client.tenant, client.fhir_servers)

    def _checked_header(self, header: Mapping[str, Any]) -> tuple[Any, str]:
        """The header's ``alg`` (on the allowlist) and ``kid``, once ``typ`` is JWT."""
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            raise AuthenticationError("alg", "The token's signing algorithm is not accepted.")
        if str(header.get("typ", "")).upper() != "JWT":
            raise AuthenticationError("typ", "The token's typ header must be JWT.")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthenticationError("kid", "The token has no kid header.")
        return algorithm, kid

    def _trusted_issuer(self, claims: Mapping[str, Any]) -> TrustedClient:
        """The trusted client the (not yet verified) ``iss`` claim names."""
        issuer = claims.get("iss")
        client = self.clients.get(issuer) if isinstance(issuer, str) else None
        if client is None:
            raise AuthenticationError("iss", "The token's issuer is not a trusted CDS client.")
        return client

    def _signed_claims(
        self,
        token: str,
        key: dict[str, Any],
        algorithm: str,
        audience: str | Sequence[str],
        client: TrustedClient,
    ) -> dict[str, Any]:
        """The claims, once the signature, ``iss``, ``aud``, ``exp`` and ``iat`` check out.

        Each PyJWT refusal becomes the check it failed.
        """
        try:
            return jwt.decode(
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

    def _check_lifetime(self, verified: Mapping[str, Any]) -> None:
        """A token may live (``exp`` - ``iat``) no longer than the maximum, however fresh it is."""
        lifetime = float(verified["exp"]) - float(verified["iat"])
        if lifetime > self.max_lifetime:
            raise AuthenticationError("exp", "The token's lifetime (exp - iat) is too long.")

    def _check_first_use(self, client: TrustedClient, verified: Mapping[str, Any]) -> None:
        """Each ``jti`` is accepted once per issuer, until the token has expired (no replay)."""
        jti = verified["jti"]
        if not isinstance(jti, str) or not jti:
            raise AuthenticationError("jti", "The token has no usable jti claim.")
        if not self.remember_jti(client.iss, jti, float(verified["exp"]) + self.leeway):
            raise AuthenticationError("jti", "The token was used before (jti replay).")

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


def _header_refusal(token: str) -> AuthenticationError:
    """The check a header PyJWT refused failed, named from the header's own fields."""
    try:
        segment = token.split(".", 1)[0]
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, TypeError):
        header = None
    if isinstance(header, dict) and "crit" in header:
        return AuthenticationError(
            "crit", "The token's header lists critical extensions (crit), which are not supported."
        )
    if isinstance(header, dict) and not isinstance(header.get("kid", ""), str):
        return AuthenticationError("kid", "The token's kid header is not a string.")
    return AuthenticationError("malformed", "The token's header is not valid.")


def _check_numeric_dates(claims: Mapping[str, Any]) -> None:
    """``exp``, ``iat`` and ``nbf``, when present, are JSON numbers (RFC 7519 NumericDate):
    PyJWT would also take a string of digits."""
    for name in ("exp", "iat", "nbf"):
        value = claims.get(name)
        if name in claims and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise AuthenticationError(name, f"The token's {name} claim must be a number.")


def _suits(key: Mapping[str, Any], algorithm: str) -> bool:
    if isinstance(key.get("alg"), str) and key["alg"] != algorithm:
        return False
    if key.get("kty") == "EC":
        return _EC_CURVES.get(algorithm) == key.get("crv")
    return key.get("kty") == "RSA" and algorithm[:2] in ("RS", "PS")


def replay_key(iss: str, jti: str) -> str:
    """What the replay store keeps of a token: a hash, not the token or its claims."""
    return hashlib.sha256(f"{iss}\n{jti}".encode()).hexdigest()


def endpoint_audiences(url: str, loopback_alike: bool) -> list[str]:
    """The ``aud`` values that name the endpoint ``url``: ``url`` itself, and in development
    (``loopback_alike``) the same URL under each loopback name (``localhost``, ``127.0.0.1``,
    ``[::1]``), as a sandbox signs the URL it was given."""
    audiences = [url]
    try:
        parsed = parse_outbound(url)
    except UnsafeUrlError:
        return audiences
    if loopback_alike and parsed.is_loopback:
        audiences += [str(spelling) for spelling in loopback_spellings(parsed)]
    return list(dict.fromkeys(audiences))
