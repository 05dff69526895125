"""The fixture corpus: real FHIR R4, documented, and covering both hooks."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import EXPECTED, FIXTURE_NAMES, FIXTURES, load_fixture
from fhir.resources.R4B import get_fhir_model_class

from cds_service.fhir_input import iter_resources

# The sandbox fixture carries what the CDS Hooks sandbox really sends: invalid on purpose.
DELIBERATELY_INVALID = {"order-sign--sandbox-sloppy.json"}


def resources_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    found = list(iter_resources(body["context"].get("draftOrders")))
    for value in (body.get("prefetch") or {}).values():
        found.extend(iter_resources(value))
    return found


def test_corpus_is_complete() -> None:
    """At least 16 fixtures, each named <hook>--<scenario>.json, each with an expectation."""
    files = sorted(path.name for path in FIXTURES.glob("*--*.json"))
    assert files == FIXTURE_NAMES
    assert len(files) >= 16
    for name in files:
        assert load_fixture(name)["hook"] == name.split("--")[0]
    assert {load_fixture(name)["hook"] for name in files} == {"order-sign", "encounter-discharge"}


def test_readme_describes_every_fixture() -> None:
    """fhir_fixtures/README.md has a row for each file."""
    readme = (FIXTURES / "README.md").read_text()
    for name in FIXTURE_NAMES:
        assert f"`{name}`" in readme, name


@pytest.mark.parametrize("name", sorted(set(FIXTURE_NAMES) - DELIBERATELY_INVALID))
def test_every_resource_is_valid_r4(name: str) -> None:
    """Every resource parses with the R4B models and survives a dump/parse round trip."""
    resources = resources_of(load_fixture(name))
    for resource in resources:
        model = get_fhir_model_class(resource["resourceType"])
        parsed = model.model_validate(resource)
        again = model.model_validate(parsed.model_dump(mode="json"))
        assert again == parsed


def test_sandbox_fixture_really_is_sloppy() -> None:
    """The sandbox fixture keeps its real-world defects (Bundle without type, invalid entries)."""
    body = load_fixture("order-sign--sandbox-sloppy.json")
    assert "type" not in body["context"]["draftOrders"]
    invalid = 0
    for resource in resources_of(body):
        try:
            get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        except ValueError:
            invalid += 1
    assert invalid >= 2
    assert EXPECTED["order-sign--sandbox-sloppy.json"]["status"] == 200
