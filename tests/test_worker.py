"""The serving worker (cds_service.cli.worker) in a real ``cds-service serve``: slow and many
clients cannot hold its threads, and ordinary clients are served as before."""

from __future__ import annotations

import http.client
import json
import select
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.corpus import load_fixture
from helpers.serving import self_signed, serving

DISCHARGE = "/cds-services/cpt20703-encounter-discharge"
STANDARD = "encounter-discharge--tibia-nonunion-removal.json"
OTHER_SOURCE = "127.0.0.2"  # well-behaved clients; the slow ones come from 127.0.0.1
SLOW_HEAD = f"POST {DISCHARGE} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


@dataclass
class SlowClient:
    """A connection that sends its request head one byte at a time."""

    sock: socket.socket
    opened: float
    sent: int = 0
    closed: float | None = None
    answer: bytes = b""

    def poll(self, now: float) -> None:
        """Note whether the server answered or closed."""
        if self.closed is not None:
            return
        readable, _, _ = select.select([self.sock], [], [], 0)
        if not readable:
            return
        try:
            data = self.sock.recv(4096)
        except OSError:
            data = b""
        self.answer += data
        if not data or b"\r\n\r\n" in self.answer:
            self.closed = now
            self.sock.close()

    def trickle(self, now: float) -> None:
        """Send the next byte of the head (never its end)."""
        if self.closed is not None:
            return
        try:
            self.sock.send(SLOW_HEAD[self.sent % len(SLOW_HEAD)].encode())
            self.sent += 1
        except OSError:
            self.closed = now
            self.sock.close()


@contextmanager
def slow_clients(port: int, count: int, interval: float) -> Iterator[list[SlowClient]]:
    """``count`` connections from 127.0.0.1, each sending a head byte every ``interval`` s."""
    clients = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.setblocking(False)
        clients.append(SlowClient(sock, time.monotonic()))
    stop = threading.Event()

    def drive() -> None:
        next_byte = 0.0
        while not stop.is_set():
            now = time.monotonic()
            for client in clients:
                client.poll(now)
                if now >= next_byte:
                    client.trickle(now)
            if now >= next_byte:
                next_byte = now + interval
            time.sleep(0.05)

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    try:
        yield clients
    finally:
        stop.set()
        driver.join(5)
        for client in clients:
            client.sock.close()


def call(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, float]:
    """One request from OTHER_SOURCE on a fresh connection: its status and seconds taken."""
    started = time.monotonic()
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=10, source_address=(OTHER_SOURCE, 0)
    )
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status, time.monotonic() - started
    finally:
        connection.close()


