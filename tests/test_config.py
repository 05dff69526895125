"""Settings: defaults, environment, overrides, and start-up errors that name the variable."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from helpers.jwt_tokens import ISSUER, SigningKey, jwk_set, write_trust_file

from cds_service import create_app
from cds_service.config import Settings
from cds_service.errors import ConfigError
from cds_service.rulepack.loading import default_cards_dir
from cds_service.web.app_state import service_state


def test_defaults() -> None:
    """With no environment the service runs the development profile on local SQLite."""
    settings = Settings.load(environ={})
    assert settings.profile == "development"
    assert settings.public_base_url == "http://127.0.0.1:8080"
    assert settings.database_url == "sqlite:///var/cds_service.sqlite3"
    assert settings.cards_dir == default_cards_dir()
    assert settings.max_body_bytes == 5 * 1024 * 1024


def test_environment_then_overrides() -> None:
    """CDS_* variables are read, and create_app's mapping wins over them."""
    environ = {"CDS_PUBLIC_BASE_URL": "https://cds.example.org/", "CDS_MAX_BODY_BYTES": "4096"}
    settings = Settings.load(environ=environ, overrides={"MAX_BODY_BYTES": 8192})
    assert settings.public_base_url == "https://cds.example.org"
    assert settings.max_body_bytes == 8192


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CDS_PROFILE", "staging"),
        ("CDS_PUBLIC_BASE_URL", "cds.example.org"),
        ("CDS_DATABASE_URL", "not a url"),
        ("CDS_DATABASE_URL", "mysql://root@localhost/db"),
        ("CDS_CARDS_DIR", "/no/such/directory"),
        ("CDS_MAX_BODY_BYTES", "lots"),
        ("CDS_MAX_BODY_BYTES", "10"),
        ("CDS_CORS_ORIGINS", "ehr.example.org"),
        ("CDS_LOG_LEVEL", "LOUD"),
    ],
)
def test_bad_value_names_the_variable(variable: str, value: str) -> None:
    """Start-up fails with a message naming the variable and not echoing the value."""
    with pytest.raises(ConfigError) as error:
        Settings.load(environ={variable: value})
    assert variable in str(error.value)


@pytest.fixture
def trust_file(tmp_path: Path) -> Path:
    return write_trust_file(tmp_path, [{"iss": ISSUER, "jwks": jwk_set(SigningKey.ec384())}])


def test_production_warns_about_plain_http(
    trust_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The production profile warns when the public base URL is not https."""
    environ = {"CDS_PROFILE": "production", "CDS_TRUSTED_CLIENTS": str(trust_file)}
    with caplog.at_level(logging.WARNING, logger="cds_service"):
        settings = Settings.load(environ=environ)
    assert "CDS_PUBLIC_BASE_URL is not https" in caplog.text
    assert settings.auth.mode == "required"
    assert settings.cors_origins == ()


def test_production_needs_trusted_clients_and_required_auth(trust_file: Path) -> None:
    """Production refuses to start without trusted clients or with authentication relaxed."""
    with pytest.raises(ConfigError, match="CDS_TRUSTED_CLIENTS"):
        Settings.load(environ={"CDS_PROFILE": "production"})
    with pytest.raises(ConfigError, match="CDS_AUTH must be 'required'"):
        Settings.load(
            environ={
                "CDS_PROFILE": "production",
                "CDS_AUTH": "optional",
                "CDS_TRUSTED_CLIENTS": str(trust_file),
            }
        )


def test_production_does_not_trust_development_only_clients(tmp_path: Path) -> None:
    """A development-only client alone leaves production without trusted clients."""
    path = write_trust_file(
        tmp_path,
        [{"iss": ISSUER, "jwks": jwk_set(SigningKey.ec384()), "development_only": True}],
    )
    with pytest.raises(ConfigError, match="development-only clients are not trusted"):
        Settings.load(environ={"CDS_PROFILE": "production", "CDS_TRUSTED_CLIENTS": str(path)})
    development = Settings.load(environ={"CDS_AUTH": "required", "CDS_TRUSTED_CLIENTS": str(path)})
    assert [client.iss for client in development.auth.clients] == [ISSUER]


def test_create_app_reads_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """create_app takes its settings from CDS_* variables."""
    monkeypatch.setenv("CDS_DATABASE_URL", f"sqlite:///{tmp_path / 'env.sqlite3'}")
    monkeypatch.setenv("CDS_MAX_BODY_BYTES", "2048")
    app = create_app()
    assert app.config["MAX_CONTENT_LENGTH"] == 2048
    assert (tmp_path / "env.sqlite3").exists()


def test_create_app_refuses_a_broken_rule_pack(tmp_path: Path, sqlite_url: str) -> None:
    """An invalid rule pack stops start-up with the file and line of the problem."""
    for source in default_cards_dir().glob("*.yaml"):
        (tmp_path / source.name).write_text(source.read_text())
    coding = tmp_path / "coding.yaml"
    coding.write_text(coding.read_text().replace("edit_type: 3", "edit_type: seven"))
    with pytest.raises(
        ConfigError, match=r"CDS_CARDS_DIR(.|\n)*coding.yaml:\d+: primaries.edit_type"
    ):
        create_app({"DATABASE_URL": sqlite_url, "CARDS_DIR": str(tmp_path)})


def test_start_up_logs_the_settings_that_decide_refusals(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One line at start-up says what the audience check expects and which FHIR servers and
    origins are allowed: the reasons for a 401 or a 412 a generic client shows as nothing."""
    config = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'cds.sqlite3'}",
        "PUBLIC_BASE_URL": "http://127.0.0.1:9090",
        "FHIR_SERVER_ALLOWLIST": "http://127.0.0.1:8081/fhir,https://ehr.example.org/fhir/",
        "CORS_ORIGINS": "https://sandbox.cds-hooks.org",
    }
    with caplog.at_level(logging.INFO, logger="cds_service"):
        app = create_app(config)
    (record,) = [r for r in caplog.records if r.getMessage() == "settings in force"]
    assert vars(record)["public_base_url"] == "http://127.0.0.1:9090"
    assert vars(record)["fhir_allowlist"] == [
        "http://127.0.0.1:8081/fhir/",
        "https://ehr.example.org/fhir/",
    ]
    assert vars(record)["loopback_hosts_alike"] is True
    assert (vars(record)["profile"], vars(record)["auth"]) == ("development", "off")
    assert vars(record)["cors_origins"] == ["https://sandbox.cds-hooks.org"]
    service_state(app).store.engine.dispose()
