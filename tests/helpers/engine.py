"""The pure seam for tests: a request body evaluated the way every caller evaluates it."""

from __future__ import annotations

from typing import Any

from cds_service.engine.evaluate import Evaluation
from cds_service.engine.hook_call import handle_hook_call
from cds_service.rulepack.models import RulePack
from cds_service.rules.facts import ClinicalFacts
from cds_service.rules.findings import Finding


def evaluation_of(body: dict[str, Any], pack: RulePack, today: str | None = None) -> Evaluation:
    """``body`` answered without FHIR access (prefetch only), as HTTP would answer it; ``today``
    is the day the hook fires (the server's date when not given)."""
    service = next(svc for svc in pack.services if svc.hook == body["hook"])
    return handle_hook_call(pack, service.id, body, today=today).evaluation


def facts_for(body: dict[str, Any], pack: RulePack, today: str | None = None) -> ClinicalFacts:
    """The facts the rules read from ``body``."""
    return evaluation_of(body, pack, today).facts


def findings_for(body: dict[str, Any], pack: RulePack, today: str | None = None) -> list[Finding]:
    """The findings raised for ``body``."""
    return evaluation_of(body, pack, today).findings


def by_code(findings: list[Finding]) -> dict[str, Finding]:
    """Findings by their code."""
    return {finding.code: finding for finding in findings}
