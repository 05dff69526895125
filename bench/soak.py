"""Load and soak run of the +20703 service (``make soak``). A measurement, not a test.

It starts the local Medplum FHIR server (``cds_service/cli/fhir_sandbox.py``, seeded with every
fixture of ``fhir_fixtures/``) and ``cds-service serve --workers 2`` (SQLite in a temporary
directory, or a fresh schema of a PostgreSQL database with ``--database-url``;
``CDS_FHIR_SERVER_ALLOWLIST`` allows that FHIR server only), both on loopback, and drives a fixed
mix of traffic from N client threads (``requests.Session`` each), paced to a total rate:

- ``prefetched``: both hooks, several fixtures each, with every prefetch key (no FHIR request);
- ``fetched``: the same bodies without ``prefetch``: the service reads everything from the FHIR
  server;
- ``feedback``: a feedback post (accepted or overridden) on a card an earlier call issued.

Two phases run back to back against the same processes: ``steady`` (the FHIR server healthy),
then ``fhir-errors`` (the FHIR server answers 5% of its requests with a 500). Each phase reports
requests served, errors, degraded answers, latency percentiles overall and per kind, throughput,
and the RSS and CPU time of each gunicorn worker at its start and end. The machine's CPU use by
other processes is recorded too, since the figures depend on it.

It prints a summary table, writes ``bench/results/soak-<timestamp>.json`` and
``bench/results/soak-latest.json``, and exits 0 even when a target is missed ("missed" in the
table). It exits 1 only when the run itself failed (a server did not start, a fixture did not
give its expected findings before the load began, ...). See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import requests

from bench import (
    BENCH_DIR,
    FIXTURE_DIR,
    HOST,
    TIMEOUT_S,
    VENV_BIN,
    BenchError,
    FhirServer,
    Server,
    free_port,
    percentile,
    pointed_at,
    start_server,
    stop_server,
    wait_until_answering,
)
from cds_service.cli.fhir_sandbox import FhirSandbox, FhirSandboxError, NodeUnavailable
from cds_service.config import DEFAULTS
from cds_service.rulepack.detail_fit import NOT_CHECKED_LABEL
from cds_service.rules.cards import FINDING_EXTENSION
from cds_service.store.database import create_database_engine

RESULTS_DIR = BENCH_DIR / "results"
LATEST_NAME = "soak-latest.json"

# Fixtures of the load: both hooks, with findings (so feedback has cards to answer) and one
# without for each hook, as most real calls are. Their expected findings come from
# fhir_fixtures/expected.json and are checked, prefetched and fetched, before the load starts.
SOAK_FIXTURES: tuple[str, ...] = (
    "encounter-discharge--tibia-nonunion-removal.json",
    "encounter-discharge--missing-documentation.json",
    "encounter-discharge--diagnosis-conflict.json",
    "encounter-discharge--units-exceed-mue.json",
    "encounter-discharge--wrong-tier-intra-articular.json",
    "encounter-discharge--already-billed.json",
    "order-sign--planned-removal-reminder.json",
    "order-sign--planned-removal-humerus.json",
    "order-sign--device-already-removed.json",
)
KINDS: tuple[str, ...] = ("prefetched", "fetched", "feedback")
DEFAULT_MIX: dict[str, int] = {"prefetched": 40, "fetched": 30, "feedback": 30}  # percent
PHASES: tuple[tuple[str, float], ...] = (("steady", 0.0), ("fhir-errors", 0.05))

DEFAULT_DURATION_S = 60
DEFAULT_WARMUP_S = 10
# At most CDS_MAX_CONCURRENT_CALLS requests in flight in all: even when every client connection
# lands on the same worker, none waits for an admission slot, so nothing can be shed.
DEFAULT_CONCURRENCY = int(DEFAULTS["MAX_CONCURRENT_CALLS"])
# Requests/s in all (0: as fast as the client threads go). The bound is the local FHIR server:
# Node on one thread spends ~70 ms of CPU per fetched call (Medplum's in-memory search re-parses
# the shared `patient` search parameter's FHIRPath for each stored Procedure, Condition, ...), so
# 20 req/s (6 fetched calls/s) keeps it under half a CPU, with room for the other jobs of a shared
# 2-CPU machine. The 4 client threads also cap what the mix can reach at 25-30 req/s.
DEFAULT_RATE = 20.0
# Every client thread opens a new connection after this many requests, so that the two workers
# (which each keep the connections they accept) share the load over the run.
DEFAULT_RECONNECT_EVERY = 100
WORKERS = 2
WORKER_THREADS = 16
SERVICE_LOG_LEVEL = "WARNING"
SAMPLE_EVERY_S = 5.0
WINDOW_S = 10.0
DRAIN_TIMEOUT_S = TIMEOUT_S + 5.0

TARGET_RSS_GROWTH_PCT = 10.0
TARGET_RATE_FRACTION = 0.95  # of --rate, for the rate to count as sustained
POSTGRES_HINT = "postgresql://postgres@127.0.0.1:5432/test"
NOT_CHECKED_MARKER = NOT_CHECKED_LABEL


# --------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class SoakSettings:
    """What the run does; written to the JSON results as they are."""

    duration_s: float
    warmup_s: float
    concurrency: int
    rate_per_s: float
    mix_percent: dict[str, int]
    reconnect_every: int
    database: str  # "sqlite" or "postgresql"
    seed: int
    phases: list[tuple[str, float]] = field(default_factory=lambda: list(PHASES))
    workers: int = WORKERS
    worker_threads: int = WORKER_THREADS
    max_concurrent_calls: int = int(DEFAULTS["MAX_CONCURRENT_CALLS"])
    queue_timeout_s: float = float(DEFAULTS["QUEUE_TIMEOUT_SECONDS"])
    service_log_level: str = SERVICE_LOG_LEVEL
    client_timeout_s: float = TIMEOUT_S
    fixtures: list[str] = field(default_factory=lambda: list(SOAK_FIXTURES))


def parse_args(argv: Sequence[str] | None) -> tuple[SoakSettings, str | None, Path]:
    """Command-line options into settings, the PostgreSQL URL (or None) and the results dir."""
    parser = argparse.ArgumentParser(
        prog="soak.py", description="Load and soak run of the +20703 service (not a test)."
    )
    parser.add_argument(
        "--duration", type=float, default=DEFAULT_DURATION_S, help="seconds per phase (%(default)s)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=DEFAULT_WARMUP_S,
        help="untimed seconds of the same mix before the first phase (%(default)s)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help="client threads, one connection each (%(default)s)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=DEFAULT_RATE,
        help="requests/s in all, paced; 0 = as fast as the clients go (%(default)s)",
    )
    parser.add_argument(
        "--mix",
        default=",".join(f"{kind}={share}" for kind, share in DEFAULT_MIX.items()),
        help="percent per kind (%(default)s)",
    )
    parser.add_argument(
        "--reconnect-every",
        type=int,
        default=DEFAULT_RECONNECT_EVERY,
        help="requests per connection before a client opens a new one (%(default)s)",
    )
    parser.add_argument(
        "--database-url",
        help=f"PostgreSQL instead of SQLite, in a fresh schema (e.g. {POSTGRES_HINT})",
    )
    parser.add_argument("--seed", type=int, default=20703, help="random seed (%(default)s)")
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS_DIR,
        help="where soak-<timestamp>.json and soak-latest.json go (%(default)s)",
    )
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.rate < 0:
        parser.error("--duration must be > 0, --warmup and --rate >= 0")
    if args.concurrency < 1 or args.reconnect_every < 1:
        parser.error("--concurrency and --reconnect-every must be at least 1")
    mix = parse_mix(args.mix, parser)
    database = "sqlite"
    if args.database_url is not None:
        if not args.database_url.startswith(("postgresql://", "postgresql+psycopg://")):
            parser.error(f"--database-url must be a PostgreSQL URL such as {POSTGRES_HINT}")
        database = "postgresql"
    settings = SoakSettings(
        duration_s=args.duration,
        warmup_s=args.warmup,
        concurrency=args.concurrency,
        rate_per_s=args.rate,
        mix_percent=mix,
        reconnect_every=args.reconnect_every,
        database=database,
        seed=args.seed,
    )
    return settings, args.database_url, args.results_dir


def parse_mix(text: str, parser: argparse.ArgumentParser) -> dict[str, int]:
    """``prefetched=40,fetched=30,feedback=30`` into whole percents that add up to 100."""
    mix = dict.fromkeys(KINDS, 0)
    for part in text.split(","):
        kind, _, share = part.partition("=")
        if kind.strip() not in mix or not share.strip().isdigit():
            parser.error(f"--mix: {part!r} is not KIND=PERCENT (kinds: {', '.join(KINDS)})")
        mix[kind.strip()] = int(share)
    if sum(mix.values()) != 100:
        parser.error("--mix: the percents must add up to 100")
    if mix["feedback"] and not (mix["prefetched"] or mix["fetched"]):
        parser.error("--mix: feedback needs hook calls to issue cards")
    return mix


# --------------------------------------------------------------------------------------------
# Request bodies and answers


@dataclass(frozen=True)
class HookBody:
    """One fixture as sent under load: prefetched, or without its prefetch (fetched)."""

    fixture: str
    service_id: str
    kind: str  # "prefetched" or "fetched"
    data: bytes
    hook_instance: bytes  # replaced by a fresh UUID in every request
    expected: tuple[str, ...]  # sorted findings, from expected.json

    def fresh(self) -> bytes:
        """The body with a new hookInstance, as each real hook call has its own."""
        return self.data.replace(self.hook_instance, str(uuid.uuid4()).encode(), 1)


@dataclass(frozen=True)
class IssuedCard:
    """A card an answer carried, for a later feedback post."""

    service_id: str
    uuid: str
    suggestion: str | None
    override: dict[str, Any] | None  # the first overrideReasons coding


def hook_bodies(fhir_base_url: str) -> list[HookBody]:
    """Both variants of every soak fixture, pointed at the local FHIR server."""
    expected = json.loads((FIXTURE_DIR / "expected.json").read_text(encoding="utf-8"))
    bodies = []
    for fixture in SOAK_FIXTURES:
        raw = (FIXTURE_DIR / fixture).read_bytes()
        entry = expected[fixture]
        if entry["status"] != 200:
            raise BenchError(f"{fixture}: expected.json does not expect a 200")
        hook_instance = json.loads(raw)["hookInstance"].encode()
        for kind, prefetch in (("prefetched", True), ("fetched", False)):
            data = pointed_at(raw, fhir_base_url, prefetch=prefetch)
            if data.count(hook_instance) != 1:
                raise BenchError(f"{fixture}: its hookInstance does not occur exactly once")
            bodies.append(
                HookBody(
                    fixture=fixture,
                    service_id=entry["service"],
                    kind=kind,
                    data=data,
                    hook_instance=hook_instance,
                    expected=tuple(sorted(entry["findings"])),
                )
            )
    return bodies


@dataclass(frozen=True)
class HookAnswer:
    """What matters of a 200 answer to a hook call."""

    findings: tuple[str, ...]
    noted: bool  # a card says some data could not be checked
    cards: list[IssuedCard]


def read_hook_answer(payload: Any, service_id: str) -> HookAnswer | None:
    """The findings, note and cards of a hook call answer; None when it is not cards."""
    cards = payload.get("cards") if isinstance(payload, dict) else None
    if not isinstance(cards, list):
        return None
    findings: list[str] = []
    issued: list[IssuedCard] = []
    noted = False
    for card in cards:
        if not isinstance(card, dict) or not isinstance(card.get("uuid"), str):
            return None
        extension = card.get("extension")
        code = extension.get(FINDING_EXTENSION) if isinstance(extension, dict) else None
        if not isinstance(code, str):
            return None
        findings.append(code)
        noted = noted or NOT_CHECKED_MARKER in str(card.get("detail", ""))
        suggestions = card.get("suggestions") or []
        overrides = card.get("overrideReasons") or []
        issued.append(
            IssuedCard(
                service_id=service_id,
                uuid=card["uuid"],
                suggestion=suggestions[0].get("uuid") if suggestions else None,
                override=overrides[0] if overrides else None,
            )
        )
    return HookAnswer(tuple(sorted(findings)), noted, issued)


def feedback_body(card: IssuedCard, accept: bool) -> bytes:
    """One feedback entry on ``card``: accepted (its first suggestion) or overridden."""
    entry: dict[str, Any] = {
        "card": card.uuid,
        "outcomeTimestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if accept and card.suggestion is not None:  # else it can only be overridden
        entry |= {"outcome": "accepted", "acceptedSuggestions": [{"id": card.suggestion}]}
    else:
        reason: dict[str, Any] = {"userComment": "soak run"}
        if card.override is not None:
            reason["reason"] = {
                k: v for k, v in card.override.items() if k in ("system", "code", "display")
            }
        entry |= {"outcome": "overridden", "overrideReason": reason}
    return json.dumps({"feedback": [entry]}).encode()


# --------------------------------------------------------------------------------------------
# Processes: gunicorn workers, RSS and CPU time from /proc

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (field 3 onwards)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def children_of(parent: int) -> list[int]:
    """The pids whose parent is ``parent``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(_stat_fields(int(entry.name))[1]) == parent:
                    found.append(int(entry.name))
    return sorted(found)


