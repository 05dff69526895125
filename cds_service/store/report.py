"""The usage report of ``cds-service report``: per finding code, what was shown and what users did.

Built from the audit trail and stored feedback only (no patient data exists there), by pure
functions so the figures are testable without a database.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

ALL_CALLS = "(all hook calls)"
TOP_REASONS = 3
NOT_RECORDED = "(client not recorded)"

Client = tuple[str | None, str | None]  # (verified issuer, tenant); (None, None) without auth


@dataclass
class FindingReport:
    """Figures for one finding code (or for all hook calls)."""

    finding: str
    cards_issued: int = 0
    feedback: int = 0
    accepted: int = 0  # cards the client reported accepted (the EHR's claim is not seen)
    suggestions_accepted: int = 0  # suggestions those reports name
    overridden: int = 0  # cards dismissed (CDS Hooks: outcome "overridden")
    override_reasons: Counter[tuple[str, str | None]] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.feedback if self.feedback else None

    @property
    def override_rate(self) -> float | None:
        return self.overridden / self.feedback if self.feedback else None

    def latency_percentiles(self) -> dict[str, float | None]:
        """p50, p90 and p99 of the hook calls that showed this finding (nearest rank)."""
        return {f"p{rank}": percentile(self.latencies_ms, rank / 100) for rank in (50, 90, 99)}

    def as_dict(self) -> dict[str, Any]:
        """The JSON form of ``cds-service report --json``."""
        figures = asdict(self)
        del figures["latencies_ms"], figures["override_reasons"]
        return figures | {
            "hook_calls": len(self.latencies_ms),
            "acceptance_rate": self.acceptance_rate,
            "override_rate": self.override_rate,
            "top_override_reasons": [
                {"code": code, "system": system, "count": count}
                for (code, system), count in self.override_reasons.most_common(TOP_REASONS)
            ],
            "latency_ms": self.latency_percentiles(),
        }


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def build_report(
    hook_calls: Iterable[Mapping[str, Any]], feedback: Iterable[Mapping[str, Any]]
) -> list[FindingReport]:
    """One row for all hook calls, then one per finding code, most issued first.

    ``hook_calls`` are audit rows (``finding_codes`` a JSON list, ``latency_ms``);
    ``feedback`` rows carry the card's ``finding_code`` (None when the card is not known),
    ``outcome`` and ``override_code``/``override_system``.
    """
    overall = FindingReport(ALL_CALLS)
    by_code: dict[str, FindingReport] = {}
    for call in hook_calls:
        overall.latencies_ms.append(float(call["latency_ms"]))
        codes: list[str] = json.loads(call["finding_codes"])
        overall.cards_issued += len(codes)
        for code in codes:
            by_code.setdefault(code, FindingReport(code)).cards_issued += 1
        for code in set(codes):
            by_code[code].latencies_ms.append(float(call["latency_ms"]))
    for entry in feedback:
        code = entry.get("finding_code") or "(card not recognised)"
        for row in (overall, by_code.setdefault(code, FindingReport(code))):
            row.feedback += 1
            if entry["outcome"] == "accepted":
                row.accepted += 1
                row.suggestions_accepted += len(
                    json.loads(entry.get("accepted_suggestions") or "[]")
                )
            elif entry["outcome"] == "overridden":
                row.overridden += 1
                row.override_reasons[_reason_label(entry)] += 1
    ordered = sorted(by_code.values(), key=lambda row: (-row.cards_issued, row.finding))
    return [overall, *ordered]


def by_client(
    hook_calls: Iterable[Mapping[str, Any]], feedback: Iterable[Mapping[str, Any]]
) -> dict[Client, tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]]:
    """Audit rows and feedback rows split by the client that caused them, so that no report
    mixes clients or tenants: sorted, the rows without a client first."""
    groups: dict[Client, tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]] = {}
    for index, rows in enumerate((hook_calls, feedback)):
        for row in rows:
            client = (row.get("client_iss"), row.get("tenant"))
            groups.setdefault(client, ([], []))[index].append(row)
    return dict(sorted(groups.items(), key=lambda item: (item[0][0] or "", item[0][1] or "")))


def client_label(client: Client) -> str:
    """How a report names a client."""
    iss, tenant = client
    if iss is None:
        return NOT_RECORDED
    return f"{iss} (tenant {tenant})" if tenant else iss


def _reason_label(entry: Mapping[str, Any]) -> tuple[str, str | None]:
    code = entry.get("override_code")
    return (code, entry.get("override_system")) if code else ("(no reason given)", None)


def render_text(rows: Sequence[FindingReport], since: str | None) -> str:
    """A plain-text table for a terminal."""
    header = (
        f"{'finding':<32} {'cards':>6} {'feedback':>8} {'accepted*':>9} {'suggestions*':>12} "
        f"{'dismissed':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}  top override reasons"
    )
    calls = f"{len(rows[0].latencies_ms)} hook calls" if rows else "no hook calls"
    lines = [f"{calls} and their feedback" + (f" since {since}" if since else "")]
    lines += [header, "-" * len(header)]
    for row in rows:
        latency = row.latency_percentiles()
        reasons = ", ".join(
            f"{code} x{n}" for (code, _), n in row.override_reasons.most_common(TOP_REASONS)
        )
        lines.append(
            f"{row.finding:<32} {row.cards_issued:>6} {row.feedback:>8} "
            f"{_rate(row.acceptance_rate):>9} {row.suggestions_accepted:>12} "
            f"{_rate(row.override_rate):>9} "
            f"{_ms(latency['p50']):>8} {_ms(latency['p90']):>8} {_ms(latency['p99']):>8}  "
            f"{reasons or '-'}"
        )
    lines.append(ACCEPTED_FOOTNOTE)
    return "\n".join(lines) + "\n"


ACCEPTED_FOOTNOTE = (
    "* accepted (reported by client): the share of feedback whose client reported the card "
    "accepted, and the suggestions it named; whether the claim really changed is not seen here."
)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
