"""The pack's text patterns compiled once: the evidence the rules search the record for, and how
each payer profile is recognised."""

from __future__ import annotations

import re
import typing
from collections.abc import Iterable
from dataclasses import dataclass

if typing.TYPE_CHECKING:  # the models hold a CompiledPatterns, compiled on first use
    from cds_service.rulepack.models import CodingFile
    from cds_service.rulepack.payer_models import PayersFile


@dataclass(frozen=True)
class CompiledPatterns:
    """Compiled regular expressions for the text evidence the rules look for."""

    removal_verb: re.Pattern[str]
    insertion_verb: re.Pattern[str]
    drug_carrier: re.Pattern[str]
    device_form: re.Pattern[str]
    intramedullary_site: re.Pattern[str]
    bone: re.Pattern[str]
    laterality: re.Pattern[str]
    soft_tissue_site: re.Pattern[str]
    intra_articular_site: re.Pattern[str]
    prefabricated: re.Pattern[str]
    documentation: dict[str, tuple[re.Pattern[str] | None, ...]]
    payers: tuple[PayerMatcher, ...]

    @classmethod
    def from_pack(cls, coding: CodingFile, payers: PayersFile) -> CompiledPatterns:
        text = coding.text_patterns
        documentation = {
            element.key: tuple(
                _any_of(group.text) if group.text else None for group in element.requires
            )
            for element in coding.documentation
        }
        return cls(
            removal_verb=_any_of(text.removal_verb),
            insertion_verb=_any_of(text.insertion_verb),
            drug_carrier=_any_of(text.drug_carrier),
            device_form=_any_of(text.device_form),
            intramedullary_site=_any_of(text.intramedullary_site),
            bone=_any_of(text.bone),
            laterality=_any_of(text.laterality),
            soft_tissue_site=_any_of(text.soft_tissue_site),
            intra_articular_site=_any_of(text.intra_articular_site),
            prefabricated=_any_of(text.prefabricated),
            documentation=documentation,
            payers=tuple(
                PayerMatcher(
                    key=profile.key,
                    names=_any_of(profile.names) if profile.names else None,
                    identifiers=tuple(
                        (re.compile(matcher.system), re.compile(matcher.value))
                        for matcher in profile.identifiers
                    ),
                )
                for profile in payers.profiles
                if profile.names or profile.identifiers
            ),
        )


@dataclass(frozen=True)
class PayerMatcher:
    """How one payer profile is recognised: names (searched) and identifiers (fully matched)."""

    key: str
    names: re.Pattern[str] | None
    identifiers: tuple[tuple[re.Pattern[str], re.Pattern[str]], ...] = ()

    def matches_name(self, text: str) -> bool:
        return self.names is not None and self.names.search(text) is not None

    def matches_identifier(self, system: str, value: str) -> bool:
        return any(
            system_re.fullmatch(system) is not None and value_re.fullmatch(value) is not None
            for system_re, value_re in self.identifiers
        )


def _any_of(patterns: Iterable[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{pattern})" for pattern in patterns), re.IGNORECASE)
