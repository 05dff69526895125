"""The +20703 rules: pure functions from :class:`ClinicalFacts` to findings.

No Flask, no I/O, no clock, no randomness: the same facts always give the same findings, so the
rules are tested without a server. Codes, patterns and wording come from the rule pack; this module
only holds the logic of each finding. Which hooks a finding runs on is data (``findings.yaml``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cds_service import claim_edit
from cds_service.facts import ClinicalFacts, DraftClaim
from cds_service.rule_pack import DocumentationElement, RulePack


@dataclass(frozen=True)
class Finding:
    """A reason to show a card, with the values its template needs."""

    code: str
    variables: dict[str, str]
    missing_documentation: tuple[str, ...] = ()
    updated_claim: dict[str, Any] | None = field(default=None, compare=False)


def evaluate(facts: ClinicalFacts, pack: RulePack) -> list[Finding]:
    """Every finding that holds for these facts, in the rule pack's order."""
    raised: dict[str, Finding] = {}
    for rule in RULES:
        for finding in rule(facts, pack, raised):
            if facts.hook in pack.findings.findings[finding.code].hooks:
                raised[finding.code] = finding
    order = list(pack.findings.findings)
    return sorted(raised.values(), key=lambda finding: order.index(finding.code))


def _primary_variables(pack: RulePack, code: str) -> dict[str, str]:
    return {"primary_code": code, "primary_descriptor": pack.coding.primary_codes[code]}


def _evidence_list(pack: RulePack, kinds: Sequence[str]) -> str:
    return "\n".join(f"- {pack.findings.evidence_labels[kind]}" for kind in kinds)


def _cpt_coding(pack: RulePack, code: str, display: str) -> dict[str, str]:
    return {"system": pack.coding.systems["cpt"], "code": code, "display": display}


def orphan_add_on(
    facts: ClinicalFacts, pack: RulePack, raised: dict[str, Finding]
) -> list[Finding]:
    """20703 on the draft claim with no line for a listed primary."""
    claim = facts.claim
    if claim is None or not _is_orphan(claim, pack):
        return []
    variables = dict(pack.template_variables())
    add_on_line = claim.lines_with(pack.coding.add_on.code)[0]
    other_lines = [line for line in claim.lines if line.code and line is not add_on_line]
    updated: dict[str, Any] | None = None
    if facts.session_primaries:
        variables |= _primary_variables(pack, facts.session_primaries[0])
        note = "primary-not-on-claim"
    elif not other_lines and facts.other_session_procedures == 0:
        note = "removal-only"
        standalone = pack.coding.standalone_removal_code
        updated = claim_edit.replace_line_code(
            claim.source.raw, add_on_line, _cpt_coding(pack, standalone.code, standalone.display)
        )
    else:
        note = "other-procedures"
    variables["note"] = _note(pack, "orphan-add-on", note, variables)
    return [Finding("orphan-add-on", variables, updated_claim=updated)]


def _is_orphan(claim: DraftClaim, pack: RulePack) -> bool:
    listed = pack.coding.primary_codes
    return bool(claim.lines_with(pack.coding.add_on.code)) and not any(
        line.code in listed for line in claim.lines
    )


def add_on_suggested(
    facts: ClinicalFacts, pack: RulePack, raised: dict[str, Finding]
) -> list[Finding]:
    """Removal evidence and a listed primary, and the draft claim does not report 20703 yet."""
    if not facts.removal_evidence or not facts.session_primaries:
        return []
    claim = facts.claim
    add_on = pack.coding.add_on
    if claim is not None and claim.lines_with(add_on.code):
        return []
    primary = facts.session_primaries[0]
    variables = pack.template_variables() | _primary_variables(pack, primary)
    variables["evidence"] = _evidence_list(pack, facts.removal_evidence)
    updated: dict[str, Any] | None = None
    primary_lines = claim.lines_with(primary) if claim is not None else []
    if claim is None:
        note = "no-claim"
    elif not primary_lines:
        note = "primary-not-on-claim"
    else:
        result = claim_edit.add_add_on_line(
            claim.source.raw,
            primary_lines[0],
            _cpt_coding(pack, add_on.code, add_on.display),
            frozenset(pack.coding.laterality_modifiers),
        )
        note = "no-claim" if result is None else "claim-updated"
        if result is not None:
            updated, sequence = result
            variables["line_sequence"] = str(sequence)
    variables["note"] = _note(pack, "add-on-suggested", note, variables)
    return [Finding("add-on-suggested", variables, updated_claim=updated)]


def documentation_missing(
    facts: ClinicalFacts, pack: RulePack, raised: dict[str, Finding]
) -> list[Finding]:
    """Documentation elements not found, once 20703 is suggested or billed (and not orphaned)."""
    claim = facts.claim
    billed = claim is not None and bool(claim.lines_with(pack.coding.add_on.code))
    if "add-on-suggested" not in raised and not (billed and "orphan-add-on" not in raised):
        return []
    missing = missing_documentation(facts, pack)
    if not missing:
        return []
    variables = pack.template_variables() | {
        "missing_count": str(len(missing)),
        "missing_checklist": _checklist(pack, missing),
    }
    return [Finding("documentation-missing", variables, missing_documentation=tuple(missing))]


def missing_documentation(facts: ClinicalFacts, pack: RulePack) -> list[str]:
    """Keys of the applicable documentation elements that the record does not show."""
    assistant = set(pack.coding.assistant_modifiers)
    has_assistant = facts.claim is not None and any(
        line.modifiers & assistant for line in facts.claim.lines
    )
    missing: list[str] = []
    for element in pack.coding.documentation:
        if element.applies_when == "assistant-modifier-on-claim" and not has_assistant:
            continue
        if not _documented(element, facts, pack):
            missing.append(element.key)
    return missing


def _documented(element: DocumentationElement, facts: ClinicalFacts, pack: RulePack) -> bool:
    compiled = pack.patterns.documentation[element.key]
    for group, pattern in zip(element.requires, compiled, strict=True):
        structured = any(name in facts.evidence for name in group.structured)
        textual = pattern is not None and any(pattern.search(text) for text in facts.texts)
        if not (structured or textual):
            return False
    return True


def _checklist(pack: RulePack, keys: Sequence[str]) -> str:
    labels = {element.key: element.label for element in pack.coding.documentation}
    return "\n".join(f"- [ ] `{key}`: {labels[key]}" for key in keys)


def planned_removal_reminder(
    facts: ClinicalFacts, pack: RulePack, raised: dict[str, Finding]
) -> list[Finding]:
    """A listed primary is being ordered while an intramedullary drug device is in place."""
    if not facts.draft_order_primaries or not facts.device_in_place:
        return []
    variables = pack.template_variables() | _primary_variables(pack, facts.draft_order_primaries[0])
    variables["evidence"] = _evidence_list(pack, facts.device_in_place)
    always = [
        element.key for element in pack.coding.documentation if element.applies_when == "always"
    ]
    variables["documentation_checklist"] = _checklist(pack, always)
    return [Finding("planned-removal-reminder", variables)]


def _note(pack: RulePack, code: str, name: str, variables: dict[str, str]) -> str:
    return pack.findings.findings[code].notes[name].format_map(variables).strip()


Rule = Callable[[ClinicalFacts, RulePack, dict[str, Finding]], list[Finding]]
# Order matters: documentation_missing reads what the two claim rules raised.
RULES: tuple[Rule, ...] = (
    orphan_add_on,
    add_on_suggested,
    documentation_missing,
    planned_removal_reminder,
)
