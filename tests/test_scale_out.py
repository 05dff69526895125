"""Two ``cds-service serve`` instances behind a real load balancer: one public URL, one database.

Each instance runs two workers in the production profile (JWTs required, audience = the
balancer's URL) on the same PostgreSQL database; Debian's HAProxy balances round robin and
takes an instance out when its ``/readyz`` fails (tests/helpers/balancer.py has the
configuration and why it retries only connections that could not be made). What one instance
did, the other knows: cards it issued, tokens it accepted. One instance killed with SIGKILL
under load costs only the calls it had in flight; one stopped with SIGTERM drains first
(``/readyz`` 503 while it still serves), so no call through the balancer fails.
"""

from __future__ import annotations

import http.client
import itertools
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from helpers.balancer import Balancer, balancing
from helpers.corpus import load_fixture
from helpers.feedback_load import FEEDBACK, LOST_ANSWER, OUTCOME_TIMESTAMP, stored_feedback
from helpers.jwt_tokens import ISSUER, SigningKey, TokenFactory, jwk_set, write_trust_file
from helpers.serving import Served, free_port, serving, wait_until_dead

from cds_service.cli.main import main
from cds_service.store.database import create_database_engine
from cds_service.store.migrations import upgrade_database

DISCHARGE = "/cds-services/cpt20703-encounter-discharge"
DISCOVERY = "/cds-services"
STANDARD = "encounter-discharge--tibia-nonunion-removal.json"  # one card: add-on-suggested
CLIENTS = 6
DRAIN_SECONDS = 3
TIMEOUT_SECONDS = 30  # serve's --timeout: the drain plus this bounds a graceful stop
# What HAProxy itself answers for a call the instance took and never answered.
HAPROXY_502 = "<h1>502 Bad Gateway</h1>\nThe server returned an invalid or incomplete response."
JTI_REPLAY = "Authentication failed (jti): The token was used before (jti replay)."
DRAINING = "Not ready: draining (this instance is stopping)."
_timestamps = itertools.count()
logger = logging.getLogger(__name__)


@dataclass
class Deployment:
    """Instances "a" and "b" and the balancer in front of them; calls signed for its URL."""

    balancer: Balancer
    instances: dict[str, Served]
    tokens: TokenFactory

    def post(self, base: str, path: str, body: Any) -> requests.Response:
        """POST ``body`` to ``base + path`` with a fresh JWT, on a new connection."""
        token = self.tokens.token(path)
        headers = {"Authorization": f"Bearer {token}"}
        return requests.post(base + path, json=body, headers=headers, timeout=30)

    def issue_card(self, base: str) -> str:
        """A hook call through ``base``: the uuid of the card it answers with."""
        answer = self.post(base, DISCHARGE, load_fixture(STANDARD))
        assert answer.status_code == 200, answer.text
        [card] = answer.json()["cards"]
        return str(card["uuid"])


def feedback_entry(card: str, timestamp: str | None = None) -> dict[str, Any]:
    """An "overridden" entry on ``card``; each call without ``timestamp`` makes a new entry."""
    if timestamp is None:
        moment = datetime(2026, 3, 2, 10, 15, tzinfo=UTC) + timedelta(seconds=next(_timestamps))
        timestamp = moment.isoformat().replace("+00:00", "Z")
    return {"card": card, "outcome": "overridden", "outcomeTimestamp": timestamp}


@contextmanager
def deployment(
    tmp_path: Path, database_url: str, b_args: tuple[str, ...] = (), a_exit: int = 0
) -> Iterator[Deployment]:
    """Instances "a" and "b" (``b_args`` added to b's command), HAProxy in front, one database
    migrated first (production instances never migrate it themselves)."""
    engine = create_database_engine(database_url)
    upgrade_database(engine)
    engine.dispose()
    key = SigningKey.ec384()
    trust = write_trust_file(tmp_path, [{"iss": ISSUER, "jwks": jwk_set(key)}])
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    env = {
        "CDS_PROFILE": "production",
        "CDS_PUBLIC_BASE_URL": public,
        "CDS_DATABASE_URL": database_url,
        "CDS_TRUSTED_CLIENTS": str(trust),
        "CDS_LOG_LEVEL": "WARNING",
        "CDS_FHIR_SERVER_ALLOWLIST": "",  # none in production: every call carries its prefetch
        # One client sends all the load: the per-client limit (test_rate_limit.py) is off.
        "CDS_RATE_LIMIT_PER_MINUTE": "0",
    }
    common = ("--workers", "2", "--timeout", str(TIMEOUT_SECONDS))
    with ExitStack() as stack:
        a = stack.enter_context(serving(tmp_path, *common, env=env, exit_status=a_exit))
        b = stack.enter_context(serving(tmp_path, *common, *b_args, env=env))
        balancer = stack.enter_context(balancing(tmp_path, port, {"a": a.port, "b": b.port}))
        yield Deployment(balancer, {"a": a, "b": b}, TokenFactory(key, base_url=public))


