"""``cds-service report``: figures per finding code from the audit trail and feedback."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from helpers.corpus import EXPECTED, load_fixture

from cds_service.cli.main import main
from cds_service.store.report import ALL_CALLS, build_report, percentile, render_text

DISCHARGE_ID = "cpt20703-encounter-discharge"
STANDARD = "encounter-discharge--tibia-nonunion-removal.json"
UNITS = "encounter-discharge--units-exceed-mue.json"


def call(finding_codes: list[str], latency_ms: float) -> dict[str, Any]:
    return {"finding_codes": json.dumps(finding_codes), "latency_ms": latency_ms}


def feedback(finding: str | None, outcome: str, reason: str | None = None) -> dict[str, Any]:
    return {
        "finding_code": finding,
        "outcome": outcome,
        "override_code": reason,
        "override_system": "https://cds.example.org/override" if reason else None,
    }


def test_percentile_is_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.9) == 7.0
    assert percentile([], 0.5) is None


def test_suggestions_accepted_are_counted_apart_from_cards() -> None:
    """An accepted card names the suggestions the client accepted; dismissed cards name none."""
    accepted = feedback("a", "accepted") | {"accepted_suggestions": '["s1", "s2"]'}
    rows = build_report(
        [call(["a", "a"], 10.0)], [accepted, feedback("a", "accepted"), feedback("a", "overridden")]
    )
    overall, row = rows
    assert (row.accepted, row.suggestions_accepted, row.overridden) == (2, 2, 1)
    assert overall.suggestions_accepted == 2
    line = next(line for line in render_text(rows, None).splitlines() if line.startswith("a "))
    assert line.split()[3:6] == ["67%", "2", "33%"]


def test_figures_per_finding_code() -> None:
    """Cards, feedback, acceptance and override rates, top reasons and latency, per code."""
    rows = build_report(
        [call(["a", "b"], 10.0), call(["a"], 20.0), call([], 30.0), call(["a", "a"], 40.0)],
        [
            feedback("a", "accepted"),
            feedback("a", "overridden", "not-performed"),
            feedback("a", "overridden", "not-performed"),
            feedback("a", "overridden", "documented-elsewhere"),
            feedback(None, "accepted"),
        ],
    )
    overall, first, second, unknown = rows
    assert overall.finding == ALL_CALLS
    assert (overall.cards_issued, overall.feedback, len(overall.latencies_ms)) == (5, 5, 4)
    assert first.finding == "a"
    assert (first.cards_issued, first.feedback, first.accepted, first.overridden) == (4, 4, 1, 3)
    assert first.acceptance_rate == 0.25
    assert first.override_rate == 0.75
    assert first.override_reasons.most_common(1)[0][1] == 2
    assert first.latency_percentiles() == {"p50": 20.0, "p90": 40.0, "p99": 40.0}
    assert (second.finding, second.cards_issued, second.feedback) == ("b", 1, 0)
    assert second.acceptance_rate is None
    assert (unknown.finding, unknown.accepted) == ("(card not recognised)", 1)
    text = render_text(rows, "2026-01-01")
    assert text.startswith("4 hook calls and their feedback since 2026-01-01")
    assert "not-performed x2, documented-elsewhere x1" in text


def populate(app: Flask) -> dict[str, Any]:
    """Three hook calls and two feedback entries through the real endpoints."""
    client = app.test_client()
    cards = []
    for name in (STANDARD, STANDARD, UNITS):
        response = client.post(
            f"/cds-services/{EXPECTED[name]['service']}", json=load_fixture(name)
        )
        cards.extend(response.get_json()["cards"])
    add_on = [card for card in cards if card["extension"]["cpt20703.finding"] == "add-on-suggested"]
    entries = [
        {
            "card": add_on[0]["uuid"],
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": add_on[0]["suggestions"][0]["uuid"]}],
            "outcomeTimestamp": "2026-03-02T10:15:00Z",
        },
        {
            "card": add_on[1]["uuid"],
            "outcome": "overridden",
            "overrideReason": {"reason": add_on[1]["overrideReasons"][0]},
            "outcomeTimestamp": "2026-03-02T10:16:00Z",
        },
    ]
    client.post(f"/cds-services/{DISCHARGE_ID}/feedback", json={"feedback": entries})
    reason = add_on[1]["overrideReasons"][0]
    return {"cards": cards, "reason": reason["code"], "system": reason["system"]}


def run_report(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    status = main(["report", *args])
    return status, capsys.readouterr().out


def test_report_from_a_populated_database(
    make_app: Any,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The command reads what the service recorded, on SQLite and PostgreSQL."""
    app = make_app({"DATABASE_URL": database_url})
    populated = populate(app)
    monkeypatch.setenv("CDS_DATABASE_URL", database_url)
    status, out = run_report(capsys, "--json")
    assert status == 0
    [report] = json.loads(out)["clients"]  # no authentication: one client, not recorded
    assert (report["client"], report["tenant"]) == (None, None)
    by_code = {row["finding"]: row for row in report["findings"]}
    overall = by_code[ALL_CALLS]
    assert overall["hook_calls"] == 3
    assert overall["cards_issued"] == len(populated["cards"])
    add_on = by_code["add-on-suggested"]
    assert add_on["cards_issued"] == 2
    assert (add_on["feedback"], add_on["accepted"], add_on["overridden"]) == (2, 1, 1)
    assert add_on["suggestions_accepted"] == 1
    assert add_on["acceptance_rate"] == 0.5
    assert add_on["top_override_reasons"] == [
        {"code": populated["reason"], "system": populated["system"], "count": 1}
    ]
    assert add_on["latency_ms"]["p50"] > 0
    expected_units = set(EXPECTED[UNITS]["findings"])
    assert expected_units <= set(by_code)
    status, text = run_report(capsys)
    assert status == 0
    assert text.startswith("client: (client not recorded)\n3 hook calls and their feedback")
    assert "add-on-suggested" in text
    assert "* accepted (reported by client):" in text
    assert text.splitlines()[2].split()[3:6] == ["accepted*", "suggestions*", "dismissed"]


def test_since_leaves_out_older_records(
    make_app: Any,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    populate(make_app({"DATABASE_URL": sqlite_url}))
    monkeypatch.setenv("CDS_DATABASE_URL", sqlite_url)
    _, out = run_report(capsys, "--json", "--since", "2000-01-01")
    assert json.loads(out)["clients"][0]["findings"][0]["hook_calls"] == 3
    _, out = run_report(capsys, "--json", "--since", "2999-01-01")
    document = json.loads(out)
    assert document["since"] == "2999-01-01"
    [report] = document["clients"]
    assert [row["finding"] for row in report["findings"]] == [ALL_CALLS]
    assert report["findings"][0]["hook_calls"] == 0


def test_a_bad_date_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--since", "last tuesday"])
    assert exit_info.value.code == 2
    assert "not a date (YYYY-MM-DD)" in capsys.readouterr().err


def test_an_unreachable_database_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CDS_DATABASE_URL", "postgresql://cds@127.0.0.1:9/gone")
    assert main(["report"]) == 1
    assert "cannot read the database: OperationalError" in capsys.readouterr().err
