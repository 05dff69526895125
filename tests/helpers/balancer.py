"""Debian's HAProxy in front of ``cds-service serve`` instances, for the scale-out tests.

The test runs its own ``haproxy`` process (foreground, ``-db``) with a configuration written to its
temporary directory; the system's service is never used. Without HAProxy the calling test is
skipped, or fails when ``CI`` is set (``.ci/run`` installs it when missing).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest
import requests

from helpers.serving import free_port

HAPROXY = Path(shutil.which("haproxy") or "/usr/sbin/haproxy")
HEALTH_CHECK_MS = 200  # how often HAProxy asks each instance's /readyz
FALL = RISE = 2  # failed (passed) checks in a row that take an instance out (put it back)

# The configuration. Every line that decides what a client sees says why.
CONFIG = """\
global
    maxconn 512
    log stdout format raw local0

defaults
    mode http
    log global
    option httplog  # one line per call: server, timings, termination state (no headers)
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout check 1s
    # A request is sent again (to the other instance: redispatch on every retry) only when no
    # connection to the instance could be made, so the instance cannot have seen it. Nothing
    # that reached an instance is retried (no empty-response, response-timeout or status
    # retries): the instance may have acted on it (stored feedback, recorded the token's jti,
    # after which the same JWT is refused as a replay). A call in flight on an instance that
    # dies is answered 502 by HAProxy, and the client decides whether to send it again.
    retries 3
    retry-on conn-failure
    option redispatch 1
    # An idle connection to an instance is reused only for a client's later requests (the
    # default): the first request of a client connection never meets a server connection that
    # closed under it.
    http-reuse safe

frontend public
    bind 127.0.0.1:{port}
    default_backend cds

frontend stats
    bind 127.0.0.1:{stats_port}
    stats enable
    stats uri /stats

backend cds
    balance roundrobin
    # An instance that is not ready (database, rule pack, or stopping: its drain) is taken
    # out after {fall} failed checks, {inter} ms apart; put back after {rise} passed ones.
    option httpchk GET /readyz
    http-check expect status 200
    default-server check inter {inter} fastinter {inter} downinter {inter} fall {fall} rise {rise}
    http-response set-header X-Served-By %[srv_name]
{servers}
"""


def skip_or_fail_without_haproxy(reason: str) -> NoReturn:
    """Skip the calling test (fixture) for lack of HAProxy, or fail it when ``CI`` is set."""
    reason = f"the scale-out tests need Debian's haproxy: {reason}"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is an error, not a skip)")
    pytest.skip(reason)


@dataclass
class Balancer:
    """A running HAProxy: its public base URL and the state it gives each instance."""

    base: str
    stats_url: str
    process: subprocess.Popen[bytes]
    log: Path

    def instances(self) -> dict[str, dict[str, str]]:
        """Each instance's name -> its row of HAProxy's statistics (CSV)."""
        text = requests.get(f"{self.stats_url};csv", timeout=5).text.removeprefix("# ")
        return {
            row["svname"]: row
            for row in csv.DictReader(io.StringIO(text))
            if row["pxname"] == "cds" and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def states(self) -> dict[str, str]:
        """Each instance's name -> HAProxy's status for it ("UP", "DOWN", "UP 1/2" ...)."""
        return {name: row["status"] for name, row in self.instances().items()}

    def wait_for(self, name: str, status: str, timeout: float = 30) -> float:
        """Wait until HAProxy gives instance ``name`` ``status``; the monotonic time it did."""
        deadline = time.monotonic() + timeout
        while (seen := self.states().get(name)) != status:
            assert self.process.poll() is None, "haproxy exited:\n" + self.output()
            assert time.monotonic() < deadline, f"{name} is {seen!r}, not {status!r}"
            time.sleep(0.02)
        return time.monotonic()

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@contextmanager
def balancing(tmp_path: Path, port: int, instances: dict[str, int]) -> Iterator[Balancer]:
    """HAProxy on 127.0.0.1:``port``, round robin over ``instances`` (name -> port on
    127.0.0.1), until the block ends; yields once every instance is UP."""
    if not HAPROXY.is_file():
        skip_or_fail_without_haproxy(f"{HAPROXY} is missing (apt-get install haproxy)")
    stats_port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        CONFIG.format(
            port=port,
            stats_port=stats_port,
            inter=HEALTH_CHECK_MS,
            fall=FALL,
            rise=RISE,
            servers="\n".join(
                f"    server {name} 127.0.0.1:{server_port}"
                for name, server_port in instances.items()
            ),
        )
    )
    log_path = tmp_path / "haproxy.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen([str(HAPROXY), "-f", str(config), "-db"], stdout=log, stderr=log)
    stats_url = f"http://127.0.0.1:{stats_port}/stats"
    balancer = Balancer(f"http://127.0.0.1:{port}", stats_url, process, log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                rows = balancer.instances().values()
                if {(row["status"], row["check_status"]) for row in rows} == {("UP", "L7OK")}:
                    break
            except requests.ConnectionError:  # not listening yet
                pass
            assert process.poll() is None, "haproxy exited:\n" + balancer.output()
            assert time.monotonic() < deadline, f"not all UP: {balancer.output()}"
            time.sleep(0.05)
        yield balancer
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
