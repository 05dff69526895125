"""``cards/clinical-text.yaml``: the medspaCy rules the service reads clinical text with (target
phrases, ConText modifiers, operative-note sections), validated as data, and the pipeline built
from them once per rule pack.

The pipeline is spaCy's blank English tokenizer, its rule-based ``sentencizer`` (PyRuSH, medspaCy's
default splitter, costs about fifteen times as much on an operative note), medspaCy's
TargetMatcher, ConText and Sectionizer. No statistical model is loaded: nothing is downloaded.

Also here, because they are built from the rules once and serve every reading: the words the
statement reader looks up (:class:`TextLexicon`) and how many readings a worker keeps
(``READINGS_KEPT``, in a :class:`~cds_service.recent.RecentCache`).
"""

from __future__ import annotations

import bisect
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if typing.TYPE_CHECKING:  # spaCy is imported when the pipeline is first built
    from spacy.language import Language
    from spacy.tokens import Doc

# The span group the TargetMatcher writes every marked phrase to.
TARGET_GROUP = "medspacy_spans"
# The span group ConText qualifies: only the actions that can become a device statement.
CONTEXT_GROUP = "device_actions"
DEVICE_ACTIONS_COMPONENT = "cds_device_actions"

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

    @cached_property
    def lexicon(self) -> TextLexicon:
        """The words the statement reader looks up, gathered once."""
        words = {
            (target.label, phrase.lower()): target.value
            for target in self.targets
            if target.label in ("BONE", "SIDE")
            for phrase in target.phrases
        }
        return TextLexicon(
            times=self.section_times(),
            boundaries=frozenset(word.lower() for word in self.boundaries),
            bones={word: value for (label, word), value in words.items() if label == "BONE"},
            sides={word: value for (label, word), value in words.items() if label == "SIDE"},
        )


@dataclass(frozen=True)
class TextLexicon:
    """What the pack says about reading a sentence: section times, phrase boundaries, and the
    words for bones and sides (to find them inside a site phrase)."""

    times: Mapping[str, str]
    boundaries: frozenset[str]
    bones: Mapping[str, str]
    sides: Mapping[str, str]


# How many text readings a worker keeps (a reading is a few kilobytes; the texts are not kept).
READINGS_KEPT = 2048


def build_pipeline(rules: ClinicalTextFile) -> Language:
    """The medspaCy pipeline for ``rules`` (raises ValueError when a rule cannot be built)."""
    import spacy
    from medspacy.context import ConTextRule
    from medspacy.ner import TargetRule
    from medspacy.section_detection import SectionRule
    from spacy.language import Language

    # medspaCy components keep a token-pattern matcher that phrase-only rules leave empty.
    warnings.filterwarnings("ignore", message=r"\[W036\]", category=UserWarning)
    nlp = spacy.blank("en")
    _drop_whitespace_exceptions(nlp)
    nlp.add_pipe("sentencizer")
    # Targets go to a span group, not doc.ents: the TargetMatcher adds ents one at a time, which
    # cost more than half of reading an operative note (measured: 5.5 of 9.7 ms for 312 words).
    matcher: Any = nlp.add_pipe(
        "medspacy_target_matcher",
        config={"result_type": "group", "span_group_name": TARGET_GROUP},
    )
    if not Language.has_factory(DEVICE_ACTIONS_COMPONENT):
        Language.component(DEVICE_ACTIONS_COMPONENT, func=_device_actions)
    nlp.add_pipe(DEVICE_ACTIONS_COMPONENT)
    context: Any = nlp.add_pipe(
        "medspacy_context",
        config={
            "rules": None,
            "span_attrs": "default",
            "max_scope": None,
            "input_span_type": "group",
            "span_group_name": CONTEXT_GROUP,
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
                pattern=alternative,
                metadata={"value": target.value},
            )
            for target in rules.targets
            for index, pattern in enumerate(target.patterns)
            for alternative in first_token_alternatives(pattern)
        ]
    )
    context.add(
        [
            _context_rule(ConTextRule, modifier, phrase, None)
            for modifier in rules.modifiers
            for phrase in modifier.phrases
        ]
        + [
            _context_rule(ConTextRule, modifier, f"{modifier.category}#{index}", alternative)
            for modifier in rules.modifiers
            for index, pattern in enumerate(modifier.patterns)
            for alternative in first_token_alternatives(pattern)
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


def first_token_alternatives(pattern: TokenPattern) -> list[TokenPattern]:
    """``pattern`` as one pattern per value its first token may take, when that token is a plain
    ``{ATTR: {IN: [...]}}``; else ``pattern`` itself.

    spaCy's matcher tests a plain ``ATTR: value`` in compiled code but calls a Python predicate
    for ``IN`` at every token of the text; a first-token ``IN`` made reading an operative note's
    targets and modifiers cost about twice as much (measured: 0.83 against 0.46 ms for
    TargetMatcher on 312 words). Later tokens keep their ``IN``: they are tested only after the
    first one matched.
    """
    if not pattern or len(pattern[0]) != 1:  # spaCy itself refuses an empty pattern
        return [pattern]
    head, rest = pattern[0], pattern[1:]
    ((attribute, condition),) = head.items()
    if not isinstance(condition, dict) or set(condition) != {"IN"}:
        return [pattern]
    return [[{attribute: value}, *rest] for value in condition["IN"]]


def _drop_whitespace_exceptions(nlp: Language) -> None:
    """Tokenize line breaks and runs of spaces by the ordinary rules, not as special cases.

    The same tokens result, but a special case turns off spaCy's tokenizer cache for the rest of
    the text, so every note with a line break was split word by word on every reading (measured:
    1.45 against 0.17 ms for a 312-word operative note).
    """
    tokenizer: Any = nlp.tokenizer
    tokenizer.rules = {text: tokens for text, tokens in tokenizer.rules.items() if text.strip()}


def _device_actions(doc: Doc) -> Doc:
    """Hand ConText only the actions in sentences that name a device: only those become
    statements, and ConText's cost grows with every target it is given."""
    marked = doc.spans.get(TARGET_GROUP, [])
    starts = [sentence.start for sentence in doc.sents]

    def sentence_of(token: int) -> int:
        return bisect.bisect_right(starts, token)

    with_device = {sentence_of(span.start) for span in marked if span.label_ == "DEVICE"}
    doc.spans[CONTEXT_GROUP] = [
        span
        for span in marked
        if span.label_ == "ACTION" and sentence_of(span.start) in with_device
    ]
    return doc


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
