"""The rules about how the 20703 line is written: units against the MUE, modifiers (51, invalid
ones, assistant-at-surgery), the wrong sibling code for the tier, insertion billed for a removal,
and hardware removal billed for the same device.

Pure functions from :class:`ClinicalFacts` to findings; each is declared right after it.
"""

from __future__ import annotations

from typing import Any

from cds_service.rulepack.models import TIER_LABELS, CodedConcept, RulePack
from cds_service.rules import claim_edit
from cds_service.rules.claim_facts import ClaimLine, HardwareRemoval
from cds_service.rules.contract import Finding, declare
from cds_service.rules.facts import ClinicalFacts
from cds_service.rules.finding_values import (
    cpt_coding,
    edit_each,
    lines_by_date,
    note_text,
    primary_line,
)


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
        for group in lines_by_date(claim.lines_with(pack.coding.add_on.code)).values()
        if len(group) > 1 or any((line.quantity or 0) > mue.units for line in group)
    ]
    if not offending:
        return []
    updated = edit_each(
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


UNITS_EXCEED_MUE = declare(
    units_exceed_mue,
    "units-exceed-mue",
    variables={"mue_file", "mue_mai", "mue_units"},
    suggestion=True,
)


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
    updated = edit_each(
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


MODIFIER_51_ON_ADD_ON = declare(
    modifier_51_on_add_on,
    "modifier-51-on-add-on",
    variables={"modifiers"},
    suggestion=True,
)


def invalid_modifier(
    facts: ClinicalFacts, pack: RulePack, raised: dict[str, Finding]
) -> list[Finding]:
    """Co-surgeon, team, PC/TC or bilateral modifiers on the add-on line."""
    forbidden = frozenset(pack.coding.invalid_modifiers)
    return _modifier_finding("invalid-modifier", facts, pack, forbidden)


INVALID_MODIFIER = declare(
    invalid_modifier,
    "invalid-modifier",
    variables={"modifiers"},
    suggestion=True,
)


def assistant_documentation(
    facts: ClinicalFacts, pack: RulePack, raised: dict[str, Finding]
) -> list[Finding]:
    """An assistant modifier on 20703 or its primary (assistant indicator 0)."""
    claim = facts.claim
    if claim is None:
        return []
    assistant = frozenset(pack.coding.assistant_modifiers)
    lines = claim.lines_with(pack.coding.add_on.code)
    primary = primary_line(claim, pack)
    if primary is not None:
        lines.append(primary)
    found = sorted({modifier for line in lines for modifier in line.modifiers & assistant})
    if not found:
        return []
    role = pack.patterns.documentation.get("assistant-role", (None,))[0]
    documented = role is not None and any(role.search(text) for text in facts.texts)
    variables = pack.template_variables() | {"modifiers": ", ".join(found)}
    note = "role-documented" if documented else "role-missing"
    variables["note"] = note_text(pack, "assistant-documentation", note, variables)
    return [Finding("assistant-documentation", variables, note=note)]


ASSISTANT_DOCUMENTATION = declare(
    assistant_documentation,
    "assistant-documentation",
    variables={"modifiers", "note"},
    notes={"role-documented", "role-missing"},
)


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
            facts.claim.source.raw, billed[0], cpt_coding(pack, sibling.code, sibling.display)
        )
    note = "billed" if billed else "not-billed"
    variables["note"] = note_text(pack, "wrong-tier", note, variables)
    return [Finding("wrong-tier", variables, updated_claim=updated, note=note)]


WRONG_TIER = declare(
    wrong_tier,
    "wrong-tier",
    variables={"note", "sibling_code", "sibling_display", "tier_label"},
    notes={"billed", "not-billed"},
    suggestion=True,
)


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
        right = CodedConcept(code=insertion, display=pack.coding.insertion_display)
        note = "removal-code-billed"  # suppresses documentation-missing: nothing was removed
    else:
        return []
    variables = pack.template_variables() | {
        "billed_code": line.code or "",
        "right_code": right.code,
        "action_label": action,
        "other_action": other,
    }
    variables["note"] = note_text(pack, "insertion-instead-of-removal", note, variables)
    updated = claim_edit.replace_line_code(
        claim.source.raw, line, cpt_coding(pack, right.code, right.display)
    )
    return [Finding("insertion-instead-of-removal", variables, updated_claim=updated, note=note)]


INSERTION_INSTEAD_OF_REMOVAL = declare(
    insertion_instead_of_removal,
    "insertion-instead-of-removal",
    variables={"action_label", "billed_code", "note", "other_action", "right_code"},
    notes={"insertion-code-billed", "removal-code-billed"},
    suggestion=True,
)


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


INSERTION_WITH_REMOVAL = declare(
    insertion_with_removal,
    "insertion-with-removal",
)


def duplicate_hardware_removal(
    facts: ClinicalFacts, pack: RulePack, raised: dict[str, Finding]
) -> list[Finding]:
    """20670 or 20680 on a date with 20703, for the same device.

    The record decides first: a session Procedure of that code that removed the drug device
    itself makes it a duplicate, and one whose documented site is another (another bone or
    side than the removal's) makes it other hardware. Without such a record the line is a
    duplicate unless its RT/LT and the 20703 line's name opposite sides.
    """
    claim = facts.claim
    if claim is None:
        return []
    add_on_lines = claim.lines_with(pack.coding.add_on.code)
    duplicates: list[ClaimLine] = []
    notes: list[str] = []
    for line in claim.lines:
        if line.code not in pack.coding.hardware_removal_codes.codes:
            continue
        dated = [removal for removal in add_on_lines if removal.serviced_date == line.serviced_date]
        records = [record for record in facts.hardware_removals if record.code == line.code]
        if not dated:
            continue
        if any(record.same_device for record in records):
            notes.append("same-device")
        elif (records and all(_other_site(record, facts) for record in records)) or all(
            _opposite(removal, line, pack) for removal in dated
        ):
            continue
        else:
            notes.append("same-date")
        duplicates.append(line)
    if not duplicates:
        return []
    variables = pack.template_variables() | {"hardware_code": duplicates[0].code or ""}
    note = notes[0]
    variables["note"] = note_text(pack, "duplicate-hardware-removal", note, variables)
    updated = claim_edit.without_lines(claim.source.raw, duplicates)
    return [Finding("duplicate-hardware-removal", variables, updated_claim=updated, note=note)]


DUPLICATE_HARDWARE_REMOVAL = declare(
    duplicate_hardware_removal,
    "duplicate-hardware-removal",
    variables={"hardware_code", "note"},
    notes={"same-date", "same-device"},
    suggestion=True,
)


def _opposite(first: ClaimLine, second: ClaimLine, pack: RulePack) -> bool:
    sides = frozenset(pack.coding.laterality_modifiers)
    one, other = first.modifiers & sides, second.modifiers & sides
    return bool(one) and bool(other) and not one & other


def _other_site(record: HardwareRemoval, facts: ClinicalFacts) -> bool:
    """The hardware removal's documented site is not the drug device's (another bone or side)."""
    other_bone = bool(record.bones and facts.documented_bones) and not (
        record.bones & facts.documented_bones
    )
    other_side = bool(record.sides and facts.documented_sides) and not (
        record.sides & facts.documented_sides
    )
    return other_bone or other_side


def laterality_conflict(
    facts: ClinicalFacts, pack: RulePack, raised: dict[str, Finding]
) -> list[Finding]:
    """The claim's RT/LT names another side than the removal's documented site: on a 20703 line,
    or, when +20703 is suggested, on the primary line the new line is linked to."""
    claim = facts.claim
    documented = facts.documented_sides
    if claim is None or not documented:
        return []
    sides = frozenset(pack.coding.laterality_modifiers)
    billed = claim.lines_with(pack.coding.add_on.code)
    if billed:
        lines, note = [line for line in billed if (line.modifiers & sides) - documented], "add-on"
    elif "add-on-suggested" in raised:
        code = raised["add-on-suggested"].variables["primary_code"]
        lines = [line for line in claim.lines_with(code) if (line.modifiers & sides) - documented]
        note = "primary-line"
    else:
        return []
    if not lines:
        return []
    line = lines[0]
    variables = pack.template_variables() | {
        "line_code": line.code or "",
        "claim_side": ", ".join(sorted(line.modifiers & sides)),
        "documented_side": ", ".join(sorted(documented)),
    }
    updated = None
    if note == "add-on" and len(documented) == 1:
        side = {"coding": [{"system": pack.coding.systems["hcpcs"], "code": min(documented)}]}
        updated = edit_each(
            claim.source.raw,
            lines,
            lambda raw, line: claim_edit.update_line(
                raw, line, {"modifier": [*_other_modifiers(raw, line, sides), side]}
            ),
        )
    variables["note"] = note_text(pack, "laterality-conflict", note, variables)
    return [Finding("laterality-conflict", variables, updated_claim=updated, note=note)]


LATERALITY_CONFLICT = declare(
    laterality_conflict,
    "laterality-conflict",
    variables={"claim_side", "documented_side", "line_code", "note"},
    notes={"add-on", "primary-line"},
    suggestion=True,
    after=("add-on-suggested",),
)


def _other_modifiers(
    claim: dict[str, Any], line: ClaimLine, sides: frozenset[str]
) -> list[dict[str, Any]]:
    return [
        modifier
        for modifier in claim["item"][line.index].get("modifier", [])
        if not {coding.get("code") for coding in modifier.get("coding", [])} & sides
    ]


def code_not_effective(
    facts: ClinicalFacts, pack: RulePack, raised: dict[str, Finding]
) -> list[Finding]:
    """A 20703 line dated before the 20700 family existed (CPT 2020)."""
    claim = facts.claim
    if claim is None:
        return []
    start = pack.coding.family_effective
    early = sorted(
        line.serviced_date
        for line in claim.lines_with(pack.coding.add_on.code)
        if line.serviced_date is not None and line.serviced_date < start
    )
    if not early:
        return []
    variables = pack.template_variables() | {"service_date": early[0], "family_effective": start}
    return [Finding("code-not-effective", variables)]


CODE_NOT_EFFECTIVE = declare(
    code_not_effective,
    "code-not-effective",
    variables={"family_effective", "service_date"},
)
