"""The rule pack: coding knowledge and card templates kept as data in ``cards/``.

The pack is four YAML files, each validated by a pydantic model (``extra="forbid"`` so that a typo
fails loudly) and then checked across files: every source key exists, every pattern compiles, every
card template uses only the placeholders its rule fills, every summary stays under 140 characters.
Errors carry the file and line, so ``cds-service check-cards`` can point at them.
"""

from __future__ import annotations

import json
import re
import string
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from cds_service.paths import data_dir
from cds_service.protocol.hooks import HOOKS, is_valid_prefetch_template

Indicator = Literal["info", "warning", "critical"]
StructuredEvidence = Literal[
    "removed-device-typed",
    "removal-site-bone",
    "removal-site-laterality",
    "claim-laterality-modifier",
    "primary-procedure-documented",
    "removal-reason-coded",
    "focal-device-removal",
    "diagnosis-linkage-code",
    "procedure-complication",
]
PACK_FILES = ("sources.yaml", "coding.yaml", "findings.yaml", "services.yaml", "payers.yaml")
QUESTIONNAIRE_FILE = "questionnaire-cpt20703-removal-documentation.json"
BASE_URL_PLACEHOLDER = "{public_base_url}"
SUMMARY_LIMIT = 140
CPT_CODE = re.compile(r"^\d{5}$")  # CPT Category I
ICD10CM_PREFIX = r"^[A-TV-Z]\d[0-9A-Z](\.[0-9A-Z]{0,4})?$"
# A whole ICD-10-CM code, with or without its dot (claims often carry "T84622A" for "T84.622A").
ICD10CM_CODE = re.compile(r"^[A-TV-Z]\d[0-9A-Z]\.?[0-9A-Z]{0,4}$")
Tier = Literal[1, 2, 3]
# How a card names the anatomic tier of a removed drug device that is not intramedullary.
TIER_LABELS = {"soft-tissue": "in deep soft tissue", "intra-articular": "in a joint"}
# A summary lists at most this many items of a list; the rest are counted ("and 7 more").
SUMMARY_LIST_ITEMS = 2


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Strict):
    label: str = Field(min_length=1)
    url: str = Field(pattern=r"^https?://")
    tier: Literal[1, 2, 3]
    note: str | None = None


class SourcesFile(_Strict):
    sources: dict[str, Source]


class Sourced(_Strict):
    """A coding fact: it names at least one source key and the confidence tier behind it.

    ``confidence`` is the best tier of the sources that support the fact (as the facts file
    grades them); ``unconfirmed`` says what those sources do not confirm.
    """

    sources: list[str] = Field(min_length=1)
    confidence: Tier
    unconfirmed: str | None = None


class CodedConcept(_Strict):
    code: str = Field(pattern=CPT_CODE.pattern)
    display: str


class SourcedConcept(CodedConcept, Sourced):
    short_descriptor: str | None = None


class PrimaryCode(_Strict):
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


class Coding(_Strict):
    system: str
    code: str
    display: str | None = None


class DiagnosisLinkage(Sourced):
    icd10cm_prefixes: list[Annotated[str, Field(pattern=ICD10CM_PREFIX)]] = Field(min_length=1)
    fracture_prefix: str
    nonunion_seventh_characters: list[str]
    z47_2_excludes: list[Annotated[str, Field(pattern=ICD10CM_PREFIX)]]


class TextPatterns(_Strict):
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


# Single-value coding facts of coding.yaml; each needs an entry in its ``fact_sources``.
ScalarFact = Literal[
    "insertion_code",
    "family_effective",
    "hardware_removal_code",
    "laterality_modifiers",
    "assistant_modifiers",
    "multiple_procedure_modifier",
    "invalid_modifiers",
]


class EvidenceGroup(_Strict):
    """Satisfied when any structured check holds or any text pattern matches."""

    structured: list[StructuredEvidence] = Field(default_factory=list)
    text: list[str] = Field(default_factory=list)


class DocumentationElement(_Strict):
    key: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    label: str
    why: str
    sources: list[str]
    confidence: Literal[1, 2, 3, "team"]
    applies_when: Literal["always", "assistant-modifier-on-claim"] = "always"
    requires: list[EvidenceGroup] = Field(min_length=1)


