"""``cards/clinical-text.yaml``: the medspaCy rules the service reads clinical text with (target
phrases, ConText modifiers, operative-note sections), validated as data, and the pipeline built
from them once per rule pack.

The pipeline is spaCy's blank English tokenizer, its rule-based ``sentencizer`` (PyRuSH, medspaCy's
default splitter, costs about fifteen times as much on an operative note), medspaCy's
TargetMatcher, ConText and Sectionizer. No statistical model is loaded: nothing is downloaded.
"""

from __future__ import annotations

import typing
import warnings
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if typing.TYPE_CHECKING:  # spaCy is imported when the pipeline is first built
    from spacy.language import Language

# What a target phrase is; cds_service.rules.statements reads these labels.
TargetLabel = Literal[
    "DEVICE",
    "DRUG",
    "CARRIER",
    "METAL",
    "MANUAL",
    "MANUFACTURED",
    "SITE",
    "BONE",
    "SIDE",
    "ACTION",
    "INSTRUMENT",
    "CONFIRMED",
]
ModifierCategory = Literal[
    "NEGATED_EXISTENCE",
    "HISTORICAL",
    "HYPOTHETICAL",
    "POSSIBLE_EXISTENCE",
    "TERMINATE",
    "PSEUDO",
]
Direction = Literal["FORWARD", "BACKWARD", "BIDIRECTIONAL", "TERMINATE", "PSEUDO"]
StatementTime = Literal["session", "history", "plan"]
TokenPattern = list[dict[str, Any]]
Phrase = Annotated[str, Field(min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TextTarget(_Strict):
    label: TargetLabel
    value: str = Field(pattern=r"^[a-z][a-z-]*$")
    phrases: list[Phrase] = Field(default_factory=list)
    patterns: list[TokenPattern] = Field(default_factory=list)


class TextModifier(_Strict):
    category: ModifierCategory
    direction: Direction
    max_scope: int | None = Field(default=None, ge=1)
    phrases: list[Phrase] = Field(default_factory=list)
    patterns: list[TokenPattern] = Field(default_factory=list)


class NoteSection(_Strict):
    category: str = Field(pattern=r"^[a-z][a-z-]*$")
    time: StatementTime
    titles: list[Phrase] = Field(min_length=1)


class ClinicalTextFile(_Strict):
    targets: list[TextTarget] = Field(min_length=1)
    modifiers: list[TextModifier] = Field(min_length=1)
    sections: list[NoteSection] = Field(min_length=1)
    boundaries: list[Phrase] = Field(default_factory=list)

    def section_times(self) -> dict[str, StatementTime]:
        """Section category -> the time its statements speak of."""
        return {section.category: section.time for section in self.sections}


def build_pipeline(rules: ClinicalTextFile) -> Language:
    """The medspaCy pipeline for ``rules`` (raises ValueError when a rule cannot be built)."""
    import spacy
    from medspacy.context import ConTextRule
    from medspacy.ner import TargetRule
    from medspacy.section_detection import SectionRule

    # medspaCy components keep a token-pattern matcher that phrase-only rules leave empty.
    warnings.filterwarnings("ignore", message=r"\[W036\]", category=UserWarning)
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    # Targets go to a span group, not doc.ents: the TargetMatcher adds ents one at a time, which
    # cost more than half of reading an operative note (measured: 5.5 of 9.7 ms for 312 words).
    matcher: Any = nlp.add_pipe("medspacy_target_matcher", config={"result_type": "group"})
    context: Any = nlp.add_pipe(
        "medspacy_context",
        config={
            "rules": None,
            "span_attrs": "default",
            "max_scope": None,
            "input_span_type": "group",
        },
    )
    sectionizer: Any = nlp.add_pipe("medspacy_sectionizer", config={"rules": None})
    matcher.add(
        [
            TargetRule(phrase, target.label, attributes=None, metadata={"value": target.value})
            for target in rules.targets
            for phrase in target.phrases
        ]
        + [
            TargetRule(
                f"{target.value}#{index}",
                target.label,
                pattern=pattern,
                metadata={"value": target.value},
            )
            for target in rules.targets
            for index, pattern in enumerate(target.patterns)
        ]
    )
    context.add(
        [
            _context_rule(ConTextRule, modifier, phrase, None)
            for modifier in rules.modifiers
            for phrase in modifier.phrases
        ]
        + [
            _context_rule(ConTextRule, modifier, f"{modifier.category}#{index}", pattern)
            for modifier in rules.modifiers
            for index, pattern in enumerate(modifier.patterns)
        ]
    )
    sectionizer.add(
        [
            SectionRule(f"{title}:", section.category)
            for section in rules.sections
            for title in section.titles
        ]
    )
    return nlp


def _context_rule(
    rule_type: Any, modifier: TextModifier, literal: str, pattern: TokenPattern | None
) -> Any:
    """One ConText rule: it qualifies only the nearest action in its scope."""
    scoped = modifier.category not in ("TERMINATE", "PSEUDO")
    return rule_type(
        literal,
        modifier.category,
        pattern=pattern,
        direction=modifier.direction,
        max_scope=modifier.max_scope,
        allowed_types={"ACTION"} if scoped else None,
        max_targets=1 if scoped else None,
    )
