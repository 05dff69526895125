"""The payer: the Coverage of the claim (or the patient's) and which payer profile of payers.yaml
it is, by the payer organization first, then the plan text.

Pure: no I/O.
"""

from __future__ import annotations

from fhir.resources.R4B.coverage import Coverage
from fhir.resources.R4B.identifier import Identifier

from cds_service.rules.claim_facts import DraftClaim
from cds_service.rules.record import (
    RecordReader,
    concept_text,
    reference_id,
)


class PayerReader(RecordReader):
    """Who pays."""

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
        plan = [concept_text([coverage.type])]
        for item in coverage.class_fhir or []:
            plan.extend([item.value or "", item.name or ""])
        plan_text = " ".join(text for text in plan if text)
        for matcher in self.patterns.payers:
            if matcher.matches_name(plan_text):
                return matcher.key
        return "general"
