"""The rule pack's models: one pydantic model per YAML file of ``cards/`` (``extra="forbid"``, so
that a typo fails loudly, and frozen), and :class:`RulePack`, the validated pack the rules read.

Codings are the CDS Hooks :class:`~cds_service.protocol.models.Coding`. A ``sources.yaml`` entry
is a :class:`Citation` and an override reason a card offers an :class:`OfferedOverrideReason`,
named apart from the wire ``Source`` and ``OverrideReason``, which hold other fields.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from cds_service.protocol.models import Coding
from cds_service.recent import RecentCache
from cds_service.rulepack.clinical_text import READINGS_KEPT, ClinicalTextFile, build_pipeline
from cds_service.rulepack.model_base import ReadMonth, Strict, Tier
from cds_service.rulepack.patterns import CompiledPatterns
from cds_service.rulepack.payer_models import PayersFile

if typing.TYPE_CHECKING:  # spaCy is imported when the pipeline is first built
    from spacy.language import Language

Indicator = Literal["info", "warning", "critical"]
BASE_URL_PLACEHOLDER = "{public_base_url}"
CPT_CODE = re.compile(r"^\d{5}$")  # CPT Category I
ICD10CM_PREFIX = r"^[A-TV-Z]\d[0-9A-Z](\.[0-9A-Z]{0,4})?$"
# A whole ICD-10-CM code, with or without its dot (claims often carry "T84622A" for "T84.622A").
ICD10CM_CODE = re.compile(r"^[A-TV-Z]\d[0-9A-Z]\.?[0-9A-Z]{0,4}$")
# How a card names the anatomic tier of a removed drug device that is not intramedullary.
TIER_LABELS = {"soft-tissue": "in deep soft tissue", "intra-articular": "in a joint"}


# A source the facts cite (sources.yaml), by tier; not a card's Source. No docstring (JSON Schema).
class Citation(Strict):
    label: str = Field(min_length=1)
    url: str = Field(pattern=r"^https?://")
    tier: Tier
    read: ReadMonth
    note: str | None = None


class SourcesFile(Strict):
    sources: dict[str, Citation]


class Sourced(Strict):
    """A coding fact: it names at least one source key and the confidence tier behind it.

    ``confidence`` is the best tier of the sources that support the fact (as the facts file
    grades them); ``unconfirmed`` says what those sources do not confirm.
    """

    sources: list[str] = Field(min_length=1)
    confidence: Tier
    unconfirmed: str | None = None


class CodedConcept(Strict):
    code: str = Field(pattern=CPT_CODE.pattern)
    display: str


class SourcedConcept(CodedConcept, Sourced):
    short_descriptor: str | None = None


class PrimaryCode(Strict):
    code: str = Field(pattern=CPT_CODE.pattern)
    descriptor: str


class PrimaryList(Sourced):
    edit_type: Literal[1, 2, 3]
    effective: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")
    file: str
    codes: list[PrimaryCode] = Field(min_length=1)


class DeviceActions(Sourced):
    removal: str
    implantation: str


class DiagnosisLinkage(Sourced):
    icd10cm_prefixes: list[Annotated[str, Field(pattern=ICD10CM_PREFIX)]] = Field(min_length=1)
    fracture_prefix: str
    nonunion_seventh_characters: list[str]
    z47_2_code: Annotated[str, Field(pattern=ICD10CM_PREFIX)]
    z47_2_excludes: list[Annotated[str, Field(pattern=ICD10CM_PREFIX)]]


class TextPatterns(Strict):
    removal_verb: list[str] = Field(min_length=1)
    insertion_verb: list[str] = Field(min_length=1)
    drug_carrier: list[str] = Field(min_length=1)
    device_form: list[str] = Field(min_length=1)
    intramedullary_site: list[str] = Field(min_length=1)
    bone: list[str] = Field(min_length=1)
    laterality: list[str] = Field(min_length=1)
    soft_tissue_site: list[str] = Field(min_length=1)
    intra_articular_site: list[str] = Field(min_length=1)
    prefabricated: list[str] = Field(min_length=1)


class Mue(Sourced):
    units: int = Field(ge=1)
    mai: int
    file: str


class DocumentedSite(Sourced):
    """Patterns per side (RT/LT) and per bone that a removal's bodySite may name."""

    sides: dict[Literal["RT", "LT"], list[str]] = Field(min_length=1)
    bones: dict[str, list[str]] = Field(min_length=1)


