"""What goes wrong in a rule pack, located in its file: one :class:`PackProblem` per error, all of
them carried by :class:`RulePackError`.

A location is the path of a value in its YAML document (``("findings", "orphan-add-on",
"summary")``); a file's line map says on which line each path starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# A YAML document's paths, each mapped to the line (1-based) where its value starts.
LineMap = Mapping[tuple[str | int, ...], int]


@dataclass(frozen=True)
class PackProblem:
    """One error in the rule pack, located in its file."""

    file: str
    line: int
    message: str

    @classmethod
    def at(cls, file: str, lines: LineMap, loc: tuple[str | int, ...], message: str) -> PackProblem:
        """``message`` at path ``loc`` of ``file``: on the path's line, prefixed by the path."""
        return cls(file, _line_of(lines, loc), _describe(loc, message))

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class RulePackError(Exception):
    """The rule pack is missing or invalid; carries every problem found."""

    def __init__(self, problems: Sequence[PackProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


def _describe(loc: tuple[str | int, ...], message: str) -> str:
    path = ".".join(str(part) for part in loc) or "(top level)"
    return f"{path}: {message}"


def _line_of(lines: LineMap, loc: Sequence[str | int]) -> int:
    """The line of the deepest known prefix of ``loc``."""
    for end in range(len(loc), -1, -1):
        line = lines.get(tuple(loc[:end]))
        if line is not None:
            return line
    return 1
