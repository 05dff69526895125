"""``cds-service demo``: the local FHIR sandbox seeded with the fixtures, and the service beside it.

A first look at the service needs an EHR: something that holds patients and answers the prefetch
queries. ``fhir_sandbox/`` (Medplum's in-memory FHIR R4 server under Node, the one the tests use)
plays that part, seeded with every fixture's resources and a Patient per fixture. The sandbox lives
in the checkout, not in the wheel: the demo is for people who cloned the repository.

The FHIR server is started by ``FhirSandbox`` (``cds_service/cli/fhir_sandbox.py``): a child
process in its own session (a terminal's Ctrl-C reaches only the demo, which stops the service
first and the FHIR server second) that also exits when its stdin closes, so even a demo killed
with SIGKILL leaves no Node process behind.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from types import FrameType
from typing import IO
from urllib.parse import urlencode

from cds_service.cli import fhir_sandbox
from cds_service.cli.fhir_sandbox import (
    FHIR_HOST,
    MIN_NODE_MAJOR,
    FhirSandbox,
    FhirSandboxError,
    NodeUnavailable,
    packages_installed,
)
from cds_service.cli.signing_day import SEED_NAME, SOURCE_FIXTURE, signing_day_request
from cds_service.config import Settings
from cds_service.paths import data_dir

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_FHIR_PORT = 8081  # the port the fixtures' fhirServer names
DEFAULT_WORKERS = 1
SANDBOX_URL = "https://sandbox.cds-hooks.org/"
SANDBOX_HOOK = "order-sign"  # the sandbox runs patient-view, order-select and order-sign only
# The sandbox link opens order-sign for the signing-day patient (cli/signing_day.py).
SANDBOX_FIXTURE = SEED_NAME
CURL_FIXTURE = "encounter-discharge--tibia-nonunion-removal.json"
GUIDE_END = "Press Ctrl-C to stop the service and the FHIR server."
STDERR_TAIL = 40  # lines of the FHIR server's stderr in a start-up error


class DemoError(Exception):
    """A prerequisite of the demo is missing; the message says what to do (exit status 2)."""


@dataclass(frozen=True)
class DemoPatient:
    """One patient on the demo FHIR server, with the fixture that describes its scenario."""

    patient_id: str
    encounter_id: str | None
    hook: str
    scenario: str
    fixture: str


# -- prerequisites -----------------------------------------------------------------------------


def find_node() -> str:
    """The ``node`` executable (>= 20), or DemoError saying how to get it."""
    try:
        return fhir_sandbox.find_node("the demo FHIR server")
    except NodeUnavailable as exc:
        hint = " Install Node.js, then run `make demo`." if exc.node is None else ""
        raise DemoError(f"{exc}{hint}") from None


def find_sandbox(directory: Path | None = None) -> Path:
    """The ``fhir_sandbox`` directory, with its npm packages installed, or DemoError."""
    sandbox = (directory if directory is not None else data_dir("fhir_sandbox")).absolute()
    if not (sandbox / "server.mjs").is_file():
        raise DemoError(
            f"no FHIR sandbox at {sandbox} (server.mjs is missing). The demo runs from a checkout "
            "of the repository: run `make demo` there, or pass --sandbox-dir DIR."
        )
    if not packages_installed(sandbox):  # the demo installs nothing: `make demo` runs npm ci
        raise DemoError(
            f"the FHIR sandbox's npm packages are not installed in {sandbox / 'node_modules'}: "
            f"run `make demo` (it needs Node.js >= {MIN_NODE_MAJOR} and npm), or `npm ci` in "
            f"{sandbox}."
        )
    return sandbox


def fixture_files(directory: Path) -> list[Path]:
    """Every request fixture (``<hook>--<scenario>.json``) in ``directory``, or DemoError."""
    files = sorted(directory.glob("*--*.json"))
    if not files:
        raise DemoError(f"no fixtures (*--*.json) in {directory}")
    return files


def demo_patients(files: Sequence[Path]) -> list[DemoPatient]:
    """The fixtures' patients, one per patient id (the first fixture naming it wins)."""
    patients: dict[str, DemoPatient] = {}
    for path in files:
        body = json.loads(path.read_text(encoding="utf-8"))
        context = body.get("context") if isinstance(body, dict) else None
        patient_id = context.get("patientId") if isinstance(context, dict) else None
        if not isinstance(patient_id, str) or not patient_id or patient_id in patients:
            continue
        encounter_id = context.get("encounterId") if isinstance(context, dict) else None
        patients[patient_id] = DemoPatient(
            patient_id=patient_id,
            encounter_id=encounter_id if isinstance(encounter_id, str) else None,
            hook=str(body.get("hook", "?")),
            scenario=path.stem.partition("--")[2],
            fixture=path.name,
        )
    return sorted(patients.values(), key=lambda patient: (patient.hook, patient.scenario))


