"""The explanation page a card links to (``GET /why/<finding>``): HTML for people, JSON for
machines (``/why/<finding>.json``, or ``Accept: application/json``).

The page is the same for every patient (:mod:`cds_service.rulepack.explanation`), so it needs no
token, is cacheable, and the ``payer`` query names a payer profile, never a patient's coverage.
Its links open in a new tab so that the EHR page that showed the card stays where it was.
"""

from __future__ import annotations

import json
from pathlib import Path

from flask import Blueprint, Response, render_template, request
from markdown_it import MarkdownIt
from markupsafe import Markup
from werkzeug.wrappers import Response as WerkzeugResponse

from cds_service.errors import UnknownResourceError
from cds_service.rulepack.explanation import EXPLANATION_PATH, explanation
from cds_service.web.app_state import service_state

bp = Blueprint("explanation", __name__, template_folder="templates")
STYLE_SHEET = Path(__file__).resolve().parent / "templates" / "explanation.css"
JSON_SUFFIX = ".json"
CACHE_CONTROL = "public, max-age=3600"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
# Markdown of the pack's own texts, with raw HTML off: what the pack says is shown, never run.
_MARKDOWN = MarkdownIt("commonmark", {"html": False})


@bp.after_request
def _page_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Referrer-Policy"] = "no-referrer"
    if response.status_code in (200, 304):
        response.headers["Cache-Control"] = CACHE_CONTROL
        response.headers["Vary"] = "Accept"
    return response


@bp.get(f"{EXPLANATION_PATH}/style.css")
def style_sheet() -> WerkzeugResponse:
    """The page's style sheet."""
    response = Response(STYLE_SHEET.read_bytes(), content_type="text/css; charset=utf-8")
    response.add_etag()
    return response.make_conditional(request)


@bp.get(f"{EXPLANATION_PATH}/<name>")
def page(name: str) -> WerkzeugResponse:
    """One finding's explanation, for the payer profile named by ``?payer=`` (optional)."""
    pack = service_state().pack
    wants_json = name.endswith(JSON_SUFFIX) or _prefers_json()
    finding = name.removesuffix(JSON_SUFFIX)
    if finding not in pack.findings.findings:
        raise UnknownResourceError("No finding with that code (a card's cpt20703.finding).")
    payer = request.args.get("payer")
    if payer is not None and payer not in {profile.key for profile in pack.payers.profiles}:
        raise UnknownResourceError("No payer profile with that key.")
    document = explanation(pack, finding, payer)
    if wants_json:
        response = Response(json.dumps(document), mimetype="application/json")
    else:
        html = render_template(
            "explanation.html",
            page=document,
            why=Markup(_MARKDOWN.render(document["why"])),
            title=pack.findings.explanation_label,
        )
        response = Response(html, content_type="text/html; charset=utf-8")
    response.add_etag()
    return response.make_conditional(request)


def _prefers_json() -> bool:
    """An Accept header that ranks JSON above HTML (``*/*`` and browsers get HTML)."""
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"
