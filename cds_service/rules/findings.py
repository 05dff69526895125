"""All the rules, in the order they run, and the contract they declare to the rule pack.

No Flask, no I/O, no clock, no randomness: the same facts always give the same findings, so the
rules are tested without a server. Codes, patterns and wording come from the rule pack; the rule
modules only hold the logic of each finding. Which hooks a finding runs on is data
(``findings.yaml``).
"""

from __future__ import annotations

from cds_service.rulepack.contract import PackContract
from cds_service.rulepack.models import RulePack
from cds_service.rules.addon_findings import (
    ADD_ON_SUGGESTED,
    DOCUMENTATION_MISSING,
    ORPHAN_ADD_ON,
    PLANNED_REMOVAL_REMINDER,
    missing_documentation,
)
from cds_service.rules.claim_findings import (
    DIAGNOSIS_CONFLICT,
    DIAGNOSIS_UNSUPPORTED,
    PREFABRICATED_DEVICE,
    PRIMARY_NOT_LISTED,
    PROVIDER_MISMATCH,
)
from cds_service.rules.contract import DeclaredRule, Finding, pack_contract
from cds_service.rules.facts import STRUCTURED_CHECKS, ClinicalFacts
from cds_service.rules.line_findings import (
    ASSISTANT_DOCUMENTATION,
    CODE_NOT_EFFECTIVE,
    DUPLICATE_HARDWARE_REMOVAL,
    INSERTION_INSTEAD_OF_REMOVAL,
    INSERTION_WITH_REMOVAL,
    INVALID_MODIFIER,
    LATERALITY_CONFLICT,
    MODIFIER_51_ON_ADD_ON,
    UNITS_EXCEED_MUE,
    WRONG_TIER,
)

__all__ = ["PACK_CONTRACT", "RULES", "Finding", "evaluate_rules", "missing_documentation"]

# The order they run in; a rule that reads another's finding (``after``) comes later.
RULES: tuple[DeclaredRule, ...] = (
    ORPHAN_ADD_ON,
    ADD_ON_SUGGESTED,
    DOCUMENTATION_MISSING,
    PLANNED_REMOVAL_REMINDER,
    UNITS_EXCEED_MUE,
    MODIFIER_51_ON_ADD_ON,
    INVALID_MODIFIER,
    ASSISTANT_DOCUMENTATION,
    WRONG_TIER,
    INSERTION_INSTEAD_OF_REMOVAL,
    INSERTION_WITH_REMOVAL,
    DUPLICATE_HARDWARE_REMOVAL,
    PRIMARY_NOT_LISTED,
    PREFABRICATED_DEVICE,
    DIAGNOSIS_CONFLICT,
    DIAGNOSIS_UNSUPPORTED,
    PROVIDER_MISMATCH,
    LATERALITY_CONFLICT,
    CODE_NOT_EFFECTIVE,
)
# Findings about a code used before it existed: they apply before the family's first day, when
# no other advice is given.
BEFORE_THE_FAMILY = frozenset({"code-not-effective"})
PACK_CONTRACT: PackContract = pack_contract(RULES, STRUCTURED_CHECKS)


def evaluate_rules(facts: ClinicalFacts, pack: RulePack) -> list[Finding]:
    """Every finding that holds for these facts, in the rule pack's order.

    A finding applies only to its hooks and to services dated inside its effective period (a
    date before the 20700 family existed gives no advice at all).
    """
    raised: dict[str, Finding] = {}
    date = facts.session_date
    for declared in RULES:
        for finding in declared.rule(facts, pack, raised):
            template = pack.findings.findings[finding.code]
            if facts.hook not in template.hooks:
                continue
            if (
                date is not None
                and finding.code not in BEFORE_THE_FAMILY
                and (date < template.effective_from or date < pack.coding.family_effective)
            ):
                continue
            raised[finding.code] = finding
    templates = pack.findings.findings
    suppressed = {
        code
        for raised_code, finding in raised.items()
        for code in templates[raised_code].suppressed_by(finding.note)
    }
    order = list(templates)
    return sorted(
        (finding for code, finding in raised.items() if code not in suppressed),
        key=lambda finding: order.index(finding.code),
    )
