"""The draft Claim and the session: the claim of this encounter (and the others), its lines, the
session's days, the listed primaries done in it, its date, surgeon and other surgery.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from fhir.resources.R4B.procedure import Procedure

from cds_service.fhir.resources import ClaimInput
from cds_service.rules.record import (
    ORDER_STATUSES,
    PERFORMED_STATUSES,
    RecordReader,
    codes_in,
    day_of,
    positive_ints,
    reference_id,
)


@dataclass(frozen=True)
class ClaimLine:
    """One item of a draft Claim, reduced to what the rules check."""

    index: int  # position in Claim.item
    sequence: int
    code: str | None  # CPT code, when the item carries one
    modifiers: frozenset[str]
    quantity: Decimal | None
    serviced_date: str | None
    encounter_ids: frozenset[str]
    diagnosis_sequence: tuple[int, ...] = ()
    care_team_sequence: tuple[int, ...] = ()


@dataclass(frozen=True)
class DraftClaim:
    """The draft Claim of the session."""

    source: ClaimInput
    lines: tuple[ClaimLine, ...]
    diagnosis_codes: frozenset[str]
    diagnoses: dict[int, str] = field(default_factory=dict)  # diagnosis sequence -> ICD code

    def lines_with(self, code: str) -> list[ClaimLine]:
        """Lines that report ``code``."""
        return [line for line in self.lines if line.code == code]


class ClaimReader(RecordReader):
    """The session and its draft claims."""

    def draft_claims(self, session: Sequence[Procedure]) -> list[DraftClaim]:
        """The session's draft Claims, the one with most items in the session first."""
        session_days = {day for day in map(self.procedure_day, session) if day}
        found: list[tuple[int, DraftClaim]] = []
        for claim_input in self.resources.claims:
            claim = claim_input.model
            if claim.status != "draft" or claim.use not in (None, "claim"):
                continue
            lines = tuple(
                self.claim_line(index, item) for index, item in enumerate(claim.item or [])
            )
            if any(line.encounter_ids for line in lines):
                matching = sum(1 for line in lines if self.encounter_id in line.encounter_ids)
            else:
                matching = sum(1 for line in lines if line.serviced_date in session_days)
            if matching == 0:
                continue
            icd = self.coding.systems["icd10cm"]
            by_sequence = {
                int(diagnosis.sequence): codes[0]
                for diagnosis in claim.diagnosis or []
                if diagnosis.sequence is not None
                and (codes := codes_in(diagnosis.diagnosisCodeableConcept, icd))
            }
            draft = DraftClaim(claim_input, lines, frozenset(by_sequence.values()), by_sequence)
            found.append((matching, draft))
        found.sort(key=lambda pair: -pair[0])
        return [draft for _, draft in found]

    def claim_line(self, index: int, item: Any) -> ClaimLine:
        codes = codes_in(item.productOrService, self.cpt)
        modifiers = frozenset(
            coding.code
            for modifier in item.modifier or []
            for coding in modifier.coding or []
            if coding.code
        )
        encounters = frozenset(
            encounter_id
            for reference in item.encounter or []
            if (encounter_id := reference_id(reference, "Encounter"))
        )
        serviced = day_of(item.servicedDate)
        if serviced is None and item.servicedPeriod is not None:
            serviced = day_of(item.servicedPeriod.start)
        quantity = item.quantity.value if item.quantity is not None else None
        return ClaimLine(
            index=index,
            sequence=int(item.sequence),
            code=codes[0] if codes else None,
            modifiers=modifiers,
            quantity=quantity,
            serviced_date=serviced,
            encounter_ids=encounters,
            # FHIR lists of primitives may hold null (an element with only an extension)
            diagnosis_sequence=positive_ints(item.diagnosisSequence),
            care_team_sequence=positive_ints(item.careTeamSequence),
        )

    def session_days(self, session: Sequence[Procedure], claim: DraftClaim | None) -> set[str]:
        """The dates of service of the session: its procedures' and its claim items' days."""
        days = {day for day in map(self.procedure_day, session) if day}
        if claim is not None:
            days |= {
                line.serviced_date
                for line in claim.lines
                if line.serviced_date and self.encounter_id in line.encounter_ids
            }
        return days

    def same_day_procedures(self, days: set[str]) -> list[Procedure]:
        """Performed Procedures that name no encounter, dated on a day of the session."""
        return [
            procedure
            for procedure in self.resources.procedures
            if procedure.status in PERFORMED_STATUSES
            and procedure.encounter is None
            and self.procedure_day(procedure) in days
        ]

    def session_primaries(
        self, procedures: Sequence[Procedure], claim: DraftClaim | None, days: set[str]
    ) -> tuple[str, ...]:
        """Listed primaries of the session: claim lines first, then procedures, then orders.

        ``procedures`` are the session's and those without an encounter on a session day; an
        order counts when it names the encounter, or names none and is dated on a session day.
        """
        listed = self.coding.primary_codes
        found: list[str] = []
        if claim is not None:
            found.extend(line.code for line in claim.lines if line.code in listed)
        for procedure in procedures:
            found.extend(code for code in self.procedure_codes(procedure) if code in listed)
        for request in self.resources.service_requests:
            if request.status not in ORDER_STATUSES:
                continue
            same_day = request.encounter is None and self.request_day(request) in days
            if self.in_session(request.encounter) or same_day:
                found.extend(code for code in codes_in(request.code, self.cpt) if code in listed)
        return tuple(dict.fromkeys(found))

    def session_date(self, session: Sequence[Procedure], claim: DraftClaim | None) -> str | None:
        """The date of service: the earliest session procedure, else the earliest claim line."""
        days = sorted(day for day in map(self.procedure_day, session) if day)
        if not days and claim is not None:
            days = sorted(line.serviced_date for line in claim.lines if line.serviced_date)
        return days[0] if days else None

    def surgeon(self, removal_procedures: Sequence[Procedure]) -> str | None:
        """The performer of the removal, as a reference (the Task owner)."""
        for procedure in removal_procedures:
            for performer in procedure.performer or []:
                if performer.actor is not None and performer.actor.reference:
                    return str(performer.actor.reference)
        return None

    def other_surgery(self, session: Sequence[Procedure], claim: DraftClaim | None) -> bool:
        """A surgical CPT code in the session that is neither a listed primary nor this family."""
        low, high = self.coding.surgical_code_range
        excluded = set(self.coding.primary_codes) | {
            self.coding.hardware_removal_code,
            self.coding.add_on.code,
            self.coding.insertion_code,
            *(sibling.code for sibling in self.coding.siblings.values()),
            *self.coding.sibling_insertion_codes,
        }
        codes = [code for procedure in session for code in self.procedure_codes(procedure)]
        if claim is not None:
            codes += [line.code for line in claim.lines if line.code]
        return any(
            code.isdigit() and low <= code <= high and code not in excluded for code in codes
        )
