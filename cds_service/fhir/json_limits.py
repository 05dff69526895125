"""The CDS Hooks rule on JSON values: never ``null``, ``""``, ``[]`` or ``{}`` in a response.

The one exception is the top-level ``"cards": []`` of a response with no advice.
"""

from __future__ import annotations

from typing import Any

_EMPTY: tuple[Any, ...] = (None, "", [], {})
# Deepest nesting of objects and arrays accepted from a client or a FHIR server. Real requests and
# resources stay under 20 levels; FHIR parsing, copying and serialising recurse and fail near 300.
MAX_JSON_DEPTH = 100


def nested_deeper_than(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when objects and arrays nest more than ``limit`` levels (``value`` is level 1).

    Breadth-first, so a hostile document cannot exhaust the stack while being measured.
    """
    level = [value] if type(value) is dict or type(value) is list else []
    for _ in range(limit):
        level = [
            child
            for item in level
            for child in (item.values() if type(item) is dict else item)
            if type(child) is dict or type(child) is list
        ]
        if not level:
            return False
    return True


def prune_empty(value: Any) -> Any:
    """``value`` with null and empty strings, arrays and objects removed at every depth.

    A value with nothing to remove is returned as it is (no copy): most requests and every card
    are already clean, and the walk that proves it costs a fraction of a rebuild.
    """
    return _pruned(value) if has_empty(value) else value


def has_empty(value: Any) -> bool:
    """True when ``value`` holds a null or an empty string, array or object at any depth."""
    if isinstance(value, dict):
        children: Any = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return False
    for item in children:
        if item is None or item == "" or item == [] or item == {}:
            return True
        if isinstance(item, dict | list) and has_empty(item):
            return True
    return False


def _pruned(value: Any) -> Any:
    if isinstance(value, dict):
        pruned = {key: _pruned(item) for key, item in value.items()}
        return {key: item for key, item in pruned.items() if not _is_empty(item)}
    if isinstance(value, list):
        pruned_items = [_pruned(item) for item in value]
        return [item for item in pruned_items if not _is_empty(item)]
    return value


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | dict) and len(value) == 0)


def violations(document: Any, path: str = "$") -> list[str]:
    """JSON paths that break the rule (``$.cards`` may be an empty array)."""
    found: list[str] = []
    if isinstance(document, dict):
        for key, item in document.items():
            item_path = f"{path}.{key}"
            if _is_empty(item) and not (item_path == "$.cards" and item == []):
                found.append(item_path)
            else:
                found.extend(violations(item, item_path))
    elif isinstance(document, list):
        for index, item in enumerate(document):
            item_path = f"{path}[{index}]"
            if _is_empty(item):
                found.append(item_path)
            else:
                found.extend(violations(item, item_path))
    return found
