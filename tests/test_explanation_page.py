"""The explanation page every card links to: through HTTP for every finding and payer profile
(HTML and JSON, no patient data, no token, cacheable), and in Chromium (accessibility, links
that open in a new tab)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from axe_playwright_python.sync_playwright import Axe
from flask import Flask
from flask.testing import FlaskClient
from helpers.browser import chromium, served
from helpers.corpus import EXPECTED, FIXTURE_NAMES, ROOT, load_fixture
from helpers.jwt_tokens import ISSUER, SigningKey, jwk_set, write_trust_file
from helpers.privacy import sensitive_strings
from markupsafe import escape
from playwright.sync_api import Browser

from cds_service.rulepack.explanation import (
    CHECKLIST_FINDINGS,
    CLOSE_QUOTE,
    OPEN_QUOTE,
    explanation_url,
)
from cds_service.rulepack.models import RulePack

STANDARD = "encounter-discharge--tibia-nonunion-removal.json"
ARTIFACTS = ROOT / "tests" / "artifacts"
DOCS_SCREENSHOT = ROOT / "docs" / "explanation.png"  # shown in docs/findings.md


def pages(pack: RulePack) -> list[tuple[str, str | None]]:
    """Every (finding, payer profile) a card can link to, and each finding without a payer."""
    payers: list[str | None] = [None, *(profile.key for profile in pack.payers.profiles)]
    return [(code, payer) for code in pack.findings.findings for payer in payers]


def page_path(code: str, payer: str | None, suffix: str = "") -> str:
    return f"/why/{code}{suffix}" + (f"?payer={payer}" if payer else "")


class _Links(HTMLParser):
    """The page's links and headings, as a browser would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[dict[str, str | None]] = []
        self.headings: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.links.append(dict(attrs))
        if tag in ("h1", "h2", "h3"):
            self.headings.append(tag)


def test_every_page_is_served_as_html_and_json(client: FlaskClient, pack: RulePack) -> None:
    """Each finding, for each payer profile and for none: HTML for people (sources, tiers,
    UNCONFIRMED items, the payer's notes, external links in a new tab) and the same content
    as JSON."""
    for code, payer in pages(pack):
        html = client.get(page_path(code, payer))
        assert html.status_code == 200, (code, payer)
        assert html.mimetype == "text/html"
        text = html.get_data(as_text=True)
        document = client.get(page_path(code, payer, ".json")).get_json()
        template = pack.findings.findings[code]
        assert document["finding"] == code
        assert document["unconfirmed"] == template.unconfirmed
        for source in document["sources"]:
            cited = pack.sources[source["key"]]
            assert (source["tier"], source["read"], source["url"]) == (
                cited.tier,
                cited.read,
                cited.url,
            )
            assert f"(tier {cited.tier}, read {cited.read}" in text
        assert [source["key"] for source in document["sources"]] == template.source.sources
        for item in template.unconfirmed + document["unconfirmedInSomeCases"]:
            assert str(escape(item)) in text, (code, item)
        if payer is None:
            assert "payer" not in document
        else:
            profile = pack.payers.profile(payer)
            assert document["payer"]["label"] == profile.label
            assert f"Payer: {profile.label}" in text
            assert [note["text"] for note in document["payer"]["notes"]] == [
                note.text for note in profile.notes
            ]
        scan = _Links()
        scan.feed(text)
        assert scan.headings[0] == "h1"
        assert scan.headings.count("h1") == 1
        external = [link for link in scan.links if (link["href"] or "").startswith("http")]
        assert {source["url"] for source in document["sources"]} <= {
            link["href"] for link in external
        }
        for link in external:
            assert (link["target"], link["rel"]) == ("_blank", "noopener noreferrer")


def test_checklist_pages_list_every_documentation_element(
    client: FlaskClient, pack: RulePack
) -> None:
    """The findings that ask for documentation show the whole checklist; the others none."""
    assert set(pack.findings.findings) >= CHECKLIST_FINDINGS
    for code in pack.findings.findings:
        document = client.get(page_path(code, None, ".json")).get_json()
        keys = [element["key"] for element in document["documentation"]]
        wanted = [element.key for element in pack.coding.documentation]
        assert keys == (wanted if code in CHECKLIST_FINDINGS else []), code
    text = client.get("/why/documentation-missing").get_data(as_text=True)
    for element in pack.coding.documentation:
        assert f"<code>{element.key}</code>" in text


def test_the_rule_is_explained_with_the_packs_values(client: FlaskClient, pack: RulePack) -> None:
    """``why`` is markdown filled with facts of the pack: no placeholder is left, the AOC file
    and MUE values are those of coding.yaml, and markdown becomes HTML (never raw)."""
    mue = pack.coding.mue
    units = client.get("/why/units-exceed-mue.json").get_json()["why"]
    assert f"({mue.file}) is {mue.units} unit with MAI {mue.mai}" in " ".join(units.split())
    added = client.get("/why/add-on-suggested.json").get_json()
    assert pack.coding.primaries.file in added["why"]
    assert added["summary"] == (
        f"Report +20703 with {OPEN_QUOTE}primary code{CLOSE_QUOTE}: "
        "intramedullary drug-delivery device removed"
    )
    html = client.get("/why/add-on-suggested").get_data(as_text=True)
    assert "<strong>+20703</strong>" in html
    assert "**" not in html
    for code in pack.findings.findings:
        assert "{" not in client.get(page_path(code, None, ".json")).get_json()["why"], code


