"""The CDS Hooks JSON rule: no null or empty values, except "cards": []."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cds_service.fhir.json_limits import has_empty, prune_empty, violations

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(min_size=1, max_size=3), children, max_size=4)
    ),
    max_leaves=30,
)


def test_prune_removes_empties_at_every_depth() -> None:
    """Nulls and empty strings, arrays and objects vanish, also when pruning empties a parent."""
    document: dict[str, Any] = {
        "a": None,
        "b": "",
        "c": [],
        "d": {},
        "e": {"f": [None, {}, ""]},
        "g": 0,
        "h": False,
    }
    assert prune_empty(document) == {"g": 0, "h": False}


@given(json_values)
def test_pruned_documents_have_no_violations(document: Any) -> None:
    """Whatever goes in, what comes out obeys the rule (0 and false are values, not empties)."""
    assert violations(prune_empty({"x": document})) == []


@given(json_values)
def test_has_empty_agrees_with_violations(document: Any) -> None:
    """The quick check that lets clean documents skip the copy finds exactly what the rule finds."""
    assert has_empty({"x": document}) == bool(violations({"x": document}))


def test_clean_document_is_returned_without_a_copy() -> None:
    """A document with nothing to prune comes back as the same object; a dirty one as a copy."""
    clean = {"a": [{"b": 1, "c": False}], "d": "text"}
    dirty = {"a": [{"b": 1, "c": None}], "d": "text"}
    assert prune_empty(clean) is clean
    pruned = prune_empty(dirty)
    assert pruned == {"a": [{"b": 1}], "d": "text"}
    assert dirty == {"a": [{"b": 1, "c": None}], "d": "text"}


@pytest.mark.parametrize(
    ("document", "found"),
    [
        ({"cards": []}, []),
        ({"cards": [{"detail": ""}]}, ["$.cards[0].detail"]),
        ({"cards": [], "systemActions": []}, ["$.systemActions"]),
        ({"services": [{"prefetch": {}}]}, ["$.services[0].prefetch"]),
        ({"a": {"cards": []}}, ["$.a.cards"]),
        ({"list": [None]}, ["$.list[0]"]),
    ],
)
def test_violations_are_located(document: Any, found: list[str]) -> None:
    """Only the top-level cards array may be empty."""
    assert violations(document) == found
