"""Removal evidence: which procedures removed a hand-made intramedullary drug device (and by what
evidence), whether hardware removal billed the same device, the tier of other drug devices, an
insertion in the session, a manufactured device, and at order-sign the devices still in place.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fhir.resources.R4B.device import Device
from fhir.resources.R4B.procedure import Procedure

from cds_service.rules.record import (
    RecordReader,
    codes_in,
    reference_id,
)
from cds_service.rules.statements import REMOVAL_ACTIONS, DeviceStatement, TextReading


@dataclass(frozen=True)
class Removal:
    """The session's removal of an intramedullary drug-delivery device, and how it is known."""

    kinds: tuple[str, ...] = ()
    procedures: tuple[Procedure, ...] = ()
    devices: tuple[Device, ...] = ()
    statements: tuple[DeviceStatement, ...] = ()  # the qualifying sentences, cited on the card


class RemovalEvidenceReader(RecordReader):
    """What the record says was removed, inserted or left in place."""

    def removal(self, session: Sequence[Procedure], notes: Sequence[TextReading] = ()) -> Removal:
        """Evidence that an intramedullary drug-delivery device was removed in the session: the
        session's Procedures (a)-(c) of :meth:`removal_evidence`, and (d) an operative note of
        the session stating such a removal."""
        kinds: list[str] = []
        procedures: list[Procedure] = []
        devices: list[Device] = []
        statements: list[DeviceStatement] = []
        for procedure in session:
            found, removed = self.removal_evidence(procedure)
            devices.extend(removed)
            if found:
                procedures.append(procedure)
                kinds.extend(kind for kind in found if kind not in kinds)
                statements.extend(
                    s for s in self.procedure_statements(procedure) if s.removal and s.qualifies
                )
        noted = [s for note in notes for s in note.statements if s.removal and s.qualifies]
        if noted:
            kinds.append("operative-note-removal")
            statements.extend(noted)
        return Removal(tuple(kinds), tuple(procedures), tuple(devices), tuple(statements))

    def removal_evidence(self, procedure: Procedure) -> tuple[list[str], list[Device]]:
        """What shows that this Procedure removed an intramedullary drug-delivery device.

        (a) its CPT code is 20703; (b) a focalDevice removal whose Device qualifies (what its
        own text and fields say; see :class:`DeviceProfile`), or whose Procedure text states the
        removal of a qualifying device; (c) its text states such a removal, affirmed and in this
        session. Also the removed Devices of (b).
        """
        found: list[str] = []
        devices: list[Device] = []
        if self.coding.add_on.code in self.procedure_codes(procedure):
            found.append("procedure-coded-20703")
        statements = self.procedure_statements(procedure)
        stated = any(s.removal and s.qualifies for s in statements)
        # The coded removal action needs only the device named: "Antibiotic cement rod, canal".
        named = stated or any(s.qualifies and s.action is None for s in statements)
        for focal in procedure.focalDevice or []:
            if not self.removal_action(focal.action):
                continue
            device = self.devices.get(reference_id(focal.manipulated, "Device") or "")
            if device is not None and self.is_intramedullary_drug_device(device):
                found.append("focal-device-removal")
                devices.append(device)
            elif device is None and named:
                found.append("focal-device-removal")
        if stated:
            found.append("procedure-text-removal")
        return found, devices

    def hardware_removal_of_drug_device(self, procedure: Procedure) -> bool:
        """A 20670/20680 (removal of implant) whose text, or the Device it names, identifies an
        intramedullary drug-delivery device (a Device counts when a 20702 placed it)."""
        if self.coding.hardware_removal_code not in self.procedure_codes(procedure):
            return False
        statements = self.procedure_statements(procedure)
        if any(s.qualifies and s.action in (None, *REMOVAL_ACTIONS) for s in statements):
            return True
        for focal in procedure.focalDevice or []:
            device_id = reference_id(focal.manipulated, "Device") or ""
            device = self.devices.get(device_id)
            if device_id in self.coded_intramedullary or (
                device is not None and self.is_intramedullary_drug_device(device)
            ):
                return True
        return False

    def other_tiers(
        self, session: Sequence[Procedure], notes: Sequence[TextReading] = ()
    ) -> frozenset[str]:
        """Tiers of removed drug devices that are not intramedullary (20701/20705 territory)."""
        tiers: set[str] = set()
        for procedure in session:
            statements = [s for s in self.procedure_statements(procedure) if s.removal]
            for focal in procedure.focalDevice or []:
                device = self.devices.get(reference_id(focal.manipulated, "Device") or "")
                if device is not None and self.removal_action(focal.action):
                    profile = self.device_profile(device)
                    if profile.drug and not profile.metal and profile.tier:
                        tiers.add(profile.tier)
            tiers.update(s.tier for s in statements if s.drug_device and s.tier)
        for note in notes:
            tiers.update(s.tier for s in note.statements if s.removal and s.drug_device and s.tier)
        tiers.discard("other")
        if "intramedullary" in tiers:
            return frozenset()
        return frozenset(tiers)

    def insertion(self, session: Sequence[Procedure], notes: Sequence[TextReading] = ()) -> bool:
        """Evidence that an intramedullary drug device was placed in the session."""
        implantation = self.coding.device_actions.implantation
        snomed = self.coding.systems["snomed"]
        for procedure in session:
            if self.coding.insertion_code in self.procedure_codes(procedure):
                return True
            if any(implantation in codes_in(f.action, snomed) for f in procedure.focalDevice or []):
                return True
            if any(s.insertion and s.qualifies for s in self.procedure_statements(procedure)):
                return True
        return any(s.insertion and s.qualifies for note in notes for s in note.statements)

    def prefabricated(
        self, session: Sequence[Procedure], removed: Sequence[Device], notes: Sequence[TextReading]
    ) -> bool:
        """The removed drug device is manufactured: its Device says so (text, or a maker, model,
        lot or UDI without a statement of manual preparation), or a sentence stating its removal
        in this session describes a manufactured intramedullary drug device."""
        for procedure in session:
            for focal in procedure.focalDevice or []:
                device = self.devices.get(reference_id(focal.manipulated, "Device") or "")
                if device is None or not self.removal_action(focal.action):
                    continue
                profile = self.device_profile(device)
                if profile.drug and profile.preparation == "manufactured":
                    return True
        statements = [s for p in session for s in self.procedure_statements(p)]
        statements += [s for note in notes for s in note.statements]
        return any(
            s.removal and s.drug_device and s.preparation == "manufactured" for s in statements
        )