class SameDeviceRemovalCodes(Sourced):
    """Hardware removal codes (20670, 20680): duplicates of 20703 for the same device."""

    codes: list[Annotated[str, Field(pattern=CPT_CODE.pattern)]] = Field(min_length=1)


# Single-value coding facts of coding.yaml; each needs an entry in its ``fact_sources``.
ScalarFact = Literal[
    "insertion_code",
    "sibling_insertion_codes",
    "legacy_insertion_codes",
    "family_effective",
    "hardware_removal_code",
    "laterality_modifiers",
    "assistant_modifiers",
    "multiple_procedure_modifier",
    "invalid_modifiers",
]


class EvidenceGroup(Strict):
    """Satisfied when any structured check holds or any text pattern matches."""

    structured: list[str] = Field(default_factory=list)  # checked against the contract
    text: list[str] = Field(default_factory=list)


class DocumentationElement(Strict):
    key: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    label: str
    why: str
    sources: list[str]
    confidence: Literal[1, 2, 3, "team"]
    applies_when: Literal["always", "assistant-modifier-on-claim"] = "always"
    requires: list[EvidenceGroup] = Field(min_length=1)


class DocumentationTask(Strict):
    """The Task asking for missing documentation: SDC codes, then its description's start."""

    code: Coding
    input_type: Coding
    description_prefix: str


class CodingFile(Strict):
    systems: dict[Literal["cpt", "icd10cm", "snomed", "loinc", "hcpcs"], str]
    add_on: SourcedConcept
    insertion_code: str = Field(pattern=CPT_CODE.pattern)
    insertion_display: str
    sibling_insertion_codes: list[Annotated[str, Field(pattern=CPT_CODE.pattern)]]
    legacy_insertion_codes: list[Annotated[str, Field(pattern=CPT_CODE.pattern)]]
    family_effective: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")
    siblings: dict[Literal["soft-tissue", "intra-articular"], SourcedConcept]
    hardware_removal_code: str = Field(pattern=CPT_CODE.pattern)
    surgical_code_range: tuple[
        Annotated[str, Field(pattern=CPT_CODE.pattern)],
        Annotated[str, Field(pattern=CPT_CODE.pattern)],
    ]
    standalone_removal_code: SourcedConcept
    primaries: PrimaryList
    device_actions: DeviceActions
    operative_note_types: list[Coding]
    laterality_modifiers: list[str]
    assistant_modifiers: list[str]
    multiple_procedure_modifier: str
    invalid_modifiers: list[str]
    mue: Mue
    diagnosis_linkage: DiagnosisLinkage
    text_patterns: TextPatterns
    documentation: list[DocumentationElement] = Field(min_length=1)
    documentation_task: DocumentationTask
    fact_sources: dict[ScalarFact, Sourced]
    documented_site: DocumentedSite
    hardware_removal_codes: SameDeviceRemovalCodes

    @cached_property
    def primary_codes(self) -> dict[str, str]:
        """Listed primary CPT code -> CMS short descriptor."""
        return {primary.code: primary.descriptor for primary in self.primaries.codes}


class CardSource(Strict):
    label: str
    url: str = Field(pattern=r"^https://")
    sources: list[str] = Field(min_length=1)


class SuggestionTemplate(Strict):
    label: str
    action_description: str


# An override reason a card offers (its system is override_reason_system); not the OverrideReason
# a client reports in feedback. (No docstring, as for Citation.)
class OfferedOverrideReason(Strict):
    code: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    display: str


UnconfirmedItem = Annotated[str, Field(min_length=1)]


