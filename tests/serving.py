"""Start ``cds-service serve`` as a real subprocess for tests that need real HTTP and workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from conftest import ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def served(
    tmp_path: Path,
    *extra: str,
    scheme: str = "http",
    verify: Any = True,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Run ``cds-service serve`` until the block ends; yield its base URL."""
    port = free_port()
    environment = os.environ | {"CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'served.sqlite3'}"}
    environment |= env or {}
    command = [sys.executable, "-m", "cds_service.cli", "serve", "--port", str(port), *extra]
    process = subprocess.Popen(
        command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    base = f"{scheme}://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.options(f"{base}/cds-services", timeout=2, verify=verify)
                break
            except (requests.ConnectionError, requests.Timeout):  # not listening, or no worker yet
                assert process.poll() is None, "server exited"
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