def rss_kib(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB, or None when it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid``, or None when it is gone."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = _stat_fields(pid)
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return None


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all CPUs (/proc/stat)."""
    values = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # without guest time, which is counted in user already
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


def own_cpu_seconds(master: int) -> dict[str, float]:
    """CPU time of this run's processes: the load generator (this process), the service (master
    and workers) and the FHIR server (the other children of this process, Node)."""
    service = [master, *children_of(master)]
    others = [pid for pid in children_of(os.getpid()) if pid != master]
    return {
        role: sum(cpu_seconds(pid) or 0.0 for pid in pids)
        for role, pids in (("client", [os.getpid()]), ("service", service), ("fhir", others))
    }


@dataclass
class ProcessSnapshot:
    """RSS and CPU times at one moment."""

    at: float  # time.monotonic()
    workers: dict[int, int | None]  # pid -> RSS KiB
    worker_cpu: dict[int, float | None]
    own_cpu_s: dict[str, float]  # client, service, fhir
    machine_busy_s: float
    machine_total_s: float
    loadavg: tuple[float, float, float]


def snapshot(master: int) -> ProcessSnapshot:
    workers = children_of(master)
    busy, total = machine_cpu_seconds()
    return ProcessSnapshot(
        at=time.monotonic(),
        workers={pid: rss_kib(pid) for pid in workers},
        worker_cpu={pid: cpu_seconds(pid) for pid in workers},
        own_cpu_s=own_cpu_seconds(master),
        machine_busy_s=busy,
        machine_total_s=total,
        loadavg=os.getloadavg(),
    )


# --------------------------------------------------------------------------------------------
# Load generation


@dataclass(frozen=True)
class Sample:
    """One request: when it started (seconds into the phase), how long, and how it ended."""

    kind: str
    fixture: str
    started_s: float
    latency_ms: float
    lag_ms: float  # how late it started after its due time (pacing)
    status: str  # HTTP status, or "connection-error:<exception>"
    outcome: str  # "ok", "degraded", "mismatch" or "error"
    # degraded: "412" or "200-noted" (a card says what could not be checked); mismatch:
    # "200-silent" (other findings, no note) or the feedback answer; error: what was wrong
    detail: str = ""


class Traffic:
    """The request plan shared by the client threads: tickets, pacing, kinds and cards."""

    def __init__(self, settings: SoakSettings, bodies: list[HookBody]) -> None:
        self.settings = settings
        self.bodies = {kind: [b for b in bodies if b.kind == kind] for kind in KINDS[:2]}
        rng = random.Random(settings.seed)
        # Each block of 100 tickets has exactly the mix, in a shuffled order.
        pattern = [kind for kind in KINDS for _ in range(settings.mix_percent[kind])]
        rng.shuffle(pattern)
        self.pattern = pattern
        self.cards: collections.deque[IssuedCard] = collections.deque(maxlen=50_000)
        self.recent: collections.deque[IssuedCard] = collections.deque(maxlen=100)
        self._lock = threading.Lock()
        self._ticket = 0
        self.faults = False  # whether the FHIR server currently injects errors
        self.reused = 0  # feedback posts on a card that already had one

    def next_ticket(self) -> int:
        with self._lock:
            self._ticket += 1
            return self._ticket - 1

    def kind_of(self, ticket: int) -> str:
        return self.pattern[ticket % len(self.pattern)]

    def body_for(self, kind: str, ticket: int) -> HookBody:
        choices = self.bodies[kind]
        return choices[(ticket // len(self.pattern)) % len(choices)]

    def card_for_feedback(self) -> IssuedCard | None:
        """A card no feedback was sent for yet, else a recent one again; None before any."""
        with contextlib.suppress(IndexError):
            card = self.cards.popleft()
            self.recent.append(card)
            return card
        with contextlib.suppress(IndexError):
            card = self.recent[-1]
            with self._lock:
                self.reused += 1
            return card
        return None


class Client:
    """One client thread's connection and request loop."""

    def __init__(self, traffic: Traffic, service: Server) -> None:
        self.traffic = traffic
        self.service = service
        self.session = self._new_session()
        self.sent_on_session = 0
        self.connections = 1
        self.failure: BaseException | None = None  # a bug in the load generator

    @staticmethod
    def _new_session() -> requests.Session:
        session = requests.Session()
        session.trust_env = False  # never a proxy: everything is on loopback
        session.headers["Content-Type"] = "application/json"
        return session

    def reconnect(self) -> None:
        self.session.close()
        self.session = self._new_session()
        self.sent_on_session = 0
        self.connections += 1

    def run(
        self, started: float, until: float, rate: float, samples: list[Sample], offset: int
    ) -> None:
        """Send requests until ``until`` (monotonic); ticket n is due at started + n / rate."""
        try:
            self._run(started, until, rate, samples, offset)
        except BaseException as exc:  # reported by drive(): the run failed
            self.failure = exc

    def _run(
        self, started: float, until: float, rate: float, samples: list[Sample], offset: int
    ) -> None:
        traffic = self.traffic
        while True:
            ticket = traffic.next_ticket() - offset
            due = started + ticket / rate if rate else time.monotonic()
            if due >= until:
                return
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            if self.sent_on_session >= traffic.settings.reconnect_every:
                self.reconnect()
            self.sent_on_session += 1
            samples.append(self.one_request(ticket, started, due))

    def one_request(self, ticket: int, started: float, due: float) -> Sample:
        traffic = self.traffic
        kind = traffic.kind_of(ticket)
        body: HookBody | None = None
        card = traffic.card_for_feedback() if kind == "feedback" else None
        if kind == "feedback" and card is None:  # no card issued yet: a hook call instead
            kind = "prefetched" if traffic.bodies["prefetched"] else "fetched"
        if card is not None:
            url = self.service.url(card.service_id) + "/feedback"
            accept = ticket % 2 == 0 and card.suggestion is not None
            data = feedback_body(card, accept)
            fixture = "(feedback, accepted)" if accept else "(feedback, overridden)"
        else:
            body = traffic.body_for(kind, ticket)
            url = self.service.url(body.service_id)
            data = body.fresh()
            fixture = body.fixture
        begin = time.monotonic()
        try:
            response = self.session.post(url, data=data, timeout=traffic.settings.client_timeout_s)
        except requests.RequestException as exc:
            self.reconnect()
            latency = (time.monotonic() - begin) * 1000
            status = f"connection-error:{type(exc).__name__}"
            lag = (begin - due) * 1000
            return Sample(kind, fixture, begin - started, latency, lag, status, "error")
        latency = (time.monotonic() - begin) * 1000
        if body is not None:
            outcome, detail = self.judge_hook(response, body)
        else:
            outcome, detail = self.judge_feedback(response)
        status = str(response.status_code)
        lag = (begin - due) * 1000
        return Sample(kind, fixture, begin - started, latency, lag, status, outcome, detail)

    def judge_hook(self, response: requests.Response, body: HookBody) -> tuple[str, str]:
        """ok / degraded / mismatch / error, and the kind of degradation."""
        traffic = self.traffic
        if response.status_code == 412 and body.kind == "fetched" and traffic.faults:
            return "degraded", "412"
        if response.status_code != 200:
            return "error", ""
        try:
            answer = read_hook_answer(response.json(), body.service_id)
        except ValueError:
            answer = None
        if answer is None:
            return "error", "not cards"
        traffic.cards.extend(answer.cards)
        if answer.noted:
            return "degraded", "200-noted"
        if answer.findings != body.expected:
            return "mismatch", "200-silent"
        return "ok", ""

    @staticmethod
    def judge_feedback(response: requests.Response) -> tuple[str, str]:
        """ok: the entry was stored (or was a duplicate) on a card the service knows."""
        if response.status_code != 200:
            return "error", ""
        try:
            stored = response.json()
        except ValueError:
            return "error", "not JSON"
        if not isinstance(stored, dict) or stored.get("unknownCards") != 0:
            return "mismatch", json.dumps(stored, sort_keys=True)
        if (stored.get("stored"), stored.get("duplicates")) not in ((1, 0), (0, 1)):
            return "mismatch", json.dumps(stored, sort_keys=True)
        return "ok", ""


