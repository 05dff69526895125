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
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.coverage import Coverage
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.procedure import Procedure
from fhir.resources.R4B.reference import Reference
from fhir.resources.R4B.servicerequest import ServiceRequest

from cds_service.fhir.resources import ClaimInput, ResourceSet
from cds_service.rulepack.pack import ICD10CM_CODE, CompiledPatterns, DiagnosisLinkage, RulePack

PERFORMED_STATUSES = frozenset({"completed", "in-progress"})
ORDER_STATUSES = frozenset({"draft", "active", "on-hold", "completed"})
DRAFT_ORDER_STATUSES = frozenset({"draft", "active"})


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


def derive_facts(
    resources: ResourceSet,
    pack: RulePack,
    hook: str,
    encounter_id: str | None,
    patient_id: str | None = None,
    public_base_url: str = "http://127.0.0.1:8080",
) -> ClinicalFacts:
    """Build the facts of one hook call from its resources."""
    questionnaire_url = public_base_url.rstrip("/") + QUESTIONNAIRE_PATH
    reader = FactReader(resources, pack, encounter_id, questionnaire_url)
    return replace(reader.facts(hook), patient_id=patient_id, questionnaire_url=questionnaire_url)


QUESTIONNAIRE_PATH = "/questionnaires/cpt20703-removal-documentation"
DEFAULT_QUESTIONNAIRE_URL = "http://127.0.0.1:8080" + QUESTIONNAIRE_PATH


def canonical_url(canonical: str) -> str:
    """A canonical reference without its ``|version`` suffix."""
    return canonical.split("|", 1)[0]


def icd10cm_compact(code: str) -> str | None:
    """An ICD-10-CM code without its dot, upper case; None when it is not in ICD-10-CM format.

    Claims carry codes with the dot (T84.622A) or without it (T84622A); both compare equal here.
    """
    normalized = code.strip().upper()
    if not ICD10CM_CODE.fullmatch(normalized):
        return None
    return normalized.replace(".", "")


def _has_value(answer: Any) -> bool:
    """An answer that says something (an empty string or false documents nothing, nor does an
    answer carrying only extensions, such as a data-absent-reason). fhir.resources' model_dump
    ignores ``exclude``, so the keys are dropped here."""
    values = answer.model_dump(exclude_none=True)
    return any(
        value not in ("", False)
        for key, value in values.items()
        if key not in ("id", "extension", "modifierExtension", "item")
    )


def reference_id(reference: Reference | None, resource_type: str) -> str | None:
    """The id in a ``Type/id`` (or absolute ``.../Type/id``) reference of the given type."""
    if reference is None or not reference.reference:
        return None
    parts = reference.reference.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == resource_type:
        return parts[-1]
    return None


def _day(value: Any) -> str | None:
    """The calendar day of a FHIR date/dateTime, or None when it is missing or partial."""
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str) and len(value) >= 10:
        return value[:10]
    return None


def _numbers(values: Sequence[Any] | None) -> tuple[int, ...]:
    """The numbers of a list of FHIR positiveInts, without its nulls."""
    return tuple(int(value) for value in values or [] if value is not None)


def _codes(concept: CodeableConcept | None, system: str) -> list[str]:
    if concept is None or not concept.coding:
        return []
    return [coding.code for coding in concept.coding if coding.system == system and coding.code]


def _concept_text(concepts: Iterable[CodeableConcept | None]) -> str:
    parts: list[str] = []
    for concept in concepts:
        if concept is None:
            continue
        if concept.text:
            parts.append(concept.text)
        parts.extend(coding.display for coding in concept.coding or [] if coding.display)
    return " ".join(parts)


