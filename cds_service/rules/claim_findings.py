"""The rules about the rest of the claim around 20703: a primary not on the payer's list, a
manufactured (prefabricated) device, diagnoses that conflict with or do not support the removal,
and the add-on and its primary under different providers or claims.

Pure functions from :class:`ClinicalFacts` to findings; each is declared right after it.
"""

from __future__ import annotations

from cds_service.rulepack.models import RulePack
from cds_service.rulepack.templates import capped_list
from cds_service.rules import claim_edit
from cds_service.rules.claim_facts import ClaimLine
from cds_service.rules.contract import Finding, declare
from cds_service.rules.facts import ClinicalFacts
from cds_service.rules.finding_values import (
    dated_primaries,
    edit_each,
    note_text,
)
from cds_service.rules.record import has_icd10cm_prefix, icd10cm_compact, links_diagnosis


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
    variables["note"] = note_text(pack, "primary-not-listed", note, variables)
    return [Finding("primary-not-listed", variables, note=note)]


PRIMARY_NOT_LISTED = declare(
    primary_not_listed,
    "primary-not-listed",
    variables={"note", "payer_label"},
    notes={"commercial", "medicare"},
)


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
    variables["note"] = note_text(pack, "prefabricated-device", note, variables)
    return [Finding("prefabricated-device", variables, updated_claim=updated, note=note)]


PREFABRICATED_DEVICE = declare(
    prefabricated_device,
    "prefabricated-device",
    variables={"note"},
    notes={"billed", "not-billed"},
    suggestion=True,
)


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
    linkage = pack.coding.diagnosis_linkage
    conflicting = sorted(
        code for short, code in shown.items() if has_icd10cm_prefix(short, linkage.z47_2_excludes)
    )
    if icd10cm_compact(linkage.z47_2_code) not in shown or not conflicting:
        return []
    variables = pack.template_variables() | {
        "conflicting": capped_list(conflicting),
        "conflicting_all": ", ".join(conflicting),
    }
    return [Finding("diagnosis-conflict", variables)]


DIAGNOSIS_CONFLICT = declare(
    diagnosis_conflict,
    "diagnosis-conflict",
    variables={"conflicting", "conflicting_all"},
)


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
        updated = edit_each(
            claim.source.raw,
            unsupported,
            lambda raw, line: claim_edit.update_line(raw, line, pointers),
        )
    variables = dict(pack.template_variables())
    note = "fixable" if supporting else "missing"
    variables["note"] = note_text(pack, "diagnosis-unsupported", note, variables)
    return [Finding("diagnosis-unsupported", variables, updated_claim=updated, note=note)]


DIAGNOSIS_UNSUPPORTED = declare(
    diagnosis_unsupported,
    "diagnosis-unsupported",
    variables={"note"},
    notes={"fixable", "missing"},
    suggestion=True,
)


def provider_mismatch(
    facts: ClinicalFacts, pack: RulePack, raised: dict[str, Finding]
) -> list[Finding]:
    """20703 and its primary (a listed primary on its date of service) under different
    rendering providers, or on different claims.

    How serious that is depends on the payer's checked policy (``add_on_billing`` in
    payers.yaml): the note, and with it the card's indicator, says what applies.
    """
    claim = facts.claim
    if claim is None:
        return []
    add_on_lines = claim.lines_with(pack.coding.add_on.code)
    profile = pack.payers.profile(facts.payer)
    billing = profile.add_on_billing
    group = billing is not None and billing.rendering_provider == "same-provider-or-group-tin"
    variables = pack.template_variables() | {"payer_label": profile.label}
    mismatched: list[tuple[ClaimLine, ClaimLine]] = []
    for line in add_on_lines:
        primaries = dated_primaries(claim, line, pack)
        if primaries and not any(_same_team(line, primary) for primary in primaries):
            mismatched.append((line, primaries[0]))
    if mismatched:
        primary = mismatched[0][1]
        updated = edit_each(
            claim.source.raw,
            [line for line, _ in mismatched],
            lambda raw, line: claim_edit.update_line(
                raw, line, {"careTeamSequence": list(primary.care_team_sequence)}
            ),
        )
        variables["primary_code"] = primary.code or ""
        note = "care-team-group-tin" if group else "care-team"
        variables["note"] = note_text(pack, "provider-mismatch", note, variables)
        return [Finding("provider-mismatch", variables, updated_claim=updated, note=note)]
    for line in add_on_lines:
        if dated_primaries(claim, line, pack):
            continue
        for other in facts.other_claims:
            elsewhere = dated_primaries(other, line, pack)
            if not elsewhere:
                continue
            variables["primary_code"] = elsewhere[0].code or ""
            if (
                line.rendering
                and elsewhere[0].rendering
                and line.rendering != elsewhere[0].rendering
            ):
                note = "other-provider-group-tin" if group else "other-provider"
            elif billing is not None and billing.same_claim == "required":
                note = "other-claim-required"
            else:
                note = "other-claim"
            variables["note"] = note_text(pack, "provider-mismatch", note, variables)
            return [Finding("provider-mismatch", variables, note=note)]
    return []


PROVIDER_MISMATCH = declare(
    provider_mismatch,
    "provider-mismatch",
    variables={"note", "payer_label", "primary_code"},
    notes={
        "care-team",
        "care-team-group-tin",
        "other-claim",
        "other-claim-required",
        "other-provider",
        "other-provider-group-tin",
    },
    suggestion=True,
)


def _same_team(line: ClaimLine, primary: ClaimLine) -> bool:
    """The add-on line names the primary line's care team (or the primary names none)."""
    return not primary.care_team_sequence or line.care_team_sequence == primary.care_team_sequence
