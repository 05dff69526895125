"""Faults around the service, and what it promises under each (README, "Reliability").

- SIGTERM: the call in flight is answered, new connections are refused, the exit status is 0.
- PostgreSQL connections killed: at worst a 503 with Retry-After, never a 500; recovery without
  a restart.
- Database unreachable at start, lost mid-run, or swallowing connections: the service starts and
  stays up, hook calls still get their cards, feedback gets a 503 with Retry-After (nothing is
  acknowledged that was not stored), and all is well again once the database is back.
- JWK Set endpoint of a ``jku`` client down: a cached set keeps working; without one the answer
  is a quick 503 that does not blame the token.
- FHIR server that stalls, resets, fails in bursts or trickles: bounded answers, 412 for required
  data, cards with a "not checked" note for optional data, and recovery on the next call.

Time bounds appear only where the promise is "bounded": they carry seconds of slack and prove
that nothing hangs, not that anything is fast.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from helpers.corpus import ROOT, load_fixture
from helpers.fault_server import FaultServer, TcpProxy, fault_server
from helpers.jwt_tokens import BASE_URL, SigningKey, TokenFactory, jwk_set, write_trust_file
from helpers.serving import free_port, serving

from cds_service.store.database import create_database_engine
from cds_service.store.tables import feedback
from cds_service.web.app_state import service_state

DISCHARGE = "/cds-services/cpt20703-encounter-discharge"
FEEDBACK = f"{DISCHARGE}/feedback"
STANDARD = "encounter-discharge--tibia-nonunion-removal.json"
SLACK = 3.0  # seconds added to every promised bound, for a busy machine
JKU_ISSUER = "https://other-ehr.example.org"


def entry(card: str | None = None) -> dict[str, Any]:
    """One feedback entry (on a card this service need not have issued)."""
    return {
        "card": card or str(uuid.uuid4()),
        "outcome": "overridden",
        "outcomeTimestamp": "2026-03-02T10:15:00Z",
    }


def assert_database_503(response: Any) -> None:
    """A 503 that says the database is unavailable, with Retry-After: a fault, not a crash."""
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    body = response.json() if isinstance(response, requests.Response) else response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    assert "database is unavailable" in body["issue"][0]["diagnostics"]


def db_upgrade(url: str) -> None:
    """Run `cds-service db upgrade` on ``url``, as an operator would."""
    upgrade = subprocess.run(
        [sys.executable, "-m", "cds_service.cli", "db", "upgrade"],
        cwd=ROOT,
        env=os.environ | {"CDS_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert upgrade.returncode == 0, upgrade.stderr


def within(seconds: float, action: Callable[[], Any]) -> Any:
    """``action()``'s result; fails (rather than hangs) when it takes longer than ``seconds``."""
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(action).result(timeout=seconds)
    finally:
        pool.shutdown(wait=False)


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" ([0-9.e+]+)"
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


@pytest.fixture(scope="module")
def fhir() -> Iterator[FaultServer]:
    with fault_server() as server:
        yield server


# -- SIGTERM -------------------------------------------------------------------------------


def refused(port: int) -> bool:
    """True when nothing accepts a connection on ``port`` (RST), False when one is accepted."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:  # timed out: the backlog takes it but nobody answers
        return False


def test_sigterm_finishes_the_call_in_flight_and_refuses_new_connections(
    tmp_path: Path,
) -> None:
    """SIGTERM to the master while a hook call waits on its FHIR server.

    New connections are refused at once (a load balancer then tries another instance instead
    of queueing on a process that is leaving); the call in flight still gets its 200 with
    cards; the service exits 0. The FHIR server holds the call until the test releases it, so
    "in flight" is a fact, not a timing.
    """
    with fault_server() as fhir_server:
        env = {
            "CDS_FHIR_SERVER_ALLOWLIST": fhir_server.url,
            "CDS_FHIR_DEADLINE_SECONDS": "60",
            "CDS_FHIR_READ_TIMEOUT_SECONDS": "60",
        }
        body = load_fixture(STANDARD)
        del body["prefetch"]["questionnaireResponses"]  # optional: fetched from the FHIR server
        body["fhirServer"] = f"{fhir_server.url}/hold/fhir"
        with serving(tmp_path, "--workers", "2", env=env) as server, ThreadPoolExecutor() as pool:
            in_flight = pool.submit(requests.post, server.base + DISCHARGE, json=body, timeout=90)
            try:
                fhir_server.wait_until_open(1)
                server.process.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + 20
                while not refused(server.port):
                    assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
                    time.sleep(0.1)
                assert not in_flight.done()
                assert server.process.poll() is None  # still finishing the call
            finally:
                fhir_server.released.set()  # never leave the call (and the pool) waiting
            answer = in_flight.result(timeout=60)
            assert answer.status_code == 200
            assert answer.json()["cards"]
            assert server.process.wait(timeout=60) == 0
            assert refused(server.port)


# -- PostgreSQL connections killed -----------------------------------------------------------


def with_application_name(url: str) -> tuple[str, str]:
    """``url`` with a unique application_name, so the test can find the service's backends."""
    name = f"cds-test-{uuid.uuid4().hex[:10]}"
    return sa.make_url(url).update_query_dict({"application_name": name}).render_as_string(
        hide_password=False
    ), name


