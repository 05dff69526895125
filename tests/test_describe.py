"""The human-readable rule table: generated from the pack and committed in sync."""

from __future__ import annotations

from pathlib import Path

import pytest

from cds_service.cli import main
from cds_service.describe import describe_rules_markdown
from cds_service.rule_pack import RulePack

DOCS = Path(__file__).resolve().parents[1] / "docs" / "rules.md"


def test_committed_rule_table_is_current(pack: RulePack) -> None:
    """docs/rules.md equals what describe-rules writes (regenerate it when cards/ change)."""
    assert DOCS.read_text() == describe_rules_markdown(pack), (
        "run: cds-service describe-rules --markdown > docs/rules.md"
    )


def test_table_lists_every_finding_payer_and_source(pack: RulePack) -> None:
    """Every finding, documentation key, payer profile and source appears in the table."""
    text = describe_rules_markdown(pack)
    for code, finding in pack.findings.findings.items():
        assert f"| `{code}` | {finding.indicator} |" in text
        for note, indicator in finding.note_indicators.items():
            assert f"`{note}`: {indicator}" in text
        for note in finding.note_suppresses:
            assert f"`{note}`: also suppresses" in text
    for element in pack.coding.documentation:
        assert f"| `{element.key}` |" in text
    for profile in pack.payers.profiles:
        assert f"(`{profile.key}`)" in text
    for key in pack.sources:
        assert f"| {key} | [" in text


def test_describe_rules_command(capsys: pytest.CaptureFixture[str]) -> None:
    """The command prints the same table."""
    assert main(["describe-rules", "--markdown"]) == 0
    assert capsys.readouterr().out == DOCS.read_text()


README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_lists_every_finding_with_its_sources(pack: RulePack) -> None:
    """The README findings table has a row per finding code, naming its source label and keys."""
    text = README.read_text()
    section = text.split("### Findings (card `extension` key `cpt20703.finding`)", 1)[1]
    rows = {
        line.split("|")[1].strip().strip("`"): line
        for line in section.split("\n\n## ", 1)[0].splitlines()
        if line.startswith("| `")
    }
    assert set(rows) == set(pack.findings.findings)
    for code, finding in pack.findings.findings.items():
        sources_cell = rows[code].rstrip(" |").rsplit("|", 1)[1]
        assert finding.source.label in sources_cell, code
        keys = [key.strip() for key in sources_cell.rsplit(":", 1)[1].split(",")]
        assert keys == finding.source.sources, code
