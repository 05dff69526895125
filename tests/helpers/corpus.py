"""The fixture corpus (fhir_fixtures/) and its expected outcomes, and small builders on it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fhir_fixtures"
EXPECTED: dict[str, dict[str, Any]] = json.loads((FIXTURES / "expected.json").read_text())
FIXTURE_NAMES = sorted(EXPECTED)


def without_uuids(document: Any) -> Any:
    """``document`` without its (random) uuid fields, to compare two answers."""
    if isinstance(document, dict):
        return {key: without_uuids(value) for key, value in document.items() if key != "uuid"}
    if isinstance(document, list):
        return [without_uuids(item) for item in document]
    return document


def icd10cm_diagnoses(codes: list[str]) -> list[dict[str, Any]]:
    """Claim.diagnosis entries for ``codes``, numbered from 1."""
    return [
        {
            "sequence": number,
            "diagnosisCodeableConcept": {
                "coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": code}]
            },
        }
        for number, code in enumerate(codes, start=1)
    ]


def load_fixture(name: str) -> dict[str, Any]:
    """A fixture request body, parsed."""
    body: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return body
