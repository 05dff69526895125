"""Start ``cds-service serve`` as a real subprocess for tests that need real HTTP and workers."""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from helpers.corpus import ROOT
from helpers.privacy import assert_no_secret_in


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def child_pids(pid: int) -> set[int]:
    """The live child processes of ``pid`` (Linux: the parent pid in /proc/<child>/stat)."""
    children: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # the process ended while we looked
            continue
        state, parent = fields[0], int(fields[1])
        if parent == pid and state not in ("Z", "X"):  # a zombie is dead, only not reaped yet
            children.add(int(stat.parent.name))
    return children


def wait_until_dead(pids: set[int]) -> float:
    """Until none of ``pids`` runs; the monotonic time. A process sent SIGKILL goes on a moment
    (its listening socket with it): its threads exit one by one, and the socket closes with
    the last, after the main thread already shows as a zombie."""
    deadline = time.monotonic() + 30
    while any(running(pid) for pid in pids):
        assert time.monotonic() < deadline, "still running after SIGKILL"
        time.sleep(0.005)
    return time.monotonic()


def running(pid: int) -> bool:
    """Any thread of ``pid`` is not yet a zombie (Linux: /proc/<pid>/task/<tid>/stat)."""
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):  # that thread is gone
            continue
        if state not in ("Z", "X"):
            return True
    return False


@dataclass
class Served:
    """A running ``cds-service serve``: the gunicorn master process and its base URL."""

    base: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path  # the file the server's stdout and stderr go to

    def workers(self) -> set[int]:
        """The worker processes the master runs now."""
        return child_pids(self.process.pid)

    def wait_for_workers(
        self, count: int, *, without: frozenset[int] = frozenset(), timeout: float = 60
    ) -> set[int]:
        """Wait until ``count`` workers run, none of them in ``without``; return their pids."""
        deadline = time.monotonic() + timeout
        while True:
            workers = self.workers()
            if len(workers) == count and not workers & without:
                return workers
            assert self.process.poll() is None, "server exited:\n" + self.output()
            assert time.monotonic() < deadline, f"workers are {workers}, wanted {count} new ones"
            time.sleep(0.1)

    def output(self) -> str:
        """Everything the server printed so far."""
        return self.log.read_text(encoding="utf-8", errors="replace")


@contextmanager
def serving(
    tmp_path: Path,
    *extra: str,
    scheme: str = "http",
    verify: Any = True,
    env: dict[str, str] | None = None,
    ready_path: str = "/cds-services",
    exit_status: int = 0,
) -> Iterator[Served]:
    """Run ``cds-service serve`` until the block ends; it must then exit ``exit_status`` (0 on
    SIGTERM; a test that kills the server says how).

    The server stops at once on SIGTERM (``--drain-seconds 0``) unless ``extra`` names a drain:
    the tests of the drain do, the others have no load balancer to wait for.

    The output goes to a file, not a pipe: a busy server never blocks on a full pipe. A test may
    stop the server itself (the exit status is still checked). Once the server has stopped, its
    output must hold none of the secrets the session log check looks for (conftest
    ``log_secrets``: every token the tests made, their access tokens, the fixtures' patient data).
    """
    port = free_port()
    environment = os.environ | {"CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'served.sqlite3'}"}
    environment |= env or {}
    command = [sys.executable, "-m", "cds_service.cli", "serve", "--port", str(port)]
    command += ["--drain-seconds", "0", *extra]  # a later --drain-seconds in ``extra`` wins
    log_path = tmp_path / f"serve-{port}.log"
    with log_path.open("ab") as log:  # append mode: the server's writes never overwrite
        process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=log, stderr=log)
        server = Served(f"{scheme}://127.0.0.1:{port}", port, process, log_path)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    requests.options(f"{server.base}{ready_path}", timeout=2, verify=verify)
                    break
                except (requests.ConnectionError, requests.Timeout):  # no worker listens yet
                    assert process.poll() is None, "server exited:\n" + server.output()
                    assert time.monotonic() < deadline, "server did not start"
                    time.sleep(0.2)
            yield server
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # Only reached when the block succeeded.
        assert process.returncode == exit_status, server.output()
        assert_no_secret_in(server.output(), f"the served process's output ({log_path})")


@contextmanager
def served(
    tmp_path: Path,
    *extra: str,
    scheme: str = "http",
    verify: Any = True,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Run ``cds-service serve`` until the block ends; yield its base URL."""
    with serving(tmp_path, *extra, scheme=scheme, verify=verify, env=env) as server:
        yield server.base


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1, written as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
