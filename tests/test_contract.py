"""The finding contract (cds_service.rules.contract): each rule's declaration is checked against the
rule pack, the rules keep their declared order, and what a rule raises stays inside what it
declared."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from helpers.corpus import EXPECTED, FIXTURE_NAMES, load_fixture
from helpers.engine import facts_for

from cds_service.rulepack.contract import PackContract
from cds_service.rulepack.loading import load_rule_pack
from cds_service.rulepack.models import RulePack
from cds_service.rulepack.problems import RulePackError
from cds_service.rulepack.templates import COMMON_VARIABLES
from cds_service.rules.contract import Finding, declare, pack_contract
from cds_service.rules.facts import STRUCTURED_CHECKS
from cds_service.rules.findings import PACK_CONTRACT, RULES

ANSWERED = [name for name in FIXTURE_NAMES if EXPECTED[name]["status"] == 200]


def never(*_: object) -> list[Finding]:
    return []


def test_a_rule_cannot_run_before_a_finding_it_reads() -> None:
    """Order dependencies are explicit: reading a finding declared later is refused."""
    reader = declare(never, "reader", after=("written",))
    writer = declare(never, "written")
    with pytest.raises(ValueError, match="'reader' runs before"):
        pack_contract((reader, writer), STRUCTURED_CHECKS)
    assert set(pack_contract((writer, reader), STRUCTURED_CHECKS).findings) == {"reader", "written"}


def test_a_finding_is_declared_once() -> None:
    with pytest.raises(ValueError, match="declared twice"):
        pack_contract((declare(never, "same"), declare(never, "same")), STRUCTURED_CHECKS)


def test_every_template_has_one_declared_rule(pack: RulePack) -> None:
    """The pack's findings are exactly the declared ones, in both directions."""
    assert set(PACK_CONTRACT.findings) == set(pack.findings.findings)
    assert [declared.contract.code for declared in RULES] == list(PACK_CONTRACT.findings)


def with_finding(contract: PackContract, code: str, **changes: object) -> PackContract:
    findings = dict(contract.findings)
    findings[code] = dataclasses.replace(findings[code], **changes)  # type: ignore[arg-type]
    return dataclasses.replace(contract, findings=findings)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"notes": frozenset({"billed"})}, "note set differs at 'not-billed'"),
        ({"suggestion": False}, "suggestion template present/absent contrary to rule"),
        ({"variables": frozenset({"note", "tier_label"})}, "placeholder {sibling_code} is not"),
    ],
)
def test_the_pack_is_checked_against_the_declaration(
    pack: RulePack, change: dict[str, object], message: str
) -> None:
    """Change one declaration (wrong-tier) and the same pack is refused, naming findings.yaml."""
    contract = with_finding(PACK_CONTRACT, "wrong-tier", **change)
    with pytest.raises(RulePackError) as error:
        load_rule_pack(Path(pack.directory), contract)
    matching = [p for p in error.value.problems if message in p.message]
    assert matching, [str(p) for p in error.value.problems]
    assert all(p.file == "findings.yaml" and p.line > 0 for p in matching)


def test_an_undeclared_template_and_an_unlabelled_evidence_kind_are_refused(
    pack: RulePack,
) -> None:
    findings = {code: c for code, c in PACK_CONTRACT.findings.items() if code != "wrong-tier"}
    findings["add-on-suggested"] = dataclasses.replace(
        findings["add-on-suggested"], evidence_kinds=frozenset({"unlabelled-kind"})
    )
    contract = dataclasses.replace(PACK_CONTRACT, findings=findings)
    with pytest.raises(RulePackError) as error:
        load_rule_pack(Path(pack.directory), contract)
    messages = [p.message for p in error.value.problems]
    assert any("no rule raises finding 'wrong-tier'" in m for m in messages), messages
    assert any("evidence label set differs at 'unlabelled-kind'" in m for m in messages)


@pytest.mark.parametrize("name", ANSWERED)
def test_each_rule_raises_only_what_it_declared(name: str, pack: RulePack) -> None:
    """Run every rule on every fixture: its findings carry its code, only declared variables
    and notes, and a suggestion only when it declared one."""
    facts = facts_for(load_fixture(name), pack)
    raised: dict[str, Finding] = {}
    for declared in RULES:
        contract = declared.contract
        for finding in declared.rule(facts, pack, raised):
            assert finding.code == contract.code
            assert set(finding.variables) <= contract.variables | COMMON_VARIABLES, finding.code
            assert finding.note is None or finding.note in contract.notes, finding.code
            if not contract.suggestion:
                assert finding.updated_claim is None
                assert finding.new_resource is None
            raised[finding.code] = finding
