"""Clinical and claim facts derived from the resources of one hook call (pure: no I/O).

The rules never look at FHIR directly: they read :class:`ClinicalFacts`, which this module builds
from a :class:`~cds_service.fhir.resources.ResourceSet` and the rule pack's codes and text patterns.

Session: the claim findings concern one operative session, the context's encounter. A Procedure,
ServiceRequest, Condition or operative note belongs to it when its encounter reference names
``Encounter/<encounterId>``; a draft Claim when one of its items does (or, when no item names an
encounter, when an item's date of service is a date of the session's procedures). The session's
days are the dates of its procedures and of the claim items that name the encounter. An eligible
primary may also be a Procedure or ServiceRequest that names no encounter at all, when its date of
service is one of those days (the issue's "same encounter or date of service"); one that names
another encounter belongs to that other session.

Procedures and draft Claims sent in ``context.draftOrders`` (order-sign) are the session's own,
whatever encounter they name. Without an ``encounterId`` the session is the dates of service of
the draft Claims sent in draftOrders or, when none was sent, the day the hook fires (``today``,
passed in by the engine: the rules read no clock): the performed Procedures dated on those days,
and the draft Claims with an item on them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from cds_service.fhir.resources import ResourceSet
from cds_service.rulepack.models import RulePack
from cds_service.rules.claim_facts import ClaimReader, DraftClaim, HardwareRemoval, SessionReader
from cds_service.rules.documentation_facts import DocumentationReader
from cds_service.rules.history_facts import DeviceHistoryReader
from cds_service.rules.payer_facts import PayerReader
from cds_service.rules.record import (
    QUESTIONNAIRE_PATH,
)

# Kinds of removal evidence (ClinicalFacts.removal_evidence) and of a device still in place
# (planned removal); each needs a label in findings.yaml.
REMOVAL_EVIDENCE_KINDS = frozenset(
    {
        "procedure-coded-20703",
        "focal-device-removal",
        "procedure-text-removal",
        "operative-note-removal",
    }
)
DEVICE_IN_PLACE_KINDS = frozenset({"active-device", "prior-insertion"})
# Structured documentation checks this reader computes; coding.yaml's documentation elements
# may name only these.
STRUCTURED_CHECKS = (
    "removed-device-typed",
    "removal-site-bone",
    "removal-site-laterality",
    "claim-laterality-modifier",
    "primary-procedure-documented",
    "removal-reason-coded",
    "focal-device-removal",
    "diagnosis-linkage-code",
    "procedure-complication",
    # Read from the session's texts with the statement model (rules/statements.py).
    "removed-device-described",
    "manual-preparation-stated",
    "removal-reason-stated",
    "extraction-method-stated",
    "removal-confirmed",
    "implants-listed",
    "blood-loss-stated",
    "complications-stated",
)


@dataclass(frozen=True)
class ClinicalFacts:
    """Everything the rules need to know about one hook call."""

    hook: str
    encounter_id: str | None
    removal_evidence: tuple[str, ...] = ()
    session_primaries: tuple[str, ...] = ()  # listed primaries of the session, claim lines first
    other_session_procedures: int = 0  # session procedures that are neither removal nor primary
    claim: DraftClaim | None = None
    evidence: frozenset[str] = frozenset()  # structured documentation evidence that holds
    texts: tuple[str, ...] = ()  # narrative searched for documentation evidence
    draft_order_primaries: tuple[str, ...] = ()
    device_in_place: tuple[str, ...] = ()
    session_date: str | None = None
    other_claims: tuple[DraftClaim, ...] = ()  # further draft claims of the session
    other_tiers: frozenset[str] = frozenset()  # non-intramedullary drug devices removed
    insertion_evidence: bool = False
    prefabricated: bool = False
    other_surgery: bool = False  # a surgical procedure that is not a listed primary
    payer: str = "general"
    answered: frozenset[str] = frozenset()  # documentation keys answered in the Questionnaire
    removal_procedure: str | None = None  # id of the removal Procedure (Task focus)
    surgeon: str | None = None  # reference to its performer (Task owner)
    patient_id: str | None = None
    questionnaire_url: str | None = None  # canonical of the documentation Questionnaire
    quotes: tuple[tuple[str, str], ...] = ()  # (resource, phrase) stating the removal
    sections: frozenset[str] = frozenset()  # operative-note sections present (their categories)
    documented_sides: frozenset[str] = frozenset()  # RT/LT the removal's bodySite names
    documented_bones: frozenset[str] = frozenset()  # bones the removal's bodySite names
    hardware_removals: tuple[HardwareRemoval, ...] = ()  # the session's 20670/20680 Procedures


def derive_facts(
    resources: ResourceSet,
    pack: RulePack,
    hook: str,
    encounter_id: str | None,
    patient_id: str | None = None,
    public_base_url: str = "http://127.0.0.1:8080",
    today: str | None = None,
) -> ClinicalFacts:
    """Build the facts of one hook call from its resources (``today``: the day it fires)."""
    questionnaire_url = public_base_url.rstrip("/") + QUESTIONNAIRE_PATH
    reader = FactReader(resources, pack, encounter_id, questionnaire_url)
    facts = reader.facts(hook, today)
    return replace(facts, patient_id=patient_id, questionnaire_url=questionnaire_url)


class FactReader(DeviceHistoryReader, ClaimReader, SessionReader, DocumentationReader, PayerReader):
    """Derives the facts of one call, reading each concern with its reader."""

    # -- the facts -------------------------------------------------------------------------
    def facts(self, hook: str, today: str | None = None) -> ClinicalFacts:
        draft_primaries, in_place = self.order_facts()
        base_days = self.dateless_days(today) if self.encounter_id is None else set()
        if self.encounter_id is None and not base_days:
            return ClinicalFacts(
                hook=hook,
                encounter_id=None,
                draft_order_primaries=draft_primaries,
                device_in_place=in_place,
                payer=self.payer(None),
            )
        session = self.session_procedures(base_days)
        note_texts = self.operative_note_texts(session)
        notes = [self.read(text, source) for source, text in note_texts]
        removal = self.removal(session, notes)
        removal_procedures, removed_devices = removal.procedures, removal.devices
        claims = self.draft_claims(session, base_days)
        claim = claims[0] if claims else None
        days = self.session_days(session, claim, base_days)
        same_day = self.same_day_procedures(days)
        primaries = self.session_primaries([*session, *same_day], claims, days)
        sides, bones = self.site(removal_procedures)
        if not sides:  # the site names no side: the sentences stating the removal may
            stated = [f"{s.side or ''} {s.bone or ''}" for s in removal.statements]
            sides, bones = self.site(removal_procedures, stated)
        removed_ids = [device.id for device in removed_devices if device.id]
        primary_codes = self.coding.primary_codes
        removal_ids = {id(procedure) for procedure in removal_procedures}
        others = sum(
            1
            for procedure in session
            if id(procedure) not in removal_ids
            and not set(self.procedure_codes(procedure)) & set(primary_codes)
        )
        texts = self.narrative(session, removed_devices, note_texts)
        return ClinicalFacts(
            hook=hook,
            encounter_id=self.encounter_id,
            removal_evidence=removal.kinds,
            session_primaries=primaries,
            other_session_procedures=others,
            claim=claim,
            evidence=self.structured_evidence(
                session,
                removal_procedures,
                removed_devices,
                claim,
                primaries,
                same_day,
                readings=[*notes, *self.session_readings(session, removed_devices)],
                removals=removal.statements,
            ),
            texts=texts,
            draft_order_primaries=draft_primaries,
            device_in_place=in_place,
            session_date=self.session_date(session, claim),
            other_claims=tuple(claims[1:]),
            other_tiers=self.other_tiers(session, notes),
            insertion_evidence=self.insertion(session, notes),
            prefabricated=self.prefabricated(session, removed_devices, notes),
            other_surgery=self.other_surgery(session, claim),
            payer=self.payer(claim),
            answered=self.answered(),
            removal_procedure=removal_procedures[0].id if removal_procedures else None,
            surgeon=self.surgeon(removal_procedures),
            quotes=tuple(dict.fromkeys((s.source, s.quote) for s in removal.statements)),
            sections=frozenset(c for note in notes for c in note.sections),
            documented_sides=sides,
            documented_bones=bones,
            hardware_removals=self.hardware_removals(session, removed_ids),
        )