def closed_total(port: int, reason: str) -> float:
    """The server's count of connections it closed for ``reason`` (asked from OTHER_SOURCE)."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=10, source_address=(OTHER_SOURCE, 0)
    )
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    label = f'cds_connections_closed_total{{reason="{reason}"}} '
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(label))


def test_slow_clients_do_not_starve_health_and_hook_calls(tmp_path: Path) -> None:
    """130 connections trickling a header byte every 2 s for 20 s: /healthz and a hook call from
    another address keep answering within 1 s, and the head deadline (10 s) closes the slow ones
    with a 408, or at once where they pass the per-source bound (64 per worker; which worker
    accepts a connection is the kernel's choice, so one may take them all)."""
    body = json.dumps(load_fixture(STANDARD)).encode()
    with serving(tmp_path, "--workers", "2") as server:
        assert call(server.port, "POST", DISCHARGE, body)[0] == 200  # warm: the pack is loaded
        timings: list[tuple[int, float]] = []
        with slow_clients(server.port, 130, interval=2.0) as clients:
            ends = time.monotonic() + 20
            while time.monotonic() < ends:
                timings.append(call(server.port, "GET", "/healthz"))
                timings.append(call(server.port, "POST", DISCHARGE, body))
                time.sleep(0.25)
            settled = [client for client in clients if client.closed is not None]
        assert {status for status, _ in timings} == {200}
        assert max(seconds for _, seconds in timings) < 1.0, sorted(s for _, s in timings)[-5:]
        assert len(timings) >= 40
        assert len(settled) == len(clients)  # every slow connection was closed by the server
        assert all(client.closed - client.opened < 10 + 3 for client in settled)  # type: ignore[operator]
        timed_out = [client for client in clients if client.answer.startswith(b"HTTP/1.1 408")]
        assert len(timed_out) >= 64  # a worker reads up to 64 at once from one address
        assert b'"code": "timeout"' in timed_out[0].answer
        assert closed_total(server.port, "head-timeout") == len(timed_out)
        assert closed_total(server.port, "per-source-limit") == len(clients) - len(timed_out)


def test_one_address_may_send_only_so_many_requests_at_once(tmp_path: Path) -> None:
    with serving(tmp_path, "--workers", "1", "--max-reading-per-source", "4") as server:
        with slow_clients(server.port, 6, interval=1.0) as clients:
            time.sleep(1.5)
            closed = [client for client in clients if client.closed is not None]
            assert len(closed) == 2
            assert all(client.answer == b"" for client in closed)  # closed unread, no answer
            assert call(server.port, "GET", "/healthz")[0] == 200  # another address is served
        assert closed_total(server.port, "per-source-limit") == 2


def test_a_body_not_sent_in_time_is_408(tmp_path: Path) -> None:
    with serving(tmp_path, "--workers", "1", "--body-timeout", "1") as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        started = time.monotonic()
        sock.sendall(SLOW_HEAD.encode() + b"Content-Length: 100\r\n\r\n" + b"{" * 10)
        answer = sock.recv(4096)
        waited = time.monotonic() - started
        sock.close()
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        outcome = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["code"] == "timeout"
        assert "body" in outcome["issue"][0]["diagnostics"]
        assert 0.9 < waited < 3.5
        assert closed_total(server.port, "body-timeout") == 1


def raw_exchange(port: int, chunks: list[bytes], answers: int, pause: float = 0.1) -> bytes:
    """Send ``chunks`` with pauses, then read until ``answers`` responses have come."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    for chunk in chunks:
        sock.sendall(chunk)
        time.sleep(pause)
    received = b""
    while received.count(b"HTTP/1.1 200") + received.count(b"HTTP/1.1 4") < answers:
        data = sock.recv(65536)
        if not data:
            break
        received += data
    sock.close()
    return received


def test_ordinary_clients_are_served_as_before(tmp_path: Path) -> None:
    """Chunked bodies, Expect: 100-continue, keep-alive, pipelining, a body over the limit."""
    body = json.dumps(load_fixture(STANDARD)).encode()
    head = f"POST {DISCHARGE} HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n".encode()
    with serving(tmp_path, "--workers", "1", env={"CDS_MAX_BODY_BYTES": "100000"}) as server:
        port = server.port
        pieces = [body[i : i + 5000] for i in range(0, len(body), 5000)]
        chunked = [head + b"Transfer-Encoding: chunked\r\n\r\n"]
        chunked += [f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces] + [b"0\r\n\r\n"]
        assert raw_exchange(port, chunked, 1).startswith(b"HTTP/1.1 200")

        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(head + f"Expect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(body)
        received = b""
        while b"HTTP/1.1 200" not in received:
            received += sock.recv(65536)
        sock.close()

        sized = head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        health = b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n"
        kept_alive = raw_exchange(port, [sized, health], 2, pause=0.5)
        assert kept_alive.count(b"HTTP/1.1 200") == 2
        pipelined = raw_exchange(port, [health + health + sized[:200], sized[200:]], 3)
        assert pipelined.count(b"HTTP/1.1 200") == 3

        too_large = head + b"Content-Length: 100001\r\n\r\n"
        assert raw_exchange(port, [too_large], 1).startswith(b"HTTP/1.1 413")


def test_a_tls_client_that_never_shakes_hands_is_closed(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    with serving(
        tmp_path, "--workers", "1", "--head-timeout", "2", "--certfile", str(cert),
        "--keyfile", str(key), scheme="https", verify=str(cert),
    ) as server:  # fmt: skip
        silent = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        started = time.monotonic()
        assert silent.recv(4096) == b""  # closed, with nothing said (no TLS session to say it in)
        assert 1.5 < time.monotonic() - started < 4.5
        silent.close()
        context = ssl.create_default_context(cafile=str(cert))
        connection = http.client.HTTPSConnection(
            "127.0.0.1", server.port, timeout=10, context=context
        )
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
        connection.close()


def test_sigterm_drains_first_readiness_fails_while_calls_are_served(tmp_path: Path) -> None:
    """``--drain-seconds 2``: after SIGTERM /readyz answers 503 (draining) at once, /healthz and
    hook calls are still served on new connections, and connections are refused only once
    the drain is over; then the server exits 0."""
    body = json.dumps(load_fixture(STANDARD)).encode()
    with serving(tmp_path, "--workers", "2", "--drain-seconds", "2") as server:
        assert call(server.port, "GET", "/readyz")[0] == 200
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        while (status := call(server.port, "GET", "/readyz")[0]) == 200:
            assert time.monotonic() - signalled < 10, "still ready after SIGTERM"
        assert status == 503
        statuses = []
        while True:  # until the listeners close (a connection made just then may be reset)
            try:
                statuses += [call(server.port, "GET", "/healthz")[0]]
                statuses += [call(server.port, "POST", DISCHARGE, body)[0]]
            except (ConnectionRefusedError, ConnectionResetError, http.client.RemoteDisconnected):
                break
            assert time.monotonic() - signalled < 30, "still accepting after the drain"
        refused = time.monotonic() - signalled
        assert server.process.wait(timeout=60) == 0
    assert refused >= 2
    assert len(statuses) >= 4
    assert set(statuses) == {200}


@pytest.mark.parametrize(
    "flags",
    [
        ["--head-timeout", "0"],
        ["--body-timeout", "-1"],
        ["--max-reading-per-source", "-1"],
        ["--drain-seconds", "-1"],
    ],
)
def test_bad_intake_settings_are_usage_errors(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from cds_service.cli.main import main

    assert main(["serve", *flags]) == 2
    assert "must be positive" in capsys.readouterr().err
