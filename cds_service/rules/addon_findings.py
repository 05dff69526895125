"""The rules about +20703 itself: suggest it where removal evidence meets a listed primary, flag it
when no primary is billed, list the documentation that supports it, and remind at order-sign when
a device in place is due to come out.

Pure functions from :class:`ClinicalFacts` to findings; each is declared (its contract) right
after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cds_service.rulepack.models import DocumentationElement, RulePack
from cds_service.rules import claim_edit
from cds_service.rules.contract import Finding, declare
from cds_service.rules.facts import DEVICE_IN_PLACE_KINDS, REMOVAL_EVIDENCE_KINDS, ClinicalFacts
from cds_service.rules.finding_values import (
    cpt_coding,
    dated_primaries,
    evidence_list,
    note_text,
    primary_line,
    primary_variables,
)


def orphan_add_on(
    facts: ClinicalFacts, pack: RulePack, raised: dict[str, Finding]
) -> list[Finding]:
    """20703 on the draft claim with no line for a listed primary on its date of service."""
    claim = facts.claim
    if claim is None:
        return []
    unmatched = [
        line
        for line in claim.lines_with(pack.coding.add_on.code)
        if not dated_primaries(claim, line, pack)
    ]
    if not unmatched:
        return []
    variables = dict(pack.template_variables())
    add_on_line = unmatched[0]
    other_lines = [line for line in claim.lines if line.code and line is not add_on_line]
    other_date = primary_line(claim, pack)
    updated: dict[str, Any] | None = None
    if other_date is not None:
        variables |= primary_variables(pack, other_date.code or "") | {
            "primary_date": other_date.serviced_date or "",
            "add_on_date": add_on_line.serviced_date or "",
        }
        note = "primary-other-date"
    elif facts.session_primaries:
        variables |= primary_variables(pack, facts.session_primaries[0])
        note = "primary-not-on-claim"
    elif not other_lines and facts.other_session_procedures == 0:
        note = "removal-only"
        standalone = pack.coding.standalone_removal_code
        updated = claim_edit.replace_line_code(
            claim.source.raw, add_on_line, cpt_coding(pack, standalone.code, standalone.display)
        )
    else:
        profile = pack.payers.profile(facts.payer)
        variables["payer_label"] = profile.label
        note = "other-procedures-commercial" if profile.commercial else "other-procedures-medicare"
    variables["note"] = note_text(pack, "orphan-add-on", note, variables)
    return [Finding("orphan-add-on", variables, updated_claim=updated, note=note)]


ORPHAN_ADD_ON = declare(
    orphan_add_on,
    "orphan-add-on",
    variables={
        "add_on_date",
        "note",
        "payer_label",
        "primary_code",
        "primary_date",
        "primary_descriptor",
    },
    notes={
        "other-procedures-commercial",
        "other-procedures-medicare",
        "primary-not-on-claim",
        "primary-other-date",
        "removal-only",
    },
    suggestion=True,
)


def add_on_suggested(
    facts: ClinicalFacts, pack: RulePack, raised: dict[str, Finding]
) -> list[Finding]:
    """Removal evidence and a listed primary, and the draft claim does not report 20703 yet."""
    if not facts.removal_evidence or not facts.session_primaries or facts.prefabricated:
        return []
    claim = facts.claim
    add_on = pack.coding.add_on
    claims = [claim, *facts.other_claims] if claim is not None else []
    if any(draft.lines_with(add_on.code) for draft in claims):
        return []  # the removal is already billed: never a second 20703
    primary = facts.session_primaries[0]
    variables = pack.template_variables() | primary_variables(pack, primary)
    variables["evidence"] = evidence_list(pack, facts.removal_evidence, facts.quotes)
    side = next(iter(facts.documented_sides)) if len(facts.documented_sides) == 1 else None
    variables["laterality"] = (
        f"modifier {side}, the side of the removal's documented site"
        if side
        else "no RT/LT modifier until the operative note states the side"
    )
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
            cpt_coding(pack, add_on.code, add_on.display),
            frozenset(),  # the side comes from the documented site, not the primary line
        )
        note = "no-claim" if result is None else "claim-updated"
        if result is not None:
            updated, sequence = result
            updated = _with_side(updated, side, pack.coding.systems["hcpcs"])
            variables["line_sequence"] = str(sequence)
    variables["note"] = note_text(pack, "add-on-suggested", note, variables)
    return [Finding("add-on-suggested", variables, updated_claim=updated, note=note)]


ADD_ON_SUGGESTED = declare(
    add_on_suggested,
    "add-on-suggested",
    variables={
        "evidence",
        "laterality",
        "line_sequence",
        "note",
        "primary_code",
        "primary_descriptor",
    },
    notes={"claim-updated", "no-claim", "primary-not-on-claim"},
    suggestion=True,
    evidence_kinds=REMOVAL_EVIDENCE_KINDS,
)


def _with_side(claim: dict[str, Any], side: str | None, system: str) -> dict[str, Any]:
    """The claim with its last (new) line carrying the documented side, when there is one."""
    if side is None:
        return claim
    items = list(claim["item"])
    items[-1] = items[-1] | {"modifier": [{"coding": [{"system": system, "code": side}]}]}
    return claim | {"item": items}


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


DOCUMENTATION_MISSING = declare(
    documentation_missing,
    "documentation-missing",
    variables={"missing_checklist", "missing_count"},
    suggestion=True,
    after=("orphan-add-on", "add-on-suggested"),
)


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
        "code": {"coding": [pack.coding.documentation_task.code.model_dump(exclude_none=True)]},
        "description": pack.coding.documentation_task.description_prefix
        + "; ".join(labels[key] for key in missing),
        "for": {"reference": f"Patient/{facts.patient_id}"},
        "input": [
            {
                "type": {
                    "coding": [
                        pack.coding.documentation_task.input_type.model_dump(exclude_none=True)
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
    variables = pack.template_variables() | primary_variables(pack, facts.draft_order_primaries[0])
    variables["evidence"] = evidence_list(pack, facts.device_in_place)
    always = [element for element in pack.coding.documentation if element.applies_when == "always"]
    variables["documentation_count"] = str(len(always))  # the elements are on the Why page
    return [Finding("planned-removal-reminder", variables)]


PLANNED_REMOVAL_REMINDER = declare(
    planned_removal_reminder,
    "planned-removal-reminder",
    variables={"documentation_count", "evidence", "primary_code", "primary_descriptor"},
    evidence_kinds=DEVICE_IN_PLACE_KINDS,
)
