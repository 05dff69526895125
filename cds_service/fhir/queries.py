"""What to ask a FHIR server: prefetch templates filled in, and the reads of followed references.

Pure string work, no I/O: :mod:`cds_service.fhir.client` runs the queries.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote


def render_prefetch_template(template: str, context: Mapping[str, Any]) -> str | None:
    """A prefetch template with its tokens replaced, or None when a token has no value.

    Values are percent-encoded, so a context value cannot add query parameters or path segments.
    """
    values: dict[str, str] = {
        f"context.{name}": value for name, value in context.items() if isinstance(value, str)
    }
    user = context.get("userId")
    if isinstance(user, str) and "/" in user:
        user_type, user_id = user.split("/", 1)
        token_name = {
            "Practitioner": "userPractitionerId",
            "PractitionerRole": "userPractitionerRoleId",
            "Patient": "userPatientId",
            "RelatedPerson": "userRelatedPersonId",
        }.get(user_type)
        if token_name:
            values[token_name] = user_id
    rendered = template
    while "{{" in rendered:
        start = rendered.index("{{")
        end = rendered.find("}}", start)
        if end < 0:
            return None
        token = rendered[start + 2 : end].strip()
        if token not in values:
            return None
        rendered = rendered[:start] + quote(values[token], safe="") + rendered[end + 2 :]
    return rendered


def read_query(reference: str) -> str | None:
    """The read URL (``Type/id``) of a relative reference, or None for anything else."""
    parts = reference.split("/")
    if len(parts) != 2 or not parts[0].isalpha() or not parts[0][0].isupper():
        return None
    if (
        not parts[1]
        or any(not (ch.isalnum() or ch in "-.") for ch in parts[1])
        or len(parts[1]) > 64
    ):
        return None
    return f"{parts[0]}/{parts[1]}"


def references_to_resolve(resources: Iterable[Mapping[str, Any]]) -> set[str]:
    """Relative references the rules follow: devices, coverages, payers and operative notes."""
    wanted: set[str] = set()
    for resource in resources:
        for reference, resource_type in _followed_references(resource):
            query = _typed_read_query(reference, resource_type)
            if query:
                wanted.add(query)
    return wanted


def _followed_references(resource: Mapping[str, Any]) -> Iterator[tuple[Any, str]]:
    """Each reference of ``resource`` that a rule follows, with the type it must point to."""
    kind = resource.get("resourceType")
    if kind == "Procedure":
        for focal in _dicts(resource.get("focalDevice")):
            yield focal.get("manipulated"), "Device"
        for report in _dicts(resource.get("report")):
            yield report, "DocumentReference"
    elif kind == "Claim":
        for insurance in _dicts(resource.get("insurance")):
            yield insurance.get("coverage"), "Coverage"
    elif kind == "Coverage":
        for payor in _dicts(resource.get("payor")):
            if not payor.get("display"):  # a named payer needs no lookup
                yield payor, "Organization"


def _typed_read_query(reference: Any, resource_type: str) -> str | None:
    """The read query of a Reference to a ``resource_type``, or None for any other reference."""
    if isinstance(reference, dict):
        target = reference.get("reference")
        if isinstance(target, str) and target.startswith(resource_type + "/"):
            return read_query(target)
    return None


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []
