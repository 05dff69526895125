"""What one application instance holds: settings, rule pack, store and FHIR fetcher."""

from __future__ import annotations

from dataclasses import dataclass

from cds_service.auth import TokenVerifier
from cds_service.config import Settings
from cds_service.fhir_fetch import FhirFetcher
from cds_service.rule_pack import RulePack
from cds_service.storage import Store


@dataclass(frozen=True)
class ServiceState:
    """Kept in ``app.extensions['cds_20703']``."""

    settings: Settings
    pack: RulePack
    store: Store
    fetcher: FhirFetcher
    verifier: TokenVerifier | None  # None when CDS_AUTH is off
