"""Real keys and real signed tokens for the authentication tests."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

BASE_URL = "https://cds.example.org"
MINTED: set[str] = set()  # every token the tests made: the log checks look for them
ISSUER = "https://ehr.example.org"


def remember(token: str) -> str:
    """Register ``token`` (and its signature) with the log checks; return it.

    Every token a test sends goes through here, the hand-built ones too (``alg: none``, HS256):
    the session-wide log check (conftest) and the served-process check (serving) look for them.
    An unsigned token's empty signature is not registered (it would match any text); its signing
    input is, instead.
    """
    signing_input, _, signature = token.rpartition(".")
    MINTED.update(part for part in (token, signature or signing_input) if part)
    return token


@dataclass
class SigningKey:
    """A private key with its public JWK."""

    private: Any
    kid: str
    algorithm: str

    @classmethod
    def ec384(cls, kid: str | None = None) -> SigningKey:
        return cls(ec.generate_private_key(ec.SECP384R1()), kid or uuid.uuid4().hex, "ES384")

    @classmethod
    def rsa(cls, kid: str | None = None, algorithm: str = "RS384") -> SigningKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(key, kid or uuid.uuid4().hex, algorithm)

    def public_jwk(self) -> dict[str, Any]:
        algorithm = ECAlgorithm if self.algorithm.startswith("ES") else RSAAlgorithm
        jwk: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))
        return jwk | {"kid": self.kid, "use": "sig", "alg": self.algorithm}


def jwk_set(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [key.public_jwk() for key in keys]}


@dataclass
class TokenFactory:
    """Mints CDS Hooks client JWTs; every field can be overridden per token."""

    key: SigningKey
    issuer: str = ISSUER
    base_url: str = BASE_URL
    headers: dict[str, Any] = field(default_factory=dict)

    def token(
        self,
        path: str,
        *,
        claims: dict[str, Any] | None = None,
        drop: tuple[str, ...] = (),
        headers: dict[str, Any] | None = None,
        key: SigningKey | None = None,
        algorithm: str | None = None,
    ) -> str:
        signer = key or self.key
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.base_url + path,
            "exp": now + 300,
            "iat": now,
            "jti": str(uuid.uuid4()),
        }
        payload |= claims or {}
        for name in drop:
            payload.pop(name, None)
        header = {"kid": signer.kid, "typ": "JWT"} | self.headers | (headers or {})
        token = jwt.encode(
            payload, signer.private, algorithm=algorithm or signer.algorithm, headers=header
        )
        return remember(token)


def write_trust_file(
    directory: Path, clients: list[dict[str, Any]], name: str = "trust.json"
) -> Path:
    path = directory / name
    path.write_text(json.dumps({"clients": clients}))
    return path