def drive(traffic: Traffic, duration_s: float, clients: list[Client]) -> tuple[list[Sample], float]:
    """Run every client for ``duration_s``; the samples and the seconds it really took."""
    settings = traffic.settings
    samples: list[Sample] = []
    offset = traffic.next_ticket() + 1  # this phase's tickets start at 0
    started = time.monotonic()
    until = started + duration_s
    threads = [
        threading.Thread(
            target=client.run,
            args=(started, until, settings.rate_per_s, samples, offset),
            name=f"soak-client-{number}",
            daemon=True,
        )
        for number, client in enumerate(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=duration_s + DRAIN_TIMEOUT_S)
        if thread.is_alive():
            raise BenchError(f"{thread.name} did not finish {DRAIN_TIMEOUT_S:.0f} s after the end")
    for client in clients:
        if client.failure is not None:
            raise BenchError(f"a client thread failed: {client.failure!r}") from client.failure
    return samples, time.monotonic() - started


class Monitor:
    """Samples worker RSS and drains the FHIR server's request log every few seconds."""

    def __init__(self, master: int, fhir: FhirServer) -> None:
        self.master = master
        self.fhir = fhir
        self.rss: list[dict[str, Any]] = []
        self.fhir_requests = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0

    def drain_fhir_log(self) -> None:
        """Count and forget the FHIR requests logged so far (the log would grow all run)."""
        with contextlib.suppress(requests.RequestException):
            self.fhir_requests += len(self.fhir.requests())
            self.fhir.clear_requests()

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            self.rss.append(
                {
                    "t_s": round(time.monotonic() - self._started, 1),
                    "rss_kib": {str(pid): rss_kib(pid) for pid in children_of(self.master)},
                }
            )
            self.drain_fhir_log()

    @contextlib.contextmanager
    def running(self) -> Iterator[Monitor]:
        self.rss, self.fhir_requests = [], 0
        self._stop.clear()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="soak-monitor", daemon=True)
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
            self.drain_fhir_log()


