"""The record of one hook call as the fact readers see it: small FHIR value helpers (days,
codes, references, ICD-10-CM forms) and :class:`RecordReader`, the base every fact reader shares
(the session, procedure codes and days, and what a device or procedure text describes).

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any

from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.procedure import Procedure
from fhir.resources.R4B.reference import Reference
from fhir.resources.R4B.servicerequest import ServiceRequest

from cds_service.fhir.resources import ResourceSet
from cds_service.rulepack.models import ICD10CM_CODE, DiagnosisLinkage, RulePack
from cds_service.rulepack.patterns import CompiledPatterns
from cds_service.rules.device_profile import DeviceProfile
from cds_service.rules.statements import DeviceStatement, TextReading, read_text

PERFORMED_STATUSES = frozenset({"completed", "in-progress"})
ORDER_STATUSES = frozenset({"draft", "active", "on-hold", "completed"})
DRAFT_ORDER_STATUSES = frozenset({"draft", "active"})
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


def has_value(answer: Any) -> bool:
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


def day_of(value: Any) -> str | None:
    """The calendar day of a FHIR date/dateTime, or None when it is missing or partial."""
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str) and len(value) >= 10:
        return value[:10]
    return None


def positive_ints(values: Sequence[Any] | None) -> tuple[int, ...]:
    """The numbers of a list of FHIR positiveInts, without its nulls."""
    return tuple(int(value) for value in values or [] if value is not None)


def codes_in(concept: CodeableConcept | None, system: str) -> list[str]:
    if concept is None or not concept.coding:
        return []
    return [coding.code for coding in concept.coding if coding.system == system and coding.code]


def concept_text(concepts: Iterable[CodeableConcept | None]) -> str:
    parts: list[str] = []
    for concept in concepts:
        if concept is None:
            continue
        if concept.text:
            parts.append(concept.text)
        parts.extend(coding.display for coding in concept.coding or [] if coding.display)
    return " ".join(parts)


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


class RecordReader:
    """The resources of one call with the pack's codes and patterns; holds the per-call indexes so
    each is built once."""

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
        return codes_in(procedure.code, self.cpt)

    def procedure_day(self, procedure: Procedure) -> str | None:
        if procedure.performedDateTime is not None:
            return day_of(procedure.performedDateTime)
        if procedure.performedPeriod is not None:
            return day_of(procedure.performedPeriod.start)
        return None

    def request_day(self, request: ServiceRequest) -> str | None:
        """The date of service of an order: when it is to be (or was) performed."""
        if request.occurrenceDateTime is not None:
            return day_of(request.occurrenceDateTime)
        if request.occurrencePeriod is not None:
            return day_of(request.occurrencePeriod.start)
        return None

    def removal_action(self, action: CodeableConcept | None) -> bool:
        snomed = self.coding.systems["snomed"]
        return self.coding.device_actions.removal in codes_in(action, snomed)

    def is_insertion(self, procedure: Procedure) -> bool:
        """A Procedure coded 20702, or one with a focalDevice implantation."""
        snomed = self.coding.systems["snomed"]
        implantation = self.coding.device_actions.implantation
        return self.coding.insertion_code in self.procedure_codes(procedure) or any(
            implantation in codes_in(focal.action, snomed) for focal in procedure.focalDevice or []
        )

    def read(self, text: str, source: str) -> TextReading:
        """``text`` read into device statements, once per worker while it stays in the pack's
        reading cache (a reading depends only on the pack, the text and its source)."""
        key = (hashlib.blake2b(text.encode()).digest(), source)
        reading = self.pack.readings.get(key)
        if not isinstance(reading, TextReading):
            reading = read_text(self.pack.nlp, self.pack.clinical_text, text, source)
            self.pack.readings.put(key, reading)
        return reading

    def device_text(self, device: Device) -> str:
        parts = [concept_text([device.type])]
        parts.extend(name.name for name in device.deviceName or [] if name.name)
        parts.extend(note.text for note in device.note or [] if note.text)
        if device.manufacturer:
            parts.append(f"Manufacturer: {device.manufacturer}.")
        return ". ".join(part for part in parts if part)

    def procedure_text(self, procedure: Procedure) -> str:
        parts = [concept_text([procedure.code, *(procedure.bodySite or [])])]
        parts.extend(note.text for note in procedure.note or [] if note.text)
        return ". ".join(part for part in parts if part)

    def procedure_statements(self, procedure: Procedure) -> tuple[DeviceStatement, ...]:
        return self.read(self.procedure_text(procedure), f"Procedure/{procedure.id}").statements

    def session_readings(
        self, session: Sequence[Procedure], devices: Sequence[Device]
    ) -> list[TextReading]:
        """The session's Procedure texts and the removed Devices' texts, read."""
        readings = [self.read(self.procedure_text(p), f"Procedure/{p.id}") for p in session]
        # A Device documents through its notes; its type, names and maker fields qualify it.
        notes = [(d, ". ".join(n.text for n in d.note or [] if n.text)) for d in devices]
        readings += [self.read(text, f"Device/{d.id}") for d, text in notes if text]
        return readings

    def device_profile(self, device: Device) -> DeviceProfile:
        """What the Device resource says the device is."""
        reading = self.read(self.device_text(device), f"Device/{device.id}")
        return DeviceProfile.of(
            reading,
            fields_say_manufactured=bool(
                device.manufacturer
                or device.modelNumber
                or device.lotNumber
                or device.udiCarrier
                or device.serialNumber
            ),
            inserted_by_code=device.id in self.coded_intramedullary,
        )

    def is_intramedullary_drug_device(self, device: Device) -> bool:
        """A Device that 20703 covers: intramedullary, a drug device, not manufactured."""
        if device.status == "entered-in-error":
            return False
        return self.device_profile(device).qualifies

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
