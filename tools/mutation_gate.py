"""Mutation testing of the rule, fact, claim-edit and card modules, with a score gate.

    python tools/mutation_gate.py [--fraction F] [--threshold T]

Runs mutmut (configured in pyproject.toml ``[tool.mutmut]``: which modules, which fast tests) on
every mutant, or on a stable sample of them (``--fraction``: a mutant is in the sample when a hash
of its name falls under F, so the sample does not reshuffle when other code changes). Prints the
score and the surviving mutants with their diffs, writes them to ``var/mutation-survivors.txt``,
and exits 1 when fewer than T of the non-equivalent mutants are killed. Mutants recorded in
``tests/mutation-equivalent.txt`` (name, the line it writes, a one-line reason) do not count.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTMUT = [sys.executable, "-m", "mutmut"]
EQUIVALENT_FILE = ROOT / "tests" / "mutation-equivalent.txt"
REPORT_FILE = ROOT / "var" / "mutation-survivors.txt"
# Any mutant name works to make mutmut generate the mutants and map tests to functions.
FIRST_MUTANT = "cds_service.rules.claim_edit.x_is_valid_item__mutmut_1"
# mutmut's exit codes per mutant (mutmut.stats): a failing test, a hang or a type error notices
# the mutant; a passing run, or no test at all, does not.
NOTICED = {1, 3, 36, 24, -24, 152, 255, 37}


def run_mutmut(names: list[str]) -> None:
    result = subprocess.run([*MUTMUT, "run", *names], cwd=ROOT, stdout=subprocess.DEVNULL)
    if result.returncode != 0:
        sys.exit(f"mutmut run failed with exit code {result.returncode}")


def results() -> dict[str, int | None]:
    """Exit code of every generated mutant (None: not run), from mutmut's result files."""
    codes: dict[str, int | None] = {}
    for meta in sorted((ROOT / "mutants").rglob("*.py.meta")):
        codes |= json.loads(meta.read_text())["exit_code_by_key"]
    return codes


def in_sample(name: str, fraction: float) -> bool:
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def equivalent_mutants() -> dict[str, str]:
    """Mutants that cannot change behaviour, each with its reason.

    Each entry also gives the line the mutant writes: mutmut numbers mutants per function, so an
    edit to the function renumbers them, and a stale name would set aside some other mutant.
    """
    recorded: dict[str, str] = {}
    for line in EQUIVALENT_FILE.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, mutated, reason = (part.strip() for part in [*line.split(" | ", 2), "", ""][:3])
        if not mutated or not reason:
            sys.exit(f"{EQUIVALENT_FILE.name}: {name} needs 'name | mutated line | reason'")
        if mutated not in diff_of(name):
            sys.exit(f"{EQUIVALENT_FILE.name}: {name} no longer writes {mutated!r}: renumbered?")
        recorded[name] = reason
    return recorded


def diff_of(name: str) -> str:
    shown = subprocess.run([*MUTMUT, "show", name], cwd=ROOT, capture_output=True, text=True)
    return shown.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fraction", type=float, default=1.0, help="share of mutants to run")
    parser.add_argument("--threshold", type=float, default=0.9, help="least killed share")
    args = parser.parse_args(argv)

    run_mutmut([FIRST_MUTANT])
    chosen = sorted(name for name in results() if in_sample(name, args.fraction))
    run_mutmut(chosen)
    codes = results()
    equivalent = equivalent_mutants()
    counted = [name for name in chosen if name not in equivalent]
    unchecked = [name for name in counted if codes.get(name) is None]
    if unchecked:
        sys.exit(f"mutmut did not run {len(unchecked)} mutants, e.g. {unchecked[0]}")
    survivors = [name for name in counted if codes[name] not in NOTICED]
    killed = len(counted) - len(survivors)
    score = killed / len(counted) if counted else 1.0
    REPORT_FILE.parent.mkdir(exist_ok=True)
    REPORT_FILE.write_text("".join(f"{name}\n{diff_of(name)}\n\n" for name in survivors))
    for name in survivors:
        print(f"survived: {name}")
    print(
        f"mutation score: {killed}/{len(counted)} = {score:.1%} killed "
        f"({len(chosen)} mutants run of {len(codes)}, "
        f"{len(chosen) - len(counted)} recorded as equivalent); survivors in "
        f"{REPORT_FILE.relative_to(ROOT)}"
    )
    if score < args.threshold:
        print(f"FAILED: below the threshold of {args.threshold:.0%}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