def test_no_page_holds_patient_data(client: FlaskClient, pack: RulePack) -> None:
    """The pages are the same for every patient: none holds any fixture's patient id, name or
    identifier, and answering a hook call for a patient leaves every page byte for byte as it
    was."""
    before = {key: client.get(page_path(*key)).get_data() for key in pages(pack)}
    secrets: set[str] = set()
    for name in FIXTURE_NAMES:
        body = load_fixture(name)
        secrets |= sensitive_strings(body)
        if EXPECTED[name]["status"] == 200:
            client.post(f"/cds-services/{EXPECTED[name]['service']}", json=body)
    assert len(secrets) > 20
    for key, text in before.items():
        assert client.get(page_path(*key)).get_data() == text, key
        leaked = [secret for secret in secrets if secret.encode() in text]
        assert leaked == [], key


def test_pages_are_cacheable_and_answer_if_none_match(client: FlaskClient) -> None:
    """Public, cacheable pages with an ETag; the same ETag gets 304 without a body. The hook
    endpoints stay no-store."""
    first = client.get("/why/orphan-add-on?payer=aetna")
    assert first.headers["Cache-Control"] == "public, max-age=3600"
    assert first.headers["Vary"] == "Accept"
    etag = first.headers["ETag"]
    again = client.get("/why/orphan-add-on?payer=aetna", headers={"If-None-Match": etag})
    assert (again.status_code, again.get_data()) == (304, b"")
    other = client.get("/why/orphan-add-on?payer=cigna", headers={"If-None-Match": etag})
    assert other.status_code == 200
    assert client.get("/cds-services").headers["Cache-Control"] == "no-store"


def test_json_by_accept_header(client: FlaskClient) -> None:
    """``Accept: application/json`` gets the JSON; a browser's Accept gets the HTML."""
    as_json = client.get("/why/wrong-tier", headers={"Accept": "application/json"})
    assert as_json.mimetype == "application/json"
    assert as_json.get_json()["finding"] == "wrong-tier"
    browser_accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    assert client.get("/why/wrong-tier", headers={"Accept": browser_accept}).mimetype == (
        "text/html"
    )


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/why/no-such-finding", "No finding with that code"),
        ("/why/no-such-finding.json", "No finding with that code"),
        ("/why/add-on-suggested?payer=no-such-payer", "No payer profile with that key"),
    ],
)
def test_unknown_finding_or_payer_is_a_404_operation_outcome(
    client: FlaskClient, path: str, says: str
) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.mimetype == "application/fhir+json"
    assert says in response.get_json()["issue"][0]["diagnostics"]


def test_pages_need_no_token_where_hook_calls_do(
    make_app: Callable[..., Flask], sqlite_url: str, tmp_path: Path
) -> None:
    """With CDS_AUTH=required the hooks refuse a call without a JWT; the page, opened from a
    card in a browser tab that has no token, is served."""
    trust = write_trust_file(tmp_path, [{"iss": ISSUER, "jwks": jwk_set(SigningKey.ec384())}])
    app = make_app({"DATABASE_URL": sqlite_url, "AUTH": "required", "TRUSTED_CLIENTS": str(trust)})
    client = app.test_client()
    assert client.get("/cds-services").status_code == 401
    assert client.get("/why/add-on-suggested?payer=medicare").status_code == 200


def test_card_links_open_the_page_of_their_finding(client: FlaskClient, app: Flask) -> None:
    """Through HTTP: the standard card's one link is its finding's page for the patient's
    payer, under the configured public base URL, and it opens."""
    (card,) = client.post(
        "/cds-services/cpt20703-encounter-discharge", json=load_fixture(STANDARD)
    ).get_json()["cards"]
    base = app.config["PUBLIC_BASE_URL"]
    (link,) = card["links"]
    assert link["url"] == explanation_url(base, "add-on-suggested", "medicare")
    assert link["url"] == f"{base}/why/add-on-suggested?payer=medicare"
    assert client.get(link["url"].removeprefix(base)).status_code == 200


# ---- in Chromium ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def live(make_app: Callable[..., Flask], sqlite_url: str) -> Iterator[str]:
    with served(make_app({"DATABASE_URL": sqlite_url})) as base_url:
        yield base_url


# axe-core rules for labels, contrast, headings, landmarks, language, titles and links.
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]


def test_pages_pass_an_accessibility_check_in_chromium(
    browser: Browser, live: str, pack: RulePack
) -> None:
    """axe-core (WCAG 2.1 A/AA and best practices) finds no violation on any finding's page,
    with and without a payer; the style sheet loads under the page's CSP (no console error)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text))
    page.on("pageerror", lambda error: problems.append(str(error)))
    axe = Axe()
    try:
        for code in pack.findings.findings:
            for payer in (None, "medicare"):
                page.goto(live + page_path(code, payer))
                assert page.evaluate("getComputedStyle(document.body).maxWidth") == "832px"
                results = axe.run(page, options={"runOnly": {"type": "tag", "values": AXE_TAGS}})
                violations = results.response["violations"]
                assert violations == [], json.dumps(
                    [(v["id"], v["help"], len(v["nodes"])) for v in violations]
                )
        page.goto(live + page_path("add-on-suggested", "medicare"))
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "explanation.png"), full_page=True)
        if not DOCS_SCREENSHOT.exists() or os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
            page.screenshot(path=str(DOCS_SCREENSHOT), full_page=True)
    finally:
        context.close()
    assert problems == []


def test_source_links_open_in_a_new_tab_in_chromium(browser: Browser, live: str) -> None:
    """Clicking a source opens a new tab; the page the card linked stays where it was."""
    context = browser.new_context()
    context.route("https://**/*", lambda route: route.fulfill(status=200, body="elsewhere"))
    page = context.new_page()
    try:
        page.goto(f"{live}/why/add-on-suggested?payer=medicare")
        with context.expect_page() as opened:
            page.locator("#sources ~ ul a").first.click()
        assert opened.value.url.startswith("https://")
        assert page.url == f"{live}/why/add-on-suggested?payer=medicare"
    finally:
        context.close()
