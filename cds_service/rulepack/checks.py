"""The checks across the pack's files, run once each file is valid on its own: every source key
exists and no fact is surer than its sources, every pattern compiles, documentation elements and
card templates match what the code declares (``contract``), every summary stays under 140
characters, and the payers and services are consistent.

Each problem carries its file and line (``check-cards`` points at them), and they come in a fixed
order: coding facts, findings, payers, services.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cds_service.protocol.hooks import HOOKS, is_valid_prefetch_template
from cds_service.rulepack.contract import FindingContract, PackContract
from cds_service.rulepack.detail_fit import detail_problems
from cds_service.rulepack.explanation import explanation_variables
from cds_service.rulepack.models import (
    Citation,
    CodingFile,
    DocumentationElement,
    EvidenceGroup,
    FindingTemplate,
    RulePack,
    ScalarFact,
    ServiceDefinition,
    Sourced,
    TextPatterns,
)
from cds_service.rulepack.payer_models import PayerProfile, PayersFile
from cds_service.rulepack.problems import LineMap, PackProblem
from cds_service.rulepack.templates import (
    COMMON_VARIABLES,
    SUMMARY_LIMIT,
    fill_placeholders,
    literal_texts,
    placeholders,
    rendered_texts,
    sample_values,
    unfilled,
    worst_case_values,
)

Loc = tuple[str | int, ...]


@dataclass
class _Report:
    """The problems found so far, each located in its file by the file's line map."""

    line_maps: Mapping[str, LineMap]
    citations: Mapping[str, Citation]
    problems: list[PackProblem] = field(default_factory=list)

    def add(self, file: str, loc: Loc, message: str) -> None:
        self.problems.append(PackProblem.at(file, self.line_maps[file], loc, message))

    def check_sources(
        self, file: str, loc: Loc, keys: Iterable[str], tier: int | str | None = None
    ) -> None:
        """Known source keys, and a tier no better than the best of those sources."""
        known = [key for key in keys if key in self.citations]
        for key in keys:
            if key not in self.citations:
                message = f"unknown source key {key!r} (not in sources.yaml)"
                self.add(file, (*loc, "sources"), message)
        if isinstance(tier, int) and known:
            best = min(self.citations[key].tier for key in known)
            if tier < best:
                self.add(
                    file,
                    loc,
                    f"confidence tier {tier} is better than its best source's tier ({best}): "
                    "a fact is no surer than its sources",
                )

    def check_regex(self, file: str, loc: Loc, pattern: str) -> None:
        try:
            re.compile(pattern)
        except re.error as exc:
            self.add(file, loc, f"invalid regular expression: {exc}")


def cross_checks(
    pack: RulePack, line_maps: Mapping[str, LineMap], contract: PackContract
) -> list[PackProblem]:
    """Every problem across the files of ``pack``, located with their ``line_maps``."""
    report = _Report(line_maps, pack.sources)
    _check_fact_sources(report, pack.coding)
    _check_text_patterns(report, pack.coding)
    _check_documentation(report, pack.coding, contract)
    _check_findings(report, pack, contract)
    _check_payers(report, pack.payers)
    _check_services(report, pack.services)
    return report.problems


def _check_fact_sources(report: _Report, coding: CodingFile) -> None:
    """Every coding fact names known sources, and every single-value fact has its sources."""
    sourced: dict[Loc, Sourced] = {
        ("add_on",): coding.add_on,
        ("standalone_removal_code",): coding.standalone_removal_code,
        ("primaries",): coding.primaries,
        ("device_actions",): coding.device_actions,
        ("diagnosis_linkage",): coding.diagnosis_linkage,
        ("mue",): coding.mue,
        ("documented_site",): coding.documented_site,
        ("hardware_removal_codes",): coding.hardware_removal_codes,
    }
    sourced |= {("siblings", name): sibling for name, sibling in coding.siblings.items()}
    sourced |= {("fact_sources", name): fact for name, fact in coding.fact_sources.items()}
    for fact_loc, fact in sourced.items():
        report.check_sources("coding.yaml", fact_loc, fact.sources, fact.confidence)
    for name in typing.get_args(ScalarFact):
        if name not in coding.fact_sources:
            report.add("coding.yaml", ("fact_sources",), f"no sources and confidence for {name!r}")


def _check_text_patterns(report: _Report, coding: CodingFile) -> None:
    for field_name in TextPatterns.model_fields:
        for index, pattern in enumerate(getattr(coding.text_patterns, field_name)):
            report.check_regex("coding.yaml", ("text_patterns", field_name, index), pattern)
    site = coding.documented_site
    for kind, groups in (("sides", site.sides), ("bones", site.bones)):
        for name, patterns in groups.items():
            for index, pattern in enumerate(patterns):
                report.check_regex("coding.yaml", ("documented_site", kind, name, index), pattern)


def _check_documentation(report: _Report, coding: CodingFile, contract: PackContract) -> None:
    """Documentation elements: unique keys, known sources, evidence the code can check."""
    seen_keys: set[str] = set()
    for index, element in enumerate(coding.documentation):
        loc: Loc = ("documentation", index)
        if element.key in seen_keys:
            message = f"duplicate documentation key {element.key!r}"
            report.add("coding.yaml", (*loc, "key"), message)
        seen_keys.add(element.key)
        _check_documentation_element(report, loc, element, contract)


