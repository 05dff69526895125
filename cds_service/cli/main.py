"""The ``cds-service`` command: serve, demo, evaluate, check-cards, report, db, describe-rules."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from cds_service.config import Settings
from cds_service.engine.rule_pack import load_pack
from cds_service.errors import ConfigError
from cds_service.rulepack.loading import default_cards_dir, export_json_schemas
from cds_service.rulepack.problems import RulePackError
from cds_service.rules.findings import PACK_CONTRACT
from cds_service.web.app_state import service_state

T = TypeVar("T")
EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_BAD_INPUT = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.run(args)
    except ConfigError as exc:
        print(f"cds-service: configuration error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cds-service", description="CDS Hooks 2.0 service for CPT +20703."
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve the HTTP API with gunicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=2)
    serve.add_argument("--timeout", type=int, default=30, help="worker timeout in seconds")
    serve.add_argument("--threads", type=int, default=16, help="threads per worker")
    serve.add_argument(
        "--backlog", type=int, default=256, help="connections allowed to wait for accept"
    )
    serve.add_argument(
        "--max-requests",
        type=int,
        default=20_000,
        help="replace a worker after about this many requests (0: never); bounds the memory "
        "the clinical-text vocabulary gains from words it has not seen",
    )
    serve.add_argument(
        "--head-timeout",
        type=float,
        default=10.0,
        help="seconds a client has to send a request's head (408 and closed after)",
    )
    serve.add_argument(
        "--body-timeout",
        type=float,
        default=30.0,
        help="seconds a client has to send a request's body once its head is in",
    )
    serve.add_argument(
        "--max-reading-per-source",
        type=int,
        default=64,
        help="requests one client address may be sending at once, per worker (0: any; "
        "behind a proxy every request comes from its address)",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=1000,
        help="open connections per worker; past it the worker stops accepting until one closes",
    )
    serve.add_argument(
        "--drain-seconds",
        type=float,
        default=5.0,
        help="on SIGTERM, seconds of serving on with /readyz answering 503 before connections "
        "are refused, so load balancers take the instance out first (0: stop at once)",
    )
    serve.add_argument("--certfile", type=Path, help="TLS certificate (PEM): serve HTTPS")
    serve.add_argument("--keyfile", type=Path, help="TLS private key (PEM) for --certfile")
    serve.set_defaults(run=_serve)

    demo = commands.add_parser(
        "demo", help="the local FHIR sandbox with the fixtures' patients, and the service"
    )
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument("--workers", type=int, default=1)
    demo.add_argument(
        "--fhir-port", type=int, default=8081, help="FHIR server port (the fixtures name 8081)"
    )
    demo.add_argument(
        "--sandbox-dir", type=Path, help="the fhir_sandbox directory (default: the checkout's)"
    )
    demo.set_defaults(run=_demo)

    evaluate = commands.add_parser(
        "evaluate", help="print the response the endpoint gives for a request file"
    )
    evaluate.add_argument("request", type=Path, help="a CDS Hooks request body (JSON)")
    evaluate.add_argument("--service", help="service id (default: the service for the hook)")
    evaluate.set_defaults(run=_evaluate)

    check = commands.add_parser("check-cards", help="validate the rule pack")
    check.add_argument(
        "--cards-dir", type=Path, help="rule pack directory (default: CDS_CARDS_DIR)"
    )
    check.add_argument(
        "--write-schemas", action="store_true", help="rewrite <cards-dir>/schema/*.schema.json"
    )
    check.set_defaults(run=_check_cards)

    report = commands.add_parser(
        "report", help="per finding code: cards issued, feedback, acceptance, latency"
    )
    report.add_argument(
        "--since", type=_date_argument, help="only hook calls and feedback from DATE (YYYY-MM-DD)"
    )
    report.add_argument("--client", help="only this client (its verified issuer, the JWT's iss)")
    report.add_argument("--tenant", help="only this tenant (with --client)")
    report.add_argument("--json", action="store_true", help="print JSON instead of a table")
    report.set_defaults(run=_report)

    database = commands.add_parser("db", help="database schema migrations")
    database_commands = database.add_subparsers(required=True, metavar="ACTION")
    upgrade = database_commands.add_parser("upgrade", help="apply pending migrations")
    upgrade.set_defaults(run=_db_upgrade)
    current = database_commands.add_parser("current", help="print the schema revision")
    current.set_defaults(run=_db_current)

    describe = commands.add_parser("describe-rules", help="print the rule pack as a document")
    describe.add_argument("--markdown", action="store_true", help="markdown (the only format)")
    describe.add_argument("--cards-dir", type=Path, help="rule pack directory")
    describe.set_defaults(run=_describe_rules)
    return parser


def _date_argument(value: str) -> datetime:
    try:
        return datetime.combine(date.fromisoformat(value), time.min, tzinfo=UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {value!r}") from None


class _DatabaseUnavailable(Exception):
    """The configured database could not be used; the message is already printed."""


def _with_database(action: Callable[[Engine], T], failure: str) -> T:
    """Run ``action`` on an engine for CDS_DATABASE_URL; say ``failure`` and raise if it fails."""
    from cds_service.store.database import create_database_engine

    engine = create_database_engine(Settings.load().database_url)
    try:
        return action(engine)
    except SQLAlchemyError as exc:
        print(f"cds-service: {failure}: {type(exc).__name__}", file=sys.stderr)
        raise _DatabaseUnavailable from None
    finally:
        engine.dispose()


def _report(args: argparse.Namespace) -> int:
    """One report per client (issuer and tenant): clients are never mixed in one figure."""
    from cds_service.store.database import Store
    from cds_service.store.report import build_report, by_client, client_label, render_text

    if args.tenant is not None and args.client is None:
        return _bad_input("--tenant goes with --client")

    def rows(engine: Engine) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        store = Store(engine)
        return store.hook_call_rows(args.since), store.feedback_for_report(args.since)

    try:
        calls, feedback = _with_database(rows, "cannot read the database")
    except _DatabaseUnavailable:
        return EXIT_PROBLEM
    groups = by_client(calls, feedback) or {(None, None): ([], [])}
    if args.client is not None:
        wanted = [key for key in groups if key[0] == args.client]
        if args.tenant is not None:
            wanted = [key for key in wanted if key[1] == args.tenant]
        groups = {key: groups[key] for key in wanted} or {(args.client, args.tenant): ([], [])}
    since = args.since.date().isoformat() if args.since else None
    reports = {key: build_report(*group) for key, group in groups.items()}
    if args.json:
        document = {
            "since": since,
            "clients": [
                {"client": key[0], "tenant": key[1], "findings": [row.as_dict() for row in rows]}
                for key, rows in reports.items()
            ],
        }
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        sections = [
            f"client: {client_label(key)}\n{render_text(rows, since)}"
            for key, rows in reports.items()
        ]
        sys.stdout.write("\n".join(sections))
    return EXIT_OK


def _db_upgrade(_args: argparse.Namespace) -> int:
    from cds_service.store.migrations import upgrade_database

    try:
        revision = _with_database(upgrade_database, "cannot upgrade the database")
    except _DatabaseUnavailable:
        return EXIT_PROBLEM
    print(f"database schema at revision {revision} (current)")
    return EXIT_OK


def _db_current(_args: argparse.Namespace) -> int:
    from cds_service.store.migrations import current_revision, head_revision

    try:
        revision = _with_database(current_revision, "cannot read the database")
    except _DatabaseUnavailable:
        return EXIT_PROBLEM
    state = "current" if revision == head_revision() else f"needs upgrade to {head_revision()}"
    print(f"database schema at revision {revision or '(none)'} ({state})")
    return EXIT_OK if revision == head_revision() else EXIT_PROBLEM


def _describe_rules(args: argparse.Namespace) -> int:
    from cds_service.rulepack.describe import describe_rules_markdown

    directory = args.cards_dir or Settings.load().cards_dir
    try:
        pack = load_pack(directory)
    except RulePackError as exc:
        print(f"cds-service: the rule pack is invalid:\n{exc}", file=sys.stderr)
        return EXIT_PROBLEM
    sys.stdout.write(describe_rules_markdown(pack))
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    from cds_service.cli.serve import serve
    from cds_service.cli.worker import IntakeLimits

    settings = Settings.load()  # fail fast, before any worker starts
    try:
        load_pack(settings.cards_dir)
    except RulePackError as exc:
        return _bad_input(f"the rule pack in CDS_CARDS_DIR is invalid:\n{exc}")
    if (
        min(args.head_timeout, args.body_timeout) <= 0
        or min(args.max_reading_per_source, args.max_connections - 1, args.drain_seconds) < 0
    ):
        return _bad_input(
            "--head-timeout and --body-timeout must be positive, --max-reading-per-source "
            "and --drain-seconds 0 or more and --max-connections 1 or more"
        )
    if (args.certfile is None) != (args.keyfile is None):
        return _bad_input("--certfile and --keyfile go together")
    for path in (args.certfile, args.keyfile):
        if path is not None and not path.is_file():
            return _bad_input(f"cannot read {path}")
    serve(
        settings,
        host=args.host,
        port=args.port,
        workers=args.workers,
        timeout=args.timeout,
        tls=(args.certfile, args.keyfile) if args.certfile else None,
        threads=args.threads,
        backlog=args.backlog,
        max_requests=args.max_requests,
        intake=IntakeLimits(
            head_timeout=args.head_timeout,
            body_timeout=args.body_timeout,
            max_per_source=args.max_reading_per_source,
        ),
        max_connections=args.max_connections,
        drain_seconds=args.drain_seconds,
    )
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from cds_service.cli.demo import DemoError, run_demo

    try:
        return run_demo(
            host=args.host,
            port=args.port,
            workers=args.workers,
            fhir_port=args.fhir_port,
            sandbox_dir=args.sandbox_dir,
        )
    except DemoError as exc:
        return _bad_input(f"demo: {exc}")


def _evaluate(args: argparse.Namespace) -> int:
    try:
        body: Any = json.loads(args.request.read_text(encoding="utf-8"))
    except OSError as exc:
        return _bad_input(f"cannot read {args.request}: {exc.strerror}")
    except (UnicodeDecodeError, ValueError) as exc:
        return _bad_input(f"{args.request} is not valid JSON: {exc}")
    from cds_service import create_app

    # A private in-memory database: evaluating a file must not write next to it.
    app = create_app({"DATABASE_URL": "sqlite://", "LOG_LEVEL": "WARNING"})
    service_id = args.service or _service_for(app, body)
    if service_id is None:
        return _bad_input(f"{args.request}: cannot tell the service from its 'hook'; use --service")
    response = app.test_client().post(
        f"/cds-services/{service_id}", data=json.dumps(body), content_type="application/json"
    )
    sys.stdout.write(response.get_data(as_text=True) + "\n")
    if response.status_code != 200:
        outcome = response.get_json(silent=True) or {}
        issues = outcome.get("issue") or [{}]
        message = issues[0].get("diagnostics", f"HTTP {response.status_code}")
        return _bad_input(f"{args.request}: HTTP {response.status_code}: {message}")
    return EXIT_OK


def _service_for(app: Any, body: Any) -> str | None:
    hook = body.get("hook") if isinstance(body, dict) else None
    matches = [svc.id for svc in service_state(app).pack.services if svc.hook == hook]
    return matches[0] if len(matches) == 1 else None


def _bad_input(message: str) -> int:
    print(f"cds-service: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _check_cards(args: argparse.Namespace) -> int:
    directory = args.cards_dir or Settings.load().cards_dir or default_cards_dir()
    try:
        pack = load_pack(directory)
    except RulePackError as exc:
        for problem in exc.problems:
            print(f"{directory / problem.file}:{problem.line}: {problem.message}", file=sys.stderr)
        print(f"cds-service: {len(exc.problems)} problem(s) in the rule pack", file=sys.stderr)
        return EXIT_PROBLEM
    if args.write_schemas:
        schema_dir = directory / "schema"
        schema_dir.mkdir(exist_ok=True)
        for name, text in export_json_schemas(PACK_CONTRACT).items():
            (schema_dir / name).write_text(text, encoding="utf-8")
    print(
        f"rule pack OK: {directory} ({len(pack.services)} services, "
        f"{len(pack.findings.findings)} findings, {len(pack.coding.documentation)} documentation "
        f"elements, {len(pack.sources)} sources)"
    )
    return EXIT_OK
