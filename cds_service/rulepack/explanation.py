"""A finding's explanation page, as data: the rule, its sources with tier and month read, what
the facts file leaves UNCONFIRMED, the documentation checklist and (for one payer profile) that
payer's notes. Built from the pack alone, so the page is the same for every patient: it holds no
patient data and can be cached and shown without a token. The web layer renders it as HTML.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from cds_service.rulepack.models import RulePack
from cds_service.rulepack.payer_models import PayerProfile
from cds_service.rulepack.templates import fill_placeholders

EXPLANATION_PATH = "/why"
# Findings whose page lists the +20703 documentation elements: they ask for that documentation.
CHECKLIST_FINDINGS = frozenset(
    {"add-on-suggested", "documentation-missing", "planned-removal-reminder"}
)
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Single angle quotation marks (U+2039, U+203A) around what a placeholder stands for.
OPEN_QUOTE, CLOSE_QUOTE = "\u2039", "\u203a"


def explanation_url(public_base_url: str, finding: str, payer: str | None) -> str:
    """Where a card's link points: the finding's page, for the patient's payer profile."""
    url = f"{public_base_url.rstrip('/')}{EXPLANATION_PATH}/{quote(finding, safe='')}"
    return f"{url}?payer={quote(payer, safe='')}" if payer else url


def explanation_variables(pack: RulePack) -> dict[str, str]:
    """The placeholders a ``why`` text may use: facts of the pack, never of a patient."""
    mue = pack.coding.mue
    return pack.template_variables() | {
        "mue_units": str(mue.units),
        "mue_mai": str(mue.mai),
        "mue_file": mue.file,
        "family_effective": pack.coding.family_effective,
    }


def generic_text(template: str) -> str:
    """A card text with its patient placeholders shown as what they stand for."""
    return _PLACEHOLDER.sub(
        lambda match: f"{OPEN_QUOTE}{match.group(1).replace('_', ' ')}{CLOSE_QUOTE}", template
    )


def explanation(pack: RulePack, finding: str, payer: str | None = None) -> dict[str, Any]:
    """The page of ``finding`` (a known finding code) for ``payer`` (a known profile key)."""
    template = pack.findings.findings[finding]
    document: dict[str, Any] = {
        "finding": finding,
        "summary": generic_text(template.summary),
        "indicator": template.indicator,
        "hooks": list(template.hooks),
        "effectiveFrom": template.effective_from,
        "confidence": template.confidence,
        "why": fill_placeholders(template.why, explanation_variables(pack)).strip(),
        "unconfirmed": list(template.unconfirmed),
        "unconfirmedInSomeCases": sorted(
            {item for items in template.note_unconfirmed.values() for item in items}
            - set(template.unconfirmed)
        ),
        "sources": [_source(pack, key) for key in template.source.sources],
        "overrideReasons": [reason.display for reason in template.override_reasons],
        "documentation": _checklist(pack) if finding in CHECKLIST_FINDINGS else [],
        "payers": [
            {"key": profile.key, "label": profile.label} for profile in pack.payers.profiles
        ],
    }
    if payer is not None:
        document["payer"] = _payer(pack, pack.payers.profile(payer))
    return document


def _source(pack: RulePack, key: str) -> dict[str, Any]:
    citation = pack.sources[key]
    entry: dict[str, Any] = {
        "key": key,
        "label": citation.label,
        "url": citation.url,
        "tier": citation.tier,
        "read": citation.read,
    }
    if citation.note:
        entry["note"] = citation.note
    return entry


def _checklist(pack: RulePack) -> list[dict[str, Any]]:
    return [
        {
            "key": element.key,
            "label": element.label,
            "why": element.why,
            "appliesWhen": element.applies_when,
            "confidence": element.confidence,
            "sources": [_source(pack, key) for key in element.sources],
        }
        for element in pack.coding.documentation
    ]


def _payer(pack: RulePack, profile: PayerProfile) -> dict[str, Any]:
    return {
        "key": profile.key,
        "label": profile.label,
        "notes": [
            {
                "text": note.text,
                "tier": note.tier,
                "read": note.read,
                "sources": [_source(pack, key) for key in note.sources],
            }
            for note in profile.notes
        ],
    }
