"""The card playground: a page at ``/`` that sends fixtures or pasted requests and shows the cards.

Plain HTML, CSS and JavaScript shipped in ``playground_static/``; nothing is built and
nothing loads from another origin (the Content-Security-Policy says so to the browser). The page
talks to the service's own public endpoints, so what it shows is what an EHR gets.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from flask import Blueprint, Response

from cds_service.errors import UnknownResourceError
from cds_service.paths import data_dir
from cds_service.web.app_state import service_state

bp = Blueprint("playground", __name__)
STATIC_DIR = Path(__file__).resolve().parent / "playground_static"
# The page's files and their media types (named here, not guessed from the platform's
# mimetypes table: with nosniff, a script served as text/plain would not run).
ASSETS: Mapping[str, str] = MappingProxyType(
    {
        "playground.css": "text/css",
        "playground.js": "text/javascript",
        "markdown.js": "text/javascript",
        "diff.js": "text/javascript",
    }
)
# Trusted Types: only the markdown renderer's policy (which escapes before it formats) may turn a
# string into HTML; any other innerHTML assignment throws in the browser.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "require-trusted-types-for 'script'; trusted-types cds-markdown"
)


@cache
def fixture_catalogue(directory: Path) -> dict[str, dict[str, Any]]:
    """Fixture name -> {name, hook, service, findings}, from the files and ``expected.json``."""
    expected_path = directory / "expected.json"
    expected = json.loads(expected_path.read_text(encoding="utf-8"))
    catalogue: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*--*.json")):
        body = json.loads(path.read_text(encoding="utf-8"))
        outcome = expected.get(path.name, {})
        catalogue[path.name] = {
            "name": path.name,
            "hook": body.get("hook"),
            "service": outcome.get("service"),
            "status": outcome.get("status"),
            "findings": outcome.get("findings", []),
        }
    return catalogue


def _enabled() -> None:
    if not service_state().settings.playground:
        raise UnknownResourceError("The card playground is off (CDS_PLAYGROUND).")


def _static_file(name: str, media_type: str) -> Response:
    """One of the page's small files, read whole (never streamed from an open file)."""
    return Response((STATIC_DIR / name).read_bytes(), content_type=f"{media_type}; charset=utf-8")


@bp.after_request
def _content_security_policy(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get("/")
def page() -> Response:
    """The playground page."""
    _enabled()
    return _static_file("index.html", "text/html")


@bp.get("/playground/<asset>")
def asset(asset: str) -> Response:
    """The page's scripts and style sheet."""
    _enabled()
    if asset not in ASSETS:
        raise UnknownResourceError("No such playground file.")
    return _static_file(asset, ASSETS[asset])


@bp.get("/playground/fixtures")
def fixtures() -> Response:
    """The fixtures the page offers, with the service and findings each is expected to give."""
    _enabled()
    listing = list(fixture_catalogue(data_dir("fhir_fixtures")).values())
    return Response(json.dumps(listing), mimetype="application/json")


@bp.get("/playground/fixtures/<name>")
def fixture(name: str) -> Response:
    """One fixture's request body, as the page loads it into the editor."""
    _enabled()
    directory = data_dir("fhir_fixtures")
    if name not in fixture_catalogue(directory):
        raise UnknownResourceError("No fixture with that name.")
    return Response((directory / name).read_bytes(), mimetype="application/json")