def _check_documentation_element(
    report: _Report, loc: Loc, element: DocumentationElement, contract: PackContract
) -> None:
    report.check_sources("coding.yaml", loc, element.sources, element.confidence)
    if not element.sources and element.confidence != "team":
        report.add("coding.yaml", (*loc, "sources"), "a sourced element needs source keys")
    for group_index, group in enumerate(element.requires):
        _check_evidence_group(report, (*loc, "requires", group_index), group, contract)


def _check_evidence_group(
    report: _Report, loc: Loc, group: EvidenceGroup, contract: PackContract
) -> None:
    """Not empty, structured checks the fact reader computes, text patterns that compile."""
    if not group.structured and not group.text:
        report.add("coding.yaml", loc, "empty evidence group")
    for check_index, check in enumerate(group.structured):
        if check not in contract.structured_checks:
            message = f"no structured check named {check!r}"
            report.add("coding.yaml", (*loc, "structured", check_index), message)
    for pattern_index, pattern in enumerate(group.text):
        report.check_regex("coding.yaml", (*loc, "text", pattern_index), pattern)


def _check_findings(report: _Report, pack: RulePack, contract: PackContract) -> None:
    """One card template per finding a rule raises, and each template as its rule declares it."""
    findings = pack.findings
    worst = worst_case_values(pack)
    declared = contract.findings
    for code in sorted(set(declared) - set(findings.findings)):
        report.add("findings.yaml", ("findings",), f"no card template for finding {code!r}")
    for code in sorted(set(findings.evidence_labels) ^ contract.evidence_kinds):
        message = f"evidence label set differs at {code!r}"
        report.add("findings.yaml", ("evidence_labels",), message)
    for code, template in findings.findings.items():
        loc: Loc = ("findings", code)
        if code not in declared:
            report.add("findings.yaml", loc, f"no rule raises finding {code!r}")
            continue
        _check_finding(
            report,
            loc,
            template,
            declared[code],
            worst,
            findings.findings,
            findings.detail_limits,
            explanation_variables(pack),
        )


def _check_finding(
    report: _Report,
    loc: Loc,
    template: FindingTemplate,
    rule: FindingContract,
    worst: Mapping[str, str],
    known_findings: Container[str],
    limits: Mapping[str, int],
    explained: Mapping[str, str],
) -> None:
    allowed = rule.variables | COMMON_VARIABLES
    for hook_name in template.hooks:
        if hook_name not in HOOKS:
            report.add("findings.yaml", (*loc, "hooks"), f"unknown hook {hook_name!r}")
    _check_placeholders(report, loc, template, allowed)
    _check_literal_texts(report, loc, template)
    _check_summary_length(report, loc, template, allowed, worst)
    _check_detail_length(report, loc, template, allowed, worst, limits)
    _check_why(report, loc, template, explained)
    _check_notes(report, loc, template, rule)
    if (template.suggestion is not None) != rule.suggestion:
        message = "suggestion template present/absent contrary to rule"
        report.add("findings.yaml", loc, message)
    source = template.source
    report.check_sources("findings.yaml", (*loc, "source"), source.sources, template.confidence)
    _check_suppressions(report, loc, template, known_findings)


def _check_placeholders(
    report: _Report, loc: Loc, template: FindingTemplate, allowed: frozenset[str]
) -> None:
    """Each filled text is a valid template that uses only the variables its rule fills."""
    for field_loc, text in rendered_texts(template, loc).items():
        try:
            used = placeholders(text)
        except ValueError as exc:
            report.add("findings.yaml", field_loc, f"bad template: {exc}")
            continue
        for name in sorted(used - allowed):
            message = f"placeholder {{{name}}} is not filled here"
            report.add("findings.yaml", field_loc, message)
        if used <= allowed and (left := unfilled(fill_placeholders(text, sample_values(allowed)))):
            report.add("findings.yaml", field_loc, f"renders with {left[0]} unfilled")


def _check_literal_texts(report: _Report, loc: Loc, template: FindingTemplate) -> None:
    """A text shown as written has nothing that reads like a placeholder."""
    for field_loc, text in literal_texts(template, loc).items():
        if left := unfilled(text):
            message = f"{left[0]} is shown as written: no placeholder"
            report.add("findings.yaml", field_loc, message)


def _check_summary_length(
    report: _Report,
    loc: Loc,
    template: FindingTemplate,
    allowed: frozenset[str],
    worst: Mapping[str, str],
) -> None:
    """The summary, with every placeholder at its longest, stays under the limit."""
    try:
        summary_names = placeholders(template.summary)
    except ValueError:
        summary_names = set()
    without_worst = sorted(summary_names - set(worst))
    for name in without_worst:
        report.add(
            "findings.yaml",
            (*loc, "summary"),
            f"placeholder {{{name}}} has no worst-case value (templates._WORST_CASE_VALUES)",
        )
    measurable = not without_worst and summary_names <= allowed
    if measurable and len(fill_placeholders(template.summary, worst)) >= SUMMARY_LIMIT:
        report.add("findings.yaml", (*loc, "summary"), "summary can reach 140 characters")


