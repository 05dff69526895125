"""docs/testing.md classifies every test module by what it exercises."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
DOC = TESTS.parent / "docs" / "testing.md"


def test_every_test_module_is_classified_once() -> None:
    """Each tests/test_*.py appears in exactly one row of the "What the tests exercise" table."""
    section = DOC.read_text().split("## What the tests exercise", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"`(test_[a-z0-9_]+)`", section)
    modules = sorted(path.stem for path in TESTS.glob("test_*.py"))
    assert sorted(listed) == modules
