"""The +20703 rules: pure functions from :class:`ClinicalFacts` to findings.

No Flask, no I/O, no clock, no randomness: the same facts always give the same findings, so the
rules are tested without a server. Codes, patterns and wording come from the rule pack; this module
only holds the logic of each finding. Which hooks a finding runs on is data (``findings.yaml``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cds_service.rulepack.pack import (
    TIER_LABELS,
    CodedConcept,
    DocumentationElement,
    RulePack,
    capped_list,
)
from cds_service.rules import claim_edit
from cds_service.rules.facts import (
    ClaimLine,
    ClinicalFacts,
    DraftClaim,
    has_icd10cm_prefix,
    icd10cm_compact,
    links_diagnosis,
)


@dataclass(frozen=True)
class Finding:
    """A reason to show a card, with the values its template needs."""

    code: str
    variables: dict[str, str]
    missing_documentation: tuple[str, ...] = ()
    note: str | None = None  # the template note the rule chose (it may set indicator, suppresses)
    updated_claim: dict[str, Any] | None = field(default=None, compare=False)
    new_resource: dict[str, Any] | None = field(default=None, compare=False)  # to create


def evaluate_rules(facts: ClinicalFacts, pack: RulePack) -> list[Finding]:
    """Every finding that holds for these facts, in the rule pack's order.

    A finding applies only to its hooks and to services dated inside its effective period (a
    date before the 20700 family existed gives no advice at all).
    """
    raised: dict[str, Finding] = {}
    date = facts.session_date
    for rule in RULES:
        for finding in rule(facts, pack, raised):
            template = pack.findings.findings[finding.code]
            if facts.hook not in template.hooks:
                continue
            if date is not None and (
                date < template.effective_from or date < pack.coding.family_effective
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
        profile = pack.payers.profile(facts.payer)
        variables["payer_label"] = profile.label
        note = "other-procedures-commercial" if profile.commercial else "other-procedures-medicare"
    variables["note"] = _note(pack, "orphan-add-on", note, variables)
    return [Finding("orphan-add-on", variables, updated_claim=updated, note=note)]


def _is_orphan(claim: DraftClaim, pack: RulePack) -> bool:
    listed = pack.coding.primary_codes
    return bool(claim.lines_with(pack.coding.add_on.code)) and not any(
        line.code in listed for line in claim.lines
    )


def add_on_suggested(
    facts: ClinicalFacts, pack: RulePack, raised: dict[str, Finding]
) -> list[Finding]:
    """Removal evidence and a listed primary, and the draft claim does not report 20703 yet."""
    if not facts.removal_evidence or not facts.session_primaries or facts.prefabricated:
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
    return [Finding("add-on-suggested", variables, updated_claim=updated, note=note)]


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
    task = documentation_task(facts, pack, missing)
    return [
        Finding(
            "documentation-missing",
            variables,
            missing_documentation=tuple(missing),
            new_resource=task,
        )
    ]


def documentation_task(
    facts: ClinicalFacts, pack: RulePack, missing: Sequence[str]
) -> dict[str, Any] | None:
    """A FHIR R4 Task asking the surgeon to complete the documentation Questionnaire."""
    if facts.questionnaire_url is None or facts.patient_id is None:
        return None
    labels = {element.key: element.label for element in pack.coding.documentation}
    task: dict[str, Any] = {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "code": {
            "coding": [
                {
                    "system": "http://hl7.org/fhir/uv/sdc/CodeSystem/temp",
                    "code": "complete-questionnaire",
                    "display": "Complete Questionnaire",
                }
            ]
        },
        "description": "Complete the +20703 removal documentation: "
        + "; ".join(labels[key] for key in missing),
        "for": {"reference": f"Patient/{facts.patient_id}"},
        "input": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://hl7.org/fhir/uv/sdc/CodeSystem/temp",
                            "code": "questionnaire",
                            "display": "Questionnaire",
                        }
                    ]
                },
                "valueCanonical": facts.questionnaire_url,
            }
        ],
    }
    if facts.removal_procedure:
        task["focus"] = {"reference": f"Procedure/{facts.removal_procedure}"}
    if facts.encounter_id:
        task["encounter"] = {"reference": f"Encounter/{facts.encounter_id}"}
    if facts.surgeon:
        task["owner"] = {"reference": facts.surgeon}
    return task if claim_edit.is_valid_resource("Task", task) else None


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
    if element.key in facts.answered:
        return True
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


# -- claim checks ------------------------------------------------------------------------------


def _primary_line(claim: DraftClaim, pack: RulePack) -> ClaimLine | None:
    listed = pack.coding.primary_codes
    return next((line for line in claim.lines if line.code in listed), None)


def _edit_each(
    claim: dict[str, Any],
    lines: Sequence[ClaimLine],
    edit: Callable[[dict[str, Any], ClaimLine], dict[str, Any] | None],
) -> dict[str, Any] | None:
    """Apply ``edit`` to each line in turn; None as soon as one result is not valid FHIR."""
    updated: dict[str, Any] | None = claim
    for line in lines:
        if updated is None:
            return None
        updated = edit(updated, line)
    return updated


def _by_date(lines: Sequence[ClaimLine]) -> dict[str | None, list[ClaimLine]]:
    grouped: dict[str | None, list[ClaimLine]] = {}
    for line in lines:
        grouped.setdefault(line.serviced_date, []).append(line)
    return grouped


def units_exceed_mue(
    facts: ClinicalFacts, pack: RulePack, raised: dict[str, Finding]
) -> list[Finding]:
    """More than the MUE of 20703 on one date (per line quantity or across lines)."""
    claim = facts.claim
    if claim is None:
        return []
    mue = pack.coding.mue
    offending = [
        group
        for group in _by_date(claim.lines_with(pack.coding.add_on.code)).values()
        if len(group) > 1 or any((line.quantity or 0) > mue.units for line in group)
    ]
    if not offending:
        return []
    updated = _edit_each(
        claim.source.raw,
        [group[0] for group in offending],
        lambda raw, line: claim_edit.update_line(raw, line, {"quantity": {"value": mue.units}}),
    )
    if updated is not None:
        updated = claim_edit.without_lines(
            updated, [line for group in offending for line in group[1:]]
        )
    variables = pack.template_variables() | {
        "mue_units": str(mue.units),
        "mue_mai": str(mue.mai),
        "mue_file": mue.file,
    }
    return [Finding("units-exceed-mue", variables, updated_claim=updated)]


def _modifier_finding(
    code: str, facts: ClinicalFacts, pack: RulePack, forbidden: frozenset[str]
) -> list[Finding]:
    """Forbidden modifiers on 20703 lines, with the claim minus those modifiers."""
    claim = facts.claim
    if claim is None:
        return []
    lines = [
        line for line in claim.lines_with(pack.coding.add_on.code) if line.modifiers & forbidden
    ]
    if not lines:
        return []
    found = sorted({modifier for line in lines for modifier in line.modifiers & forbidden})
    updated = _edit_each(
        claim.source.raw,
        lines,
        lambda raw, line: claim_edit.without_modifiers(raw, line, forbidden),
    )
    variables = pack.template_variables() | {"modifiers": ", ".join(found)}
    return [Finding(code, variables, updated_claim=updated)]


def modifier_51_on_add_on(
    facts: ClinicalFacts, pack: RulePack, raised: dict[str, Finding]
) -> list[Finding]:
    """Modifier 51 on the add-on line."""
    forbidden = frozenset({pack.coding.multiple_procedure_modifier})
    return _modifier_finding("modifier-51-on-add-on", facts, pack, forbidden)


def invalid_modifier(
    facts: ClinicalFacts, pack: RulePack, raised: dict[str, Finding]
) -> list[Finding]:
    """Co-surgeon, team, PC/TC or bilateral modifiers on the add-on line."""
    forbidden = frozenset(pack.coding.invalid_modifiers)
    return _modifier_finding("invalid-modifier", facts, pack, forbidden)


def assistant_documentation(
    facts: ClinicalFacts, pack: RulePack, raised: dict[str, Finding]
) -> list[Finding]:
    """An assistant modifier on 20703 or its primary (assistant indicator 0)."""
    claim = facts.claim
    if claim is None:
        return []
    assistant = frozenset(pack.coding.assistant_modifiers)
    lines = claim.lines_with(pack.coding.add_on.code)
    primary = _primary_line(claim, pack)
    if primary is not None:
        lines.append(primary)
    found = sorted({modifier for line in lines for modifier in line.modifiers & assistant})
    if not found:
        return []
    role = pack.patterns.documentation.get("assistant-role", (None,))[0]
    documented = role is not None and any(role.search(text) for text in facts.texts)
    variables = pack.template_variables() | {"modifiers": ", ".join(found)}
    note = "role-documented" if documented else "role-missing"
    variables["note"] = _note(pack, "assistant-documentation", note, variables)
    return [Finding("assistant-documentation", variables, note=note)]


def wrong_tier(facts: ClinicalFacts, pack: RulePack, raised: dict[str, Finding]) -> list[Finding]:
    """A drug device removed from soft tissue or a joint, not from the medullary canal."""
    if not facts.other_tiers or facts.removal_evidence:
        return []
    tier = sorted(facts.other_tiers)[0]
    sibling = pack.coding.siblings[tier]  # type: ignore[index]
    variables = pack.template_variables() | {
        "tier_label": TIER_LABELS[tier],
        "sibling_code": sibling.code,
        "sibling_display": sibling.display,
    }
    billed = facts.claim.lines_with(pack.coding.add_on.code) if facts.claim else []
    updated = None
    if facts.claim is not None and billed:
        updated = claim_edit.replace_line_code(
            facts.claim.source.raw, billed[0], _cpt_coding(pack, sibling.code, sibling.display)
        )
    note = "billed" if billed else "not-billed"
    variables["note"] = _note(pack, "wrong-tier", note, variables)
    return [Finding("wrong-tier", variables, updated_claim=updated, note=note)]


def insertion_instead_of_removal(
    facts: ClinicalFacts, pack: RulePack, raised: dict[str, Finding]
) -> list[Finding]:
    """20702 billed for a removal, or 20703 billed for an insertion."""
    claim = facts.claim
    if claim is None:
        return []
    insertion, removal = pack.coding.insertion_code, pack.coding.add_on.code
    inserted, removed = claim.lines_with(insertion), claim.lines_with(removal)
    right: CodedConcept
    if inserted and not removed and facts.removal_evidence and not facts.insertion_evidence:
        line, right, action, other = inserted[0], pack.coding.add_on, "removal", "insertion"
        note = "insertion-code-billed"
    elif removed and not inserted and facts.insertion_evidence and not facts.removal_evidence:
        line, action, other = removed[0], "insertion", "removal"
        right = CodedConcept(
            code=insertion, display="Insertion of drug-delivery device(s), intramedullary"
        )
        note = "removal-code-billed"  # suppresses documentation-missing: nothing was removed
    else:
        return []
    variables = pack.template_variables() | {
        "billed_code": line.code or "",
        "right_code": right.code,
        "action_label": action,
        "other_action": other,
    }
    variables["note"] = _note(pack, "insertion-instead-of-removal", note, variables)
    updated = claim_edit.replace_line_code(
        claim.source.raw, line, _cpt_coding(pack, right.code, right.display)
    )
    return [Finding("insertion-instead-of-removal", variables, updated_claim=updated, note=note)]


def insertion_with_removal(
    facts: ClinicalFacts, pack: RulePack, raised: dict[str, Finding]
) -> list[Finding]:
    """20702 and 20703 on the same date (no confirmed rule: informational)."""
    claim = facts.claim
    if claim is None:
        return []
    inserted = {line.serviced_date for line in claim.lines_with(pack.coding.insertion_code)}
    removed = {line.serviced_date for line in claim.lines_with(pack.coding.add_on.code)}
    if not inserted & removed:
        return []
    return [Finding("insertion-with-removal", dict(pack.template_variables()))]


def duplicate_hardware_removal(
    facts: ClinicalFacts, pack: RulePack, raised: dict[str, Finding]
) -> list[Finding]:
    """20680 and 20703 on the same date, unless their RT/LT modifiers name opposite sides."""
    claim = facts.claim
    if claim is None:
        return []
    sides = frozenset(pack.coding.laterality_modifiers)
    add_on_lines = claim.lines_with(pack.coding.add_on.code)

    def opposite(first: ClaimLine, second: ClaimLine) -> bool:
        one, other = first.modifiers & sides, second.modifiers & sides
        return bool(one) and bool(other) and not one & other

    hardware = [
        line
        for line in claim.lines_with(pack.coding.hardware_removal_code)
        if any(
            removal.serviced_date == line.serviced_date and not opposite(removal, line)
            for removal in add_on_lines
        )
    ]
    if not hardware:
        return []
    updated = claim_edit.without_lines(claim.source.raw, hardware)
    return [
        Finding(
            "duplicate-hardware-removal", dict(pack.template_variables()), updated_claim=updated
        )
    ]


def primary_not_listed(
    facts: ClinicalFacts, pack: RulePack, raised: dict[str, Finding]
) -> list[Finding]:
    """Intramedullary removal with only unlisted primaries: the payer decides."""
    billed = facts.claim is not None and bool(facts.claim.lines_with(pack.coding.add_on.code))
    if not facts.removal_evidence or facts.session_primaries or billed or not facts.other_surgery:
        return []
    profile = pack.payers.profile(facts.payer)
    variables = pack.template_variables() | {"payer_label": profile.label}
    note = "commercial" if profile.commercial else "medicare"
    variables["note"] = _note(pack, "primary-not-listed", note, variables)
    return [Finding("primary-not-listed", variables, note=note)]


def prefabricated_device(
    facts: ClinicalFacts, pack: RulePack, raised: dict[str, Finding]
) -> list[Finding]:
    """A prefabricated device: the 20700-series codes do not apply."""
    if not facts.prefabricated:
        return []
    billed = facts.claim.lines_with(pack.coding.add_on.code) if facts.claim else []
    if not billed and not facts.removal_evidence:
        return []
    variables = dict(pack.template_variables())
    updated = None
    if facts.claim is not None and billed:
        updated = claim_edit.without_lines(facts.claim.source.raw, billed)
    note = "billed" if billed else "not-billed"
    variables["note"] = _note(pack, "prefabricated-device", note, variables)
    return [Finding("prefabricated-device", variables, updated_claim=updated, note=note)]


Z47_2 = "Z472"  # Z47.2, encounter for removal of internal fixation device (without its dot)


def diagnosis_conflict(
    facts: ClinicalFacts, pack: RulePack, raised: dict[str, Finding]
) -> list[Finding]:
    """Z47.2 with an infection or mechanical-complication code (Excludes1).

    Codes compare without their dot (Z472 is Z47.2); the summary names the first two conflicting
    codes and counts the rest, the detail lists them all.
    """
    claim = facts.claim
    if claim is None:
        return []
    shown: dict[str, str] = {}  # dot-less code -> the code as the claim writes it (once)
    for code in sorted(claim.diagnosis_codes):
        if (short := icd10cm_compact(code)) is not None:
            shown.setdefault(short, code.strip().upper())
    excludes = pack.coding.diagnosis_linkage.z47_2_excludes
    conflicting = sorted(
        code for short, code in shown.items() if has_icd10cm_prefix(short, excludes)
    )
    if Z47_2 not in shown or not conflicting:
        return []
    variables = pack.template_variables() | {
        "conflicting": capped_list(conflicting),
        "conflicting_all": ", ".join(conflicting),
    }
    return [Finding("diagnosis-conflict", variables)]


def diagnosis_unsupported(
    facts: ClinicalFacts, pack: RulePack, raised: dict[str, Finding]
) -> list[Finding]:
    """A 20703 line pointing to no diagnosis that supports the removal."""
    claim = facts.claim
    if claim is None:
        return []
    linkage = pack.coding.diagnosis_linkage
    supporting = sorted(
        seq for seq, code in claim.diagnoses.items() if links_diagnosis(code, linkage)
    )
    unsupported = [
        line
        for line in claim.lines_with(pack.coding.add_on.code)
        if not set(line.diagnosis_sequence) & set(supporting)
    ]
    if not unsupported:
        return []
    updated = None
    if supporting:
        pointers = {"diagnosisSequence": supporting[:4]}
        updated = _edit_each(
            claim.source.raw,
            unsupported,
            lambda raw, line: claim_edit.update_line(raw, line, pointers),
        )
    variables = dict(pack.template_variables())
    note = "fixable" if supporting else "missing"
    variables["note"] = _note(pack, "diagnosis-unsupported", note, variables)
    return [Finding("diagnosis-unsupported", variables, updated_claim=updated, note=note)]


def provider_mismatch(
    facts: ClinicalFacts, pack: RulePack, raised: dict[str, Finding]
) -> list[Finding]:
    """20703 and its primary under different rendering providers, or on different claims.

    How serious that is depends on the payer's checked policy (``add_on_billing`` in
    payers.yaml): the note, and with it the card's indicator, says what applies.
    """
    claim = facts.claim
    if claim is None:
        return []
    add_on_lines = claim.lines_with(pack.coding.add_on.code)
    if not add_on_lines:
        return []
    primary = _primary_line(claim, pack)
    profile = pack.payers.profile(facts.payer)
    billing = profile.add_on_billing
    variables = pack.template_variables() | {"payer_label": profile.label}
    if primary is not None:
        mismatched = [
            line
            for line in add_on_lines
            if primary.care_team_sequence and line.care_team_sequence != primary.care_team_sequence
        ]
        if not mismatched:
            return []
        care_team = {"careTeamSequence": list(primary.care_team_sequence)}
        updated = _edit_each(
            claim.source.raw,
            mismatched,
            lambda raw, line: claim_edit.update_line(raw, line, care_team),
        )
        variables["primary_code"] = primary.code or ""
        group = billing is not None and billing.rendering_provider == "same-provider-or-group-tin"
        note = "care-team-group-tin" if group else "care-team"
        variables["note"] = _note(pack, "provider-mismatch", note, variables)
        return [Finding("provider-mismatch", variables, updated_claim=updated, note=note)]
    dates = {line.serviced_date for line in add_on_lines}
    for other in facts.other_claims:
        elsewhere = _primary_line(other, pack)
        if elsewhere is not None and elsewhere.serviced_date in dates:
            variables["primary_code"] = elsewhere.code or ""
            required = billing is not None and billing.same_claim == "required"
            note = "other-claim-required" if required else "other-claim"
            variables["note"] = _note(pack, "provider-mismatch", note, variables)
            return [Finding("provider-mismatch", variables, note=note)]
    return []


Rule = Callable[[ClinicalFacts, RulePack, dict[str, Finding]], list[Finding]]
# Order matters: documentation_missing reads what the two claim rules raised.
RULES: tuple[Rule, ...] = (
    orphan_add_on,
    add_on_suggested,
    documentation_missing,
    planned_removal_reminder,
    units_exceed_mue,
    modifier_51_on_add_on,
    invalid_modifier,
    assistant_documentation,
    wrong_tier,
    insertion_instead_of_removal,
    insertion_with_removal,
    duplicate_hardware_removal,
    primary_not_listed,
    prefabricated_device,
    diagnosis_conflict,
    diagnosis_unsupported,
    provider_mismatch,
)
