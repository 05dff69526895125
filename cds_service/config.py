"""Settings, read once in ``create_app`` from ``CDS_*`` environment variables and overrides.

Precedence: built-in defaults, then the environment, then the mapping given to ``create_app``
(keys without the ``CDS_`` prefix, e.g. ``{"DATABASE_URL": "sqlite://"}``). Every value is checked
here, so a bad deploy stops at start-up with a message naming the variable.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from cds_service.errors import ConfigError
from cds_service.fhir.client import FetchPolicy
from cds_service.fhir.url_policy import UnsafeUrlError, allowlist_entry
from cds_service.rulepack.loading import default_cards_dir
from cds_service.security.tokens import DEFAULT_ALGORITHMS, PERMITTED_ALGORITHMS
from cds_service.security.trust import TrustedClient
from cds_service.security.trust import load_trusted_clients as _load_trusted_clients

logger = logging.getLogger(__name__)
PREFIX = "CDS_"
MAX_BODY_LIMIT = 100 * 1024 * 1024
DEFAULTS: dict[str, str] = {
    "PROFILE": "development",
    "PUBLIC_BASE_URL": "http://127.0.0.1:8080",
    "DATABASE_URL": "sqlite:///var/cds_service.sqlite3",
    "CARDS_DIR": "",
    "MAX_BODY_BYTES": str(5 * 1024 * 1024),
    "CORS_ORIGINS": "",
    "LOG_LEVEL": "INFO",
    "FHIR_SERVER_ALLOWLIST": "",
    "FHIR_DEADLINE_SECONDS": "3",
    "FHIR_CONNECT_TIMEOUT_SECONDS": "1",
    "FHIR_READ_TIMEOUT_SECONDS": "2.5",
    "FHIR_MAX_PAGES": "5",
    "FHIR_MAX_RESPONSE_BYTES": str(10 * 1024 * 1024),
    "FHIR_MAX_CONCURRENCY": "16",
    "MAX_BUNDLE_ENTRIES": "10000",
    "AUTH": "",
    "TRUSTED_CLIENTS": "",
    "JWT_ALGORITHMS": ",".join(DEFAULT_ALGORITHMS),
    "JWT_LEEWAY_SECONDS": "5",
    "JWT_MAX_LIFETIME_SECONDS": "3600",
    "JWKS_CACHE_SECONDS": "300",
    "JWKS_MIN_REFETCH_SECONDS": "10",
    "PLAYGROUND": "",
    "AUDIT_RETENTION_DAYS": "90",
    "UNKNOWN_FEEDBACK_PER_DAY": "1000",
    "UNKNOWN_FEEDBACK_RETENTION_DAYS": "7",
    "MAX_CONCURRENT_CALLS": "4",
    "QUEUE_TIMEOUT_SECONDS": "5",
    "RATE_LIMIT_PER_MINUTE": "6000",
    "RATE_LIMIT_BURST": "200",
}
SETTING_NAMES = frozenset(DEFAULTS)


@dataclass(frozen=True)
class AuthSettings:
    """How CDS clients are authenticated."""

    mode: Literal["required", "optional", "off"]
    clients: tuple[TrustedClient, ...]
    algorithms: tuple[str, ...]
    leeway: float
    max_lifetime: float
    jwks_cache_seconds: float
    jwks_min_refetch_seconds: float


@dataclass(frozen=True)
class Settings:
    """Validated service settings."""

    profile: Literal["development", "production"]
    public_base_url: str
    database_url: str
    cards_dir: Path
    max_body_bytes: int
    cors_origins: tuple[str, ...]
    log_level: str
    fetch: FetchPolicy
    max_bundle_entries: int
    auth: AuthSettings
    playground: bool
    audit_retention_days: int
    unknown_feedback_per_day: int  # per client: feedback on cards not issued to it
    unknown_feedback_retention_days: int
    max_concurrent_calls: int
    queue_timeout: float
    rate_limit_per_minute: int  # per client and worker process; 0: no limit
    rate_limit_burst: int

    @classmethod
    def load(
        cls, environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> Settings:
        """Settings from the environment and overrides; raise ConfigError on a bad value."""
        environ = os.environ if environ is None else environ
        raw = dict(DEFAULTS)
        raw |= {name: environ[PREFIX + name] for name in SETTING_NAMES if PREFIX + name in environ}
        for key, value in (overrides or {}).items():
            name = key.removeprefix(PREFIX).upper()
            if name in SETTING_NAMES:
                raw[name] = str(value)
        return cls(
            profile=_profile(raw["PROFILE"]),
            public_base_url=_public_base_url(raw["PUBLIC_BASE_URL"], raw["PROFILE"]),
            database_url=_database_url(raw["DATABASE_URL"]),
            cards_dir=_cards_dir(raw["CARDS_DIR"]),
            max_body_bytes=_max_body_bytes(raw["MAX_BODY_BYTES"]),
            cors_origins=_cors_origins(raw["CORS_ORIGINS"], raw["PROFILE"]),
            log_level=_log_level(raw["LOG_LEVEL"]),
            fetch=_fetch_policy(raw),
            max_bundle_entries=int(_number(raw, "MAX_BUNDLE_ENTRIES", 1, 10**6, whole=True)),
            auth=_auth_settings(raw),
            playground=_playground(raw["PLAYGROUND"], raw["PROFILE"]),
            audit_retention_days=int(_number(raw, "AUDIT_RETENTION_DAYS", 1, 36500, whole=True)),
            unknown_feedback_per_day=int(
                _number(raw, "UNKNOWN_FEEDBACK_PER_DAY", 0, 10**7, whole=True)
            ),
            unknown_feedback_retention_days=int(
                _number(raw, "UNKNOWN_FEEDBACK_RETENTION_DAYS", 1, 36500, whole=True)
            ),
            max_concurrent_calls=int(_number(raw, "MAX_CONCURRENT_CALLS", 1, 256, whole=True)),
            queue_timeout=_number(raw, "QUEUE_TIMEOUT_SECONDS", 0, 30),
            rate_limit_per_minute=int(_number(raw, "RATE_LIMIT_PER_MINUTE", 0, 10**7, whole=True)),
            rate_limit_burst=int(_number(raw, "RATE_LIMIT_BURST", 1, 10**6, whole=True)),
        )


def _profile(value: str) -> Literal["development", "production"]:
    if value == "development":
        return "development"
    if value == "production":
        return "production"
    raise ConfigError("CDS_PROFILE must be 'development' or 'production'.")


def _public_base_url(value: str, profile: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(
            "CDS_PUBLIC_BASE_URL must be an absolute http(s) URL such as https://cds.example.org."
        )
    if profile == "production" and parts.scheme != "https":
        logger.warning(
            "CDS_PUBLIC_BASE_URL is not https in the production profile: CDS Hooks requires TLS"
        )
    return value.rstrip("/")


def _database_url(value: str) -> str:
    try:
        url = make_url(value)
    except ArgumentError:
        raise ConfigError("CDS_DATABASE_URL is not a valid SQLAlchemy database URL.") from None
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError("CDS_DATABASE_URL must be a sqlite:// or postgresql:// URL.")
    return value


def _cards_dir(value: str) -> Path:
    directory = Path(value) if value else default_cards_dir()
    if not directory.is_dir():
        raise ConfigError("CDS_CARDS_DIR must name an existing directory holding the rule pack.")
    return directory


def _max_body_bytes(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1024 <= number <= MAX_BODY_LIMIT:
        raise ConfigError(
            f"CDS_MAX_BODY_BYTES must be a whole number of bytes from 1024 to {MAX_BODY_LIMIT}."
        )
    return number


def _cors_origins(value: str, profile: str) -> tuple[str, ...]:
    """Allowed browser origins: default '*' in development, none in production."""
    if not value.strip():
        return ("*",) if profile == "development" else ()
    origins = tuple(origin.strip() for origin in value.split(",") if origin.strip())
    for origin in origins:
        parts = urlsplit(origin)
        if origin != "*" and (parts.scheme not in ("http", "https") or not parts.netloc):
            raise ConfigError(
                "CDS_CORS_ORIGINS must be '*' or origins like https://ehr.example.org."
            )
    return origins


def _playground(value: str, profile: str) -> bool:
    """The card playground at ``/``: on by default in development only."""
    if not value:
        return profile == "development"
    if value not in ("on", "off"):
        raise ConfigError("CDS_PLAYGROUND must be 'on' or 'off'.")
    return value == "on"


def _log_level(value: str) -> str:
    level = value.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("CDS_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR.")
    return level


def _fetch_policy(raw: Mapping[str, str]) -> FetchPolicy:
    production = raw["PROFILE"] == "production"
    prefixes: list[str] = []
    for prefix in (item.strip() for item in raw["FHIR_SERVER_ALLOWLIST"].split(",")):
        if not prefix:
            continue
        try:
            entry = allowlist_entry(prefix)
        except UnsafeUrlError as exc:
            raise ConfigError(
                "CDS_FHIR_SERVER_ALLOWLIST must be a comma-separated list of FHIR base URLs "
                f"(one breaks the outbound URL rules: {exc.reason})."
            ) from None
        if production and not entry.startswith("https://"):
            raise ConfigError("CDS_FHIR_SERVER_ALLOWLIST may list only https URLs in production.")
        prefixes.append(entry)
    deadline = _number(raw, "FHIR_DEADLINE_SECONDS", 0.1, 60.0)
    return FetchPolicy(
        allowlist=tuple(prefixes),
        https_only=production,
        refuse_all=production and not prefixes,
        loopback_alike=not production,
        connect_timeout=_number(raw, "FHIR_CONNECT_TIMEOUT_SECONDS", 0.05, 60.0),
        read_timeout=_number(raw, "FHIR_READ_TIMEOUT_SECONDS", 0.05, 60.0),
        deadline=deadline,
        max_pages=int(_number(raw, "FHIR_MAX_PAGES", 1, 100, whole=True)),
        max_response_bytes=int(
            _number(raw, "FHIR_MAX_RESPONSE_BYTES", 1024, 1024 * 1024 * 1024, whole=True)
        ),
        max_concurrency=int(_number(raw, "FHIR_MAX_CONCURRENCY", 1, 64, whole=True)),
    )


def _number(
    raw: Mapping[str, str], name: str, low: float, high: float, whole: bool = False
) -> float:
    try:
        value = int(raw[name]) if whole else float(raw[name])
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        kind = "a whole number" if whole else "a number"
        raise ConfigError(f"CDS_{name} must be {kind} from {low:g} to {high:g}.")
    return float(value)


def _auth_settings(raw: Mapping[str, str]) -> AuthSettings:
    production = raw["PROFILE"] == "production"
    mode = raw["AUTH"] or ("required" if production else "off")
    if mode not in ("required", "optional", "off"):
        raise ConfigError("CDS_AUTH must be 'required', 'optional' or 'off'.")
    if production and mode != "required":
        raise ConfigError("CDS_AUTH must be 'required' in the production profile.")
    algorithms = tuple(name.strip() for name in raw["JWT_ALGORITHMS"].split(",") if name.strip())
    if not algorithms or not set(algorithms) <= PERMITTED_ALGORITHMS:
        raise ConfigError(
            "CDS_JWT_ALGORITHMS must list asymmetric algorithms from: "
            + ", ".join(sorted(PERMITTED_ALGORITHMS))
            + "."
        )
    clients: tuple[TrustedClient, ...] = ()
    if raw["TRUSTED_CLIENTS"]:
        clients = tuple(_load_trusted_clients(Path(raw["TRUSTED_CLIENTS"]), production))
    if mode != "off" and not clients:
        raise ConfigError(
            f"CDS_TRUSTED_CLIENTS must name a file with at least one trusted client when "
            f"CDS_AUTH is {mode}"
            + (" (development-only clients are not trusted in production)." if production else ".")
        )
    return AuthSettings(
        mode=mode,  # type: ignore[arg-type]  # checked above
        clients=clients,
        algorithms=algorithms,
        leeway=_number(raw, "JWT_LEEWAY_SECONDS", 0, 300),
        max_lifetime=_number(raw, "JWT_MAX_LIFETIME_SECONDS", 1, 86400),
        jwks_cache_seconds=_number(raw, "JWKS_CACHE_SECONDS", 0, 86400),
        jwks_min_refetch_seconds=_number(raw, "JWKS_MIN_REFETCH_SECONDS", 0, 3600),
    )