# --------------------------------------------------------------------------------------------
# Figures


def latency_figures(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "p99_9_ms": None, "max_ms": None}
    return {
        "count": len(values),
        "p50_ms": round(percentile(values, 0.50), 2),
        "p99_ms": round(percentile(values, 0.99), 2),
        "p99_9_ms": round(percentile(values, 0.999), 2),
        "max_ms": round(max(values), 2),
        "mean_ms": round(statistics.fmean(values), 2),
    }


def counts(samples: Sequence[Sample]) -> dict[str, Any]:
    outcomes = collections.Counter(sample.outcome for sample in samples)
    return {
        "requests": len(samples),
        "ok": outcomes["ok"],
        "degraded": outcomes["degraded"],
        "mismatch": outcomes["mismatch"],
        "errors": outcomes["error"],
        "shed_503": sum(1 for sample in samples if sample.status == "503"),
        "status": dict(sorted(collections.Counter(sample.status for sample in samples).items())),
        "degraded_by": dict(
            sorted(
                collections.Counter(
                    sample.detail for sample in samples if sample.outcome == "degraded"
                ).items()
            )
        ),
    }


def windows(samples: Sequence[Sample], duration_s: float) -> list[dict[str, Any]]:
    """Requests, errors and p99 per WINDOW_S of the phase: whether anything drifts."""
    rows = []
    start = 0.0
    while start < duration_s:
        inside = [s for s in samples if start <= s.started_s < start + WINDOW_S]
        latencies = [s.latency_ms for s in inside]
        rows.append(
            {
                "from_s": start,
                "requests": len(inside),
                "errors": sum(1 for s in inside if s.outcome == "error"),
                "degraded": sum(1 for s in inside if s.outcome == "degraded"),
                "p50_ms": round(percentile(latencies, 0.5), 2) if latencies else None,
                "p99_ms": round(percentile(latencies, 0.99), 2) if latencies else None,
            }
        )
        start += WINDOW_S
    return rows


