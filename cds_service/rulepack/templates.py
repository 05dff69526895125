"""Card text templates: their ``{placeholder}`` names, filling them with a finding's values, and the
longest values a summary placeholder can take, so the pack check can prove every summary fits.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping, Sequence

from cds_service.rulepack.models import TIER_LABELS, FindingTemplate, RulePack

SUMMARY_LIMIT = 140
# A summary lists at most this many items of a list; the rest are counted ("and 7 more").
SUMMARY_LIST_ITEMS = 2

# Placeholders every template may use (RulePack.template_variables); each finding's rule declares
# the others it fills (rules/contract.py).
COMMON_VARIABLES = frozenset({"add_on_code", "aoc_file", "aoc_effective", "aoc_edit_type"})


def capped_list(items: Sequence[str], shown: int = SUMMARY_LIST_ITEMS) -> str:
    """``items`` joined for a summary: the first ``shown``, then how many more ("and 7 more")."""
    if len(items) <= shown:
        return ", ".join(items)
    more = len(items) - shown
    return f"{', '.join(items[:shown])} and {more if more < 1000 else '999+'} more"


# Longest values a summary placeholder can take, used to prove summaries stay under the limit
# (values that depend on the pack are added in worst_case_values). A placeholder used in a
# summary with no worst-case value is an error.
_WORST_CASE_VALUES = {
    "primary_code": "99999",
    "sibling_code": "99999",
    "billed_code": "99999",
    "right_code": "99999",
    "action_label": max(("insertion", "removal"), key=len),
    "tier_label": max(TIER_LABELS.values(), key=len),
    # The longest ICD-10-CM code has 8 characters with its dot; a claim can list many.
    "conflicting": capped_list(["T84.610A"] * 100_000),
    "hardware_code": "99999",
    "line_code": "99999",
    "claim_side": "LT, RT",
    "documented_side": "LT, RT",
    "service_date": "2019-12-31",
    "family_effective": "2020-01-01",
}


def worst_case_values(pack: RulePack) -> dict[str, str]:
    """Every summary placeholder at its longest, for this pack."""
    coding = pack.coding
    modifiers = sorted(set(coding.invalid_modifiers) | set(coding.assistant_modifiers))
    return (
        pack.template_variables()
        | _WORST_CASE_VALUES
        | {
            "modifiers": ", ".join(modifiers),
            "mue_units": str(coding.mue.units),
            "missing_count": str(len(coding.documentation)),
        }
    )


def sample_values(names: Iterable[str]) -> dict[str, str]:
    """A plain value for each declared variable, to render a template the way a rule would."""
    return {name: f"value-of-{name}" for name in names}


def placeholders(text: str) -> set[str]:
    """The placeholder names ``text`` uses; ``ValueError`` when it is not a valid template."""
    return {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}


def fill_placeholders(text: str, values: Mapping[str, str]) -> str:
    """``text`` with each placeholder replaced by its value, as it is (not stripped)."""
    return text.format_map(values)


def render_card_text(text: str, values: Mapping[str, str]) -> str:
    """Fill a card template; the pack check guarantees every placeholder has a value."""
    return fill_placeholders(text, values).strip()


_UNFILLED = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")


def unfilled(text: str) -> list[str]:
    """Placeholders such as ``{sibling_code}`` that a reader would see as written."""
    return _UNFILLED.findall(text)


def rendered_texts(
    template: FindingTemplate, loc: tuple[str | int, ...]
) -> dict[tuple[str | int, ...], str]:
    """The texts the card builder fills with the finding's variables, by location."""
    texts: dict[tuple[str | int, ...], str] = {
        (*loc, "summary"): template.summary,
        (*loc, "detail"): template.detail,
    }
    texts |= {(*loc, "notes", name): text for name, text in template.notes.items()}
    if template.suggestion is not None:
        texts[(*loc, "suggestion", "label")] = template.suggestion.label
        texts[(*loc, "suggestion", "action_description")] = template.suggestion.action_description
    return texts


def literal_texts(
    template: FindingTemplate, loc: tuple[str | int, ...]
) -> dict[tuple[str | int, ...], str]:
    """The texts a card shows exactly as written (link label, override reasons, UNCONFIRMED)."""
    texts: dict[tuple[str | int, ...], str] = {(*loc, "source", "label"): template.source.label}
    texts |= {
        (*loc, "override_reasons", index, "display"): reason.display
        for index, reason in enumerate(template.override_reasons)
    }
    texts |= {(*loc, "unconfirmed", index): item for index, item in enumerate(template.unconfirmed)}
    texts |= {
        (*loc, "note_unconfirmed", note, index): item
        for note, items in template.note_unconfirmed.items()
        for index, item in enumerate(items)
    }
    return texts