def _check_detail_length(
    report: _Report,
    loc: Loc,
    template: FindingTemplate,
    allowed: frozenset[str],
    worst: Mapping[str, str],
    limits: Mapping[str, int],
) -> None:
    """With each list cut to one item, the detail fits the limit of every hook it is shown on."""
    try:
        if not placeholders(template.detail) <= allowed:
            return  # reported by _check_placeholders
    except ValueError:
        return
    values = {**sample_values(allowed), **worst}
    for field_loc, message in detail_problems(template, values, allowed, limits):
        report.add("findings.yaml", (*loc, *field_loc), message)


def _check_why(
    report: _Report, loc: Loc, template: FindingTemplate, explained: Mapping[str, str]
) -> None:
    """The explanation uses only pack-wide placeholders: it is the same for every patient."""
    try:
        used = placeholders(template.why)
    except ValueError as exc:
        report.add("findings.yaml", (*loc, "why"), f"bad template: {exc}")
        return
    for name in sorted(used - set(explained)):
        message = f"placeholder {{{name}}} depends on the patient: not allowed in why"
        report.add("findings.yaml", (*loc, "why"), message)


def _check_notes(
    report: _Report, loc: Loc, template: FindingTemplate, rule: FindingContract
) -> None:
    """The notes are the ones the rule raises, and per-note settings name one of them."""
    for name in sorted(rule.notes ^ set(template.notes)):
        report.add("findings.yaml", (*loc, "notes"), f"note set differs at {name!r}")
    for field_name in ("note_indicators", "note_suppresses", "note_unconfirmed"):
        for name in sorted(set(getattr(template, field_name)) - set(template.notes)):
            report.add("findings.yaml", (*loc, field_name, name), f"no note named {name!r}")


def _check_suppressions(
    report: _Report, loc: Loc, template: FindingTemplate, known_findings: Container[str]
) -> None:
    """Every suppressed finding, always or with a note, is a finding of the pack."""
    suppressed_lists: dict[tuple[str, ...], list[str]] = {("suppresses",): template.suppresses}
    suppressed_lists |= {
        ("note_suppresses", name): codes for name, codes in template.note_suppresses.items()
    }
    for suppress_loc, codes in suppressed_lists.items():
        for suppressed in codes:
            if suppressed not in known_findings:
                message = f"unknown finding {suppressed!r}"
                report.add("findings.yaml", (*loc, *suppress_loc), message)


def _check_payers(report: _Report, payers: PayersFile) -> None:
    """A ``general`` fallback, unique keys, and each profile's patterns and sources."""
    payer_keys = [profile.key for profile in payers.profiles]
    if "general" not in payer_keys:
        report.add("payers.yaml", ("profiles",), "a 'general' fallback profile is required")
    for index, profile in enumerate(payers.profiles):
        loc: Loc = ("profiles", index)
        if payer_keys.count(profile.key) > 1:
            report.add("payers.yaml", (*loc, "key"), f"duplicate payer key {profile.key!r}")
        _check_payer_profile(report, loc, profile)


def _check_payer_profile(report: _Report, loc: Loc, profile: PayerProfile) -> None:
    patterns: dict[Loc, str] = {
        ("names", index): pattern for index, pattern in enumerate(profile.names)
    }
    for index, matcher in enumerate(profile.identifiers):
        patterns[("identifiers", index, "system")] = matcher.system
        patterns[("identifiers", index, "value")] = matcher.value
    for pattern_loc, pattern in patterns.items():
        report.check_regex("payers.yaml", (*loc, *pattern_loc), pattern)
    for note_index, note in enumerate(profile.notes):
        report.check_sources("payers.yaml", (*loc, "notes", note_index), note.sources, note.tier)
    billing = profile.add_on_billing
    if billing is not None:
        billing_loc = (*loc, "add_on_billing")
        report.check_sources("payers.yaml", billing_loc, billing.sources, billing.tier)


def _check_services(report: _Report, services: Sequence[ServiceDefinition]) -> None:
    """Unique service ids, each on a supported hook with valid prefetch templates."""
    seen_ids: set[str] = set()
    for index, service in enumerate(services):
        loc: Loc = ("services", index)
        if service.id in seen_ids:
            report.add("services.yaml", (*loc, "id"), f"duplicate service id {service.id!r}")
        seen_ids.add(service.id)
        _check_service_hook(report, loc, service)


def _check_service_hook(report: _Report, loc: Loc, service: ServiceDefinition) -> None:
    hook = HOOKS.get(service.hook)
    if hook is None:
        report.add("services.yaml", (*loc, "hook"), f"unsupported hook {service.hook!r}")
        return
    for key, entry in service.prefetch.items():
        if not is_valid_prefetch_template(entry.template, hook):
            report.add(
                "services.yaml",
                (*loc, "prefetch", key),
                "template uses a token that is not a CDS Hooks 2.0 prefetch token "
                f"for {service.hook}",
            )