def growth_pct(before: int | None, after: int | None) -> float | None:
    if not before or after is None:
        return None
    return round((after - before) / before * 100, 2)


def worker_figures(first: ProcessSnapshot, last: ProcessSnapshot) -> list[dict[str, Any]]:
    rows = []
    for pid in sorted(set(first.workers) | set(last.workers)):
        cpu_before, cpu_after = first.worker_cpu.get(pid), last.worker_cpu.get(pid)
        rows.append(
            {
                "pid": pid,
                "rss_start_kib": first.workers.get(pid),
                "rss_end_kib": last.workers.get(pid),
                "rss_growth_pct": growth_pct(first.workers.get(pid), last.workers.get(pid)),
                "cpu_s": None
                if cpu_before is None or cpu_after is None
                else round(cpu_after - cpu_before, 2),
            }
        )
    return rows


def machine_figures(first: ProcessSnapshot, last: ProcessSnapshot) -> dict[str, Any]:
    """How busy the machine was, and how much of that was not this run."""
    wall = last.at - first.at
    busy = last.machine_busy_s - first.machine_busy_s
    roles = {role: last.own_cpu_s[role] - first.own_cpu_s[role] for role in last.own_cpu_s}
    own = sum(roles.values())
    cpus = (last.machine_total_s - first.machine_total_s) / wall if wall else 0.0
    return {
        "cpus_busy": round(busy / wall, 2) if wall else None,
        "cpus_busy_this_run": round(own / wall, 2) if wall else None,
        "cpus_busy_by": {role: round(used / wall, 2) for role, used in roles.items()}
        if wall
        else None,
        "cpus_busy_other_processes": round(max(busy - own, 0.0) / wall, 2) if wall else None,
        "cpus_counted": round(cpus, 2),
        "loadavg_start": [round(value, 2) for value in first.loadavg],
        "loadavg_end": [round(value, 2) for value in last.loadavg],
    }


