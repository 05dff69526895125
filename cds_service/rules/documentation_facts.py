"""Documentation: the structured checks that hold for the session (coded device, site, reason,
diagnosis linkage), its diagnoses, the operative-note narrative, and the Questionnaire answers.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from fhir.resources.R4B.device import Device
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.procedure import Procedure

from cds_service.rules.claim_facts import DraftClaim
from cds_service.rules.record import (
    RecordReader,
    canonical_url,
    codes_in,
    concept_text,
    has_value,
    links_diagnosis,
    reference_id,
)
from cds_service.rules.statements import DeviceStatement, TextReading

# Operative-note sections (cards/clinical-text.yaml categories) that document an element.
SECTION_CHECKS = {
    "removal-reason": "removal-reason-stated",
    "implants-removed": "implants-listed",
    "blood-loss": "blood-loss-stated",
    "complications": "complications-stated",
}


class DocumentationReader(RecordReader):
    """What the record documents about the removal."""

    def structured_evidence(
        self,
        session: Sequence[Procedure],
        removal_procedures: Sequence[Procedure],
        removed_devices: Sequence[Device],
        claim: DraftClaim | None,
        primaries: Sequence[str],
        same_day: Sequence[Procedure] = (),
        readings: Sequence[TextReading] = (),
        removals: Sequence[DeviceStatement] = (),
    ) -> frozenset[str]:
        """Names of the structured documentation evidence that holds (see coding.yaml).

        A listed primary documented by a Procedure dated on a session day without an encounter
        (``same_day``) counts as documented, like one of the session. ``readings`` are the
        session's texts read into statements (operative notes, its Procedures, the removed
        Devices) and ``removals`` the statements of the removal.
        """
        holds = set(self.text_evidence(readings, removals))
        if any(device.type is not None for device in removed_devices):
            holds.add("removed-device-typed")
        site_text = concept_text(
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

    def text_evidence(
        self, readings: Sequence[TextReading], removals: Sequence[DeviceStatement]
    ) -> set[str]:
        """Documentation the session's texts state, read through the statement model."""
        holds: set[str] = set()
        if removals:
            holds.add("removed-device-described")
        if any(statement.bone for statement in removals):
            holds.add("removal-site-bone")
        if any(statement.side for statement in removals):
            holds.add("removal-site-laterality")
        sections = {section for reading in readings for section in reading.sections}
        for section, check in SECTION_CHECKS.items():
            if section in sections:
                holds.add(check)
        for label, check in (
            ("MANUAL", "manual-preparation-stated"),
            ("CONFIRMED", "removal-confirmed"),
        ):
            if any(reading.says(label) for reading in readings):
                holds.add(check)
        if any(
            reading.says_together("INSTRUMENT", "ACTION")
            or reading.says_together("INSTRUMENT", "DEVICE")
            for reading in readings
        ):
            holds.add("extraction-method-stated")
        return holds

    def diagnosis_codes(self, session: Sequence[Procedure], claim: DraftClaim | None) -> set[str]:
        icd = self.coding.systems["icd10cm"]
        codes: set[str] = set(claim.diagnosis_codes) if claim is not None else set()
        for procedure in session:
            for reason in procedure.reasonCode or []:
                codes.update(codes_in(reason, icd))
        for condition in self.resources.conditions:
            status = condition.verificationStatus
            if status is not None and "entered-in-error" in codes_in(
                status, "http://terminology.hl7.org/CodeSystem/condition-ver-status"
            ):
                continue
            codes.update(codes_in(condition.code, icd))
        return codes

    def narrative(
        self,
        session: Sequence[Procedure],
        removed: Sequence[Device],
        note_texts: Sequence[tuple[str, str]],
    ) -> tuple[str, ...]:
        """Procedure notes, notes on removed devices, and the session's operative notes
        (``note_texts``, from :meth:`operative_note_texts`)."""
        texts = [note.text for procedure in session for note in procedure.note or [] if note.text]
        texts.extend(note.text for device in removed for note in device.note or [] if note.text)
        texts.extend(text for _, text in note_texts)
        return tuple(texts)

    def session_documents(self, session: Sequence[Procedure]) -> list[DocumentReference]:
        """The session's operative notes: reported by its Procedures, or typed as operative notes
        and naming its encounter."""
        reported = {
            document_id
            for procedure in session
            for reference in procedure.report or []
            if (document_id := reference_id(reference, "DocumentReference"))
        }
        return [
            document
            for document in self.resources.documents
            if self.is_operative_note(document, reported)
        ]

    def operative_note_texts(self, session: Sequence[Procedure]) -> list[tuple[str, str]]:
        """The session's operative notes' texts, each with the DocumentReference it is from
        (attachments decoded once per call)."""
        return [
            (f"DocumentReference/{document.id}", text)
            for document in self.session_documents(session)
            for text in _attachment_texts(document)
        ]

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
                if item.linkId and any(has_value(answer) for answer in item.answer or []):
                    keys.add(item.linkId)
        return frozenset(keys)


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
