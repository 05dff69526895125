"""Card details that fit a clinician's screen: the lists a detail holds (evidence, checklists)
shrink to what the hook's limit leaves room for, and the rest is counted ("and 6 more").

A card says what was found and what to do; the reasons, sources and caveats are one click away
on the explanation page. ``check-cards`` proves every template fits with its lists cut to one item
(:func:`fixed_length`), so at run time only the lists give way; a text still too long (a
template changed without its check) is cut at the limit rather than sent whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cds_service.rulepack.models import FindingTemplate
from cds_service.rulepack.templates import capped_list, fill_placeholders

UNCONFIRMED_LINE = "Some facts are unconfirmed: see Why."
NOT_CHECKED_LABEL = "**Not checked:**"
LIST_ITEM = "- "
CUT_MARK = "… (see Why)"
# Room kept for a "Not checked" line of one reason when the pack check measures a template; a
# longer line (many keys, several reasons) takes its room from the template's lists at run time.
NOT_CHECKED_ROOM = 120
NOT_CHECKED_NAMES_SHOWN = 3
NOT_CHECKED_LIMIT = 220
# The placeholders the rules fill with markdown lists, which give way when a detail is too long
# (the pack check measures each template with them cut to one item), and the line that stands for
# the items left out: evidence is the patient's, so only the record holds the rest; the
# documentation elements are all on the explanation page.
LIST_VARIABLES = {
    "evidence": "- and {count} more in the record",
    "missing_checklist": "- and {count} more (see Why)",
}


def more_line(name: str, count: int) -> str:
    """The item of list ``name`` that stands for the ``count`` items left out."""
    return LIST_VARIABLES[name].format(count=count)


def not_checked_line(caveats: Sequence[tuple[str, str]]) -> str:
    """One line naming the data (prefetch keys) this advice could not take into account, and
    why: the reason when they share one, else where to find the reasons (empty when none)."""
    if not caveats:
        return ""
    names = capped_list([f"`{name}`" for name, _ in caveats], NOT_CHECKED_NAMES_SHOWN)
    reasons = {reason for _, reason in caveats}
    if len(reasons) > 1:
        return f"{NOT_CHECKED_LABEL} {names}, for several reasons (see the service log)."
    line = f"{NOT_CHECKED_LABEL} {names}: {reasons.pop()}."
    return line if len(line) <= NOT_CHECKED_LIMIT else f"{NOT_CHECKED_LABEL} {names}."


def is_list(value: str) -> bool:
    """A markdown list value: every line is an item."""
    lines = value.split("\n")
    return bool(value) and all(line.startswith(LIST_ITEM) for line in lines)


def fit_detail(template: str, values: Mapping[str, str], tail: Sequence[str], limit: int) -> str:
    """``template`` filled with ``values`` and followed by the ``tail`` paragraphs, at most
    ``limit`` characters: list values lose their last items first (longest list first), and a
    body still too long is cut; the tail (what was not checked, what is unconfirmed) stays whole.
    """
    lists = {
        name: values[name].split("\n")
        for name in LIST_VARIABLES
        if name in values and is_list(values[name])
    }
    shown = {name: len(items) for name, items in lists.items()}
    while True:
        text = _render(template, values, lists, shown, tail)
        if len(text) <= limit:
            return text
        shrinkable = [name for name, count in shown.items() if count > 1]
        if not shrinkable:
            return _cut(_render(template, values, lists, shown, ()), tail, limit)
        longest = max(shrinkable, key=lambda name: len("\n".join(lists[name][: shown[name]])))
        shown[longest] -= 1


def _cut(body: str, tail: Sequence[str], limit: int) -> str:
    """``body`` cut so that it and the whole tail fit ``limit``."""
    ending = "".join(f"\n\n{part}" for part in tail if part)
    room = max(limit - len(ending) - len(CUT_MARK), 0)
    return body[:room].rstrip() + CUT_MARK + ending


def _render(
    template: str,
    values: Mapping[str, str],
    lists: Mapping[str, list[str]],
    shown: Mapping[str, int],
    tail: Sequence[str],
) -> str:
    fitted = dict(values)
    for name, items in lists.items():
        kept = items[: shown[name]]
        if len(kept) < len(items):
            kept.append(more_line(name, len(items) - len(kept)))
        fitted[name] = "\n".join(kept)
    body = fill_placeholders(template, fitted).strip()
    return "\n\n".join([body, *(part for part in tail if part)])


def detail_problems(
    template: FindingTemplate,
    values: Mapping[str, str],
    allowed: frozenset[str],
    limits: Mapping[str, int],
) -> list[tuple[tuple[str, ...], str]]:
    """Where ``template``'s detail, its lists cut to one item and its other placeholders at
    ``values``, can exceed the limit of a hook it is shown on, whichever note it is raised with.
    """
    list_names = sorted(LIST_VARIABLES.keys() & allowed)
    values = {**values, **{name: f"- value-of-{name}" for name in list_names}}
    problems: list[tuple[tuple[str, ...], str]] = []
    for hook in template.hooks:
        if hook not in limits:
            problems.append((("hooks",), f"no detail limit for {hook!r} (detail_limits)"))
            continue
        for note in [None, *template.notes]:
            note_text = fill_placeholders(template.notes[note], values) if note else ""
            unconfirmed = bool(template.unconfirmed_for(note))
            length = fixed_length(
                template.detail, values | {"note": note_text}, list_names, unconfirmed
            )
            if length > limits[hook]:
                message = (
                    f"detail (note {note!r}) can reach {length} characters on {hook}, "
                    f"over its limit of {limits[hook]}"
                )
                problems.append((("detail",), message))
    return problems


def fixed_length(
    template: str, values: Mapping[str, str], list_names: Sequence[str], unconfirmed: bool
) -> int:
    """The length of a detail whose lists show one item and the "more" line, with the
    unconfirmed line when it applies and room for a "Not checked" line."""
    sampled = dict(values)
    for name in list_names:
        first_item = values[name].split("\n")[0]
        sampled[name] = f"{first_item}\n{more_line(name, 999)}"
    tail = [UNCONFIRMED_LINE] if unconfirmed else []
    text = _render(template, sampled, {}, {}, tail)
    return len(text) + NOT_CHECKED_ROOM
