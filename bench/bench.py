"""Benchmark of the +20703 hook services (``make bench``). A measurement, not a test.

For each standard fixture it measures

1. in-process evaluation: ``json.loads`` + ``handle_hook_call`` + ``json.dumps``, no HTTP;
2. HTTP: ``cds-service serve --workers 2`` next to a bare Flask echo app (``bench/echo_app.py``)
   under the same gunicorn settings, both loaded by wrk with the same request body, interleaved
   round by round so that both see the same machine conditions;
3. FHIR fetch: the same service loaded with the fixture (prefetched) and with the fixture without
   its ``prefetch`` (the service fetches every key from a local Medplum FHIR server, the one of
   the tests and the demo, ``cds_service/cli/fhir_sandbox.py``), interleaved the same way; then
   the latency of the no-prefetch call with 100 ms injected into every FHIR answer, and the
   number of fetch rounds it takes.

The service may call only that local FHIR server (``CDS_FHIR_SERVER_ALLOWLIST``), or none at all
when Node.js is missing (the fetch section is then skipped, with the reason).

It prints a table, writes the figures to ``bench/results/latest.json`` and exits 0 even when a
target is missed. It exits 1 only when the run itself failed (a server did not start, wrk is
missing and cannot be installed, a response was not 2xx/3xx, ...). See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson
import requests
import sqlalchemy as sa

from cds_service.cli.fhir_sandbox import FhirSandbox, FhirSandboxError, NodeUnavailable
from cds_service.engine.hook_call import handle_hook_call
from cds_service.engine.rule_pack import load_pack
from cds_service.fhir.client import FetchPolicy, FhirFetcher
from cds_service.fhir.resources import PARSED, read_resources
from cds_service.rulepack.loading import default_cards_dir
from cds_service.rulepack.models import RulePack
from cds_service.rules.cards import FINDING_EXTENSION
from cds_service.store.report import percentile as nearest_rank_percentile

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
FIXTURE_DIR = ROOT / "fhir_fixtures"
DEFAULT_OUTPUT = BENCH_DIR / "results" / "latest.json"
VENV_BIN = Path(sys.executable).parent

# (fixture file, service id): the two standard fixtures of the product issue.
FIXTURES: tuple[tuple[str, str], ...] = (
    ("encounter-discharge--tibia-nonunion-removal.json", "cpt20703-encounter-discharge"),
    ("order-sign--planned-removal-reminder.json", "cpt20703-order-sign"),
)

TARGET_IN_PROCESS_P50_MS = 2.0
# The throughput issue: at 16 connections, >= 0.2 x the echo's requests/s, p99 <= 150 ms, and no
# answer other than 2xx (a 503 from the admission gate is a call the clinician never sees).
TARGET_HTTP_RATIO = 0.2
TARGET_HTTP_P99_MS = 150.0
TARGET_NON_2XX = 0
# The service's database: PostgreSQL (production's) in a fresh schema when it is reachable,
# otherwise a fresh SQLite file. CDS_BENCH_POSTGRES_URL names another server.
BENCH_POSTGRES_URL = os.environ.get("CDS_BENCH_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
# The FHIR fetch section (product issue 3): no-prefetch req/s >= 0.5 x prefetched req/s; with
# FHIR_DELAY_MS added to every FHIR answer, p50 <= 250 ms for the discharge fixture (two rounds).
TARGET_FETCH_RATIO = 0.5
TARGET_DELAYED_P50_MS = 250.0
TARGET_MAX_ROUNDS = 2
FHIR_DELAY_MS = 100
LATENCY_FIXTURE = FIXTURES[0]
# The allowlist when there is no local FHIR server: a loopback address nothing listens on, so the
# service never calls any FHIR server (the fixtures' own fhirServer is refused).
NO_FHIR_SERVER = "http://127.0.0.1:9/none"

# The settings cds_service/cli/serve.py gives gunicorn, repeated for the echo app.
WORKERS = 2
WORKER_CLASS = "gthread"
WORKER_THREADS = 16
TIMEOUT_S = 30
HOST = "127.0.0.1"
SERVICE_LOG_LEVEL = "WARNING"
STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

WRK_SCRIPT = """\
local file = assert(io.open({path}, "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"
"""


class BenchError(Exception):
    """The run itself failed: no figures can be trusted."""


# --------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class BenchSettings:
    """What the run does; written to the JSON results as they are."""

    iterations: int
    warmup_iterations: int
    duration_s: int
    warmup_duration_s: int
    connections: int
    threads: int
    rounds: int
    quick: bool
    in_process_only: bool
    skip_fetch: bool = False
    latency_requests: int = 30
    latency_warmup: int = 3
    fetch_stats_calls: int = 5
    fhir_delay_ms: int = FHIR_DELAY_MS
    workers: int = WORKERS
    worker_class: str = WORKER_CLASS
    timeout_s: int = TIMEOUT_S
    service_log_level: str = SERVICE_LOG_LEVEL


def parse_args(argv: Sequence[str] | None) -> tuple[BenchSettings, Path]:
    """Command-line options into settings and the results path."""
    parser = argparse.ArgumentParser(
        prog="bench.py", description="In-process and HTTP benchmark of the +20703 services."
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (10)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument("--rounds", type=int, default=3, help="(echo, service) rounds (3)")
    parser.add_argument(
        "--iterations", type=int, default=3000, help="timed in-process iterations (3000)"
    )
    parser.add_argument(
        "--warmup", type=int, default=200, help="untimed in-process iterations first (200)"
    )
    parser.add_argument(
        "--latency-requests",
        type=int,
        default=30,
        help=f"sequential no-prefetch requests with {FHIR_DELAY_MS} ms per FHIR answer (30)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 3 s wrk runs, 1000 iterations, 10 delayed requests",
    )
    parser.add_argument(
        "--in-process-only", action="store_true", help="skip the HTTP part (no wrk needed)"
    )
    parser.add_argument(
        "--skip-fetch",
        action="store_true",
        help="skip the FHIR fetch section (no local FHIR server; the HTTP part only)",
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file (%(default)s)"
    )
    args = parser.parse_args(argv)
    duration = 3 if args.quick else args.duration
    iterations = min(args.iterations, 1000) if args.quick else args.iterations
    latency_requests = min(args.latency_requests, 10) if args.quick else args.latency_requests
    for name, value in (
        ("--duration", duration),
        ("--connections", args.connections),
        ("--threads", args.threads),
        ("--rounds", args.rounds),
        ("--iterations", iterations),
        ("--latency-requests", latency_requests),
    ):
        if value < 1:
            parser.error(f"{name} must be at least 1")
    if args.connections < args.threads:
        parser.error("--connections must be at least --threads (wrk needs one per thread)")
    settings = BenchSettings(
        iterations=iterations,
        warmup_iterations=max(args.warmup, 0),
        duration_s=duration,
        warmup_duration_s=1 if args.quick else 2,
        connections=args.connections,
        threads=args.threads,
        rounds=args.rounds,
        quick=args.quick,
        in_process_only=args.in_process_only,
        skip_fetch=args.skip_fetch,
        latency_requests=latency_requests,
        fetch_stats_calls=3 if args.quick else 5,
    )
    return settings, args.output


# --------------------------------------------------------------------------------------------
# In-process evaluation


@dataclass(frozen=True)
class InProcessResult:
    """Milliseconds per call (parse + rules + serialise) and per stage."""

    p50_ms: float
    p99_ms: float
    mean_ms: float
    parse_p50_ms: float
    rules_p50_ms: float
    serialise_p50_ms: float
    # The same call with the pack's reading cache emptied first: every text read anew, as at
    # the first call that brings a note (a discharge, usually). Its excess over p50 is the
    # reading of the texts (the NLP).
    first_reading_p50_ms: float
    first_reading_p99_ms: float
    # First sight: the reading cache and the kept input models both emptied first, as at a call
    # whose texts and resources the worker has never seen. Validating the resources costs
    # ``validate_first_p50_ms`` then, and ``validate_kept_p50_ms`` once they are kept.
    first_sight_p50_ms: float
    first_sight_p99_ms: float
    validate_first_p50_ms: float
    validate_kept_p50_ms: float
    cards: int
    findings: list[str]

    @property
    def reading_ms(self) -> float:
        return self.first_reading_p50_ms - self.p50_ms


def percentile(values: Sequence[float], fraction: float) -> float:
    """The audit report's nearest-rank percentile, of a sample the benchmark never leaves empty."""
    found = nearest_rank_percentile(values, fraction)
    if found is None:
        raise BenchError("no samples to take a percentile of")
    return found


def bench_in_process(
    pack: RulePack, body_bytes: bytes, service_id: str, settings: BenchSettings
) -> InProcessResult:
    """Time ``settings.iterations`` evaluations after ``settings.warmup_iterations`` untimed."""
    result = handle_hook_call(pack, service_id, orjson.loads(body_bytes))
    for _ in range(settings.warmup_iterations):
        orjson.dumps(handle_hook_call(pack, service_id, orjson.loads(body_bytes)).response)
    totals: list[float] = []
    parse: list[float] = []
    rules: list[float] = []
    serialise: list[float] = []
    clock = time.perf_counter_ns
    for _ in range(settings.iterations):
        t0 = clock()
        body = orjson.loads(body_bytes)  # as cds_service.web.cds_hooks does
        t1 = clock()
        result = handle_hook_call(pack, service_id, body)
        t2 = clock()
        orjson.dumps(result.response)
        t3 = clock()
        totals.append((t3 - t0) / 1e6)
        parse.append((t1 - t0) / 1e6)
        rules.append((t2 - t1) / 1e6)
        serialise.append((t3 - t2) / 1e6)
    first_reading: list[float] = []
    first_sight: list[float] = []
    for _ in range(max(settings.iterations // 3, 1)):
        pack.readings.clear()
        t0 = clock()
        orjson.dumps(handle_hook_call(pack, service_id, orjson.loads(body_bytes)).response)
        first_reading.append((clock() - t0) / 1e6)
        pack.readings.clear()
        PARSED.clear()
        t0 = clock()
        orjson.dumps(handle_hook_call(pack, service_id, orjson.loads(body_bytes)).response)
        first_sight.append((clock() - t0) / 1e6)
    validate_first, validate_kept = validation_ms(body_bytes, max(settings.iterations // 3, 1))
    return InProcessResult(
        p50_ms=percentile(totals, 0.50),
        p99_ms=percentile(totals, 0.99),
        mean_ms=statistics.fmean(totals),
        parse_p50_ms=percentile(parse, 0.50),
        rules_p50_ms=percentile(rules, 0.50),
        serialise_p50_ms=percentile(serialise, 0.50),
        first_reading_p50_ms=percentile(first_reading, 0.50),
        first_reading_p99_ms=percentile(first_reading, 0.99),
        first_sight_p50_ms=percentile(first_sight, 0.50),
        first_sight_p99_ms=percentile(first_sight, 0.99),
        validate_first_p50_ms=validate_first,
        validate_kept_p50_ms=validate_kept,
        cards=len(result.issued),
        findings=sorted({code for _, code in result.issued}),
    )


def validation_ms(body_bytes: bytes, calls: int) -> tuple[float, float]:
    """p50 of reading the body's input resources (``read_resources``): with the kept models
    emptied before each call (every resource validated), and with them kept."""
    body = orjson.loads(body_bytes)
    prefetch, draft_orders = body.get("prefetch") or {}, body["context"].get("draftOrders")
    first: list[float] = []
    kept: list[float] = []
    clock = time.perf_counter_ns
    for _ in range(calls):
        PARSED.clear()
        t0 = clock()
        read_resources(prefetch, draft_orders)
        t1 = clock()
        read_resources(prefetch, draft_orders)
        first.append((t1 - t0) / 1e6)
        kept.append((clock() - t1) / 1e6)
    return percentile(first, 0.50), percentile(kept, 0.50)


# --------------------------------------------------------------------------------------------
# wrk


@dataclass(frozen=True)
class WrkRun:
    """One wrk run, as wrk reported it."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx_3xx: int
    socket_errors: dict[str, int]
    # CPU time (user + system) the server's processes spent per request during the run.
    cpu_ms_per_request: float | None = None

    def problems(self) -> list[str]:
        """Why the run cannot be trusted, if it cannot. A non-2xx answer is a result (the
        shed count, held to its own target), not a failed run."""
        found = []
        errors = {kind: count for kind, count in self.socket_errors.items() if count}
        if errors:
            found.append("socket errors " + ", ".join(f"{k} {v}" for k, v in errors.items()))
        if self.requests == 0:
            found.append("no request completed")
        return found


_TIME_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_LATENCY_LINE = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_RPS_LINE = re.compile(r"^Requests/sec:\s+([\d.]+)\s*$", re.MULTILINE)
_REQUESTS_LINE = re.compile(r"^\s*(\d+) requests in ", re.MULTILINE)
_NON_2XX_LINE = re.compile(r"^\s*Non-2xx or 3xx responses:\s+(\d+)\s*$", re.MULTILINE)
_SOCKET_ERRORS_LINE = re.compile(
    r"^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)\s*$", re.MULTILINE
)


def parse_wrk_output(text: str) -> WrkRun:
    """The figures of ``wrk --latency`` output; BenchError when a line is missing."""
    latencies = {
        match.group(1): float(match.group(2)) * _TIME_UNITS_MS[match.group(3)]
        for match in _LATENCY_LINE.finditer(text)
    }
    rps = _RPS_LINE.search(text)
    total = _REQUESTS_LINE.search(text)
    if rps is None or total is None or set(latencies) != {"50", "99"}:
        raise BenchError(f"cannot read the wrk output:\n{text}")
    non_2xx = _NON_2XX_LINE.search(text)
    socket_errors = _SOCKET_ERRORS_LINE.search(text)
    counts = [int(value) for value in socket_errors.groups()] if socket_errors else [0] * 4
    return WrkRun(
        requests_per_s=float(rps.group(1)),
        p50_ms=latencies["50"],
        p99_ms=latencies["99"],
        requests=int(total.group(1)),
        non_2xx_3xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=dict(zip(("connect", "read", "write", "timeout"), counts, strict=True)),
    )


def ensure_wrk() -> str:
    """The path of wrk, installing Debian's package first when it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise BenchError("wrk is not installed and this is not root: apt-get install wrk")
    print("wrk not found: installing it with apt-get (apt-get update; apt-get install wrk)")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
        print("  $ " + " ".join(command), flush=True)
        if subprocess.run(command, env=env, check=False).returncode != 0:
            raise BenchError(f"'{' '.join(command)}' failed; install wrk and run again")
    found = shutil.which("wrk")
    if not found:
        raise BenchError("apt-get installed wrk but it is not on PATH")
    return found


def wrk_version(wrk: str) -> str:
    """First line of ``wrk -v`` (wrk exits 1 after printing it)."""
    completed = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    lines = (completed.stdout + completed.stderr).strip().splitlines()
    return lines[0].split(" Copyright")[0].strip() if lines else "unknown"


def group_cpu_seconds(group: int) -> float:
    """User + system CPU seconds of the live processes in process group ``group``, plus those
    of the children its leader (the gunicorn master) has reaped: a worker replaced after
    ``--max-requests`` during a run still counts."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # the process ended while we looked
            continue
        if int(fields[2]) == group:  # fields after the name: state, ppid, pgrp, ...
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
            if int(stat.parent.name) == group:
                ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def run_wrk(
    wrk: str,
    url: str,
    script: Path,
    duration_s: int,
    settings: BenchSettings,
    process_group: int | None = None,
) -> WrkRun:
    """One wrk run against ``url``; with ``process_group``, its CPU time per request too."""
    cpu_before = group_cpu_seconds(process_group) if process_group is not None else 0.0
    command = [
        wrk,
        f"-t{settings.threads}",
        f"-c{settings.connections}",
        f"-d{duration_s}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    completed = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=duration_s + 60
    )
    if completed.returncode != 0:
        raise BenchError(
            f"wrk failed ({completed.returncode}): {completed.stderr.strip() or completed.stdout}"
        )
    run = parse_wrk_output(completed.stdout)
    if process_group is None or not run.requests:
        return run
    cpu_ms = (group_cpu_seconds(process_group) - cpu_before) * 1000
    return dataclasses.replace(run, cpu_ms_per_request=cpu_ms / run.requests)


# --------------------------------------------------------------------------------------------
# Servers


@dataclass
class Server:
    """A gunicorn server started by the bench, in its own process group."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def url(self, service_id: str) -> str:
        return f"http://{HOST}:{self.port}/cds-services/{service_id}"

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(
    name: str, command: list[str], env: dict[str, str], workdir: Path, port: int
) -> Server:
    """Start ``command`` in a new session (so that stopping it stops its workers too)."""
    log = workdir / f"{name}.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(name, process, port, log)


def stop_server(server: Server) -> None:
    """SIGTERM the server's process group (gunicorn stops its workers); SIGKILL it if slow."""
    group = server.process.pid  # start_new_session: the group id is the leader's pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    try:
        server.process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        server.process.wait(timeout=STOP_TIMEOUT_S)


def wait_until_answering(server: Server, service_id: str, body: bytes) -> requests.Response:
    """POST ``body`` until the server answers; the first answer it gives."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if server.process.poll() is not None:
            raise BenchError(
                f"{server.name} exited with {server.process.returncode} while starting:\n"
                + server.log_tail()
            )
        try:
            return requests.post(
                server.url(service_id),
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=5,
            )
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{server.name} did not answer within {STARTUP_TIMEOUT_S:.0f} s:\n"
                    + server.log_tail()
                ) from None
            time.sleep(0.1)


def stack_database(workdir: Path) -> str:
    """A fresh schema on PostgreSQL when it answers (the service migrates it at start-up in the
    development profile); else a fresh SQLite file in ``workdir``."""
    engine = sa.create_engine(BENCH_POSTGRES_URL)
    schema = f"cds_bench_{os.getpid()}_{int(time.time())}"
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError:
        return f"sqlite:///{workdir / 'bench.sqlite3'}"
    finally:
        engine.dispose()
    DATABASE_USED["url"] = "postgresql (fresh schema)"
    DATABASE_USED["schema"] = schema
    url = sa.engine.make_url(BENCH_POSTGRES_URL).update_query_dict(
        {"options": f"-csearch_path={schema}"}
    )
    return url.render_as_string(hide_password=False)


def drop_bench_schema() -> None:
    schema = DATABASE_USED.pop("schema", None)
    if schema is None:
        return
    engine = sa.create_engine(BENCH_POSTGRES_URL)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        engine.dispose()


DATABASE_USED: dict[str, str] = {"url": "sqlite (fresh file)"}


@contextlib.contextmanager
def running_servers(
    workdir: Path, settings: BenchSettings, fhir_allowlist: str
) -> Iterator[tuple[Server, Server]]:
    """The echo app and the service, both under gunicorn with the same settings.

    The service may fetch only from ``fhir_allowlist`` (the local FHIR server, or nothing).
    """
    servers: list[Server] = []
    try:
        echo_port = free_port()
        echo_command = [
            str(VENV_BIN / "gunicorn"),
            "--workers",
            str(settings.workers),
            "--worker-class",
            settings.worker_class,
            "--threads",
            str(WORKER_THREADS),
            "--timeout",
            str(settings.timeout_s),
            "--graceful-timeout",
            str(settings.timeout_s),
            "--log-level",
            "warning",
            "--bind",
            f"{HOST}:{echo_port}",
            "--chdir",
            str(BENCH_DIR),
            "echo_app:app",
        ]
        servers.append(start_server("echo", echo_command, dict(os.environ), workdir, echo_port))
        service_port = free_port()
        service_command = [
            str(VENV_BIN / "cds-service"),
            "serve",
            "--host",
            HOST,
            "--port",
            str(service_port),
            "--workers",
            str(settings.workers),
            "--timeout",
            str(settings.timeout_s),
            "--drain-seconds",  # no load balancer to leave: stop at once
            "0",
        ]
        service_env = os.environ | {
            "CDS_DATABASE_URL": stack_database(workdir),
            "CDS_LOG_LEVEL": settings.service_log_level,
            "CDS_FHIR_SERVER_ALLOWLIST": fhir_allowlist,
            # wrk sends everything from one address: the per-client limit would answer 429s
            # and the bench would measure the limiter, not the service.
            "CDS_RATE_LIMIT_PER_MINUTE": "0",
        }
        servers.append(start_server("service", service_command, service_env, workdir, service_port))
        yield servers[0], servers[1]
    finally:
        for server in servers:
            stop_server(server)
        drop_bench_schema()


# --------------------------------------------------------------------------------------------
# HTTP comparison


@dataclass(frozen=True)
class HttpSide:
    """Medians across rounds for one server, plus every round."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int  # summed over the rounds
    cpu_ms_per_request: float | None
    rounds: list[WrkRun]


def summarise(runs: list[WrkRun]) -> HttpSide:
    cpu = [run.cpu_ms_per_request for run in runs if run.cpu_ms_per_request is not None]
    return HttpSide(
        requests_per_s=statistics.median(run.requests_per_s for run in runs),
        p50_ms=statistics.median(run.p50_ms for run in runs),
        p99_ms=statistics.median(run.p99_ms for run in runs),
        non_2xx=sum(run.non_2xx_3xx for run in runs),
        cpu_ms_per_request=statistics.median(cpu) if cpu else None,
        rounds=runs,
    )


def check_answers(
    echo: Server, service: Server, service_id: str, body: bytes, fixture: str
) -> None:
    """Before measuring: the service answers the fixture with 200 and cards; the echo echoes."""
    answer = wait_until_answering(service, service_id, body)
    if answer.status_code != 200:
        raise BenchError(
            f"the service answered {fixture} with HTTP {answer.status_code}: {answer.text[:500]}"
        )
    payload = answer.json()
    if not isinstance(payload, dict) or not isinstance(payload.get("cards"), list):
        raise BenchError(f"the service answered {fixture} without a cards list")
    echoed = wait_until_answering(echo, service_id, body)
    if echoed.status_code != 200 or echoed.content != body:
        raise BenchError(f"the echo app did not echo {fixture} (HTTP {echoed.status_code})")


def measured(run: WrkRun, label: str) -> WrkRun:
    """The run, after printing it; BenchError when wrk saw failures."""
    problems = run.problems()
    print(
        f"    {label:<8} {run.requests_per_s:>9.1f} req/s  p50 {run.p50_ms:>7.2f} ms  "
        f"p99 {run.p99_ms:>7.2f} ms  ({run.requests} requests"
        + (f", {run.non_2xx_3xx} non-2xx" if run.non_2xx_3xx else "")
        + (
            f", {run.cpu_ms_per_request:.2f} ms CPU each)"
            if run.cpu_ms_per_request is not None
            else ")"
        )
        + (f"  !! {'; '.join(problems)}" if problems else ""),
        flush=True,
    )
    if problems:
        raise BenchError(f"{label}: {'; '.join(problems)}")
    return run


def bench_http(
    wrk: str,
    echo: Server,
    service: Server,
    fixture: str,
    service_id: str,
    body: bytes,
    workdir: Path,
    settings: BenchSettings,
) -> tuple[HttpSide, HttpSide]:
    """Warm both servers up, then ``settings.rounds`` rounds of (echo, service)."""
    check_answers(echo, service, service_id, body, fixture)
    script = wrk_script(workdir, fixture, body)
    runs = interleaved(
        wrk,
        {server.name: (server.url(service_id), script) for server in (echo, service)},
        settings,
        process_groups={server.name: server.process.pid for server in (echo, service)},
    )
    return summarise(runs["echo"]), summarise(runs["service"])


def wrk_script(workdir: Path, name: str, body: bytes) -> Path:
    """A wrk Lua script that POSTs ``body`` (written next to it as ``name``)."""
    body_file = workdir / name
    body_file.write_bytes(body)
    script = workdir / f"{name}.lua"
    script.write_text(WRK_SCRIPT.format(path=json.dumps(str(body_file))), encoding="utf-8")
    return script


def interleaved(
    wrk: str,
    targets: dict[str, tuple[str, Path]],
    settings: BenchSettings,
    between_runs: Callable[[], None] | None = None,
    process_groups: dict[str, int] | None = None,
) -> dict[str, list[WrkRun]]:
    """A warm-up run per target (label -> (url, script)), then rounds of one run per target;
    the CPU time per request of the targets named in ``process_groups`` (label -> group)."""
    groups = process_groups or {}
    for label, (url, script) in targets.items():  # untimed: lazy imports, connections, caches
        measured(
            run_wrk(wrk, url, script, settings.warmup_duration_s, settings), f"{label} (warm-up)"
        )
        if between_runs is not None:
            between_runs()
    runs: dict[str, list[WrkRun]] = {label: [] for label in targets}
    for round_number in range(1, settings.rounds + 1):
        for label, (url, script) in targets.items():
            run = run_wrk(wrk, url, script, settings.duration_s, settings, groups.get(label))
            runs[label].append(measured(run, f"{label} #{round_number}"))
            if between_runs is not None:
                between_runs()
    return runs


# --------------------------------------------------------------------------------------------
# FHIR fetch: the no-prefetch path against a local FHIR server


class FhirServer(Protocol):
    """What the bench uses of ``FhirSandbox`` (``cds_service/cli/fhir_sandbox.py``)."""

    startup_seconds: float | None

    @property
    def root_url(self) -> str: ...

    @property
    def base_url(self) -> str: ...

    def set_delay(self, ms: float) -> None: ...

    def requests(self) -> list[dict[str, Any]]: ...

    def clear_requests(self) -> None: ...


def start_fhir_server(
    stack: contextlib.ExitStack, settings: BenchSettings
) -> tuple[FhirServer | None, str | None]:
    """The local FHIR server seeded with the bench fixtures (stopped by ``stack``), or why not.

    No Node.js is not a failure: the fetch section is skipped. A server that cannot start is.
    """
    if settings.in_process_only:
        return None, "--in-process-only (no servers)"
    if settings.skip_fetch:
        return None, "--skip-fetch"
    print("FHIR server: starting Medplum (cds_service/cli/fhir_sandbox.py)", flush=True)
    try:
        server: FhirServer = stack.enter_context(
            FhirSandbox([FIXTURE_DIR / fixture for fixture, _ in FIXTURES], install=True)
        )
    except NodeUnavailable as exc:
        return None, f"Node.js is not available: {exc}"
    except FhirSandboxError as exc:
        raise BenchError(f"the Medplum FHIR server did not start: {exc}") from None
    return server, None


def pointed_at(body: bytes, fhir_server: str, prefetch: bool = True) -> bytes:
    """The fixture ``body`` with ``fhirServer`` replaced, and without ``prefetch`` if asked.

    Written as the fixture files are (2-space indent), so that the prefetched body differs from
    the file only in the URL.
    """
    document = json.loads(body)
    document["fhirServer"] = fhir_server
    if not prefetch:
        document.pop("prefetch", None)
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()


def settle(fhir: FhirServer, quiet_s: float = 0.5, timeout_s: float = 15.0) -> None:
    """Wait until the FHIR server gets no more requests, then forget the ones it got.

    When wrk stops, the service still works through the calls already sent (up to one per wrk
    connection); without this their FHIR requests would count for, and compete with, what
    comes next.
    """
    deadline = time.monotonic() + timeout_s
    seen = len(fhir.requests())
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = len(fhir.requests())
        if now == seen:
            break
        seen = now
    fhir.clear_requests()


def _comparable(document: Any) -> Any:
    """``document`` without uuids (random) and ``meta`` (stamped by the FHIR server)."""
    if isinstance(document, dict):
        return {k: _comparable(v) for k, v in document.items() if k not in ("uuid", "meta")}
    if isinstance(document, list):
        return [_comparable(item) for item in document]
    return document


@dataclass(frozen=True)
class Answer:
    """The service's answer to one body, checked before measuring."""

    findings: list[str]
    cards: Any  # comparable: no uuids, no meta
    fhir_requests: list[dict[str, Any]]  # the FHIR requests the call made


def checked_answer(
    service: Server, service_id: str, body: bytes, label: str, fhir: FhirServer
) -> Answer:
    """POST ``body`` once: 200 with cards that carry a finding code, else BenchError."""
    settle(fhir)
    answer = requests.post(
        service.url(service_id),
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=TIMEOUT_S,
    )
    if answer.status_code != 200:
        raise BenchError(
            f"the service answered {label} with HTTP {answer.status_code}: {answer.text[:500]}"
        )
    payload = answer.json()
    cards = payload.get("cards") if isinstance(payload, dict) else None
    if not isinstance(cards, list):
        raise BenchError(f"the service answered {label} without a cards list")
    findings = []
    for card in cards:
        extension = card.get("extension") if isinstance(card, dict) else None
        code = extension.get(FINDING_EXTENSION) if isinstance(extension, dict) else None
        if not isinstance(code, str):
            raise BenchError(f"a card answering {label} has no {FINDING_EXTENSION} code")
        findings.append(code)
    return Answer(sorted(findings), _comparable(cards), fhir.requests())


def fhir_server_ms_per_call(
    fhir: FhirServer, received: list[dict[str, Any]], repeats: int = 20
) -> float:
    """How long the FHIR server takes to answer one call's FHIR requests, one after the other.

    Each request is replayed ``repeats`` times straight to the server (after one untimed);
    the sum of their medians, client round trips included. It tells how much of a no-prefetch
    call is the FHIR server's own work (Node, one thread, on the same CPUs as the service).
    """
    total = 0.0
    with requests.Session() as session:
        session.trust_env = False
        for request in received:
            query = f"?{request['query']}" if request.get("query") else ""
            url = f"{fhir.root_url}{request['path']}{query}"
            session.get(url, timeout=TIMEOUT_S)
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                session.get(url, timeout=TIMEOUT_S).raise_for_status()
                times.append((time.perf_counter() - started) * 1000)
            total += statistics.median(times)
    fhir.clear_requests()
    return total


@dataclass(frozen=True)
class FetchHttpResult:
    """One fixture, prefetched and without prefetch, under the same wrk load."""

    fixture: str
    service_id: str
    findings: list[str]
    cards_identical: bool  # apart from uuids and FHIR server meta
    fhir_requests_prefetched: int  # per call
    fhir_requests_no_prefetch: int  # per call
    # The FHIR server's own time for the no-prefetch call's requests, one after the other.
    fhir_server_ms_per_call: float
    prefetched: HttpSide
    no_prefetch: HttpSide

    @property
    def ratio(self) -> float | None:
        if not self.prefetched.requests_per_s:
            return None
        return self.no_prefetch.requests_per_s / self.prefetched.requests_per_s

    @property
    def target_met(self) -> bool | None:
        return None if self.ratio is None else self.ratio >= TARGET_FETCH_RATIO


def bench_fetch_http(
    wrk: str,
    service: Server,
    fhir: FhirServer,
    fixture: str,
    service_id: str,
    body: bytes,
    workdir: Path,
    settings: BenchSettings,
) -> FetchHttpResult:
    """Check both bodies give the same findings, then rounds of (prefetched, no-prefetch)."""
    bodies = {
        "prefetched": pointed_at(body, fhir.base_url),
        "no-prefetch": pointed_at(body, fhir.base_url, prefetch=False),
    }
    answers = {
        label: checked_answer(service, service_id, data, f"{fixture} ({label})", fhir)
        for label, data in bodies.items()
    }
    full, bare = answers["prefetched"], answers["no-prefetch"]
    if full.findings != bare.findings:
        raise BenchError(
            f"{fixture}: the findings differ: prefetched {full.findings}, "
            f"no prefetch {bare.findings}"
        )
    if not bare.fhir_requests:
        raise BenchError(f"{fixture}: the no-prefetch call made no FHIR request")
    if any(request.get("method") != "GET" for request in bare.fhir_requests):
        raise BenchError(f"{fixture}: the no-prefetch call made a FHIR request other than GET")
    server_ms = fhir_server_ms_per_call(fhir, bare.fhir_requests)
    print(
        f"    findings {', '.join(full.findings) or 'none'} both ways; FHIR requests per call: "
        f"prefetched {len(full.fhir_requests)}, no prefetch {len(bare.fhir_requests)}, "
        f"answered by the FHIR server in {server_ms:.1f} ms one after the other",
        flush=True,
    )
    stem = fixture.removesuffix(".json")
    targets = {
        label: (service.url(service_id), wrk_script(workdir, f"{stem}--{label}.json", data))
        for label, data in bodies.items()
    }
    # After every run: let the service finish the calls wrk left in flight, and empty the FHIR
    # server's list of the requests it received.
    runs = interleaved(wrk, targets, settings, between_runs=lambda: settle(fhir))
    return FetchHttpResult(
        fixture=fixture,
        service_id=service_id,
        findings=full.findings,
        cards_identical=full.cards == bare.cards,
        fhir_requests_prefetched=len(full.fhir_requests),
        fhir_requests_no_prefetch=len(bare.fhir_requests),
        fhir_server_ms_per_call=server_ms,
        prefetched=summarise(runs["prefetched"]),
        no_prefetch=summarise(runs["no-prefetch"]),
    )


@dataclass(frozen=True)
class DelayedLatency:
    """The no-prefetch call, one at a time, with a delay added to every FHIR answer."""

    fixture: str
    service_id: str
    delay_ms: int
    requests: int
    warmup_requests: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    fhir_requests_per_call: float
    # The same call in-process (handle_hook_call with a FhirFetcher), for its fetch statistics.
    in_process_calls: int
    in_process_p50_ms: float
    rounds: list[int]
    keys_fetched: list[int]
    references_fetched: list[int]
    fetch_elapsed_ms: list[float]

    @property
    def max_rounds(self) -> int:
        return max(self.rounds)

    @property
    def target_met(self) -> bool:
        return self.p50_ms <= TARGET_DELAYED_P50_MS

    @property
    def rounds_target_met(self) -> bool:
        return self.max_rounds <= TARGET_MAX_ROUNDS


def bench_delayed_latency(
    pack: RulePack, service: Server, fhir: FhirServer, settings: BenchSettings
) -> DelayedLatency:
    """Sequential no-prefetch calls over HTTP, then in-process, with the FHIR delay on."""
    fixture, service_id = LATENCY_FIXTURE
    body = pointed_at((FIXTURE_DIR / fixture).read_bytes(), fhir.base_url, prefetch=False)
    url = service.url(service_id)

    def call() -> float:
        started = time.perf_counter()
        answer = requests.post(
            url, data=body, headers={"Content-Type": "application/json"}, timeout=TIMEOUT_S
        )
        elapsed = (time.perf_counter() - started) * 1000
        if answer.status_code != 200:
            raise BenchError(
                f"the service answered {fixture} (no prefetch, FHIR delay) with HTTP "
                f"{answer.status_code}: {answer.text[:500]}"
            )
        return elapsed

    fetcher = FhirFetcher(FetchPolicy(allowlist=(fhir.base_url.rstrip("/") + "/",)))
    settle(fhir)
    fhir.set_delay(settings.fhir_delay_ms)
    try:
        for _ in range(settings.latency_warmup):
            call()
        fhir.clear_requests()
        times = [call() for _ in range(settings.latency_requests)]
        fhir_requests = len(fhir.requests())
        handle_hook_call(pack, service_id, json.loads(body), fetcher=fetcher)  # warm-up
        in_process: list[float] = []
        stats = []
        for _ in range(settings.fetch_stats_calls):
            started = time.perf_counter()
            result = handle_hook_call(pack, service_id, json.loads(body), fetcher=fetcher)
            in_process.append((time.perf_counter() - started) * 1000)
            if result.fetch_stats is None:
                raise BenchError(f"{fixture}: the in-process call recorded no fetch statistics")
            stats.append(result.fetch_stats)
    finally:
        fetcher.close()
        fhir.set_delay(0)
    return DelayedLatency(
        fixture=fixture,
        service_id=service_id,
        delay_ms=settings.fhir_delay_ms,
        requests=len(times),
        warmup_requests=settings.latency_warmup,
        p50_ms=percentile(times, 0.50),
        p99_ms=percentile(times, 0.99),
        mean_ms=statistics.fmean(times),
        max_ms=max(times),
        fhir_requests_per_call=fhir_requests / len(times),
        in_process_calls=len(in_process),
        in_process_p50_ms=percentile(in_process, 0.50),
        rounds=[stat.rounds for stat in stats],
        keys_fetched=[stat.keys_fetched for stat in stats],
        references_fetched=[stat.references_fetched for stat in stats],
        fetch_elapsed_ms=[round(stat.elapsed_ms, 1) for stat in stats],
    )


@dataclass(frozen=True)
class FetchSection:
    """The FHIR fetch figures, or why there are none."""

    skipped: str | None = None
    fhir_server: str | None = None
    fhir_server_startup_s: float | None = None
    fixtures: tuple[FetchHttpResult, ...] = ()
    latency: DelayedLatency | None = None


def bench_fetch(
    wrk: str,
    pack: RulePack,
    service: Server,
    fhir: FhirServer,
    bodies: dict[str, bytes],
    workdir: Path,
    settings: BenchSettings,
) -> FetchSection:
    """The whole FHIR fetch section: both fixtures under wrk, then the delayed latency."""
    fixtures: list[FetchHttpResult] = []
    for fixture, service_id in FIXTURES:
        print(f"FHIR fetch: {fixture} ({service_id})", flush=True)
        fixtures.append(
            bench_fetch_http(
                wrk, service, fhir, fixture, service_id, bodies[fixture], workdir, settings
            )
        )
    print(
        f"FHIR fetch: {LATENCY_FIXTURE[0]} without prefetch, {settings.fhir_delay_ms} ms per "
        "FHIR answer",
        flush=True,
    )
    latency = bench_delayed_latency(pack, service, fhir, settings)
    return FetchSection(
        fhir_server=fhir.base_url,
        fhir_server_startup_s=fhir.startup_seconds,
        fixtures=tuple(fixtures),
        latency=latency,
    )


# --------------------------------------------------------------------------------------------
# Report


@dataclass(frozen=True)
class FixtureResult:
    fixture: str
    service_id: str
    body_bytes: int
    in_process: InProcessResult
    echo: HttpSide | None
    service: HttpSide | None

    @property
    def ratio(self) -> float | None:
        if self.echo is None or self.service is None or not self.echo.requests_per_s:
            return None
        return self.service.requests_per_s / self.echo.requests_per_s

    @property
    def in_process_target_met(self) -> bool:
        return self.in_process.p50_ms <= TARGET_IN_PROCESS_P50_MS

    @property
    def first_reading_target_met(self) -> bool:
        return self.in_process.first_reading_p50_ms <= TARGET_IN_PROCESS_P50_MS

    @property
    def http_target_met(self) -> bool | None:
        return None if self.ratio is None else self.ratio >= TARGET_HTTP_RATIO

    @property
    def p99_target_met(self) -> bool | None:
        return None if self.service is None else self.service.p99_ms <= TARGET_HTTP_P99_MS

    @property
    def non_2xx_target_met(self) -> bool | None:
        return None if self.service is None else self.service.non_2xx <= TARGET_NON_2XX


def _cpu(side: HttpSide) -> str:
    return "n/a" if side.cpu_ms_per_request is None else f"{side.cpu_ms_per_request:.2f}"


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "MISSED")


def print_report(
    results: list[FixtureResult], settings: BenchSettings, fetch: FetchSection
) -> None:
    print()
    print(
        f"Targets: in-process p50 <= {TARGET_IN_PROCESS_P50_MS:g} ms; "
        f"HTTP req/s ratio service/echo >= {TARGET_HTTP_RATIO:g}, service p99 <= "
        f"{TARGET_HTTP_P99_MS:g} ms, non-2xx answers <= {TARGET_NON_2XX}"
    )
    header = (
        f"{'fixture':<48} {'in-process p50/p99 ms':>22}  {'echo req/s p50/p99 ms':>24}  "
        f"{'service req/s p50/p99 ms':>24}  {'ratio':>5}"
    )
    print(header)
    print("-" * len(header))
    for result in results:
        ip = result.in_process
        print(
            f"{result.fixture.removesuffix('.json'):<48} "
            f"{ip.p50_ms:>10.3f} / {ip.p99_ms:>8.3f}  "
            f"{_http_cell(result.echo):>24}  {_http_cell(result.service):>24}  "
            f"{'' if result.ratio is None else f'{result.ratio:.2f}':>5}"
        )
    print()
    for result in results:
        ip = result.in_process
        print(
            f"{result.service_id} ({result.fixture}, {result.body_bytes} bytes, "
            f"{ip.cards} card(s): {', '.join(ip.findings) or 'none'})"
        )
        print(
            f"  in-process p50 {ip.p50_ms:.3f} ms (parse {ip.parse_p50_ms:.3f} + rules "
            f"{ip.rules_p50_ms:.3f} + serialise {ip.serialise_p50_ms:.3f}), "
            f"p99 {ip.p99_ms:.3f} ms, mean {ip.mean_ms:.3f} ms: "
            f"target {_verdict(result.in_process_target_met)}"
        )
        print(
            f"  first reading p50 {ip.first_reading_p50_ms:.3f} ms (reading the texts "
            f"{ip.reading_ms:.3f}), p99 {ip.first_reading_p99_ms:.3f} ms: "
            f"target {_verdict(result.first_reading_target_met)}"
        )
        print(
            f"  first sight (texts and resources new) p50 {ip.first_sight_p50_ms:.3f} ms, "
            f"p99 {ip.first_sight_p99_ms:.3f} ms; validating the input resources p50 "
            f"{ip.validate_first_p50_ms:.3f} ms new, {ip.validate_kept_p50_ms:.3f} ms kept"
        )
        if result.ratio is not None and result.service is not None and result.echo is not None:
            service, echo = result.service, result.echo
            print(
                f"  HTTP ratio {result.ratio:.2f}: target {_verdict(result.http_target_met)}; "
                f"service p99 {service.p99_ms:.1f} ms: target {_verdict(result.p99_target_met)}; "
                f"non-2xx {service.non_2xx}: target {_verdict(result.non_2xx_target_met)}"
            )
            print(
                f"  CPU per request: service {_cpu(service)} ms, echo {_cpu(echo)} ms "
                "(all the server's processes, median of the rounds)"
            )
    print()
    print(
        f"In-process: {settings.iterations} timed iterations after {settings.warmup_iterations} "
        "warm-up iterations, one process, no HTTP and no database. Repeated calls find their "
        f"texts already read; the {max(settings.iterations // 3, 1)} first-reading calls empty "
        "the reading cache before each call."
    )
    if not settings.in_process_only:
        print(
            f"HTTP: wrk -t{settings.threads} -c{settings.connections} -d{settings.duration_s}s "
            f"--latency, medians of {settings.rounds} interleaved (echo, service) rounds after a "
            f"{settings.warmup_duration_s} s warm-up each; gunicorn {settings.workers} "
            f"{settings.worker_class} workers, timeout {settings.timeout_s} s, no access log. "
            f"The service ran with CDS_LOG_LEVEL={settings.service_log_level} (at INFO it writes "
            "one JSON log line per request; WARNING keeps log I/O out of the figures) and a "
            f"{DATABASE_USED['url']} database (it records the issued cards of every call). "
            "wrk runs on the same machine and competes with the servers for the CPUs."
        )
    print_fetch_report(fetch, settings)


def print_fetch_report(fetch: FetchSection, settings: BenchSettings) -> None:
    print()
    if fetch.skipped is not None:
        print(f"FHIR fetch section skipped: {fetch.skipped}.")
        return
    discharge = LATENCY_FIXTURE[0].removesuffix(".json")
    print(f"FHIR fetch: prefetched vs no prefetch, local FHIR server {fetch.fhir_server}")
    print(
        f"Targets: req/s ratio no-prefetch/prefetched >= {TARGET_FETCH_RATIO:g}; with "
        f"{settings.fhir_delay_ms} ms per FHIR answer, p50 <= {TARGET_DELAYED_P50_MS:g} ms for "
        f"{discharge} (at most {TARGET_MAX_ROUNDS} fetch rounds)"
    )
    header = (
        f"{'fixture':<48} {'prefetched req/s p50/p99 ms':>28}  "
        f"{'no-prefetch req/s p50/p99 ms':>28}  {'ratio':>5}  {'FHIR req/call':>13}"
    )
    print(header)
    print("-" * len(header))
    for result in fetch.fixtures:
        print(
            f"{result.fixture.removesuffix('.json'):<48} "
            f"{_http_cell(result.prefetched):>28}  {_http_cell(result.no_prefetch):>28}  "
            f"{'' if result.ratio is None else f'{result.ratio:.2f}':>5}  "
            f"{f'{result.fhir_requests_prefetched} / {result.fhir_requests_no_prefetch}':>13}"
        )
    print()
    for result in fetch.fixtures:
        ratio = "n/a" if result.ratio is None else f"{result.ratio:.2f}"
        cards = "identical" if result.cards_identical else "NOT identical (beyond uuids/meta)"
        print(
            f"{result.service_id}: no-prefetch/prefetched ratio {ratio}: target "
            f"{_verdict(result.target_met)}; findings {', '.join(result.findings) or 'none'} "
            f"both ways, cards {cards}"
        )
        print(
            f"  the FHIR server answers the {result.fhir_requests_no_prefetch} requests of one "
            f"no-prefetch call in {result.fhir_server_ms_per_call:.1f} ms one after the other "
            "(replayed from one client, round trips included)"
        )
    latency = fetch.latency
    if latency is not None:
        print(
            f"{latency.service_id}, no prefetch, {latency.delay_ms} ms per FHIR answer: "
            f"p50 {latency.p50_ms:.1f} ms, p99 {latency.p99_ms:.1f} ms, mean "
            f"{latency.mean_ms:.1f} ms, max {latency.max_ms:.1f} ms over {latency.requests} "
            f"sequential HTTP requests: target {_verdict(latency.target_met)}"
        )
        print(
            f"  {latency.fhir_requests_per_call:g} FHIR requests per call; in-process (x"
            f"{latency.in_process_calls}): fetch rounds {_values(latency.rounds)} (target "
            f"<= {TARGET_MAX_ROUNDS}: {_verdict(latency.rounds_target_met)}), keys fetched "
            f"{_values(latency.keys_fetched)}, references fetched "
            f"{_values(latency.references_fetched)}, fetch elapsed "
            f"{_values(latency.fetch_elapsed_ms)} ms, call p50 {latency.in_process_p50_ms:.1f} ms"
        )
    print()
    print(
        f"FHIR fetch: the same service and wrk settings; medians of {settings.rounds} interleaved "
        f"(prefetched, no-prefetch) rounds after a {settings.warmup_duration_s} s warm-up each. "
        "Both bodies name the local FHIR server as fhirServer; the no-prefetch body has no "
        "prefetch member, so the service fetches every key from that server (Medplum 4.5.2 in "
        "memory under Node, cds_service/cli/fhir_sandbox.py, on the same machine: it competes "
        "for the CPUs too). The service may call no other FHIR server (CDS_FHIR_SERVER_ALLOWLIST). "
        f"Delayed latency: {settings.latency_requests} sequential requests after "
        f"{settings.latency_warmup} warm-up ones (p99 is nearest-rank: with few requests it is "
        f"the maximum); fetch statistics from {settings.fetch_stats_calls} in-process calls."
    )


def _values(values: Sequence[float]) -> str:
    """``8`` when all values are equal, else ``7-8``."""
    low, high = min(values), max(values)
    return f"{low:g}" if low == high else f"{low:g}-{high:g}"


def fetch_document(fetch: FetchSection) -> dict[str, Any]:
    """The FHIR fetch section of the JSON results."""
    latency = fetch.latency
    return {
        "skipped": fetch.skipped,
        "fhir_server": fetch.fhir_server,
        "fhir_server_startup_s": fetch.fhir_server_startup_s,
        "targets": {
            "ratio_no_prefetch_over_prefetched": TARGET_FETCH_RATIO,
            "delayed_p50_ms": TARGET_DELAYED_P50_MS,
            "delayed_fixture": LATENCY_FIXTURE[0],
            "max_rounds": TARGET_MAX_ROUNDS,
        },
        "fixtures": [
            asdict(result)
            | {
                "ratio_requests_per_s": result.ratio,
                "targets_met": {"ratio": result.target_met},
            }
            for result in fetch.fixtures
        ],
        "delayed_latency": None
        if latency is None
        else asdict(latency)
        | {
            "max_rounds": latency.max_rounds,
            "targets_met": {
                "p50": latency.target_met,
                "rounds": latency.rounds_target_met,
            },
        },
    }


def _http_cell(side: HttpSide | None) -> str:
    if side is None:
        return "-"
    return f"{side.requests_per_s:.0f} {side.p50_ms:.2f}/{side.p99_ms:.2f}"


def write_results(
    path: Path,
    results: list[FixtureResult],
    settings: BenchSettings,
    wrk: str | None,
    fetch: FetchSection,
) -> None:
    document: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "nproc": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "wrk": wrk_version(wrk) if wrk else None,
        },
        "settings": asdict(settings),
        "targets": {
            "in_process_p50_ms": TARGET_IN_PROCESS_P50_MS,
            "http_ratio_service_over_echo": TARGET_HTTP_RATIO,
            "http_service_p99_ms": TARGET_HTTP_P99_MS,
            "http_service_non_2xx": TARGET_NON_2XX,
        },
        "service_database": DATABASE_USED["url"],
        "fixtures": [
            {
                "fixture": result.fixture,
                "service_id": result.service_id,
                "body_bytes": result.body_bytes,
                "in_process": asdict(result.in_process),
                "http": None
                if result.echo is None or result.service is None
                else {
                    "echo": asdict(result.echo),
                    "service": asdict(result.service),
                    "ratio_requests_per_s": result.ratio,
                },
                "targets_met": {
                    "in_process_p50": result.in_process_target_met,
                    "http_ratio": result.http_target_met,
                    "http_p99": result.p99_target_met,
                    "http_non_2xx": result.non_2xx_target_met,
                },
            }
            for result in results
        ],
        "fhir_fetch": fetch_document(fetch),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)
    print(f"Results written to {path}")


# --------------------------------------------------------------------------------------------


def run(settings: BenchSettings, output: Path) -> None:
    pack = load_pack(default_cards_dir())
    bodies = {fixture: (FIXTURE_DIR / fixture).read_bytes() for fixture, _ in FIXTURES}

    in_process: dict[str, InProcessResult] = {}
    for fixture, service_id in FIXTURES:
        print(f"in-process: {fixture} ({service_id})", flush=True)
        in_process[fixture] = bench_in_process(pack, bodies[fixture], service_id, settings)

    http: dict[str, tuple[HttpSide, HttpSide]] = {}
    wrk: str | None = None
    fetch = FetchSection(skipped="--in-process-only (no servers)")
    if not settings.in_process_only:
        wrk = ensure_wrk()
        print(f"HTTP: {wrk_version(wrk)}", flush=True)
        with contextlib.ExitStack() as stack:  # stops the servers, then the FHIR server
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cds-bench-")))
            fhir, skipped = start_fhir_server(stack, settings)
            if fhir is None:
                print(f"FHIR fetch section skipped: {skipped}", flush=True)
                allowlist = NO_FHIR_SERVER
                http_bodies = bodies
            else:
                print(
                    f"FHIR server: {fhir.base_url} (started in {fhir.startup_seconds or 0:.1f} s)",
                    flush=True,
                )
                allowlist = fhir.base_url
                http_bodies = {
                    name: pointed_at(body, fhir.base_url) for name, body in bodies.items()
                }
            echo, service = stack.enter_context(running_servers(workdir, settings, allowlist))
            for fixture, service_id in FIXTURES:
                print(f"  {fixture} ({service_id})", flush=True)
                http[fixture] = bench_http(
                    wrk, echo, service, fixture, service_id, http_bodies[fixture], workdir, settings
                )
            fetch = (
                FetchSection(skipped=skipped)
                if fhir is None
                else bench_fetch(wrk, pack, service, fhir, bodies, workdir, settings)
            )

    results = [
        FixtureResult(
            fixture=fixture,
            service_id=service_id,
            body_bytes=len(bodies[fixture]),
            in_process=in_process[fixture],
            echo=http[fixture][0] if fixture in http else None,
            service=http[fixture][1] if fixture in http else None,
        )
        for fixture, service_id in FIXTURES
    ]
    print_report(results, settings, fetch)
    write_results(output, results, settings, wrk, fetch)


def main(argv: Sequence[str] | None = None) -> int:
    settings, output = parse_args(argv)
    try:
        run(settings, output)
    except BenchError as exc:
        print(f"bench: the run failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
