"""Turn findings into CDS Hooks cards using the rule pack's templates.

UUIDs come from an injected factory so that tests can make them predictable; everything else is a
pure function of the finding and the pack. Card extensions carry the stable finding code under
``cpt20703.finding`` and the missing documentation keys under ``cpt20703.missing-documentation``.
A card's detail is short (the hook's limit): what was found and what to do, the data not checked,
and a line saying some facts are unconfirmed when the facts file leaves any unconfirmed for that
finding and note. Its one link opens the explanation page (sources, caveats, payer notes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cds_service.fhir.json_limits import prune_empty
from cds_service.protocol.models import Action, Card, Coding, Link, Source, Suggestion
from cds_service.rulepack.detail_fit import UNCONFIRMED_LINE, fit_detail, not_checked_line
from cds_service.rulepack.explanation import explanation_url
from cds_service.rulepack.models import RulePack, SuggestionTemplate
from cds_service.rulepack.templates import render_card_text
from cds_service.rules.contract import Finding

FINDING_EXTENSION = "cpt20703.finding"


def finding_of_card(card: dict[str, Any]) -> str:
    """The finding code a built card answers (its ``extension``)."""
    code: str = card["extension"][FINDING_EXTENSION]
    return code


MISSING_DOCUMENTATION_EXTENSION = "cpt20703.missing-documentation"


@dataclass(frozen=True)
class CardContext:
    """What every card of one call shares: its hook, the data not checked and the payer."""

    hook: str
    public_base_url: str
    caveats: Sequence[tuple[str, str]] = ()  # (key, reason) not checked: every card says so
    payer: str | None = None  # the payer profile key: the explanation link shows its notes


def build_cards(
    findings: Sequence[Finding], pack: RulePack, new_uuid: Callable[[], str], context: CardContext
) -> list[dict[str, Any]]:
    """The JSON of one card per finding, without empty or null elements."""
    return [prune_empty(build_card(finding, pack, new_uuid, context)) for finding in findings]


def build_card(
    finding: Finding, pack: RulePack, new_uuid: Callable[[], str], context: CardContext
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
        detail=fit_detail(
            template.detail,
            finding.variables,
            [
                not_checked_line(context.caveats),
                UNCONFIRMED_LINE if template.unconfirmed_for(finding.note) else "",
            ],
            pack.findings.detail_limits[context.hook],
        ),
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
        links=[
            Link(
                label=pack.findings.explanation_label,
                url=explanation_url(context.public_base_url, finding.code, context.payer),
                type="absolute",
            )
        ],
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
