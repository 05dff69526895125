"""cds-service demo: the FHIR sandbox and the service as real processes, over real HTTP.

The demo runs as a subprocess on free ports; the tests read its guide, call what it names, then
stop it with SIGINT or SIGTERM (or SIGKILL) and check that no process it started is left.
"""

from __future__ import annotations

import contextlib
import copy
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from helpers.corpus import EXPECTED, FIXTURE_NAMES, load_fixture
from helpers.medplum import NodeUnavailable, require_node_and_packages, skip_or_fail_without_node

from cds_service.cli.demo import GUIDE_END, SANDBOX_FIXTURE, demo_environment
from cds_service.cli.fhir_sandbox import MEDPLUM_PACKAGES
from cds_service.cli.main import main
from cds_service.cli.signing_day import ID_SUFFIX, SEED_NAME, SOURCE_FIXTURE, signing_day_request
from cds_service.paths import CHECKOUT

STARTUP_TIMEOUT_S = 120.0
EXIT_TIMEOUT_S = 30.0
TIMEOUT_S = 30
FIXTURE_PATIENTS = {
    name: (body["context"]["patientId"], body["context"].get("encounterId"), body["hook"])
    for name in FIXTURE_NAMES
    for body in [load_fixture(name)]
}
WITHOUT_PREFETCH = [
    "encounter-discharge--tibia-nonunion-removal.json",
    "order-sign--planned-removal-reminder.json",
]

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").is_file(), reason="reads child processes from /proc (Linux)"
)


@dataclass
class Demo:
    """A running ``cds-service demo`` and what it printed."""

    process: subprocess.Popen[str]
    port: int
    fhir_port: int
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    @property
    def service_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def fhir_url(self) -> str:
        return f"http://127.0.0.1:{self.fhir_port}/fhir"

    @property
    def guide(self) -> str:
        return "\n".join(self.stdout)

    def output(self) -> str:
        return "stdout:\n" + self.guide + "\nstderr:\n" + "\n".join(self.stderr[-40:])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def children(pid: int) -> dict[int, str]:
    """The live child processes of ``pid``: pid -> command line."""
    found: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            state, ppid = text.rsplit(")", 1)[1].split()[:2]
            if int(ppid) == pid and state != "Z":
                command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")
                found[int(stat.parent.name)] = command.decode(errors="replace").strip()
        except (OSError, ValueError, IndexError):
            continue  # exited while being read
    return found


def alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text.rsplit(")", 1)[1].split()[0] != "Z"


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_until(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return bool(condition())


@contextmanager
def running_demo(tmp_path: Path) -> Iterator[Demo]:
    """``cds-service demo`` on free ports until the block ends; killed if still running."""
    try:
        require_node_and_packages()
    except NodeUnavailable as exc:
        skip_or_fail_without_node(exc)
    demo = start_demo(tmp_path)
    lines: queue.Queue[str | None] = queue.Queue()
    threads = read_output(demo, lines)
    started: set[int] = set()
    try:
        wait_for_guide(demo, lines)
        started = set(children(demo.process.pid))
        yield demo
    finally:
        kill_demo(demo.process, started, threads)


def start_demo(tmp_path: Path) -> Demo:
    """``cds-service demo`` started on two free ports, as a terminal's foreground job would be."""
    port = free_port()
    fhir_port = free_port()
    while fhir_port == port:
        fhir_port = free_port()
    environment = os.environ | {
        "CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}",
        "CDS_LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "cds_service.cli", "demo"]
    command += ["--port", str(port), "--fhir-port", str(fhir_port)]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,  # not the checkout: the demo finds the sandbox from its own package
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    return Demo(process, port, fhir_port)


def read_output(demo: Demo, lines: queue.Queue[str | None]) -> list[threading.Thread]:
    """Collect the demo's stdout and stderr on threads; stdout lines also go to ``lines``, then
    None when stdout closes."""
    process = demo.process

    def pump_stdout() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            demo.stdout.append(line.rstrip("\n"))
            lines.put(line.rstrip("\n"))
        lines.put(None)

    def pump_stderr() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            demo.stderr.append(line.rstrip("\n"))

    threads = [threading.Thread(target=pump, daemon=True) for pump in (pump_stdout, pump_stderr)]
    for thread in threads:
        thread.start()
    return threads


def wait_for_guide(demo: Demo, lines: queue.Queue[str | None]) -> None:
    """Wait for the guide's last line; fail when the demo exits first or takes too long."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no guide within {STARTUP_TIMEOUT_S} s\n{demo.output()}"
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        assert line is not None, f"the demo exited ({demo.process.wait()})\n{demo.output()}"
        if line == GUIDE_END:
            return


def kill_demo(
    process: subprocess.Popen[str], started: set[int], threads: list[threading.Thread]
) -> None:
    """Kill the demo if still running, and what it started, then close its output pipes."""
    if process.poll() is None:
        process.kill()
        process.wait(timeout=EXIT_TIMEOUT_S)
    for pid in started:  # a failed test must not leave the demo's children running
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    # Nor its grandchildren: a gunicorn worker whose master was killed keeps the demo's
    # output pipes open, and the readers below would then wait for ever.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    for thread in threads:
        thread.join(timeout=10)
    for stream, thread in zip((process.stdout, process.stderr), threads, strict=True):
        if stream is not None and not thread.is_alive():  # closing under a reader blocks
            stream.close()


def guide_rows(guide: str) -> dict[str, tuple[str, str]]:
    """patientId -> (encounterId, hook) from the guide's patient table."""
    rows = re.findall(r"^  (\S+)\s+(\S+)\s+(encounter-discharge|order-sign)\s+\S+$", guide, re.M)
    return {patient: (encounter, hook) for patient, encounter, hook in rows}


def without_prefetch(name: str, fhir_url: str) -> dict[str, Any]:
    body = copy.deepcopy(load_fixture(name))
    del body["prefetch"]
    body["fhirServer"] = fhir_url
    return body


def findings(response: requests.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [card["extension"]["cpt20703.finding"] for card in response.json()["cards"]]


def stop(demo: Demo, signum: signal.Signals, *, group: bool = False) -> None:
    """Send ``signum`` (to the process group: a terminal's Ctrl-C); everything must be gone."""
    started = children(demo.process.pid)
    node = [pid for pid, command in started.items() if "server.mjs" in command]
    assert len(node) == 1, started
    if group:
        os.killpg(demo.process.pid, signum)
    else:
        demo.process.send_signal(signum)
    assert demo.process.wait(timeout=EXIT_TIMEOUT_S) == 0, demo.output()
    assert wait_until(lambda: not any(alive(pid) for pid in started), 10), started
    assert not port_open(demo.fhir_port)
    assert not port_open(demo.port)
    assert wait_until(lambda: "have stopped" in demo.guide, 5), demo.output()


def test_demo_guides_serves_and_stops_on_sigint(tmp_path: Path) -> None:
    """The guide names the URLs and patients; hooks without prefetch are answered; Ctrl-C ends."""
    with running_demo(tmp_path) as demo:
        guide = demo.guide
        assert f"{demo.service_url}/cds-services" in guide
        assert f"{demo.service_url}/" in guide  # the playground
        assert demo.fhir_url in guide

        # Every fixture's patient is listed with its encounter and hook, and the patient
        # operated on today.
        rows = guide_rows(guide)
        for patient, encounter, hook in FIXTURE_PATIENTS.values():
            assert rows.get(patient) == (encounter or "-", hook), patient
        operated_today = FIXTURE_PATIENTS[SOURCE_FIXTURE][0] + ID_SUFFIX
        assert rows.get(operated_today) == ("-", "order-sign")

        # The CDS Hooks sandbox link points at this service, this FHIR server and a patient.
        link = next(line.strip() for line in guide.splitlines() if "sandbox.cds-hooks.org" in line)
        parts = urlsplit(link)
        assert (parts.scheme, parts.netloc, parts.path) == ("https", "sandbox.cds-hooks.org", "/")
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        assert query == {
            "serviceDiscoveryURL": f"{demo.service_url}/cds-services",
            "fhirServiceUrl": demo.fhir_url,
            "patientId": operated_today,
            "hook": "order-sign",
        }
        assert SANDBOX_FIXTURE == SEED_NAME

        # What the sandbox's Rx Sign screen sends for that patient: a draft MedicationRequest,
        # no encounter, no prefetch. The service reads today's session from the FHIR server.
        sandbox_call = signing_day_request(load_fixture(SOURCE_FIXTURE), date.today())
        del sandbox_call["prefetch"]
        sandbox_call["fhirServer"] = demo.fhir_url
        answer = requests.post(
            f"{demo.service_url}/cds-services/cpt20703-order-sign",
            json=sandbox_call,
            timeout=TIMEOUT_S,
        )
        assert findings(answer) == ["add-on-suggested", "documentation-missing"]

        # The sandbox reads that patient from the FHIR server, from another origin.
        patient = requests.get(f"{demo.fhir_url}/Patient/{query['patientId']}", timeout=TIMEOUT_S)
        assert patient.status_code == 200
        assert patient.json()["resourceType"] == "Patient"
        assert patient.headers["Access-Control-Allow-Origin"] == "*"

        # The printed curl command works as printed (its body has no prefetch).
        start = guide.index("curl ")
        command = shlex.split(guide[start : guide.index("\n\n", start)].replace("\\\n", " "))
        body = command[command.index("--data") + 1]
        assert '"prefetch"' not in body
        fixture = next(name for name in WITHOUT_PREFETCH if name in guide)
        answer = requests.post(
            command[-1], data=body, headers={"Content-Type": "application/json"}, timeout=TIMEOUT_S
        )
        assert findings(answer) == EXPECTED[fixture]["findings"]

        # Fixtures without their prefetch get the cards expected.json lists for them.
        for name in WITHOUT_PREFETCH:
            answer = requests.post(
                f"{demo.service_url}/cds-services/{EXPECTED[name]['service']}",
                json=without_prefetch(name, demo.fhir_url),
                timeout=TIMEOUT_S,
            )
            assert findings(answer) == EXPECTED[name]["findings"], name
            assert EXPECTED[name]["findings"], name

        discovery = requests.get(f"{demo.service_url}/cds-services", timeout=TIMEOUT_S)
        assert discovery.status_code == 200
        assert {service["id"] for service in discovery.json()["services"]} == {
            "cpt20703-encounter-discharge",
            "cpt20703-order-sign",
        }
        playground = requests.get(f"{demo.service_url}/playground/fixtures", timeout=TIMEOUT_S)
        assert playground.status_code == 200  # CDS_PLAYGROUND is on

        stop(demo, signal.SIGINT, group=True)


def test_demo_stops_on_sigterm(tmp_path: Path) -> None:
    """SIGTERM stops the service, then the FHIR server; both ports close."""
    with running_demo(tmp_path) as demo:
        assert requests.get(f"{demo.fhir_url}/metadata", timeout=TIMEOUT_S).status_code == 200
        stop(demo, signal.SIGTERM)


def test_a_killed_demo_leaves_no_fhir_server(tmp_path: Path) -> None:
    """Even SIGKILL, which runs no clean-up, ends the FHIR server (its stdin closes)."""
    with running_demo(tmp_path) as demo:
        started = children(demo.process.pid)
        node = [pid for pid, command in started.items() if "server.mjs" in command]
        assert len(node) == 1, started
        demo.process.kill()
        demo.process.wait(timeout=EXIT_TIMEOUT_S)
        assert wait_until(lambda: not alive(node[0]), 15)
        assert wait_until(lambda: not port_open(demo.fhir_port), 5)


def fake_sandbox(directory: Path, *, packages: bool) -> Path:
    """A directory shaped like ``fhir_sandbox`` (no real server), with or without packages."""
    directory.mkdir()
    (directory / "server.mjs").write_text("// not a server\n")
    if packages:
        for name in MEDPLUM_PACKAGES:
            package = directory / "node_modules" / "@medplum" / name
            package.mkdir(parents=True)
            (package / "package.json").write_text("{}")
    return directory


def test_missing_sandbox_dir_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No sandbox directory: exit 2, naming the directory and `make demo`; nothing starts."""
    missing = tmp_path / "no-sandbox"
    assert main(["demo", "--sandbox-dir", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err
    assert "make demo" in err


def test_sandbox_without_packages_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A sandbox without node_modules: exit 2, saying to run `make demo` or `npm ci` there."""
    sandbox = fake_sandbox(tmp_path / "sandbox", packages=False)
    assert main(["demo", "--sandbox-dir", str(sandbox)]) == 2
    err = capsys.readouterr().err
    assert "make demo" in err
    assert f"npm ci` in {sandbox}" in err


def test_missing_node_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without `node` on PATH: exit 2, saying Node.js is needed."""
    sandbox = fake_sandbox(tmp_path / "sandbox", packages=True)
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert main(["demo", "--sandbox-dir", str(sandbox)]) == 2
    err = capsys.readouterr().err
    assert "`node` was not found" in err
    assert "make demo" in err


def test_default_sandbox_is_the_checkouts() -> None:
    """Without --sandbox-dir the demo uses fhir_sandbox/ of the checkout it runs from."""
    assert (CHECKOUT / "fhir_sandbox" / "server.mjs").is_file()
    assert (CHECKOUT / "fhir_sandbox" / "package-lock.json").is_file()


def test_demo_environment_adds_the_fhir_server_to_the_allowlist() -> None:
    """Development profile and playground forced; the operator's allowlist is kept and extended."""
    fhir = "http://127.0.0.1:8081/fhir"
    environment = demo_environment(
        {"CDS_PROFILE": "production", "CDS_FHIR_SERVER_ALLOWLIST": "https://ehr.example.org/fhir"},
        "http://127.0.0.1:8080",
        fhir,
    )
    assert environment["CDS_PROFILE"] == "development"
    assert environment["CDS_PLAYGROUND"] == "on"
    assert environment["CDS_PUBLIC_BASE_URL"] == "http://127.0.0.1:8080"
    assert environment["CDS_FHIR_SERVER_ALLOWLIST"].split(",") == [
        "https://ehr.example.org/fhir",
        fhir,
        "http://localhost:8081/fhir",
    ]
    assert demo_environment({}, "http://127.0.0.1:8080", fhir)["CDS_FHIR_SERVER_ALLOWLIST"] == (
        f"{fhir},http://localhost:8081/fhir"
    )
