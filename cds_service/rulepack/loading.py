"""Loading the rule pack from ``cards/``: each YAML file validated by its model, with a line map so
that every problem names its file and line, then the cross-checks and the documentation
Questionnaire; and the JSON Schemas of the files.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from cds_service.paths import data_dir
from cds_service.rulepack.checks import cross_checks
from cds_service.rulepack.clinical_text import ClinicalTextFile
from cds_service.rulepack.contract import PackContract
from cds_service.rulepack.models import (
    BASE_URL_PLACEHOLDER,
    CodingFile,
    FindingsFile,
    RulePack,
    ServicesFile,
    SourcesFile,
)
from cds_service.rulepack.payer_models import PayersFile
from cds_service.rulepack.problems import PackProblem, RulePackError

PACK_FILES = (
    "sources.yaml",
    "coding.yaml",
    "clinical-text.yaml",
    "findings.yaml",
    "services.yaml",
    "payers.yaml",
)
QUESTIONNAIRE_FILE = "questionnaire-cpt20703-removal-documentation.json"
FILE_MODELS: dict[str, type[BaseModel]] = {
    "sources.yaml": SourcesFile,
    "coding.yaml": CodingFile,
    "clinical-text.yaml": ClinicalTextFile,
    "findings.yaml": FindingsFile,
    "services.yaml": ServicesFile,
    "payers.yaml": PayersFile,
}


def default_cards_dir() -> Path:
    """The rule pack the service loads when CDS_CARDS_DIR is not set."""
    return data_dir("cards")


def load_rule_pack(directory: Path, contract: PackContract) -> RulePack:
    """Load and validate the pack in ``directory`` against what the code declares (``contract``);
    raise :class:`RulePackError` on any problem."""
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
                problems.append(PackProblem.at(name, line_maps[name], loc, error["msg"]))
    if problems:
        raise RulePackError(problems)
    pack = RulePack(
        directory=directory,
        sources=documents["sources.yaml"].sources,
        coding=documents["coding.yaml"],
        clinical_text=documents["clinical-text.yaml"],
        findings=documents["findings.yaml"],
        services=documents["services.yaml"].services,
        payers=documents["payers.yaml"],
    )
    problems.extend(cross_checks(pack, line_maps, contract))
    questionnaire, questionnaire_problems = _load_questionnaire(directory, pack)
    problems.extend(questionnaire_problems)
    pack = replace(pack, questionnaire_template=questionnaire)
    problems.extend(_pipeline_problems(pack))  # on the pack returned: it keeps the pipeline
    if problems:
        raise RulePackError(problems)
    return pack


def _pipeline_problems(pack: RulePack) -> list[PackProblem]:
    """Build the clinical-text pipeline now, so that a bad rule fails the load, not a hook call."""
    try:
        _ = pack.nlp
    except (ValueError, TypeError, KeyError) as exc:
        return [
            PackProblem("clinical-text.yaml", 1, f"the medspaCy pipeline cannot be built: {exc}")
        ]
    return []


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


def export_json_schemas(contract: PackContract) -> dict[str, str]:
    """JSON Schema text for each pack file, as committed under ``cards/schema/``; the structured
    checks an editor may offer are the ones the code declares (``contract``)."""
    schemas = {name: model.model_json_schema() for name, model in FILE_MODELS.items()}
    structured = schemas["coding.yaml"]["$defs"]["EvidenceGroup"]["properties"]["structured"]
    structured["items"]["enum"] = list(contract.structured_checks)
    return {
        name.replace(".yaml", ".schema.json"): json.dumps(schema, indent=2, sort_keys=True) + "\n"
        for name, schema in schemas.items()
    }