def phase_document(
    name: str,
    error_rate: float,
    settings: SoakSettings,
    samples: list[Sample],
    elapsed_s: float,
    first: ProcessSnapshot,
    last: ProcessSnapshot,
    monitor: Monitor,
    injected: int,
    connections: int,
    reused_cards: int,
) -> dict[str, Any]:
    """The figures of one phase, and whether each target was met."""
    figures = counts(samples)
    throughput = len(samples) / elapsed_s
    workers = worker_figures(first, last)
    growths = [row["rss_growth_pct"] for row in workers]
    restarted = set(first.workers) != set(last.workers)
    targets: dict[str, bool | None] = {
        "no_errors": figures["errors"] == 0,
        "rss_growth_below_10_pct": None
        if restarted or None in growths
        else all(growth < TARGET_RSS_GROWTH_PCT for growth in growths),
        "rate_sustained": None
        if not settings.rate_per_s
        else throughput >= TARGET_RATE_FRACTION * settings.rate_per_s,
    }
    if not error_rate:  # a healthy FHIR server: every answer complete and as expected
        targets["no_degraded_answers"] = figures["degraded"] == 0
        targets["no_mismatches"] = figures["mismatch"] == 0
    by_kind = {
        kind: counts([s for s in samples if s.kind == kind])
        | {"latency": latency_figures([s.latency_ms for s in samples if s.kind == kind])}
        for kind in KINDS
    }
    return {
        "name": name,
        "fhir_error_rate": error_rate,
        "duration_s": round(elapsed_s, 2),
        **figures,
        "throughput_per_s": round(throughput, 1),
        "start_lag_ms": {
            "p99": round(percentile([s.lag_ms for s in samples], 0.99), 1) if samples else None,
            "max": round(max((s.lag_ms for s in samples), default=0.0), 1),
        },
        "latency": latency_figures([s.latency_ms for s in samples]),
        "by_kind": by_kind,
        "by_fixture": {
            fixture: latency_figures([s.latency_ms for s in samples if s.fixture == fixture])
            for fixture in sorted({s.fixture for s in samples})
        },
        "workers": workers,
        "workers_restarted": restarted,
        "rss_samples": monitor.rss,
        "fhir_requests": monitor.fhir_requests,
        "fhir_errors_injected": injected,
        "client_connections": connections,
        "feedback_on_cards_answered_before": reused_cards,
        "windows": windows(samples, settings.duration_s),
        "machine": machine_figures(first, last),
        "errors_seen": error_examples(samples),
        "targets_met": targets,
    }


def error_examples(samples: Sequence[Sample], limit: int = 10) -> list[dict[str, Any]]:
    """The first few errors and mismatches, to say what went wrong."""
    return [asdict(s) for s in samples if s.outcome in ("error", "mismatch")][:limit]


# --------------------------------------------------------------------------------------------
# Servers


@contextlib.contextmanager
def database(workdir: Path, postgres_url: str | None) -> Iterator[str]:
    """A fresh SQLite file, or a fresh schema of the PostgreSQL database (dropped afterwards)."""
    if postgres_url is None:
        yield f"sqlite:///{workdir / 'soak.sqlite3'}"
        return
    import sqlalchemy as sa

    schema = f"cds_soak_{uuid.uuid4().hex[:12]}"
    try:
        engine = create_database_engine(postgres_url)
        with engine.begin() as connection:
            connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.SQLAlchemyError as exc:
        raise BenchError(f"PostgreSQL at {postgres_url}: {exc}") from None
    url = sa.engine.make_url(postgres_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


class FaultyFhirServer(FhirServer, Protocol):
    """What the soak uses of ``FhirSandbox`` on top of the bench's ``FhirServer``."""

    def set_error_rate(self, fraction: float) -> None: ...

    def config(self) -> dict[str, Any]: ...


def start_fhir(stack: contextlib.ExitStack) -> FaultyFhirServer:
    """The local FHIR server seeded with the soak fixtures (stopped by ``stack``)."""
    try:
        server: FaultyFhirServer = stack.enter_context(
            FhirSandbox([FIXTURE_DIR / fixture for fixture in SOAK_FIXTURES], install=True)
        )
    except (NodeUnavailable, FhirSandboxError) as exc:
        raise BenchError(f"the Medplum FHIR server did not start: {exc}") from None
    return server


def set_error_rate(fhir: FaultyFhirServer, fraction: float) -> int:
    """Set the FHIR server's injected error rate; the count of errors injected so far."""
    fhir.set_error_rate(fraction)
    injected: int = fhir.config()["injectedErrors"]
    return injected


@contextlib.contextmanager
def running_service(
    workdir: Path, settings: SoakSettings, database_url: str, fhir: FhirServer
) -> Iterator[Server]:
    """``cds-service serve --workers 2`` with this run's settings only (no inherited CDS_*)."""
    port = free_port()
    options = f"--host {HOST} --port {port} --workers {settings.workers} --timeout {TIMEOUT_S}"
    command = [str(VENV_BIN / "cds-service"), "serve", *options.split()]
    command += ["--threads", str(settings.worker_threads)]
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("CDS_") and name != "PROMETHEUS_MULTIPROC_DIR"
    }
    env = inherited | {
        "CDS_PROFILE": "development",  # migrates the fresh database at start
        "CDS_DATABASE_URL": database_url,
        "CDS_LOG_LEVEL": settings.service_log_level,
        "CDS_FHIR_SERVER_ALLOWLIST": fhir.base_url,
        "CDS_MAX_CONCURRENT_CALLS": str(settings.max_concurrent_calls),
        "CDS_QUEUE_TIMEOUT_SECONDS": f"{settings.queue_timeout_s:g}",
    }
    server = start_server("service", command, env, workdir, port)
    try:
        yield server
    finally:
        stop_server(server)


