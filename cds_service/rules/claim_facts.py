"""The draft Claim and the session: the claim of this encounter (and the others), its lines, the
session's days, the listed primaries done in it, its date, surgeon and other surgery; which
Procedures are the session's, with or without an encounter; and what a Procedure's bodySite
documents (side and bone).

Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from fhir.resources.R4B.procedure import Procedure

from cds_service.fhir.resources import ClaimInput
from cds_service.rules.record import (
    ORDER_STATUSES,
    PERFORMED_STATUSES,
    RecordReader,
    codes_in,
    concept_text,
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
    rendering: str | None = None  # the line's rendering provider (its first care team member)


@dataclass(frozen=True)
class DraftClaim:
    """The draft Claim of the session."""

    source: ClaimInput
    lines: tuple[ClaimLine, ...]
    diagnosis_codes: frozenset[str]
    diagnoses: dict[int, str] = field(default_factory=dict)  # diagnosis sequence -> ICD code
    own: bool = False  # sent in context.draftOrders: the session's own claim

    def lines_with(self, code: str) -> list[ClaimLine]:
        """Lines that report ``code``."""
        return [line for line in self.lines if line.code == code]


class ClaimReader(RecordReader):
    """The session and its draft claims."""

    def draft_claims(self, session: Sequence[Procedure], days: set[str]) -> list[DraftClaim]:
        """The session's draft Claims: those sent in draftOrders first, then the one that reports
        20703, then the one with most items in the session.

        A prefetched Claim is the session's when one of its items names the encounter (or, when
        no item names an encounter, or the call has no encounter, is dated on a session day).
        """
        session_days = days | {day for day in map(self.procedure_day, session) if day}
        own_claims = [id(claim.model) for claim in self.resources.own_claims]
        found: list[tuple[tuple[bool, bool, int], DraftClaim]] = []
        for claim_input in self.resources.claims:
            claim = claim_input.model
            if claim.status != "draft" or claim.use not in (None, "claim"):
                continue
            lines = self.claim_lines(claim)
            own = id(claim) in own_claims
            if self.encounter_id is not None and any(line.encounter_ids for line in lines):
                matching = sum(1 for line in lines if self.encounter_id in line.encounter_ids)
            else:
                matching = sum(1 for line in lines if line.serviced_date in session_days)
            if matching == 0 and not own:
                continue
            icd = self.coding.systems["icd10cm"]
            by_sequence = {
                int(diagnosis.sequence): codes[0]
                for diagnosis in claim.diagnosis or []
                if diagnosis.sequence is not None
                and (codes := codes_in(diagnosis.diagnosisCodeableConcept, icd))
            }
            draft = DraftClaim(
                claim_input, lines, frozenset(by_sequence.values()), by_sequence, own=own
            )
            billed = bool(draft.lines_with(self.coding.add_on.code))
            found.append(((not own, not billed, -matching), draft))
        found.sort(key=lambda pair: pair[0])
        return [draft for _, draft in found]

    def claim_lines(self, claim: Any) -> tuple[ClaimLine, ...]:
        """The Claim's items, each with the provider of its first care team member."""
        team = {
            int(member.sequence): str(member.provider.reference)
            for member in claim.careTeam or []
            if member.sequence is not None and member.provider and member.provider.reference
        }
        billing = claim.provider.reference if claim.provider is not None else None
        lines = []
        for index, item in enumerate(claim.item or []):
            line = self.claim_line(index, item)
            first = line.care_team_sequence[0] if line.care_team_sequence else None
            rendering = team.get(first) if first is not None else None
            lines.append(replace(line, rendering=rendering or billing))
        return tuple(lines)

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
        serviced = item_day(item)
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

    def session_days(
        self, session: Sequence[Procedure], claim: DraftClaim | None, days: Iterable[str] = ()
    ) -> set[str]:
        """The dates of service of the session: ``days`` (those that define a session without an
        encounter), its procedures' and its claim items' days (every item of a claim sent in
        draftOrders, the items that name the encounter of another)."""
        found = set(days) | {day for day in map(self.procedure_day, session) if day}
        if claim is not None:
            found |= {
                line.serviced_date
                for line in claim.lines
                if line.serviced_date and (claim.own or self.encounter_id in line.encounter_ids)
            }
        return found

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
        self,
        procedures: Sequence[Procedure],
        claims: Sequence[DraftClaim],
        days: set[str],
    ) -> tuple[str, ...]:
        """Listed primaries of the session: claim lines first (the session's claim, then its
        other draft claims), then procedures, then orders.

        ``procedures`` are the session's and those without an encounter on a session day; an
        order counts when it names the encounter, or names none and is dated on a session day.
        """
        listed = self.coding.primary_codes
        found: list[str] = []
        for claim in claims:
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


