"""Small pieces the rules share: template values (primary code, evidence list, a rendered note),
the claim line of the primary, and applying one claim edit per line."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cds_service.rulepack.models import RulePack
from cds_service.rules.claim_facts import ClaimLine, DraftClaim


def primary_variables(pack: RulePack, code: str) -> dict[str, str]:
    return {"primary_code": code, "primary_descriptor": pack.coding.primary_codes[code]}


def evidence_list(
    pack: RulePack, kinds: Sequence[str], quotes: Sequence[tuple[str, str]] = ()
) -> str:
    """The kinds of evidence, then the phrases that state the removal, each with its resource."""
    lines = [f"- {pack.findings.evidence_labels[kind]}" for kind in kinds]
    lines.extend(f'- {source}: "{quote}"' for source, quote in quotes[:QUOTES_SHOWN])
    return "\n".join(lines)


QUOTES_SHOWN = 2  # enough to check the evidence in seconds; a card has room for no more


def cpt_coding(pack: RulePack, code: str, display: str) -> dict[str, str]:
    return {"system": pack.coding.systems["cpt"], "code": code, "display": display}


def note_text(pack: RulePack, code: str, name: str, variables: dict[str, str]) -> str:
    return pack.findings.findings[code].notes[name].format_map(variables).strip()


# -- claim checks ------------------------------------------------------------------------------


def primary_line(claim: DraftClaim, pack: RulePack) -> ClaimLine | None:
    listed = pack.coding.primary_codes
    return next((line for line in claim.lines if line.code in listed), None)


def edit_each(
    claim: dict[str, Any],
    lines: Sequence[ClaimLine],
    edit: Callable[[dict[str, Any], ClaimLine], dict[str, Any] | None],
) -> dict[str, Any] | None:
    """Apply ``edit`` to each line in turn; None as soon as one result is not valid FHIR."""
    updated: dict[str, Any] | None = claim
    for line in lines:
        if updated is None:
            return None
        updated = edit(updated, line)
    return updated


def lines_by_date(lines: Sequence[ClaimLine]) -> dict[str | None, list[ClaimLine]]:
    grouped: dict[str | None, list[ClaimLine]] = {}
    for line in lines:
        grouped.setdefault(line.serviced_date, []).append(line)
    return grouped


def same_date(first: str | None, second: str | None) -> bool:
    """Two dates of service that may be the same day (an undated line is not held against)."""
    return first is None or second is None or first == second


def dated_primaries(claim: DraftClaim, line: ClaimLine, pack: RulePack) -> list[ClaimLine]:
    """The claim's listed-primary lines on ``line``'s date of service."""
    listed = pack.coding.primary_codes
    return [
        other
        for other in claim.lines
        if other.code in listed and same_date(other.serviced_date, line.serviced_date)
    ]