class FindingTemplate(Strict):
    confidence: Tier  # best tier of the sources behind the rule
    # What the coding facts file leaves unconfirmed that bears on this finding, one statement per
    # item; the card's detail lists them under an UNCONFIRMED heading. Required: ``[]`` says
    # explicitly that nothing relevant is unconfirmed (and the card then says nothing).
    unconfirmed: list[UnconfirmedItem]
    effective_from: str = Field(default="2020-01-01", pattern=r"^\d{4}-\d{2}-\d{2}$")
    suppresses: list[str] = Field(default_factory=list)
    hooks: list[str] = Field(min_length=1)
    indicator: Indicator
    summary: str
    # The card's detail: what was found and what to do, short enough for a clinician's screen
    # (FindingsFile.detail_limits); the reasons, sources and caveats are on the explanation page.
    detail: str
    notes: dict[str, str] = Field(default_factory=dict)
    # The explanation page's account of the rule: the same for every patient, so only the pack's
    # common placeholders (add_on_code, aoc_file, ...) may appear in it.
    why: str = Field(min_length=1)
    # Per note: the card's indicator, and further findings suppressed, when the rule raises the
    # finding with that note (e.g. a warning only where a confirmed source makes it one).
    note_indicators: dict[str, Indicator] = Field(default_factory=dict)
    note_suppresses: dict[str, list[str]] = Field(default_factory=dict)
    # Per note: further unconfirmed statements, shown only when the rule raises the finding with
    # that note (e.g. the 20680 replacement of the removal-only note).
    note_unconfirmed: dict[str, list[UnconfirmedItem]] = Field(default_factory=dict)
    source: CardSource
    suggestion: SuggestionTemplate | None = None
    override_reasons: list[OfferedOverrideReason] = Field(default_factory=list)

    def indicator_for(self, note: str | None) -> Indicator:
        """The card indicator when the finding is raised with ``note``."""
        return self.note_indicators.get(note or "", self.indicator)

    def suppressed_by(self, note: str | None) -> list[str]:
        """The findings this one suppresses when raised with ``note``."""
        return [*self.suppresses, *self.note_suppresses.get(note or "", [])]

    def unconfirmed_for(self, note: str | None) -> list[str]:
        """What the card says is UNCONFIRMED when the finding is raised with ``note``."""
        return [*self.unconfirmed, *self.note_unconfirmed.get(note or "", [])]


class TopicCoding(Strict):
    system: str
    code: str
    display: str


class FindingsFile(Strict):
    override_reason_system: str = Field(pattern=r"^https?://")
    card_topic: TopicCoding
    findings: dict[str, FindingTemplate]
    evidence_labels: dict[str, str]
    # The longest card detail, in characters, per hook (a workflow card is read in seconds).
    detail_limits: dict[str, Annotated[int, Field(ge=200)]]
    # The label of the card link to its explanation page.
    explanation_label: str = Field(min_length=1, max_length=80)


class PrefetchEntry(Strict):
    template: str
    required: bool = False


class ServiceDefinition(Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    hook: str
    title: str
    description: str
    usageRequirements: str
    prefetch: dict[str, PrefetchEntry] = Field(default_factory=dict)

    def discovery_entry(self) -> dict[str, Any]:
        """The service object of the discovery response."""
        entry: dict[str, Any] = {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "usageRequirements": self.usageRequirements,
        }
        if self.prefetch:
            entry["prefetch"] = {key: item.template for key, item in self.prefetch.items()}
        return entry


class ServicesFile(Strict):
    services: list[ServiceDefinition] = Field(min_length=1)


@dataclass(frozen=True)
class RulePack:
    """The validated rule pack, its patterns compiled once, and this worker's text readings."""

    directory: Path
    sources: dict[str, Citation]
    coding: CodingFile
    clinical_text: ClinicalTextFile
    findings: FindingsFile
    services: list[ServiceDefinition]
    payers: PayersFile
    questionnaire_template: dict[str, Any] = field(default_factory=dict)
    readings: RecentCache[object] = field(
        default_factory=lambda: RecentCache(READINGS_KEPT), compare=False, repr=False
    )

    def questionnaire(self, public_base_url: str) -> dict[str, Any]:
        """The documentation Questionnaire, its canonical URL on this server."""
        url = self.questionnaire_template["url"].replace(BASE_URL_PLACEHOLDER, public_base_url)
        return self.questionnaire_template | {"url": url}

    def service(self, service_id: str) -> ServiceDefinition | None:
        """The service with this id, if the pack defines it."""
        return next((svc for svc in self.services if svc.id == service_id), None)

    def discovery_document(self) -> dict[str, Any]:
        """The body of ``GET /cds-services``."""
        return {"services": [svc.discovery_entry() for svc in self.services]}

    @cached_property
    def patterns(self) -> CompiledPatterns:
        """Every text pattern of the pack, compiled."""
        return CompiledPatterns.from_pack(self.coding, self.payers)

    @cached_property
    def nlp(self) -> Language:
        """The clinical-text pipeline (medspaCy), built once, when the pack loads."""
        return build_pipeline(self.clinical_text)

    def template_variables(self) -> dict[str, str]:
        """Placeholder values shared by every card."""
        primaries = self.coding.primaries
        return {
            "add_on_code": self.coding.add_on.code,
            "aoc_file": primaries.file,
            "aoc_effective": primaries.effective,
            "aoc_edit_type": str(primaries.edit_type),
        }