def write_signing_day_seed(fixtures: Path, directory: Path, today: date) -> Path:
    """The signing-day patient's request, dated ``today``, written as a seed file."""
    source = json.loads((fixtures / SOURCE_FIXTURE).read_text(encoding="utf-8"))
    path = directory / SEED_NAME
    path.write_text(json.dumps(signing_day_request(source, today)), encoding="utf-8")
    return path


# -- the guide ---------------------------------------------------------------------------------


def public_host(host: str) -> str:
    """The address to print for a listen address (a wildcard is reached on loopback)."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def sandbox_link(service_url: str, fhir_base: str, patient_id: str) -> str:
    """The CDS Hooks sandbox opened on this service, this FHIR server and one patient."""
    query = urlencode(
        {
            "serviceDiscoveryURL": f"{service_url}/cds-services",
            "fhirServiceUrl": fhir_base,
            "patientId": patient_id,
            "hook": SANDBOX_HOOK,
        }
    )
    return f"{SANDBOX_URL}?{query}"


def curl_example(service_url: str, fhir_base: str, fixture: Path) -> str:
    """The fixture posted without its prefetch: the service fetches the data from ``fhir_base``."""
    body = json.loads(fixture.read_text(encoding="utf-8"))
    body.pop("prefetch", None)
    body["hookInstance"] = str(uuid.uuid4())
    body["fhirServer"] = fhir_base
    service_id = f"cpt20703-{body.get('hook')}"
    return (
        "curl -s -X POST -H 'Content-Type: application/json' \\\n"
        f"       --data {shlex.quote(json.dumps(body, separators=(',', ':')))} \\\n"
        f"       {service_url}/cds-services/{service_id}"
    )


def guide(
    service_url: str, fhir_base: str, patients: Sequence[DemoPatient], fixtures_dir: Path
) -> str:
    """What the demo prints once both servers listen: URLs, the sandbox link, curl, patients."""
    by_fixture = {patient.fixture: patient for patient in patients}
    sandbox_patient = by_fixture.get(SANDBOX_FIXTURE) or next(
        (patient for patient in patients if patient.hook == SANDBOX_HOOK), patients[0]
    )
    curl_patient = by_fixture.get(CURL_FIXTURE) or next(
        (patient for patient in patients if patient.hook == "encounter-discharge"), patients[0]
    )
    expected = _expected_findings(fixtures_dir, curl_patient.fixture)
    width = max(len(patient.patient_id) for patient in patients)
    rows = [
        f"  {patient.patient_id:<{width}}  {patient.encounter_id or '-':<16}  "
        f"{patient.hook:<19}  {patient.scenario}"
        for patient in patients
    ]
    lines = [
        "",
        "cds-20703 demo: the CDS service and a local FHIR server holding the fixtures' patients",
        "",
        f"  CDS discovery    {service_url}/cds-services",
        f"  Card playground  {service_url}/",
        f"  FHIR server      {fhir_base}   (in memory, read-only, fictional data)",
        "",
        "CDS Hooks sandbox on this service, this FHIR server and a patient operated on today (a",
        "nonunion repair with the removal of an antibiotic cement rod): its Rx Sign screen sends",
        "a draft MedicationRequest without an encounter, and the service reads today's session,",
        "so the +20703 cards show. Chromium asks to let the page reach this computer: allow it.",
        "",
        f"  {sandbox_link(service_url, fhir_base, sandbox_patient.patient_id)}",
        "",
        "A fixture posted without its prefetch: the service fetches the data from the FHIR",
        f"server (fhir_fixtures/{curl_patient.fixture}; expected cards: {expected}):",
        "",
        f"  {curl_example(service_url, fhir_base, fixtures_dir / curl_patient.fixture)}",
        "",
        f"Patients on the FHIR server ({len(patients)}; the scenario is fhir_fixtures/<hook>--"
        "<scenario>.json,",
        "its expected findings are in fhir_fixtures/expected.json):",
        "",
        f"  {'patientId':<{width}}  {'encounterId':<16}  {'hook':<19}  scenario",
        *rows,
        "",
        GUIDE_END,
        "",
    ]
    return "\n".join(lines)


def _expected_findings(fixtures_dir: Path, fixture: str) -> str:
    """The finding codes ``expected.json`` lists for ``fixture``, as text."""
    try:
        expected = json.loads((fixtures_dir / "expected.json").read_text(encoding="utf-8"))
        findings = expected[fixture]["findings"]
    except (OSError, ValueError, KeyError, TypeError):
        return "see fhir_fixtures/expected.json"
    return ", ".join(str(code) for code in findings) or "none"


# -- running -----------------------------------------------------------------------------------


def demo_environment(
    environ: Mapping[str, str], service_url: str, fhir_base: str
) -> dict[str, str]:
    """``environ`` with the demo's settings: development, the playground, the FHIR server allowed.

    The allowlist keeps what the operator set and adds the demo FHIR server (under both loopback
    names, as the sandbox-shaped fixture uses ``localhost``), so the service calls no other server
    unless told to.
    """
    environment = dict(environ)
    environment["CDS_PROFILE"] = "development"
    environment["CDS_PLAYGROUND"] = "on"
    environment.setdefault("CDS_PUBLIC_BASE_URL", service_url)
    allowed = [
        entry.strip()
        for entry in environment.get("CDS_FHIR_SERVER_ALLOWLIST", "").split(",")
        if entry.strip()
    ]
    for base in (fhir_base, fhir_base.replace(f"//{FHIR_HOST}:", "//localhost:", 1)):
        if base not in allowed:
            allowed.append(base)
    environment["CDS_FHIR_SERVER_ALLOWLIST"] = ",".join(allowed)
    return environment


def _write(stream: IO[str], text: str) -> None:
    stream.write(text)
    stream.flush()


def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _start(fhir: FhirSandbox) -> None:
    """Start the FHIR server, or DemoError saying why it did not listen."""
    try:
        fhir.start()
    except FhirSandboxError as exc:
        raise DemoError(str(exc)) from None


def run_demo(
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    workers: int = DEFAULT_WORKERS,
    fhir_port: int = DEFAULT_FHIR_PORT,
    sandbox_dir: Path | None = None,
    fixtures_dir: Path | None = None,
) -> int:
    """Start the FHIR server, then serve the service until Ctrl-C or SIGTERM; stop both.

    Raises DemoError (before anything starts) when Node.js, the sandbox or its packages are
    missing, and ConfigError for a bad ``CDS_*`` value.
    """
    sandbox = find_sandbox(sandbox_dir)
    node = find_node()
    fixtures = fixtures_dir or data_dir("fhir_fixtures")
    fixture_seeds = fixture_files(fixtures)
    if not demo_patients(fixture_seeds):
        raise DemoError("no fixture names a context.patientId")
    service_url = f"http://{public_host(host)}:{port}"
    # Validate the settings with a placeholder FHIR URL before starting anything.
    Settings.load(demo_environment(os.environ, service_url, f"http://{FHIR_HOST}:1/fhir"))
    seed_dir = Path(tempfile.mkdtemp(prefix="cds-demo-"))  # removed when the demo stops
    seeds = [*fixture_seeds, write_signing_day_seed(fixtures, seed_dir, date.today())]
    patients = demo_patients(seeds)

    from cds_service.cli.serve import serve  # gunicorn; prometheus-client stays unimported

    owner = os.getpid()  # gunicorn workers are forks: only this process stops the FHIR server
    fhir = FhirSandbox(
        seeds,
        port=fhir_port,
        directory=sandbox,
        node=node,
        patients=True,
        port_option="--fhir-port",
        on_stderr=lambda line: _write(sys.stderr, line + "\n"),
        stderr_tail=STDERR_TAIL,
    )
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)  # gunicorn replaces it
    try:
        _start(fhir)
        environment = demo_environment(os.environ, service_url, fhir.base_url)
        os.environ.update(environment)
        settings = Settings.load()

        def ready() -> None:
            _write(sys.stdout, guide(service_url, fhir.base_url, patients, fixtures))

        serve(settings, host=host, port=port, workers=workers, timeout=30, on_ready=ready)
    except KeyboardInterrupt:
        pass  # interrupted while starting: fall through to the clean-up
    finally:
        if os.getpid() == owner:
            # Stopping: gunicorn's handlers would reap the FHIR server as a worker; a second
            # Ctrl-C must not cut the clean-up short.
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            fhir.stop()
            shutil.rmtree(seed_dir, ignore_errors=True)
            _write(sys.stdout, "cds-service demo: the service and the FHIR server have stopped\n")
            signal.signal(signal.SIGINT, signal.default_int_handler)
            if previous_term is not None:
                signal.signal(signal.SIGTERM, previous_term)
    return 0
