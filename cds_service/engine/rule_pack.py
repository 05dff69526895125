"""The rule pack the service runs: ``cards/`` loaded and checked against the contract the rules
declare, so a pack that promises a variable, note or suggestion no rule gives is refused at
start-up and by ``check-cards``."""

from __future__ import annotations

from pathlib import Path

from cds_service.rulepack.loading import default_cards_dir, load_rule_pack
from cds_service.rulepack.models import RulePack
from cds_service.rules.findings import PACK_CONTRACT


def load_pack(directory: Path | None = None) -> RulePack:
    """The rule pack in ``directory`` (default: the packaged ``cards/``), checked against the
    rules' declared contract; :class:`~cds_service.rulepack.problems.RulePackError` lists every
    problem."""
    return load_rule_pack(directory or default_cards_dir(), PACK_CONTRACT)
