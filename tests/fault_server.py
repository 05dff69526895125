"""A loopback HTTP server that misbehaves on purpose, to test the FHIR fetcher's fault handling.

The first path segment chooses the behaviour for everything below it, so a test picks a fault by
choosing the FHIR base URL: ``{server.url}/status-503/fhir`` answers 503 to every query.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

EMPTY_BUNDLE = {"resourceType": "Bundle", "type": "searchset", "total": 0}


def _bundle(entries: list[dict[str, Any]], next_url: str | None = None) -> dict[str, Any]:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if entries:
        bundle["entry"] = [{"resource": resource} for resource in entries]
    if next_url:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return bundle


class _Handler(BaseHTTPRequestHandler):
    server: FaultServer  # type: ignore[assignment]

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self.server.record(self.path, self.headers.get("Authorization"))
        self.server.cookies.append(self.headers.get("Cookie"))
        scenario = self.path.strip("/").split("/")[0]
        base = f"http://127.0.0.1:{self.server.server_port}/{scenario}/fhir"
        if scenario.startswith("status-"):
            self._send(int(scenario.removeprefix("status-")), {"resourceType": "OperationOutcome"})
        elif scenario.startswith("delay-"):
            with self.server.open_request():
                time.sleep(int(scenario.removeprefix("delay-")) / 1000)
            self._send(200, EMPTY_BUNDLE)
        elif scenario == "ok":
            self._send(200, EMPTY_BUNDLE)
        elif scenario == "cookie":
            self.send_response(200)
            self.send_header("Set-Cookie", "session=abc; Path=/")
            data = json.dumps(EMPTY_BUNDLE).encode()
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif scenario == "garbage":
            self._raw(200, b"{this is not json", "application/fhir+json")
        elif scenario == "html":
            self._raw(200, b"<html>login</html>", "text/html")
        elif scenario == "outcome":
            self._send(200, {"resourceType": "OperationOutcome", "issue": []})
        elif scenario == "wrong-type":
            self._send(200, {"resourceType": "Patient", "id": "p"})
        elif scenario == "array":
            self._send(200, [1, 2, 3])
        elif scenario == "huge":
            self._raw(200, b'{"resourceType": "Bundle", "x": "' + b"a" * 200_000 + b'"}')
        elif scenario == "redirect":
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.2:9/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif scenario == "drip":
            self._drip()
        elif scenario == "reset":
            self.connection.shutdown(2)  # close without an answer
        elif scenario == "pages":
            page = int(self.path.rsplit("page=", 1)[1]) if "page=" in self.path else 1
            procedure = {
                "resourceType": "Procedure",
                "id": f"page-{page}",
                "status": "completed",
                "subject": {"reference": "Patient/p"},
            }
            self._send(200, _bundle([procedure], f"{base}/Procedure?page={page + 1}"))
        elif scenario == "foreign-next":
            self._send(200, _bundle([], "http://127.0.0.2:9/fhir/Procedure?page=2"))
        else:
            self._send(404, {"resourceType": "OperationOutcome"})

    def _send(self, status: int, body: Any) -> None:
        self._raw(status, json.dumps(body).encode())

    def _raw(self, status: int, data: bytes, content_type: str = "application/fhir+json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

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


class FaultServer(ThreadingHTTPServer):
    """The server, with the requests it received (path and Authorization header).

    ``most_open`` is the largest number of delayed requests that were waiting at the same time:
    it shows whether a client sent them concurrently without timing anything.
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[tuple[str, str | None]] = []
        self.cookies: list[str | None] = []
        self.stopping = threading.Event()
        self.most_open = 0
        self._open = 0
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def record(self, path: str, authorization: str | None) -> None:
        with self._lock:
            self.received.append((path, authorization))

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
