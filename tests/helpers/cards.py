"""What a card shows a person, for tests that read every text of every card."""

from __future__ import annotations

import re
from typing import Any

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