class CodingFile(_Strict):
    systems: dict[Literal["cpt", "icd10cm", "snomed", "loinc", "hcpcs"], str]
    add_on: SourcedConcept
    insertion_code: str = Field(pattern=CPT_CODE.pattern)
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
    fact_sources: dict[ScalarFact, Sourced]

    @cached_property
    def primary_codes(self) -> dict[str, str]:
        """Listed primary CPT code -> CMS short descriptor."""
        return {primary.code: primary.descriptor for primary in self.primaries.codes}


class CardSource(_Strict):
    label: str
    url: str = Field(pattern=r"^https://")
    sources: list[str] = Field(min_length=1)


class SuggestionTemplate(_Strict):
    label: str
    action_description: str


class OverrideReason(_Strict):
    code: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    display: str


UnconfirmedItem = Annotated[str, Field(min_length=1)]


class FindingTemplate(_Strict):
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
    detail: str
    notes: dict[str, str] = Field(default_factory=dict)
    # Per note: the card's indicator, and further findings suppressed, when the rule raises the
    # finding with that note (e.g. a warning only where a confirmed source makes it one).
    note_indicators: dict[str, Indicator] = Field(default_factory=dict)
    note_suppresses: dict[str, list[str]] = Field(default_factory=dict)
    # Per note: further unconfirmed statements, shown only when the rule raises the finding with
    # that note (e.g. the 20680 replacement of the removal-only note).
    note_unconfirmed: dict[str, list[UnconfirmedItem]] = Field(default_factory=dict)
    source: CardSource
    suggestion: SuggestionTemplate | None = None
    override_reasons: list[OverrideReason] = Field(default_factory=list)

    def indicator_for(self, note: str | None) -> Indicator:
        """The card indicator when the finding is raised with ``note``."""
        return self.note_indicators.get(note or "", self.indicator)

    def suppressed_by(self, note: str | None) -> list[str]:
        """The findings this one suppresses when raised with ``note``."""
        return [*self.suppresses, *self.note_suppresses.get(note or "", [])]

    def unconfirmed_for(self, note: str | None) -> list[str]:
        """What the card says is UNCONFIRMED when the finding is raised with ``note``."""
        return [*self.unconfirmed, *self.note_unconfirmed.get(note or "", [])]


class TopicCoding(_Strict):
    system: str
    code: str
    display: str


class FindingsFile(_Strict):
    override_reason_system: str = Field(pattern=r"^https?://")
    card_topic: TopicCoding
    findings: dict[str, FindingTemplate]
    evidence_labels: dict[str, str]


class PrefetchEntry(_Strict):
    template: str
    required: bool = False


class ServiceDefinition(_Strict):
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


class ServicesFile(_Strict):
    services: list[ServiceDefinition] = Field(min_length=1)


class PayerNote(_Strict):
    text: str
    sources: list[str] = Field(min_length=1)
    read: str = Field(pattern=r"^\d{4}-\d{2}$")
    tier: Tier


class IdentifierMatcher(_Strict):
    """An Identifier pattern: ``system`` and ``value`` are regular expressions, fully matched."""

    system: str
    value: str


class AddOnBilling(_Strict):
    """What the payer's checked policy says about billing an add-on with its primary."""

    same_claim: Literal["required", "not-stated"]
    rendering_provider: Literal["same-individual", "same-provider-or-group-tin", "not-stated"]
    sources: list[str] = Field(min_length=1)
    read: str = Field(pattern=r"^\d{4}-\d{2}$")
    tier: Tier


class PayerProfile(_Strict):
    key: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    label: str
    names: list[str]
    identifiers: list[IdentifierMatcher] = Field(default_factory=list)
    commercial: bool
    add_on_billing: AddOnBilling | None = None
    notes: list[PayerNote] = Field(min_length=1)


class PayersFile(_Strict):
    profiles: list[PayerProfile] = Field(min_length=1)

    def profile(self, key: str) -> PayerProfile:
        """The profile with this key (``general`` when there is none)."""
        return next(
            (item for item in self.profiles if item.key == key),
            next(item for item in self.profiles if item.key == "general"),
        )


FILE_MODELS: dict[str, type[BaseModel]] = {
    "sources.yaml": SourcesFile,
    "coding.yaml": CodingFile,
    "findings.yaml": FindingsFile,
    "services.yaml": ServicesFile,
    "payers.yaml": PayersFile,
}