@dataclass(frozen=True)
class HardwareRemoval:
    """A session Procedure coded 20670 or 20680: whether it removed the drug device itself, and
    the site its bodySite documents."""

    code: str
    same_device: bool
    sides: frozenset[str]
    bones: frozenset[str]


class SessionReader(RecordReader):
    """Which Procedures are the session's, and what a bodySite documents."""

    def is_own(self, procedure: Procedure) -> bool:
        """Sent in context.draftOrders: the session's own Procedure."""
        return any(procedure is own for own in self.resources.own_procedures)

    def dateless_days(self, today: str | None) -> set[str]:
        """Without an encounter, the session's days: the dates of service of the draft Claims
        sent in draftOrders, else the day the hook fires (none when that is not known)."""
        days = {
            day
            for claim_input in self.resources.own_claims
            for item in claim_input.model.item or []
            if (day := item_day(item)) is not None
        }
        return days or ({today} if today else set())

    def session_procedures(self, days: set[str]) -> list[Procedure]:
        """Performed Procedures of the session: those sent in draftOrders, those that name the
        encounter, and, without an encounter, those dated on one of ``days``."""
        return [
            procedure
            for procedure in self.resources.procedures
            if procedure.status in PERFORMED_STATUSES
            and (
                self.is_own(procedure)
                or self.in_session(procedure.encounter)
                or (self.encounter_id is None and self.procedure_day(procedure) in days)
            )
        ]

    def site(
        self, procedures: Iterable[Procedure], stated: Iterable[str] = ()
    ) -> tuple[frozenset[str], frozenset[str]]:
        """The sides (RT/LT) and bones the procedures' bodySite text and displays name, and the
        ``stated`` sides and bones (of the sentences that state the removal)."""
        text = concept_text(site for procedure in procedures for site in procedure.bodySite or [])
        text = " ".join([text, *stated])
        documented = self.coding.documented_site
        sides = frozenset(side for side, words in documented.sides.items() if _any(words, text))
        bones = frozenset(bone for bone, words in documented.bones.items() if _any(words, text))
        return sides, bones

    def hardware_removals(
        self, session: Sequence[Procedure], removed: Iterable[str]
    ) -> tuple[HardwareRemoval, ...]:
        """The session's 20670/20680 Procedures. One removed the drug device itself when its
        focalDevice is a Device the removal evidence names (or a 20702 placed), or when its text
        identifies an intramedullary drug-delivery device."""
        drug_devices = set(removed) | self.coded_intramedullary
        found = []
        for procedure in session:
            codes = set(self.procedure_codes(procedure)) & set(
                self.coding.hardware_removal_codes.codes
            )
            for code in sorted(codes):
                same = any(s.qualifies for s in self.procedure_statements(procedure)) or any(
                    reference_id(focal.manipulated, "Device") in drug_devices
                    for focal in procedure.focalDevice or []
                )
                sides, bones = self.site([procedure])
                found.append(HardwareRemoval(code, same, sides, bones))
        return tuple(found)


def item_day(item: Any) -> str | None:
    """The date of service of a Claim item (its servicedDate, or its servicedPeriod's start)."""
    serviced = day_of(item.servicedDate)
    if serviced is None and item.servicedPeriod is not None:
        serviced = day_of(item.servicedPeriod.start)
    return serviced


def _any(patterns: Sequence[str], text: str) -> bool:
    return any(_compiled(pattern).search(text) for pattern in patterns)


_PATTERNS: dict[str, re.Pattern[str]] = {}


def _compiled(pattern: str) -> re.Pattern[str]:
    if pattern not in _PATTERNS:
        _PATTERNS[pattern] = re.compile(pattern, re.IGNORECASE)
    return _PATTERNS[pattern]
