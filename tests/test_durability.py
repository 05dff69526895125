"""What is acknowledged stays acknowledged when gunicorn workers die (SIGKILL) mid-run.

A real ``cds-service serve --workers 2`` on SQLite (WAL) and on PostgreSQL, eight concurrent
clients, and workers killed with SIGKILL while requests are in flight. The clients behave like an
EHR: a lost connection or a 503 is retried with the same content; only a 200 counts as done.
Nothing here measures speed: the checks are counts in the database and in the answers.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from helpers.feedback_load import FEEDBACK, LOST_ANSWER, OUTCOME_TIMESTAMP, stored_feedback
from helpers.jwt_tokens import ISSUER, SigningKey, TokenFactory, jwk_set, write_trust_file
from helpers.serving import Served, serving

DISCOVERY = "/cds-services"
CLIENTS = 8
BATCHES = 800
BATCH_SIZE = 3  # 2,400 distinct feedback entries in all
TOKENS = 240
GIVE_UP_SECONDS = 120  # a client retrying longer than this means the service did not recover


@dataclass
class Attempts:
    """What one client saw while getting one request answered."""

    statuses: list[int] = field(default_factory=list)
    lost: int = 0  # attempts without an HTTP answer (connection reset or refused, timeout)
    final: requests.Response | None = None


def send_until_answered(
    send: Callable[[], requests.Response], retry_statuses: tuple[int, ...] = (503,)
) -> Attempts:
    """Send until an answer other than ``retry_statuses`` comes back, as an EHR would retry."""
    attempts = Attempts()
    give_up = time.monotonic() + GIVE_UP_SECONDS
    while True:
        try:
            response = send()
        except LOST_ANSWER:
            attempts.lost += 1
        else:
            attempts.statuses.append(response.status_code)
            if response.status_code not in retry_statuses:
                attempts.final = response
                return attempts
            assert response.headers.get("Retry-After"), "a 503 must say when to retry"
            assert response.json()["resourceType"] == "OperationOutcome"
        assert time.monotonic() < give_up, f"still not answered: {attempts}"
        time.sleep(0.1)


def kill_workers_while(
    server: Served, progress: Callable[[], int], thresholds: list[int], work: list[Future[Any]]
) -> list[int]:
    """SIGKILL one worker each time ``progress()`` passes a threshold; return the killed pids.

    Each time the master must start a replacement. ``work`` are the clients' requests.
    """
    killed: list[int] = []
    for threshold in thresholds:
        while progress() < threshold:
            failed = [future.exception() for future in work if future.done() and future.exception()]
            assert failed == [], failed[0]
            time.sleep(0.01)
        workers = server.wait_for_workers(2)
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        killed.append(victim)
        server.wait_for_workers(2, without=frozenset(killed))
    return killed


def feedback_batch() -> list[dict[str, Any]]:
    return [
        {"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": OUTCOME_TIMESTAMP}
        for _ in range(BATCH_SIZE)
    ]


def test_acknowledged_feedback_survives_killed_workers(tmp_path: Path, database_url: str) -> None:
    """Every entry answered 200 is in the database exactly once, though workers died mid-run.

    2,400 distinct entries in batches of three from eight clients; two workers are killed with
    SIGKILL (after a quarter and two thirds of the batches). A batch whose answer was lost is
    sent again: its entries then come back as duplicates, never as second rows. A batch that
    only ever saw answers (200 or 503) has no duplicates: a 503 stored nothing.
    """
    env = {
        "CDS_DATABASE_URL": database_url,
        "CDS_LOG_LEVEL": "WARNING",
        # Every entry is on a card not issued here, and the eight clients send without a token:
        # the daily quota of such entries is lifted, this test is about what is stored once.
        "CDS_UNKNOWN_FEEDBACK_PER_DAY": str(BATCHES * BATCH_SIZE),
        # Eight clients sending as fast as answers come would meet the per-client rate limit
        # (its own tests are in test_rate_limit.py): off, this test is about what is stored.
        "CDS_RATE_LIMIT_PER_MINUTE": "0",
    }
    batches = [feedback_batch() for _ in range(BATCHES)]
    answered = Counter[str]()
    lock = threading.Lock()
    with serving(tmp_path, "--workers", "2", env=env) as server:
        local = threading.local()

        def post(batch: list[dict[str, Any]]) -> Attempts:
            if not hasattr(local, "session"):
                local.session = requests.Session()
            attempts = send_until_answered(
                lambda: local.session.post(
                    server.base + FEEDBACK, json={"feedback": batch}, timeout=30
                )
            )
            with lock:
                answered["batches"] += 1
            return attempts

        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            work = [pool.submit(post, batch) for batch in batches]
            killed = kill_workers_while(
                server, lambda: answered["batches"], [BATCHES // 4, BATCHES * 2 // 3], work
            )
            results = [future.result() for future in work]
        assert len(set(killed)) == 2

    assert [attempts.statuses[-1] for attempts in results] == [200] * BATCHES
    totals = Counter[str]()
    for attempts in results:
        assert attempts.final is not None
        answer = attempts.final.json()
        assert answer["stored"] + answer["duplicates"] == BATCH_SIZE
        assert answer["unknownCards"] == BATCH_SIZE
        if attempts.lost == 0:
            assert answer["duplicates"] == 0, "stored twice, or stored although refused"
        totals.update(stored=answer["stored"], duplicates=answer["duplicates"])

    sent = {(entry["card"], "overridden") for batch in batches for entry in batch}
    rows = stored_feedback(database_url)
    identities = Counter((row.card_uuid, row.outcome, row.outcome_timestamp) for row in rows)
    assert [identity for identity, count in identities.items() if count > 1] == []
    assert {(card, outcome) for card, outcome, _ in identities} == sent
    assert len(rows) == BATCHES * BATCH_SIZE
    assert totals["stored"] <= len(rows)  # an entry stored before its answer was lost ...
    assert totals["stored"] + totals["duplicates"] == len(rows)  # ... is acknowledged later


def test_no_token_is_accepted_twice_across_killed_workers(
    tmp_path: Path, database_url: str
) -> None:
    """Each of 240 tokens sent twice at once (and again after a lost answer) is accepted once.

    A worker is killed with SIGKILL a third of the way through; its replacement starts with an
    empty memory, so only the shared replay store in the database can refuse what the others
    accepted. At the end every accepted token is sent once more: all are refused as replays.
    """
    key = SigningKey.ec384()
    trust = write_trust_file(tmp_path, [{"iss": ISSUER, "jwks": jwk_set(key)}])
    env = {
        "CDS_DATABASE_URL": database_url,
        "CDS_AUTH": "required",
        "CDS_TRUSTED_CLIENTS": str(trust),
        "CDS_LOG_LEVEL": "ERROR",  # one warning per refused token otherwise
        "CDS_RATE_LIMIT_PER_MINUTE": "0",  # as above: this test is about replays, not rates
    }
    # aud is the public base URL the service is configured with, not its listening port.
    factory = TokenFactory(key, base_url="http://127.0.0.1:8080")
    tokens = [factory.token(DISCOVERY) for _ in range(TOKENS)]
    answered = Counter[str]()
    lock = threading.Lock()
    with serving(tmp_path, "--workers", "2", env=env) as server:

        def present(token: str) -> Attempts:
            attempts = send_until_answered(
                lambda: requests.get(
                    server.base + DISCOVERY,
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=30,
                )
            )
            with lock:
                answered["tokens"] += 1
            return attempts

        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            # Each token twice in a row: the pool sends the two copies at the same moment.
            twice = [token for token in tokens for _ in range(2)]
            work = [pool.submit(present, token) for token in twice]
            killed = kill_workers_while(server, lambda: answered["tokens"], [len(twice) // 3], work)
            results = [future.result() for future in work]
        accepted = [
            token
            for index, token in enumerate(tokens)
            if 200 in results[2 * index].statuses + results[2 * index + 1].statuses
        ]
        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            replays = list(pool.map(present, accepted))
    assert len(killed) == 1

    refused_for = Counter[str]()
    for index in range(TOKENS):
        pair = results[2 * index], results[2 * index + 1]
        # A 503 (checked by send_until_answered) decided nothing; the token was sent again.
        statuses = [status for status in pair[0].statuses + pair[1].statuses if status != 503]
        assert statuses.count(200) <= 1, "a token was accepted twice"
        assert set(statuses) <= {200, 401}
        if pair[0].lost == pair[1].lost == 0:  # both copies answered: one of them won
            assert sorted(statuses) == [200, 401]
        for attempts in pair:
            if attempts.final is not None and attempts.final.status_code == 401:
                refused_for[attempts.final.json()["issue"][0]["diagnostics"]] += 1
    assert len(accepted) > TOKENS // 2
    assert list(refused_for) == [
        "Authentication failed (jti): The token was used before (jti replay)."
    ]
    assert [attempts.statuses for attempts in replays] == [[401]] * len(accepted)
