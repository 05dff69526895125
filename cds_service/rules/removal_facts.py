"""Removal evidence: which procedures removed a hand-made intramedullary drug device (and by what
evidence), whether hardware removal billed the same device, the tier of other drug devices, an
insertion in the session, a manufactured device, and at order-sign the devices still in place.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from fhir.resources.R4B.device import Device
from fhir.resources.R4B.procedure import Procedure

from cds_service.rules.record import (
    DRAFT_ORDER_STATUSES,
    PERFORMED_STATUSES,
    RecordReader,
    codes_in,
    reference_id,
)


class RemovalEvidenceReader(RecordReader):
    """What the record says was removed, inserted or left in place."""

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
            if any(implantation in codes_in(f.action, snomed) for f in procedure.focalDevice or []):
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

    def order_facts(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Listed primaries among the draft orders, and evidence of a device in place."""
        listed = self.coding.primary_codes
        primaries = tuple(
            dict.fromkeys(
                code
                for order in self.resources.draft_orders
                if order.status in DRAFT_ORDER_STATUSES
                for code in codes_in(order.code, self.cpt)
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
