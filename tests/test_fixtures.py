"""The fixture corpus: real FHIR R4, documented, and covering both hooks."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from fhir.resources.R4B import get_fhir_model_class
from helpers.corpus import EXPECTED, FIXTURE_NAMES, FIXTURES, ROOT, load_fixture
from helpers.suggestion_records import EXPECTED_EDITS, describe

from cds_service.fhir.resources import iter_resources

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


def _line_changes(record: dict[str, Any]) -> set[str]:
    return {field for change in record["changed"] for field in change["from"]}


def _only_changed(record: dict[str, Any], *fields: str) -> bool:
    return not record["added"] and not record["removed"] and _line_changes(record) == set(fields)


def _add_on_line_added(record: dict[str, Any]) -> bool:
    (line,) = record["added"]
    return (
        not record["removed"]
        and not record["changed"]
        and line["code"] == "20703"
        and line["quantity"] == 1
        and "51" not in line["modifiers"]
        and set(line["modifiers"]) <= {"RT", "LT"}
    )


def _one_unit_per_date(record: dict[str, Any]) -> bool:
    changed_to_one = all(c["to"] == {"quantity": 1} for c in record["changed"])
    return (
        not record["added"]
        and changed_to_one
        and all(line["code"] == "20703" for line in record["removed"])
    )


def _dropped_modifiers(record: dict[str, Any], allowed: set[str]) -> bool:
    return _only_changed(record, "modifiers") and all(
        set(c["to"]["modifiers"]) == set(c["from"]["modifiers"]) - allowed
        for c in record["changed"]
    )


def _codes_moved(record: dict[str, Any], moves: set[tuple[str, str]]) -> bool:
    return _only_changed(record, "code") and all(
        (c["from"]["code"], c["to"]["code"]) in moves for c in record["changed"]
    )


def _removed_only(record: dict[str, Any], code: str) -> bool:
    return (
        not record["added"]
        and not record["changed"]
        and bool(record["removed"])
        and all(line["code"] == code for line in record["removed"])
    )


# What the findings table of docs/findings.md promises each suggestion does (the words of its
# "suggestion" column), and how a record of expected-edits.json keeps that promise.
PROMISES: dict[str, tuple[str, Any]] = {
    "add-on-suggested": ("a new line (CPT 20703, quantity 1", _add_on_line_added),
    "documentation-missing": ("create a FHIR R4 Task for the surgeon", lambda r: "task" in r),
    "orphan-add-on": (
        "the 20703 line replaced by 20680",
        lambda r: _codes_moved(r, {("20703", "20680")}),
    ),
    "units-exceed-mue": ("one line of 1 unit for the date", _one_unit_per_date),
    "modifier-51-on-add-on": ("the line without 51", lambda r: _dropped_modifiers(r, {"51"})),
    "invalid-modifier": (
        "the line without them",
        lambda r: _dropped_modifiers(r, {"62", "66", "26", "TC", "50"}),
    ),
    "wrong-tier": (
        "replace it with the sibling code",
        lambda r: _codes_moved(r, {("20703", "20701"), ("20703", "20705")}),
    ),
    "insertion-instead-of-removal": (
        "replace the code",
        lambda r: _codes_moved(r, {("20702", "20703"), ("20703", "20702")}),
    ),
    "duplicate-hardware-removal": ("remove the 20680 line", lambda r: _removed_only(r, "20680")),
    "prefabricated-device": ("remove the line", lambda r: _removed_only(r, "20703")),
    "diagnosis-unsupported": (
        "point the line to the claim's supporting diagnoses",
        lambda r: _only_changed(r, "diagnosisSequence"),
    ),
    "laterality-conflict": (
        "the 20703 line's RT/LT replaced by the documented side",
        lambda r: _only_changed(r, "modifiers"),
    ),
    "provider-mismatch": (
        "the primary line's care team",
        lambda r: _only_changed(r, "careTeamSequence"),
    ),
}


def test_readme_promised_fixes_match_the_records() -> None:
    """docs/findings.md says, per finding, what its suggestion does; every action recorded in
    expected-edits.json does that, findings whose column says "none" have no record, and each
    promise is kept by at least one fixture."""
    readme = (ROOT / "docs" / "findings.md").read_text()
    section = readme.split("### Findings (card `extension` key `cpt20703.finding`)", 1)[1]
    column = {
        cells[0].strip("`"): cells[3]
        for line in section.split("\n\n## ", 1)[0].splitlines()
        if line.startswith("| `") and len(cells := _cells(line)) == 5
    }
    records: dict[str, list[Any]] = {}
    for edits in EXPECTED_EDITS.values():
        for code, record in edits.items():
            records.setdefault(code, []).append(record)
    for code, cell in column.items():
        if code not in PROMISES:
            assert cell.startswith("none"), code
            assert code not in records, code
            continue
        phrase, keeps = PROMISES[code]
        assert phrase in cell, code
        actions = [record for record in records.get(code, []) if record is not None]
        assert actions, f"no fixture shows the {code} suggestion"
        assert all(keeps(record) for record in actions), code
