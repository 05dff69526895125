"""What a card shows a person, for tests that read every text of every card."""

from __future__ import annotations

import re
from typing import Any

from cds_service.rulepack.detail_fit import CUT_MARK, UNCONFIRMED_LINE
from cds_service.rulepack.models import RulePack

PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")


def card_texts(card: dict[str, Any]) -> list[str]:
    """Every text of a card a person reads: summary, detail, suggestion and action wording,
    the source and link labels and the override reasons."""
    texts = [card["summary"], card.get("detail", ""), card["source"]["label"]]
    texts += [link["label"] for link in card.get("links", [])]
    texts += [reason.get("display", "") for reason in card.get("overrideReasons", [])]
    for suggestion in card.get("suggestions", []):
        texts.append(suggestion["label"])
        texts += [action["description"] for action in suggestion.get("actions", [])]
    return texts


def unfilled_placeholders(card: dict[str, Any]) -> list[str]:
    """Template placeholders such as ``{sibling_code}`` left in what a card shows."""
    return [found for text in card_texts(card) for found in PLACEHOLDER.findall(text)]


MARKDOWN_LINK = re.compile(r"\]\(|https?://|<a\b", re.IGNORECASE)


def assert_workflow_card(
    card: dict[str, Any], pack: RulePack, hook: str, note: str | None, payer: str, base: str
) -> None:
    """A card fit for a workflow: a detail within the hook's limit, never cut, without inline
    links, ending with the unconfirmed line exactly when the finding (and note) leaves facts
    unconfirmed; one link, to the finding's explanation page for the patient's payer profile."""
    code = card["extension"]["cpt20703.finding"]
    detail = card["detail"]
    assert len(detail) <= pack.findings.detail_limits[hook], (code, len(detail))
    assert CUT_MARK not in detail, code
    assert MARKDOWN_LINK.search(detail) is None, code
    unconfirmed = pack.findings.findings[code].unconfirmed_for(note)
    assert detail.endswith(UNCONFIRMED_LINE) == bool(unconfirmed), code
    assert "UNCONFIRMED" not in detail, code
    assert "**Sources**" not in detail, code
    assert card["links"] == [
        {
            "label": pack.findings.explanation_label,
            "url": f"{base}/why/{code}?payer={payer}",
            "type": "absolute",
        }
    ], code
