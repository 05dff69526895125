"""Device history for order-sign: the listed primaries among the draft orders, and whether an
intramedullary drug device is still in place (an active Device, or an insertion, under 20702 or
before 2020 under the codes used then, with no later removal on record).

Pure: no I/O.
"""

from __future__ import annotations

from fhir.resources.R4B.procedure import Procedure

from cds_service.rules.record import (
    DRAFT_ORDER_STATUSES,
    PERFORMED_STATUSES,
    codes_in,
    reference_id,
)
from cds_service.rules.removal_facts import RemovalEvidenceReader


class DeviceHistoryReader(RemovalEvidenceReader):
    """What the patient's record says about devices placed and removed before this call."""

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

    def records_insertion(self, procedure: Procedure) -> bool:
        """A 20702, or before the 20700 family existed one of the codes used for it then
        (11981/11983) when its text or device names an intramedullary drug device."""
        codes = self.procedure_codes(procedure)
        if self.coding.insertion_code in codes:
            return True
        day = self.procedure_day(procedure)
        if not set(codes) & set(self.coding.legacy_insertion_codes) or day is None:
            return False
        if day >= self.coding.family_effective:
            return False
        if any(s.qualifies for s in self.procedure_statements(procedure)):
            return True
        return any(
            device is not None and self.is_intramedullary_drug_device(device)
            for focal in procedure.focalDevice or []
            if (device := self.devices.get(reference_id(focal.manipulated, "Device") or ""))
        )

    def insertion_without_later_removal(
        self, removed_devices: set[str], removal_days: list[str | None]
    ) -> bool:
        for procedure in self.resources.procedures:
            if procedure.status not in PERFORMED_STATUSES:
                continue
            if not self.records_insertion(procedure):
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
