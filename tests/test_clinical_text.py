"""The clinical-text pipeline and its helpers (cds_service/rulepack/clinical_text.py): the
tokenizer gives spaCy's own tokens, ConText is handed only the actions that can become a device
statement."""

from __future__ import annotations

import pytest
import spacy
from hypothesis import given, settings
from hypothesis import strategies as st
from spacy.language import Language

from cds_service.rulepack.clinical_text import (
    CONTEXT_GROUP,
    TARGET_GROUP,
    TokenPattern,
    first_token_alternatives,
)
from cds_service.rulepack.models import RulePack

WORDS = ["The", "rod", "was", "removed", "Dr.", "e.g.", "left", "tibia", "3x", "(x5)", "n't"]
SPACES = [" ", "  ", "\n", "\n\n", "\t", "\xa0", " \n ", "\r\n"]
PUNCTUATION = ["", ".", ",", ":", ";", "-", "/", ")"]


@st.composite
def clinical_like(draw: st.DrawFn) -> str:
    parts = draw(
        st.lists(
            st.tuples(
                st.sampled_from(WORDS) | st.text(min_size=1, max_size=8),
                st.sampled_from(PUNCTUATION),
                st.sampled_from(SPACES),
            ),
            max_size=25,
        )
    )
    return "".join(word + punct + space for word, punct, space in parts)


@pytest.fixture(scope="module")
def reference() -> Language:
    """spaCy's blank English, with its tokenizer as shipped."""
    return spacy.blank("en")


@settings(max_examples=300, deadline=None)
@given(text=clinical_like())
def test_the_tokens_are_spacys_own(pack: RulePack, reference: Language, text: str) -> None:
    """Dropping the whitespace special cases (for speed) changes no token and no spacing."""
    ours = [(token.text, token.whitespace_) for token in pack.nlp.make_doc(text)]
    assert ours == [(token.text, token.whitespace_) for token in reference.make_doc(text)]


def test_a_note_with_line_breaks_is_tokenized_once_per_word(pack: RulePack) -> None:
    """spaCy caches a word's tokens unless a special case came earlier in the text; a line break
    was one, so notes were split word by word at every reading."""
    tokenizer = pack.nlp.tokenizer
    assert not [text for text in tokenizer.rules if not text.strip()]  # type: ignore[union-attr]
    assert "Dr." in tokenizer.rules  # type: ignore[union-attr]  # the other exceptions stay


def test_a_first_token_choice_becomes_one_pattern_per_value() -> None:
    year = {"TEXT": {"REGEX": "^(19|20)\\d\\d$"}}
    assert first_token_alternatives([{"LOWER": {"IN": ["in", "on"]}}, year]) == [
        [{"LOWER": "in"}, year],
        [{"LOWER": "on"}, year],
    ]


@pytest.mark.parametrize(
    "pattern",
    [
        [{"LOWER": "canal"}, {"LOWER": {"IN": ["of", "in"]}}],  # only the first token expands
        [{"LOWER": {"IN": ["left", "right"]}, "OP": "?"}, {"LOWER": "tibia"}],  # optional
        [{"LOWER": {"IN": ["left"]}, "IS_ALPHA": True}],  # more than one condition
        [{"TEXT": {"REGEX": "^IM$"}}],
        [{"LOWER": {"NOT_IN": ["spinal"]}}, {"LOWER": "canal"}],
        [],  # left for spaCy to refuse, which check-cards reports
    ],
)
def test_other_patterns_are_kept_as_written(pattern: TokenPattern) -> None:
    assert first_token_alternatives(pattern) == [pattern]


SITE_WORDS = ["canal", "of", "the", "left", "distal", "tibia", "tibial", "'s", "IM", "im", "in"]
SITE_WORDS += ["2024", "May", "during", "rod", "nutrient", "spinal"]


@settings(max_examples=200, deadline=None)
@given(words=st.lists(st.sampled_from(SITE_WORDS), max_size=12))
def test_the_alternatives_match_what_the_pattern_matched(
    pack: RulePack, reference: Language, words: list[str]
) -> None:
    """Each pack pattern and its alternatives find the same spans."""
    from spacy.matcher import Matcher

    patterns = [pattern for target in pack.clinical_text.targets for pattern in target.patterns]
    patterns += [
        pattern for modifier in pack.clinical_text.modifiers for pattern in modifier.patterns
    ]
    doc = reference.make_doc(" ".join(words))
    for pattern in patterns:
        as_written, expanded = Matcher(reference.vocab), Matcher(reference.vocab)
        as_written.add("p", [pattern])
        expanded.add("p", first_token_alternatives(pattern))
        assert sorted(as_written(doc)) == sorted(expanded(doc))


def test_context_is_given_only_the_actions_of_sentences_that_name_a_device(
    pack: RulePack,
) -> None:
    doc = pack.nlp(
        "The wound was irrigated and the drain was removed. "
        "The antibiotic cement rod was not removed. Cultures were sent."
    )
    marked = [(span.text, span.label_) for span in doc.spans[TARGET_GROUP]]
    assert ("removed", "ACTION") in marked
    qualified = [(span.text, span.sent.text) for span in doc.spans[CONTEXT_GROUP]]
    assert qualified == [("removed", "The antibiotic cement rod was not removed.")]
    (action,) = doc.spans[CONTEXT_GROUP]
    assert action._.is_negated
    first_removed = next(span for span in doc.spans[TARGET_GROUP] if span.label_ == "ACTION")
    assert first_removed.sent.text.startswith("The wound")
    assert not first_removed._.is_negated  # not qualified at all: it can make no statement