@dataclass(frozen=True)
class PackProblem:
    """One error in the rule pack, located in its file."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class RulePackError(Exception):
    """The rule pack is missing or invalid; carries every problem found."""

    def __init__(self, problems: Sequence[PackProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


# Placeholders each finding's rule fills (see rules/findings.py); templates may use a subset.
COMMON_VARIABLES = frozenset({"add_on_code", "aoc_file", "aoc_effective", "aoc_edit_type"})
FINDING_VARIABLES: dict[str, frozenset[str]] = {
    "add-on-suggested": frozenset(
        {"primary_code", "primary_descriptor", "evidence", "note", "line_sequence"}
    ),
    "documentation-missing": frozenset({"missing_count", "missing_checklist"}),
    "orphan-add-on": frozenset({"note", "primary_code", "primary_descriptor", "payer_label"}),
    "planned-removal-reminder": frozenset(
        {"primary_code", "primary_descriptor", "evidence", "documentation_checklist"}
    ),
}
FINDING_VARIABLES |= {
    "units-exceed-mue": frozenset({"mue_units", "mue_mai", "mue_file"}),
    "modifier-51-on-add-on": frozenset(),
    "invalid-modifier": frozenset({"modifiers"}),
    "assistant-documentation": frozenset({"modifiers", "note"}),
    "wrong-tier": frozenset({"tier_label", "sibling_code", "sibling_display", "note"}),
    "insertion-instead-of-removal": frozenset(
        {"billed_code", "right_code", "action_label", "other_action", "note"}
    ),
    "insertion-with-removal": frozenset(),
    "duplicate-hardware-removal": frozenset(),
    "primary-not-listed": frozenset({"payer_label", "note"}),
    "prefabricated-device": frozenset({"note"}),
    "diagnosis-conflict": frozenset({"conflicting", "conflicting_all"}),
    "diagnosis-unsupported": frozenset({"note"}),
    "provider-mismatch": frozenset({"primary_code", "note", "payer_label"}),
}
FINDING_NOTES: dict[str, frozenset[str]] = {
    "add-on-suggested": frozenset({"claim-updated", "no-claim", "primary-not-on-claim"}),
    "orphan-add-on": frozenset(
        {
            "removal-only",
            "primary-not-on-claim",
            "other-procedures-medicare",
            "other-procedures-commercial",
        }
    ),
    "assistant-documentation": frozenset({"role-documented", "role-missing"}),
    "wrong-tier": frozenset({"billed", "not-billed"}),
    "insertion-instead-of-removal": frozenset({"insertion-code-billed", "removal-code-billed"}),
    "primary-not-listed": frozenset({"medicare", "commercial"}),
    "prefabricated-device": frozenset({"billed", "not-billed"}),
    "diagnosis-unsupported": frozenset({"fixable", "missing"}),
    "provider-mismatch": frozenset(
        {"care-team", "care-team-group-tin", "other-claim", "other-claim-required"}
    ),
}
FINDINGS_WITH_SUGGESTION = frozenset(
    {
        "add-on-suggested",
        "documentation-missing",
        "orphan-add-on",
        "units-exceed-mue",
        "modifier-51-on-add-on",
        "invalid-modifier",
        "wrong-tier",
        "insertion-instead-of-removal",
        "duplicate-hardware-removal",
        "prefabricated-device",
        "diagnosis-unsupported",
        "provider-mismatch",
    }
)
EVIDENCE_KINDS = frozenset(
    {
        "procedure-coded-20703",
        "focal-device-removal",
        "procedure-text-removal",
        "active-device",
        "prior-insertion",
    }
)


def capped_list(items: Sequence[str], shown: int = SUMMARY_LIST_ITEMS) -> str:
    """``items`` joined for a summary: the first ``shown``, then how many more ("and 7 more")."""
    if len(items) <= shown:
        return ", ".join(items)
    more = len(items) - shown
    return f"{', '.join(items[:shown])} and {more if more < 1000 else '999+'} more"


# Longest values a summary placeholder can take, used to prove summaries stay under the limit
# (values that depend on the pack are added in _worst_case_values). A placeholder used in a
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
}


@dataclass(frozen=True)
class RulePack:
    """The validated rule pack, with its patterns compiled once."""

    directory: Path
    sources: dict[str, Source]
    coding: CodingFile
    findings: FindingsFile
    services: list[ServiceDefinition]
    payers: PayersFile
    questionnaire_template: dict[str, Any] = field(default_factory=dict)

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

    def template_variables(self) -> dict[str, str]:
        """Placeholder values shared by every card."""
        primaries = self.coding.primaries
        return {
            "add_on_code": self.coding.add_on.code,
            "aoc_file": primaries.file,
            "aoc_effective": primaries.effective,
            "aoc_edit_type": str(primaries.edit_type),
        }


@dataclass(frozen=True)
class CompiledPatterns:
    """Compiled regular expressions for the text evidence the rules look for."""

    removal_verb: re.Pattern[str]
    insertion_verb: re.Pattern[str]
    drug_carrier: re.Pattern[str]
    device_form: re.Pattern[str]
    intramedullary_site: re.Pattern[str]
    bone: re.Pattern[str]
    laterality: re.Pattern[str]
    soft_tissue_site: re.Pattern[str]
    intra_articular_site: re.Pattern[str]
    prefabricated: re.Pattern[str]
    documentation: dict[str, tuple[re.Pattern[str] | None, ...]]
    payers: tuple[PayerMatcher, ...]

    @classmethod
    def from_pack(cls, coding: CodingFile, payers: PayersFile) -> CompiledPatterns:
        text = coding.text_patterns
        documentation = {
            element.key: tuple(
                _any_of(group.text) if group.text else None for group in element.requires
            )
            for element in coding.documentation
        }
        return cls(
            removal_verb=_any_of(text.removal_verb),
            insertion_verb=_any_of(text.insertion_verb),
            drug_carrier=_any_of(text.drug_carrier),
            device_form=_any_of(text.device_form),
            intramedullary_site=_any_of(text.intramedullary_site),
            bone=_any_of(text.bone),
            laterality=_any_of(text.laterality),
            soft_tissue_site=_any_of(text.soft_tissue_site),
            intra_articular_site=_any_of(text.intra_articular_site),
            prefabricated=_any_of(text.prefabricated),
            documentation=documentation,
            payers=tuple(
                PayerMatcher(
                    key=profile.key,
                    names=_any_of(profile.names) if profile.names else None,
                    identifiers=tuple(
                        (re.compile(matcher.system), re.compile(matcher.value))
                        for matcher in profile.identifiers
                    ),
                )
                for profile in payers.profiles
                if profile.names or profile.identifiers
            ),
        )


@dataclass(frozen=True)
class PayerMatcher:
    """How one payer profile is recognised: names (searched) and identifiers (fully matched)."""

    key: str
    names: re.Pattern[str] | None
    identifiers: tuple[tuple[re.Pattern[str], re.Pattern[str]], ...] = ()

    def matches_name(self, text: str) -> bool:
        return self.names is not None and self.names.search(text) is not None

    def matches_identifier(self, system: str, value: str) -> bool:
        return any(
            system_re.fullmatch(system) is not None and value_re.fullmatch(value) is not None
            for system_re, value_re in self.identifiers
        )


def _any_of(patterns: Iterable[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{pattern})" for pattern in patterns), re.IGNORECASE)


def default_cards_dir() -> Path:
    """The rule pack the service loads when CDS_CARDS_DIR is not set."""
    return data_dir("cards")


def load_rule_pack(directory: Path) -> RulePack:
    """Load and validate the pack in ``directory``; raise :class:`RulePackError` on any problem."""
    problems: list[PackProblem] = []
    documents: dict[str, Any] = {}
    line_maps: dict[str, dict[tuple[str | int, ...], int]] = {}
    for name in PACK_FILES:
        path = directory / name
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            problems.append(PackProblem(name, 0, f"cannot read the file ({exc.strerror})"))
            continue
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else 0
            problems.append(PackProblem(name, line, f"not valid YAML: {exc}"))
            continue
        line_maps[name] = _line_map(node)
        try:
            documents[name] = TypeAdapter(FILE_MODELS[name]).validate_python(data)
        except ValidationError as exc:
            for error in exc.errors(include_input=False, include_url=False):
                loc = tuple(error["loc"])
                problems.append(
                    PackProblem(name, _line_of(line_maps[name], loc), _describe(loc, error["msg"]))
                )
    if problems:
        raise RulePackError(problems)
    pack = RulePack(
        directory=directory,
        sources=documents["sources.yaml"].sources,
        coding=documents["coding.yaml"],
        findings=documents["findings.yaml"],
        services=documents["services.yaml"].services,
        payers=documents["payers.yaml"],
    )
    problems.extend(_cross_checks(pack, line_maps))
    questionnaire, questionnaire_problems = _load_questionnaire(directory, pack)
    problems.extend(questionnaire_problems)
    if problems:
        raise RulePackError(problems)
    return replace(pack, questionnaire_template=questionnaire)


def _load_questionnaire(
    directory: Path, pack: RulePack
) -> tuple[dict[str, Any], list[PackProblem]]:
    """The Questionnaire of documentation elements: valid R4, one item per documentation key."""
    from fhir.resources.R4B.questionnaire import Questionnaire

    name = QUESTIONNAIRE_FILE
    try:
        data = json.loads((directory / name).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return {}, [PackProblem(name, 0, f"cannot read the Questionnaire ({exc})")]
    problems: list[PackProblem] = []
    try:
        url = str(data.get("url", ""))
        Questionnaire.model_validate(data | {"url": url.replace(BASE_URL_PLACEHOLDER, "https://x")})
    except (ValidationError, ValueError, TypeError) as exc:
        problems.append(PackProblem(name, 1, f"not a valid R4 Questionnaire: {str(exc)[:200]}"))
        return {}, problems
    if not url.startswith(BASE_URL_PLACEHOLDER + "/questionnaires/"):
        problems.append(PackProblem(name, 1, "url must be {public_base_url}/questionnaires/<id>"))
    keys = {element.key for element in pack.coding.documentation}
    link_ids = {item.get("linkId") for item in data.get("item", [])}
    if link_ids != keys:
        problems.append(PackProblem(name, 1, "items must be exactly the documentation keys"))
    return data, problems


def _describe(loc: tuple[str | int, ...], message: str) -> str:
    path = ".".join(str(part) for part in loc) or "(top level)"
    return f"{path}: {message}"


def _line_map(node: yaml.Node | None) -> dict[tuple[str | int, ...], int]:
    """Map every path in a YAML document to the line where its value starts (1-based)."""
    lines: dict[tuple[str | int, ...], int] = {}

    def walk(current: yaml.Node, path: tuple[str | int, ...]) -> None:
        lines[path] = current.start_mark.line + 1
        if isinstance(current, yaml.MappingNode):
            for key_node, value_node in current.value:
                key = key_node.value
                lines[(*path, key)] = key_node.start_mark.line + 1
                walk(value_node, (*path, key))
                lines[(*path, key)] = key_node.start_mark.line + 1
        elif isinstance(current, yaml.SequenceNode):
            for index, item in enumerate(current.value):
                walk(item, (*path, index))

    if node is not None:
        walk(node, ())
    return lines


def _line_of(lines: Mapping[tuple[str | int, ...], int], loc: Sequence[str | int]) -> int:
    """The line of the deepest known prefix of ``loc``."""
    for end in range(len(loc), -1, -1):
        line = lines.get(tuple(loc[:end]))
        if line is not None:
            return line
    return 1


def _cross_checks(
    pack: RulePack, line_maps: Mapping[str, Mapping[tuple[str | int, ...], int]]
) -> list[PackProblem]:
    problems: list[PackProblem] = []

    def problem(file: str, loc: tuple[str | int, ...], message: str) -> None:
        problems.append(PackProblem(file, _line_of(line_maps[file], loc), _describe(loc, message)))

    def check_sources(
        file: str, loc: tuple[str | int, ...], keys: Iterable[str], tier: int | str | None = None
    ) -> None:
        """Known source keys, and a tier no better than the best of those sources."""
        known = [key for key in keys if key in pack.sources]
        for key in keys:
            if key not in pack.sources:
                message = f"unknown source key {key!r} (not in sources.yaml)"
                problem(file, (*loc, "sources"), message)
        if isinstance(tier, int) and known:
            best = min(pack.sources[key].tier for key in known)
            if tier < best:
                problem(
                    file,
                    loc,
                    f"confidence tier {tier} is better than its best source's tier ({best}): "
                    "a fact is no surer than its sources",
                )

    coding = pack.coding
    sourced: dict[tuple[str | int, ...], Sourced] = {
        ("add_on",): coding.add_on,
        ("standalone_removal_code",): coding.standalone_removal_code,
        ("primaries",): coding.primaries,
        ("device_actions",): coding.device_actions,
        ("diagnosis_linkage",): coding.diagnosis_linkage,
        ("mue",): coding.mue,
    }
    sourced |= {("siblings", name): sibling for name, sibling in coding.siblings.items()}
    sourced |= {("fact_sources", name): fact for name, fact in coding.fact_sources.items()}
    for fact_loc, fact in sourced.items():
        check_sources("coding.yaml", fact_loc, fact.sources, fact.confidence)
    for name in typing.get_args(ScalarFact):
        if name not in coding.fact_sources:
            problem("coding.yaml", ("fact_sources",), f"no sources and confidence for {name!r}")
    for field_name in TextPatterns.model_fields:
        for index, pattern in enumerate(getattr(coding.text_patterns, field_name)):
            _check_regex(pattern, ("text_patterns", field_name, index), problem)
    seen_keys: set[str] = set()
    for index, element in enumerate(coding.documentation):
        loc: tuple[str | int, ...] = ("documentation", index)
        if element.key in seen_keys:
            problem("coding.yaml", (*loc, "key"), f"duplicate documentation key {element.key!r}")
        seen_keys.add(element.key)
        check_sources("coding.yaml", loc, element.sources, element.confidence)
        if not element.sources and element.confidence != "team":
            problem("coding.yaml", (*loc, "sources"), "a sourced element needs source keys")
        for group_index, group in enumerate(element.requires):
            if not group.structured and not group.text:
                problem("coding.yaml", (*loc, "requires", group_index), "empty evidence group")
            for pattern_index, pattern in enumerate(group.text):
                _check_regex(
                    pattern, (*loc, "requires", group_index, "text", pattern_index), problem
                )

    findings = pack.findings
    worst = _worst_case_values(pack)
    for code in sorted(set(FINDING_VARIABLES) - set(findings.findings)):
        problem("findings.yaml", ("findings",), f"no card template for finding {code!r}")
    for code in sorted(set(findings.evidence_labels) ^ EVIDENCE_KINDS):
        problem("findings.yaml", ("evidence_labels",), f"evidence label set differs at {code!r}")
    for code, template in findings.findings.items():
        loc = ("findings", code)
        if code not in FINDING_VARIABLES:
            problem("findings.yaml", loc, f"no rule raises finding {code!r}")
            continue
        allowed = FINDING_VARIABLES[code] | COMMON_VARIABLES
        for hook_name in template.hooks:
            if hook_name not in HOOKS:
                problem("findings.yaml", (*loc, "hooks"), f"unknown hook {hook_name!r}")
        for field_loc, text in _rendered_texts(template, loc).items():
            try:
                used = _placeholders(text)
            except ValueError as exc:
                problem("findings.yaml", field_loc, f"bad template: {exc}")
                continue
            for name in sorted(used - allowed):
                problem("findings.yaml", field_loc, f"placeholder {{{name}}} is not filled here")
            if used <= allowed and (left := _unfilled(_render(text, _sample_values(allowed)))):
                problem("findings.yaml", field_loc, f"renders with {left[0]} unfilled")
        for field_loc, text in _literal_texts(template, loc).items():
            if left := _unfilled(text):
                message = f"{left[0]} is shown as written: no placeholder"
                problem("findings.yaml", field_loc, message)
        try:
            summary_names = _placeholders(template.summary)
        except ValueError:
            summary_names = set()
        without_worst = sorted(summary_names - set(worst))
        for name in without_worst:
            problem(
                "findings.yaml",
                (*loc, "summary"),
                f"placeholder {{{name}}} has no worst-case value (rule_pack._WORST_CASE_VALUES)",
            )
        measurable = not without_worst and summary_names <= allowed
        if measurable and len(_render(template.summary, worst)) >= SUMMARY_LIMIT:
            problem("findings.yaml", (*loc, "summary"), "summary can reach 140 characters")
        expected_notes = FINDING_NOTES.get(code, frozenset())
        for name in sorted(expected_notes ^ set(template.notes)):
            problem("findings.yaml", (*loc, "notes"), f"note set differs at {name!r}")
        for field_name in ("note_indicators", "note_suppresses", "note_unconfirmed"):
            for name in sorted(set(getattr(template, field_name)) - set(template.notes)):
                problem("findings.yaml", (*loc, field_name, name), f"no note named {name!r}")
        if (template.suggestion is not None) != (code in FINDINGS_WITH_SUGGESTION):
            problem("findings.yaml", loc, "suggestion template present/absent contrary to rule")
        check_sources(
            "findings.yaml", (*loc, "source"), template.source.sources, template.confidence
        )
        suppressed_lists: dict[tuple[str, ...], list[str]] = {("suppresses",): template.suppresses}
        suppressed_lists |= {
            ("note_suppresses", name): codes for name, codes in template.note_suppresses.items()
        }
        for suppress_loc, codes in suppressed_lists.items():
            for suppressed in codes:
                if suppressed not in findings.findings:
                    problem(
                        "findings.yaml", (*loc, *suppress_loc), f"unknown finding {suppressed!r}"
                    )

    payer_keys = [profile.key for profile in pack.payers.profiles]
    if "general" not in payer_keys:
        problem("payers.yaml", ("profiles",), "a 'general' fallback profile is required")
    for index, profile in enumerate(pack.payers.profiles):
        loc = ("profiles", index)
        if payer_keys.count(profile.key) > 1:
            problem("payers.yaml", (*loc, "key"), f"duplicate payer key {profile.key!r}")
        patterns: dict[tuple[str | int, ...], str] = {
            ("names", index): pattern for index, pattern in enumerate(profile.names)
        }
        for index, matcher in enumerate(profile.identifiers):
            patterns[("identifiers", index, "system")] = matcher.system
            patterns[("identifiers", index, "value")] = matcher.value
        for pattern_loc, pattern in patterns.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                problem("payers.yaml", (*loc, *pattern_loc), f"invalid regular expression: {exc}")
        for note_index, note in enumerate(profile.notes):
            check_sources("payers.yaml", (*loc, "notes", note_index), note.sources, note.tier)
        billing = profile.add_on_billing
        if billing is not None:
            check_sources("payers.yaml", (*loc, "add_on_billing"), billing.sources, billing.tier)

    seen_ids: set[str] = set()
    for index, service in enumerate(pack.services):
        loc = ("services", index)
        if service.id in seen_ids:
            problem("services.yaml", (*loc, "id"), f"duplicate service id {service.id!r}")
        seen_ids.add(service.id)
        hook = HOOKS.get(service.hook)
        if hook is None:
            problem("services.yaml", (*loc, "hook"), f"unsupported hook {service.hook!r}")
            continue
        for key, entry in service.prefetch.items():
            if not is_valid_prefetch_template(entry.template, hook):
                problem(
                    "services.yaml",
                    (*loc, "prefetch", key),
                    "template uses a token that is not a CDS Hooks 2.0 prefetch token "
                    f"for {service.hook}",
                )
    return problems


def _rendered_texts(
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


def _literal_texts(
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


_UNFILLED = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")


def _unfilled(text: str) -> list[str]:
    """Placeholders such as ``{sibling_code}`` that a reader would see as written."""
    return _UNFILLED.findall(text)


def _sample_values(names: Iterable[str]) -> dict[str, str]:
    """A plain value for each declared variable, to render a template the way a rule would."""
    return {name: f"value-of-{name}" for name in names}


def _worst_case_values(pack: RulePack) -> dict[str, str]:
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


def _check_regex(pattern: str, loc: tuple[str | int, ...], problem: Any) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        problem("coding.yaml", loc, f"invalid regular expression: {exc}")


def _placeholders(text: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}


def _render(text: str, values: Mapping[str, str]) -> str:
    return text.format_map(values)


def render_template(text: str, values: Mapping[str, str]) -> str:
    """Fill a card template; the pack check guarantees every placeholder has a value."""
    return _render(text, values).strip()


def export_json_schemas() -> dict[str, str]:
    """JSON Schema text for each pack file, as committed under ``cards/schema/``."""
    return {
        name.replace(".yaml", ".schema.json"): json.dumps(
            model.model_json_schema(), indent=2, sort_keys=True
        )
        + "\n"
        for name, model in FILE_MODELS.items()
    }
