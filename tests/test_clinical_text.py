"""The clinical-text pipeline and its helpers (cds_service/rulepack/clinical_text.py): the
tokenizer gives spaCy's own tokens, ConText is handed only the actions that can become a device
statement, and the reading cache keeps the most recent readings within its bound."""

from __future__ import annotations

import threading

import pytest
import spacy
from hypothesis import given, settings
from hypothesis import strategies as st
from spacy.language import Language

from cds_service.rulepack.clinical_text import (
    CONTEXT_GROUP,
    TARGET_GROUP,
    ReadingCache,
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


def test_the_cache_drops_the_least_recently_used_reading() -> None:
    cache: ReadingCache[str] = ReadingCache(capacity=2)
    cache.put((b"a", "Procedure/1"), "first")
    cache.put((b"b", "Procedure/1"), "second")
    assert cache.get((b"a", "Procedure/1")) == "first"  # now the most recently used
    cache.put((b"c", "Procedure/1"), "third")
    assert cache.get((b"b", "Procedure/1")) is None
    assert cache.get((b"a", "Procedure/1")) == "first"
    assert cache.get((b"c", "Procedure/1")) == "third"
    assert len(cache) == 2
    assert cache.get((b"a", "Device/1")) is None  # the source is part of the key
    cache.clear()
    assert len(cache) == 0


@pytest.mark.parametrize("capacity", [0, 1, 5])
def test_the_cache_never_holds_more_than_its_capacity(capacity: int) -> None:
    cache: ReadingCache[int] = ReadingCache(capacity)
    for number in range(20):
        cache.put((bytes([number]), "x"), number)
    assert len(cache) == capacity
    kept = [cache.get((bytes([number]), "x")) for number in range(20)]
    assert kept == [None] * (20 - capacity) + list(range(20 - capacity, 20))


def test_the_cache_stays_bounded_and_consistent_under_threads() -> None:
    cache: ReadingCache[int] = ReadingCache(capacity=50)
    wrong: list[tuple[int, int | None]] = []

    def work(offset: int) -> None:
        for number in range(offset, offset + 2_000):
            key = (str(number % 120).encode(), "x")
            cache.put(key, number % 120)
            found = cache.get(key)
            if found is not None and found != number % 120:
                wrong.append((number % 120, found))

    threads = [threading.Thread(target=work, args=(offset * 7,)) for offset in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
    assert len(cache) == 50
