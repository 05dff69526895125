"""What a card's suggestion tells the biller to do, as a small record a coder can review.

The records in ``fhir_fixtures/expected-edits.json`` were drafted from the service's output and then
checked one by one against the coding facts and each fixture's story (its README row); from then on
they are the reference, and the tests compare the service's suggestions with them, through the pure
rules and through HTTP. This module computes the record of a suggested resource by comparing it
with the Claim the client sent, with nothing from ``cds_service`` (an oracle must not share code
with what it judges).

A Claim edit is ``{"claim": id, "added": [line], "removed": [line], "changed": [change]}``, where a
line is its sequence, CPT code, sorted modifiers, quantity, date of service and diagnosis and
care-team pointers, and a change names only the line fields that differ. Anything else that changes
(another Claim element, an item element outside those fields) is refused with an assertion: no
suggestion may touch what its card does not mention. A documentation Task is recorded with its
status, intent and code, whom it is for and what it points at, its Questionnaire input, its
description and the documentation elements that description asks for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
EDITS_FILE = ROOT / "fhir_fixtures" / "expected-edits.json"
EXPECTED_EDITS: dict[str, dict[str, Any]] = json.loads(EDITS_FILE.read_text())

LINE_FIELDS = ("code", "modifiers", "quantity", "date", "diagnosisSequence", "careTeamSequence")
# Item elements the line fields stand for; every other item element must stay as it was.
_VIEWED_ELEMENTS = {
    "sequence",
    "productOrService",
    "modifier",
    "quantity",
    "servicedDate",
    "servicedPeriod",
    "diagnosisSequence",
    "careTeamSequence",
}


def line_view(item: dict[str, Any]) -> dict[str, Any]:
    """The fields of a Claim item a coder reads: code, modifiers, units, date and pointers."""
    codings = item.get("productOrService", {}).get("coding", [])
    return {
        "sequence": item.get("sequence"),
        "code": codings[0].get("code") if codings else None,
        "modifiers": sorted(
            coding.get("code")
            for modifier in item.get("modifier", [])
            for coding in modifier.get("coding", [])
        ),
        "quantity": item.get("quantity", {}).get("value"),
        "date": item.get("servicedDate") or item.get("servicedPeriod"),
        "diagnosisSequence": item.get("diagnosisSequence", []),
        "careTeamSequence": item.get("careTeamSequence", []),
    }


def claim_edit_record(original: dict[str, Any], suggested: dict[str, Any]) -> dict[str, Any]:
    """Which lines the suggested Claim adds, removes or changes, compared with ``original``."""
    rest = {key: value for key, value in suggested.items() if key != "item"}
    assert rest == {key: value for key, value in original.items() if key != "item"}, (
        "the suggestion changed a Claim element other than its items"
    )
    before = {item["sequence"]: item for item in original.get("item", [])}
    after = {item["sequence"]: item for item in suggested.get("item", [])}
    assert len(after) == len(suggested.get("item", [])), "two suggested lines share a sequence"
    changed = []
    for sequence in sorted(before.keys() & after.keys()):
        old, new = before[sequence], after[sequence]
        for element in (old.keys() | new.keys()) - _VIEWED_ELEMENTS:
            assert old.get(element) == new.get(element), (sequence, element)
        old_view, new_view = line_view(old), line_view(new)
        fields = [name for name in LINE_FIELDS if old_view[name] != new_view[name]]
        if fields:
            changed.append(
                {
                    "sequence": sequence,
                    "from": {name: old_view[name] for name in fields},
                    "to": {name: new_view[name] for name in fields},
                }
            )
    return {
        "claim": suggested.get("id"),
        "added": [line_view(after[seq]) for seq in sorted(after.keys() - before.keys())],
        "removed": [line_view(before[seq]) for seq in sorted(before.keys() - after.keys())],
        "changed": changed,
    }


def task_record(task: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    """The documentation Task: its subject, focus, encounter, owner and the elements it asks for.

    ``labels`` maps each documentation key to its label; the asked-for keys are those whose label
    the Task's description names.
    """
    description = task.get("description", "")
    (code,) = task.get("code", {}).get("coding", [{}])
    (task_input,) = task.get("input", [{}])
    (input_type,) = task_input.get("type", {}).get("coding", [{}])
    return {
        "task": {
            "status": task.get("status"),
            "intent": task.get("intent"),
            "code": _coding_words(code),
            "for": task.get("for", {}).get("reference"),
            "focus": task.get("focus", {}).get("reference"),
            "encounter": task.get("encounter", {}).get("reference"),
            "owner": task.get("owner", {}).get("reference"),
            "input": {_coding_words(input_type): task_input.get("valueCanonical")},
            "description": description,
            "asks_for": sorted(key for key, label in labels.items() if label in description),
        }
    }


def _coding_words(coding: dict[str, Any]) -> str:
    return f"{coding.get('system')}|{coding.get('code')} ({coding.get('display')})"


def documentation_labels(pack: Any) -> dict[str, str]:
    """Each documentation key of the rule pack with its label (what a Task's description names)."""
    return {element.key: element.label for element in pack.coding.documentation}


def suggestion_record(
    action_type: str, resource: dict[str, Any], body: dict[str, Any], labels: dict[str, str]
) -> dict[str, Any]:
    """The record of one suggested action: a created Task, or an update of a Claim in ``body``."""
    if action_type == "create":
        return task_record(resource, labels)
    return claim_edit_record(sent_claims(body)[resource["id"]], resource)


def sent_claims(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every Claim the request carries (prefetch searches and draft orders), by id."""
    found: dict[str, dict[str, Any]] = {}

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if value.get("resourceType") == "Claim" and isinstance(value.get("id"), str):
                found[value["id"]] = value
            for child in value.values():
                walk(child)
        elif isinstance(value, list):
            for child in value:
                walk(child)

    walk(body.get("prefetch"))
    walk(body.get("context", {}).get("draftOrders"))
    return found


def describe(record: dict[str, Any] | None) -> str:
    """One line of plain words for a record, as the fixtures README writes it."""
    if record is None:
        return "no action"
    if "task" in record:
        return "Task for the surgeon asking for " + ", ".join(record["task"]["asks_for"])
    parts = [f"add line {line['sequence']}: {_line_words(line)}" for line in record["added"]]
    parts += [f"remove line {line['sequence']} ({line['code']})" for line in record["removed"]]
    for change in record["changed"]:
        moves = ", ".join(
            f"{name} {_value_words(change['from'][name])} → {_value_words(change['to'][name])}"
            for name in change["from"]
        )
        parts.append(f"line {change['sequence']}: {moves}")
    return "; ".join(parts)


def _line_words(line: dict[str, Any]) -> str:
    return (
        f"{line['code']} {_value_words(line['modifiers'])}, {line['quantity']} unit, "
        f"{line['date']}, dx {_value_words(line['diagnosisSequence'])}, "
        f"care team {_value_words(line['careTeamSequence'])}"
    )


def _value_words(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(item) for item in value) or "none"
    return str(value)