def terminate_backends(admin: sa.Engine, application_name: str) -> int:
    """Kill the service's PostgreSQL connections; wait until they are gone; return how many."""
    with admin.connect() as connection:
        # First find them, then kill each by pid: never a pg_terminate_backend() in a WHERE
        # clause, which PostgreSQL may evaluate before the filter (for every backend).
        killed = set(
            connection.execute(
                sa.text("SELECT pid FROM pg_stat_activity WHERE application_name = :name"),
                {"name": application_name},
            ).scalars()
        )
        for pid in killed:
            connection.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    deadline = time.monotonic() + 20
    while True:
        with admin.connect() as connection:
            alive = connection.execute(
                sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:pids)"),
                {"pids": sorted(killed)},
            ).scalar_one()
        if alive == 0:
            return len(killed)
        assert time.monotonic() < deadline, "terminated backends did not go away"
        time.sleep(0.05)


def backends(admin: sa.Engine, application_name: str) -> int:
    with admin.connect() as connection:
        return int(
            connection.execute(
                sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"),
                {"name": application_name},
            ).scalar_one()
        )


@pytest.fixture
def admin(postgres_server: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(postgres_server, poolclass=sa.pool.NullPool)
    yield engine
    engine.dispose()


def test_killed_postgres_connections_are_replaced_in_process(
    make_app: Callable[..., Flask], postgres_url: str, admin: sa.Engine
) -> None:
    """Every pooled connection killed while idle: the next requests succeed (pool_pre_ping)."""
    url, name = with_application_name(postgres_url)
    app = make_app({"DATABASE_URL": url})
    client = app.test_client()
    store = service_state(app).store
    assert client.post(FEEDBACK, json={"feedback": [entry()]}).status_code == 200
    assert terminate_backends(admin, name) >= 1

    answer = client.post(FEEDBACK, json={"feedback": [entry()]})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.get_json()["stored"] == 1
    audited = len(store.hook_call_rows())
    assert client.post(DISCHARGE, json=load_fixture(STANDARD)).status_code == 200
    assert len(store.hook_call_rows()) == audited + 1  # the audit write reconnected too
    assert client.get("/readyz").status_code == 200
    assert backends(admin, name) >= 1


def test_killed_postgres_connections_under_load_are_503_never_500(
    tmp_path: Path, postgres_url: str, admin: sa.Engine
) -> None:
    """Two workers, four clients, the service's backends killed three times mid-run.

    A request caught by the kill may get 503 (OperationOutcome, Retry-After); none gets a 500;
    hook calls keep their cards; feedback retried after a 503 is stored exactly once; afterwards
    every request succeeds on the same processes.
    """
    url, name = with_application_name(postgres_url)
    env = {"CDS_DATABASE_URL": url, "CDS_LOG_LEVEL": "WARNING"}
    with serving(tmp_path, "--workers", "2", env=env) as server:
        workers = server.wait_for_workers(2)
        load = FeedbackLoad(server.base)
        with ThreadPoolExecutor(max_workers=4) as pool:
            clients = [pool.submit(load.client) for _ in range(4)]
            try:
                kill_backends_under_load(load, clients, admin, name)
            finally:
                load.stop.set()
            for future in clients:
                future.result()
        after = [
            requests.post(server.base + FEEDBACK, json={"feedback": [entry()]}, timeout=30)
            for _ in range(10)
        ]
        assert [answer.status_code for answer in after] == [200] * 10
        assert requests.get(server.base + "/readyz", timeout=30).status_code == 200
        assert server.workers() == workers  # recovered without a restart
    assert {status for _, status in load.statuses} <= {200, 503}
    cards = stored_feedback_cards(postgres_url)
    assert [card for card, count in cards.items() if count > 1] == []
    assert set(load.sent) <= set(cards)


class FeedbackLoad:
    """Clients that each post a hook call, then feedback on it (retried after a 503), until
    ``stop``; ``statuses`` counts the answers by kind and status, ``sent`` holds each stored
    feedback's card."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.sent: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def answered(self) -> int:
        """How many feedback posts were stored so far."""
        with self.lock:
            return self.statuses["feedback", 200]

    def client(self) -> None:
        """One client's loop: every hook call keeps its cards, every feedback is stored."""
        session = requests.Session()
        while not self.stop.is_set():
            hook = session.post(self.base + DISCHARGE, json=load_fixture(STANDARD), timeout=30)
            self._count("hook", hook.status_code)
            assert hook.status_code == 200, hook.text
            assert hook.json()["cards"]
            item = entry()
            self._store_feedback(session, item)
            with self.lock:
                self.sent.append(item["card"])

    def _store_feedback(self, session: requests.Session, item: dict[str, Any]) -> None:
        """Post ``item`` until it is stored; any other answer must be the database's 503."""
        give_up = time.monotonic() + 60
        while True:
            answer = session.post(self.base + FEEDBACK, json={"feedback": [item]}, timeout=30)
            self._count("feedback", answer.status_code)
            if answer.status_code == 200:
                return
            assert_database_503(answer)
            assert time.monotonic() < give_up, "the service did not recover"
            time.sleep(0.1)

    def _count(self, kind: str, status: int) -> None:
        with self.lock:
            self.statuses[kind, status] += 1


def kill_backends_under_load(
    load: FeedbackLoad, clients: list[Future[None]], admin: sa.Engine, name: str
) -> None:
    """Three times: wait for 40 more stored feedbacks, then kill the service's backends."""
    for _ in range(3):
        target = load.answered() + 40
        while load.answered() < target:
            for future in clients:
                if future.done():
                    future.result()  # raises what went wrong in that client
                    raise AssertionError("a client stopped")
            time.sleep(0.01)
        assert terminate_backends(admin, name) >= 1


def stored_feedback_cards(postgres_url: str) -> Counter[str]:
    """How many times each card's feedback is in the database."""
    engine = create_database_engine(postgres_url)
    try:
        with engine.connect() as connection:
            return Counter(connection.execute(sa.select(feedback.c.card_uuid)).scalars())
    finally:
        engine.dispose()


# -- database unreachable at start, lost mid-run, back ---------------------------------------


@pytest.fixture
def proxy(postgres_server: str) -> Iterator[TcpProxy]:
    url = sa.make_url(postgres_server)
    running = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    yield running
    running.close()


def through(proxy: TcpProxy, postgres_url: str) -> str:
    """``postgres_url`` reached through ``proxy``."""
    return sa.make_url(postgres_url).set(port=proxy.port).render_as_string(hide_password=False)


def test_database_down_at_start_then_back_then_lost_then_back(
    tmp_path: Path, postgres_url: str, proxy: TcpProxy
) -> None:
    """The served service with its PostgreSQL unreachable at start, back, lost, back again.

    Down at start: the service starts anyway (the failed start-up migration is logged, no crash
    loop), /readyz says 503 "database unreachable", hook calls return cards (the audit write
    failure is counted), feedback is 503 with Retry-After. Back: /readyz asks for `db upgrade`;
    after it, all works. Lost mid-run: the same answers as at start. Back: feedback refused
    while the database was gone is stored now, once; no process was restarted.
    """
    url = through(proxy, postgres_url)
    with serving(tmp_path, "--workers", "2", env={"CDS_DATABASE_URL": url}) as server:
        workers = server.wait_for_workers(2)
        base = server.base

        def check_unreachable() -> None:
            ready = requests.get(base + "/readyz", timeout=30)
            assert ready.status_code == 503
            assert ready.json()["issue"][0]["diagnostics"] == "Not ready: database unreachable."
            assert requests.get(base + "/healthz", timeout=30).status_code == 200
            before = metric(
                requests.get(base + "/metrics", timeout=30).text, "cds_audit_write_failures_total"
            )
            hook = requests.post(base + DISCHARGE, json=load_fixture(STANDARD), timeout=30)
            assert hook.status_code == 200
            assert hook.json()["cards"]
            after = metric(
                requests.get(base + "/metrics", timeout=30).text, "cds_audit_write_failures_total"
            )
            assert after == before + 1

        check_unreachable()
        refused_entry = entry()
        assert_database_503(
            requests.post(base + FEEDBACK, json={"feedback": [refused_entry]}, timeout=30)
        )
        assert "database unreachable at start-up" in server.output()

        proxy.up()
        ready = requests.get(base + "/readyz", timeout=30)
        assert ready.status_code == 503
        assert "needs `cds-service db upgrade`" in ready.json()["issue"][0]["diagnostics"]
        db_upgrade(url)
        assert requests.get(base + "/readyz", timeout=30).status_code == 200
        stored = requests.post(base + FEEDBACK, json={"feedback": [entry()]}, timeout=30)
        assert stored.json()["stored"] == 1

        proxy.down()
        check_unreachable()
        assert_database_503(
            requests.post(base + FEEDBACK, json={"feedback": [refused_entry]}, timeout=30)
        )

        proxy.up()
        again = requests.post(base + FEEDBACK, json={"feedback": [refused_entry]}, timeout=30)
        assert again.status_code == 200
        assert again.json()["stored"] == 1  # not a duplicate: nothing was stored while refused
        assert requests.get(base + "/readyz", timeout=30).status_code == 200
        assert server.workers() == workers  # no worker crashed or was restarted


def test_database_that_swallows_connections_gives_bounded_answers(
    make_app: Callable[..., Flask], postgres_url: str, proxy: TcpProxy
) -> None:
    """PostgreSQL accepts TCP connections but never answers (a hung host): nothing hangs.

    Connecting gives up after the connect timeout (3 s unless the URL sets ``connect_timeout``):
    feedback is a 503, hook calls still return their cards, /readyz says unreachable.
    """
    proxy.up()
    app = make_app({"DATABASE_URL": through(proxy, postgres_url)})
    client = app.test_client()
    assert client.post(FEEDBACK, json={"feedback": [entry()]}).status_code == 200
    proxy.swallow()
    bound = 3 + 2 * SLACK  # the connect timeout, a pre-ping, and slack
    assert_database_503(within(bound, lambda: client.post(FEEDBACK, json={"feedback": [entry()]})))
    hook = within(bound, lambda: client.post(DISCHARGE, json=load_fixture(STANDARD)))
    assert hook.status_code == 200
    assert hook.get_json()["cards"]
    assert within(bound, lambda: client.get("/readyz")).status_code == 503
    proxy.up()
    assert client.post(FEEDBACK, json={"feedback": [entry()]}).status_code == 200


def test_sqlite_unavailable_at_start_then_back(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    """SQLite's directory cannot be created at start (a file is in the way): the app starts.

    /readyz says unreachable, hook calls return cards, feedback is 503. Once the path is usable
    the database is created on the next connection; after `db upgrade` all works, no restart.
    """
    blocker = tmp_path / "volume"
    blocker.write_text("not a directory")
    url = f"sqlite:///{blocker / 'data' / 'cds.sqlite3'}"
    client = make_app({"DATABASE_URL": url}).test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["issue"][0]["diagnostics"] == "Not ready: database unreachable."
    hook = client.post(DISCHARGE, json=load_fixture(STANDARD))
    assert hook.status_code == 200
    assert hook.get_json()["cards"]
    refused_entry = entry()
    assert_database_503(client.post(FEEDBACK, json={"feedback": [refused_entry]}))

    blocker.unlink()  # the volume is back
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert "needs `cds-service db upgrade`" in ready.get_json()["issue"][0]["diagnostics"]
    db_upgrade(url)
    assert client.get("/readyz").status_code == 200
    answer = client.post(FEEDBACK, json={"feedback": [refused_entry]})
    assert answer.get_json() == {"stored": 1, "duplicates": 0, "unknownCards": 1}


# -- JWK Set endpoint down --------------------------------------------------------------------


@pytest.fixture
def jku_key() -> SigningKey:
    return SigningKey.rsa()


def jku_app(make_app: Callable[..., Flask], tmp_path: Path, jku: str, **settings: str) -> Flask:
    trust = write_trust_file(tmp_path, [{"iss": JKU_ISSUER, "jku": [jku]}])
    app: Flask = make_app(
        {
            "DATABASE_URL": f"sqlite:///{tmp_path / 'cds.sqlite3'}",
            "AUTH": "required",
            "TRUSTED_CLIENTS": str(trust),
            "PUBLIC_BASE_URL": BASE_URL,
        }
        | settings
    )
    return app


def signed_get(client: FlaskClient, key: SigningKey, jku: str) -> Any:
    token = TokenFactory(key, issuer=JKU_ISSUER, headers={"jku": jku}).token("/cds-services")
    return client.get("/cds-services", headers={"Authorization": f"Bearer {token}"})


def jwks_unavailable_count(client: FlaskClient) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    return metric(text, "cds_jwt_failures_total", 'reason="jwks-unavailable"')


def assert_jwks_503(response: Any) -> None:
    assert response.status_code == 503
    assert 1 <= int(response.headers["Retry-After"]) <= 10
    assert "WWW-Authenticate" not in response.headers
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "transient"
    assert "JWK Set could not be fetched" in outcome["issue"][0]["diagnostics"]


def test_cached_jwk_set_is_used_while_its_endpoint_is_down(
    make_app: Callable[..., Flask], tmp_path: Path, jku_key: SigningKey
) -> None:
    """Stale-if-error: the cache is past its lifespan, the refetch fails, the old set verifies."""
    with fault_server() as keys:
        jku = f"{keys.url}/jwks/keys.json"
        keys.jwks = jwk_set(jku_key)
        client = jku_app(
            make_app, tmp_path, jku, JWKS_CACHE_SECONDS="0", JWKS_MIN_REFETCH_SECONDS="0"
        ).test_client()
        assert signed_get(client, jku_key, jku).status_code == 200
        keys.jwks = None  # the endpoint answers 503
        assert signed_get(client, jku_key, jku).status_code == 200
        assert len(keys.received) == 2  # the refetch was tried, and failed
    # The endpoint is gone altogether (connection refused).
    assert signed_get(client, jku_key, jku).status_code == 200


@pytest.mark.parametrize("down", ["refused", "http-503"])
def test_unfetchable_jwk_set_without_a_cache_is_503_not_401(
    make_app: Callable[..., Flask], tmp_path: Path, jku_key: SigningKey, down: str
) -> None:
    """The jku refuses connections or answers 503, and no set was ever fetched: a 503 with
    Retry-After, counted as jwks-unavailable, within the JWKS timeout.

    The token may be perfectly good, so the answer does not blame it (no 401). A second request
    within the refetch interval is answered the same way without calling the endpoint again.
    """
    with fault_server() as keys:
        jku = f"{keys.url}/jwks/keys.json"  # keys.jwks is None: it answers 503
        if down == "refused":
            jku = f"http://127.0.0.1:{free_port()}/keys.json"  # nothing listens there
        client = jku_app(make_app, tmp_path, jku).test_client()
        before = jwks_unavailable_count(client)
        started = time.monotonic()
        assert_jwks_503(signed_get(client, jku_key, jku))
        assert time.monotonic() - started < 3 + SLACK  # bounded by the JWKS timeout
        assert_jwks_503(signed_get(client, jku_key, jku))
        assert jwks_unavailable_count(client) == before + 2
        assert len(keys.received) == (1 if down == "http-503" else 0)


def test_jwk_set_endpoint_failing_then_back_recovers(
    make_app: Callable[..., Flask], tmp_path: Path, jku_key: SigningKey
) -> None:
    """The endpoint answers 503 (503 to our client too), then serves the set: accepted."""
    with fault_server() as keys:
        jku = f"{keys.url}/jwks/keys.json"
        client = jku_app(make_app, tmp_path, jku, JWKS_MIN_REFETCH_SECONDS="0").test_client()
        assert_jwks_503(signed_get(client, jku_key, jku))
        keys.jwks = jwk_set(jku_key)
        assert signed_get(client, jku_key, jku).status_code == 200


@pytest.mark.parametrize("scenario", ["stall", "drip", "slow-headers"])
def test_jwk_set_endpoint_that_hangs_is_a_bounded_503(
    make_app: Callable[..., Flask], tmp_path: Path, jku_key: SigningKey, scenario: str
) -> None:
    """An endpoint that never answers, trickles a body forever, or trickles its headers: a 503
    within the JWKS timeout (3 s), however slowly the bytes come."""
    with fault_server() as keys:
        jku = f"{keys.url}/{scenario}/keys.json"
        client = jku_app(make_app, tmp_path, jku).test_client()
        started = time.monotonic()
        assert_jwks_503(within(3 + 2 * SLACK, lambda: signed_get(client, jku_key, jku)))
        assert time.monotonic() - started < 3 + SLACK
        assert len(keys.received) == 1


# -- FHIR server faults ------------------------------------------------------------------------
# tests/test_fhir_fetch.py covers the fetcher's failure kinds (reset, 5xx, timeouts, an endless
# body) and 412 within the deadline for 503, garbage, an endless body, a long delay and a
# redirect. These add what only shows through the service: a server that never answers, resets,
# trickles its headers, and fails in a burst before it recovers.

DEADLINE = 1.5


@pytest.fixture
def fhir_client(make_app: Callable[..., Flask], sqlite_url: str, fhir: FaultServer) -> FlaskClient:
    app = make_app(
        {
            "DATABASE_URL": sqlite_url,
            "FHIR_SERVER_ALLOWLIST": fhir.url,
            "FHIR_DEADLINE_SECONDS": str(DEADLINE),
            "FHIR_READ_TIMEOUT_SECONDS": "10",  # longer than the deadline: the deadline decides
        }
    )
    return app.test_client()


def fetching(fhir: FaultServer, scenario: str, missing: str) -> dict[str, Any]:
    """The standard request without prefetch key ``missing``, its FHIR server faulty."""
    body = load_fixture(STANDARD)
    del body["prefetch"][missing]
    body["fhirServer"] = f"{fhir.url}/{scenario}/fhir"
    return body


FAULTS = ["stall", "reset", "slow-headers"]


@pytest.mark.parametrize("scenario", FAULTS)
def test_required_data_from_a_faulty_fhir_server_is_a_bounded_412(
    fhir_client: FlaskClient, fhir: FaultServer, scenario: str
) -> None:
    """A required key the FHIR server does not deliver: 412 naming it, within deadline + slack."""
    body = fetching(fhir, scenario, "procedures")
    fhir.received.clear()
    started = time.monotonic()
    response = within(DEADLINE + 2 * SLACK, lambda: fhir_client.post(DISCHARGE, json=body))
    assert time.monotonic() - started < DEADLINE + SLACK
    assert response.status_code == 412
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "'procedures'" in outcome["issue"][0]["diagnostics"]
    assert any(path.startswith(f"/{scenario}/fhir/Procedure") for path, _ in fhir.received)


@pytest.mark.parametrize("scenario", FAULTS)
def test_optional_data_from_a_faulty_fhir_server_gives_cards_with_a_note(
    fhir_client: FlaskClient, fhir: FaultServer, scenario: str
) -> None:
    """An optional key the FHIR server does not deliver: 200, cards that say it was not checked."""
    body = fetching(fhir, scenario, "conditions")
    started = time.monotonic()
    response = within(DEADLINE + 2 * SLACK, lambda: fhir_client.post(DISCHARGE, json=body))
    assert time.monotonic() - started < DEADLINE + SLACK
    assert response.status_code == 200
    (card,) = response.get_json()["cards"]
    assert "**Not checked:**" in card["detail"]
    assert "`conditions`" in card["detail"]


def test_fhir_server_recovering_from_a_5xx_burst_serves_the_next_call(
    make_app: Callable[..., Flask], sqlite_url: str, fhir: FaultServer
) -> None:
    """The first two searches fail with 503, later ones succeed: the third call gets its 200.

    Nothing is remembered against the server (no circuit left open, no broken pooled
    connection): recovery needs no restart. (A generous deadline: only the 503s may fail.)
    """
    client = make_app(
        {
            "DATABASE_URL": sqlite_url,
            "FHIR_SERVER_ALLOWLIST": fhir.url,
            "FHIR_DEADLINE_SECONDS": "20",
        }
    ).test_client()
    scenario = f"burst-2-{uuid.uuid4().hex[:8]}"
    body = fetching(fhir, scenario, "procedures")
    statuses = [client.post(DISCHARGE, json=body).status_code for _ in range(3)]
    assert statuses == [412, 412, 200]
    assert len([path for path, _ in fhir.received if path.startswith(f"/{scenario}/")]) == 3
