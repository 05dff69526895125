"""A real FHIR R4 server for integration tests: Medplum's in-memory FHIR router on loopback.

``fhir_sandbox/server.mjs`` wraps ``@medplum/fhir-router`` 4.5.2 in a small Node HTTP server
seeded from CDS Hooks request fixtures (the resources of their ``prefetch``). Use it as a context
manager::

    with MedplumServer([FIXTURES / "encounter-discharge--tibia-nonunion-removal.json"]) as fhir:
        requests.get(f"{fhir.base_url}/Procedure?patient=pat-4f2a91", timeout=5)

Starting it needs ``node`` (>= 20) on PATH; without it ``NodeUnavailable`` is raised, and tests call
``skip_or_fail_without_node`` to skip (or fail, when the ``CI`` variable is set).
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NoReturn, Self

import pytest
import requests

SERVER_DIR = Path(__file__).resolve().parents[2] / "fhir_sandbox"
MEDPLUM_PACKAGES = ("core", "definitions", "fhir-router")
MIN_NODE_MAJOR = 20
STARTUP_TIMEOUT_S = 30.0
NPM_TIMEOUT_S = 300.0
CONTROL_TIMEOUT_S = 10.0
_LISTENING = re.compile(r"^LISTENING (\d+)$")


class NodeUnavailable(RuntimeError):
    """Node.js (or npm, to install the server's packages) is not available."""


class MedplumServerError(RuntimeError):
    """The test FHIR server could not be installed or started."""


def skip_or_fail_without_node(exc: NodeUnavailable) -> NoReturn:
    """Skip the calling test (fixture) for lack of Node.js, or fail it when ``CI`` is set."""
    reason = f"the Medplum test FHIR server needs Node.js: {exc}"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is an error, not a skip)")
    pytest.skip(reason)


def _node_executable() -> str:
    node = shutil.which("node")
    if node is None:
        raise NodeUnavailable("`node` was not found on PATH (Node.js >= 20 is needed)")
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.strip()
    match = re.match(r"v(\d+)\.", version)
    if match is None or int(match.group(1)) < MIN_NODE_MAJOR:
        raise NodeUnavailable(f"{node} is version {version or '?'}; Node.js >= 20 is needed")
    return node


def require_node_and_packages() -> None:
    """Node.js >= 20 and the sandbox's npm packages, installed if missing (NodeUnavailable)."""
    _node_executable()
    ensure_packages()


def ensure_packages() -> None:
    """Install the server's npm packages from its lockfile (``npm ci``) unless already present."""
    installed = SERVER_DIR / "node_modules" / "@medplum"
    if all((installed / name / "package.json").is_file() for name in MEDPLUM_PACKAGES):
        return
    npm = shutil.which("npm")
    if npm is None:
        raise NodeUnavailable(f"`npm` was not found on PATH, needed to install {SERVER_DIR}")
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=SERVER_DIR,
        capture_output=True,
        text=True,
        timeout=NPM_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        raise MedplumServerError(
            f"`npm ci` in {SERVER_DIR} failed ({result.returncode}):\n{result.stderr[-4000:]}"
        )


class MedplumServer:
    """The test FHIR server as a context manager; ``base_url`` is valid inside the ``with``."""

    def __init__(
        self, seed_files: Sequence[Path], *, startup_timeout: float = STARTUP_TIMEOUT_S
    ) -> None:
        self.seed_files = [Path(path).resolve() for path in seed_files]
        self.startup_timeout = startup_timeout
        self.startup_seconds: float | None = None
        self._process: subprocess.Popen[str] | None = None
        self._threads: list[threading.Thread] = []
        self._stdout_lines: queue.Queue[str | None] = queue.Queue()
        self._stderr_tail: deque[str] = deque(maxlen=200)
        self._port: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Self:
        node = _node_executable()
        ensure_packages()
        command = [node, "server.mjs", "--port", "0"]
        for path in self.seed_files:
            command += ["--seed", str(path)]
        started = time.monotonic()
        self._process = subprocess.Popen(
            command,
            cwd=SERVER_DIR,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        assert self._process.stdout is not None
        assert self._process.stderr is not None
        self._start_reader(self._process.stdout, self._on_stdout_line, self._on_stdout_end)
        self._start_reader(self._process.stderr, self._stderr_tail.append, None)
        try:
            self._port = self._wait_for_port()
        except BaseException:
            self._stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop()

    def _start_reader(
        self, stream: IO[str], on_line: Callable[[str], None], on_end: Callable[[], None] | None
    ) -> None:
        """Drain ``stream`` on a thread, so that a full pipe never blocks the server."""

        def pump() -> None:
            for line in stream:
                on_line(line.rstrip("\n"))
            if on_end is not None:
                on_end()

        thread = threading.Thread(target=pump, name="medplum-server-pipe", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _on_stdout_line(self, line: str) -> None:
        self._stdout_lines.put(line)

    def _on_stdout_end(self) -> None:
        self._stdout_lines.put(None)

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timeout = f"{self.startup_timeout:.0f} s"
                raise MedplumServerError(f"no `LISTENING <port>` in {timeout}{self._stderr_text()}")
            try:
                line = self._stdout_lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:  # stdout closed: the process is gone
                assert self._process is not None
                code = self._process.wait(timeout=5)
                for thread in self._threads:
                    thread.join(timeout=5)
                raise MedplumServerError(
                    f"server exited ({code}) before listening{self._stderr_text()}"
                )
            match = _LISTENING.match(line.strip())
            if match:
                return int(match.group(1))

    def _stderr_text(self) -> str:
        return "; stderr:\n" + "\n".join(self._stderr_tail) if self._stderr_tail else ""

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
            for thread in self._threads:
                thread.join(timeout=5)
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
        self._threads = []
        self._port = None

    # -- addresses and control endpoints -----------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise MedplumServerError("the server is not running (use it inside `with`)")
        return self._port

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT``: where the test control endpoints (``/__…``) live."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The FHIR base URL, ``http://127.0.0.1:PORT/fhir`` (use it as ``fhirServer``)."""
        return f"{self.root_url}/fhir"

    @property
    def stderr_lines(self) -> list[str]:
        """The last lines the server wrote to stderr (seed log, errors)."""
        return list(self._stderr_tail)

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
        response = requests.post(
            f"{self.root_url}/__config", json={"delayMs": ms}, timeout=CONTROL_TIMEOUT_S
        )
        response.raise_for_status()

    def set_error_rate(self, fraction: float) -> None:
        """Answer that fraction (0..1, drawn per request) of later FHIR requests with a 500."""
        response = requests.post(
            f"{self.root_url}/__config", json={"errorRate": fraction}, timeout=CONTROL_TIMEOUT_S
        )
        response.raise_for_status()

    def config(self) -> dict[str, Any]:
        """``{"delayMs": N, "errorRate": F, "injectedErrors": count of 500s injected so far}``."""
        response = requests.get(f"{self.root_url}/__config", timeout=CONTROL_TIMEOUT_S)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body
