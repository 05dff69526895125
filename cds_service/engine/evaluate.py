"""The pure seam of a hook call: gathered data in, facts, findings and cards out.

No I/O, no clock and no randomness beyond the injected ``uuid_factory``: the HTTP view, the
``evaluate`` command, the benchmark and the rule tests reach the rules only through here (by way
of :func:`cds_service.engine.hook_call.handle_hook_call`), so they all answer alike.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cds_service.engine.gather import REASONS, HookData
from cds_service.fhir.resources import read_resources
from cds_service.protocol.models import HookRequest
from cds_service.rulepack.models import RulePack, ServiceDefinition
from cds_service.rules.cards import CardContext, build_cards, finding_of_card
from cds_service.rules.facts import ClinicalFacts, derive_facts
from cds_service.rules.findings import Finding, evaluate_rules

DEFAULT_PUBLIC_BASE_URL = "http://127.0.0.1:8080"


@dataclass(frozen=True)
class Evaluation:
    """What the rules made of one call's data: the facts, the findings and the cards."""

    facts: ClinicalFacts
    findings: list[Finding]
    cards: list[dict[str, Any]]
    skipped_resources: int  # input resources that were not valid FHIR R4 and were left out

    @property
    def issued(self) -> list[tuple[str, str]]:
        """(card uuid, finding code) of each card, for the audit trail and feedback."""
        return [(card["uuid"], finding_of_card(card)) for card in self.cards]


def new_uuid() -> str:
    """A random RFC 4122 UUID, as CDS Hooks card and suggestion ids."""
    return str(uuid.uuid4())


def evaluate(
    pack: RulePack,
    service: ServiceDefinition,
    request: HookRequest,
    data: HookData,
    uuid_factory: Callable[[], str] = new_uuid,
    public_base_url: str = DEFAULT_PUBLIC_BASE_URL,
    today: str | None = None,
) -> Evaluation:
    """Read the facts from ``data``, run the rules, and build the cards.

    ``today`` (YYYY-MM-DD) is the day the hook fires: without an ``encounterId`` and without a
    draft Claim in ``draftOrders``, the session is that day's (the caller reads the clock).
    """
    resources = read_resources(data.values, request.context.get("draftOrders"))
    encounter_id = request.context.get("encounterId")
    patient_id = request.context.get("patientId")
    facts = derive_facts(
        resources,
        pack,
        service.hook,
        encounter_id if isinstance(encounter_id, str) else None,
        patient_id if isinstance(patient_id, str) else None,
        public_base_url,
        today,
    )
    findings = evaluate_rules(facts, pack)
    context = CardContext(service.hook, public_base_url, data_caveats(data), facts.payer)
    cards = build_cards(findings, pack, uuid_factory, context)
    return Evaluation(facts, findings, cards, resources.skipped)


def data_caveats(data: HookData) -> list[tuple[str, str]]:
    """(prefetch key, reason) of the data that could not be checked, for the cards."""
    caveats = [(name, REASONS.get(kind, kind)) for name, kind in sorted(data.not_checked.items())]
    caveats += [(key, "only the first pages of the search were read") for key in data.truncated]
    return caveats