def check_bodies(
    service: Server, fhir: FhirServer, bodies: list[HookBody], traffic: Traffic
) -> list[dict[str, Any]]:
    """Each body once, in turn: 200 with its expected findings; the FHIR requests it makes."""
    first = bodies[0]
    wait_until_answering(service, first.service_id, first.fresh())
    rows = []
    for body in bodies:
        fhir.clear_requests()
        response = requests.post(
            service.url(body.service_id),
            data=body.fresh(),
            headers={"Content-Type": "application/json"},
            timeout=TIMEOUT_S,
        )
        label = f"{body.fixture} ({body.kind})"
        if response.status_code != 200:
            raise BenchError(f"{label}: HTTP {response.status_code}: {response.text[:500]}")
        answer = read_hook_answer(response.json(), body.service_id)
        if answer is None:
            raise BenchError(f"{label}: the answer is not a list of cards with finding codes")
        if answer.findings != body.expected or answer.noted:
            raise BenchError(
                f"{label}: findings {list(answer.findings)}, expected {list(body.expected)}"
                + (" (with a 'not checked' note)" if answer.noted else "")
            )
        traffic.cards.extend(answer.cards)
        rows.append(
            {
                "fixture": body.fixture,
                "kind": body.kind,
                "service_id": body.service_id,
                "findings": list(answer.findings),
                "fhir_requests_per_call": len(fhir.requests()),
            }
        )
    fhir.clear_requests()
    return rows


# --------------------------------------------------------------------------------------------
# Report


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "missed")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def print_report(document: dict[str, Any]) -> None:
    settings = document["settings"]
    print()
    print(
        f"Soak: {settings['duration_s']:g} s per phase, {settings['concurrency']} client threads, "
        + (f"{settings['rate_per_s']:g} req/s paced" if settings["rate_per_s"] else "unpaced")
        + f", mix {', '.join(f'{k} {v}%' for k, v in settings['mix_percent'].items())}, "
        f"{settings['database']}; service: {settings['workers']} gthread workers x "
        f"{settings['worker_threads']} threads, CDS_MAX_CONCURRENT_CALLS="
        f"{settings['max_concurrent_calls']}"
    )
    header = (
        f"{'phase':<20} {'kind':<11} {'requests':>8} {'req/s':>6} {'errors':>6} {'degraded':>8} "
        f"{'mismatch':>8} {'p50':>7} {'p99':>7} {'p99.9':>7} {'max':>7}  (ms)"
    )
    print(header)
    print("-" * len(header))
    for phase in document["phases"]:
        label = f"{phase['name']} ({phase['fhir_error_rate'] * 100:g}%)"
        rows = [("all", phase, phase["latency"])] + [
            (kind, figures, figures["latency"]) for kind, figures in phase["by_kind"].items()
        ]
        for kind, figures, latency in rows:
            rate = f"{phase['throughput_per_s']:.1f}" if kind == "all" else ""
            print(
                f"{label:<20} {kind:<11} {figures['requests']:>8} {rate:>6} "
                f"{figures['errors']:>6} {figures['degraded']:>8} {figures['mismatch']:>8} "
                f"{_ms(latency['p50_ms']):>7} {_ms(latency['p99_ms']):>7} "
                f"{_ms(latency['p99_9_ms']):>7} {_ms(latency['max_ms']):>7}"
            )
            label = ""
    print()
    for phase in document["phases"]:
        workers = ", ".join(
            f"pid {w['pid']}: {(w['rss_start_kib'] or 0) / 1024:.1f} -> "
            f"{(w['rss_end_kib'] or 0) / 1024:.1f} MiB ({w['rss_growth_pct']:+.1f}%), "
            f"{w['cpu_s']} s CPU"
            for w in phase["workers"]
            if w["rss_growth_pct"] is not None
        )
        machine = phase["machine"]
        print(f"{phase['name']}: RSS {workers}")
        print(
            f"  machine: {machine['cpus_busy']} of {machine['cpus_counted']} CPUs busy, "
            f"{machine['cpus_busy_this_run']} by this run "
            f"({', '.join(f'{k} {v}' for k, v in machine['cpus_busy_by'].items())}), "
            f"{machine['cpus_busy_other_processes']} by other processes; load average "
            f"{machine['loadavg_start'][0]} -> {machine['loadavg_end'][0]}; FHIR requests "
            f"{phase['fhir_requests']}, injected errors {phase['fhir_errors_injected']}; "
            f"shed (503) {phase['shed_503']}; degraded {phase['degraded_by'] or 'none'}"
        )
        print(
            "  targets: "
            + ", ".join(f"{name} {_verdict(met)}" for name, met in phase["targets_met"].items())
        )
        for example in phase["errors_seen"][:3]:
            print(f"  e.g. {example}")
    whole = document["whole_run"]
    print(
        "whole run (both phases): RSS growth "
        + ", ".join(f"pid {w['pid']} {w['rss_growth_pct']:+.1f}%" for w in whole["workers"])
        + f": {_verdict(whole['targets_met']['rss_growth_below_10_pct'])}"
    )


