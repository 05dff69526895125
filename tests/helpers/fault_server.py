"""A loopback HTTP server that misbehaves on purpose, to test the FHIR fetcher's fault handling.

The first path segment chooses the behaviour for everything below it, so a test picks a fault by
choosing the FHIR base URL: ``{server.url}/status-503/fhir`` answers 503 to every query.

:class:`TcpProxy` stands between the service and its PostgreSQL server, so a test can take the
database away (refuse connections, cut the open ones, or swallow them) and bring it back.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

EMPTY_BUNDLE = {"resourceType": "Bundle", "type": "searchset", "total": 0}


def _bundle(entries: list[dict[str, Any]], next_url: str | None = None) -> dict[str, Any]:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if entries:
        bundle["entry"] = [{"resource": resource} for resource in entries]
    if next_url:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return bundle


class _Handler(BaseHTTPRequestHandler):
    server: FaultServer

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self.server.record(self.path, self.headers.get("Authorization"))
        self.server.cookies.append(self.headers.get("Cookie"))
        self.server.accepts.append(self.headers.get("Accept"))
        scenario = self.path.strip("/").split("/")[0]
        for prefix, answer in _PARAMETERIZED.items():  # ``kind-N...``: the kind takes a number
            if scenario.startswith(prefix):
                answer(self, scenario)
                return
        _NAMED.get(scenario, _Handler._not_found)(self)

    # -- scenarios with a parameter: ``{prefix}N`` ---------------------------------------------

    def _status(self, scenario: str) -> None:
        self._send(int(scenario.removeprefix("status-")), {"resourceType": "OperationOutcome"})

    def _delay(self, scenario: str) -> None:
        with self.server.open_request():
            time.sleep(int(scenario.removeprefix("delay-")) / 1000)
        self._send(200, EMPTY_BUNDLE)

    def _burst(self, scenario: str) -> None:
        """burst-N-tag: the first N requests fail with 503."""
        failures = int(scenario.split("-")[1])
        if self.server.count(scenario) <= failures:
            self._send(503, {"resourceType": "OperationOutcome"})
        else:
            self._send(200, EMPTY_BUNDLE)

    # -- named scenarios -----------------------------------------------------------------------

    def _hold(self) -> None:
        """Answered once the test calls release()."""
        with self.server.open_request():
            while not (self.server.released.wait(0.05) or self.server.stopping.is_set()):
                pass
        self._send(200, EMPTY_BUNDLE)

    def _stall(self) -> None:
        """The request is read, the answer never comes."""
        with self.server.open_request():
            self.server.stopping.wait()

    def _jwks(self) -> None:
        """The JWK Set the test put in server.jwks; 503 while it is None."""
        if self.server.jwks is None:
            self._send(503, {"error": "unavailable"})
        else:
            self._raw(200, json.dumps(self.server.jwks).encode(), "application/json")

    def _cookie(self) -> None:
        self.send_response(200)
        self.send_header("Set-Cookie", "session=abc; Path=/")
        data = json.dumps(EMPTY_BUNDLE).encode()
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _deep(self) -> None:
        """A Procedure whose extension nests 300 levels."""
        nested: dict[str, Any] = {"url": "https://example.org/x", "valueString": "x"}
        for _ in range(300):
            nested = {"url": "https://example.org/x", "extension": [nested]}
        procedure = {"resourceType": "Procedure", "id": "p", "extension": [nested]}
        self._send(200, _bundle([procedure]))

    def _redirect(self) -> None:
        self.send_response(302)
        self.send_header("Location", "http://127.0.0.2:9/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _pages(self) -> None:
        base = f"{self.server.url}/pages/fhir"
        page = int(self.path.rsplit("page=", 1)[1]) if "page=" in self.path else 1
        procedure: dict[str, Any] = {
            "resourceType": "Procedure",
            "id": f"page-{page}",
            "status": "completed",
            "subject": {"reference": "Patient/p"},
        }
        self._send(200, _bundle([procedure], f"{base}/Procedure?page={page + 1}"))

    def _escaping_next(self) -> None:
        """A searchset whose next link climbs out of its base to ``/tenant-b/fhir``, in the style
        the query's ``escape`` names: ``dots`` (the default), ``encoded`` or ``semicolon``."""
        style = parse_qs(urlsplit(self.path).query).get("escape", ["dots"])[0]
        climb = {"dots": "../..", "encoded": "%2e%2e/%2e%2e", "semicolon": "..;/..;"}[style]
        next_url = f"{self.server.url}/escaping-next/fhir/{climb}/tenant-b/fhir/Procedure?page=2"
        self._send(200, _bundle([], next_url))

    def _not_found(self) -> None:
        self._send(404, {"resourceType": "OperationOutcome"})

    # -- writing answers -----------------------------------------------------------------------

    def _send(self, status: int, body: Any) -> None:
        self._raw(status, json.dumps(body).encode())

    def _raw(self, status: int, data: bytes, content_type: str = "application/fhir+json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunked(self, body: bytes, chunk: int = 8192) -> None:
        """A 200 in HTTP/1.1 chunked transfer encoding, without Content-Length."""
        self.protocol_version = "HTTP/1.1"
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for start in range(0, len(body), chunk):
                part = body[start : start + chunk]
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client stopped reading at its size cap
            return

    def _trickle(self, body: bytes) -> None:
        """A whole response, status line and headers included, one byte every 50 ms."""
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        try:
            for byte in head + body:
                if self.server.stopping.is_set():
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:
            return
        self.close_connection = True

    def _drip(self) -> None:
        """A 200 whose body never ends: one byte every 50 ms until the client goes away."""
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.end_headers()
        try:
            self.wfile.write(b'{"resourceType": "Bundle", "entry": [')
            while not self.server.stopping.is_set():
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:
            return


# The scenarios, by the first path segment of the request (see the module docstring).
_PARAMETERIZED: dict[str, Callable[[_Handler, str], None]] = {
    "status-": _Handler._status,
    "delay-": _Handler._delay,
    "burst-": _Handler._burst,
}
_HUGE = b'{"resourceType": "Bundle", "x": "' + b"a" * 200_000 + b'"}'
_NAMED: dict[str, Callable[[_Handler], None]] = {
    "hold": _Handler._hold,
    "stall": _Handler._stall,
    "slow-headers": lambda handler: handler._trickle(json.dumps(EMPTY_BUNDLE).encode()),
    "jwks": _Handler._jwks,
    "ok": lambda handler: handler._send(200, EMPTY_BUNDLE),
    # application/json, not application/fhir+json
    "plain-json": lambda handler: handler._raw(
        200, json.dumps(EMPTY_BUNDLE).encode(), "application/json; charset=utf-8"
    ),
    "cookie": _Handler._cookie,
    "garbage": lambda handler: handler._raw(200, b"{this is not json", "application/fhir+json"),
    "html": lambda handler: handler._raw(200, b"<html>login</html>", "text/html"),
    "outcome": lambda handler: handler._send(
        200, {"resourceType": "OperationOutcome", "issue": []}
    ),
    "wrong-type": lambda handler: handler._send(200, {"resourceType": "Patient", "id": "p"}),
    "array": lambda handler: handler._send(200, [1, 2, 3]),
    "deep": _Handler._deep,
    "huge": lambda handler: handler._raw(200, _HUGE),
    # the same, chunked: no Content-Length to refuse it by
    "huge-chunked": lambda handler: handler._chunked(_HUGE),
    "redirect": _Handler._redirect,
    "drip": _Handler._drip,
    "reset": lambda handler: handler.connection.shutdown(2),  # close without an answer
    "pages": _Handler._pages,
    "escaping-next": _Handler._escaping_next,
    "foreign-next": lambda handler: handler._send(
        200, _bundle([], "http://127.0.0.2:9/fhir/Procedure?page=2")
    ),
}


class FaultServer(ThreadingHTTPServer):
    """The server, with the requests it received (path and Authorization header).

    ``cookies`` and ``accepts`` hold each request's Cookie and Accept header, in arrival order.

    ``most_open`` is the largest number of delayed requests that were waiting at the same time:
    it shows whether a client sent them concurrently without timing anything.
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[tuple[str, str | None]] = []
        self.cookies: list[str | None] = []
        self.accepts: list[str | None] = []
        self.stopping = threading.Event()
        self.released = threading.Event()  # ends every "hold" request
        self.jwks: dict[str, Any] | None = None  # what the "jwks" scenario serves
        self.most_open = 0
        self._open = 0
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def record(self, path: str, authorization: str | None) -> None:
        with self._lock:
            self.received.append((path, authorization))

    @property
    def open_now(self) -> int:
        """How many held, stalled or delayed requests are waiting at this moment."""
        with self._lock:
            return self._open

    def count(self, scenario: str) -> int:
        """Count one more request for ``scenario``; return how many there were so far."""
        with self._lock:
            self._counts[scenario] += 1
            return self._counts[scenario]

    def wait_until_open(self, count: int = 1, timeout: float = 30) -> None:
        """Wait until ``count`` requests are held open here (AssertionError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while self.open_now < count:
            assert time.monotonic() < deadline, f"{self.open_now} requests open, wanted {count}"
            time.sleep(0.02)

    @contextmanager
    def open_request(self) -> Iterator[None]:
        """Count a request as open for the duration of the block."""
        with self._lock:
            self._open += 1
            self.most_open = max(self.most_open, self._open)
        try:
            yield
        finally:
            with self._lock:
                self._open -= 1


@contextmanager
def fault_server() -> Iterator[FaultServer]:
    """Run a :class:`FaultServer` in a thread for the duration of the block."""
    server = FaultServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class TcpProxy:
    """A loopback TCP port that forwards to ``target`` while up; the port never changes.

    ``down()`` closes the port and cuts every forwarded connection (a database that is gone:
    connections refused); ``swallow()`` accepts connections and never forwards a byte (a database
    host that stopped answering); ``up()`` forwards again.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self.mode = "down"
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def up(self) -> None:
        self._set("up")

    def swallow(self) -> None:
        self._set("swallow")

    def down(self) -> None:
        """Refuse new connections and cut the open ones."""
        self._set("down")

    def close(self) -> None:
        self.down()

    def _set(self, mode: str) -> None:
        self._stop_listening()
        self._cut_connections()
        self.mode = mode
        if mode == "down":
            return
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, args=(listener,), daemon=True)
        self._thread.start()

    def _stop_listening(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._thread = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _cut_connections(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            with suppress(OSError):  # already closed by its peer
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()

    def _accept_loop(self, listener: socket.socket) -> None:
        stop = self._stop
        while not stop.is_set():
            readable, _, _ = select.select([listener], [], [], 0.05)
            if not readable:
                continue
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self._connections.add(client)
            if self.mode == "up":
                threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._connections.add(upstream)
        sockets = [client, upstream]
        try:
            while True:
                readable, _, _ = select.select(sockets, [], [], 1.0)
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    (upstream if source is client else client).sendall(data)
        except (OSError, ValueError):  # cut by down(): the socket was closed under us
            return
        finally:
            with self._lock:
                self._connections.discard(client)
                self._connections.discard(upstream)
            client.close()
            upstream.close()
