"""What one application instance holds: its settings, rule pack and store."""

from __future__ import annotations

from dataclasses import dataclass

from cds_service.config import Settings
from cds_service.rule_pack import RulePack
from cds_service.storage import Store


@dataclass(frozen=True)
class ServiceState:
    """Kept in ``app.extensions['cds_20703']``."""

    settings: Settings
    pack: RulePack
    store: Store
