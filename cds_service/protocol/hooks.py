"""CDS Hooks 2.0 hook definitions the service supports (Hook Library 1.0.1).

Only protocol facts live here: which context fields a hook carries, which are required, their JSON
type, and which may be used as prefetch tokens. Coding knowledge lives in ``cards/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

USER_TOKENS = frozenset(
    {"userPractitionerId", "userPractitionerRoleId", "userPatientId", "userRelatedPersonId"}
)
_TOKEN = re.compile(r"\{\{(.*?)\}\}")
_REFERENCE = re.compile(r"^[A-Za-z]+/[A-Za-z0-9\-.]{1,64}$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")  # FHIR R4 id


@dataclass(frozen=True)
class ContextField:
    """One field of a hook's context."""

    name: str
    required: bool
    kind: type  # str for ids, dict for Bundles
    token: bool  # usable as a 2.0 prefetch token
    reference: bool = False  # must look like ``Type/id``
    identifier: bool = False  # must be a FHIR id (it goes into queries and suggested resources)


@dataclass(frozen=True)
class Hook:
    """A hook and its context fields."""

    name: str
    context: tuple[ContextField, ...]

    def token_fields(self) -> frozenset[str]:
        """Context fields that 2.0 allows in a prefetch template."""
        return frozenset(field.name for field in self.context if field.token)


HOOKS: dict[str, Hook] = {
    "order-sign": Hook(
        "order-sign",
        (
            ContextField("userId", True, str, True, reference=True),
            ContextField("patientId", True, str, True, identifier=True),
            ContextField("encounterId", False, str, True, identifier=True),
            ContextField("draftOrders", True, dict, False),
        ),
    ),
    "encounter-discharge": Hook(
        "encounter-discharge",
        (
            ContextField("userId", True, str, True, reference=True),
            ContextField("patientId", True, str, True, identifier=True),
            ContextField("encounterId", True, str, True, identifier=True),
        ),
    ),
}


def is_valid_prefetch_template(template: str, hook: Hook) -> bool:
    """True when every ``{{token}}`` is a first-level context field of the hook or a user token."""
    allowed = {f"context.{name}" for name in hook.token_fields()} | USER_TOKENS
    tokens = [token.strip() for token in _TOKEN.findall(template)]
    unbalanced = template.count("{{") != len(tokens) or template.count("}}") != len(tokens)
    return not unbalanced and all(token in allowed for token in tokens)


def context_problems(hook: Hook, context: dict[str, object]) -> list[str]:
    """Describe required context fields that are missing or of the wrong type (no values shown)."""
    problems: list[str] = []
    for field in hook.context:
        value = context.get(field.name)
        if value is None:
            if field.required:
                problems.append(f"context.{field.name} is required for {hook.name}")
            continue
        if not isinstance(value, field.kind) or (field.kind is str and not value):
            expected = "a non-empty string" if field.kind is str else "a JSON object (FHIR Bundle)"
            problems.append(f"context.{field.name} must be {expected}")
        elif field.reference and isinstance(value, str) and not _REFERENCE.fullmatch(value):
            problems.append(f"context.{field.name} must be a reference of the form Type/id")
        elif field.identifier and isinstance(value, str) and not _ID.fullmatch(value):
            problems.append(
                f"context.{field.name} must be a FHIR id (1 to 64 letters, digits, '-' or '.')"
            )
        elif (
            field.kind is dict and isinstance(value, dict) and value.get("resourceType") != "Bundle"
        ):
            problems.append(f"context.{field.name} must be a FHIR Bundle")
    return problems
