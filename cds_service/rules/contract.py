"""The finding contract, declared once: each rule module declares, right after a rule, what its
finding gives the card templates (variables, notes, whether it carries a suggestion, the evidence
kinds it names) and which findings it reads. ``check-cards`` and start-up check ``cards/``
against these declarations (:func:`cds_service.rules.findings.load_pack`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cds_service.rulepack.contract import FindingContract, PackContract
from cds_service.rulepack.models import RulePack
from cds_service.rules.facts import ClinicalFacts


@dataclass(frozen=True)
class Finding:
    """A reason to show a card, with the values its template needs."""

    code: str
    variables: dict[str, str]
    missing_documentation: tuple[str, ...] = ()
    note: str | None = None  # the template note the rule chose (it may set indicator, suppresses)
    updated_claim: dict[str, Any] | None = field(default=None, compare=False)
    new_resource: dict[str, Any] | None = field(default=None, compare=False)  # to create


# A rule reads the facts, the pack and the findings raised before it.
Rule = Callable[[ClinicalFacts, RulePack, dict[str, Finding]], list[Finding]]


@dataclass(frozen=True)
class DeclaredRule:
    """A rule and the contract of the finding it raises."""

    rule: Rule
    contract: FindingContract


def declare(
    rule: Rule,
    code: str,
    *,
    variables: Iterable[str] = (),
    notes: Iterable[str] = (),
    suggestion: bool = False,
    evidence_kinds: Iterable[str] = (),
    after: Iterable[str] = (),
) -> DeclaredRule:
    """``rule`` raises ``code``, filling ``variables`` (besides the pack's common ones), choosing
    among ``notes``, with a suggestion or not, and naming ``evidence_kinds``; it reads the
    findings in ``after`` from what was raised before it."""
    contract = FindingContract(
        code=code,
        variables=frozenset(variables),
        notes=frozenset(notes),
        suggestion=suggestion,
        evidence_kinds=frozenset(evidence_kinds),
        after=tuple(after),
    )
    return DeclaredRule(rule, contract)


def pack_contract(
    rules: Sequence[DeclaredRule], structured_checks: tuple[str, ...]
) -> PackContract:
    """The contract of ``rules``, in the order they run; refuses a finding declared twice or a
    rule that runs before a finding it reads."""
    findings: dict[str, FindingContract] = {}
    for declared in rules:
        contract = declared.contract
        if contract.code in findings:
            raise ValueError(f"finding {contract.code!r} is declared twice")
        if early := [code for code in contract.after if code not in findings]:
            raise ValueError(f"finding {contract.code!r} runs before {early}, which it reads")
        findings[contract.code] = contract
    return PackContract(findings=findings, structured_checks=structured_checks)
