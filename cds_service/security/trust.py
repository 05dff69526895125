"""The trusted-clients file (``CDS_TRUSTED_CLIENTS``): which CDS clients may call, read at start.

Each entry names a client (``iss``) and where its public keys come from: an inline JWK Set, a JWK
Set file, or an allowlist of ``jku`` URLs. A bad file stops start-up with a message naming the
entry. In production, the public CDS Hooks sandbox is never trusted: its private key is published.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cds_service.errors import ConfigError
from cds_service.fhir.url_policy import UnsafeUrlError, allowlist_entry, parse_outbound
from cds_service.security.jwks import jwk_set_keys

logger = logging.getLogger(__name__)

# The public CDS Hooks sandbox: its private key is published, so its tokens prove nothing.
SANDBOX_HOST = "sandbox.cds-hooks.org"
SANDBOX_TRUST_FILE = Path(__file__).parent / "trust" / "cds-hooks-sandbox.development.json"
_VARIABLE = "CDS_TRUSTED_CLIENTS"


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
            try:
                parsed = parse_outbound(url)
            except UnsafeUrlError as exc:
                raise ValueError(f"a jku URL breaks the outbound URL rules: {exc.reason}") from None
            if parsed.scheme != "https" and not parsed.is_loopback:
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
    clients: list[TrustedClient] = []
    seen: set[str] = set()
    for index, entry in enumerate(_read_trust_file(path).clients):
        where = f"{_VARIABLE}: {path}: clients.{index}"
        if entry.iss in seen:
            raise ConfigError(f"{where}: issuer listed twice.")
        seen.add(entry.iss)
        if production and entry.development_only:
            logger.warning(
                "development-only client not trusted in production", extra={"iss": entry.iss}
            )
            continue
        clients.append(_trusted_client(entry, path, where, production))
    return clients


def _read_trust_file(path: Path) -> _TrustFile:
    """The file parsed and checked against its model; ConfigError naming what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{_VARIABLE}: cannot read {path} ({exc.strerror}).") from None
    try:
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{_VARIABLE}: {path} is not valid JSON/YAML ({exc}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{_VARIABLE}: {path}: the top level must be an object with 'clients'.")
    try:
        return _TrustFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)
        )
        raise ConfigError(f"{_VARIABLE}: {path}: {problems}.") from None


def _trusted_client(entry: _ClientEntry, path: Path, where: str, production: bool) -> TrustedClient:
    """One entry, checked: in production never the sandbox (by host, nor by key)."""
    if production:
        _refuse_sandbox_host(entry, where)
    keys = _entry_keys(entry, path, where)
    if production and keys is not None:
        _refuse_sandbox_keys(keys, where)
    fhir_servers = _fhir_servers(entry.fhir_servers, where)
    return TrustedClient(
        iss=entry.iss,
        keys=keys,
        jku=tuple(entry.jku or ()),
        tenant=entry.tenant,
        fhir_servers=fhir_servers,
        development_only=entry.development_only,
    )


def _refuse_sandbox_host(entry: _ClientEntry, where: str) -> None:
    """Production only: the sandbox's issuer, or a ``jku`` on its host, stops start-up."""
    if _on_sandbox_host(entry.iss) or any(_on_sandbox_host(url) for url in entry.jku or ()):
        raise ConfigError(
            f"{where}: the public CDS Hooks sandbox ({SANDBOX_HOST}) is never trusted in "
            "production: its private key is published, so anyone can sign its tokens. Mark "
            "the entry development_only: true, or remove it."
        )


def _entry_keys(entry: _ClientEntry, path: Path, where: str) -> dict[str, dict[str, Any]] | None:
    """kid -> key of an inline or file JWK Set; None for a ``jku`` client (fetched when used)."""
    if entry.jwks is not None:
        return _static_keys(entry.jwks, where)
    if entry.jwks_file is not None:
        key_path = (path.parent / entry.jwks_file).resolve()
        try:
            return _static_keys(json.loads(key_path.read_text(encoding="utf-8")), where)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{where}.jwks_file: cannot read a JWK Set ({exc}).") from None
    return None


def _refuse_sandbox_keys(keys: Mapping[str, Mapping[str, Any]], where: str) -> None:
    """Production only: the sandbox's published key, under any kid, stops start-up."""
    if set(map(_key_id, keys.values())) & _sandbox_keys():
        raise ConfigError(
            f"{where}: holds the public CDS Hooks sandbox's key, never trusted in production: "
            "its private key is published, so anyone can sign with it."
        )


def _fhir_servers(servers: list[str], where: str) -> tuple[str, ...]:
    """The entry's FHIR base URLs, normalised as the allowlist keeps them."""
    entries: list[str] = []
    for server in servers:
        try:
            entries.append(allowlist_entry(server))
        except UnsafeUrlError:
            raise ConfigError(
                f"{where}.fhir_servers: {server!r} is not an http(s) base URL."
            ) from None
    return tuple(entries)


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
