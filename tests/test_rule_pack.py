"""The rule pack: it loads, its schema files are current, and errors point at file and line."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from helpers.corpus import EXPECTED

from cds_service.cli.main import main
from cds_service.engine.rule_pack import load_pack
from cds_service.rulepack.loading import QUESTIONNAIRE_FILE, default_cards_dir, export_json_schemas
from cds_service.rulepack.models import RulePack
from cds_service.rulepack.problems import RulePackError
from cds_service.rulepack.templates import capped_list
from cds_service.rules.findings import PACK_CONTRACT


def test_every_finding_has_a_fixture_that_fires_it(pack: RulePack) -> None:
    """Each finding of findings.yaml is expected of at least one fixture (expected.json, which
    the rule and HTTP tests hold the engine to), and of none that is refused."""
    fired = {code for expected in EXPECTED.values() for code in expected["findings"]}
    assert set(pack.findings.findings) == fired
    assert all(not e["findings"] for e in EXPECTED.values() if e["status"] != 200)


def test_every_note_has_a_fixture_that_raises_the_finding_with_it(pack: RulePack) -> None:
    """Each note (a different piece of advice) is expected of at least one fixture, except
    those listed here with the test that covers them instead."""
    covered_elsewhere = {
        # tests/test_rules.py::test_claim_without_primary_line_gets_no_action
        ("add-on-suggested", "primary-not-on-claim"),
        # tests/test_payers.py (Blue Cross NC's same-specialty group under one TIN)
        ("provider-mismatch", "care-team-group-tin"),
        # tests/test_payers.py (a Medicare payer with the primary on another claim)
        ("provider-mismatch", "other-claim-required"),
        # tests/test_rules.py::test_primary_on_another_surgeons_claim_depends_on_the_payer
        ("provider-mismatch", "other-provider"),
    }
    expected = {
        (code, note) for e in EXPECTED.values() for code, note in e.get("notes", {}).items()
    }
    declared = {
        (code, note) for code, template in pack.findings.findings.items() for note in template.notes
    }
    assert expected <= declared
    assert declared - expected == covered_elsewhere


def test_every_documentation_key_is_missing_in_some_fixture() -> None:
    """Each documentation element is shown missing by at least one fixture."""
    missing = {
        key for expected in EXPECTED.values() for key in expected.get("missing_documentation", [])
    }
    keys = {element.key for element in load_pack(default_cards_dir()).coding.documentation}
    assert keys - {"primary-procedure"} <= missing


def test_committed_schemas_are_current() -> None:
    """cards/schema/*.json equal the schemas generated from the models."""
    schema_dir = default_cards_dir() / "schema"
    for name, text in export_json_schemas(PACK_CONTRACT).items():
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
        # A fact, rule or note is no surer than its best source.
        ("coding.yaml", "  insertion_code: {sources: [S2, S3], confidence: 2}", "  insertion_code: {sources: [S2, S3], confidence: 1}", "better than its best source's tier (2)"),
        ("coding.yaml", "  laterality_modifiers: {sources: [S9, S11], confidence: 1}", "  laterality_modifier: {sources: [S9, S11], confidence: 1}", "fact_sources"),
        ("payers.yaml", "      rendering_provider: same-individual", "      rendering_provider: same-person", "add_on_billing.rendering_provider"),
        # Summaries are measured with realistic worst-case values of every placeholder.
        ("findings.yaml", "summary: \"Z47.2 with {conflicting}: ICD-10-CM Excludes1, use one or the other\"", "summary: \"Z47.2 with {conflicting}: ICD-10-CM Excludes1, so report one of them on the claim, never both, for a removal that treats it\"", "summary can reach 140 characters"),
        ("findings.yaml", "summary: \"Modifier {modifiers} is not valid on +20703\"", "summary: \"Modifier {modifiers} is not valid on +20703: CMS payment indicators for the add-on code allow none of these modifiers on its line\"", "summary can reach 140 characters"),
        ("findings.yaml", "summary: \"Report +20703 with {primary_code}:", "summary: \"Report +20703 with {primary_code} ({primary_descriptor}):", "{primary_descriptor} has no worst-case value"),
        # Per-note indicators and suppressions name notes and findings that exist.
        ("findings.yaml", "      other-procedures-medicare: info", "      other-procedure-medicare: info", "no note named 'other-procedure-medicare'"),
        ("findings.yaml", "      removal-code-billed: [documentation-missing]", "      removal-code-billed: [documentation-missed]", "unknown finding 'documentation-missed'"),
        # Every text a card shows is filled: suggestion labels and action descriptions are
        # rendered with the finding's variables; labels, override reasons and UNCONFIRMED items
        # are shown as written, so a placeholder there would reach the reader unfilled.
        ("findings.yaml", "label: \"Replace 20703 with {sibling_code}\"", "label: \"Replace 20703 with {sibling_cod}\"", "placeholder {sibling_cod} is not filled here"),
        ("findings.yaml", "label: \"Replace 20703 with {sibling_code}\"", "label: \"Replace 20703 with {{sibling_code}}\"", "renders with {sibling_code} unfilled"),
        ("findings.yaml", "action_description: \"Keep one CPT 20703 line of 1 unit for the date of service.\"", "action_description: \"Keep one CPT 20703 line of {mue_unit} unit.\"", "placeholder {mue_unit} is not filled here"),
        ("findings.yaml", "{code: \"hand-made\", display: \"The device was prepared by hand\"}", "{code: \"hand-made\", display: \"The device was prepared by hand ({note})\"}", "{note} is shown as written"),
        ("findings.yaml", "label: \"Ohio HIMA (2020): prefabricated devices do not qualify\"", "label: \"Ohio HIMA ({aoc_file}): prefabricated devices do not qualify\"", "{aoc_file} is shown as written"),
        ("findings.yaml", "      - \"NCCI procedure-to-procedure edits for the pair 20703/20680 were not retrieved.\"", "      - \"NCCI edits for the pair 20703/{add_on_code} were not retrieved.\"", "{add_on_code} is shown as written"),
        # A card's detail leaves room for its lists within the hook's limit; the explanation is
        # the same for every patient, so it takes no patient placeholder.
        ("findings.yaml", "      The draft claim reports **+20703** without any of the 16 primaries CMS lists for it.", "      The draft claim reports **+20703** without any of the 16 primaries CMS lists for it." + " Then" * 40, "on order-sign, over its limit of 500"),
        ("findings.yaml", "created in the CPT 2020 code set, effective {family_effective}: a service", "created in the CPT 2020 code set, effective {family_effective} ({service_date}): a service", "{service_date} depends on the patient"),
        ("sources.yaml", "    read: \"2026-11\"", "    read: \"November 2026\"", "read"),
        ("coding.yaml", "- structured: [removed-device-typed, removed-device-described]", "- structured: [removed-device-typo, removed-device-described]", "no structured check named 'removed-device-typo'"),
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
        load_pack(directory)
    matching = [p for p in error.value.problems if p.file == file and message in p.message]
    assert matching, [str(p) for p in error.value.problems]
    assert abs(matching[0].line - line) <= 1


def test_invalid_yaml_is_reported_with_its_line(tmp_path: Path) -> None:
    """A YAML syntax error names the file and line."""
    directory = copy_pack(tmp_path)
    (directory / "sources.yaml").write_text("sources:\n  S1: [unclosed\n")
    with pytest.raises(RulePackError) as error:
        load_pack(directory)
    (problem,) = error.value.problems
    assert problem.file == "sources.yaml"
    assert problem.line >= 2
    assert "not valid YAML" in problem.message


def test_missing_file_is_reported(tmp_path: Path) -> None:
    """A pack without one of its files is refused."""
    directory = copy_pack(tmp_path)
    (directory / "findings.yaml").unlink()
    with pytest.raises(RulePackError, match=r"findings\.yaml:0: cannot read"):
        load_pack(directory)


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    """extra="forbid": a misspelt key fails instead of being ignored."""
    directory = copy_pack(tmp_path)
    path = directory / "findings.yaml"
    path.write_text(path.read_text().replace("    indicator: info\n", "    indicater: info\n", 1))
    with pytest.raises(RulePackError) as error:
        load_pack(directory)
    assert any("indicater" in p.message for p in error.value.problems)


def test_discovery_comes_from_the_pack(pack: RulePack) -> None:
    """Each service's discovery entry carries its prefetch templates and no empty fields."""
    document = pack.discovery_document()
    ids = [service["id"] for service in document["services"]]
    assert ids == ["cpt20703-encounter-discharge", "cpt20703-order-sign"]
    for service in document["services"]:
        assert service["prefetch"]
        assert all(value for value in service.values())


@pytest.mark.parametrize(
    ("file", "old", "new"),
    [
        # S22 (NCCI manual, quoted copy) and S37 (ICD-10-CM as packaged) are tier 2 sources.
        ("findings.yaml", "  duplicate-hardware-removal:\n    confidence: 2", "  duplicate-hardware-removal:\n    confidence: 1"),
        ("findings.yaml", "  diagnosis-conflict:\n    confidence: 2", "  diagnosis-conflict:\n    confidence: 1"),
        ("coding.yaml", "  - key: implants-removed\n    confidence: 2", "  - key: implants-removed\n    confidence: 1"),
        ("payers.yaml", "        sources: [S51]\n        read: \"2026-11\"\n        tier: 2", "        sources: [S51]\n        read: \"2026-11\"\n        tier: 1"),
    ],
)  # fmt: skip
def test_confidence_cannot_be_better_than_the_sources(
    tmp_path: Path, file: str, old: str, new: str
) -> None:
    """A finding, documentation element or payer note claiming tier 1 on tier 2 sources fails."""
    directory = copy_pack(tmp_path)
    path = directory / file
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))
    with pytest.raises(RulePackError) as error:
        load_pack(directory)
    assert any("better than its best source's tier (2)" in p.message for p in error.value.problems)


def test_worst_case_conflicting_value_is_the_rules_own_cap() -> None:
    """The summary check measures {conflicting} as the rule renders it for a huge claim."""
    worst = capped_list(["T84.610A"] * 100_000)
    assert worst == "T84.610A, T84.610A and 999+ more"
    assert capped_list(["A", "B"]) == "A, B"
    assert capped_list(["A", "B", "C"]) == "A, B and 1 more"


def without_unconfirmed(text: str, code: str) -> tuple[str, int]:
    """findings.yaml with the `unconfirmed` field of one finding deleted; the finding's line."""
    lines = text.splitlines(keepends=True)
    start = lines.index(f"  {code}:\n")
    end = next(
        (i for i in range(start + 1, len(lines)) if re.match(r"^ {0,2}\S", lines[i])), len(lines)
    )
    first = next(i for i in range(start, end) if lines[i].startswith("    unconfirmed:"))
    last = first + 1
    while last < end and lines[last].startswith("      - "):
        last += 1
    return "".join(lines[:first] + lines[last:]), start + 1


@pytest.mark.parametrize("code", sorted(load_pack(default_cards_dir()).findings.findings))
def test_check_cards_requires_unconfirmed_on_every_finding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], code: str
) -> None:
    """A finding without `unconfirmed` (even an empty list says something) fails check-cards,
    at the finding's line."""
    directory = copy_pack(tmp_path)
    (directory / QUESTIONNAIRE_FILE).write_text(
        (default_cards_dir() / QUESTIONNAIRE_FILE).read_text()
    )
    path = directory / "findings.yaml"
    text, line = without_unconfirmed(path.read_text(), code)
    path.write_text(text)
    assert f"  {code}:\n" in text
    assert main(["check-cards", "--cards-dir", str(directory)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:{line}: findings.{code}.unconfirmed: Field required" in err, err


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        # A note's unconfirmed items must name a note of the finding.
        ("    note_unconfirmed:\n      removal-only:\n", "    note_unconfirmed:\n      removal-onl:\n", "no note named 'removal-onl'"),
        # An item says something.
        ("      - \"NCCI procedure-to-procedure edits for the pair 20703/20680 were not retrieved.\"\n", "      - \"\"\n", "unconfirmed.1"),
        # A single string is not a list of items.
        ("    unconfirmed: []\n    hooks: [encounter-discharge, order-sign]\n    indicator: warning\n    summary: \"Z47.2", "    unconfirmed: \"nothing\"\n    hooks: [encounter-discharge, order-sign]\n    indicator: warning\n    summary: \"Z47.2", "findings.diagnosis-conflict.unconfirmed"),
    ],
)  # fmt: skip
def test_unconfirmed_items_are_checked(tmp_path: Path, old: str, new: str, message: str) -> None:
    """note_unconfirmed keys are notes of the finding; items are non-empty strings in a list."""
    directory = copy_pack(tmp_path)
    path = directory / "findings.yaml"
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))
    with pytest.raises(RulePackError) as error:
        load_pack(directory)
    assert any(p.file == "findings.yaml" and message in p.message for p in error.value.problems), [
        str(p) for p in error.value.problems
    ]


def test_the_pipeline_is_built_once_when_the_pack_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading checks the clinical-text pipeline by building it; the pack it returns keeps that
    pipeline, so a worker's first hook call does not build it again."""
    from cds_service.rulepack import clinical_text, models

    built: list[object] = []
    real = clinical_text.build_pipeline

    def counting(rules: Any) -> Any:
        built.append(rules)
        return real(rules)

    monkeypatch.setattr(models, "build_pipeline", counting)
    pack = load_pack(default_cards_dir())
    assert len(built) == 1
    assert pack.nlp("The rod was removed.").spans is not None
    assert len(built) == 1