def test_a_card_issued_by_one_instance_counts_its_feedback_through_the_other(
    tmp_path: Path,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with deployment(tmp_path, postgres_url) as cds:
        a, b = cds.instances["a"], cds.instances["b"]
        card = cds.issue_card(a.base)
        entry = feedback_entry(card, OUTCOME_TIMESTAMP)
        answer = cds.post(b.base, FEEDBACK, {"feedback": [entry]})
        assert answer.status_code == 200
        assert answer.json() == {"stored": 1, "duplicates": 0, "unknownCards": 0}
        # The oracle tells the two apart: a card no instance issued is unknown on b too.
        stranger = cds.post(b.base, FEEDBACK, {"feedback": [feedback_entry(str(uuid.uuid4()))]})
        assert stranger.json() == {"stored": 1, "duplicates": 0, "unknownCards": 1}
        for _ in range(2):  # round robin: once on each instance, the same entry is a duplicate
            again = cds.post(cds.balancer.base, FEEDBACK, {"feedback": [entry]})
            assert again.json() == {"stored": 0, "duplicates": 1, "unknownCards": 0}

    issued = [row for row in stored_feedback(postgres_url) if row.card_issued]
    assert [row.card_uuid for row in issued] == [card]
    monkeypatch.setenv("CDS_DATABASE_URL", postgres_url)
    assert main(["report", "--json"]) == 0
    [report] = json.loads(capsys.readouterr().out)["clients"]
    assert report["client"] == ISSUER
    add_on = {row["finding"]: row for row in report["findings"]}["add-on-suggested"]
    assert (add_on["cards_issued"], add_on["feedback"], add_on["overridden"]) == (1, 1, 1)


def test_a_token_accepted_by_one_instance_is_refused_by_the_other(
    tmp_path: Path, postgres_url: str
) -> None:
    with deployment(tmp_path, postgres_url) as cds:
        a, b = cds.instances["a"], cds.instances["b"]

        def discover(base: str, token: str) -> requests.Response:
            headers = {"Authorization": f"Bearer {token}"}
            return requests.get(base + DISCOVERY, headers=headers, timeout=30)

        token = cds.tokens.token(DISCOVERY)
        assert discover(a.base, token).status_code == 200
        replayed = [discover(b.base, token)]
        replayed += [discover(cds.balancer.base, token) for _ in range(2)]  # a, then b
        assert [answer.status_code for answer in replayed] == [401] * 3
        assert {answer.json()["issue"][0]["diagnostics"] for answer in replayed} == {JTI_REPLAY}
        assert {answer.headers["X-Served-By"] for answer in replayed[1:]} == {"a", "b"}
        assert discover(b.base, cds.tokens.token(DISCOVERY)).status_code == 200  # b is fine


@dataclass
class Call:
    """One feedback call a load client made through the balancer."""

    entry: dict[str, Any]
    started: float
    ended: float = 0.0
    status: int | None = None  # None: no HTTP answer
    body: str = ""
    served_by: str | None = None


@dataclass
class Load:
    """``CLIENTS`` threads posting one new feedback entry each per call, until stopped."""

    cds: Deployment
    cards: list[str]
    calls: list[Call] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        for number in itertools.count():
            if self.stop.is_set():
                return
            call = Call(feedback_entry(self.cards[number % len(self.cards)]), time.monotonic())
            try:
                answer = self.cds.post(self.cds.balancer.base, FEEDBACK, {"feedback": [call.entry]})
            except LOST_ANSWER:
                pass
            else:
                call.status, call.body = answer.status_code, answer.text
                call.served_by = answer.headers.get("X-Served-By")
            call.ended = time.monotonic()
            self.calls.append(call)  # list.append is atomic

    def wait_until(self, count: int, after: float = 0.0) -> None:
        """Until ``count`` calls started after ``after`` are answered."""
        deadline = time.monotonic() + 60
        while len([call for call in self.calls if call.started > after]) < count:
            assert time.monotonic() < deadline, f"{len(self.calls)} calls only"
            time.sleep(0.02)


@contextmanager
def load(cds: Deployment, cards: list[str]) -> Iterator[Load]:
    running = Load(cds, cards)
    threads = [threading.Thread(target=running.run) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        yield running
    finally:
        running.stop.set()
        for thread in threads:
            thread.join(60)


def assert_acknowledged_are_stored(calls: list[Call], database_url: str) -> set[tuple[str, Any]]:
    """Every call answered 200 stored its entry on an issued card; the stored entries."""
    stored = {
        (row.card_uuid, row.outcome_timestamp)
        for row in stored_feedback(database_url)
        if row.card_issued
    }
    acknowledged = [call for call in calls if call.status == 200]
    for call in acknowledged:
        assert json.loads(call.body) == {"stored": 1, "duplicates": 0, "unknownCards": 0}
    keys = {
        (call.entry["card"], datetime.fromisoformat(call.entry["outcomeTimestamp"]))
        for call in acknowledged
    }
    assert keys <= stored
    return stored


def test_an_instance_killed_under_load_loses_no_acknowledged_feedback(
    tmp_path: Path, postgres_url: str
) -> None:
    """SIGKILL to instance a's master and workers while six clients post feedback through the
    balancer. Only calls a had in flight fail, each with HAProxy's own 502 page (the instance
    took them and died; HAProxy does not send them again, see the balancer's configuration);
    calls made after the kill are answered by b, before HAProxy marks a down too (a refused
    connection is retried on b) and after. Every entry acknowledged with a 200 is stored; a
    failed one sent again is stored once (a duplicate when a had stored it before dying)."""
    with deployment(tmp_path, postgres_url, a_exit=-signal.SIGKILL) as cds:
        a = cds.instances["a"]
        cards = [cds.issue_card(cds.balancer.base) for _ in range(8)]  # by both instances
        with load(cds, cards) as running:
            running.wait_until(200)
            victims = {a.process.pid, *a.workers()}
            kill_started = time.monotonic()
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            killed = wait_until_dead(victims)
            marked_down = cds.balancer.wait_for("a", "DOWN")
            running.wait_until(200, after=marked_down)
        calls = running.calls
        failed = [call for call in calls if call.status != 200]
        for call in failed:  # in flight at the kill, answered by HAProxy
            assert call.started < killed, call
            assert call.ended > kill_started, call
            assert call.status == 502, call
            assert HAPROXY_502 in call.body, call
        assert len(failed) <= CLIENTS
        before = [call for call in calls if call.ended < kill_started]
        assert {call.served_by for call in before} == {"a", "b"}
        after = [call for call in calls if call.started > killed]
        assert {(call.status, call.served_by) for call in after} == {(200, "b")}
        assert [call for call in after if call.started < marked_down] != []
        assert_acknowledged_are_stored(calls, postgres_url)
        stored_before_dying = 0
        for call in failed:  # as a client would: sent again, with a new token
            again = cds.post(cds.balancer.base, FEEDBACK, {"feedback": [call.entry]})
            assert again.status_code == 200
            result = again.json()
            assert result["stored"] + result["duplicates"] == 1
            assert result["unknownCards"] == 0
            stored_before_dying += result["duplicates"]
        logger.info(
            "SIGKILL: %d calls, %d failed (%d of them stored before the kill), %d after it "
            "(%d before a was marked down, %.2f s after the kill)",
            len(calls), len(failed), stored_before_dying, len(after),
            len([call for call in after if call.started < marked_down]), marked_down - killed,
        )  # fmt: skip
    rows = stored_feedback(postgres_url)
    assert all(row.card_issued for row in rows)
    assert len(rows) == len({(row.card_uuid, row.outcome_timestamp) for row in rows})
    assert len(rows) == len(calls)  # every entry once: acknowledged, or sent again


def test_an_instance_stopped_with_sigterm_drains_before_it_stops(
    tmp_path: Path, postgres_url: str
) -> None:
    """SIGTERM to instance b's master (``--drain-seconds 3``) while six clients post feedback
    through the balancer. In order: b's ``/readyz`` answers 503 at once, while b still takes
    new calls; HAProxy marks b down; only after the drain does b refuse connections; a call b
    had in flight then (its body half sent) is still answered; b exits 0 within the drain plus
    its timeout. No call through the balancer fails meanwhile."""
    drain = ("--drain-seconds", str(DRAIN_SECONDS))
    with deployment(tmp_path, postgres_url, b_args=drain) as cds:
        b = cds.instances["b"]
        cards = [cds.issue_card(cds.balancer.base) for _ in range(8)]
        with load(cds, cards) as running:
            running.wait_until(100)
            signalled = time.monotonic()
            b.process.send_signal(signal.SIGTERM)
            unready = wait_for_readyz(b.base, 503)
            assert unready.json()["issue"][0]["diagnostics"] == DRAINING
            not_ready = time.monotonic()
            direct = cds.post(b.base, FEEDBACK, {"feedback": [feedback_entry(cards[0])]})
            assert direct.status_code == 200  # a new call, on a new connection: still served
            in_flight, rest = half_sent_feedback(cds, b.port, feedback_entry(cards[1]))
            marked_down = cds.balancer.wait_for("b", "DOWN")
            assert accepts_connections(b.port)
            assert b.process.poll() is None
            refused = wait_until_refused(b.port)
            in_flight.send(rest)
            answer = in_flight.getresponse()
            assert answer.status == 200
            assert json.loads(answer.read()) == {"stored": 1, "duplicates": 0, "unknownCards": 0}
            in_flight.close()
            assert b.process.wait(timeout=DRAIN_SECONDS + TIMEOUT_SECONDS + 10) == 0
            exited = time.monotonic()
            running.wait_until(100, after=exited)
        calls = running.calls
        assert [call for call in calls if call.status != 200] == []
        assert signalled < not_ready < marked_down < refused < exited
        assert refused - signalled >= DRAIN_SECONDS  # the timer cannot fire early
        assert exited - signalled < DRAIN_SECONDS + TIMEOUT_SECONDS
        during = [call for call in calls if signalled < call.started and call.ended < refused]
        assert {call.served_by for call in during} == {"a", "b"}  # b served until marked down
        assert_acknowledged_are_stored(calls, postgres_url)
        logger.info(
            "SIGTERM: not ready after %.2f s, marked down %.2f, refused %.2f, exited %.2f; "
            "%d calls, %d of them during the drain",
            not_ready - signalled, marked_down - signalled, refused - signalled,
            exited - signalled, len(calls), len(during),
        )  # fmt: skip


def wait_for_readyz(base: str, status: int) -> requests.Response:
    deadline = time.monotonic() + 10
    while (answer := requests.get(base + "/readyz", timeout=5)).status_code != status:
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.02)
    return answer


def accepts_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return False
    return True


def wait_until_refused(port: int) -> float:
    """Until nothing accepts connections on ``port``; the monotonic time it did not."""
    deadline = time.monotonic() + DRAIN_SECONDS + 30
    while accepts_connections(port):
        assert time.monotonic() < deadline, "still accepting connections"
        time.sleep(0.02)
    return time.monotonic()


def half_sent_feedback(
    cds: Deployment, port: int, entry: dict[str, Any]
) -> tuple[http.client.HTTPConnection, bytes]:
    """A feedback call to ``port`` whose head and half its body are sent: the connection, and
    the rest of the body to send."""
    body = json.dumps({"feedback": [entry]}).encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.putrequest("POST", FEEDBACK)
    connection.putheader("Authorization", f"Bearer {cds.tokens.token(FEEDBACK)}")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body[: len(body) // 2])
    return connection, body[len(body) // 2 :]
