"""The payer profiles of ``payers.yaml``: who a Coverage names, what its checked policy says about
add-on billing, and the notes a card's explanation page shows for it (each with its sources).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cds_service.rulepack.model_base import ReadMonth, Strict, Tier


class PayerNote(Strict):
    text: str
    sources: list[str] = Field(min_length=1)
    read: ReadMonth
    tier: Tier


class IdentifierMatcher(Strict):
    """An Identifier pattern: ``system`` and ``value`` are regular expressions, fully matched."""

    system: str
    value: str


class AddOnBilling(Strict):
    """What the payer's checked policy says about billing an add-on with its primary."""

    same_claim: Literal["required", "not-stated"]
    rendering_provider: Literal["same-individual", "same-provider-or-group-tin", "not-stated"]
    sources: list[str] = Field(min_length=1)
    read: ReadMonth
    tier: Tier


class PayerProfile(Strict):
    key: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    label: str
    names: list[str]
    identifiers: list[IdentifierMatcher] = Field(default_factory=list)
    commercial: bool
    add_on_billing: AddOnBilling | None = None
    notes: list[PayerNote] = Field(min_length=1)


class PayersFile(Strict):
    profiles: list[PayerProfile] = Field(min_length=1)

    def profile(self, key: str) -> PayerProfile:
        """The profile with this key (``general`` when there is none)."""
        return next(
            (item for item in self.profiles if item.key == key),
            next(item for item in self.profiles if item.key == "general"),
        )