class FactReader:
    """Derives facts; holds the per-call indexes so each is built once."""

    def __init__(
        self,
        resources: ResourceSet,
        pack: RulePack,
        encounter_id: str | None,
        questionnaire_url: str = DEFAULT_QUESTIONNAIRE_URL,
    ) -> None:
        self.resources = resources
        self.pack = pack
        self.questionnaire_url = questionnaire_url
        self.coding = pack.coding
        self.patterns: CompiledPatterns = pack.patterns
        self.encounter_id = encounter_id
        self.cpt = self.coding.systems["cpt"]
        self.devices = {device.id: device for device in resources.devices if device.id}
        self.coded_intramedullary = self._devices_inserted_by(self.coding.insertion_code)

    # -- generic helpers -------------------------------------------------------------------
    def in_session(self, reference: Reference | None) -> bool:
        return self.encounter_id is not None and (
            reference_id(reference, "Encounter") == self.encounter_id
        )

    def procedure_codes(self, procedure: Procedure) -> list[str]:
        return _codes(procedure.code, self.cpt)

    def procedure_day(self, procedure: Procedure) -> str | None:
        if procedure.performedDateTime is not None:
            return _day(procedure.performedDateTime)
        if procedure.performedPeriod is not None:
            return _day(procedure.performedPeriod.start)
        return None

    def request_day(self, request: ServiceRequest) -> str | None:
        """The date of service of an order: when it is to be (or was) performed."""
        if request.occurrenceDateTime is not None:
            return _day(request.occurrenceDateTime)
        if request.occurrencePeriod is not None:
            return _day(request.occurrencePeriod.start)
        return None

    def removal_action(self, action: CodeableConcept | None) -> bool:
        snomed = self.coding.systems["snomed"]
        return self.coding.device_actions.removal in _codes(action, snomed)

    def is_insertion(self, procedure: Procedure) -> bool:
        """A Procedure coded 20702, or one with a focalDevice implantation."""
        snomed = self.coding.systems["snomed"]
        implantation = self.coding.device_actions.implantation
        return self.coding.insertion_code in self.procedure_codes(procedure) or any(
            implantation in _codes(focal.action, snomed) for focal in procedure.focalDevice or []
        )

    def describes_intramedullary_drug_device(self, text: str) -> bool:
        patterns = self.patterns
        return bool(
            patterns.drug_carrier.search(text)
            and patterns.device_form.search(text)
            and patterns.intramedullary_site.search(text)
        )

    def device_text(self, device: Device) -> str:
        parts = [_concept_text([device.type])]
        parts.extend(name.name for name in device.deviceName or [] if name.name)
        parts.extend(note.text for note in device.note or [] if note.text)
        return " ".join(parts)

    def procedure_text(self, procedure: Procedure) -> str:
        parts = [_concept_text([procedure.code, *(procedure.bodySite or [])])]
        parts.extend(note.text for note in procedure.note or [] if note.text)
        return " ".join(parts)

    def is_intramedullary_drug_device(self, device: Device) -> bool:
        return device.id in self.coded_intramedullary or (
            self.describes_intramedullary_drug_device(self.device_text(device))
        )

    def _devices_inserted_by(self, code: str) -> frozenset[str]:
        """Devices placed by a completed Procedure coded ``code`` (e.g. 20702)."""
        inserted: set[str] = set()
        for procedure in self.resources.procedures:
            if procedure.status in PERFORMED_STATUSES and code in self.procedure_codes(procedure):
                for focal in procedure.focalDevice or []:
                    device_id = reference_id(focal.manipulated, "Device")
                    if device_id:
                        inserted.add(device_id)
        return frozenset(inserted)

    # -- the facts -------------------------------------------------------------------------
    def facts(self, hook: str) -> ClinicalFacts:
        draft_primaries, in_place = self.order_facts()
        if self.encounter_id is None:
            return ClinicalFacts(
                hook=hook,
                encounter_id=None,
                draft_order_primaries=draft_primaries,
                device_in_place=in_place,
                payer=self.payer(None),
            )
        session = [
            procedure
            for procedure in self.resources.procedures
            if procedure.status in PERFORMED_STATUSES and self.in_session(procedure.encounter)
        ]
        evidence, removal_procedures, removed_devices = self.removal(session)
        claims = self.draft_claims(session)
        claim = claims[0] if claims else None
        days = self.session_days(session, claim)
        same_day = self.same_day_procedures(days)
        primaries = self.session_primaries([*session, *same_day], claim, days)
        primary_codes = self.coding.primary_codes
        removal_ids = {id(procedure) for procedure in removal_procedures}
        others = sum(
            1
            for procedure in session
            if id(procedure) not in removal_ids
            and not set(self.procedure_codes(procedure)) & set(primary_codes)
        )
        texts = self.narrative(session, removed_devices)
        return ClinicalFacts(
            hook=hook,
            encounter_id=self.encounter_id,
            removal_evidence=evidence,
            session_primaries=primaries,
            other_session_procedures=others,
            claim=claim,
            evidence=self.structured_evidence(
                session, removal_procedures, removed_devices, claim, primaries, same_day
            ),
            texts=texts,
            draft_order_primaries=draft_primaries,
            device_in_place=in_place,
            session_date=self.session_date(session, claim),
            other_claims=tuple(claims[1:]),
            other_tiers=self.other_tiers(session),
            insertion_evidence=self.insertion(session),
            prefabricated=self.prefabricated(session, removed_devices, texts),
            other_surgery=self.other_surgery(session, claim),
            payer=self.payer(claim),
            answered=self.answered(),
            removal_procedure=removal_procedures[0].id if removal_procedures else None,
            surgeon=self.surgeon(removal_procedures),
        )

    def removal(
        self, session: Sequence[Procedure]
    ) -> tuple[tuple[str, ...], list[Procedure], list[Device]]:
        """Evidence that an intramedullary drug-delivery device was removed in the session."""
        kinds: list[str] = []
        procedures: list[Procedure] = []
        devices: list[Device] = []
        for procedure in session:
            found, removed = self.removal_evidence(procedure)
            devices.extend(removed)
            if found:
                procedures.append(procedure)
                kinds.extend(kind for kind in found if kind not in kinds)
        return tuple(kinds), procedures, devices

    def removal_evidence(self, procedure: Procedure) -> tuple[list[str], list[Device]]:
        """What shows that this Procedure removed an intramedullary drug-delivery device.

        (a) its CPT code is 20703; (b) a focalDevice removal whose Device, or the Procedure's own
        text, identifies such a device; (c) its text states such a removal. Also the removed
        Devices of (b) that could be read.
        """
        found: list[str] = []
        devices: list[Device] = []
        if self.coding.add_on.code in self.procedure_codes(procedure):
            found.append("procedure-coded-20703")
        text = self.procedure_text(procedure)
        procedure_says_device = self.describes_intramedullary_drug_device(text)
        for focal in procedure.focalDevice or []:
            if not self.removal_action(focal.action):
                continue
            device = self.devices.get(reference_id(focal.manipulated, "Device") or "")
            device_qualifies = device is not None and self.is_intramedullary_drug_device(device)
            if device_qualifies or procedure_says_device:
                found.append("focal-device-removal")
                if device is not None:
                    devices.append(device)
        if procedure_says_device and self.patterns.removal_verb.search(text):
            found.append("procedure-text-removal")
        return found, devices

    def hardware_removal_of_drug_device(self, procedure: Procedure) -> bool:
        """A 20680 (removal of implant, deep) whose text, or the Device it names, identifies an
        intramedullary drug-delivery device (a Device counts when a 20702 placed it)."""
        if self.coding.hardware_removal_code not in self.procedure_codes(procedure):
            return False
        if self.describes_intramedullary_drug_device(self.procedure_text(procedure)):
            return True
        for focal in procedure.focalDevice or []:
            device_id = reference_id(focal.manipulated, "Device") or ""
            device = self.devices.get(device_id)
            if device_id in self.coded_intramedullary or (
                device is not None and self.is_intramedullary_drug_device(device)
            ):
                return True
        return False

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
                and (codes := _codes(diagnosis.diagnosisCodeableConcept, icd))
            }
            draft = DraftClaim(claim_input, lines, frozenset(by_sequence.values()), by_sequence)
            found.append((matching, draft))
        found.sort(key=lambda pair: -pair[0])
        return [draft for _, draft in found]

    def claim_line(self, index: int, item: Any) -> ClaimLine:
        codes = _codes(item.productOrService, self.cpt)
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
        serviced = _day(item.servicedDate)
        if serviced is None and item.servicedPeriod is not None:
            serviced = _day(item.servicedPeriod.start)
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
            diagnosis_sequence=_numbers(item.diagnosisSequence),
            care_team_sequence=_numbers(item.careTeamSequence),
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
                found.extend(code for code in _codes(request.code, self.cpt) if code in listed)
        return tuple(dict.fromkeys(found))

    def structured_evidence(
        self,
        session: Sequence[Procedure],
        removal_procedures: Sequence[Procedure],
        removed_devices: Sequence[Device],
        claim: DraftClaim | None,
        primaries: Sequence[str],
        same_day: Sequence[Procedure] = (),
    ) -> frozenset[str]:
        """Names of the structured documentation evidence that holds (see coding.yaml).

        A listed primary documented by a Procedure dated on a session day without an encounter
        (``same_day``) counts as documented, like one of the session.
        """
        holds: set[str] = set()
        if any(device.type is not None for device in removed_devices):
            holds.add("removed-device-typed")
        site_text = _concept_text(
            site for procedure in removal_procedures for site in procedure.bodySite or []
        )
        if self.patterns.bone.search(site_text):
            holds.add("removal-site-bone")
        if self.patterns.laterality.search(site_text):
            holds.add("removal-site-laterality")
        if claim is not None:
            relevant = {self.coding.add_on.code, *primaries}
            laterality = set(self.coding.laterality_modifiers)
            if any(line.code in relevant and line.modifiers & laterality for line in claim.lines):
                holds.add("claim-laterality-modifier")
        listed = self.coding.primary_codes
        if any(
            set(self.procedure_codes(procedure)) & set(listed)
            for procedure in [*session, *same_day]
        ):
            holds.add("primary-procedure-documented")
        if any(p.reasonCode or p.reasonReference for p in removal_procedures):
            holds.add("removal-reason-coded")
        if any(
            self.removal_action(focal.action)
            for procedure in session
            for focal in procedure.focalDevice or []
        ):
            holds.add("focal-device-removal")
        linkage = self.coding.diagnosis_linkage
        if any(links_diagnosis(code, linkage) for code in self.diagnosis_codes(session, claim)):
            holds.add("diagnosis-linkage-code")
        if any(p.complication or p.complicationDetail for p in session):
            holds.add("procedure-complication")
        return frozenset(holds)

    def diagnosis_codes(self, session: Sequence[Procedure], claim: DraftClaim | None) -> set[str]:
        icd = self.coding.systems["icd10cm"]
        codes: set[str] = set(claim.diagnosis_codes) if claim is not None else set()
        for procedure in session:
            for reason in procedure.reasonCode or []:
                codes.update(_codes(reason, icd))
        for condition in self.resources.conditions:
            status = condition.verificationStatus
            if status is not None and "entered-in-error" in _codes(
                status, "http://terminology.hl7.org/CodeSystem/condition-ver-status"
            ):
                continue
            codes.update(_codes(condition.code, icd))
        return codes

    def narrative(self, session: Sequence[Procedure], removed: Sequence[Device]) -> tuple[str, ...]:
        """Procedure notes, notes on removed devices, and the session's operative notes."""
        texts = [note.text for procedure in session for note in procedure.note or [] if note.text]
        texts.extend(note.text for device in removed for note in device.note or [] if note.text)
        reported = {
            document_id
            for procedure in session
            for reference in procedure.report or []
            if (document_id := reference_id(reference, "DocumentReference"))
        }
        for document in self.resources.documents:
            if self.is_operative_note(document, reported):
                texts.extend(_attachment_texts(document))
        return tuple(texts)

    def is_operative_note(self, document: DocumentReference, reported: set[str]) -> bool:
        if document.status not in (None, "current"):
            return False
        if document.id in reported:
            return True
        wanted = {(item.system, item.code) for item in self.coding.operative_note_types}
        typed = document.type is not None and any(
            (coding.system, coding.code) in wanted for coding in document.type.coding or []
        )
        context = document.context
        encounters = context.encounter if context is not None else None
        return typed and any(self.in_session(reference) for reference in encounters or [])

    def answered(self) -> frozenset[str]:
        """Documentation keys answered in a QuestionnaireResponse to our Questionnaire.

        The response must answer this server's Questionnaire (its canonical, any ``|version``),
        be completed or amended, and belong to the session's encounter when it names one.
        """
        keys: set[str] = set()
        for response in self.resources.questionnaire_responses:
            questionnaire = canonical_url(response.questionnaire or "")
            if questionnaire != self.questionnaire_url or response.status not in (
                "completed",
                "amended",
            ):
                continue
            if response.encounter is not None and not self.in_session(response.encounter):
                continue
            for item in response.item or []:
                if item.linkId and any(_has_value(answer) for answer in item.answer or []):
                    keys.add(item.linkId)
        return frozenset(keys)

    def surgeon(self, removal_procedures: Sequence[Procedure]) -> str | None:
        """The performer of the removal, as a reference (the Task owner)."""
        for procedure in removal_procedures:
            for performer in procedure.performer or []:
                if performer.actor is not None and performer.actor.reference:
                    return str(performer.actor.reference)
        return None

    def session_date(self, session: Sequence[Procedure], claim: DraftClaim | None) -> str | None:
        """The date of service: the earliest session procedure, else the earliest claim line."""
        days = sorted(day for day in map(self.procedure_day, session) if day)
        if not days and claim is not None:
            days = sorted(line.serviced_date for line in claim.lines if line.serviced_date)
        return days[0] if days else None

    def tier_of(self, text: str) -> str | None:
        """The anatomic tier a drug-device text names: intramedullary first, then the others."""
        patterns = self.patterns
        if not (patterns.drug_carrier.search(text) and patterns.device_form.search(text)):
            return None
        if patterns.intramedullary_site.search(text):
            return "intramedullary"
        if patterns.intra_articular_site.search(text):
            return "intra-articular"
        if patterns.soft_tissue_site.search(text):
            return "soft-tissue"
        return None

    def other_tiers(self, session: Sequence[Procedure]) -> frozenset[str]:
        """Tiers of removed drug devices that are not intramedullary (20701/20705 territory)."""
        tiers: set[str] = set()
        for procedure in session:
            text = self.procedure_text(procedure)
            removals = [f for f in procedure.focalDevice or [] if self.removal_action(f.action)]
            texts = [
                f"{text} {self.device_text(device)}"
                for focal in removals
                if (device := self.devices.get(reference_id(focal.manipulated, "Device") or ""))
            ]
            if removals or self.patterns.removal_verb.search(text):
                texts.append(text)
            found = {tier for candidate in texts if (tier := self.tier_of(candidate))}
            if "intramedullary" not in found:
                tiers |= found
        return frozenset(tiers)

    def insertion(self, session: Sequence[Procedure]) -> bool:
        """Evidence that an intramedullary drug device was placed in the session."""
        implantation = self.coding.device_actions.implantation
        snomed = self.coding.systems["snomed"]
        for procedure in session:
            if self.coding.insertion_code in self.procedure_codes(procedure):
                return True
            if any(implantation in _codes(f.action, snomed) for f in procedure.focalDevice or []):
                return True
            text = self.procedure_text(procedure)
            if self.patterns.insertion_verb.search(text) and self.tier_of(text) == "intramedullary":
                return True
        return False

    def prefabricated(
        self, session: Sequence[Procedure], removed: Sequence[Device], narrative: Sequence[str]
    ) -> bool:
        """The device is described as prefabricated or commercially made."""
        texts = [self.device_text(device) for device in removed]
        texts += [self.procedure_text(procedure) for procedure in session]
        return any(self.patterns.prefabricated.search(text) for text in [*texts, *narrative])

    def other_surgery(self, session: Sequence[Procedure], claim: DraftClaim | None) -> bool:
        """A surgical CPT code in the session that is neither a listed primary nor this family."""
        low, high = self.coding.surgical_code_range
        excluded = set(self.coding.primary_codes) | {
            self.coding.hardware_removal_code,
            self.coding.add_on.code,
            self.coding.insertion_code,
            *(sibling.code for sibling in self.coding.siblings.values()),
            "20700",
            "20704",
        }
        codes = [code for procedure in session for code in self.procedure_codes(procedure)]
        if claim is not None:
            codes += [line.code for line in claim.lines if line.code]
        return any(
            code.isdigit() and low <= code <= high and code not in excluded for code in codes
        )

    def coverage(self, claim: DraftClaim | None) -> Coverage | None:
        """The Coverage of the claim's insurance, or else the first active Coverage."""
        coverages = {coverage.id: coverage for coverage in self.resources.coverages}
        if claim is not None:
            for insurance in claim.source.model.insurance or []:
                chosen = coverages.get(reference_id(insurance.coverage, "Coverage") or "")
                if chosen is not None:
                    return chosen
        active = [c for c in self.resources.coverages if c.status in (None, "active")]
        return active[0] if active else None

    def payer(self, claim: DraftClaim | None) -> str:
        """The payer profile key of the claim's Coverage (see cards/payers.yaml).

        The payer organization decides first (payor display and identifier, the Organization's
        name, aliases and identifiers); the plan's type and class text only when no organization
        matched, so "Medicare Advantage" in a plan type does not hide the plan's payer.
        """
        coverage = self.coverage(claim)
        if coverage is None:
            return "general"
        organizations = {org.id: org for org in self.resources.organizations}
        names: list[str] = []
        identifiers: list[Identifier] = []
        for payor in coverage.payor or []:
            names.append(payor.display or "")
            if payor.identifier is not None:
                identifiers.append(payor.identifier)
            organization = organizations.get(reference_id(payor, "Organization") or "")
            if organization is not None:
                names.append(organization.name or "")
                names.extend(alias for alias in organization.alias or [] if alias)
                identifiers.extend(organization.identifier or [])
        organization_text = " ".join(name for name in names if name)
        ids = [(i.system or "", i.value or "") for i in identifiers if i.value]
        for matcher in self.patterns.payers:
            if matcher.matches_name(organization_text) or any(
                matcher.matches_identifier(system, value) for system, value in ids
            ):
                return matcher.key
        plan = [_concept_text([coverage.type])]
        for item in coverage.class_fhir or []:
            plan.extend([item.value or "", item.name or ""])
        plan_text = " ".join(text for text in plan if text)
        for matcher in self.patterns.payers:
            if matcher.matches_name(plan_text):
                return matcher.key
        return "general"

    def order_facts(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Listed primaries among the draft orders, and evidence of a device in place."""
        listed = self.coding.primary_codes
        primaries = tuple(
            dict.fromkeys(
                code
                for order in self.resources.draft_orders
                if order.status in DRAFT_ORDER_STATUSES
                for code in _codes(order.code, self.cpt)
                if code in listed
            )
        )
        if not primaries:
            return primaries, ()
        removed_devices, removal_days = self.removals_on_record()
        in_place: list[str] = []
        for device in self.resources.devices:
            if (
                device.status == "active"
                and device.id not in removed_devices
                and self.is_intramedullary_drug_device(device)
            ):
                in_place.append("active-device")
                break
        if self.insertion_without_later_removal(removed_devices, removal_days):
            in_place.append("prior-insertion")
        return primaries, tuple(in_place)

    def removals_on_record(self) -> tuple[set[str], list[str | None]]:
        """Devices removed by any procedure, and the days of recorded drug-device removals.

        A removal of an intramedullary drug-delivery device is on record when a Procedure shows it
        as the removal evidence (a)-(c) does (coded 20703, a focalDevice removal of such a device,
        or a text stating one), or when a 20680 identifies such a device by its text or Device. The
        text of an insertion (20702, or a focalDevice implantation) does not count: "placed after
        removal of the infected nail" speaks of the device before it.
        """
        removed: set[str] = set()
        days: list[str | None] = []
        hardware = self.coding.hardware_removal_code
        for procedure in self.resources.procedures:
            if procedure.status not in PERFORMED_STATUSES:
                continue
            is_hardware_removal = hardware in self.procedure_codes(procedure)
            for focal in procedure.focalDevice or []:
                device_id = reference_id(focal.manipulated, "Device")
                if device_id and (is_hardware_removal or self.removal_action(focal.action)):
                    removed.add(device_id)
            found, _ = self.removal_evidence(procedure)
            if self.is_insertion(procedure):
                found = [kind for kind in found if kind != "procedure-text-removal"]
            if found or self.hardware_removal_of_drug_device(procedure):
                days.append(self.procedure_day(procedure))
        return removed, days

    def insertion_without_later_removal(
        self, removed_devices: set[str], removal_days: list[str | None]
    ) -> bool:
        for procedure in self.resources.procedures:
            if procedure.status not in PERFORMED_STATUSES:
                continue
            if self.coding.insertion_code not in self.procedure_codes(procedure):
                continue
            inserted_day = self.procedure_day(procedure)
            devices = {
                device_id
                for focal in procedure.focalDevice or []
                if (device_id := reference_id(focal.manipulated, "Device"))
            }
            if devices & removed_devices:
                continue
            # Strictly later: a removal on the insertion's own day is the device it replaced.
            later = any(
                day is None or inserted_day is None or day > inserted_day for day in removal_days
            )
            if not later:
                return True
        return False


def _attachment_texts(document: DocumentReference) -> list[str]:
    """Plain-text attachments (the R4B model has already base64-decoded ``data`` to bytes)."""
    texts: list[str] = []
    for content in document.content or []:
        attachment = content.attachment
        if attachment is None or not attachment.data:
            continue
        if not (attachment.contentType or "").startswith("text/plain"):
            continue
        data = attachment.data
        texts.append(data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data)
    return texts


def has_icd10cm_prefix(compact: str, prefixes: Iterable[str]) -> bool:
    """``compact`` (a dot-less code) falls under one of ``prefixes`` (dotted or not)."""
    return any(compact.startswith(prefix.replace(".", "")) for prefix in prefixes)


def links_diagnosis(code: str, linkage: DiagnosisLinkage) -> bool:
    """True for device infection, osteomyelitis or nonunion codes (7th character K/M/N).

    Codes compare without their dot: T84622A is T84.622A.
    """
    compact = icd10cm_compact(code)
    if compact is None:
        return False
    if has_icd10cm_prefix(compact, linkage.icd10cm_prefixes):
        return True
    return (
        compact.startswith(linkage.fracture_prefix)
        and len(compact) == 7
        and compact[-1] in linkage.nonunion_seventh_characters
    )
