"""The rule pack: it loads, its schema files are current, and errors point at file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import EXPECTED, load_fixture
from test_rules import findings_for

from cds_service.rule_pack import (
    RulePack,
    RulePackError,
    default_cards_dir,
    export_json_schemas,
    load_rule_pack,
)


def test_every_finding_has_a_fixture_that_fires_it(pack: RulePack) -> None:
    """Each finding of findings.yaml is raised by at least one fixture."""
    fired: set[str] = set()
    for name, expected in EXPECTED.items():
        if expected["status"] == 200:
            fired |= {finding.code for finding in findings_for(load_fixture(name), pack)}
    assert set(pack.findings.findings) <= fired


def test_every_documentation_key_is_missing_in_some_fixture() -> None:
    """Each documentation element is shown missing by at least one fixture."""
    missing = {
        key for expected in EXPECTED.values() for key in expected.get("missing_documentation", [])
    }
    keys = {element.key for element in load_rule_pack(default_cards_dir()).coding.documentation}
    assert keys - {"primary-procedure"} <= missing


def test_committed_schemas_are_current() -> None:
    """cards/schema/*.json equal the schemas generated from the models."""
    schema_dir = default_cards_dir() / "schema"
    for name, text in export_json_schemas().items():
        assert (schema_dir / name).read_text() == text, (
            f"regenerate {name}: cds-service check-cards --write-schemas"
        )
        json.loads(text)


def copy_pack(target: Path) -> Path:
    for source in default_cards_dir().glob("*.yaml"):
        (target / source.name).write_text(source.read_text())
    return target


def line_of(path: Path, needle: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


@pytest.mark.parametrize(
    ("file", "old", "new", "message"),
    [
        ("coding.yaml", "edit_type: 3", "edit_type: 9", "primaries.edit_type"),
        ("coding.yaml", "'\\bpmma\\b'", "'\\bpmma(\\b'", "invalid regular expression"),
        ("coding.yaml", "sources: [S1, S3]", "sources: [S1, S99]", "unknown source key 'S99'"),
        ("coding.yaml", "- {code: \"27722\", descriptor", "- {code: \"2772\", descriptor", "primaries.codes.13.code"),
        ("findings.yaml", "indicator: warning", "indicator: urgent", "indicator"),
        ("findings.yaml", "summary: \"Report +20703 with {primary_code}", "summary: \"Report +20703 with {patient_name}", "placeholder {patient_name}"),
        ("findings.yaml", "hooks: [order-sign]", "hooks: [order-sign, patient-view]", "unknown hook 'patient-view'"),
        ("services.yaml", "Device?patient={{context.patientId}}\", required: true", "Device?patient={{context.draftOrders.id}}\", required: true", "not a CDS Hooks 2.0 prefetch token"),
        ("services.yaml", "hook: order-sign", "hook: patient-view", "unsupported hook"),
        ("sources.yaml", "tier: 3", "tier: 4", "tier"),
        ("coding.yaml", 'icd10cm_prefixes: ["T84.5"', 'icd10cm_prefixes: ["T8.45"', "diagnosis_linkage.icd10cm_prefixes.0"),
        ("coding.yaml", 'hardware_removal_code: "20680"', 'hardware_removal_code: "2068O"', "hardware_removal_code"),
        ("findings.yaml", "    confidence: 1", "    confidence: 5", "confidence"),
        ("coding.yaml", "    sources: [S1, S3]", "    sources: []", "needs source keys"),
        ("findings.yaml", "suppresses: [add-on-suggested]", "suppresses: [no-such-finding]", "unknown finding 'no-such-finding'"),
        ("payers.yaml", "sources: [S51]", "sources: [S99]", "unknown source key 'S99'"),
        ("payers.yaml", "names: ['\\baetna\\b']", "names: ['(aetna']", "invalid regular expression"),
    ],
)  # fmt: skip
def test_problem_is_reported_with_file_and_line(
    tmp_path: Path, file: str, old: str, new: str, message: str
) -> None:
    """A broken pack raises RulePackError naming the file, the line and the problem."""
    directory = copy_pack(tmp_path)
    path = directory / file
    text = path.read_text()
    assert old in text, old
    line = line_of(path, old)
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(RulePackError) as error:
        load_rule_pack(directory)
    matching = [p for p in error.value.problems if p.file == file and message in p.message]
    assert matching, [str(p) for p in error.value.problems]
    assert abs(matching[0].line - line) <= 1


def test_invalid_yaml_is_reported_with_its_line(tmp_path: Path) -> None:
    """A YAML syntax error names the file and line."""
    directory = copy_pack(tmp_path)
    (directory / "sources.yaml").write_text("sources:\n  S1: [unclosed\n")
    with pytest.raises(RulePackError) as error:
        load_rule_pack(directory)
    (problem,) = error.value.problems
    assert problem.file == "sources.yaml"
    assert problem.line >= 2
    assert "not valid YAML" in problem.message


def test_missing_file_is_reported(tmp_path: Path) -> None:
    """A pack without one of its files is refused."""
    directory = copy_pack(tmp_path)
    (directory / "findings.yaml").unlink()
    with pytest.raises(RulePackError, match=r"findings\.yaml:0: cannot read"):
        load_rule_pack(directory)


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    """extra="forbid": a misspelt key fails instead of being ignored."""
    directory = copy_pack(tmp_path)
    path = directory / "findings.yaml"
    path.write_text(path.read_text().replace("    indicator: info\n", "    indicater: info\n", 1))
    with pytest.raises(RulePackError) as error:
        load_rule_pack(directory)
    assert any("indicater" in p.message for p in error.value.problems)


def test_discovery_comes_from_the_pack(pack: RulePack) -> None:
    """Each service's discovery entry carries its prefetch templates and no empty fields."""
    document = pack.discovery_document()
    ids = [service["id"] for service in document["services"]]
    assert ids == ["cpt20703-encounter-discharge", "cpt20703-order-sign"]
    for service in document["services"]:
        assert service["prefetch"]
        assert all(value for value in service.values())
