"""The package's layers, read from its import statements: every module imports only from its own
layer or below, only the web layer imports Flask, and the rules import no I/O.

Layers, top to bottom (docs/architecture.md): cli; the package ``__init__`` (create_app); web;
engine; rules and config; rulepack, store and security; protocol and fhir; errors, logs, paths,
recent.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cds_service"
FLOORS: dict[str, int] = {
    "cli": 7,
    "__init__": 6,
    "web": 5,
    "engine": 4,
    "rules": 3,
    "config": 3,
    "rulepack": 2,
    "store": 2,
    "security": 2,
    "protocol": 1,
    "fhir": 1,
    "errors": 0,
    "logs": 0,
    "paths": 0,
    "recent": 0,
}
# Libraries that reach outside the process (network, database, files, processes, clock).
IO_MODULES = {
    "flask",
    "requests",
    "sqlalchemy",
    "socket",
    "subprocess",
    "urllib.request",
    "http.client",
    "gunicorn",
    "alembic",
    "time",
    "datetime.datetime.now",
}


def modules() -> list[Path]:
    """Every Python module of the package (Alembic's migration scripts are data, not layers)."""
    return sorted(path for path in PACKAGE.rglob("*.py") if "alembic" not in path.parts)


def room_of(module: str) -> str:
    """``cds_service.rules.facts`` -> ``rules``; ``cds_service`` and names defined in the
    package's ``__init__`` (``cds_service.create_app``) -> ``__init__``."""
    parts = module.split(".")
    if len(parts) > 1 and ((PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").is_file()):
        return parts[1]
    return "__init__"


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = [part for part in relative.parts if part != "__init__"]
    return ".".join(parts)


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names), including imports inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def package_imports(path: Path) -> set[str]:
    """The package modules ``path`` imports, as rooms (``cds_service.web`` -> ``web``)."""
    rooms = set()
    for name in imported(path):
        if name == "cds_service" or name.startswith("cds_service."):
            rooms.add(room_of(name))
    return rooms


def test_every_room_has_a_floor() -> None:
    """A new subpackage or top-level module must be placed in a layer."""
    rooms = {room_of(module_name(path)) for path in modules()}
    assert rooms <= set(FLOORS), sorted(rooms - set(FLOORS))


@pytest.mark.parametrize("path", modules(), ids=lambda path: module_name(path))
def test_imports_run_downward(path: Path) -> None:
    """A module imports from its own layer or below, never from a layer above it."""
    own = room_of(module_name(path))
    upward = sorted(room for room in package_imports(path) if FLOORS[room] > FLOORS[own])
    assert upward == [], f"{module_name(path)} ({own}) imports from higher layers: {upward}"


def test_only_the_web_layer_imports_flask() -> None:
    """Flask stays at the edge (errors.py registers its handlers and is the one exception)."""
    importers = sorted(
        module_name(path)
        for path in modules()
        if any(name == "flask" or name.startswith("flask.") for name in imported(path))
        and room_of(module_name(path)) not in {"web", "__init__"}
    )
    assert importers == ["cds_service.errors"]


def test_rules_import_no_io() -> None:
    """The rules are pure: no network, database, files, processes or clock."""
    offenders = {
        module_name(path): sorted(
            name
            for name in imported(path)
            if any(name == io or name.startswith(io + ".") for io in IO_MODULES)
        )
        for path in (PACKAGE / "rules").glob("*.py")
    }
    assert {module: names for module, names in offenders.items() if names} == {}


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The check itself: a rules module importing the web layer is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from cds_service.web.app_state import service_state\n")
    assert package_imports(bad) == {"web"}
    assert FLOORS["web"] > FLOORS["rules"]


MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 200


def test_modules_stay_small() -> None:
    """No module of the package above 400 lines (ruff holds functions to complexity 12)."""
    sizes = {module_name(path): len(path.read_text().splitlines()) for path in modules()}
    assert {name: lines for name, lines in sizes.items() if lines > MAX_MODULE_LINES} == {}


def test_classes_stay_small() -> None:
    """No class of the package above 200 lines."""
    big = {}
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_CLASS_LINES:
                    big[f"{module_name(path)}.{node.name}"] = lines
    assert big == {}


def test_importing_the_package_does_not_import_the_metrics_library() -> None:
    """``cds-service serve`` imports the package, then sets PROMETHEUS_MULTIPROC_DIR; the web
    layer (and prometheus-client, which reads it once when imported) comes in create_app."""
    probe = (
        "import sys, cds_service, cds_service.cli.main; print('prometheus_client' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
