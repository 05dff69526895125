"""Turn findings into CDS Hooks cards using the rule pack's templates.

UUIDs come from an injected factory so that tests can make them predictable; everything else is a
pure function of the finding and the pack. Card extensions carry the stable finding code under
``cpt20703.finding`` and the missing documentation keys under ``cpt20703.missing-documentation``.
A card's detail is the template's text, then what the facts file leaves UNCONFIRMED for that
finding (and the note it was raised with), the data not checked, the payer's notes and the sources.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cds_service.fhir.json_limits import prune_empty
from cds_service.protocol.models import Action, Card, Coding, Source, Suggestion
from cds_service.rulepack.models import RulePack, SuggestionTemplate
from cds_service.rulepack.templates import render_card_text
from cds_service.rules.contract import Finding

FINDING_EXTENSION = "cpt20703.finding"


def finding_of_card(card: dict[str, Any]) -> str:
    """The finding code a built card answers (its ``extension``)."""
    code: str = card["extension"][FINDING_EXTENSION]
    return code


MISSING_DOCUMENTATION_EXTENSION = "cpt20703.missing-documentation"


def build_cards(
    findings: Sequence[Finding],
    pack: RulePack,
    new_uuid: Callable[[], str],
    caveats: Sequence[str] = (),
    payer: str | None = None,
) -> list[dict[str, Any]]:
    """The JSON of one card per finding, without empty or null elements.

    ``caveats`` name data that could not be checked; every card says so, since any finding may
    have come out differently with that data. ``payer`` is the patient's payer profile key: every
    card shows that payer's policy notes.
    """
    return [
        prune_empty(build_card(finding, pack, new_uuid, caveats, payer)) for finding in findings
    ]


UNCONFIRMED_HEADING = "**UNCONFIRMED**"


def unconfirmed_section(items: Sequence[str]) -> str:
    """A markdown list of what the sources behind the card do not confirm (nothing if none)."""
    if not items:
        return ""
    lines = "\n".join(f"- {item}" for item in items)
    return (
        f"\n\n{UNCONFIRMED_HEADING} (not confirmed by the sources this card relies on; check "
        f"before relying on it):\n{lines}"
    )


def not_checked_section(caveats: Sequence[str]) -> str:
    """A markdown list of the data this advice could not take into account."""
    if not caveats:
        return ""
    lines = "\n".join(f"- {caveat}" for caveat in caveats)
    return f"\n\n**Not checked** (this data could not be obtained):\n{lines}"


def payer_section(pack: RulePack, payer: str | None) -> str:
    """The patient's payer and what its policies say about add-on codes, with their sources."""
    if payer is None:
        return ""
    profile = pack.payers.profile(payer)
    lines = [f"\n\n**Payer: {profile.label}**"]
    for note in profile.notes:
        cited = ", ".join(
            f"[{pack.sources[key].label}]({pack.sources[key].url})" for key in note.sources
        )
        lines.append(f"- {note.text} (tier {note.tier}, read {note.read}: {cited})")
    return "\n".join(lines)


def sources_section(pack: RulePack, keys: Sequence[str]) -> str:
    """A markdown list citing each source with its tier and any caveat."""
    lines = ["**Sources**"]
    for key in keys:
        source = pack.sources[key]
        caveat = f"; {source.note}" if source.note else ""
        lines.append(f"- [{source.label}]({source.url}) (tier {source.tier}{caveat})")
    return "\n".join(lines)


def build_card(
    finding: Finding,
    pack: RulePack,
    new_uuid: Callable[[], str],
    caveats: Sequence[str] = (),
    payer: str | None = None,
) -> dict[str, Any]:
    """One card, validated against the CDS Hooks 2.0 card model."""
    template = pack.findings.findings[finding.code]
    topic = pack.findings.card_topic
    extension: dict[str, Any] = {FINDING_EXTENSION: finding.code}
    if finding.missing_documentation:
        extension[MISSING_DOCUMENTATION_EXTENSION] = list(finding.missing_documentation)
    suggestions = _suggestions(finding, template.suggestion, new_uuid)
    card = Card(
        uuid=new_uuid(),
        summary=render_card_text(template.summary, finding.variables),
        detail=render_card_text(template.detail, finding.variables)
        + unconfirmed_section(template.unconfirmed_for(finding.note))
        + not_checked_section(caveats)
        + payer_section(pack, payer)
        + "\n\n"
        + sources_section(pack, template.source.sources),
        indicator=template.indicator_for(finding.note),
        source=Source(
            label=template.source.label,
            url=template.source.url,
            topic=Coding(system=topic.system, code=topic.code, display=topic.display),
        ),
        suggestions=suggestions,
        selectionBehavior="at-most-one" if suggestions else None,
        overrideReasons=[
            Coding(
                system=pack.findings.override_reason_system,
                code=reason.code,
                display=reason.display,
            )
            for reason in template.override_reasons
        ]
        or None,
        extension=extension,
    )
    return card.model_dump(mode="json", exclude_none=True)


def _suggestions(
    finding: Finding, suggestion: SuggestionTemplate | None, new_uuid: Callable[[], str]
) -> list[Suggestion] | None:
    """The finding's one recommended suggestion: create its new resource or update the Claim."""
    if suggestion is None:
        return None
    description = render_card_text(suggestion.action_description, finding.variables)
    claim = finding.updated_claim
    if finding.new_resource is not None:
        action = Action(type="create", description=description, resource=finding.new_resource)
    elif claim is not None:
        action = Action(
            type="update",
            description=description,
            resource=claim,
            resourceId=f"Claim/{claim['id']}" if claim.get("id") else None,
        )
    else:
        return None
    label = render_card_text(suggestion.label, finding.variables)
    return [Suggestion(label=label, uuid=new_uuid(), isRecommended=True, actions=[action])]
