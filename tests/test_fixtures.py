"""The fixture corpus: real FHIR R4, documented, and covering both hooks."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from conftest import EXPECTED, FIXTURE_NAMES, FIXTURES, ROOT, load_fixture
from fhir.resources.R4B import get_fhir_model_class
from suggestion_records import EXPECTED_EDITS, describe

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


def _cells(row: str) -> list[str]:
    """The cells of a markdown table row (an escaped ``\\|`` stays inside its cell)."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", row.strip())[1:-1]]


def _fixture_rows() -> dict[str, list[str]]:
    """README "Fixtures" table: file name -> its cells."""
    readme = (FIXTURES / "README.md").read_text()
    section = readme.split("\n## Fixtures\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        cells = _cells(line) if line.startswith("| `") else []
        if len(cells) == 5 and cells[0].endswith(".json`"):
            name = cells[0].strip("`")
            assert name not in rows, f"{name} has two rows"
            rows[name] = cells
    return rows


def _listed(span: str) -> list[str]:
    """``a (note), b`` -> ``[a, b]``: the codes of a README list, without their remarks."""
    items = (re.sub(r"\(.*?\)", "", item).strip() for item in span.split(","))
    return sorted(item for item in items if item)


def test_readme_expected_column_matches_expected_json() -> None:
    """Each README row states the status, payer, findings and missing keys of expected.json."""
    rows = _fixture_rows()
    assert sorted(rows) == FIXTURE_NAMES
    for name, (_, _, payer, expected, _) in rows.items():
        want = EXPECTED[name]
        status = re.match(r"\**(\d{3})", expected)
        assert status is not None, name
        assert int(status.group(1)) == want["status"], name
        assert payer.split()[0] == want["payer"], name
        findings = re.search(r"`\[([^`]*)\]`", expected)
        assert (_listed(findings.group(1)) if findings else []) == want["findings"], name
        missing = re.search(r"missing `([^`]*)`", expected)
        listed_missing = _listed(missing.group(1)) if missing else None
        assert listed_missing == want.get("missing_documentation"), name


def test_readme_fires_and_near_miss_table_matches_expected_json() -> None:
    """In the per-finding table, "fires in" files raise the finding and near misses do not."""
    readme = (FIXTURES / "README.md").read_text()
    checked = 0
    for line in readme.splitlines():
        cells = _cells(line) if line.startswith("| `") else []
        if len(cells) != 3 or cells[0].endswith(".json`"):
            continue
        finding = cells[0].strip("`")
        for column, fires in ((cells[1], True), (cells[2], False)):
            for short in re.findall(r"`…(--[^`]+\.json)`", column):
                (name,) = [full for full in FIXTURE_NAMES if full.endswith(short)]
                assert (finding in EXPECTED[name]["findings"]) is fires, (finding, name)
                checked += 1
    assert checked >= 30


def test_readme_suggestion_table_matches_expected_edits() -> None:
    """The README's "What each suggestion does" table has one row per record of
    expected-edits.json, saying in words exactly what the record holds, and a reason citing the
    coding facts file."""
    readme = (FIXTURES / "README.md").read_text()
    section = readme.split("\n## What each suggestion does", 1)[1].split("\n## ", 1)[0]
    rows: dict[tuple[str, str], list[str]] = {}
    for line in section.splitlines():
        cells = _cells(line) if line.startswith("| `") else []
        if len(cells) == 4:
            (name,) = [full for full in FIXTURE_NAMES if full.endswith(cells[0].strip("`…"))]
            rows[(name, cells[1].strip("`"))] = cells
    records = {(name, code) for name, edits in EXPECTED_EDITS.items() for code in edits}
    assert set(rows) == records
    for (name, code), (_, _, does, why) in rows.items():
        assert does == describe(EXPECTED_EDITS[name][code]), (name, code)
        assert re.search(r"§\d", why), (name, code)


def test_expected_edits_cover_exactly_the_findings_that_can_suggest() -> None:
    """A record exists for each expected finding whose card template has a suggestion, and only
    for findings the fixture is expected to raise."""
    with_suggestion = {
        code
        for code, template in yaml.safe_load((ROOT / "cards" / "findings.yaml").read_text())[
            "findings"
        ].items()
        if "suggestion" in template
    }
    for name, expected in EXPECTED.items():
        wanted = set(expected["findings"]) & with_suggestion
        assert set(EXPECTED_EDITS.get(name, {})) == wanted, name
