"""The human-readable rule table: generated from the pack and committed in sync."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from cds_service.cli.main import main
from cds_service.rulepack.describe import describe_rules_markdown
from cds_service.rulepack.models import RulePack

DOCS = Path(__file__).resolve().parents[1] / "docs" / "rules.md"


def test_committed_rule_table_is_current(pack: RulePack) -> None:
    """docs/rules.md equals what describe-rules writes (regenerate it when cards/ change)."""
    assert DOCS.read_text() == describe_rules_markdown(pack), (
        "run: cds-service describe-rules --markdown > docs/rules.md"
    )


CARDS = Path(__file__).resolve().parents[1] / "cards"


def _doc_rows(section: str) -> dict[str, list[str]]:
    """The rows of one table of the committed docs/rules.md, by their first cell."""
    text = DOCS.read_text().split(f"\n## {section}", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
            rows.setdefault(cells[0], cells)
    return rows


def test_committed_rule_table_says_what_the_pack_files_say() -> None:
    """docs/rules.md read against the YAML files themselves (not the generator or the loaded
    pack): each finding's indicator, hooks, start date, summary, sources, confidence and
    UNCONFIRMED items, each documentation element, each source and every listed primary."""
    findings = yaml.safe_load((CARDS / "findings.yaml").read_text())["findings"]
    coding = yaml.safe_load((CARDS / "coding.yaml").read_text())
    sources = yaml.safe_load((CARDS / "sources.yaml").read_text())["sources"]
    rows = _doc_rows("Findings")
    assert set(rows) - {"code"} == {f"`{code}`" for code in findings}
    for code, finding in findings.items():
        _, indicator, hooks, start, summary, _, _, cited, confidence, unconfirmed = rows[
            f"`{code}`"
        ]
        assert indicator == finding["indicator"], code
        assert hooks.split(", ") == sorted(finding["hooks"]), code
        assert start == finding.get("effective_from", coding["family_effective"]), code
        assert summary == finding["summary"], code
        assert re.findall(r"\b(S\d+) \(", cited) == finding["source"]["sources"], code
        assert confidence == f"tier {finding['confidence']}", code
        items = finding["unconfirmed"] + [
            item
            for note_items in finding.get("note_unconfirmed", {}).values()
            for item in note_items
        ]
        assert all(item in unconfirmed for item in items), code
        assert (unconfirmed == "nothing (`[]`)") is (not items), code
    elements = _doc_rows("Documentation elements")
    for element in coding["documentation"]:
        assert elements[f"`{element['key']}`"][1] == element["label"], element["key"]
    cited_sources = _doc_rows("Sources")
    for key, source in sources.items():
        assert cited_sources[key][1] == f"[{source['label']}]({source['url']})", key
        assert cited_sources[key][2] == str(source["tier"]), key
    listed = DOCS.read_text().split("\n## Listed primaries for 20703", 1)[1]
    codes = [entry["code"] for entry in coding["primaries"]["codes"]]
    assert re.findall(r"\b\d{5}\b", listed.split(":", 1)[1]) == codes


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


FINDINGS_DOC = Path(__file__).resolve().parents[1] / "docs" / "findings.md"


def test_readme_lists_every_finding_with_its_sources(pack: RulePack) -> None:
    """The findings table of docs/findings.md has a row per finding code, naming its source label
    and keys."""
    text = FINDINGS_DOC.read_text()
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
