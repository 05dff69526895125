"""What a Device resource says the device is: a drug device or metal, hand-made or manufactured,
and its tier, read from its own text (with the statement model) and its maker fields.

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from cds_service.rules.statements import TextReading


@dataclass(frozen=True)
class DeviceProfile:
    """What a Device resource's own text and fields say the device is."""

    drug: bool
    metal: bool
    preparation: str | None
    tier: str | None

    @classmethod
    def of(
        cls, reading: TextReading, *, fields_say_manufactured: bool, inserted_by_code: bool
    ) -> DeviceProfile:
        """``fields_say_manufactured``: a manufacturer, model, lot, serial or UDI is recorded (a
        hand-made device's text saying so wins over the fields: its cement has a maker and a lot
        too; text saying it is manufactured wins over all);
        ``inserted_by_code``: a 20702 placed it, so it is an intramedullary drug device."""
        manual = reading.says("MANUAL")
        manufactured = reading.says("MANUFACTURED") or (fields_say_manufactured and not manual)
        carrier = reading.says("CARRIER")
        # One device per text: a named site wins (the canal first), then what its form implies.
        sites = {value for label, value in reading.labels if label == "SITE"}
        forms = [statement.tier for statement in reading.statements if statement.tier]
        tier = next(
            (
                site
                for site in ("intramedullary", "intra-articular", "soft-tissue")
                if site in sites
            ),
            forms[0] if forms else None,
        )
        if tier is None and inserted_by_code:
            tier = "intramedullary"
        return cls(
            drug=inserted_by_code or reading.says("DRUG") or carrier,
            metal=reading.says("METAL") and not (carrier or manual or reading.says("DRUG")),
            preparation="manufactured" if manufactured else "manual" if manual else None,
            tier=tier,
        )

    @property
    def qualifies(self) -> bool:
        return (
            self.drug
            and not self.metal
            and self.tier == "intramedullary"
            and self.preparation != "manufactured"
        )
