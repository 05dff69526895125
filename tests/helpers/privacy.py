"""What no log may hold (tokens, JWTs, the fixtures' patient data), and the check for it."""

from __future__ import annotations

import logging
from typing import Any

from cds_service.logs import JsonFormatter
from helpers.corpus import FIXTURE_NAMES, load_fixture
from helpers.jwt_tokens import MINTED

PATIENT_REFERENCES = ("subject", "patient", "beneficiary")  # members that point at the patient


def sensitive_strings(body: dict[str, Any]) -> set[str]:
    """Patient ids, names and identifiers that appear in a request body."""
    found = {body["context"]["patientId"]}

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if value.get("resourceType") == "Patient":
                found.update(_patient_names(value))
            for key, child in value.items():
                found.update(_member_values(key, child))
                walk(child)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(body)
    return {text for text in found if text and len(text) >= 4}


def _patient_names(patient: dict[str, Any]) -> set[str]:
    """The given and family names of a Patient resource."""
    names: set[str] = set()
    for name in patient.get("name", []):
        names.update(name.get("given", []))
        if name.get("family"):
            names.add(name["family"])
    return names


def _member_values(key: str, child: Any) -> set[str]:
    """What one member says of the patient: a reference's display and identifier, a subscriberId."""
    values: set[str] = set()
    if key in PATIENT_REFERENCES and isinstance(child, dict):
        if child.get("display"):
            values.add(child["display"])
        if isinstance(child.get("identifier"), dict):
            values.add(str(child["identifier"].get("value")))
    if key == "subscriberId":
        values.add(str(child))
    return values


# Access tokens the tests put in requests; minted JWTs are added by helpers.jwt_tokens.
TEST_ACCESS_TOKENS = {
    "super-secret-access-token",
    "fhir-access-token-xyz",
    "opaque-token-42",
    "secret-tok",
    "tok-123",
}


class LogCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self.formatter_ = JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.formatter_.format(record))


def log_secrets() -> set[str]:
    """What no log may hold: the tests' access tokens, every JWT they made (so far), and the
    fixtures' patient ids, names and identifiers."""
    secrets = set(TEST_ACCESS_TOKENS) | MINTED
    for name in FIXTURE_NAMES:
        secrets |= sensitive_strings(load_fixture(name))
    return secrets


def assert_no_secret_in(text: str, where: str) -> None:
    """Fail when ``text`` (a log) holds any of :func:`log_secrets`."""
    leaked = sorted(secret for secret in log_secrets() if secret in text)
    assert leaked == [], f"secrets found in {where}: {leaked[:5]}"