def write_results(document: dict[str, Any], results_dir: Path, stamp: str) -> list[Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, indent=2) + "\n"
    paths = [results_dir / f"soak-{stamp}.json", results_dir / LATEST_NAME]
    for path in paths:
        temporary = path.with_suffix(".tmp")
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(path)
    return paths


# --------------------------------------------------------------------------------------------


def run_phase(
    name: str,
    error_rate: float,
    traffic: Traffic,
    clients: list[Client],
    fhir: FaultyFhirServer,
    master: int,
) -> tuple[dict[str, Any], ProcessSnapshot, ProcessSnapshot]:
    """One phase: the FHIR server's error rate set, the load, and the figures."""
    settings = traffic.settings
    print(f"phase {name}: {settings.duration_s:g} s, FHIR error rate {error_rate:g}", flush=True)
    injected_before = set_error_rate(fhir, error_rate)
    traffic.faults = bool(error_rate)
    connections_before = sum(client.connections for client in clients)
    reused_before = traffic.reused
    monitor = Monitor(master, fhir)
    first = snapshot(master)
    with monitor.running():
        samples, elapsed = drive(traffic, settings.duration_s, clients)
    last = snapshot(master)
    injected = set_error_rate(fhir, 0) - injected_before
    traffic.faults = False
    document = phase_document(
        name,
        error_rate,
        settings,
        samples,
        elapsed,
        first,
        last,
        monitor,
        injected,
        sum(client.connections for client in clients) - connections_before,
        traffic.reused - reused_before,
    )
    print(
        f"  {document['requests']} requests, {document['errors']} errors, "
        f"{document['degraded']} degraded, p99 {document['latency']['p99_ms']} ms",
        flush=True,
    )
    return document, first, last


def run(settings: SoakSettings, postgres_url: str | None, results_dir: Path) -> None:
    began = datetime.now(UTC)
    phases: list[dict[str, Any]] = []
    snapshots: list[ProcessSnapshot] = []
    with contextlib.ExitStack() as stack:  # stops the service, then the FHIR server
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cds-soak-")))
        print(
            "FHIR server: starting Medplum (cds_service/cli/fhir_sandbox.py), seeded with the "
            "soak fixtures"
        )
        fhir = start_fhir(stack)
        print(f"FHIR server: {fhir.base_url} (started in {fhir.startup_seconds or 0:.1f} s)")
        database_url = stack.enter_context(database(workdir, postgres_url))
        service = stack.enter_context(running_service(workdir, settings, database_url, fhir))
        bodies = hook_bodies(fhir.base_url)
        traffic = Traffic(settings, bodies)
        checks = check_bodies(service, fhir, bodies, traffic)
        master = service.process.pid
        workers = children_of(master)
        if len(workers) != settings.workers:
            raise BenchError(f"the service has {len(workers)} worker processes, not {WORKERS}")
        print(
            f"service: http://{HOST}:{service.port} (master {master}, workers {workers}); "
            f"{len(bodies)} bodies answered as expected.json says"
        )
        clients = [Client(traffic, service) for _ in range(settings.concurrency)]
        warmup: list[Sample] = []
        if settings.warmup_s:
            print(f"warm-up: {settings.warmup_s:g} s of the same mix (not counted)", flush=True)
            warmup, _ = drive(traffic, settings.warmup_s, clients)
        for name, error_rate in settings.phases:
            figures, first, last = run_phase(name, error_rate, traffic, clients, fhir, master)
            phases.append(figures)
            snapshots += [first, last]
        for client in clients:
            client.session.close()
    whole_workers = worker_figures(snapshots[0], snapshots[-1])
    whole_growths = [w["rss_growth_pct"] for w in whole_workers]
    document: dict[str, Any] = {
        "date": began.isoformat(timespec="seconds"),
        "machine": {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "node": node_version(),
            "cpus_usable": len(os.sched_getaffinity(0)),
            "platform": platform.platform(),
            "loadavg_at_start": [round(value, 2) for value in snapshots[0].loadavg],
        },
        "settings": asdict(settings),
        "targets": {
            "errors": 0,
            "rss_growth_pct_below": TARGET_RSS_GROWTH_PCT,
            "rate_sustained_fraction": TARGET_RATE_FRACTION,
            "steady_phase": "no degraded answers and no mismatches",
        },
        "checks": checks,
        "warmup": {
            "requests": len(warmup),
            "not_ok": sum(1 for sample in warmup if sample.outcome != "ok"),
        },
        "phases": phases,
        "whole_run": {
            "workers": whole_workers,
            "targets_met": {
                "rss_growth_below_10_pct": None
                if None in whole_growths
                else all(growth < TARGET_RSS_GROWTH_PCT for growth in whole_growths)
            },
        },
    }
    print_report(document)
    for path in write_results(document, results_dir, began.strftime("%Y%m%dT%H%M%SZ")):
        print(f"Results written to {path}")


def node_version() -> str | None:
    node = shutil.which("node")
    if node is None:
        return None
    completed = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    return completed.stdout.strip() or None


def main(argv: Sequence[str] | None = None) -> int:
    settings, postgres_url, results_dir = parse_args(argv)
    try:
        run(settings, postgres_url, results_dir)
    except BenchError as exc:
        print(f"soak: the run failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
