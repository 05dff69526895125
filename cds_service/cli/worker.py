"""The gunicorn worker ``cds-service serve`` runs: gunicorn's gthread worker, whose threads are
handed only whole requests.

gthread gives a connection to a thread as soon as its first byte arrives, and the thread then
blocks until the request is complete: a few dozen connections sending a header byte every few
seconds hold every thread, and ``/healthz`` and hook calls wait behind them. Here the worker's
event loop (the one gthread already runs for accepting and keep-alive) reads each request without
blocking: the TLS handshake, the head and the body, under two deadlines (``head_timeout`` from
accepting the connection or, kept alive, from its next byte; ``body_timeout`` once the head is
in) and a bound on the requests one source address may have in reading at once. A thread gets
the connection once the whole request is buffered (:mod:`cds_service.cli.request_framing` says
when). A request that misses a deadline is answered 408 and closed; a connection over its
source's bound is closed at once, unread.

On SIGTERM the worker drains before it stops: ``/readyz`` answers 503 at once
(:mod:`cds_service.web.draining`) while the worker goes on accepting and serving for
``drain_seconds``, so a load balancer's health check takes the instance out before connections
to it are refused; then gunicorn's graceful stop runs (listeners closed, requests in flight
finished).
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

from gunicorn import sock as gunicorn_sock
from gunicorn.http import get_parser
from gunicorn.workers.gthread import ThreadWorker

from cds_service.cli.request_framing import MAX_HEAD_BYTES, is_complete, read_head
from cds_service.web import draining

READ_BYTES = 64 * 1024
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(frozen=True)
class IntakeLimits:
    """How long a client may take to send a request, and how many one address may be sending."""

    head_timeout: float = 10.0
    body_timeout: float = 30.0
    max_per_source: int = 64  # requests being read at once from one address, per worker; 0: any
    max_body: int = 5 * 1024 * 1024  # a larger body is handed over at once (the app answers 413)


@dataclass
class _Intake:
    """One request being read by the event loop."""

    conn: Any  # gunicorn's TConn
    source: str
    deadline: float
    buffer: bytearray = field(default_factory=bytearray)
    handshaking: bool = False
    head_seen: bool = False


class IntakeWorker(ThreadWorker):  # type: ignore[misc]  # gunicorn ships no type hints
    """gthread, with requests read in the event loop and listeners closed at once on stop."""

    limits: ClassVar[IntakeLimits] = IntakeLimits()
    drain_seconds: ClassVar[float] = 0.0  # serving on after SIGTERM, not ready (0: stop at once)

    def init_process(self) -> None:
        self._intakes: dict[int, _Intake] = {}
        self._reading_from: Counter[str] = Counter()
        self._tls = gunicorn_sock.ssl_context(self.cfg) if self.cfg.is_ssl else None
        super().init_process()

    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGTERM (the master passes on its own): mark the process draining and keep serving
        for ``drain_seconds``, then stop as gthread does. Runs in the event loop's thread,
        between two of its steps; a timer thread hands the stop back to the loop. A SIGTERM
        during the drain changes nothing (systemd, for one, signals the workers and the master
        at once); SIGINT and SIGQUIT still stop at once."""
        if draining.is_draining():
            return
        draining.begin()
        if self.drain_seconds <= 0:
            super().handle_exit(sig, frame)
            return
        timer = threading.Timer(
            self.drain_seconds, self.method_queue.defer, (super().handle_exit, sig, frame)
        )
        timer.daemon = True
        timer.start()

    def set_accept_enabled(self, enabled: bool) -> None:
        """On SIGTERM gunicorn stops accepting but keeps its listening socket open until the
        requests in flight are answered: meanwhile the kernel still completes new connections
        into the backlog, and resets them at the end. Closing the socket at once makes them fail
        fast (connection refused), so a client or load balancer goes to another instance."""
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:  # shutting down, not only at the connection limit
            for listener in self.sockets:
                listener.close()

    def enqueue_req(self, conn: Any) -> None:
        """Every way gthread hands a connection to a thread (a new one, a kept-alive one turned
        readable, pipelined bytes left over) goes through the intake first."""
        if getattr(conn, "cds_request_buffered", False):
            conn.cds_request_buffered = False
            super().enqueue_req(conn)
            return
        source = str(conn.client[0]) if isinstance(conn.client, tuple) else "local"
        limit = self.limits.max_per_source
        if limit and self._reading_from[source] >= limit:
            self._close(conn, None if _closed_by_client(conn.sock) else "per-source-limit")
            return
        intake = _Intake(conn, source, time.monotonic() + self.limits.head_timeout)
        if conn.parser is not None:  # kept alive: bytes read ahead of the next request
            intake.buffer += conn.parser.unreader.take_buffered()
        elif self._tls is not None:
            conn.sock = self._tls.wrap_socket(
                conn.sock,
                server_side=True,
                do_handshake_on_connect=False,
                suppress_ragged_eofs=self.cfg.suppress_ragged_eofs,
            )
            intake.handshaking = True
        conn.sock.setblocking(False)
        self._intakes[id(conn)] = intake
        self._reading_from[source] += 1
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._readable, intake))
        if intake.buffer:
            self._progress(intake)

    def murder_pending(self) -> None:
        """gthread's loop calls this at least once a second: the intake's deadlines too."""
        super().murder_pending()
        now = time.monotonic()
        for intake in [item for item in self._intakes.values() if item.deadline <= now]:
            self._end(intake)
            self._answer_timeout(intake)
            self._close(intake.conn, "body-timeout" if intake.head_seen else "head-timeout")

    def _readable(self, intake: _Intake, _sock: Any) -> None:
        try:
            if intake.handshaking:
                intake.conn.sock.do_handshake()
                intake.handshaking = False
            # Until the socket has nothing more (a TLS socket may hold decrypted bytes the poller
            # cannot see), or the buffer holds more than any request handed over whole.
            while len(intake.buffer) <= self.limits.max_body + MAX_HEAD_BYTES:
                data = intake.conn.sock.recv(READ_BYTES)
                if not data:  # the client went away
                    self._end(intake)
                    self._close(intake.conn, None)
                    return
                intake.buffer += data
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            pass
        except OSError:  # reset, or a failed handshake (ssl.SSLError is an OSError)
            self._end(intake)
            self._close(intake.conn, None)
            return
        self._progress(intake)

    def _progress(self, intake: _Intake) -> None:
        """Hand the connection over once its request is whole; start the body deadline once
        its head is in."""
        if is_complete(intake.buffer, self.limits.max_body):
            self._end(intake)
            self._hand_over(intake.conn, bytes(intake.buffer))
            return
        head = read_head(intake.buffer)
        if head is not None and not intake.head_seen:
            intake.head_seen = True
            intake.deadline = time.monotonic() + self.limits.body_timeout
            if head.expects_continue:  # the client waits for this before it sends the body
                with contextlib.suppress(OSError):
                    intake.conn.sock.send(CONTINUE)

    def _hand_over(self, conn: Any, data: bytes) -> None:
        if conn.parser is None:
            conn.initialized = True
            conn.parser = get_parser(self.cfg, conn.sock, conn.client)
        conn.parser.unreader.unread(data)
        conn.data_ready = True
        conn.cds_request_buffered = True
        self.enqueue_req(conn)

    def _end(self, intake: _Intake) -> None:
        """Take ``intake`` off the loop (its connection stays open)."""
        self._intakes.pop(id(intake.conn), None)
        self._reading_from[intake.source] -= 1
        if self._reading_from[intake.source] <= 0:
            del self._reading_from[intake.source]
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(intake.conn.sock)

    def _answer_timeout(self, intake: _Intake) -> None:
        """A 408 with an OperationOutcome, if the socket takes it now; then the caller closes."""
        if intake.handshaking:
            return
        stage = "body" if intake.head_seen else "head"
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "error",
                    "code": "timeout",
                    "diagnostics": f"The request {stage} was not received in time.",
                }
            ],
        }
        body = json.dumps(outcome).encode()
        head = (
            "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/fhir+json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        with contextlib.suppress(OSError):
            intake.conn.sock.send(head + body)

    def _close(self, conn: Any, reason: str | None) -> None:
        self.nr_conns -= 1
        conn.close()
        if reason is not None:
            from cds_service.web import metrics  # after the fork: the metrics directory is set

            metrics.CONNECTIONS_CLOSED.labels(reason).inc()


def _closed_by_client(sock: Any) -> bool:
    """The client has closed its end (a kept-alive connection turns readable at its end too):
    such a connection is let go, not counted as refused."""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"")
    except (OSError, ValueError):  # no data yet, or a TLS socket (no peeking)
        return False
