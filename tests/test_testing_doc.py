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


def test_every_test_the_threat_model_names_exists() -> None:
    """docs/security.md points each control at its test: each named module and test is real."""
    section = (TESTS.parent / "docs" / "security.md").read_text().split("## Threat model", 1)[1]
    tests = {
        path.stem: set(re.findall(r"^def (test_\w+)", path.read_text(), re.MULTILINE))
        for path in TESTS.glob("test_*.py")
    }
    every_test = set().union(*tests.values())
    named = re.findall(r"`(test_[a-z0-9_]+)(?:::(test_[a-z0-9_]+))?`", section)
    assert len(named) > 20
    missing = [
        (module, test)
        for module, test in named
        if (module in tests and test and test not in tests[module])
        or (module not in tests and module not in every_test)
    ]
    assert missing == []
