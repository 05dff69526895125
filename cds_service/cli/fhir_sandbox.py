"""The local FHIR sandbox: ``fhir_sandbox/server.mjs`` on loopback, seeded from request fixtures.

``server.mjs`` wraps Medplum's in-memory FHIR R4 router (``@medplum/fhir-router``) in a small Node
HTTP server and stores the resources of each seed fixture's ``prefetch``. It is the EHR of
``cds-service demo``, the FHIR server of the integration tests (``tests/helpers/medplum.py``) and
of the benchmark and soak run (``bench/``), all started through ``FhirSandbox``::

    with FhirSandbox([FIXTURES / "encounter-discharge--tibia-nonunion-removal.json"]) as fhir:
        requests.get(f"{fhir.base_url}/Procedure?patient=pat-4f2a91", timeout=5)

The server is a child process in its own session (a terminal's Ctrl-C reaches only its parent,
which then stops it) that also exits when its stdin closes: the parent holds that pipe, so even a
parent killed with SIGKILL leaves no Node process behind. Starting it needs ``node`` (>= 20) on
PATH (``NodeUnavailable`` otherwise) and the sandbox's npm packages (``install=True`` runs
``npm ci`` when they are missing). The sandbox lives in the checkout, not in the wheel.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import requests

from cds_service.paths import data_dir

FHIR_HOST = "127.0.0.1"  # the server.mjs listen address; never anything but loopback
MEDPLUM_PACKAGES = ("core", "definitions", "fhir-router")
MIN_NODE_MAJOR = 20
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
NPM_TIMEOUT_S = 300.0
CONTROL_TIMEOUT_S = 10.0
_LISTENING = re.compile(r"^LISTENING (\d+)$")


class NodeUnavailable(RuntimeError):
    """Node.js >= 20 (or npm, to install the sandbox's packages) is not available."""

    def __init__(self, message: str, node: str | None = None) -> None:
        super().__init__(message)
        self.node = node  # the ``node`` found on PATH, None when there is none


class FhirSandboxError(RuntimeError):
    """The FHIR sandbox could not be installed or started, or is not running."""


# -- prerequisites -----------------------------------------------------------------------------


def find_node(subject: str = "the FHIR sandbox") -> str:
    """The ``node`` executable (>= 20), or NodeUnavailable saying what ``subject`` needs."""
    node = shutil.which("node")
    if node is None:
        raise NodeUnavailable(
            f"`node` was not found on PATH: {subject} runs under Node.js >= {MIN_NODE_MAJOR}."
        )
    try:
        version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise NodeUnavailable(f"cannot run {node}: {exc}", node) from None
    match = re.match(r"v(\d+)\.", version)
    if match is None or int(match.group(1)) < MIN_NODE_MAJOR:
        raise NodeUnavailable(
            f"{node} is version {version or '?'}; {subject} needs Node.js >= {MIN_NODE_MAJOR}.",
            node,
        )
    return node


def sandbox_dir() -> Path:
    """The ``fhir_sandbox`` directory of the checkout (as an absolute path)."""
    return data_dir("fhir_sandbox").absolute()


def packages_installed(directory: Path) -> bool:
    """Whether the Medplum npm packages ``server.mjs`` imports are in ``directory``."""
    installed = directory / "node_modules" / "@medplum"
    return all((installed / name / "package.json").is_file() for name in MEDPLUM_PACKAGES)


def ensure_packages(directory: Path | None = None) -> None:
    """Install the sandbox's npm packages from its lockfile (``npm ci``) unless already present."""
    directory = directory if directory is not None else sandbox_dir()
    if packages_installed(directory):
        return
    npm = shutil.which("npm")
    if npm is None:
        raise NodeUnavailable(f"`npm` was not found on PATH, needed to install {directory}")
    try:
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise FhirSandboxError(f"`npm ci` in {directory} failed: {exc}") from None
    if result.returncode != 0:
        raise FhirSandboxError(
            f"`npm ci` in {directory} failed ({result.returncode}):\n{result.stderr[-4000:]}"
        )


def server_command(node: str, port: int, seeds: Sequence[Path], *, patients: bool) -> list[str]:
    """``node server.mjs`` with its options: the port, Patients per seed, stop when stdin closes,
    and the seed files."""
    command = [node, "server.mjs", "--port", str(port)]
    if patients:
        command.append("--patients")
    command.append("--stop-on-stdin-eof")
    for path in seeds:
        command += ["--seed", str(path)]
    return command


# -- the control endpoints ---------------------------------------------------------------------


class SandboxControls:
    """The sandbox's control endpoints (``/__health``, ``/__requests``, ``/__config``), which the
    tests, the benchmark and the soak use to watch and slow down the FHIR server."""

    @property
    def root_url(self) -> str:
        """Where the control endpoints live; a running sandbox supplies it."""
        raise NotImplementedError

    def health(self) -> dict[str, Any]:
        """``{"status": "ok", "resources": N, "skipped": [{file, resource, reason}, ...]}``."""
        response = requests.get(f"{self.root_url}/__health", timeout=CONTROL_TIMEOUT_S)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def requests(self) -> list[dict[str, Any]]:
        """The FHIR requests received so far: ``{method, path, query, authorization, inFlight,
        arrivedMs, answeredMs}`` (the server's monotonic clock in ms)."""
        response = requests.get(f"{self.root_url}/__requests", timeout=CONTROL_TIMEOUT_S)
        response.raise_for_status()
        received: list[dict[str, Any]] = response.json()
        return received

    def clear_requests(self) -> None:
        """Forget the FHIR requests received so far."""
        response = requests.delete(f"{self.root_url}/__requests", timeout=CONTROL_TIMEOUT_S)
        response.raise_for_status()

    def set_delay(self, ms: float) -> None:
        """Make every later FHIR answer wait ``ms`` milliseconds (0 turns the delay off)."""
        self._configure({"delayMs": ms})

    def set_error_rate(self, fraction: float) -> None:
        """Answer that fraction (0..1, drawn per request) of later FHIR requests with a 500."""
        self._configure({"errorRate": fraction})

    def config(self) -> dict[str, Any]:
        """``{"delayMs": N, "errorRate": F, "injectedErrors": count of 500s injected so far}``."""
        response = requests.get(f"{self.root_url}/__config", timeout=CONTROL_TIMEOUT_S)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def _configure(self, settings: dict[str, float]) -> None:
        response = requests.post(
            f"{self.root_url}/__config", json=settings, timeout=CONTROL_TIMEOUT_S
        )
        response.raise_for_status()


# -- the server --------------------------------------------------------------------------------


class FhirSandbox(SandboxControls):
    """``node server.mjs`` on loopback, seeded with ``seeds``; a context manager, or start/stop.

    ``port`` 0 takes a free port (read back from the server's ``LISTENING <port>`` line);
    ``patients`` also stores a Patient per seed's ``context.patientId``; ``install`` runs
    ``npm ci`` first when the packages are missing; ``port_option`` names the option that changes
    a fixed port, for the hint when the server exits before listening; after start-up each line
    the server writes to stderr goes to ``on_stderr`` (the last ``stderr_tail`` lines are kept).
    """

    def __init__(
        self,
        seeds: Sequence[Path],
        *,
        port: int = 0,
        directory: Path | None = None,
        node: str | None = None,
        install: bool = False,
        patients: bool = False,
        startup_timeout: float = STARTUP_TIMEOUT_S,
        port_option: str | None = None,
        on_stderr: Callable[[str], None] | None = None,
        stderr_tail: int = 200,
    ) -> None:
        self.seeds = [Path(path).resolve() for path in seeds]  # the server runs in `directory`
        self.requested_port = port
        self.directory = directory.absolute() if directory is not None else sandbox_dir()
        self.node = node
        self.install = install
        self.patients = patients
        self.startup_timeout = startup_timeout
        self.port_option = port_option
        self.on_stderr = on_stderr
        self.startup_seconds: float | None = None
        self._process: subprocess.Popen[str] | None = None
        self._port: int | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr_tail: deque[str] = deque(maxlen=stderr_tail)
        self._forward_stderr = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server and wait for its ``LISTENING <port>`` line; stopped again on failure.

        Raises NodeUnavailable (no Node.js >= 20, or no npm to install the packages) or
        FhirSandboxError (``npm ci`` failed, the server exited or did not listen in time).
        """
        node = self.node if self.node is not None else find_node()
        if self.install:
            ensure_packages(self.directory)
        started = time.monotonic()
        self._process = subprocess.Popen(
            server_command(node, self.requested_port, self.seeds, patients=self.patients),
            cwd=self.directory,
            stdin=subprocess.PIPE,  # held open until stop(): its end is the server's end
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            start_new_session=True,  # a terminal's Ctrl-C reaches the parent, which stops it
        )
        assert self._process.stdout is not None
        assert self._process.stderr is not None
        self._lines = queue.Queue()
        self._pump(self._process.stdout, self._lines.put, lambda: self._lines.put(None))
        self._pump(self._process.stderr, self._on_stderr, None)
        try:
            self._port = self._wait_for_port()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        self._forward_stderr.set()

    def _pump(
        self, stream: IO[str], on_line: Callable[[str], None], on_end: Callable[[], None] | None
    ) -> None:
        """Drain ``stream`` on a thread, so that a full pipe never blocks the server."""

        def pump() -> None:
            for line in stream:
                on_line(line.rstrip("\n"))
            if on_end is not None:
                on_end()

        thread = threading.Thread(target=pump, name="fhir-sandbox-pipe", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _on_stderr(self, line: str) -> None:
        self._stderr_tail.append(line)
        if self.on_stderr is not None and self._forward_stderr.is_set():
            self.on_stderr(line)  # after start-up: errors only, worth seeing

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FhirSandboxError(
                    f"the FHIR server did not listen within {self.startup_timeout:.0f} s"
                    f"{self._tail()}"
                )
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:  # stdout closed: the process is gone
                raise self._exited_error()
            match = _LISTENING.match(line.strip())
            if match:
                return int(match.group(1))

    def _exited_error(self) -> FhirSandboxError:
        assert self._process is not None
        code = self._process.wait(timeout=STOP_TIMEOUT_S)
        for thread in self._threads:
            thread.join(timeout=STOP_TIMEOUT_S)  # the whole of stderr, for the message
        hint = ""
        if self.requested_port:
            option = f" try {self.port_option}" if self.port_option else ""
            hint = f" (is port {self.requested_port} in use?{option})"
        return FhirSandboxError(
            f"the FHIR server exited ({code}) before listening{hint}{self._tail()}"
        )

    def _tail(self) -> str:
        return ":\n" + "\n".join(self._stderr_tail) if self._stderr_tail else ""

    def stop(self) -> None:
        """SIGTERM and stdin EOF, then SIGKILL to its process group after ``STOP_TIMEOUT_S``.

        Idempotent; a stop cut short (a second Ctrl-C) leaves the process known, to stop again.
        """
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):  # its own session: the group is its own
                    os.killpg(process.pid, signal.SIGKILL)
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_S)
        for thread in self._threads:
            thread.join(timeout=STOP_TIMEOUT_S)
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._process = None
        self._threads = []
        self._port = None
        self._forward_stderr.clear()

    # -- addresses -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the server listens on (FhirSandboxError when it is not running)."""
        if self._port is None:
            raise FhirSandboxError("the FHIR server is not running (start it, or use `with`)")
        return self._port

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT``: where the control endpoints (``/__…``) live."""
        return f"http://{FHIR_HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        """The FHIR base URL, ``http://127.0.0.1:PORT/fhir`` (use it as ``fhirServer``)."""
        return f"{self.root_url}/fhir"

    @property
    def stderr_lines(self) -> list[str]:
        """The last lines the server wrote to stderr (seed log, errors)."""
        return list(self._stderr_tail)
