"""Card details that fit the hook's limit: lists give way first, the tail never; and the pack
check that proves each template leaves room for its lists."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cds_service.rulepack.detail_fit import (
    CUT_MARK,
    UNCONFIRMED_LINE,
    detail_problems,
    fit_detail,
    not_checked_line,
)
from cds_service.rulepack.models import RulePack
from cds_service.rulepack.templates import sample_values, worst_case_values

TEMPLATE = "Found:\n{evidence}\n\nTo do: {note}"


def evidence(count: int, width: int = 40) -> str:
    return "\n".join(f"- item {index} " + "x" * width for index in range(count))


def test_a_detail_that_fits_is_left_whole() -> None:
    text = fit_detail(TEMPLATE, {"evidence": evidence(3), "note": "add the line."}, [], 800)
    assert text == f"Found:\n{evidence(3)}\n\nTo do: add the line."


def test_a_long_list_keeps_what_fits_and_counts_the_rest() -> None:
    """Evidence beyond the limit is counted, and the count says it is in the record (the Why
    page holds no patient data)."""
    values = {"evidence": evidence(20), "note": "add the line."}
    text = fit_detail(TEMPLATE, values, [UNCONFIRMED_LINE], 500)
    assert len(text) <= 500
    shown = [line for line in text.splitlines() if line.startswith("- item")]
    assert 1 <= len(shown) < 20
    assert f"- and {20 - len(shown)} more in the record\n\nTo do: add the line." in text
    assert text.endswith(f"\n\n{UNCONFIRMED_LINE}")
    # One more item would not have fitted.
    bigger = fit_detail(TEMPLATE, values, [UNCONFIRMED_LINE], 500 + 47)
    assert len([line for line in bigger.splitlines() if line.startswith("- item")]) > len(shown)


def test_the_longest_list_gives_way_first() -> None:
    template = "{evidence}\n\n{missing_checklist}"
    values = {"evidence": evidence(2, 10), "missing_checklist": evidence(6, 60)}
    text = fit_detail(template, values, [], 300)
    assert "- item 1 xxxxxxxxxx" in text  # the short list is whole
    assert "more (see Why)" in text
    assert "more in the record" not in text


def test_a_body_still_too_long_is_cut_but_the_tail_is_whole() -> None:
    tail = ["**Not checked:** `claims`: the FHIR server did not answer.", UNCONFIRMED_LINE]
    text = fit_detail("word " * 200, {}, tail, 300)
    assert len(text) == 300
    assert text.endswith(CUT_MARK + "\n\n" + "\n\n".join(tail))


@settings(max_examples=300)
@given(
    items=st.lists(st.text(min_size=1, max_size=300).map(lambda s: "- " + " ".join(s.split())), max_size=30),
    note=st.text(max_size=900),
    tail=st.lists(st.text(min_size=1, max_size=60), max_size=2),
    limit=st.integers(min_value=200, max_value=900),
)  # fmt: skip
def test_no_detail_is_ever_longer_than_its_limit(
    items: list[str], note: str, tail: list[str], limit: int
) -> None:
    """Whatever the record holds, the detail fits, and the tail is never cut."""
    values = {"evidence": "\n".join(items), "note": note.replace("{", "(").replace("}", ")")}
    text = fit_detail(TEMPLATE, values, tail, limit)
    assert len(text) <= limit
    ending = "".join(f"\n\n{part}" for part in tail if part)
    assert text.endswith(ending)


def test_not_checked_names_keys_and_their_reason() -> None:
    assert not_checked_line([]) == ""
    assert not_checked_line([("claims", "timed out")]) == "**Not checked:** `claims`: timed out."
    several = [("a", "x"), ("b", "y"), ("c", "x"), ("d", "x"), ("e", "x")]
    assert not_checked_line(several) == (
        "**Not checked:** `a`, `b`, `c` and 2 more, for several reasons (see the service log)."
    )
    long_reason = [("claims", "r" * 300)]
    assert not_checked_line(long_reason) == "**Not checked:** `claims`."


def test_the_pack_check_finds_a_template_too_long_for_a_hook(pack: RulePack) -> None:
    """A template that leaves no room for its lists on order-sign is reported, with the note
    that makes it too long; the same template fits the discharge limit."""
    template = pack.findings.findings["add-on-suggested"]
    allowed = frozenset(
        {"evidence", "laterality", "line_sequence", "note", "primary_code", "primary_descriptor"}
    )
    values = {**sample_values(allowed), **worst_case_values(pack)}  # as check-cards measures
    limits = {"order-sign": 500, "encounter-discharge": 800}
    assert detail_problems(template, values, allowed, limits) == []
    padded = template.model_copy(update={"detail": template.detail + "\n\n" + "w" * 150})
    problems = detail_problems(padded, values, allowed, limits)
    assert problems
    assert all(
        loc == ("detail",) and "on order-sign, over its limit of 500" in message
        for loc, message in problems
    )
    assert detail_problems(padded, values, allowed, {**limits, "order-sign": 900}) == []
    assert detail_problems(template, values, allowed, {"encounter-discharge": 800}) == [
        (("hooks",), "no detail limit for 'order-sign' (detail_limits)")
    ]
