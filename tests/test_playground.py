"""The card playground: its routes (Flask test client) and the page in a real browser.

The browser tests start the real service over real HTTP on loopback (a werkzeug server in a
thread, one SQLite file per test) and drive Debian's Chromium with Playwright (``playwright
install`` is never run). Without ``/usr/bin/chromium`` (or ``$PLAYGROUND_CHROMIUM``) they skip,
or fail when ``CI`` is set.
Screenshots go to ``tests/artifacts/``; ``docs/playground.png`` (shown in the README) is written
when it is missing, or refreshed when ``UPDATE_DOCS_SCREENSHOT=1``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from helpers.browser import chromium, served
from helpers.corpus import EXPECTED, FIXTURE_NAMES, FIXTURES, ROOT, load_fixture
from helpers.jwt_tokens import ISSUER, SigningKey, jwk_set, write_trust_file
from playwright.sync_api import Browser, Locator, Page, Request, Route, expect

from cds_service.web.app_state import service_state
from cds_service.web.playground import ASSETS, CONTENT_SECURITY_POLICY, STATIC_DIR

ARTIFACTS = ROOT / "tests" / "artifacts"
DOCS_SCREENSHOT = ROOT / "docs" / "playground.png"
STANDARD = "encounter-discharge--tibia-nonunion-removal.json"
TWO_CARDS = "encounter-discharge--missing-documentation.json"
NEEDS_PREFETCH = "encounter-discharge--missing-required-prefetch.json"
DISCHARGE = "cpt20703-encounter-discharge"
TIMEOUT_MS = 10_000


# ---- routes, through the Flask test client ------------------------------------------------


class _PageScan(HTMLParser):
    """Collects what a CSP without 'unsafe-inline' would refuse, and the page's URLs."""

    def __init__(self) -> None:
        super().__init__()
        self.inline: list[str] = []
        self.urls: list[str] = []
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        for name, value in attrs:
            if name == "style" or name.startswith("on"):
                self.inline.append(f"<{tag} {name}>")
            if name in ("src", "href", "action") and value is not None:
                self.urls.append(value)
        if tag == "script":
            self._in_script = True
            self.scripts.append(names.get("src") or "")
        if tag == "style":
            self.inline.append("<style>")
        if tag == "link" and names.get("rel") == "stylesheet":
            self.styles.append(names.get("href") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("inline script")


def test_page_is_served_with_the_content_security_policy(client: Any) -> None:
    """GET / is the page, under a CSP that allows only this origin and no inline code."""
    response = client.get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    csp = response.headers["Content-Security-Policy"]
    assert csp == CONTENT_SECURITY_POLICY
    assert "default-src 'none'" in csp
    assert "script-src 'self'" in csp
    assert "style-src 'self'" in csp
    assert "unsafe" not in csp
    assert "require-trusted-types-for 'script'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"

    scan = _PageScan()
    scan.feed(response.get_data(as_text=True))
    assert scan.inline == []
    assert sorted(scan.scripts) == sorted(
        f"/playground/{name}" for name in ASSETS if name.endswith(".js")
    )
    assert scan.styles == ["/playground/playground.css"]
    # Nothing from another origin: only this server's paths, fragments and the empty icon.
    assert all(re.match(r"^(/playground/|#|data:,$)", url) for url in scan.urls), scan.urls


def test_assets_are_served_with_their_media_types(client: Any) -> None:
    """Every page file is served, byte for byte, with an explicit media type; none is left out."""
    on_disk = {path.name for path in STATIC_DIR.iterdir() if path.is_file()}
    assert on_disk == set(ASSETS) | {"index.html"}
    for name, media_type in ASSETS.items():
        response = client.get(f"/playground/{name}")
        assert response.status_code == 200, name
        assert response.mimetype == media_type
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert response.get_data() == (STATIC_DIR / name).read_bytes()


@pytest.mark.parametrize(
    "path",
    [
        "/playground/evil.js",
        "/playground/index.html",
        "/playground/..%2Fplayground.py",
        "/playground/fixtures/no-such-fixture.json",
        "/playground/fixtures/expected.json",
    ],
)
def test_unknown_files_are_404_operation_outcomes(client: Any, path: str) -> None:
    """Only the listed files and fixtures are served; anything else is a FHIR 404."""
    response = client.get(path)
    assert response.status_code == 404
    assert response.mimetype == "application/fhir+json"
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["diagnostics"]


def test_fixture_listing_names_every_fixture(client: Any) -> None:
    """The listing has one entry per fixture file, with its hook and expected outcome."""
    response = client.get("/playground/fixtures")
    assert response.status_code == 200
    listing = response.get_json()
    files = sorted(path.name for path in FIXTURES.glob("*--*.json"))
    assert [entry["name"] for entry in listing] == files == FIXTURE_NAMES
    for entry in listing:
        expected = EXPECTED[entry["name"]]
        assert entry["hook"] == load_fixture(entry["name"])["hook"]
        assert entry["service"] == expected["service"]
        assert entry["status"] == expected["status"]
        assert entry["findings"] == expected["findings"]


def test_fixture_bodies_round_trip(client: Any) -> None:
    """Each fixture comes back exactly as the file holds it."""
    for name in FIXTURE_NAMES:
        response = client.get(f"/playground/fixtures/{name}")
        assert response.status_code == 200, name
        assert response.mimetype == "application/json"
        assert response.get_data() == (FIXTURES / name).read_bytes()
        assert response.get_json() == load_fixture(name)


PLAYGROUND_PATHS = [
    "/",
    "/playground/playground.js",
    "/playground/fixtures",
    f"/playground/fixtures/{STANDARD}",
]


def test_playground_off_hides_every_route(make_app: Callable[..., Flask], sqlite_url: str) -> None:
    """CDS_PLAYGROUND=off: the page, its files and the fixtures are 404; the service still runs."""
    client = make_app({"DATABASE_URL": sqlite_url, "PLAYGROUND": "off"}).test_client()
    for path in PLAYGROUND_PATHS:
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.get_json()["resourceType"] == "OperationOutcome"
        assert "CDS_PLAYGROUND" in response.get_json()["issue"][0]["diagnostics"]
    assert client.get("/cds-services").status_code == 200


def test_production_profile_has_no_playground_by_default(
    make_app: Callable[..., Flask], sqlite_url: str, tmp_path: Path
) -> None:
    """Production serves no playground unless CDS_PLAYGROUND=on says so."""
    trust_file = write_trust_file(tmp_path, [{"iss": ISSUER, "jwks": jwk_set(SigningKey.ec384())}])
    production = {
        "DATABASE_URL": sqlite_url,
        "PROFILE": "production",
        "PUBLIC_BASE_URL": "https://cds.example.org",
        "TRUSTED_CLIENTS": str(trust_file),
        "FHIR_SERVER_ALLOWLIST": "https://ehr.example.org/fhir",
    }
    client = make_app(production).test_client()
    for path in PLAYGROUND_PATHS:
        assert client.get(path).status_code == 404, path
    explicit = make_app(production | {"PLAYGROUND": "on"}).test_client()
    assert explicit.get("/").status_code == 200


# ---- the page in a real browser -------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, driven by Playwright (one browser for the module)."""
    with chromium() as launched:
        yield launched


@dataclass
class Playground:
    """The served app and a browser page showing it."""

    page: Page
    base_url: str
    app: Flask
    problems: list[str] = field(default_factory=list)

    def open(self) -> None:
        self.page.goto(self.base_url + "/")
        self.page.wait_for_selector("body[data-ready=true]")

    def pick(self, name: str) -> None:
        """Choose a fixture and wait until its body is in the editor."""
        self.page.select_option("#fixture", name)
        expect(self.page.locator("#request-body")).to_have_value(
            (FIXTURES / name).read_text(encoding="utf-8")
        )

    def send(self) -> tuple[Request, Any]:
        """Click Send; the request the page made and the service's JSON answer."""
        with self.page.expect_response(lambda r: r.request.method == "POST") as answer:
            self.page.click("#send")
        response = answer.value
        self.page.wait_for_selector("#result-meta:not([hidden])")
        return response.request, response.json()

    def feedback_rows(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = service_state(self.app).store.feedback_rows()
        return rows

    def screenshot(self, name: str, of: Locator | None = None) -> Path:
        """A screenshot in tests/artifacts/: the whole page, or one element."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        if of is None:
            self.page.screenshot(path=str(path), full_page=True)
        else:
            of.screenshot(path=str(path))
        return path


@pytest.fixture
def playground(
    browser: Browser, make_app: Callable[..., Flask], sqlite_url: str
) -> Iterator[Playground]:
    """The real service on a loopback port, and a fresh browser page; no page may log an error."""
    app = make_app({"DATABASE_URL": sqlite_url})
    with served(app) as base_url:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        state = Playground(page, base_url, app)
        page.on("pageerror", lambda error: state.problems.append(f"page error: {error}"))
        page.on(
            "console",
            lambda message: (
                state.problems.append(f"console {message.type}: {message.text}")
                # A 4xx answer is logged by the browser as a failed load; that is the test's point.
                if message.type in ("error", "warning")
                and "Failed to load resource" not in message.text
                else None
            ),
        )
        try:
            yield state
        finally:
            context.close()
    # CSP and Trusted Types violations, and any script error, show up here.
    assert state.problems == []


def card_locator(page: Page, finding: str) -> Locator:
    return page.locator(f"article.card[data-finding='{finding}']")


def test_standard_fixture_renders_cards_and_accept_stores_feedback(
    playground: Playground,
) -> None:
    """Pick, send, see the card as an EHR shows it, and accept: the feedback row is stored."""
    page = playground.page
    playground.open()
    playground.pick(STANDARD)
    assert page.input_value("#service") == DISCHARGE
    request, body = playground.send()
    assert request.url == f"{playground.base_url}/cds-services/{DISCHARGE}"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.post_data or "") == load_fixture(STANDARD)
    (card,) = body["cards"]
    suggestion = card["suggestions"][0]

    # Status, time, raw JSON.
    expect(page.locator("#result-status")).to_contain_text("HTTP 200 OK")
    expect(page.locator("#result-status")).to_contain_text("1 card")
    assert page.inner_text("#result-http") == "HTTP 200 OK"
    assert re.fullmatch(r"\d+ ms", page.inner_text("#result-time"))
    expect(page.locator("#raw-json")).to_be_hidden()  # collapsed until asked for

    # The card: indicator label, summary, markdown detail, source link.
    article = page.locator("article.card")
    expect(article).to_have_count(1)
    assert_rendered_like_an_ehr(article, card)

    # The suggestion's Claim update as a diff against the draft Claim of the prefetch.
    assert_claim_update_diff(article, suggestion)

    shot = playground.screenshot("playground-standard-cards.png")
    if not DOCS_SCREENSHOT.exists() or os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(shot, DOCS_SCREENSHOT)
    page.click("#raw summary")
    assert json.loads(page.inner_text("#raw-json")) == body

    # Accept: real feedback, the server's answer on the card, the card's controls disabled.
    with page.expect_request(lambda r: r.url.endswith("/feedback")) as sent:
        page.get_by_role("button", name=suggestion["label"]).click()
    assert sent.value.url == f"{playground.base_url}/cds-services/{DISCHARGE}/feedback"
    (entry,) = json.loads(sent.value.post_data or "")["feedback"]
    timestamp = entry.pop("outcomeTimestamp")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", timestamp)
    assert entry == {
        "card": card["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": suggestion["uuid"]}],
    }
    feedback = article.locator(".card-feedback")
    expect(feedback).to_contain_text("stored 1, duplicates 0")
    for control in article.locator("button, select").all():
        expect(control).to_be_disabled()
    (row,) = playground.feedback_rows()
    assert row["service_id"] == DISCHARGE
    assert row["card_uuid"] == card["uuid"]
    assert row["card_issued"] is True
    assert row["outcome"] == "accepted"
    assert suggestion["uuid"] in row["accepted_suggestions"]
    assert row["override_code"] is None
    playground.screenshot("playground-accepted.png", of=article)


def assert_rendered_like_an_ehr(article: Locator, card: dict[str, Any]) -> None:
    """The card's indicator label, summary, markdown detail (safe links) and source link."""
    assert article.locator(".indicator").inner_text().strip().lower().endswith("info")
    expect(article.locator("h3")).to_have_text(card["summary"])
    detail = article.locator(".card-detail")
    detail_html = detail.inner_html()
    assert "<strong>+20703</strong>" in detail_html
    assert "<li>" in detail_html
    assert "**" not in detail.inner_text()
    assert "](" not in detail.inner_text()
    assert detail.locator("a").count() == 0  # the reasons are one click away, not inline
    (link,) = card["links"]
    why = article.locator(".links a")
    expect(why).to_have_count(1)
    expect(why).to_contain_text(link["label"])
    assert why.get_attribute("href") == link["url"]
    assert why.get_attribute("rel") == "noopener noreferrer"
    assert why.get_attribute("target") == "_blank"
    source = article.locator(".card-source a")
    assert source.get_attribute("href") == card["source"]["url"]
    assert source.get_attribute("rel") == "noopener noreferrer"
    expect(source).to_contain_text(card["source"]["label"])


def assert_claim_update_diff(article: Locator, suggestion: dict[str, Any]) -> None:
    """The suggestion's Claim update: only lines added, the 20703 line among them."""
    diff = article.locator("pre.diff")
    added = [text.rstrip("\n") for text in diff.locator("ins").all_inner_texts()]
    assert any(re.fullmatch(r'\+ +"code": "20703",?', line) for line in added), added
    assert diff.locator("del").count() == 0
    expect(article.locator(".diff-box summary")).to_contain_text(
        f"+{len(added)} lines added, \u22120 lines removed"
    )
    expect(article.locator(".action-head")).to_contain_text(
        f"Claim/{suggestion['actions'][0]['resource']['id']}"
    )


def test_dismiss_with_an_override_reason_stores_it(playground: Playground) -> None:
    """Dismissing one card of two sends "overridden" with the chosen reason; the other stays open."""
    page = playground.page
    playground.open()
    playground.pick(TWO_CARDS)
    _, body = playground.send()
    by_finding = {card["extension"]["cpt20703.finding"]: card for card in body["cards"]}
    dismissed = by_finding["documentation-missing"]
    reason = dismissed["overrideReasons"][1]

    article = card_locator(page, "documentation-missing")
    assert article.locator(".indicator").inner_text().strip().lower().endswith("warning")
    # The documentation Task is a "create": the whole resource, every line added.
    assert article.locator("pre.diff del").count() == 0
    assert article.locator("pre.diff ins").count() > 5
    expect(article.locator(".tag--create")).to_have_text("create")
    # Task list items of the detail are rendered as boxes, not as "[ ]".
    assert article.locator(".task-box").count() == len(
        dismissed["extension"]["cpt20703.missing-documentation"]
    )

    article.get_by_label("Override reason").select_option(label=reason["display"])
    with page.expect_request(lambda r: r.url.endswith("/feedback")) as sent:
        article.get_by_role("button", name="Dismiss").click()
    (entry,) = json.loads(sent.value.post_data or "")["feedback"]
    assert entry["card"] == dismissed["uuid"]
    assert entry["outcome"] == "overridden"
    assert entry["overrideReason"] == {"reason": reason}
    assert "acceptedSuggestions" not in entry
    expect(article.locator(".card-feedback")).to_contain_text("stored 1")
    expect(article.locator(".card-feedback")).to_contain_text(reason["display"])
    expect(article.get_by_role("button", name="Dismiss")).to_be_disabled()
    other = card_locator(page, "add-on-suggested")
    expect(other.get_by_role("button", name="Dismiss")).to_be_enabled()

    (row,) = playground.feedback_rows()
    assert row["outcome"] == "overridden"
    assert row["card_uuid"] == dismissed["uuid"]
    assert row["override_code"] == reason["code"]
    assert row["override_system"] == reason["system"]
    assert row["accepted_suggestions"] is None
    playground.screenshot("playground-dismissed.png", of=article)


HOSTILE_DETAIL = """**Bold** stays bold.

<img src=x onerror="window.__xss = 'img'"> and <script>window.__xss = 'script'</script>

- [a javascript link](javascript:window.__xss='link')
- [a data link](data:text/html,<script>alert(1)</script>)
- [a safe link](https://example.org/a_(b)?c=1&d=2)
- [quote breaker](https://example.org/"onmouseover="window.__xss='attr')
- <a href="https://example.org" onclick="window.__xss='a'">raw anchor</a>
"""


def hostile_response(request: dict[str, Any]) -> dict[str, Any]:
    """A card whose every text field carries markup, and actions of all three kinds."""
    draft = request["prefetch"]["claims"]["entry"][0]["resource"]
    return {
        "cards": [
            {
                "uuid": "0b0c6a1e-1111-4c3b-9d9a-000000000001",
                "summary": "<b>not bold</b> <img src=x onerror=\"window.__xss='summary'\">",
                "indicator": "critical",
                "detail": HOSTILE_DETAIL,
                "source": {
                    "label": "<i>label</i>",
                    "url": "javascript:window.__xss='source'",
                },
                "suggestions": [
                    {
                        "label": "<img src=x onerror=\"window.__xss='label'\">",
                        "uuid": "0b0c6a1e-1111-4c3b-9d9a-000000000002",
                        "actions": [
                            {
                                "type": "delete",
                                "description": "<script>window.__xss='desc'</script>",
                                "resourceId": f"Claim/{draft['id']}",
                            },
                            {
                                "type": "create",
                                "description": "A new Task",
                                "resource": {"resourceType": "Task", "status": "<b>x</b>"},
                            },
                        ],
                    }
                ],
                "overrideReasons": [
                    {"code": "x", "system": "https://e.org", "display": "<img src=x>"}
                ],
                "links": [
                    {
                        "label": "bad link",
                        "url": "javascript:window.__xss='links'",
                        "type": "absolute",
                    },
                    {"label": "good link", "url": "https://example.org/app", "type": "smart"},
                ],
            }
        ]
    }


def test_card_markup_is_rendered_as_text(playground: Playground) -> None:
    """HTML in any card field is shown as text; only http(s) links become links."""
    page = playground.page
    request = load_fixture(STANDARD)

    def fulfil(route: Route) -> None:
        route.fulfill(
            status=200, content_type="application/json", body=json.dumps(hostile_response(request))
        )

    page.route(f"**/cds-services/{DISCHARGE}", fulfil)
    playground.open()
    playground.pick(STANDARD)
    playground.send()
    article = page.locator("article.card")
    expect(article).to_have_count(1)

    assert page.evaluate("window.__xss") is None
    assert (
        page.locator("#cards img, #cards script, #cards [onerror], #cards [onclick]").count() == 0
    )
    assert_hostile_detail_is_text(page, article.locator(".card-detail"))

    expect(article.locator("h3")).to_have_text(
        "<b>not bold</b> <img src=x onerror=\"window.__xss='summary'\">"
    )
    assert article.locator(".indicator").inner_text().strip().lower().endswith("critical")
    # A non-http(s) source URL leaves the label as text, not a link.
    assert article.locator(".card-source a").count() == 0
    expect(article.locator(".card-source")).to_contain_text("<i>label</i>")
    expect(article.locator(".suggestion button")).to_have_text(
        "<img src=x onerror=\"window.__xss='label'\">"
    )
    expect(article.locator(".override option")).to_have_text("<img src=x>")
    links = article.locator(".links a")
    assert [link.get_attribute("href") for link in links.all()] == ["https://example.org/app"]

    # delete: the draft Claim from the prefetch, every line removed; create: every line added.
    boxes = article.locator(".diff-box")
    assert boxes.nth(0).locator("ins").count() == 0
    assert boxes.nth(0).locator("del").count() > 20
    assert boxes.nth(1).locator("del").count() == 0
    assert '+   "status": "<b>x</b>"' in boxes.nth(1).locator("ins").all_inner_texts()[-2]
    assert page.evaluate("window.__xss") is None

    # Feedback the server refuses leaves the card open, with the reason; a retry goes through
    # (stored, and flagged as a card this service never issued).
    assert_refused_feedback_can_be_retried(playground, article)
    playground.screenshot("playground-hostile-card.png", of=article)


def assert_hostile_detail_is_text(page: Page, detail: Locator) -> None:
    """The hostile detail's markup shows as text; only its http(s) links are links."""
    text = detail.inner_text()
    assert "<img src=x onerror=\"window.__xss = 'img'\">" in text
    assert "<script>window.__xss = 'script'</script>" in text
    assert '<a href="https://example.org" onclick=' in text
    assert detail.locator("strong").inner_text() == "Bold"
    hrefs = [link.get_attribute("href") for link in detail.locator("a").all()]
    assert hrefs == [
        "https://example.org/a_(b)?c=1&d=2",
        "https://example.org/\"onmouseover=\"window.__xss='attr'",
    ]
    for link in detail.locator("a").all():
        assert sorted(page.evaluate("(a) => a.getAttributeNames()", link.element_handle())) == [
            "href",
            "rel",
            "target",
        ]
    assert "a javascript link" in text
    assert "a data link" in text
    assert page.locator("#cards a[href^='javascript:'], #cards a[href^='data:']").count() == 0


def assert_refused_feedback_can_be_retried(playground: Playground, article: Locator) -> None:
    """Dismiss answered 503 keeps the card open with the reason; the retry is stored."""
    page = playground.page
    outage = {"resourceType": "OperationOutcome", "issue": [{"severity": "error",
              "code": "transient", "diagnostics": "Database briefly unavailable."}]}  # fmt: skip
    page.route(
        "**/feedback",
        lambda route: route.fulfill(
            status=503, content_type="application/fhir+json", body=json.dumps(outage)
        ),
    )
    dismiss = article.get_by_role("button", name="Dismiss")
    dismiss.click()
    feedback = article.locator(".card-feedback")
    expect(feedback).to_contain_text("HTTP 503 Service Unavailable: Database briefly unavailable.")
    expect(dismiss).to_be_enabled()
    page.unroute("**/feedback")
    dismiss.click()
    expect(feedback).to_contain_text("stored 1, duplicates 0, unknown cards 1")
    expect(dismiss).to_be_disabled()
    (row,) = playground.feedback_rows()
    assert row["card_issued"] is False
    assert row["override_code"] == "x"


def test_operation_outcome_is_shown_readably(playground: Playground) -> None:
    """A refused call shows its status and diagnostics, in the live region and in the page."""
    page = playground.page
    playground.open()
    playground.pick(NEEDS_PREFETCH)
    _, body = playground.send()
    diagnostics = body["issue"][0]["diagnostics"]
    expect(page.locator("#result-status")).to_contain_text("HTTP 412 Precondition Failed")
    expect(page.locator("#result-status")).to_contain_text(diagnostics)
    error = page.locator("#result-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("HTTP 412 Precondition Failed")
    expect(error).to_contain_text(diagnostics)
    expect(page.locator("article.card")).to_have_count(0)
    page.click("#raw summary")
    assert json.loads(page.inner_text("#raw-json")) == body
    playground.screenshot("playground-412.png")


def test_send_without_prefetch_deletes_it(playground: Playground) -> None:
    """The checkbox drops prefetch: the service must fetch, may not here, and says so (412)."""
    page = playground.page
    playground.open()
    playground.pick(STANDARD)
    page.get_by_label("Send without prefetch (the service fetches from fhirServer)").check()
    request, body = playground.send()
    sent = json.loads(request.post_data or "")
    expected = load_fixture(STANDARD)
    del expected["prefetch"]
    assert sent == expected
    # The tests' allowlist refuses the fixture's fhirServer: no traffic leaves, 412 comes back.
    assert body["resourceType"] == "OperationOutcome"
    expect(page.locator("#result-http")).to_have_text("HTTP 412 Precondition Failed")
    # The editor still holds the whole request.
    assert "prefetch" in json.loads(page.input_value("#request-body"))


def test_service_follows_the_request_hook(playground: Playground) -> None:
    """The service defaults to the one whose hook the request names; a mismatch is pointed out."""
    page = playground.page
    playground.open()
    playground.pick("order-sign--planned-removal-reminder.json")
    assert page.input_value("#service") == "cpt20703-order-sign"
    playground.pick(STANDARD)
    assert page.input_value("#service") == DISCHARGE
    # A pasted request with another hook switches the service; so does switching back.
    pasted = load_fixture(STANDARD)
    page.select_option("#fixture", "")
    page.fill("#request-body", json.dumps(pasted | {"hook": "order-sign"}))
    expect(page.locator("#service")).to_have_value("cpt20703-order-sign")
    page.fill("#request-body", json.dumps(pasted))
    expect(page.locator("#service")).to_have_value(DISCHARGE)
    # A service chosen by hand stays chosen; the mismatch is pointed out, and the service says 400.
    page.select_option("#service", "cpt20703-order-sign")
    expect(page.locator("#service-info .hook-warning")).to_contain_text("expect HTTP 400")
    _, body = playground.send()
    assert body["resourceType"] == "OperationOutcome"
    expect(page.locator("#result-http")).to_have_text("HTTP 400 Bad Request")
    expect(page.locator("#service")).to_have_value("cpt20703-order-sign")


def focused_id(page: Page) -> str:
    value: str = page.evaluate("document.activeElement && document.activeElement.id || ''")
    return value


def tab_to(page: Page, predicate: Callable[[], bool], limit: int = 40) -> None:
    for _ in range(limit):
        page.keyboard.press("Tab")
        if predicate():
            return
    raise AssertionError("Tab never reached the control")


def test_keyboard_only(playground: Playground) -> None:
    """Choose a fixture, send and accept with the keyboard alone; focus is always visible."""
    page = playground.page
    playground.open()

    # The skip link comes first and is visible when focused.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip-link"
    box = page.locator(".skip-link").bounding_box()
    assert box is not None
    assert box["y"] >= 0

    tab_to(page, lambda: focused_id(page) == "fixture")
    # Arrow keys change a closed select's value (and fire "change") on Linux Chromium.
    before = page.input_value("#fixture")
    page.keyboard.press("ArrowDown")
    chosen = page.input_value("#fixture")
    assert chosen != before
    expect(page.locator("#request-body")).to_have_value((FIXTURES / chosen).read_text())
    page.keyboard.press("ArrowUp")
    expect(page.locator("#request-body")).to_have_value((FIXTURES / before).read_text())
    assert before == STANDARD

    tab_to(page, lambda: focused_id(page) == "send")
    outline = page.evaluate(
        "(() => { const s = getComputedStyle(document.activeElement);"
        " return [s.outlineStyle, parseFloat(s.outlineWidth)]; })()"
    )
    assert outline[0] != "none"
    assert outline[1] >= 2
    with page.expect_response(lambda r: r.request.method == "POST"):
        page.keyboard.press("Enter")
    expect(page.locator("article.card")).to_have_count(1)

    label = page.locator(".suggestion button").inner_text()
    tab_to(page, lambda: page.evaluate("document.activeElement.textContent") == label)
    page.keyboard.press("Enter")
    expect(page.locator(".card-feedback")).to_contain_text("stored 1")
    (row,) = playground.feedback_rows()
    assert row["outcome"] == "accepted"


ACCESSIBILITY_AUDIT = """
() => {
  const problems = [];
  const name = (el) => (el.getAttribute('aria-label') || el.textContent || '').trim();
  for (const el of document.querySelectorAll('input, select, textarea')) {
    const labelled = [...el.labels].some((label) => label.textContent.trim())
      || el.getAttribute('aria-label') || el.getAttribute('aria-labelledby');
    if (!labelled) problems.push('no label: ' + el.outerHTML.slice(0, 80));
  }
  for (const el of document.querySelectorAll('button, a[href], summary')) {
    if (!name(el)) problems.push('no accessible name: ' + el.outerHTML.slice(0, 80));
  }
  const ids = [...document.querySelectorAll('[id]')].map((el) => el.id);
  const duplicates = ids.filter((id, i) => ids.indexOf(id) !== i);
  if (duplicates.length) problems.push('duplicate ids: ' + duplicates.join(','));
  for (const el of document.querySelectorAll('[aria-labelledby], [aria-describedby]')) {
    for (const attr of ['aria-labelledby', 'aria-describedby']) {
      for (const id of (el.getAttribute(attr) || '').split(/\\s+/).filter(Boolean)) {
        if (!document.getElementById(id)) problems.push(attr + ' points nowhere: ' + id);
      }
    }
  }
  const levels = [...document.querySelectorAll('h1, h2, h3, h4, h5, h6')].map((h) => +h.tagName[1]);
  if (levels[0] !== 1 || levels.filter((l) => l === 1).length !== 1) problems.push('one h1 first');
  levels.forEach((level, i) => {
    if (i && level > levels[i - 1] + 1) problems.push('heading level skipped: h' + level);
  });
  for (const selector of ['header', 'main', 'footer']) {
    if (document.querySelectorAll(selector).length !== 1) problems.push('landmark: ' + selector);
  }
  if (!document.querySelector('[aria-live="polite"][role="status"]')) problems.push('no live region');
  if (!document.documentElement.lang) problems.push('no lang');

  // WCAG AA contrast of every visible text (4.5:1, 3:1 for large text).
  const rgb = (value) => (value.match(/[\\d.]+/g) || []).map(Number);
  const luminance = ([r, g, b]) => {
    const channel = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
  };
  const background = (el) => {
    for (let node = el; node; node = node.parentElement) {
      const color = rgb(getComputedStyle(node).backgroundColor);
      if (color.length === 3 || (color.length === 4 && color[3] === 1)) return color.slice(0, 3);
      if (color.length === 4 && color[3] > 0) return null;  // translucent: not judged here
    }
    return [255, 255, 255];
  };
  let checked = 0;
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let text = walker.nextNode(); text; text = walker.nextNode()) {
    const el = text.parentElement;
    if (!text.textContent.trim() || !el.getClientRects().length) continue;
    if (el.closest('.visually-hidden, [hidden], option')) continue;
    const style = getComputedStyle(el);
    if (style.visibility === 'hidden') continue;
    const bg = background(el);
    if (!bg) continue;
    const [a, b] = [luminance(rgb(style.color)), luminance(bg)];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && +style.fontWeight >= 700);
    checked += 1;
    if (ratio < (large ? 3 : 4.5)) {
      problems.push('contrast ' + ratio.toFixed(2) + ': ' + text.textContent.trim().slice(0, 40));
    }
  }
  return {problems: [...new Set(problems)], checked};
}
"""


def test_accessibility_basics(playground: Playground) -> None:
    """Labels, names, headings, landmarks, live region and AA contrast, with cards, an error and
    a disabled card on the page."""
    page = playground.page
    playground.open()
    audit = page.evaluate(ACCESSIBILITY_AUDIT)
    assert audit["problems"] == []
    playground.pick(TWO_CARDS)
    playground.send()
    page.click("#raw summary")
    card_locator(page, "add-on-suggested").get_by_role("button", name="Dismiss").click()
    expect(page.locator(".card-feedback").first).to_contain_text("stored 1")
    audit = page.evaluate(ACCESSIBILITY_AUDIT)
    assert audit["problems"] == []
    assert audit["checked"] > 100
    playground.pick(NEEDS_PREFETCH)
    playground.send()
    audit = page.evaluate(ACCESSIBILITY_AUDIT)
    assert audit["problems"] == []


MARKDOWN_CASES = [
    ("a **b** *c* `d`", "<p>a <strong>b</strong> <em>c</em> <code>d</code></p>"),
    ("# Title", "<h4>Title</h4>"),
    ("###### Deep", "<h6>Deep</h6>"),
    ("- one\n- two", "<ul>\n<li>one</li>\n<li>two</li>\n</ul>"),
    ("1. one\n2. two", "<ol>\n<li>one</li>\n<li>two</li>\n</ol>"),
    ("3. three\n4. four", '<ol start="3">\n<li>three</li>\n<li>four</li>\n</ol>'),
    (
        "Intro:\n- item\n  continued\n\nAfter",
        "<p>Intro:</p>\n<ul>\n<li>item\ncontinued</li>\n</ul>\n<p>After</p>",
    ),
    ("with\n20703. The rest", "<p>with\n20703. The rest</p>"),
    ("one\n\ntwo", "<p>one</p>\n<p>two</p>"),
    ("`**not bold**`", "<p><code>**not bold**</code></p>"),
    ("MCR_MUE_Practitioner_Eff and 2*3*4", "<p>MCR_MUE_Practitioner_Eff and 2*3*4</p>"),
    ("<b>\"'&", "<p>&lt;b&gt;&quot;&#39;&amp;</p>"),
    ("[x](javascript:alert(1))", "<p>x</p>"),
    ("[**x**](ftp://e.org)", "<p><strong>x</strong></p>"),
    (
        "[x](https://e.org/?a=1&b=2)",
        '<p><a href="https://e.org/?a=1&amp;b=2" target="_blank" rel="noopener noreferrer">x</a></p>',
    ),
    (
        "- [ ] open\n- [x] done",
        '<ul>\n<li><span class="task-box" role="img" aria-label="not done">\u2610</span> open</li>\n<li><span class="task-box" role="img" aria-label="done">\u2611</span> done</li>\n</ul>',
    ),
    ("```\n<b>**x**</b>\n```", '<pre class="md-code"><code>&lt;b&gt;**x**&lt;/b&gt;</code></pre>'),
    (
        "[`code` **in** a link](https://e.org/x)",
        '<p><a href="https://e.org/x" target="_blank" rel="noopener noreferrer"><code>code</code>'
        " <strong>in</strong> a link</a></p>",
    ),
    ("line one  \nline two", "<p>line one<br>\nline two</p>"),
    ("", ""),
]


def test_markdown_and_diff_in_the_browser(playground: Playground) -> None:
    """markdown.js and diff.js, run by the page's own browser on small cases."""
    page = playground.page
    playground.open()
    rendered = page.evaluate(
        "(cases) => cases.map(([source]) => CdsMarkdown.render(source, 3))", MARKDOWN_CASES
    )
    assert list(zip([case[0] for case in MARKDOWN_CASES], rendered, strict=True)) == [
        (source, html) for source, html in MARKDOWN_CASES
    ]
    # Trusted Types: only the renderer's policy may write HTML.
    blocked = page.evaluate(
        "() => { try { document.body.insertAdjacentHTML('beforeend', '<b>x</b>'); return false; }"
        " catch (error) { return error instanceof TypeError; } }"
    )
    assert blocked is True
    # The browser reports that refusal on the console: expected here, so not a problem.
    page.wait_for_timeout(100)
    assert playground.problems
    assert all("TrustedHTML" in problem for problem in playground.problems)
    playground.problems.clear()

    ops = page.evaluate(
        "() => CdsDiff.diffLines(['a', 'b', 'c', 'd'], ['a', 'x', 'c', 'd', 'e'])"
        ".map((op) => op.op[0] + op.text)"
    )
    assert ops == ["ea", "rb", "ax", "ec", "ed", "ae"]
    pretty = page.evaluate("() => CdsDiff.pretty({b: 1, a: {d: [2, {f: 1, e: 0}], c: null}})")
    assert pretty == json.dumps(
        {"b": 1, "a": {"d": [2, {"f": 1, "e": 0}], "c": None}}, indent=2, sort_keys=True
    )
    folded = page.evaluate(
        "() => CdsDiff.hunks(CdsDiff.diffLines([...'abcdefghijklmnop'], [...'abcdefgXhijklmnop']), 2)"
        ".map((op) => op.op === 'gap' ? 'gap' + op.count : op.op[0] + op.text)"
    )
    assert folded == ["gap5", "ef", "eg", "aX", "eh", "ei", "gap7"]
