"""CDS Hooks 2.0 wire models: tolerant for what clients send, strict for what we send.

Inbound models ignore unknown fields (clients add ``extension`` and newer context fields).
Outbound models forbid them, so a card can only be built with the fields the spec defines.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr, model_validator

NonEmpty = Field(min_length=1)


def _without_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


# Feedback values stored as they are, sized to their columns (PostgreSQL refuses longer text, and
# NUL characters in any text): a card id or reason code, and a code system.
StoredCode = Annotated[StrictStr, Field(min_length=1, max_length=200), AfterValidator(_without_nul)]
StoredSystem = Annotated[
    StrictStr, Field(min_length=1, max_length=500), AfterValidator(_without_nul)
]


class _Inbound(BaseModel):
    model_config = ConfigDict(extra="ignore", hide_input_in_errors=True)


class _Outbound(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FhirAuthorization(_Inbound):
    """The bearer token for ``fhirServer``; transient, never logged or stored."""

    access_token: StrictStr = NonEmpty
    token_type: StrictStr = "Bearer"
    expires_in: int | None = None
    scope: StrictStr | None = None
    subject: StrictStr | None = None
    patient: StrictStr | None = None


class HookRequest(_Inbound):
    """The body of ``POST /cds-services/{id}``."""

    hook: StrictStr = NonEmpty
    hookInstance: StrictStr = NonEmpty
    fhirServer: StrictStr | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: dict[str, Any]
    prefetch: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _server_with_token(self) -> HookRequest:
        if self.fhirAuthorization is not None and not self.fhirServer:
            raise ValueError("fhirAuthorization requires fhirServer")
        return self


class FeedbackCoding(_Inbound):
    code: StoredCode
    system: StoredSystem
    display: StrictStr | None = None


class OverrideReason(_Inbound):
    reason: FeedbackCoding | None = None
    userComment: StrictStr | None = None

    @model_validator(mode="after")
    def _reason_or_comment(self) -> OverrideReason:
        if self.reason is None and not self.userComment:
            raise ValueError("overrideReason needs a reason or a userComment")
        return self


class AcceptedSuggestion(_Inbound):
    id: StrictStr = NonEmpty


class FeedbackEntry(_Inbound):
    """One card outcome reported by the client."""

    card: StoredCode
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = None
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: datetime

    @model_validator(mode="after")
    def _consistent(self) -> FeedbackEntry:
        if self.outcome == "accepted" and not self.acceptedSuggestions:
            raise ValueError("an accepted outcome needs acceptedSuggestions")
        if self.outcomeTimestamp.tzinfo is None:
            raise ValueError("outcomeTimestamp needs a time zone (UTC)")
        try:
            self.outcomeTimestamp.astimezone(UTC)  # how it is stored
        except OverflowError:
            raise ValueError("outcomeTimestamp is outside the years 1 to 9999 in UTC") from None
        return self


class FeedbackRequest(_Inbound):
    """The body of ``POST /cds-services/{id}/feedback``."""

    feedback: list[FeedbackEntry] = Field(min_length=1, max_length=1000)


class Coding(_Outbound):
    # Also the codings of the rule pack (cards/*.yaml), whose models are all frozen. No docstring:
    # it would become the "description" of the pack's JSON Schemas.
    model_config = ConfigDict(extra="forbid", frozen=True)

    system: str
    code: str
    display: str | None = None


class Source(_Outbound):
    label: str
    url: str | None = None
    topic: Coding | None = None


class Action(_Outbound):
    type: Literal["create", "update", "delete"]
    description: str
    resource: dict[str, Any] | None = None
    resourceId: str | None = None


class Suggestion(_Outbound):
    label: str
    uuid: str
    isRecommended: bool | None = None
    actions: list[Action] | None = None


class Link(_Outbound):
    label: str
    url: str
    type: Literal["absolute", "smart"]
    appContext: str | None = None


class Card(_Outbound):
    uuid: str
    summary: str = Field(max_length=139)
    detail: str | None = None
    indicator: Literal["info", "warning", "critical"]
    source: Source
    suggestions: list[Suggestion] | None = None
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: list[Coding] | None = None
    links: list[Link] | None = None
    extension: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _selection_with_suggestions(self) -> Card:
        if self.suggestions and self.selectionBehavior is None:
            raise ValueError("suggestions require selectionBehavior")
        return self
