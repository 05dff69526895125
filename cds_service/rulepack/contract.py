"""What the code promises the rule pack: per finding, the template variables its rule fills, the
notes it may raise, whether its card carries a suggestion, and the evidence kinds it names; and the
structured documentation checks the fact reader computes.

The rules declare it next to each rule (:mod:`cds_service.rules.contract`) and hand it to
:func:`~cds_service.rulepack.loading.load_rule_pack`, which checks the YAML against it. It
lives here, below the rules, so the pack can be checked without importing them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class FindingContract:
    """One finding as its rule declares it."""

    code: str
    variables: frozenset[str] = frozenset()  # besides the pack's common variables
    notes: frozenset[str] = frozenset()
    suggestion: bool = False
    evidence_kinds: frozenset[str] = frozenset()
    after: tuple[str, ...] = ()  # findings this rule reads, so they are evaluated first


@dataclass(frozen=True)
class PackContract:
    """Every finding's contract, and the structured checks documentation elements may name."""

    findings: Mapping[str, FindingContract]
    structured_checks: tuple[str, ...]  # in the order an editor offers them

    @property
    def evidence_kinds(self) -> frozenset[str]:
        """Every evidence kind some finding names (each needs a label in findings.yaml)."""
        return frozenset().union(*(finding.evidence_kinds for finding in self.findings.values()))
