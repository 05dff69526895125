"""The pure seam for tests: a request body evaluated the way every caller evaluates it."""

from __future__ import annotations

from typing import Any

from cds_service.engine.evaluate import Evaluation
from cds_service.engine.hook_call import handle_hook_call
from cds_service.rulepack.models import RulePack
from cds_service.rules.facts import ClinicalFacts
from cds_service.rules.findings import Finding


def evaluation_of(body: dict[str, Any], pack: RulePack) -> Evaluation:
    """``body`` answered without FHIR access (prefetch only), as HTTP would answer it."""
    service = next(svc for svc in pack.services if svc.hook == body["hook"])
    return handle_hook_call(pack, service.id, body).evaluation


def facts_for(body: dict[str, Any], pack: RulePack) -> ClinicalFacts:
    """The facts the rules read from ``body``."""
    return evaluation_of(body, pack).facts


def findings_for(body: dict[str, Any], pack: RulePack) -> list[Finding]:
    """The findings raised for ``body``."""
    return evaluation_of(body, pack).findings


def by_code(findings: list[Finding]) -> dict[str, Finding]:
    """Findings by their code."""
    return {finding.code: finding for finding in findings}
